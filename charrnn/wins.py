"""Where the RNN wins: the model's and an n-gram's loss per character class, and the characters each
gets badly wrong (Karpathy, Johnson & Fei-Fei 2015, section 4.3: an LSTM against a 20-gram).

Both read the same text: the model in ``streams`` contiguous rows (each first reading up to ``warmup``
characters before its own stretch, so every character but the first is predicted with at least that
much context, or all of it near the start), the n-gram with its full order of context everywhere. Per
character they give -log p(text[t] | text[:t]); the first character has no prediction and is left
out. The model's *gain* at a character is the n-gram's loss minus the model's: positive where the
model did better. An *error*, as in the paper, is a character given probability below 0.5.

Classes: every character falls in exactly one of letter, digit, space, newline, other whitespace,
one class per bracket ('(' and ')' apart, since the paper finds closing ones are where long context
pays), one per quote character, and punctuation (everything else). The ``top_chars`` most frequent
characters get rows of their own as well. No I/O and no printing here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from charrnn.loss import LN2
from charrnn.model import CharRNN
from charrnn.ngram import NGram
from charrnn.visualize import Predictions

BRACKETS = "()[]{}<>"
QUOTES = "'\"`‘’“”«»„‚‹›"
ERROR_PROB = 0.5
DEFAULT_TOP_CHARS = 10
WARMUP = 256  # characters each row reads before its own stretch
STREAMS = 32
CHUNK = 512  # characters per forward pass, the state carried between them


def char_class(ch: str) -> str:
    """The class of one character (see the module's docstring)."""
    if ch == "\n":
        return "newline"
    if ch == " ":
        return "space"
    if ch.isspace():
        return "other whitespace"
    if ch.isalpha():
        return "letter"
    if ch.isdigit():
        return "digit"
    if ch in BRACKETS or ch in QUOTES:
        return ch
    return "punctuation"


@dataclass(frozen=True)
class Group:
    """The two models' mean loss (nats per character) and error counts over one class of characters."""

    name: str  # a class name, or the character itself for a top character's row
    n_chars: int
    model_nats: float
    ngram_nats: float
    model_errors: int  # characters the model gave p < 0.5
    ngram_errors: int

    @property
    def model_bits(self) -> float:
        return self.model_nats / LN2

    @property
    def ngram_bits(self) -> float:
        return self.ngram_nats / LN2

    @property
    def gain_nats(self) -> float:
        """How much lower the model's loss is than the n-gram's (positive: the model did better)."""
        return self.ngram_nats - self.model_nats

    @property
    def gain_bits(self) -> float:
        return self.gain_nats / LN2


@dataclass
class Wins:
    """``compare``'s answer. Per character (N,): ``model_nats`` and ``ngram_nats`` (NaN at position 0),
    the model's ``predictions``; ``overall`` over every predicted character; ``classes`` and
    ``top_chars`` sorted by the model's gain, largest first."""

    text: str
    order: int
    model_nats: np.ndarray
    ngram_nats: np.ndarray
    predictions: Predictions
    overall: Group
    classes: list[Group]
    top_chars: list[Group]

    @property
    def gain_bits(self) -> np.ndarray:
        """(N,) the model's gain per character in bits (NaN at position 0)."""
        return (self.ngram_nats - self.model_nats) / LN2


@torch.no_grad()
def model_predictions(
    model: CharRNN, ids: np.ndarray, *, k: int = 5, streams: int = STREAMS, warmup: int = WARMUP
) -> Predictions:
    """The model's probability of each character of ``ids`` (N,) and its top-k guesses, position 0
    without one. The text is cut into ``streams`` stretches read side by side, each after reading
    ``warmup`` characters before it."""
    n = len(ids)
    k = min(k, model.config.vocab_size)
    prob = np.full(n, np.nan, dtype=np.float64)
    top_ids = np.full((n, k), -1, dtype=np.int64)
    top_probs = np.full((n, k), np.nan, dtype=np.float32)
    if n < 2:
        return Predictions(prob, top_ids, top_probs)
    device = model.head.weight.device
    streams = max(1, min(streams, (n - 1) // max(warmup, 1)))
    bounds = np.linspace(1, n, streams + 1).astype(np.int64)  # stretch r predicts positions [bounds[r], bounds[r+1])
    starts = np.maximum(bounds[:-1] - 1 - warmup, 0)  # row r reads ids[starts[r] : bounds[r+1] - 1]
    ends = bounds[1:] - 1
    width = int((ends - starts).max())
    rows = np.zeros((streams, width), dtype=np.int64)
    for r in range(streams):
        rows[r, : ends[r] - starts[r]] = ids[starts[r] : ends[r]]  # the padding after a row's end is never read back
    x = torch.as_tensor(rows, device=device)
    was_training = model.training
    model.eval()
    state = None
    try:
        for c0 in range(0, width, CHUNK):
            logits, state = model(x[:, c0 : c0 + CHUNK], state)  # (S, T, V)
            probs = torch.softmax(logits.float(), dim=-1)
            top = torch.topk(probs, k, dim=-1)
            for r in range(streams):
                # column j of row r is read at text position starts[r] + j and predicts the next one
                cols = np.arange(c0, min(c0 + CHUNK, width))
                target = starts[r] + cols + 1
                keep = (target >= bounds[r]) & (target < bounds[r + 1])
                if not keep.any():
                    continue
                j, t = cols[keep] - c0, target[keep]
                jt = torch.as_tensor(j, device=device)
                tt = torch.as_tensor(ids[t].astype(np.int64), device=device)
                prob[t] = probs[r, jt, tt].double().cpu().numpy()
                top_ids[t] = top.indices[r, jt].cpu().numpy()
                top_probs[t] = top.values[r, jt].cpu().numpy()
    finally:
        model.train(was_training)
    return Predictions(prob, top_ids, top_probs)


def _group(name: str, mask: np.ndarray, model_nats: np.ndarray, ngram_nats: np.ndarray) -> Group:
    m, g = model_nats[mask], ngram_nats[mask]
    return Group(
        name=name,
        n_chars=int(mask.sum()),
        model_nats=float(m.mean()),
        ngram_nats=float(g.mean()),
        model_errors=int((m > -np.log(ERROR_PROB)).sum()),
        ngram_errors=int((g > -np.log(ERROR_PROB)).sum()),
    )


def compare(
    model: CharRNN,
    ngram: NGram,
    ids: np.ndarray,
    text: str,
    *,
    top_chars: int = DEFAULT_TOP_CHARS,
    streams: int = STREAMS,
    warmup: int = WARMUP,
) -> Wins:
    """Score ``text`` (its ids (N,) in the model's vocabulary, N >= 2) with ``model`` and ``ngram``
    and compare them per class and for the ``top_chars`` most frequent characters."""
    assert len(ids) == len(text) >= 2, "compare needs a text of at least 2 characters and its ids"
    predictions = model_predictions(model, ids, streams=streams, warmup=warmup)
    with np.errstate(divide="ignore"):
        model_nats = -np.log(predictions.prob)
    ngram_nats = -ngram.log_probs(ids)
    ngram_nats[0] = np.nan
    scored = np.arange(len(text)) >= 1
    chars = np.array(list(text))
    classes = np.array([char_class(ch) for ch in text])
    groups = [_group(name, scored & (classes == name), model_nats, ngram_nats) for name in dict.fromkeys(classes[1:])]
    names, counts = np.unique(chars[1:], return_counts=True)
    frequent = names[np.lexsort((names, -counts))][:top_chars]
    tops = [_group(str(ch), scored & (chars == ch), model_nats, ngram_nats) for ch in frequent]
    return Wins(
        text=text,
        order=ngram.order,
        model_nats=model_nats,
        ngram_nats=ngram_nats,
        predictions=predictions,
        overall=_group("all", scored, model_nats, ngram_nats),
        classes=sorted(groups, key=lambda g: -g.gain_nats),
        top_chars=sorted(tops, key=lambda g: -g.gain_nats),
    )

"""The n-gram baseline beside a model's evaluation (``charrnn eval --baseline ngram:N``).

The n-gram (``charrnn.ngram``) is fitted on the checkpoint's training split, found again as
``charrnn eval`` finds its validation split, or on a text the caller names, and scored on exactly
the characters ``charrnn eval`` scores: the same text, the same positions (``scored_positions``), in
the model's vocabulary. The n-gram reads each character's whole preceding context within the text,
where the model's streams start from a zero state; that favours the n-gram, slightly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn import checkpoint as ckpt_io
from charrnn.loss import Loss, eval_layout
from charrnn.ngram import NGram, check_order


@dataclass(frozen=True)
class Texts:
    """What a baseline needs of a checkpoint: the text to fit on and the text to score, as ids."""

    fit_ids: np.ndarray
    fit_text: str  # "training split of NAME" or the path given
    eval_ids: np.ndarray
    eval_text: str  # "validation split of NAME" or the path given


@dataclass(frozen=True)
class BaselineResult(Loss):
    """An n-gram's ``Loss`` on the evaluated characters, and what it was fitted on."""

    order: int
    fit_text: str
    n_fit_chars: int

    @property
    def name(self) -> str:
        return f"ngram:{self.order}"

    def to_json(self, model: Loss) -> dict:
        """The keys ``charrnn eval --json`` writes under "baseline", with the model's gain over it."""
        return {
            "name": self.name,
            "order": self.order,
            "fit_text": self.fit_text,
            "n_fit_chars": self.n_fit_chars,
            "n_chars": self.n_chars,
            "loss_nats": self.nats,
            "loss_bits": self.bits,
            "perplexity": self.perplexity,
            "gain_nats": self.nats - model.nats,
            "gain_bits": self.bits - model.bits,
        }


def _split(ckpt: ckpt_io.Checkpoint, encoding: str) -> tuple[np.ndarray, np.ndarray, str]:
    """The checkpoint's (training, validation) ids, its text found again, and the text's name."""
    from charrnn.run import checkpoint_split  # run imports the API, which imports the trainer

    corpus, train_ids, val_ids = checkpoint_split(ckpt, encoding=encoding)
    return np.asarray(train_ids), np.asarray(val_ids), corpus.name


def _read(ckpt: ckpt_io.Checkpoint, text: str | Path, encoding: str) -> np.ndarray:
    from charrnn.run import read_corpus

    return np.asarray(read_corpus(text, encoding=encoding, vocab=ckpt.vocab)[0].ids)


def eval_text(
    ckpt: ckpt_io.Checkpoint, text: str | Path | None = None, *, encoding: str = "utf-8"
) -> tuple[np.ndarray, str]:
    """The ids of ``text`` (a file, folder or glob), else of the checkpoint's validation split, in
    its vocabulary, and what to call them."""
    if text is not None:
        return _read(ckpt, text, encoding), str(text)
    _, val_ids, name = _split(ckpt, encoding)
    return val_ids, f"validation split of {name}"


def fit_text(
    ckpt: ckpt_io.Checkpoint, text: str | Path | None = None, *, encoding: str = "utf-8"
) -> tuple[np.ndarray, str]:
    """The ids of ``text``, else of the checkpoint's training split, in its vocabulary, and what to
    call them."""
    if text is not None:
        return _read(ckpt, text, encoding), str(text)
    train_ids, _, name = _split(ckpt, encoding)
    return train_ids, f"training split of {name}"


def checkpoint_texts(
    ckpt: ckpt_io.Checkpoint,
    text: str | Path | None = None,
    fit: str | Path | None = None,
    *,
    encoding: str = "utf-8",
) -> Texts:
    """The text to score (``text``, else the checkpoint's validation split) and the text to fit on
    (``fit``, else its training split), both encoded with the checkpoint's vocabulary."""
    eval_ids, eval_what = eval_text(ckpt, text, encoding=encoding)
    fit_ids, fit_what = fit_text(ckpt, fit, encoding=encoding)
    return Texts(fit_ids, fit_what, eval_ids, eval_what)


def scored_positions(n: int, batch_size: int, seq_len: int) -> np.ndarray:
    """The positions of the characters ``charrnn.loss.evaluate`` scores in a text of ``n``: every
    stream's targets but its last partial chunk (see ``charrnn.data.Batches``). (M,) int64, sorted."""
    streams, seq_len = eval_layout(n, batch_size, seq_len)
    stream_len = (n - 1) // streams
    scored = (stream_len // seq_len) * seq_len
    return (np.arange(streams)[:, None] * stream_len + 1 + np.arange(scored)[None, :]).ravel()


def ngram_baseline(
    texts: Texts, order: int, vocab_size: int, *, batch_size: int = 32, seq_len: int = 256
) -> BaselineResult:
    """Fit an ``order``-gram on ``texts.fit_ids`` and score it on the characters of ``texts.eval_ids``
    that ``charrnn eval`` scores with these ``batch_size`` and ``seq_len``."""
    order = check_order(order)
    model = NGram.fit(texts.fit_ids, order, vocab_size)
    positions = scored_positions(len(texts.eval_ids), batch_size, seq_len)
    log_p = model.log_probs(texts.eval_ids)[positions]
    return BaselineResult(
        nats=float(-log_p.mean()),
        n_chars=len(positions),
        order=order,
        fit_text=texts.fit_text,
        n_fit_chars=len(texts.fit_ids),
    )


def evaluate_baseline(
    checkpoint: str | Path,
    text: str | Path | None,
    order: int,
    fit: str | Path | None = None,
    *,
    batch_size: int = 32,
    seq_len: int = 256,
    encoding: str = "utf-8",
) -> BaselineResult:
    """``ngram_baseline`` for the text ``charrnn.evaluate(checkpoint, text, ...)`` scores, fitted on
    ``fit`` or the checkpoint's training split."""
    ckpt = ckpt_io.load(checkpoint)
    texts = checkpoint_texts(ckpt, text, fit, encoding=encoding)
    return ngram_baseline(texts, order, len(ckpt.vocab), batch_size=batch_size, seq_len=seq_len)

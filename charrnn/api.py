"""The Python API: load a checkpoint as a ``Model`` that samples, streams and scores text; evaluate one.

    model = charrnn.load("out/best.pt")
    model.sample(500, prime="ROMEO:", temperature=0.8, seed=1)     # the prime, then 500 characters
    model.score("To be, or not to be").bits                        # bits per character

Everything here is what ``charrnn sample`` and ``charrnn eval`` do, with the same names and the same
results for the same options and seed; training is ``charrnn.train`` (``charrnn.run``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from charrnn import checkpoint as ckpt_io
from charrnn import memory
from charrnn.corpus import read_text
from charrnn.data import Vocab
from charrnn.devices import resolve_device
from charrnn.errors import ConfigError, DataError, option
from charrnn.loss import LN2, Loss, eval_layout
from charrnn.loss import evaluate as mean_loss
from charrnn.model import CharRNN, ModelConfig, detach_state
from charrnn.sample import DEFAULT_MAX_PRIME, Beam, beam_search, check_options, check_stop_at
from charrnn.sample import generate as generate_steps
from charrnn.scoring import Per, RecordScore, Unknown, score_each
from charrnn.threads import sampling_threads, torch_threads

SCORE_CHUNK = 4096  # characters per forward pass when scoring: bounded memory for any text


@dataclass(frozen=True, eq=False)  # an array field: compare the numbers yourself
class Score(Loss):
    """How well a model predicts a text: every character after the first, given all before it.

    A ``Loss`` (``nats``, ``bits``, ``perplexity`` per character, over ``n_chars = len(text) - 1``
    predicted characters) with each character's surprisal: ``surprisal_bits[t]`` is
    -log2 p(text[t] | text[:t]) for t >= 1; position 0 has no prediction (NaN).
    """

    surprisal_bits: np.ndarray  # (len(text),) float64


@dataclass(frozen=True)
class EvalResult(Loss):
    """``evaluate``'s answer: a ``Loss`` (``nats``, ``bits``, ``perplexity``, ``n_chars``) and what it
    was measured on."""

    text: str  # "validation split of NAME" or the text given


class Model:
    """A checkpoint with its network built on a device: ``sample``, ``generate`` and ``score``."""

    def __init__(self, checkpoint: ckpt_io.Checkpoint, device: str | torch.device = "auto"):
        self.checkpoint = checkpoint
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.module: CharRNN = checkpoint.build_model(self.device)

    @property
    def config(self) -> ModelConfig:
        return self.checkpoint.model_config

    @property
    def vocab(self) -> Vocab:
        return self.checkpoint.vocab

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<charrnn.Model {c.cell.upper()} {c.num_layers}x{c.hidden_size}, vocab {c.vocab_size}, on {self.device}>"
        )

    def generate(
        self,
        length: int = 1000,
        *,
        prime: str = "",
        prime_file: str | Path | None = None,
        max_prime: int = DEFAULT_MAX_PRIME,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        argmax: bool = False,
        beam: int | None = None,
        stop_at: str | Sequence[str] | None = None,
        seed: int | None = None,
        num_samples: int = 1,
    ) -> Iterator[str]:
        """The text piece by piece, as it is written: the prime first (if any), then one character per
        piece; with ``num_samples > 1``, one whole sample (prime included) per piece, after all are done;
        with ``beam``, the prime and then the whole continuation, once the search is done.

        At most ``length`` characters follow the prime: fewer when one of ``stop_at`` ends the text
        first (see ``charrnn.sample.generate``). ``prime_file`` reads the prime from a UTF-8 file instead
        of ``prime``; a prime longer than ``max_prime`` characters is a ConfigError. Options are checked
        before the first piece. For one stream on a CPU, torch runs on one thread while the iterator is
        open and the step's products run on numpy's BLAS threads (``charrnn.threads.sampling_threads``),
        as ``charrnn sample`` does.
        """
        if isinstance(length, int) and isinstance(num_samples, int) and num_samples > 1:
            self._check_memory(num_samples, length * num_samples)  # the samples are kept until all are done
        prime = read_prime(prime, prime_file, max_prime)
        if beam is not None:
            check_options(
                len(self.vocab),
                length,
                temperature,
                top_k,
                num_samples,
                top_p=top_p,
                beam=beam,
                argmax=argmax,
                stop_at=check_stop_at(self.vocab, stop_at),
                max_prime=max_prime,
            )
            return self._beam_pieces(length, prime, beam, max_prime)
        steps = generate_steps(
            self.module,
            self.vocab,
            length=length,
            prime=prime,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            argmax=argmax,
            num_samples=num_samples,
            seed=seed,
            stop_at=stop_at,
            max_prime=max_prime,
        )
        return self._pieces(steps, prime, num_samples)

    def _beam_pieces(self, length: int, prime: str, beam: int, max_prime: int) -> Iterator[str]:
        found = self.beam_search(length, prime=prime, beam=beam, max_prime=max_prime)
        if prime:
            yield prime
        yield found.text

    def beam_search(
        self, length: int = 1000, *, beam: int = 5, prime: str = "", max_prime: int = DEFAULT_MAX_PRIME
    ) -> Beam:
        """The most probable continuation of ``length`` characters a beam of ``beam`` finds, with its
        total log-probability in nats (``charrnn.sample.beam_search``); ``sample(beam=...)`` is its text."""
        with torch_threads(sampling_threads(beam, self.device)):
            return beam_search(self.module, self.vocab, length=length, beam=beam, prime=prime, max_prime=max_prime)

    def _check_memory(self, num_samples: int, kept_chars: int) -> None:
        need = memory.sampling_bytes(self.config, max(1, num_samples), max(0, kept_chars))
        memory.check_fits(need, self.device, f"sampling {num_samples:,} stream(s)", ("num_samples", "length"))

    def _pieces(self, steps, prime: str, num_samples: int) -> Iterator[str]:
        with torch_threads(sampling_threads(num_samples, self.device)):
            if num_samples == 1:
                if prime:
                    yield prime
                for chars in steps:
                    if chars[0]:
                        yield chars[0]
                return
            columns: list[list[str]] = [[] for _ in range(num_samples)]
            for chars in steps:
                for column, ch in zip(columns, chars):
                    column.append(ch)
        for column in columns:
            yield prime + "".join(column)

    @overload
    def sample(
        self,
        length: int = 1000,
        *,
        prime: str = "",
        prime_file: str | Path | None = None,
        max_prime: int = DEFAULT_MAX_PRIME,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        argmax: bool = False,
        beam: int | None = None,
        stop_at: str | Sequence[str] | None = None,
        seed: int | None = None,
        num_samples: Literal[1] = 1,
    ) -> str: ...

    @overload
    def sample(
        self,
        length: int = 1000,
        *,
        prime: str = "",
        prime_file: str | Path | None = None,
        max_prime: int = DEFAULT_MAX_PRIME,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        argmax: bool = False,
        beam: int | None = None,
        stop_at: str | Sequence[str] | None = None,
        seed: int | None = None,
        num_samples: int,
    ) -> str | list[str]: ...

    def sample(
        self,
        length: int = 1000,
        *,
        prime: str = "",
        prime_file: str | Path | None = None,
        max_prime: int = DEFAULT_MAX_PRIME,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        argmax: bool = False,
        beam: int | None = None,
        stop_at: str | Sequence[str] | None = None,
        seed: int | None = None,
        num_samples: int = 1,
    ) -> str | list[str]:
        """The prime followed by ``length`` generated characters (fewer if ``stop_at`` ends it):
        ``"".join(generate(...))`` with the same arguments, and the text ``charrnn sample`` prints for
        them. ``num_samples > 1``: a list of samples."""
        if isinstance(length, int) and isinstance(num_samples, int):
            self._check_memory(num_samples, (length + len(prime or "")) * max(1, num_samples))
        pieces = self.generate(
            length,
            prime=prime,
            prime_file=prime_file,
            max_prime=max_prime,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            argmax=argmax,
            beam=beam,
            stop_at=stop_at,
            seed=seed,
            num_samples=num_samples,
        )
        return "".join(pieces) if num_samples == 1 else list(pieces)

    def score_each(
        self,
        texts: str | Path | Sequence[str | Path],
        *,
        per: Per = "line",
        top_surprises: int = 0,
        reset_each: bool = False,
        unknown: Unknown = "error",
        encoding: str = "utf-8",
    ) -> Iterator[RecordScore]:
        """The score of every line (``per="line"``) or file (``per="file"``) of ``texts`` (a file, folder
        or glob, or a list of them), one ``RecordScore`` at a time, with flat memory: what
        ``charrnn eval --per-line`` / ``--per-file`` print (``charrnn.scoring.score_each``).

        The state carries across records unless ``reset_each``; ``top_surprises=K`` keeps each record's
        K most surprising characters; ``unknown="skip"`` leaves out characters outside the vocabulary
        (and counts them) where ``"error"`` raises DataError naming them before anything is scored.
        """
        paths = [texts] if isinstance(texts, (str, Path)) else list(texts)
        return score_each(
            self.module,
            self.vocab,
            paths,
            per=per,
            top_surprises=top_surprises,
            reset_each=reset_each,
            unknown=unknown,
            encoding=encoding,
            device=self.device,
        )

    @torch.no_grad()
    def score(self, text: str) -> Score:
        """Nats and bits per character of ``text`` under the model, and each character's surprisal.

        The model reads ``text`` from a zero state as one stream, in chunks with the state carried, so
        memory is bounded for any length. DataError for fewer than 2 characters or unknown ones.
        """
        if len(text) < 2:
            raise DataError(f"{option('text')} has {len(text)} character(s); scoring needs at least 2")
        ids = torch.from_numpy(self.vocab.encode(text, option("text")).astype(np.int64)).to(self.device)
        surprisal = np.full(len(text), np.nan)
        was_training = self.module.training
        self.module.eval()
        state = None
        try:
            for start in range(0, len(text) - 1, SCORE_CHUNK):
                x = ids[start : start + SCORE_CHUNK][None]  # (1, T)
                y = ids[start + 1 : start + 1 + SCORE_CHUNK]
                logits, state = self.module(x[:, : len(y)], state)
                nats = F.cross_entropy(logits[0].float(), y, reduction="none")  # (T,)
                surprisal[start + 1 : start + 1 + len(y)] = nats.double().cpu().numpy() / LN2
                state = detach_state(state)
        finally:
            self.module.train(was_training)
        predicted = surprisal[1:]
        return Score(nats=float(predicted.mean() * LN2), n_chars=len(predicted), surprisal_bits=surprisal)


def read_prime(prime: str, prime_file: str | Path | None, max_prime: int = DEFAULT_MAX_PRIME) -> str:
    """The prime: ``prime``, or the text of ``prime_file`` (UTF-8; the checks of ``charrnn train``'s
    reader), read no further than one character past ``max_prime``. ConfigError for both at once."""
    if prime_file is None:
        return prime
    if prime:
        raise ConfigError(f"{option('prime')} and {option('prime_file')} both give a prime; pass one of them")
    if not isinstance(max_prime, int) or isinstance(max_prime, bool) or max_prime < 1:
        raise ConfigError(f"{option('max_prime')} must be a whole number of at least 1, got {max_prime!r}")
    path = Path(prime_file)
    if path.is_dir():
        raise DataError(f"{option('prime_file')} {path} is a folder; pass one text file")
    text = read_text(path, max_chars=max_prime + 1)
    if len(text) > max_prime:
        raise ConfigError(
            f"{option('prime_file')} {path} has more than {option('max_prime')} ({max_prime:,}) characters; "
            f"shorten it or raise {option('max_prime')}"
        )
    return text


def load(path: str | Path, device: str | torch.device = "auto") -> Model:
    """Open and validate a checkpoint (CheckpointError if it is not one) and build its network on ``device``."""
    return Model(ckpt_io.load(path), device)


def evaluate(
    checkpoint: str | Path | Model,
    text: str | Path | None = None,
    *,
    batch_size: int = 32,
    seq_len: int = 256,
    encoding: str = "utf-8",
    device: str | torch.device = "auto",
) -> EvalResult:
    """The loss of ``checkpoint`` on ``text`` (a file, folder or glob), or with no text on its own
    validation split, found again as ``charrnn train --resume`` finds it (ConfigError if it changed).

    The text is read as ``batch_size`` streams in chunks of ``seq_len`` with the state carried; every
    character is scored but the last partial chunk of each stream.
    """
    from charrnn.run import checkpoint_split, read_corpus  # run imports this module for its closing sample

    model = checkpoint if isinstance(checkpoint, Model) else load(checkpoint, device)
    ckpt = model.checkpoint
    if text is None:
        corpus, _, ids = checkpoint_split(ckpt, encoding=encoding)
        what = f"validation split of {corpus.name}"
    else:
        corpus, _ = read_corpus(text, encoding=encoding, vocab=model.vocab)
        ids, what = corpus.ids, str(text)
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{option(name)} must be a whole number of at least 1, got {value!r}")
    chunk = eval_layout(len(ids), batch_size, seq_len)  # the streams and steps the text allows
    memory.check_fits(
        memory.evaluation_bytes(model.config, *chunk), model.device, "evaluating", ("batch_size", "seq_len")
    )
    loss = mean_loss(model.module, ids, batch_size=batch_size, seq_len=seq_len, device=model.device)
    return EvalResult(nats=loss.nats, n_chars=loss.n_chars, text=what)

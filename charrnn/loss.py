"""Loss of a model on a stretch of text, with the recurrent state carried from chunk to chunk."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.data import Batches
from charrnn.errors import DataError
from charrnn.model import CharRNN, detach_state

LN2 = math.log(2.0)
# During training, a validation split longer than this is scored on a seeded subset of this many
# characters (--eval-chars), so that an evaluation takes seconds whatever the corpus size.
DEFAULT_EVAL_CHARS = 2_000_000
# A CPU scores far fewer characters per second than a GPU: 250,000 keeps an evaluation of the default
# model to seconds on a 2-core CPU, where 2,000,000 would take minutes (benchmarks/bench_quality.py
# records each run's evaluation time; docs/performance.md, "How long an evaluation takes").
DEFAULT_EVAL_CHARS_CPU = 250_000
EVAL_WINDOWS = 8


@dataclass(frozen=True)
class Loss:
    """Mean cross entropy over ``n_chars`` predicted characters."""

    nats: float  # nats per character
    n_chars: int

    @property
    def bits(self) -> float:
        """Bits per character."""
        return self.nats / LN2

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats) if self.nats < 700 else math.inf


def eval_layout(n: int, batch_size: int, seq_len: int) -> tuple[int, int]:
    """Streams and chunk length for evaluating n characters: as many as asked, as many as fit."""
    if n < 2:
        raise DataError(f"{n} character(s) are too few to evaluate on; need at least 2")
    seq_len = min(seq_len, n - 1)
    streams = max(1, min(batch_size, (n - 1) // seq_len))
    return streams, seq_len


def eval_subset(ids: np.ndarray, max_chars: int | None, seed: int, windows: int = EVAL_WINDOWS) -> np.ndarray:
    """The characters to score: all of ``ids`` when it holds at most ``max_chars`` (None: about 2M),
    else ``windows`` contiguous windows of max_chars // windows characters, joined.

    Window i starts at a seeded random place inside the i-th of ``windows`` equal parts of ``ids``:
    the subset spreads over the whole split, and the same seed picks the same characters at every
    evaluation, so losses of one run compare (and "best" means best). Fewer windows if each would
    hold less than 10,000 characters. A window seam costs a little context, as a stream start does.
    """
    limit = DEFAULT_EVAL_CHARS if max_chars is None else max_chars
    if len(ids) <= limit:
        return ids
    count = max(1, min(windows, limit // 10_000))
    width, part = limit // count, len(ids) // count
    rng = np.random.default_rng(seed)
    starts = [i * part + int(rng.integers(0, part - width + 1)) for i in range(count)]
    return np.concatenate([np.asarray(ids[s : s + width]) for s in starts])


@torch.no_grad()
def evaluate(
    model: CharRNN,
    ids: np.ndarray,
    *,
    batch_size: int = 32,
    seq_len: int = 256,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
) -> Loss:
    """Mean loss on ``ids`` (N,) read as ``batch_size`` contiguous streams, state carried throughout.

    Every stream starts from a zero state, so its first few characters are predicted with little
    context; with S streams that is S cold starts in N characters. The last partial chunk of each
    stream (fewer than ``seq_len`` characters) is not scored.
    """
    streams, seq_len = eval_layout(len(ids), batch_size, seq_len)
    batches = Batches(ids, streams, seq_len)
    was_training = model.training
    model.eval()
    state = model.init_state(streams, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for i in range(len(batches)):
            x, y = (torch.from_numpy(a).to(device, non_blocking=True) for a in batches[i])
            with autocast or contextlib.nullcontext():
                logits, state = model(x, state)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
            state = detach_state(state)
    finally:
        model.train(was_training)
    chars = len(batches) * streams * seq_len
    return Loss(nats=float(total) / chars, n_chars=chars)

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


@dataclass(frozen=True)
class Loss:
    """Mean cross entropy over ``chars`` predicted characters."""

    nats: float  # nats per character
    chars: int

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
    return Loss(nats=float(total) / chars, chars=chars)

"""Generating text: an iterator of characters, so output streams and memory stays flat."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch

from charrnn.data import Vocab
from charrnn.errors import ConfigError, option
from charrnn.inference import StepModel
from charrnn.model import CharRNN
from charrnn.train_config import check_seed


class Draw:
    """Each stream's next character from its (N, V) logits: the most likely one (``argmax``), or a
    sample from softmax(logits / temperature), restricted to the ``top_k`` most likely if given.

    Sampling uses the Gumbel-max trick: with G independent standard Gumbel noise, argmax(logits / T +
    G) is distributed exactly as softmax(logits / T). The noise is drawn ``NOISE_BLOCK`` steps at a
    time (at most ``NOISE_ELEMENTS`` numbers, so fewer steps for many streams; in float64, from
    ``generator``), so a step costs an add and an argmax where softmax and
    multinomial cost a dozen small operations, and on CUDA a wait for the device
    (``benchmarks/bench_sample.py`` times it). The noise of step t does not depend on how many steps
    follow, so a longer sample with the same seed starts with the shorter one.
    """

    NOISE_BLOCK = 64
    NOISE_ELEMENTS = 1 << 20  # 8 MB of float64 noise at most

    def __init__(
        self,
        num_samples: int,
        vocab_size: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        argmax: bool = False,
        generator: torch.Generator | None = None,
    ):
        self.block_steps = max(1, min(self.NOISE_BLOCK, self.NOISE_ELEMENTS // (num_samples * vocab_size)))
        self.shape = (self.block_steps, num_samples, vocab_size)
        self.temperature, self.argmax, self.generator = temperature, argmax, generator
        self.top_k = top_k if top_k is not None and top_k < vocab_size else None
        self.noise: torch.Tensor | None = None
        self.used = self.block_steps

    def gumbel_block(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(block_steps, N, V) standard Gumbel noise, -log(-log(U)) for U uniform in [0, 1)."""
        u = torch.rand(self.shape, generator=self.generator, dtype=torch.float64, device=device)
        return u.log_().neg_().log_().neg_().to(dtype)  # U = 0 gives -inf: never chosen

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, V) logits -> (N,) int64 indices."""
        if self.argmax:
            return logits.argmax(dim=1)
        scaled = logits / self.temperature if self.temperature != 1.0 else logits
        if self.top_k is not None:
            kth = torch.topk(scaled, self.top_k, dim=1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        if self.noise is None or self.used == self.block_steps:  # None: before the first block
            self.noise, self.used = self.gumbel_block(logits.device, logits.dtype), 0
        noise = self.noise[self.used]
        self.used += 1
        return (scaled + noise).argmax(dim=1)


def check_options(vocab_size: int, length: int, temperature: float, top_k: int | None, num_samples: int) -> None:
    """ConfigError for options that cannot produce a sample."""
    for name, value in (("length", length), ("num_samples", num_samples), ("top_k", top_k)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{option(name)} must be a whole number, got {value!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
        raise ConfigError(f"{option('temperature')} must be a number, got {temperature!r}")
    if length < 1:
        raise ConfigError(f"{option('length')} must be at least 1, got {length}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ConfigError(
            f"{option('temperature')} must be greater than 0, got {temperature}; use {option('argmax', True)} "
            "for greedy decoding"
        )
    if top_k is not None and not 1 <= top_k <= vocab_size:
        raise ConfigError(f"{option('top_k')} must be between 1 and the vocabulary size ({vocab_size}), got {top_k}")
    if num_samples < 1:
        raise ConfigError(f"{option('num_samples')} must be at least 1, got {num_samples}")


def prime_ids(vocab: Vocab, prime: str) -> list[int]:
    """Encode the priming text; DataError naming every character the model has never seen."""
    return vocab.encode(prime, option("prime")).tolist()


def generate(
    model: CharRNN,
    vocab: Vocab,
    *,
    length: int,
    prime: str = "",
    temperature: float = 1.0,
    top_k: int | None = None,
    argmax: bool = False,
    num_samples: int = 1,
    seed: int | None = None,
) -> Iterator[list[str]]:
    """An iterator of ``length`` steps, each a list of ``num_samples`` characters (the prime is not repeated).

    Options and the prime are checked here, before the first character is produced. The prime is
    run through the model to set the hidden state. With no prime, generation starts after a
    newline (if the vocabulary has one), the way a text starts after a line break. The same model,
    options and ``seed`` give the same text on the same machine.
    """
    check_options(len(vocab), length, temperature, top_k, num_samples)
    if seed is not None:
        check_seed(seed)
    ids = prime_ids(vocab, prime)
    if not ids:
        ids = [vocab.chars.index("\n") if "\n" in vocab.chars else 0]
    return _generate(model, vocab.chars, ids, length, temperature, top_k, argmax, num_samples, seed)


@torch.no_grad()
def _generate(model, chars, ids, length, temperature, top_k, argmax, num_samples, seed) -> Iterator[list[str]]:
    device = model.head.weight.device
    model.eval()
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)

    # 1. The prime, all at once through the fused sequence kernels.
    prime_tensor = torch.tensor(ids, dtype=torch.long, device=device).expand(num_samples, -1)
    logits, state = model(prime_tensor)
    logits = logits[:, -1].float()  # (N, V)

    # 2. One character at a time through the fused step (a CUDA graph of it on a GPU; its logits
    # and state are overwritten by the next step, and are used before it).
    step = StepModel(model).runner(num_samples)
    draw = Draw(num_samples, len(chars), temperature=temperature, top_k=top_k, argmax=argmax, generator=generator)
    for _ in range(length):
        nxt = draw(logits)
        yield [chars[i] for i in nxt.tolist()]
        logits, state = step(nxt, state)

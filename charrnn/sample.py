"""Generating text: an iterator of characters, so output streams and memory stays flat; or, with
``beam``, the most probable continuation found by beam search.

The prime is run through the network as whole sequences (``PRIME_CHUNK`` characters per pass, the
state carried), not one character at a time; ``benchmarks/bench_sample.py --prime-chars`` times it.
A prime of at most ``SHORT_PRIME`` characters is the exception on a CPU (``run_prime``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from charrnn.data import Vocab
from charrnn.errors import ConfigError, option
from charrnn.inference import StepModel
from charrnn.model import CharRNN
from charrnn.train_config import check_seed


class Draw:
    """Each stream's next character from its (N, V) logits: the most likely one (``argmax``), or a
    sample from softmax(logits / temperature), restricted to the ``top_k`` most likely if given, and
    then to the nucleus of ``top_p`` (``nucleus``) if given.

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
        top_p: float | None = None,
        argmax: bool = False,
        generator: torch.Generator | None = None,
    ):
        self.block_steps = max(1, min(self.NOISE_BLOCK, self.NOISE_ELEMENTS // (num_samples * vocab_size)))
        self.shape = (self.block_steps, num_samples, vocab_size)
        self.temperature, self.argmax, self.generator = temperature, argmax, generator
        self.top_k = top_k if top_k is not None and top_k < vocab_size else None
        self.top_p = top_p if top_p is not None and top_p < 1.0 else None
        # What ``pick`` does with the logits: two draws with the same options pick alike.
        self.options = (self.temperature, self.top_k, self.top_p, self.argmax)
        self.noise: tuple[torch.Tensor, ...] = ()  # the block's steps, (N, V) each
        self.used = self.block_steps

    def gumbel_block(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(block_steps, N, V) standard Gumbel noise, -log(-log(U)) for U uniform in [0, 1)."""
        u = torch.rand(self.shape, generator=self.generator, dtype=torch.float64, device=device)
        return u.log_().neg_().log_().neg_().to(dtype)  # U = 0 gives -inf: never chosen

    def next_noise(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """This step's (N, V) Gumbel noise, one row per stream (None for ``argmax``); the next call
        gives the next step's."""
        if self.argmax:
            return None
        if self.used == self.block_steps:
            self.noise, self.used = self.gumbel_block(device, dtype).unbind(0), 0
        noise = self.noise[self.used]
        self.used += 1
        return noise

    def pick(self, logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """(R, V) logits and their (R, V) noise -> (R,) indices, under this draw's options. Each row
        is picked on its own, so rows of several draws with the same ``options`` (each with its own
        noise) can be picked in one call and get what each draw would pick alone."""
        if self.argmax:
            return logits.argmax(dim=1)
        assert noise is not None, "sampling needs this step's noise"
        scaled = logits / self.temperature if self.temperature != 1.0 else logits
        if self.top_k is not None:
            kth = torch.topk(scaled, self.top_k, dim=1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        if self.top_p is not None:
            scaled = nucleus(scaled, self.top_p)
        return (scaled + noise).argmax(dim=1)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, V) logits -> (N,) int64 indices."""
        return self.pick(logits, self.next_noise(logits.device, logits.dtype))


def nucleus(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    """(N, V) logits with every character outside the ``top_p`` nucleus set to -inf.

    The nucleus is the smallest set of the most likely characters whose probability reaches
    ``top_p``: sorted by probability, a character is kept while the mass of those before it is below
    ``top_p``, so the most likely one is always kept. (Ties at the edge go to the lower index.)
    """
    probs = torch.softmax(scaled.double(), dim=1)
    sorted_probs, order = probs.sort(dim=1, descending=True, stable=True)
    before = sorted_probs.cumsum(dim=1) - sorted_probs  # mass of the characters ranked above
    keep_sorted = before < top_p
    keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    return scaled.masked_fill(~keep, float("-inf"))


DEFAULT_MAX_PRIME = 1_000_000  # characters; a prime is a whole-sequence pass, so this is seconds to minutes
PRIME_CHUNK = 65_536  # characters per forward pass of the prime: bounded memory for any prime
# A prime this short is read through the step on a CPU, a character at a time: there a whole-sequence
# pass first sets up oneDNN's sequence kernels, which costs an LSTM about as much as 15 steps
# (benchmarks/bench_prime.py). On a GPU the step's kernel launches cost more than cuDNN's set-up.
SHORT_PRIME = 16


def _whole_number(name: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{option(name)} must be a whole number, got {value!r}")


def check_options(
    vocab_size: int,
    length: int,
    temperature: float,
    top_k: int | None,
    num_samples: int,
    *,
    top_p: float | None = None,
    beam: int | None = None,
    argmax: bool = False,
    stop_at: Sequence[str] = (),
    max_prime: int = DEFAULT_MAX_PRIME,
) -> None:
    """ConfigError for options that cannot produce a sample."""
    for name, value in (
        ("length", length),
        ("num_samples", num_samples),
        ("top_k", top_k),
        ("beam", beam),
        ("max_prime", max_prime),
    ):
        _whole_number(name, value)
    for name, number in (("temperature", temperature), ("top_p", top_p)):
        if number is not None and (not isinstance(number, (int, float)) or isinstance(number, bool)):
            raise ConfigError(f"{option(name)} must be a number, got {number!r}")
    if length < 1:
        raise ConfigError(f"{option('length')} must be at least 1, got {length}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ConfigError(
            f"{option('temperature')} must be greater than 0, got {temperature}; use {option('argmax', True)} "
            "for greedy decoding"
        )
    if top_k is not None and not 1 <= top_k <= vocab_size:
        raise ConfigError(f"{option('top_k')} must be between 1 and the vocabulary size ({vocab_size}), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"{option('top_p')} must be in (0, 1], got {top_p}; 1 keeps every character")
    if num_samples < 1:
        raise ConfigError(f"{option('num_samples')} must be at least 1, got {num_samples}")
    if max_prime < 1:
        raise ConfigError(f"{option('max_prime')} must be at least 1, got {max_prime}")
    if beam is not None:
        if beam < 1:
            raise ConfigError(f"{option('beam')} must be at least 1, got {beam}")
        given = [
            name
            for name, on in (
                ("top_k", top_k is not None),
                ("top_p", top_p is not None),
                ("argmax", argmax),
                ("stop_at", bool(stop_at)),
                ("num_samples", num_samples > 1),
            )
            if on
        ]
        if given:
            raise ConfigError(
                f"{option('beam')} searches for the one most probable continuation and cannot be combined with "
                f"{option(given[0])}; drop one of them"
            )


def check_stop_at(vocab: Vocab, stop_at: str | Sequence[str] | None) -> tuple[str, ...]:
    """The stop strings as a tuple; ConfigError for an empty one, DataError for one the model cannot write."""
    if stop_at is None:
        return ()
    stops = (stop_at,) if isinstance(stop_at, str) else tuple(stop_at)
    for stop in stops:
        if not isinstance(stop, str) or not stop:
            raise ConfigError(f"{option('stop_at')} must be a non-empty string, got {stop!r}")
        vocab.encode(stop, f"{option('stop_at')} {stop!r} can never be generated")
    return stops


def stopped_at(text: str, generated: int, stop_at: Sequence[str]) -> str | None:
    """The stop string ``text`` ends with, if any ends within its last ``generated`` characters: how
    a sample of ``generate`` with ``stop_at`` ended (None: it ran to its length). The first listed
    wins when several match."""
    if generated < 1:
        return None
    return next((stop for stop in stop_at if text.endswith(stop)), None)


def prime_ids(vocab: Vocab, prime: str, max_prime: int = DEFAULT_MAX_PRIME) -> list[int]:
    """Encode the priming text; DataError naming every character the model has never seen, ConfigError
    for a prime longer than ``max_prime``."""
    if len(prime) > max_prime:
        raise ConfigError(
            f"the prime has {len(prime):,} characters, more than {option('max_prime')} ({max_prime:,}); "
            f"shorten it or raise {option('max_prime')}"
        )
    return vocab.encode(prime, option("prime")).tolist()


def start_ids(vocab: Vocab, prime: str, max_prime: int = DEFAULT_MAX_PRIME) -> list[int]:
    """What the model reads before the first generated character: the prime, or with none a newline
    (if the vocabulary has one; else its first character), the way a text starts after a line break."""
    ids = prime_ids(vocab, prime, max_prime)
    return ids or [vocab.chars.index("\n") if "\n" in vocab.chars else 0]


@torch.no_grad()
def run_prime(
    model: CharRNN,
    ids: list[int],
    num_samples: int = 1,
    *,
    stepper: StepModel | None = None,
    chunk: int = PRIME_CHUNK,
) -> tuple[torch.Tensor, tuple]:
    """Read ``ids`` through ``model`` as one stream, ``chunk`` characters per pass with the state
    carried, and give each of ``num_samples`` streams the result: ((N, V) float logits after the last
    character, the state with N streams). Memory is bounded by the chunk, whatever the prime's length.

    Every chunk but the last runs as one stream; the last runs as N copies, as a whole prime of up to
    ``chunk`` characters always has (the fused kernels' results differ in the last bits between
    one stream and N, so this keeps the seeded samples of such primes as they were).

    On a CPU, a prime of at most ``SHORT_PRIME`` characters is read through ``stepper`` when one is
    given (the step that generation then runs), a character at a time as N copies: quicker than
    setting up a whole-sequence pass for a few characters.
    """
    device = model.head.weight.device
    model.eval()
    if stepper is not None and len(ids) <= SHORT_PRIME and device.type == "cpu":
        stepped, stepped_state = stepper.read(ids, num_samples)
        return stepped.float(), stepped_state
    x = torch.tensor(ids, dtype=torch.long, device=device)[None]  # (1, T)
    last = (x.shape[1] - 1) // chunk * chunk  # where the last chunk starts
    state = None
    for start in range(0, last, chunk):
        _, state = model(x[:, start : start + chunk], state)
    if state is not None and num_samples > 1:
        state = tuple(s.expand(-1, num_samples, -1).contiguous() for s in state)
    logits, state = model(x[:, last:].expand(num_samples, -1), state)
    return logits[:, -1].float(), state


class Generation:
    """``generate``'s iterator: each step a list of ``num_samples`` characters, "" for a stream that
    has already stopped. ``stopped_at[i]`` is the stop string that ended stream i (None while it runs
    and when it runs to its length)."""

    def __init__(self, steps_of, num_samples: int):
        self.stopped_at: list[str | None] = [None] * num_samples
        self._steps = steps_of(self)

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> list[str]:
        return next(self._steps)


def generate(
    model: CharRNN,
    vocab: Vocab,
    *,
    length: int,
    prime: str = "",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    argmax: bool = False,
    num_samples: int = 1,
    seed: int | None = None,
    stop_at: str | Sequence[str] | None = None,
    max_prime: int = DEFAULT_MAX_PRIME,
) -> Generation:
    """An iterator of at most ``length`` steps, each a list of ``num_samples`` characters (the prime is
    not repeated).

    Options and the prime are checked here, before the first character is produced. The prime is
    run through the model to set the hidden state (``run_prime``). With no prime, generation starts
    after a newline (``start_ids``). A stream ends as soon as its text (the prime included) ends
    with one of ``stop_at`` in a character it generated, the stop string written; it then yields ""
    while the others go on, and the iteration ends when every stream has. A stream's characters are
    those it would write without ``stop_at``, up to where it stops. The same model, options and
    ``seed`` give the same text on the same machine.
    """
    stops = check_stop_at(vocab, stop_at)
    if seed is not None:
        check_seed(seed)
    check_options(
        len(vocab),
        length,
        temperature,
        top_k,
        num_samples,
        top_p=top_p,
        argmax=argmax,
        stop_at=stops,
        max_prime=max_prime,
    )
    ids = start_ids(vocab, prime, max_prime)
    draw_options = dict(temperature=temperature, top_k=top_k, top_p=top_p, argmax=argmax)
    return Generation(
        lambda gen: _generate(gen, model, vocab.chars, ids, prime, length, draw_options, num_samples, seed, stops),
        num_samples,
    )


@torch.no_grad()
def _generate(gen, model, chars, ids, prime, length, draw_options, num_samples, seed, stops) -> Iterator[list[str]]:
    device = model.head.weight.device
    model.eval()
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)

    # 1. The prime, all at once through the fused sequence kernels (a short one through the step).
    stepper = StepModel(model)
    logits, state = run_prime(model, ids, num_samples, stepper=stepper)

    # 2. One character at a time through the fused step (a CUDA graph of it on a GPU; its logits
    # and state are overwritten by the next step, and are used before it).
    step = stepper.runner(num_samples)
    draw = Draw(num_samples, len(chars), generator=generator, **draw_options)
    keep = max((len(s) for s in stops), default=1) - 1  # characters of each stream's tail a match needs
    tails = [prime[len(prime) - keep :] if keep else ""] * num_samples
    running = num_samples
    for _ in range(length):
        nxt = draw(logits)
        out = [chars[i] for i in nxt.tolist()]
        if stops:
            for i, ch in enumerate(out):
                if gen.stopped_at[i] is not None:
                    out[i] = ""
                    continue
                tail = tails[i] + ch
                gen.stopped_at[i] = stopped_at(tail, 1, stops)
                running -= gen.stopped_at[i] is not None
                tails[i] = tail[len(tail) - keep :] if keep else ""
        yield out
        if not running:
            return
        logits, state = step(nxt, state)


@dataclass(frozen=True)
class Beam:
    """``beam_search``'s answer: the continuation and its log-probability under the model, in nats
    (the sum over its characters of ln p(character | everything before it))."""

    text: str
    log_prob_nats: float


@torch.no_grad()
def beam_search(
    model: CharRNN,
    vocab: Vocab,
    *,
    length: int,
    beam: int,
    prime: str = "",
    max_prime: int = DEFAULT_MAX_PRIME,
) -> Beam:
    """The continuation of exactly ``length`` characters with the highest total log-probability that
    a beam of ``beam`` hypotheses finds (not length-normalised: every candidate has the same length).

    Each step extends every hypothesis by every character and keeps the ``beam`` best by total
    log-probability (float64 sums of float32 log-softmax). Deterministic. ``beam=1`` is greedy
    decoding (``argmax``); a beam of at least V**(length-1) is an exhaustive search.
    """
    check_options(len(vocab), length, 1.0, None, 1, beam=beam, max_prime=max_prime)
    ids = start_ids(vocab, prime, max_prime)
    vocab_size = len(vocab)
    stepper = StepModel(model)
    logits, state = run_prime(model, ids, beam, stepper=stepper)
    step = stepper.runner(beam)
    device = logits.device
    scores = torch.full((beam,), float("-inf"), dtype=torch.float64, device=device)
    scores[0] = 0.0  # the hypotheses start as copies of one: extend only the first
    parents, picks = [], []
    for t in range(length):
        log_probs = torch.log_softmax(logits.float(), dim=1).double()  # (W, V)
        best = torch.topk((scores[:, None] + log_probs).flatten(), beam)  # sorted, best first
        scores = best.values
        parent, char = best.indices // vocab_size, best.indices % vocab_size
        parents.append(parent)
        picks.append(char)
        if t < length - 1:
            state = tuple(s.index_select(1, parent) for s in state)
            logits, state = step(char, state)
    # Follow the best hypothesis back from its last character.
    out, which = [], 0
    for parent, char in zip(reversed(parents), reversed(picks)):
        out.append(vocab.chars[int(char[which])])
        which = int(parent[which])
    return Beam(text="".join(reversed(out)), log_prob_nats=float(scores[0]))

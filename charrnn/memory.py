"""How much memory a model needs to train, sample or evaluate, and what the device has free: a size
that cannot fit is refused before anything is allocated, with the estimate in the message.

The estimates count what grows with the options (weights, gradients and Adam's two moments; the
activations backpropagation keeps for a batch; the recurrent state of each sample stream; the text a
caller keeps) in 4-byte floats, and leave out the constant overhead of torch itself. They are meant to
tell a hidden size of a million from a hidden size of a thousand, not to plan to the last megabyte:
only a need larger than everything free is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from charrnn.errors import ConfigError, option
from charrnn.model import ModelConfig

FLOAT_BYTES = 4
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # weight blocks per layer
KEPT_CHAR_BYTES = 12  # a character kept while sampling: its place in a list and its share of the final string


def parameter_count(cfg: ModelConfig) -> int:
    """The model's parameters, from its config alone (``CharRNN.num_parameters`` of the built model)."""
    g, h, v, e = GATES[cfg.cell], cfg.hidden_size, cfg.vocab_size, cfg.embedding_size
    first = g * h * (e + h) + 2 * g * h  # input and recurrent weights, two biases
    rest = (cfg.num_layers - 1) * (g * h * (h + h) + 2 * g * h)
    return v * e + first + rest + h * v + v


def _per_position(cfg: ModelConfig) -> int:
    """Floats one position of a batch keeps for backpropagation: its embedding, each layer's gates and
    state, and the logits with their softmax and gradient."""
    return cfg.embedding_size + cfg.num_layers * (GATES[cfg.cell] + 2) * cfg.hidden_size + 3 * cfg.vocab_size


def training_bytes(cfg: ModelConfig, batch_size: int, seq_len: int, activation_bytes: int = FLOAT_BYTES) -> int:
    """Weights, gradients and Adam's two moments (fp32), and a batch's activations (``activation_bytes``
    each: 2 under bf16 or fp16 autocast)."""
    return FLOAT_BYTES * 4 * parameter_count(cfg) + activation_bytes * batch_size * seq_len * _per_position(cfg)


def evaluation_bytes(cfg: ModelConfig, batch_size: int, seq_len: int) -> int:
    """Weights and one chunk's activations, with no gradients."""
    return FLOAT_BYTES * (parameter_count(cfg) + batch_size * seq_len * _per_position(cfg))


def sampling_bytes(cfg: ModelConfig, num_samples: int, kept_chars: int) -> int:
    """Weights, each stream's state and step, and the ``kept_chars`` characters held until the end."""
    step = cfg.num_layers * (GATES[cfg.cell] + 2) * cfg.hidden_size + 3 * cfg.vocab_size
    return FLOAT_BYTES * (parameter_count(cfg) + num_samples * step) + KEPT_CHAR_BYTES * kept_chars


def free_bytes(device: torch.device) -> int | None:
    """Memory free for a new allocation on ``device``: the GPU's free memory, or for the CPU (and MPS,
    which shares it) the system's available memory within this process's cgroup limit; None if unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    known = [n for n in (_meminfo_available(), _cgroup_room()) if n is not None]
    if not known:
        try:
            known.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            try:  # macOS has no count of available pages: all of physical memory is the bound
                known.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
            except (ValueError, OSError, AttributeError):
                return None
    return min(known)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory limit leaves (limit - current), when there is one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_fits(need: int, device: torch.device, what: str, lower: tuple[str, ...]) -> None:
    """ConfigError if ``need`` bytes exceed what ``device`` has free, naming the options to ``lower``."""
    free = free_bytes(device)
    if free is None or need <= free:
        return
    flags = [option(name) for name in lower]
    names = flags[0] if len(flags) == 1 else f"{', '.join(flags[:-1])} or {flags[-1]}"
    raise ConfigError(
        f"{what} needs about {format_bytes(need)} of memory, more than the {format_bytes(free)} free on "
        f"{device.type}; lower {names}"
    )

"""Which torch device a command runs on: ``auto`` picks CUDA, then MPS, then the CPU."""

from __future__ import annotations

import torch

from charrnn.errors import ConfigError, option


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda[:N] | mps -> a torch.device that exists here, or ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown {option('device')} {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{option('device', 'cuda')} was asked for but CUDA is not available here; use {option('device', 'cpu')} or auto"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{option('device', name)}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(
            f"{option('device', 'mps')} was asked for but MPS is not available here; use {option('device', 'cpu')} or auto"
        )
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown {option('device')} {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device

"""The character model: embedding -> multi-layer LSTM / GRU / RNN -> linear head over the vocabulary.

Built on torch.nn.LSTM / GRU / RNN so that cuDNN (GPU) and oneDNN (CPU) fused kernels do the work.
No I/O and no printing here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from charrnn.errors import ConfigError

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

# A recurrent state: (h, c) for an LSTM, (h,) for a GRU or RNN; each tensor is (num_layers, B, hidden_size).
State = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the model's shape; the single source of truth for the architecture."""

    vocab_size: int
    cell: str = "lstm"
    num_layers: int = 2
    hidden_size: int = 512
    embedding_size: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ConfigError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        for name in ("vocab_size", "num_layers", "hidden_size", "embedding_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Rebuild from ``to_dict()`` output; unknown or missing keys raise ConfigError."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown model config key(s): {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"incomplete model config: {exc}") from None

    @property
    def state_tensors(self) -> int:
        """How many tensors make up a recurrent state: 2 for an LSTM (h, c), 1 otherwise."""
        return 2 if self.cell == "lstm" else 1


GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # weight blocks per layer, as torch.nn stacks them


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in ``CharRNN(config).state_dict()``, without building the model.

    For checking a checkpoint's weights: building a model just for its shapes costs either the
    random initialisation (on the CPU) or PyTorch's first-use set-up of its meta-device kernels,
    which was the slowest part of loading a checkpoint. ``tests/test_model.py`` checks this
    against the real state dict for every cell.
    """
    gates = GATES[config.cell] * config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (config.vocab_size, config.embedding_size)}
    for layer in range(config.num_layers):
        inputs = config.embedding_size if layer == 0 else config.hidden_size
        shapes[f"rnn.weight_ih_l{layer}"] = (gates, inputs)
        shapes[f"rnn.weight_hh_l{layer}"] = (gates, config.hidden_size)
        shapes[f"rnn.bias_ih_l{layer}"] = (gates,)
        shapes[f"rnn.bias_hh_l{layer}"] = (gates,)
    shapes["head.weight"] = (config.vocab_size, config.hidden_size)
    shapes["head.bias"] = (config.vocab_size,)
    return shapes


class CharRNN(nn.Module):
    """idx: (B, T) int64, state -> logits: (B, T, vocab_size), next state."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.rnn = CELLS[config.cell](
            input_size=config.embedding_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            # nn.RNN-family dropout acts between layers only, and warns when there is one layer.
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """A zero state for ``batch_size`` streams."""
        c = self.config
        device = device if device is not None else self.head.weight.device
        shape = (c.num_layers, batch_size, c.hidden_size)
        return tuple(torch.zeros(shape, device=device) for _ in range(c.state_tensors))

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        x = self.embedding(idx)  # (B, T, E)
        if state is None:
            state = self.init_state(idx.shape[0], idx.device)
        rnn_state = state if self.config.cell == "lstm" else state[0]
        out, new_state = self.rnn(x, rnn_state)  # (B, T, H)
        logits = self.head(self.drop(out))  # (B, T, V)
        new_state = tuple(new_state) if self.config.cell == "lstm" else (new_state,)
        return logits, new_state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State) -> State:
    """Cut the graph at a batch boundary (truncated BPTT) while keeping the values."""
    return tuple(s.detach() for s in state)

"""Gradient flow through time: how strongly the loss at character t depends on the state k steps back.

The argument of the lecture slide, measured on a real model: backpropagating from h_t to h_(t-k)
multiplies by the recurrent Jacobian k times, so in a vanilla RNN the gradient shrinks or grows
geometrically with the largest singular value of W_hh (times tanh'), while the LSTM's cell state
``c_t = f * c_(t-1) + i * g`` passes it on multiplied only by the forget gate.

``gradient_flow`` picks ``positions`` places t in a text (seeded), lets the model read ``warmup``
characters before each window without gradients (so the state is a real one, not zero), then unrolls
the cell step by step through the window's last ``steps + 1`` characters in float64 and backpropagates
the cross entropy of the character after t. The result, per layer and for k = 0 .. steps::

    h[k] = mean over positions of || d loss_t / d h_(t-k) ||      (c[k] the same for an LSTM's cell state)

where h_(t-k) is the layer's state after reading character t-k and the derivative is the total one:
through the recurrence and through the layers above (which read h_(t-k) at the same step), and for
c through h_(t-k) = o * tanh(c_(t-k)) too. Beside it, per layer: the largest singular value of the recurrent
matrix W_hh and of each gate's block of it, and the mean of each sigmoid gate over the windows (the
forget gate f keeps f^k of the cell state after k steps; the GRU's update gate z keeps z^k of h).

The unrolled step is written out here rather than taken from ``charrnn.inference``, because it must
keep the graph (the inference step runs without one); ``tests/test_gradflow.py`` checks its
gradients against finite differences of the fused ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``. No I/O and
no printing here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.errors import ConfigError, DataError, option
from charrnn.model import CharRNN

# Gate blocks of W_hh as torch.nn stacks them, named as charrnn.visualize names them.
BLOCKS = {"lstm": ("input", "forget", "g", "output"), "gru": ("reset", "update", "candidate"), "rnn": ("h",)}
SIGMOID_GATES = {"lstm": ("input", "forget", "output"), "gru": ("reset", "update"), "rnn": ()}
DEFAULT_STEPS = 200
DEFAULT_POSITIONS = 32
DEFAULT_WARMUP = 100
GROUP = 8  # positions unrolled together


@dataclass
class LayerFlow:
    """One layer's curves and recurrent statistics. ``h``, ``c``: (steps + 1,) indexed by k."""

    layer: int  # from 0
    h: np.ndarray
    c: np.ndarray | None  # LSTM only
    sigma_max: float  # largest singular value of the whole W_hh
    sigma_max_blocks: dict[str, float]  # ... of each gate's block of it
    gates: dict[str, float]  # mean value of each sigmoid gate over the windows


@dataclass
class GradientFlow:
    """``gradient_flow``'s answer for one model."""

    cell: str
    num_layers: int
    hidden_size: int
    steps: int  # K: the curves run over k = 0 .. K
    n_positions: int
    warmup: int
    layers: list[LayerFlow] = field(default_factory=list)


@dataclass
class StateGradients:
    """d loss / d state for each window: ``h`` (K + 1, layers, B, H) with index j the state after
    reading the j-th character of the unrolled stretch (k = K - j steps before the last); ``c`` the
    same for an LSTM's cell state, else None; ``gates`` name -> (layers,) mean value; ``loss`` the
    summed loss over the windows."""

    h: torch.Tensor
    c: torch.Tensor | None
    gates: dict[str, np.ndarray]
    loss: float


def check_steps(steps: int, positions: int, warmup: int) -> None:
    for name, value, least in (("steps", steps, 1), ("positions", positions, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{option(name)} must be a whole number of at least {least}, got {value!r}")


def windows(ids: np.ndarray, steps: int, positions: int, warmup: int, seed: int = 0) -> np.ndarray:
    """(positions, warmup' + steps + 2) int64 stretches of ``ids`` at seeded random places: warmup'
    characters to read first (``warmup``, or fewer if the text is short), ``steps + 1`` to unroll,
    and the target after them. DataError if the text is shorter than steps + 2 characters."""
    n = len(ids)
    if n < steps + 2:
        raise DataError(
            f"the text has {n:,} characters; {option('steps', steps)} needs at least {steps + 2:,}: "
            f"pass a longer text or a smaller {option('steps')}"
        )
    warmup = min(warmup, n - steps - 2)
    width = warmup + steps + 2
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.integers(0, n - width + 1, size=positions))
    return np.stack([np.asarray(ids[s : s + width], dtype=np.int64) for s in starts])


def _weights(model: CharRNN, layer: int) -> tuple[torch.Tensor, ...]:
    rnn = model.rnn
    return tuple(getattr(rnn, f"{name}_l{layer}").double() for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


def _step(
    cell: str, weights: tuple[torch.Tensor, ...], x: torch.Tensor, h: torch.Tensor, c, gates: dict[str, list]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One differentiable step of one layer, the arithmetic of torch.nn's cells; appends each sigmoid
    gate's mean to ``gates``. -> (h', c')."""
    w_ih, w_hh, b_ih, b_hh = weights
    if cell == "lstm":
        i, f, g, o = (F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)).chunk(4, dim=1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        for name, value in (("input", i), ("forget", f), ("output", o)):
            gates[name].append(float(value.detach().mean()))
        c = f * c + i * g
        return o * c.tanh(), c
    if cell == "gru":
        x_r, x_z, x_n = F.linear(x, w_ih, b_ih).chunk(3, dim=1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
        r, z = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
        gates["reset"].append(float(r.detach().mean()))
        gates["update"].append(float(z.detach().mean()))
        n = (x_n + r * h_n).tanh()
        return (1 - z) * n + z * h, None
    return (F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)).tanh(), None


def state_gradients(model: CharRNN, batch: np.ndarray, steps: int) -> StateGradients:
    """Backpropagate the loss at the end of each row of ``batch`` (B, W) to the states of the last
    ``steps + 1`` characters before its target; the first W - steps - 2 characters are read first
    without gradients by the fused model."""
    cfg = model.config
    was_training = model.training
    model.eval()
    try:
        x = torch.as_tensor(batch, device=model.head.weight.device)
        read = x.shape[1] - steps - 2
        dtype = model.head.weight.dtype
        state = tuple(s.to(dtype) for s in model.init_state(x.shape[0]))
        if read > 0:
            with torch.no_grad():
                _, state = model(x[:, :read], state)
        h: list[torch.Tensor] = [s.double() for s in state[0]]  # per layer (B, H)
        c: list[torch.Tensor | None] = [s.double() for s in state[1]] if cfg.cell == "lstm" else [None] * cfg.num_layers
        weights = [_weights(model, layer) for layer in range(cfg.num_layers)]
        names = SIGMOID_GATES[cfg.cell]
        layer_gates: list[dict[str, list]] = [{name: [] for name in names} for _ in range(cfg.num_layers)]
        kept_h: list[list[torch.Tensor]] = []
        kept_c: list[list[torch.Tensor | None]] = []
        embedded = model.embedding(x[:, read : read + steps + 1]).double()  # (B, K+1, E)
        for j in range(steps + 1):
            inputs = embedded[:, j]
            for layer in range(cfg.num_layers):
                new_h, new_c = _step(cfg.cell, weights[layer], inputs, h[layer], c[layer], layer_gates[layer])
                new_h.retain_grad()
                if new_c is not None:
                    new_c.retain_grad()
                h[layer], c[layer] = new_h, new_c
                inputs = new_h
            kept_h.append(list(h))
            kept_c.append(list(c))
        logits = F.linear(h[-1], model.head.weight.double(), model.head.bias.double())
        loss = F.cross_entropy(logits, x[:, -1], reduction="sum")  # summed: each row's gradient is its own
        model.zero_grad(set_to_none=True)
        loss.backward()
        loss = loss.detach()
        model.zero_grad(set_to_none=True)

        def stack(kept) -> torch.Tensor:
            return torch.stack([torch.stack([s.grad for s in row]) for row in kept]).detach()

        means = {name: np.array([np.mean(lg[name]) for lg in layer_gates]) for name in names}
        return StateGradients(stack(kept_h), stack(kept_c) if cfg.cell == "lstm" else None, means, loss.item())
    finally:
        model.train(was_training)


def singular_values(model: CharRNN, layer: int) -> tuple[float, dict[str, float]]:
    """The largest singular value of layer ``layer``'s W_hh, and of each gate's block of it."""
    w_hh = getattr(model.rnn, f"weight_hh_l{layer}").detach().double().cpu()
    names = BLOCKS[model.config.cell]
    blocks = w_hh.chunk(len(names), dim=0)
    whole = float(torch.linalg.matrix_norm(w_hh, ord=2))
    return whole, {name: float(torch.linalg.matrix_norm(b, ord=2)) for name, b in zip(names, blocks)}


def gradient_flow(
    model: CharRNN,
    ids: np.ndarray,
    *,
    steps: int = DEFAULT_STEPS,
    positions: int = DEFAULT_POSITIONS,
    warmup: int = DEFAULT_WARMUP,
    seed: int = 0,
) -> GradientFlow:
    """The mean gradient norm of the loss at t with respect to each layer's state at t - k, k = 0 ..
    ``steps``, over ``positions`` places in ``ids`` (N,); with each layer's singular values and gates."""
    check_steps(steps, positions, warmup)
    batch = windows(ids, steps, positions, warmup, seed)
    cfg = model.config
    # Positions in groups: the graph of one unrolled window holds every gate of every step, so memory
    # grows with positions x steps; a group of GROUP bounds it.
    h_sum = np.zeros((cfg.num_layers, steps + 1))
    c_sum = np.zeros((cfg.num_layers, steps + 1))
    gate_sum: dict[str, np.ndarray] = {name: np.zeros(cfg.num_layers) for name in SIGMOID_GATES[cfg.cell]}
    for start in range(0, len(batch), GROUP):
        rows = batch[start : start + GROUP]
        grads = state_gradients(model, rows, steps)
        # (K+1, L, B, H) -> (L, K+1) summed norms, k = 0 first
        h_sum += grads.h.norm(dim=-1).sum(dim=-1).flip(0).T.cpu().numpy()
        if grads.c is not None:
            c_sum += grads.c.norm(dim=-1).sum(dim=-1).flip(0).T.cpu().numpy()
        for name, values in grads.gates.items():
            gate_sum[name] += values * len(rows)
    n = len(batch)
    result = GradientFlow(cfg.cell, cfg.num_layers, cfg.hidden_size, steps, n, batch.shape[1] - steps - 2)
    for layer in range(cfg.num_layers):
        sigma, blocks = singular_values(model, layer)
        result.layers.append(
            LayerFlow(
                layer=layer,
                h=h_sum[layer] / n,
                c=c_sum[layer] / n if cfg.cell == "lstm" else None,
                sigma_max=sigma,
                sigma_max_blocks=blocks,
                gates={name: float(values[layer] / n) for name, values in gate_sum.items()},
            )
        )
    return result

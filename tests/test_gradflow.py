"""charrnn.gradflow on constructed models, whose gradient flow is known in closed form, and against
finite differences of the fused torch modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charrnn.errors import ConfigError, DataError
from charrnn.gradflow import gradient_flow, state_gradients, windows
from charrnn.model import CharRNN, ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")

V = 5


def text(n: int = 400, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, n)


def linear_rnn(radius: float, hidden: int = 16) -> CharRNN:
    """A tanh RNN kept in tanh's linear range (tiny inputs, zero biases), whose W_hh is an orthogonal
    matrix times ``radius``: every singular value is ``radius``, so the gradient scales by radius^k."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(V, cell="rnn", num_layers=1, hidden_size=hidden, embedding_size=4))
    q, _ = torch.linalg.qr(torch.randn(hidden, hidden))
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(radius * q)
        model.rnn.weight_ih_l0.mul_(1e-9)
        model.rnn.bias_ih_l0.zero_()
        model.rnn.bias_hh_l0.zero_()
    return model


def lstm_with_forget_bias(bias: float, hidden: int = 16) -> CharRNN:
    """An LSTM whose forget gates are held open (large positive bias) or shut (large negative one)."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(V, cell="lstm", num_layers=1, hidden_size=hidden, embedding_size=4))
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(0.1)
        model.rnn.bias_ih_l0[hidden : 2 * hidden] = bias  # gate order i, f, g, o
        model.rnn.bias_hh_l0[hidden : 2 * hidden] = 0.0
    return model


def test_a_linear_rnn_with_spectral_radius_half_loses_the_gradient():
    flow = gradient_flow(linear_rnn(0.5), text(), steps=20, positions=8, warmup=0)
    layer = flow.layers[0]
    assert layer.sigma_max == pytest.approx(0.5, rel=1e-5)
    assert layer.h[20] < layer.h[1] / 1000
    # and it falls as 0.5^k, as the closed form says
    np.testing.assert_allclose(layer.h / layer.h[0], 0.5 ** np.arange(21), rtol=1e-3)
    assert layer.c is None and layer.gates == {}


def test_a_linear_rnn_with_spectral_radius_one_and_a_half_grows_the_gradient():
    flow = gradient_flow(linear_rnn(1.5), text(), steps=20, positions=8, warmup=0)
    layer = flow.layers[0]
    assert layer.sigma_max == pytest.approx(1.5, rel=1e-5)
    assert np.all(np.diff(layer.h) > 0)
    assert layer.h[20] > 1000 * layer.h[0]


def test_an_lstm_with_its_forget_gates_open_passes_the_gradient_on_nearly_unchanged():
    steps = 100
    open_ = gradient_flow(lstm_with_forget_bias(30.0), text(), steps=steps, positions=8, warmup=20).layers[0]
    shut = gradient_flow(lstm_with_forget_bias(-30.0), text(), steps=steps, positions=8, warmup=20).layers[0]
    assert open_.gates["forget"] > 0.999 and shut.gates["forget"] < 0.001
    assert open_.c is not None and shut.c is not None
    assert open_.c[1:].max() / open_.c[1:].min() < 1.5  # nearly flat through the cell state, 100 steps back
    assert shut.c[10] < shut.c[1] / 1000  # while a shut forget gate cuts it off within a few steps


def cells(model: CharRNN) -> list[torch.nn.Module]:
    """torch's own single-step cells (nn.LSTMCell, ...) holding each layer's weights."""
    cfg = model.config
    kind = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[cfg.cell]
    out = []
    for layer in range(cfg.num_layers):
        cell = kind(model.rnn.input_size if layer == 0 else cfg.hidden_size, cfg.hidden_size).double()
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).data.copy_(getattr(model.rnn, f"{name}_l{layer}").data)
        out.append(cell)
    return out


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_gradients_agree_with_finite_differences(cell):
    """Nudge one layer's state right after it reads the j-th unrolled character (before the layer above
    reads it; an LSTM's cell state with the h made from it), run the rest with torch's nn.LSTMCell / GRUCell / RNNCell, and compare the change in loss
    with what the autograd gradient predicts."""
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(V, cell=cell, num_layers=2, hidden_size=8, embedding_size=4)).double().eval()
    steps = 6
    batch = windows(text(60, seed=2), steps, positions=3, warmup=5, seed=3)
    grads = state_gradients(model, batch, steps)
    x = torch.as_tensor(batch)
    read = batch.shape[1] - steps - 2
    steppers = cells(model)
    rng = np.random.default_rng(4)

    @torch.no_grad()
    def loss_after_nudge(j: int, layer: int, which: int, direction: torch.Tensor) -> float:
        zero = torch.zeros(len(x), 8, dtype=torch.float64)
        state = [(zero, zero) if cell == "lstm" else (zero,) for _ in steppers]
        for t in range(x.shape[1] - 1):
            inputs = model.embedding(x[:, t])
            for i, stepper in enumerate(steppers):
                out = stepper(inputs, state[i] if cell == "lstm" else state[i][0])
                parts = list(out) if cell == "lstm" else [out]
                if t == read + j and i == layer:
                    if which == 1:  # the cell state, and the h = o * tanh(c) the cell made from it
                        gate = parts[0] / parts[1].tanh()
                        parts[0] = gate * (parts[1] + direction).tanh()
                    parts[which] = parts[which] + direction
                state[i] = tuple(parts)
                inputs = parts[0]
        return float(torch.nn.functional.cross_entropy(model.head(inputs), x[:, -1], reduction="sum"))

    eps = 1e-6
    for j, layer in ((0, 0), (2, 1), (steps, 0), (steps, 1), (steps - 1, 0)):
        for which, g in enumerate((grads.h, grads.c) if cell == "lstm" else (grads.h,)):
            direction = torch.as_tensor(rng.standard_normal((batch.shape[0], 8)))
            up = loss_after_nudge(j, layer, which, eps * direction)
            down = loss_after_nudge(j, layer, which, -eps * direction)
            predicted = float((g[j, layer] * direction).sum())
            assert (up - down) / (2 * eps) == pytest.approx(predicted, rel=1e-5, abs=1e-9), (cell, j, layer, which)


def test_gates_and_singular_values_per_layer():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(V, cell="gru", num_layers=2, hidden_size=8, embedding_size=4))
    flow = gradient_flow(model, text(), steps=10, positions=4, warmup=5)
    assert [layer.layer for layer in flow.layers] == [0, 1]
    for layer in flow.layers:
        assert set(layer.gates) == {"reset", "update"} and all(0 < v < 1 for v in layer.gates.values())
        assert set(layer.sigma_max_blocks) == {"reset", "update", "candidate"}
        w = getattr(model.rnn, f"weight_hh_l{layer.layer}").detach().double()
        assert layer.sigma_max == pytest.approx(float(torch.linalg.svdvals(w)[0]))
        assert max(layer.sigma_max_blocks.values()) <= layer.sigma_max + 1e-9
        assert len(layer.h) == 11 and np.all(layer.h > 0)


def test_bad_requests_are_named():
    model = linear_rnn(0.5)
    with pytest.raises(DataError, match="at least 22"):
        gradient_flow(model, text(21), steps=20)
    with pytest.raises(ConfigError, match="steps"):
        gradient_flow(model, text(), steps=0)
    with pytest.raises(ConfigError, match="positions"):
        gradient_flow(model, text(), positions=-1)

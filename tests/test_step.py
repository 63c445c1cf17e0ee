"""StepModel, the fused one-character inference step, must compute what CharRNN.forward computes.

CharRNN.forward runs nn.LSTM / nn.GRU / nn.RNN over a whole sequence; StepModel re-implements one
time step with the embedding folded into the first layer's input weights. These tests feed both the
same characters from the same state and compare every step's logits and the final state.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from charrnn.data import Vocab
from charrnn.model import CharRNN, ModelConfig
from charrnn.sample import generate
from charrnn.step import LayerInternals, Linear, StepModel, onednn_usable

ATOL = 1e-5
VOCAB_SIZE = 11
SEQ_LEN = 9


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: threads only add start-up cost, and stall badly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(cell: str, num_layers: int, nonlinearity: str = "tanh", vocab_size: int = VOCAB_SIZE) -> CharRNN:
    """A small randomly initialised model in eval mode, deterministic for a given shape."""
    torch.manual_seed(1234 + num_layers)
    cfg = ModelConfig(vocab_size=vocab_size, cell=cell, num_layers=num_layers, hidden_size=24, embedding_size=8)
    model = CharRNN(cfg)
    if nonlinearity != "tanh":
        # CharRNN always builds nn.RNN with tanh; swap in a relu RNN of the same shape.
        model.rnn = nn.RNN(cfg.embedding_size, cfg.hidden_size, cfg.num_layers, nonlinearity=nonlinearity, batch_first=True)
    # Biases are zero-initialised in places; random ones make a wrong bias fold visible.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.uniform_(-0.5, 0.5)
    return model.eval()


def random_state(model: CharRNN, batch_size: int) -> tuple[torch.Tensor, ...]:
    """A non-zero starting state, so that carrying state into the step is checked too."""
    generator = torch.Generator().manual_seed(7)
    return tuple(0.5 * torch.randn(s.shape, generator=generator) for s in model.init_state(batch_size))


ONEDNN = onednn_usable(torch.zeros(1))
BACKENDS = [
    pytest.param("auto", id="auto"),  # oneDNN for several rows where usable (B4 cases), BLAS for one
    pytest.param("blas", id="blas"),
    pytest.param("onednn", id="onednn", marks=pytest.mark.skipif(not ONEDNN, reason="PyTorch built without oneDNN")),
]

CASES = [
    pytest.param(cell, layers, batch, nonlin, id=f"{cell}{'-relu' if nonlin == 'relu' else ''}-{layers}L-B{batch}")
    for cell, nonlin in (("lstm", "tanh"), ("gru", "tanh"), ("rnn", "tanh"), ("rnn", "relu"))
    for layers in (1, 3)
    for batch in (1, 4)
]


@pytest.mark.parametrize("cell, num_layers, batch_size, nonlinearity", CASES)
@pytest.mark.parametrize("zero_state", [True, False], ids=["zero-state", "random-state"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_step_matches_forward(cell, num_layers, batch_size, nonlinearity, zero_state, backend):
    model = build(cell, num_layers, nonlinearity)
    idx = torch.randint(0, VOCAB_SIZE, (batch_size, SEQ_LEN), generator=torch.Generator().manual_seed(3))
    state = model.init_state(batch_size) if zero_state else random_state(model, batch_size)

    # 1. The reference: the whole sequence through nn.LSTM / GRU / RNN at once.
    with torch.no_grad():
        want_logits, want_state = model(idx, state)  # (B, T, V), each (L, B, H)

    # 2. The same characters one at a time through the fused step.
    stepper = StepModel(model, backend=backend)
    assert stepper.backend == (("onednn" if ONEDNN else "blas") if backend == "auto" else backend)
    step_state = state
    for t in range(SEQ_LEN):
        logits, step_state = stepper.step(idx[:, t], step_state)  # (B, V)
        torch.testing.assert_close(logits, want_logits[:, t], atol=ATOL, rtol=0, msg=lambda m: f"step {t}: {m}")

    assert len(step_state) == len(want_state) == model.config.state_tensors
    for got, want in zip(step_state, want_state):
        assert got.shape == want.shape == (num_layers, batch_size, model.config.hidden_size)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.skipif(not ONEDNN, reason="PyTorch built without oneDNN")
def test_auto_backend_takes_onednn_on_a_float32_cpu_model():
    assert StepModel(build("lstm", 2)).backend == "onednn"


def test_auto_backend_falls_back_to_blas_when_the_onednn_operator_fails(monkeypatch):
    """The packed product is a private PyTorch operator: if it breaks, sampling must still work."""

    def broken(*args, **kwargs):
        raise RuntimeError("operator changed")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", broken, raising=False)
    model = build("lstm", 2)
    stepper = StepModel(model)
    assert stepper.backend == "blas"
    idx = torch.tensor([[1], [4]])
    with torch.no_grad():
        want, _ = model(idx)
    got, _ = stepper.step(idx[:, 0], stepper.init_state(2))
    torch.testing.assert_close(got, want[:, 0], atol=ATOL, rtol=0)
    with pytest.raises(RuntimeError, match="operator changed"):
        StepModel(model, backend="onednn")


def test_auto_backend_uses_blas_where_onednn_cannot_serve():
    model = build("gru", 2).double()
    stepper = StepModel(model)
    assert stepper.backend == "blas"
    with pytest.raises(ValueError, match="float32 CPU"):
        Linear(torch.zeros(4, 3, dtype=torch.float64), None, backend="onednn")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("rows", [1, 4])
def test_linear_computes_x_times_weight_transposed_plus_bias(backend, bias, rows):
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(7, 5, generator=generator)
    b = torch.randn(7, generator=generator) if bias else None
    x = torch.randn(rows, 5, generator=generator)
    add = torch.randn(rows, 7, generator=generator)
    want = x @ weight.t() + (b if bias else 0)
    linear = Linear(weight, b, backend)
    torch.testing.assert_close(linear(x), want, atol=ATOL, rtol=0)
    torch.testing.assert_close(linear(x, add=add.clone()), want + add, atol=ATOL, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_step_does_not_change_the_model(cell):
    model = build(cell, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stepper = StepModel(model)
    stepper.step(torch.tensor([1, 2]), stepper.init_state(2))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"StepModel changed {key}"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_internals_report_each_layers_output(cell):
    model = build(cell, 3)
    stepper = StepModel(model)
    internals: list[LayerInternals] = []
    _, state = stepper.step(torch.tensor([0, 5]), stepper.init_state(2), internals)
    assert len(internals) == 3
    for layer, info in enumerate(internals):
        torch.testing.assert_close(info.h, state[0][layer], atol=0, rtol=0)
        if cell == "lstm":
            torch.testing.assert_close(info.c, state[1][layer], atol=0, rtol=0)


def naive_argmax(model: CharRNN, vocab: Vocab, prime: str, length: int, num_samples: int) -> list[str]:
    """Greedy decoding with nothing but CharRNN.forward on (N, 1) per character."""
    start = [vocab.chars.index(ch) for ch in prime or "\n"]  # no prime: start after a newline
    with torch.no_grad():
        logits, state = model(torch.tensor([start] * num_samples))
        out = [[] for _ in range(num_samples)]
        for _ in range(length):
            nxt = logits[:, -1].argmax(dim=1)  # (N,)
            for stream, i in enumerate(nxt.tolist()):
                out[stream].append(vocab.chars[i])
            logits, state = model(nxt.view(-1, 1), state)
    return ["".join(chars) for chars in out]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("prime", ["", "ab k."], ids=["no-prime", "prime"])
def test_generate_argmax_matches_naive_loop(cell, num_samples, prime):
    vocab = Vocab.from_text("\nabcdefghij klmnop.")
    model = build(cell, 2, vocab_size=len(vocab))
    with torch.no_grad():
        # An untrained model's greedy text soon repeats one character; a strong input and spread
        # logits keep it moving and keep greedy choices away from near-ties.
        model.embedding.weight.mul_(8.0)
        model.head.weight.mul_(8.0)
    length = 60
    steps = list(generate(model, vocab, length=length, prime=prime, argmax=True, num_samples=num_samples, seed=0))
    got = ["".join(step[s] for step in steps) for s in range(num_samples)]
    assert got == naive_argmax(model, vocab, prime, length, num_samples)
    assert len(set(got[0])) > 1, "greedy text should not be a single repeated character"


def test_runner_on_the_cpu_is_the_step_itself():
    stepper = StepModel(build("lstm", 2))
    assert stepper.runner(1) == stepper.step and stepper.runner(8) == stepper.step

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
from charrnn.inference import LayerInternals, Linear, StepModel, numpy_wins, onednn_usable
from charrnn.model import CharRNN, ModelConfig
from charrnn.sample import generate

ATOL = 1e-5
VOCAB_SIZE = 11
SEQ_LEN = 9


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def build(cell: str, num_layers: int, nonlinearity: str = "tanh", vocab_size: int = VOCAB_SIZE) -> CharRNN:
    """A small randomly initialised model in eval mode, deterministic for a given shape."""
    torch.manual_seed(1234 + num_layers)
    cfg = ModelConfig(vocab_size=vocab_size, cell=cell, num_layers=num_layers, hidden_size=24, embedding_size=8)
    model = CharRNN(cfg)
    if nonlinearity != "tanh":
        # CharRNN always builds nn.RNN with tanh; swap in a relu RNN of the same shape.
        model.rnn = nn.RNN(
            cfg.embedding_size, cfg.hidden_size, cfg.num_layers, nonlinearity=nonlinearity, batch_first=True
        )
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
    # These tests run torch on one thread: "auto" takes numpy for one row (B1 cases), oneDNN for four.
    pytest.param("auto", id="auto"),
    pytest.param("blas", id="blas"),
    pytest.param("numpy", id="numpy"),
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
    assert stepper.backend == {"auto": "onednn" if ONEDNN else "blas", "numpy": "blas"}.get(backend, backend)
    assert stepper.numpy_ready == (backend in ("auto", "numpy"))
    step_state = state
    for t in range(SEQ_LEN):
        logits, step_state = stepper.step(idx[:, t], step_state)  # (B, V)
        torch.testing.assert_close(logits, want_logits[:, t], atol=ATOL, rtol=0, msg=lambda m, t=t: f"step {t}: {m}")

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


def count_numpy_calls(monkeypatch) -> list[int]:
    """Patch Linear so that each product numpy's BLAS runs appends its number of rows to the list returned."""
    calls: list[int] = []
    real = Linear._numpy

    def spy(self, x):
        calls.append(x.shape[0])
        return real(self, x)

    monkeypatch.setattr(Linear, "_numpy", spy)
    return calls


def test_auto_takes_numpy_for_one_row_only_while_torch_runs_on_one_thread(monkeypatch):
    stepper = StepModel(build("lstm", 2))
    calls = count_numpy_calls(monkeypatch)  # after the probes
    products = 3  # layer 0's hidden product, layer 1's [x, h] product, the head
    assert numpy_wins(1) and not numpy_wins(2)  # the module's fixture runs torch on one thread
    stepper.step(torch.tensor([1]), stepper.init_state(1))
    assert calls == [1] * products
    stepper.step(torch.tensor([1, 2]), stepper.init_state(2))
    assert calls == [1] * products  # several rows: not numpy
    torch.set_num_threads(2)
    try:
        assert not numpy_wins(1)
        stepper.step(torch.tensor([1]), stepper.init_state(1))
    finally:
        torch.set_num_threads(1)
    assert calls == [1] * products  # torch on two threads: not numpy, so the two pools never meet


def test_auto_leaves_numpy_out_when_its_product_disagrees(monkeypatch):
    """The numpy path is checked against addmm before use, like the oneDNN one."""
    monkeypatch.setattr(Linear, "_numpy", lambda self, x: torch.zeros(x.shape[0], self.weight.shape[0]))
    model = build("lstm", 2)
    stepper = StepModel(model)
    assert not stepper.numpy_ready
    with torch.no_grad():
        want, _ = model(torch.tensor([[3]]))
    got, _ = stepper.step(torch.tensor([3]), stepper.init_state(1))
    torch.testing.assert_close(got, want[:, 0], atol=ATOL, rtol=0)
    with pytest.raises(RuntimeError, match="differs"):
        StepModel(model, backend="numpy")


def test_numpy_backend_needs_a_float32_cpu_weight():
    assert not StepModel(build("rnn", 2).double()).numpy_ready
    with pytest.raises(ValueError, match="float32 CPU"):
        Linear(torch.zeros(4, 3, dtype=torch.float64), None, backend="numpy")


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


@pytest.mark.parametrize("streams", [1, 8])
def test_runner_on_the_cpu_gives_the_steps_logits_and_state(streams):
    """What generate() calls for each character: on the CPU the eager step, so the same numbers, step after step."""
    model = build("lstm", 2)
    stepper = StepModel(model)
    run = stepper.runner(streams)
    idx = torch.randint(0, VOCAB_SIZE, (streams, SEQ_LEN), generator=torch.Generator().manual_seed(11))
    ran = stepped = random_state(model, streams)
    for t in range(SEQ_LEN):
        got, ran = run(idx[:, t], ran)
        want, stepped = stepper.step(idx[:, t], stepped)
        assert torch.equal(got, want), f"step {t}"
        assert all(torch.equal(a, b) for a, b in zip(ran, stepped)), f"state after step {t}"

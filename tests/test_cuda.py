"""The CUDA code paths on a real GPU: training in fp32, bf16 and fp16, torch.compile, the fused
sampling step, evaluation, and checkpoints moving between the GPU and the CPU.

Skipped where there is no CUDA device (CI has none); run on a GPU machine with
``pytest tests/test_cuda.py``. TF32 is switched off so that the GPU's fp32 is comparable with the
CPU's to float tolerance.
"""

from __future__ import annotations

import gc
import json

import pytest
import torch

from charrnn import checkpoint as ckpt_io
from charrnn.cli import cli
from charrnn.data import Corpus
from charrnn.inference import GraphedStep, StepModel
from charrnn.loss import evaluate
from charrnn.model import CharRNN, ModelConfig
from charrnn.sample import generate
from charrnn.trainer import TrainConfig, Trainer
from conftest import TINY_MODEL, TINY_TRAIN, Recorder, make_text

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CORPUS = Corpus.from_text(make_text(400), "t.txt")


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def train(tmp_path, cell="lstm", **kw) -> tuple[Trainer, list[float]]:
    rec = Recorder()
    mc = ModelConfig(vocab_size=len(CORPUS.vocab), cell=cell, num_layers=2, hidden_size=64, embedding_size=16)
    options = dict(batch_size=8, seq_len=32, lr=1e-2, max_steps=40, eval_every=20, warmup_steps=0)
    options.update(kw)
    trainer = Trainer(mc, TrainConfig(**options), CORPUS, tmp_path, device="cuda", callback=rec)
    trainer.run()
    return trainer, rec.losses


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_step_model_matches_the_sequence_kernels_on_cuda(cell):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=13, cell=cell, num_layers=2, hidden_size=48, embedding_size=8)).cuda().eval()
    idx = torch.randint(0, 13, (4, 10), device="cuda")
    with torch.no_grad():
        want, want_state = model(idx)
        stepper = StepModel(model)
        assert stepper.device.type == "cuda" and stepper.backend == "blas"
        state = model.init_state(4, "cuda")
        for t in range(idx.shape[1]):
            logits, state = stepper.step(idx[:, t], state)
            torch.testing.assert_close(logits, want[:, t], atol=1e-4, rtol=1e-4)
    for got, ref in zip(state, want_state):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("streams", [1, 4])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_graphed_step_replays_the_eager_step(cell, streams):
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(vocab_size=13, cell=cell, num_layers=2, hidden_size=48, embedding_size=8)).cuda().eval()
    stepper = StepModel(model)
    graphed = StepModel(model).runner(streams)  # its own StepModel, dropped here: the graph must keep it
    assert isinstance(graphed, GraphedStep)
    gc.collect()
    junk = [torch.full((4096,), float("nan"), device="cuda") for _ in range(64)]  # reuse any freed memory
    start = tuple(0.5 * torch.randn(s.shape, device="cuda") for s in model.init_state(streams, "cuda"))
    saved = tuple(s.clone() for s in start)
    eager_state, graph_state = start, start
    for _ in range(12):
        idx = torch.randint(0, 13, (streams,), device="cuda")
        want, eager_state = stepper.step(idx, eager_state)
        got, graph_state = graphed(idx, graph_state)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        for g, w in zip(graph_state, eager_state):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=0)
    assert all(torch.equal(s, k) for s, k in zip(start, saved)), "the caller's state is not written to"
    del junk


def test_generate_on_cuda_gives_the_text_of_the_eager_step(monkeypatch):
    torch.manual_seed(2)
    model = CharRNN(ModelConfig(vocab_size=len(CORPUS.vocab), hidden_size=64, embedding_size=8)).cuda()

    def text():
        return ["".join(chars) for chars in zip(*generate(model, CORPUS.vocab, length=200, num_samples=3, seed=9))]

    graphed = text()
    monkeypatch.setattr(StepModel, "runner", lambda self, batch_size: self.step)
    assert text() == graphed


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_training_on_cuda_learns_and_its_checkpoint_runs_on_the_cpu(tmp_path, cell):
    trainer, losses = train(tmp_path, cell=cell)
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5, losses
    ckpt = ckpt_io.load(trainer.last_path)
    assert ckpt.train_config["device"].startswith("cuda")
    idx = torch.randint(0, len(CORPUS.vocab), (3, 20))
    with torch.no_grad():
        on_cpu, _ = ckpt.build_model("cpu")(idx)
        on_gpu, _ = ckpt.build_model("cuda")(idx.cuda())
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=1e-4)
    # The same loss wherever it is computed.
    ids = trainer.val_ids
    cpu_loss = evaluate(ckpt.build_model("cpu"), ids, batch_size=4, seq_len=64, device="cpu")
    gpu_loss = evaluate(ckpt.build_model("cuda"), ids, batch_size=4, seq_len=64, device="cuda")
    assert gpu_loss.n_chars == cpu_loss.n_chars
    assert gpu_loss.nats == pytest.approx(cpu_loss.nats, abs=1e-4)


def test_resume_on_cuda_continues_the_run_exactly(tmp_path):
    # A constant rate, so that the 15-step run's schedule is the first half of the 30-step one's.
    _, whole = train(tmp_path / "whole", max_steps=30, schedule="constant")
    first, head = train(tmp_path / "part", max_steps=15, schedule="constant")
    rec = Recorder()
    resumed = Trainer(
        first.model_config,
        TrainConfig(**{**first.train_config.to_dict(), "max_steps": 30}),
        CORPUS,
        tmp_path / "part",
        device="cuda",
        callback=rec,
        resume=ckpt_io.load(first.last_path),
    )
    resumed.run()
    assert head + rec.losses == pytest.approx(whole, abs=1e-4)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_gives_the_fp32_gradients_and_learns(tmp_path, dtype):
    # One step from the same weights and batch: the gradients left in the model are unscaled and
    # clipped, and must match fp32's to the precision's tolerance (fp16 goes through the GradScaler).
    ref, _ = train(tmp_path / "fp32", max_steps=1)
    low, _ = train(tmp_path / dtype, max_steps=1, dtype=dtype)
    assert low.scaler.is_enabled() == (dtype == "fp16")
    for (name, p32), p16 in zip(ref.model.named_parameters(), low.model.parameters()):
        rel = (p16.grad - p32.grad).norm() / p32.grad.norm()
        assert rel < (0.05 if dtype == "bf16" else 0.01), (name, float(rel))
    trainer, losses = train(tmp_path / f"{dtype}-run", dtype=dtype)
    assert all(map(lambda v: v == v, losses)), "no NaN losses"
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5, losses
    ckpt = ckpt_io.load(trainer.last_path)
    assert all(v.dtype == torch.float32 for v in ckpt.weights.values()), "weights stay fp32 under autocast"
    assert bool(ckpt.resume["scaler"]) == (dtype == "fp16")


def test_compile_on_cuda_gives_the_eager_run_and_saves_the_uncompiled_module(tmp_path):
    _, eager = train(tmp_path / "eager", max_steps=8)
    trainer, compiled = train(tmp_path / "compiled", max_steps=8, compile=True)
    assert compiled == pytest.approx(eager, rel=1e-3, abs=1e-3)
    raw = torch.load(trainer.last_path, weights_only=True)
    assert not [k for k in raw["model"] if k.startswith("_orig_mod")], "no torch.compile key prefixes"


def test_sampling_on_cuda_is_reproducible_with_a_seed():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(CORPUS.vocab), hidden_size=32, embedding_size=8)).cuda()
    runs = ["".join(c[0] for c in generate(model, CORPUS.vocab, length=60, seed=5)) for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 60
    other = "".join(c[0] for c in generate(model, CORPUS.vocab, length=60, seed=6))
    assert other != runs[0]


def test_cli_trains_samples_and_evaluates_on_cuda(runner, corpus_file, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        cli,
        [
            "train",
            str(corpus_file),
            *TINY_MODEL,
            *TINY_TRAIN,
            "--max-steps",
            "60",
            "--eval-every",
            "30",
            "--device",
            "cuda",
            "--dtype",
            "bf16",
            "--out-dir",
            str(out),
            "--json",
            "-q",
            "--sample-length",
            "0",
        ],
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["best_val_loss"] < 2.5
    samples = [
        runner.invoke(cli, ["sample", str(out / "best.pt"), "--device", "cuda", "--seed", "3", "--length", "80"])
        for _ in range(2)
    ]
    assert samples[0].exit_code == 0, samples[0].stderr
    assert samples[0].stdout == samples[1].stdout and len(samples[0].stdout) >= 80
    losses = {}
    for device in ("cuda", "cpu"):
        result = runner.invoke(cli, ["eval", str(out / "best.pt"), "--device", device, "--json"])
        assert result.exit_code == 0, result.stderr
        losses[device] = json.loads(result.stdout)["nats_per_char"]
    assert losses["cuda"] == pytest.approx(losses["cpu"], abs=1e-4)

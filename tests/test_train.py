"""The training loop: learning, determinism, exact resume, interrupts, the NaN guard, the time budget,
and the CUDA-oriented paths (autocast dtypes, torch.compile) where the CPU can exercise them."""

import functools
import types

import pytest
import torch

from charrnn import checkpoint as ckpt_io
from charrnn.data import Corpus
from charrnn.errors import ConfigError, DivergedError, OutputError
from charrnn.fsio import check_writable
from charrnn.model import ModelConfig
from charrnn.trainer import TrainConfig, Trainer
from conftest import Recorder, make_text, unigram_entropy

TEXT = make_text(400)


def corpus():
    return Corpus.from_text(TEXT, "tiny.txt")


def model_config(c, cell="lstm", dropout=0.0, hidden_size=24):
    return ModelConfig(
        vocab_size=len(c.vocab), cell=cell, num_layers=2, hidden_size=hidden_size, embedding_size=8, dropout=dropout
    )


def train_config(**kw):
    base = dict(batch_size=4, seq_len=16, lr=1e-2, warmup_steps=0, eval_every=10, seed=7)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def poison_step(monkeypatch):
    """``poison_step(n, factor)``: the loss of the n-th training forward pass (step n, when none was
    skipped) is multiplied by ``factor`` (NaN by default). Evaluation runs without gradients and is
    left alone."""
    real = torch.nn.functional.cross_entropy
    plan, calls = {}, {"n": 0}

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        if not torch.is_grad_enabled():
            return loss
        calls["n"] += 1
        return loss * plan[calls["n"]] if calls["n"] in plan else loss

    monkeypatch.setattr("charrnn.trainer.F.cross_entropy", poisoned)
    return lambda n, factor=float("nan"): plan.__setitem__(n, factor)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_learns_below_unigram_entropy(tmp_path, cell):
    c = corpus()
    rec = Recorder()
    result = Trainer(
        model_config(c, cell),
        train_config(max_steps=120, eval_every=60, batch_size=8, seq_len=32),
        c,
        tmp_path,
        callback=rec,
    ).run()
    assert result.stopped_by == "max_steps" and result.steps == 120
    assert result.best_val_loss < 0.6 * unigram_entropy(TEXT)
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    assert [e.step for e in rec.evals] == [60, 120]


def test_same_seed_same_loss_curve(tmp_path):
    c = corpus()
    runs = []
    for i in range(2):
        rec = Recorder()
        Trainer(model_config(c, dropout=0.2), train_config(max_steps=15), c, tmp_path / str(i), callback=rec).run()
        runs.append(rec.losses)
    assert runs[0] == runs[1]


def _weights(path):
    return ckpt_io.load(path).weights


@pytest.mark.parametrize("schedule", ["step", "constant"])
def test_resume_is_exact(tmp_path, schedule):
    """2N steps in one go == N steps, then resume to 2N: weights, optimizer, RNG, data position, state."""
    c = corpus()
    mc = model_config(c, dropout=0.3)  # dropout makes the RNG state matter
    cfg = dict(schedule=schedule, lr_decay_after=0, eval_every=100)
    full = Trainer(mc, train_config(max_steps=24, **cfg), c, tmp_path / "full").run()
    Trainer(mc, train_config(max_steps=12, **cfg), c, tmp_path / "half").run()
    half = ckpt_io.load(tmp_path / "half" / "last.pt")
    assert half.progress["step"] == 12
    resumed = Trainer(mc, train_config(max_steps=24, **cfg), c, tmp_path / "half", resume=half).run()
    assert resumed.steps == 24
    a, b = _weights(full.last_path), _weights(tmp_path / "half" / "last.pt")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_resume_takes_this_devices_optimizer_kernel(tmp_path):
    """A checkpoint whose optimizer groups say fused=None (an older run, or another device) resumes fused on the CPU."""
    c = corpus()
    mc = model_config(c)
    Trainer(mc, train_config(max_steps=2, eval_every=100), c, tmp_path / "run").run()
    ckpt = ckpt_io.load(tmp_path / "run" / "last.pt")
    for group in ckpt.resume["optimizer"]["param_groups"]:
        assert group["fused"] is True
        group["fused"] = None
    trainer = Trainer(mc, train_config(max_steps=3, eval_every=100), c, tmp_path / "run", resume=ckpt)
    assert all(group["fused"] is True for group in trainer.optimizer.param_groups)
    assert trainer.run().steps == 3


def test_resume_crosses_an_epoch_boundary(tmp_path):
    c = corpus()
    mc = model_config(c)
    cfg = dict(batch_size=16, seq_len=64, schedule="constant", eval_every=1000)
    steps_per_epoch = Trainer(mc, train_config(max_steps=1, **cfg), c, tmp_path / "probe").batches.steps_per_epoch
    total = steps_per_epoch + 3
    full = Trainer(mc, train_config(max_steps=total, **cfg), c, tmp_path / "full").run()
    Trainer(mc, train_config(max_steps=steps_per_epoch - 1, **cfg), c, tmp_path / "half").run()
    resumed = Trainer(
        mc,
        train_config(max_steps=total, **cfg),
        c,
        tmp_path / "half",
        resume=ckpt_io.load(tmp_path / "half" / "last.pt"),
    ).run()
    assert resumed.epochs > 1
    a, b = _weights(full.last_path), _weights(resumed.last_path)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_interrupt_saves_last_and_is_resumable(tmp_path):
    c = corpus()
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return "SIGINT" if calls["n"] > 5 else None

    result = Trainer(model_config(c), train_config(max_steps=50), c, tmp_path, should_stop=should_stop).run()
    assert result.stopped_by == "interrupt:SIGINT" and result.steps == 5
    saved = ckpt_io.load(tmp_path / "last.pt")
    assert saved.progress["step"] == 5 and saved.resume is not None


def test_nan_loss_stops_before_the_poisoned_step_reaches_a_checkpoint(tmp_path, poison_step):
    c = corpus()
    poison_step(15)  # between the evaluations (and saves) at steps 10 and 20
    with pytest.raises(DivergedError, match=r"diverged at step 15: .*lr.*grad_clip") as info:
        Trainer(model_config(c), train_config(max_steps=40, eval_every=10), c, tmp_path).run()
    assert f"resume={str(tmp_path / 'last.pt')!r}" in str(info.value)
    for name in ("best.pt", "last.pt"):
        saved = ckpt_io.load(tmp_path / name)  # load refuses non-finite weights
        assert saved.progress["step"] == 10, name


def test_without_the_guard_the_poisoned_step_would_reach_the_weights(tmp_path, poison_step, monkeypatch):
    """What the test above guards against: the poisoned step does make the weights non-finite."""
    monkeypatch.setattr("charrnn.trainer._finite_step", lambda *args: True)
    c = corpus()
    poison_step(15)
    trainer = Trainer(model_config(c), train_config(max_steps=15, eval_every=10), c, tmp_path)
    assert trainer.run().steps == 15
    assert not all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())


def test_on_nan_skip_halves_lr_and_continues(tmp_path, poison_step):
    c = corpus()
    rec = Recorder()
    poison_step(3, float("inf"))
    result = Trainer(
        model_config(c), train_config(max_steps=8, on_nan="skip", schedule="constant"), c, tmp_path, callback=rec
    ).run()
    assert result.steps == 8 and rec.skips == [(3, 0.5)]
    assert ckpt_io.load(tmp_path / "last.pt").progress["lr_scale"] == 0.5


@pytest.mark.slow  # a second of wall clock by design
def test_max_time_stops(tmp_path):
    c = corpus()
    result = Trainer(model_config(c), train_config(max_time=1.0), c, tmp_path).run()
    assert result.stopped_by == "max_time" and result.steps > 0  # the test below times it, on a clock of its own
    assert ckpt_io.load(tmp_path / "last.pt").progress["step"] == result.steps


def test_max_time_leaves_room_for_the_closing_evaluation_and_save(tmp_path, monkeypatch):
    """max_time is the whole run's wall clock: the loop stops early enough for the closing evaluation
    (as slow as the last one) to end within it. The trainer reads a fake clock, on which a step takes
    10 ms and an evaluation 0.5 s, so that a busy machine cannot move the numbers."""
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr("charrnn.trainer.time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    real_step, real_evaluate = Trainer.train_step, Trainer.evaluate

    def step(self, x, y):
        clock.now += 0.01
        return real_step(self, x, y)

    def evaluate(self):
        clock.now += 0.5
        return real_evaluate(self)

    monkeypatch.setattr(Trainer, "train_step", step)
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    c = corpus()
    rec = Recorder()
    result = Trainer(model_config(c), train_config(max_time=3.0, eval_every=30), c, tmp_path, callback=rec).run()
    assert result.stopped_by == "max_time"
    assert result.steps % 30 and rec.evals[-1].step == result.steps  # a closing evaluation, off the schedule
    assert 3.0 - 0.5 - 0.01 <= result.elapsed <= 3.0 + 1e-9
    assert result.elapsed == clock.now


def test_init_from_copies_weights_not_progress(tmp_path):
    c = corpus()
    Trainer(model_config(c), train_config(max_steps=10), c, tmp_path / "a").run()
    source = ckpt_io.load(tmp_path / "a" / "last.pt")
    t = Trainer(source.model_config, train_config(max_steps=5), c, tmp_path / "b", init_from=source)
    assert t.state.step == 0
    for name, tensor in t.model.state_dict().items():
        assert torch.equal(tensor, source.weights[name])


def test_val_frac_too_small_for_text(tmp_path):
    c = Corpus.from_text("abcdefghij" * 5, "t")
    with pytest.raises(ConfigError, match="val_frac=0.01 leaves 0 validation"):
        Trainer(model_config(c), train_config(val_frac=0.01, batch_size=1, seq_len=4), c, tmp_path)


def test_unwritable_out_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=r"cannot write to out_dir .*choose a writable folder"):
        check_writable(blocker / "sub")


# -- reduced precision and torch.compile, as far as the CPU goes ---------------------------------


def _small_run(tmp_path, **kw):
    c = Corpus.from_text(make_text(200), "t.txt")
    rec = Recorder()
    cfg = TrainConfig(batch_size=4, seq_len=16, max_steps=6, eval_every=100, warmup_steps=0, **kw)
    result = Trainer(model_config(c, hidden_size=32), cfg, c, tmp_path, callback=rec).run()
    return rec.losses, result


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_needs_cuda(tmp_path, dtype):
    with pytest.raises(ConfigError, match=f"dtype='{dtype}' needs a CUDA device; use dtype='fp32' on cpu"):
        _small_run(tmp_path, dtype=dtype)


@pytest.mark.slow
def test_compile_gives_the_same_run_and_saves_the_uncompiled_module(tmp_path, monkeypatch):
    eager, _ = _small_run(tmp_path / "eager")
    # aot_eager traces the model with dynamo and AOTAutograd like inductor does, without a C++ build.
    monkeypatch.setattr("charrnn.trainer.torch.compile", functools.partial(torch.compile, backend="aot_eager"))
    compiled, result = _small_run(tmp_path / "compiled", compile=True)
    assert compiled == pytest.approx(eager, rel=1e-4)
    raw = torch.load(result.last_path, weights_only=True)
    assert not [k for k in raw["model"] if k.startswith("_orig_mod")], "no torch.compile key prefixes"
    ckpt_io.load(result.last_path).build_model()

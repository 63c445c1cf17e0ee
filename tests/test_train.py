import math

import pytest
import torch

from charrnn import checkpoint as ckpt_io
from charrnn.data import Corpus
from charrnn.errors import ConfigError, DivergedError, OutputError
from charrnn.model import ModelConfig
from charrnn.fsio import check_writable
from charrnn.trainer import Callback, TrainConfig, Trainer, learning_rate
from conftest import make_text, unigram_entropy

TEXT = make_text(400)


def corpus():
    return Corpus.from_text(TEXT, "tiny.txt")


def model_config(c, cell="lstm", dropout=0.0):
    return ModelConfig(vocab_size=len(c.vocab), cell=cell, num_layers=2, hidden_size=24, embedding_size=8, dropout=dropout)


def train_config(**kw):
    base = dict(batch_size=4, seq_len=16, lr=1e-2, warmup_steps=0, eval_every=10, seed=7)
    base.update(kw)
    return TrainConfig(**base)


class Recorder(Callback):
    def __init__(self):
        self.losses, self.evals, self.skips = [], [], []

    def on_step(self, info):
        self.losses.append(info.loss)

    def on_eval(self, info):
        self.evals.append(info)

    def on_nan_skip(self, step, scale):
        self.skips.append((step, scale))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_learns_below_unigram_entropy(tmp_path, cell):
    c = corpus()
    rec = Recorder()
    result = Trainer(model_config(c, cell), train_config(max_steps=120, eval_every=60, batch_size=8, seq_len=32),
                     c, tmp_path, callback=rec).run()
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
    return ckpt_io.load(path).model


@pytest.mark.parametrize("schedule", ["step", "constant"])
def test_resume_is_exact(tmp_path, schedule):
    """2N steps in one go == N steps, then --resume to 2N: weights, optimizer, RNG, data position, state."""
    c = corpus()
    mc = model_config(c, dropout=0.3)  # dropout makes the RNG state matter
    full = Trainer(mc, train_config(max_steps=24, schedule=schedule, lr_decay_after=0, eval_every=100), c, tmp_path / "full").run()
    Trainer(mc, train_config(max_steps=12, schedule=schedule, lr_decay_after=0, eval_every=100), c, tmp_path / "half").run()
    half = ckpt_io.load(tmp_path / "half" / "last.pt")
    assert half.progress["step"] == 12
    resumed = Trainer(mc, train_config(max_steps=24, schedule=schedule, lr_decay_after=0, eval_every=100), c,
                      tmp_path / "half", resume=half).run()
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
    resumed = Trainer(mc, train_config(max_steps=total, **cfg), c, tmp_path / "half",
                      resume=ckpt_io.load(tmp_path / "half" / "last.pt")).run()
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


def test_nan_loss_stops_and_never_touches_best(tmp_path, monkeypatch):
    c = corpus()
    trainer = Trainer(model_config(c), train_config(max_steps=40, eval_every=10), c, tmp_path)
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 15 and torch.is_grad_enabled() else loss

    monkeypatch.setattr("charrnn.trainer.F.cross_entropy", poisoned)
    before = None
    with pytest.raises(DivergedError, match=r"diverged at step \d+.*--lr.*--grad-clip"):
        trainer.run()
    before = ckpt_io.load(tmp_path / "best.pt")
    assert before.progress["step"] == 10
    assert all(torch.isfinite(t).all() for t in before.model.values())


def test_on_nan_skip_halves_lr_and_continues(tmp_path, monkeypatch):
    c = corpus()
    rec = Recorder()
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("inf") if calls["n"] == 3 and torch.is_grad_enabled() else loss

    monkeypatch.setattr("charrnn.trainer.F.cross_entropy", poisoned)
    result = Trainer(model_config(c), train_config(max_steps=8, on_nan="skip", schedule="constant"), c, tmp_path, callback=rec).run()
    assert result.steps == 8 and rec.skips == [(3, 0.5)]
    assert ckpt_io.load(tmp_path / "last.pt").progress["lr_scale"] == 0.5


def test_max_time_stops(tmp_path):
    c = corpus()
    result = Trainer(model_config(c), train_config(max_steps=None, max_time=1.0), c, tmp_path).run()
    assert result.stopped_by == "max_time" and result.elapsed >= 1.0


def test_init_from_copies_weights_not_progress(tmp_path):
    c = corpus()
    Trainer(model_config(c), train_config(max_steps=10), c, tmp_path / "a").run()
    source = ckpt_io.load(tmp_path / "a" / "last.pt")
    t = Trainer(source.model_config, train_config(max_steps=5), c, tmp_path / "b", init_from=source)
    assert t.step == 0
    for name, tensor in t.model.state_dict().items():
        assert torch.equal(tensor, source.model[name])


def test_schedules():
    cfg = TrainConfig(lr=1.0, schedule="cosine", warmup_steps=10, min_lr_frac=0.1, max_steps=100)
    assert learning_rate(cfg, 0, 0.0, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 10, 0.1, 0) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert learning_rate(cfg, 99, 1.0, 0) == pytest.approx(0.1)
    wsd = TrainConfig(lr=1.0, schedule="wsd", warmup_steps=0, min_lr_frac=0.1, max_steps=100)
    assert [learning_rate(wsd, 0, p, 0) for p in (0.0, 0.5, 0.8, 0.9, 1.0)] == pytest.approx([1.0, 1.0, 1.0, 0.55, 0.1])
    step = TrainConfig(lr=1.0, schedule="step", warmup_steps=0, lr_decay=0.5, lr_decay_after=2, max_steps=1)
    assert [learning_rate(step, 0, 0, e) for e in range(4)] == [1.0, 1.0, 0.5, 0.25]


@pytest.mark.parametrize("kw", [dict(batch_size=0), dict(val_frac=0.0), dict(lr=-1.0), dict(schedule="linear"), dict(max_time=-5)])
def test_config_rejects_nonsense(kw):
    with pytest.raises(ConfigError):
        TrainConfig(**kw)


def test_val_frac_too_small_for_text(tmp_path):
    c = Corpus.from_text("abcdefghij" * 5, "t")
    with pytest.raises(ConfigError, match="--val-frac"):
        Trainer(model_config(c), train_config(val_frac=0.01, batch_size=1, seq_len=4), c, tmp_path)


def test_unwritable_out_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="--out-dir"):
        check_writable(blocker / "sub")

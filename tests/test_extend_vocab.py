"""Fine-tuning onto new characters (``--extend-vocab``) and the vocabulary's history in checkpoints
and ``inspect``."""

from __future__ import annotations

import json

import pytest
import torch

import charrnn
from charrnn import checkpoint as ckpt_io
from charrnn.api import Model
from charrnn.cli import cli
from charrnn.errors import CheckpointError, ConfigError, DataError
from charrnn.vocab_extend import extend
from conftest import TINY_TRAIN, make_text, one_line_error

NEW_CHARS = "éZ"


def new_text() -> str:
    """Text of the old kind with two characters the old model never saw."""
    lines = make_text(200, seed=3).splitlines(keepends=True)
    return "".join(line.replace("the", "thé") if i % 3 else "Zed " + line for i, line in enumerate(lines))


@pytest.mark.slow
def test_every_old_row_keeps_its_values_and_the_new_rows_are_added(trained_run):
    out, _ = trained_run
    old = ckpt_io.load(out / "best.pt")
    grown = extend(old, NEW_CHARS, new_text(), date="2026-12-05T12:00:00+00:00")
    assert grown.vocab.chars == "".join(sorted(set(old.vocab.chars) | set(NEW_CHARS)))
    assert grown.model_config.vocab_size == len(grown.vocab) == len(old.vocab) + 2
    for key in ("embedding.weight", "head.weight", "head.bias"):
        for i, ch in enumerate(old.vocab.chars):
            assert torch.equal(grown.weights[key][grown.vocab.chars.index(ch)], old.weights[key][i]), (key, ch)
    for key, tensor in old.weights.items():
        if key not in ("embedding.weight", "head.weight", "head.bias"):
            assert torch.equal(grown.weights[key], tensor), key
    assert grown.vocab_history[0]["chars"] == old.vocab.chars and grown.vocab_history[0]["step"] == 0
    assert grown.vocab_history[1] == {"chars": "Zé", "step": old.progress["step"], "date": "2026-12-05T12:00:00+00:00"}
    assert grown.resume is None
    assert extend(old, "", new_text()) is old


@pytest.mark.slow
def test_before_training_the_loss_on_old_text_is_within_a_hundredth_of_a_nat(trained_run):
    out, _ = trained_run
    old = ckpt_io.load(out / "best.pt")
    grown = extend(old, NEW_CHARS, new_text())
    text = make_text(120, seed=11)  # old characters only, text neither model has seen
    before = Model(old, "cpu").score(text).nats
    after = Model(grown, "cpu").score(text).nats
    assert abs(after - before) < 0.01, (before, after)
    assert after > before, "the new characters must keep some probability, or training could not raise it"


@pytest.mark.slow
def test_train_init_from_extend_vocab_end_to_end(trained_run, tmp_path, runner):
    out, _ = trained_run
    (tmp_path / "new.txt").write_text(new_text(), encoding="utf-8")
    base = ["train", str(tmp_path / "new.txt"), "--init-from", str(out / "best.pt"), *TINY_TRAIN]
    base += ["--max-steps", "12", "--eval-every", "6", "--sample-length", "0", "-q", "--device", "cpu"]
    one_line_error(
        runner.invoke(cli, [*base, "--out-dir", str(tmp_path / "a")]),
        1,
        r"'Z', 'é'.*pass --extend-vocab to add them",
    )
    result = runner.invoke(cli, [*base, "--out-dir", str(tmp_path / "b"), "--extend-vocab", "--json"])
    assert result.exit_code == 0, result.stderr
    old = ckpt_io.load(out / "best.pt")
    new = ckpt_io.load(tmp_path / "b" / "last.pt")
    assert set(new.vocab.chars) == set(old.vocab.chars) | set(NEW_CHARS)
    assert [entry["chars"] for entry in new.vocab_history] == [old.vocab.chars, "Zé"]
    assert new.vocab_history[1]["step"] == old.progress["step"]
    shown = json.loads(runner.invoke(cli, ["inspect", str(tmp_path / "b" / "last.pt"), "--json"]).stdout)
    assert [entry["chars"] for entry in shown["vocab_history"]] == [old.vocab.chars, "Zé"]
    assert shown["vocab_history"][1]["escaped"] == ["Z", "é"]
    table = runner.invoke(cli, ["inspect", str(tmp_path / "b" / "last.pt")]).stdout
    assert f"added at step {old.progress['step']}" in table and "Z é" in table
    # A resumed run keeps the history.
    resumed = runner.invoke(
        cli, ["train", "--resume", str(tmp_path / "b" / "last.pt"), "--max-steps", "14", "-q", "--device", "cpu"]
    )
    assert resumed.exit_code == 0, resumed.stderr
    assert ckpt_io.load(tmp_path / "b" / "last.pt").vocab_history == new.vocab_history


@pytest.mark.slow
def test_the_api_takes_extend_vocab_too(trained_run, tmp_path):
    out, _ = trained_run
    (tmp_path / "new.txt").write_text(new_text(), encoding="utf-8")
    common = dict(batch_size=8, seq_len=32, max_steps=4, eval_every=4, sample_length=0, device="cpu")
    with pytest.raises(DataError, match="extend_vocab=True"):
        charrnn.train(tmp_path / "new.txt", init_from=out / "best.pt", out_dir=tmp_path / "a", **common)
    with pytest.raises(ConfigError, match="init_from"):
        charrnn.train(tmp_path / "new.txt", extend_vocab=True, out_dir=tmp_path / "c", **common)
    result = charrnn.train(
        tmp_path / "new.txt", init_from=out / "best.pt", extend_vocab=True, out_dir=tmp_path / "b", **common
    )
    assert set(NEW_CHARS) <= set(charrnn.load(result.last_path).vocab.chars)


def test_vocab_history_missing_from_an_older_checkpoint_is_the_whole_vocabulary(trained_run, tmp_path):
    out, _ = trained_run
    raw = torch.load(out / "best.pt", weights_only=True)
    assert raw["vocab_history"][0]["chars"] == raw["vocab"]
    del raw["vocab_history"]
    torch.save(raw, tmp_path / "old.pt")
    old = ckpt_io.load(tmp_path / "old.pt")
    assert old.vocab_history == [{"chars": raw["vocab"], "step": 0, "date": raw["created"]}]
    for bad in ([], [{"chars": raw["vocab"][1:], "step": 0, "date": "x"}], [{"chars": raw["vocab"], "step": -1}]):
        raw["vocab_history"] = bad
        torch.save(raw, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="vocab_history"):
            ckpt_io.load(tmp_path / "bad.pt")

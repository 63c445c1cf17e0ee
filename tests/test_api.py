"""The Python API (``import charrnn``): the same results and the same rules as the command line."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import charrnn
from charrnn import checkpoint as ckpt_io
from charrnn.cli import cli
from conftest import make_text

TINY = dict(
    num_layers=1,
    hidden_size=32,
    embedding_size=8,
    batch_size=4,
    seq_len=16,
    lr=1e-2,
    warmup_steps=0,
    device="cpu",
    sample_length=0,
)


@pytest.fixture(scope="module", params=["lstm", "gru", "rnn"])
def cell_run(request, tmp_path_factory, corpus_file):
    out = tmp_path_factory.mktemp(f"api-{request.param}")
    result = charrnn.train(corpus_file, out_dir=out, cell=request.param, max_steps=30, eval_every=15, **TINY)
    return request.param, out, result


def test_the_public_api_is_what_all_names():
    for name in charrnn.__all__:
        assert hasattr(charrnn, name), name
    assert callable(charrnn.load) and callable(charrnn.train) and callable(charrnn.evaluate)


def test_load_sample_generate_score_on_every_cell(cell_run):
    cell, out, result = cell_run
    assert result.steps == 30 and result.best_path == out / "best.pt"
    model = charrnn.load(out / "best.pt", device="cpu")
    assert model.config.cell == cell and len(model.vocab) == model.config.vocab_size
    assert model.checkpoint.path == out / "best.pt"
    text = model.sample(50, prime="KING:", temperature=0.8, seed=3)
    assert isinstance(text, str) and text.startswith("KING:") and len(text) == 55
    assert set(text) <= set(model.vocab.chars)
    pieces = list(model.generate(50, prime="KING:", temperature=0.8, seed=3))
    assert pieces[0] == "KING:" and all(len(p) == 1 for p in pieces[1:]) and len(pieces) == 51
    assert "".join(pieces) == text
    samples = model.sample(20, prime="a", seed=3, num_samples=3)
    assert isinstance(samples, list) and len(samples) == 3 and all(len(s) == 21 and s[0] == "a" for s in samples)
    assert list(model.generate(20, prime="a", seed=3, num_samples=3)) == samples
    score = model.score("the cat sees the mat.")
    assert score.n_chars == 20 and math.isclose(score.bits, score.nats / math.log(2))
    assert math.isclose(score.perplexity, math.exp(score.nats))


def _naive_surprisal_bits(module, ids: list[int]) -> list[float]:
    """One character at a time through the module's own forward: -log2 p(next | all before)."""
    out, state = [], None
    with torch.no_grad():
        for t in range(len(ids) - 1):
            logits, state = module(torch.tensor([[ids[t]]]), state)
            logp = torch.log_softmax(logits[0, -1].double(), dim=0)
            out.append(-float(logp[ids[t + 1]]) / math.log(2))
    return out


def test_score_is_each_characters_surprisal_given_all_before_it(cell_run):
    _, out, _ = cell_run
    model = charrnn.load(out / "best.pt", device="cpu")
    text = make_text(30, seed=5)
    ids = [model.vocab.chars.index(c) for c in text]
    score = model.score(text)
    assert math.isnan(score.surprisal_bits[0]) and len(score.surprisal_bits) == len(text)
    naive = _naive_surprisal_bits(model.module, ids)
    np.testing.assert_allclose(score.surprisal_bits[1:], naive, rtol=1e-4, atol=1e-4)
    assert math.isclose(score.bits, float(np.mean(naive)), rel_tol=1e-5)


def test_score_carries_the_state_across_chunks(cell_run, monkeypatch):
    _, out, _ = cell_run
    model = charrnn.load(out / "best.pt", device="cpu")
    text = make_text(20, seed=7)
    whole = model.score(text)
    monkeypatch.setattr("charrnn.api.SCORE_CHUNK", 7)
    chunked = model.score(text)
    np.testing.assert_allclose(chunked.surprisal_bits[1:], whole.surprisal_bits[1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        ["--prime", "KING:", "--seed", "11", "--temperature", "0.9"],
        ["--seed", "2", "--top-k", "5", "--length", "80"],
        ["--argmax", "--prime", "the "],
        ["--num-samples", "3", "--seed", "4", "--length", "30"],
    ],
)
def test_sample_equals_charrnn_sample(runner, trained_run, options):
    out, _ = trained_run
    result = runner.invoke(cli, ["sample", str(out / "best.pt"), "--device", "cpu", "--json", *options])
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    kwargs = {k: printed[k] for k in ("prime", "temperature", "top_k", "argmax", "seed", "num_samples")}
    text = charrnn.load(out / "best.pt", device="cpu").sample(printed["length"], **kwargs)
    assert (text if isinstance(text, list) else [text]) == printed["samples"]


def test_sample_equals_charrnn_sample_streamed(runner, trained_run):
    out, _ = trained_run
    result = runner.invoke(
        cli, ["sample", str(out / "best.pt"), "--device", "cpu", "--prime", "QUEEN:", "--seed", "8", "-n", "200"]
    )
    assert result.exit_code == 0, result.stderr
    model = charrnn.load(out / "best.pt", device="cpu")
    assert result.stdout == model.sample(200, prime="QUEEN:", seed=8) + "\n"


def test_errors_speak_the_librarys_names(trained_run):
    out, _ = trained_run
    model = charrnn.load(out / "best.pt", device="cpu")
    with pytest.raises(charrnn.ConfigError, match=r"^length must be at least 1"):
        model.sample(0)
    with pytest.raises(charrnn.ConfigError, match=r"^top_k must be between"):
        model.sample(5, top_k=10_000)
    with pytest.raises(charrnn.ConfigError, match=r"use argmax=True"):
        model.sample(5, temperature=0)
    with pytest.raises(charrnn.DataError, match=r"^prime: 1 character"):
        model.sample(5, prime="@")
    with pytest.raises(charrnn.CheckpointError):
        charrnn.load(out / "missing.pt")


def test_unknown_keyword_names_the_nearest_valid_one(tmp_path, corpus_file):
    with pytest.raises(charrnn.ConfigError, match=r"unknown training option 'hiden_size'; did you mean 'hidden_size'"):
        charrnn.train(corpus_file, out_dir=tmp_path, hiden_size=64)
    with pytest.raises(charrnn.ConfigError, match=r"did you mean 'max_time'"):
        charrnn.train(corpus_file, out_dir=tmp_path, max_tim="5m")
    assert not (tmp_path / "last.pt").exists()


def test_train_refuses_a_used_out_dir_without_force(tmp_path, corpus_file):
    charrnn.train(corpus_file, out_dir=tmp_path, max_steps=2, eval_every=100, **TINY)
    before = (tmp_path / "best.pt").read_bytes()
    with pytest.raises(charrnn.ConfigError, match=r"already holds checkpoints.*resume=.*force=True"):
        charrnn.train(corpus_file, out_dir=tmp_path, max_steps=2, **TINY)
    assert (tmp_path / "best.pt").read_bytes() == before
    again = charrnn.train(corpus_file, out_dir=tmp_path, max_steps=3, force=True, **TINY)
    assert again.steps == 3


def test_resume_refuses_a_different_text(tmp_path, corpus_file):
    charrnn.train(corpus_file, out_dir=tmp_path / "a", max_steps=2, eval_every=100, **TINY)
    other = tmp_path / "other.txt"
    other.write_text(make_text(seed=1), encoding="utf-8")
    with pytest.raises(charrnn.ConfigError, match=r"differs from the one .* was trained on.*init_from"):
        charrnn.train(other, resume=tmp_path / "a" / "last.pt", max_steps=4)


def test_twenty_plus_resumed_twenty_steps_equal_forty(tmp_path, corpus_file):
    options = dict(TINY, schedule="cosine", eval_every=10, max_steps=40)
    charrnn.train(corpus_file, out_dir=tmp_path / "whole", **options)
    steps = []  # the cosine schedule follows the 40-step budget: stop the first part at 20 from outside

    class Steps(charrnn.Callback):
        def on_step(self, info):
            steps.append(info.step)

    part = charrnn.train(
        corpus_file, out_dir=tmp_path / "parts", callback=Steps(), should_stop=lambda: len(steps) >= 20, **options
    )
    assert part.steps == 20 and part.stopped_by == "interrupt:should_stop"
    rest = charrnn.train(resume=tmp_path / "parts" / "last.pt", max_steps=40)  # the text found again
    assert rest.steps == 40 and rest.last_path == tmp_path / "parts" / "last.pt"
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    parts = torch.load(tmp_path / "parts" / "last.pt", weights_only=True)["model"]
    assert whole.keys() == parts.keys()
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name


@pytest.mark.slow
def test_max_time_takes_a_duration_string(tmp_path, corpus_file):
    result = charrnn.train(corpus_file, out_dir=tmp_path, max_time="1.5s", eval_every=10_000, **TINY)
    assert result.stopped_by == "max_time"
    with pytest.raises(charrnn.ConfigError, match=r"^max_time 'soon' is not a duration"):
        charrnn.train(corpus_file, out_dir=tmp_path / "x", max_time="soon", **TINY)


@pytest.mark.slow
def test_should_stop_stops_a_run_in_another_thread(tmp_path, corpus_file):
    stop = threading.Event()
    box = {}

    def work():
        box["result"] = charrnn.train(
            corpus_file, out_dir=tmp_path, max_steps=100_000, eval_every=10_000, should_stop=stop.is_set, **TINY
        )

    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / "cache").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    result = box["result"]
    assert result.stopped_by == "interrupt:should_stop" and 0 < result.steps < 100_000
    assert ckpt_io.load(result.last_path).progress["step"] == result.steps


@pytest.mark.slow
def test_ctrl_c_saves_last_and_raises_keyboard_interrupt(tmp_path, corpus_file):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        import charrnn

        def started(info):
            if info.step == 1:
                print("started", flush=True)

        class Started(charrnn.Callback):
            def on_step(self, info):
                started(info)

        try:
            charrnn.train({str(corpus_file)!r}, out_dir={str(tmp_path / "out")!r}, max_steps=1_000_000,
                          eval_every=100_000, callback=Started(), **{TINY!r})
        except KeyboardInterrupt as exc:
            print("KeyboardInterrupt:", exc, flush=True)
            sys.exit(7)
    """)
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(charrnn.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 7, stderr
    assert "KeyboardInterrupt: training stopped by SIGINT" in stdout
    saved = ckpt_io.load(tmp_path / "out" / "last.pt")
    assert saved.progress["step"] >= 1 and saved.resume is not None
    assert "Traceback" not in stderr


def test_evaluate_matches_charrnn_eval(runner, trained_run, corpus_file):
    out, _ = trained_run
    for args, text in (([], None), ([str(corpus_file)], corpus_file)):
        result = runner.invoke(cli, ["eval", str(out / "best.pt"), *args, "--device", "cpu", "--json"])
        assert result.exit_code == 0, result.stderr
        printed = json.loads(result.stdout)
        ev = charrnn.evaluate(out / "best.pt", text, device="cpu")
        assert ev.nats == printed["loss_nats"] and ev.n_chars == printed["n_chars"] and ev.text == printed["text"]


def test_evaluate_refuses_a_changed_text(tmp_path, corpus_file):
    text = tmp_path / "t.txt"
    text.write_text(make_text(), encoding="utf-8")
    charrnn.train(text, out_dir=tmp_path / "o", max_steps=2, **TINY)
    text.write_text(make_text(seed=3), encoding="utf-8")
    with pytest.raises(charrnn.ConfigError, match=r"changed since .* was trained"):
        charrnn.evaluate(tmp_path / "o" / "best.pt", device="cpu")


def test_train_returns_the_closing_sample(tmp_path, corpus_file):
    result = charrnn.train(corpus_file, out_dir=tmp_path, max_steps=3, **{**TINY, "sample_length": 25})
    assert isinstance(result.sample, str) and len(result.sample) == 25


def test_train_restores_the_callers_signal_handler(tmp_path, corpus_file):
    def mine(signum, frame):  # pragma: no cover - never called
        pass

    before = signal.signal(signal.SIGINT, mine)
    try:
        charrnn.train(corpus_file, out_dir=tmp_path, max_steps=2, **TINY)
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, before)

"""What charrnn promises (docs/guarantees.md): no lost work, no trusted strangers, clear errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn import checkpoint as ckpt_io
from charrnn.cli import cli
from charrnn.data import Corpus
from charrnn.errors import CheckpointError
from charrnn.model import CharRNN, ModelConfig
from charrnn.trainer import TrainConfig, Trainer
from conftest import TINY_MODEL, TINY_TRAIN, make_text, one_line_error

PYTHON = sys.executable


def _env():
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- interrupts --------------------------------------------------------------------------------


def train_until(path: Path, *args: str, timeout: float = 60) -> subprocess.Popen:
    """``python -m charrnn train ARGS`` on the CPU in a child process, returned once it has written
    ``path`` (its first checkpoint); the caller signals it and reads its output."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "charrnn", "train", *args, "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        text=True,
    )
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if not path.exists():
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"training never wrote {path.name}:\n{stderr}")
    return proc


@pytest.mark.slow  # a child process trains to its first checkpoint
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_step_saves_last_and_exits_with_documented_code(tmp_path, corpus_file, sig, code):
    out = tmp_path / "run"
    args = [str(corpus_file), *TINY_MODEL, *TINY_TRAIN, "--max-steps", "100000", "--eval-every", "20"]
    proc = train_until(out / "last.pt", *args, "--out-dir", str(out))
    try:
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert f"charrnn train --resume {out / 'last.pt'}" in stderr
    saved = ckpt_io.load(out / "last.pt")
    assert saved.resume is not None and saved.progress["step"] >= 20
    assert stdout == ""


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once_without_corrupting_files(tmp_path, corpus_file):
    out = tmp_path / "run"
    # A model big enough that the step in flight takes a while after the first signal.
    args = [str(corpus_file), "--hidden-size", "128", "--batch-size", "32", "--seq-len", "64", "--max-steps", "100000"]
    proc = train_until(out / "best.pt", *args, "--eval-every", "1", "--out-dir", str(out), timeout=90)
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    for name in ("last.pt", "best.pt"):
        ckpt_io.load(out / name)  # both still valid, whatever moment the second signal hit
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "temporary files are removed"


_LATE_SIGNAL = textwrap.dedent(
    """
    import atexit, os, signal, sys, time
    from charrnn.cli import main

    SIG = getattr(signal, sys.argv[1])

    def late_signal():  # runs while the interpreter shuts down, after main() has returned its code
        os.kill(os.getpid(), SIG)
        time.sleep(2)  # a Python handler would run here, and a default one would end the process

    atexit.register(late_signal)
    sys.argv = ["charrnn", "--version"]
    main()
    """
)


@pytest.mark.slow  # a child process imports charrnn and torch
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_during_shutdown_leaves_the_commands_exit_code_and_no_traceback(tmp_path, sig):
    """The second Ctrl-C often lands after training has stopped, while the interpreter shuts down."""
    script = tmp_path / "late.py"
    script.write_text(_LATE_SIGNAL)
    proc = subprocess.run([PYTHON, str(script), sig], capture_output=True, text=True, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr  # --version's code, not death by the signal
    assert proc.stdout.startswith("charrnn, version")
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


# -- atomic saves ------------------------------------------------------------------------------

_SAVER = textwrap.dedent(
    """
    import sys, torch
    from charrnn import checkpoint as ckpt_io
    from charrnn.model import CharRNN, ModelConfig
    cfg = ModelConfig(vocab_size=50, hidden_size=128, embedding_size=32)
    out = sys.argv[1]
    i = 0
    print("ready", flush=True)
    while True:
        torch.manual_seed(i)
        model = CharRNN(cfg)
        ckpt = ckpt_io.Checkpoint(path=None, model_config=cfg, vocab="".join(chr(65 + k) for k in range(50)),
                                  weights=model.state_dict(), progress={"step": i})
        ckpt_io.save(ckpt, out)
        i += 1
    """
)


@pytest.mark.slow  # eight child processes, each importing torch
def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    target = tmp_path / "last.pt"
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    rng = random.Random(0)
    steps_seen = set()
    for _ in range(8):
        proc = subprocess.Popen([PYTHON, str(script), str(target)], stdout=subprocess.PIPE, env=_env(), text=True)
        assert proc.stdout.readline().strip() == "ready"
        while not target.exists():
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        loaded = ckpt_io.load(target)  # never half a file
        steps_seen.add(loaded.progress["step"])
    assert len(steps_seen) > 1, "the saver must have been killed at different points"


# -- untrusted checkpoints ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_checkpoint_bytes(tmp_path_factory) -> bytes:
    cfg = ModelConfig(vocab_size=5, num_layers=1, hidden_size=4, embedding_size=2)
    torch.manual_seed(0)
    ckpt = ckpt_io.Checkpoint(path=None, model_config=cfg, vocab="abcde", weights=CharRNN(cfg).state_dict())
    path = ckpt_io.save(ckpt, tmp_path_factory.mktemp("ck") / "small.pt")
    return path.read_bytes()


def _load_bytes(tmp_path: Path, raw: bytes):
    path = tmp_path / "fuzzed.pt"
    path.write_bytes(raw)
    return ckpt_io.load(path)


@pytest.mark.slow  # 200 cases
@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_byte_flips_never_crash_or_hang(tmp_path, small_checkpoint_bytes, data):
    raw = bytearray(small_checkpoint_bytes)
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), min_size=1, max_size=8))
    for pos, xor in flips:
        raw[pos] ^= xor
    try:
        ckpt = _load_bytes(tmp_path, bytes(raw))
    except CheckpointError as exc:
        assert "not a valid charrnn checkpoint" in str(exc) or "newer than" in str(exc)
        assert "\n" not in str(exc)
    else:
        # Only a flip in the archive's alignment padding, which no checksum covers, may load; the
        # content must then be exactly the original.
        original = _load_bytes(tmp_path, small_checkpoint_bytes)
        assert ckpt.vocab == original.vocab and ckpt.model_config == original.model_config
        assert all(torch.equal(ckpt.weights[k], original.weights[k]) for k in original.weights)


@settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0))
def test_truncations_give_the_one_line_error(tmp_path, small_checkpoint_bytes, cut):
    cut = cut % len(small_checkpoint_bytes)
    with pytest.raises(CheckpointError, match="not a valid charrnn checkpoint") as info:
        _load_bytes(tmp_path, small_checkpoint_bytes[:cut])
    assert "\n" not in str(info.value)


def test_cli_fuzzed_checkpoint_exit_code_three(runner, tmp_path, small_checkpoint_bytes):
    raw = bytearray(small_checkpoint_bytes)
    raw[len(raw) // 3 : len(raw) // 3 + 40] = b"\xff" * 40
    (tmp_path / "bad.pt").write_bytes(bytes(raw))
    one_line_error(runner.invoke(cli, ["inspect", str(tmp_path / "bad.pt")]), 3, r"bad\.pt")


# -- exact resume through the CLI and the cosine schedule ---------------------------------------


def test_interrupted_cosine_run_resumes_to_the_same_weights(tmp_path):
    text = make_text(300)
    corpus = Corpus.from_text(text, "t.txt")
    mc = ModelConfig(vocab_size=len(corpus.vocab), hidden_size=24, embedding_size=8, dropout=0.2)
    cfg = dict(batch_size=4, seq_len=16, lr=1e-2, max_steps=30, eval_every=7, seed=3)
    full = Trainer(mc, TrainConfig(**cfg), corpus, tmp_path / "full").run()
    count = {"n": 0}

    def stop_at_13():
        count["n"] += 1
        return "SIGINT" if count["n"] > 13 else None

    Trainer(mc, TrainConfig(**cfg), corpus, tmp_path / "cut", should_stop=stop_at_13).run()
    resumed = Trainer(
        mc, TrainConfig(**cfg), corpus, tmp_path / "cut", resume=ckpt_io.load(tmp_path / "cut" / "last.pt")
    ).run()
    a, b = ckpt_io.load(full.last_path).weights, ckpt_io.load(resumed.last_path).weights
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_cli_resume_matches_uninterrupted_run(runner, corpus_file, tmp_path):
    common = [
        str(corpus_file),
        *TINY_MODEL,
        *TINY_TRAIN,
        "--schedule",
        "constant",
        "--dropout",
        "0.1",
        "--eval-every",
        "10",
        "-q",
        "--sample-length",
        "0",
        "--device",
        "cpu",
    ]
    assert runner.invoke(cli, ["train", *common, "--max-steps", "40", "--out-dir", str(tmp_path / "a")]).exit_code == 0
    assert runner.invoke(cli, ["train", *common, "--max-steps", "20", "--out-dir", str(tmp_path / "b")]).exit_code == 0
    result = runner.invoke(
        cli, ["train", "--resume", str(tmp_path / "b" / "last.pt"), "--max-steps", "40", "-q", "--sample-length", "0"]
    )
    assert result.exit_code == 0, result.stderr
    a = ckpt_io.load(tmp_path / "a" / "last.pt")
    b = ckpt_io.load(tmp_path / "b" / "last.pt")
    assert b.progress["step"] == 40
    for name in a.weights:
        assert torch.equal(a.weights[name], b.weights[name]), name
    assert a.history["val_loss"] == b.history["val_loss"]


# -- bad inputs not covered in test_cli ----------------------------------------------------------


def test_seq_len_longer_than_corpus(runner, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello world\n" * 20)
    result = runner.invoke(
        cli, ["train", str(path), "--seq-len", "5000", "--batch-size", "1", "--out-dir", str(tmp_path / "o")]
    )
    one_line_error(result, 1, r"too few for one batch.*--seq-len")


def test_val_frac_leaving_no_validation(runner, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello world\n" * 20)
    result = runner.invoke(
        cli,
        [
            "train",
            str(path),
            "--val-frac",
            "0.001",
            "--batch-size",
            "1",
            "--seq-len",
            "8",
            "--out-dir",
            str(tmp_path / "o"),
        ],
    )
    one_line_error(result, 1, r"--val-frac 0\.001 leaves 0 validation")


def test_prime_of_only_unknown_characters(runner, trained_run):
    out, _ = trained_run
    result = runner.invoke(cli, ["sample", str(out / "best.pt"), "--prime", "ßß€"])
    one_line_error(result, 1, r"'ß', '€'")


def test_unwritable_out_dir_is_refused_before_training(runner, corpus_file, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    result = runner.invoke(cli, ["train", str(corpus_file), "--out-dir", str(blocker / "run")])
    one_line_error(result, 5, r"--out-dir")


# -- Unicode -------------------------------------------------------------------------------------

UNICODE_LINE = "日本語のテキスト 😀🎉 cafe\u0301 nai\u0308ve\r\n"  # CJK, astral emoji, combining marks, CRLF


@pytest.mark.slow  # 150 training steps
def test_unicode_survives_train_sample_round_trip(runner, tmp_path):
    path = tmp_path / "u.txt"
    path.write_bytes(("\ufeff" + UNICODE_LINE * 400).encode("utf-8"))
    out = tmp_path / "o"
    result = runner.invoke(
        cli,
        [
            "train",
            str(path),
            "--num-layers",
            "1",
            "--hidden-size",
            "64",
            "--embedding-size",
            "16",
            "--batch-size",
            "8",
            "--seq-len",
            "48",
            "--lr",
            "1e-2",
            "--max-steps",
            "150",
            "--eval-every",
            "150",
            "--out-dir",
            str(out),
            "-q",
            "--sample-length",
            "0",
        ],
    )
    assert result.exit_code == 0, result.stderr
    info = json.loads(runner.invoke(cli, ["inspect", str(out / "best.pt"), "--json"]).stdout)
    assert (
        "😀" in info["vocab"]["chars"] and "\u0301" in info["vocab"]["chars"] and "\ufeff" not in info["vocab"]["chars"]
    )
    assert "\\r" in info["vocab"]["escaped"] and "U+0301" not in info["vocab"]["escaped"]
    sample = runner.invoke(
        cli, ["sample", str(out / "best.pt"), "--argmax", "--prime", "日本", "--length", str(3 * len(UNICODE_LINE))]
    )
    assert sample.exit_code == 0
    # A whole line, emoji, combining accents and CRLF included, reproduced exactly. (Result.stdout
    # would turn CRLF into LF, so read the raw bytes.)
    assert UNICODE_LINE.encode("utf-8") in sample.stdout_bytes


def test_vocabulary_escapes_non_printable_characters(runner, tmp_path):
    path = tmp_path / "z.txt"
    path.write_text(("a\u200bb\tc\x07d\n" * 300), encoding="utf-8")
    out = tmp_path / "o"
    assert (
        runner.invoke(
            cli,
            [
                "train",
                str(path),
                *TINY_MODEL,
                *TINY_TRAIN,
                "--max-steps",
                "1",
                "--out-dir",
                str(out),
                "-q",
                "--sample-length",
                "0",
            ],
        ).exit_code
        == 0
    )
    table = runner.invoke(cli, ["inspect", str(out / "last.pt")]).stdout
    assert "U+200B" in table and "U+0007" in table and "\\t" in table and "\x07" not in table

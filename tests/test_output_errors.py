"""Output that cannot be written (docs/guarantees.md): stdout write errors are exit 5 with one line on
stderr, a reader that went away is a quiet exit 0, a stderr that fails silences the progress and never
stops training; and every ``--json`` is strict JSON (no NaN or Infinity)."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import charrnn
from charrnn.cli import cli
from charrnn.cli.common import echo_json
from charrnn.cli.progress import Progress
from conftest import TINY_MODEL, TINY_TRAIN

pytestmark = pytest.mark.usefixtures("one_thread")

ERRNOS = [errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG, errno.EBADF, errno.EPIPE]


def strict_loads(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, which are not JSON."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


class FailingStream(io.TextIOBase):
    """A text stream that raises OSError(``err``) once more than ``fail_after`` characters were
    written, at the write that crosses it (``on="write"``) or at the next flush (``on="flush"``)."""

    encoding, errors = "utf-8", "strict"

    def __init__(self, fail_after: int, err: int, on: str = "write"):
        self.fail_after, self.err, self.on = fail_after, err, on
        self.text = io.StringIO()
        self.failed = False

    def writable(self) -> bool:
        return True

    def _fail(self):
        if not self.failed:
            self.failed, self.written_before_failure = True, len(self.text.getvalue())
        raise OSError(self.err, os.strerror(self.err))

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("str expected")
        if self.on == "write" and len(self.text.getvalue()) + len(s) > self.fail_after:
            self._fail()
        return self.text.write(s)

    def flush(self):
        if self.on == "flush" and len(self.text.getvalue()) > self.fail_after:
            self._fail()

    def isatty(self) -> bool:
        return False


def run_cli(args, stdout) -> tuple[int, str]:
    """``charrnn ARGS`` in this process with ``stdout`` as sys.stdout: (exit code, stderr)."""
    err = io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stdout, err
    try:
        cli.main([str(a) for a in args], prog_name="charrnn", standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdout, sys.stderr = saved
    return code, err.getvalue()


def commands(out, corpus):
    best = out / "best.pt"
    return {
        "sample": ["sample", best, "--length", 300, "--seed", 1, "--device", "cpu"],
        "sample --num-samples": ["sample", best, "--length", 40, "--num-samples", 3, "--seed", 1, "--device", "cpu"],
        "sample --json": ["sample", best, "--length", 40, "--seed", 1, "--json", "--device", "cpu"],
        "inspect": ["inspect", best],
        "inspect --json": ["inspect", best, "--json"],
        "eval": ["eval", best, corpus, "--device", "cpu"],
        "eval --json": ["eval", best, corpus, "--json", "--device", "cpu"],
        "visualize": ["visualize", best, "--string", "KING:\nthe cat sees", "--unit", 0, "--device", "cpu"],
        "visualize --json": ["visualize", best, "--string", "KING: the cat", "--predictions", "--json"],
    }


@pytest.mark.slow  # up to 80 commands in process
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(sorted(commands(Path("o"), "c"))),
    fail_after=st.integers(0, 6000),
    err=st.sampled_from(ERRNOS),
    on=st.sampled_from(["write", "flush"]),
)
def test_every_command_turns_a_failing_stdout_into_exit_5_or_a_quiet_exit_0(
    trained_run, corpus_file, name, fail_after, err, on
):
    out, _ = trained_run
    stream = FailingStream(fail_after, err, on)
    code, stderr = run_cli(commands(out, corpus_file)[name], stream)
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    if not stream.failed:  # the whole product fitted: the command succeeded, and its JSON is strict
        assert code == 0 and errors == [], stderr
        if name.endswith("--json"):
            strict_loads(stream.text.getvalue())
    elif err == errno.EPIPE:  # the reader went away: not an error
        assert code == 0 and errors == [], stderr
    else:
        assert code == 5, (code, stderr)
        assert errors == [errors[-1]] and stderr.rstrip().endswith(errors[0])
        assert "cannot write the output to stdout" in errors[0] and "\n" not in errors[0]


# One child process runs every case against real file descriptors: /dev/full, a pipe whose reader
# has gone, and a descriptor closed before start; through ``charrnn.cli.main``, as the console script.
HARNESS = textwrap.dedent(
    """
    import json, os, sys, tempfile
    from charrnn.cli import main

    cases = json.loads(sys.argv[1])
    out_saved, err_saved = os.dup(1), os.dup(2)
    results = []
    for args, which, how in cases:
        fd = 1 if which == "stdout" else 2
        capture = tempfile.TemporaryFile()
        other = 2 if fd == 1 else 1
        os.dup2(capture.fileno(), other)  # the stream not under test is captured
        if how == "full":
            target = os.open("/dev/full", os.O_WRONLY)
            os.dup2(target, fd)
            os.close(target)
        elif how == "pipe":
            r, w = os.pipe()
            os.close(r)
            os.dup2(w, fd)
            os.close(w)
        else:
            os.close(fd)
        def stream(n):
            try:
                os.fstat(n)
            except OSError:
                return None
            return open(n, "w", encoding="utf-8", closefd=False)
        sys.stdout, sys.stderr = stream(1), stream(2)
        sys.argv = ["charrnn", *args]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        try:
            sys.stdout and sys.stdout.flush()
        except OSError:
            pass
        os.dup2(out_saved, 1)
        os.dup2(err_saved, 2)
        capture.seek(0)
        results.append([code, capture.read().decode("utf-8", "replace")])
    os.write(out_saved, json.dumps(results).encode())
    """
)


def run_harness(cases) -> list:
    """[(exit code, what the other stream got)] per (args, "stdout"|"stderr", "full"|"pipe"|"closed")."""
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, json.dumps([[[str(a) for a in args], w, h] for args, w, h in cases])],
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


@pytest.mark.slow  # a child process: 15 commands and 3 training runs on real file descriptors
def test_real_descriptors_full_closed_pipe_and_closed_stdout_and_stderr(trained_run, corpus_file, tmp_path):
    out, _ = trained_run
    names = ["sample", "inspect", "inspect --json", "eval --json", "visualize --json"]
    cmds = commands(out, corpus_file)
    cases = [(cmds[name], "stdout", how) for name in names for how in ("full", "pipe", "closed")]
    train = ["train", corpus_file, *TINY_MODEL, *TINY_TRAIN, "--max-steps", 12, "--eval-every", 4, "--device", "cpu"]
    train += ["--sample-length", 50, "--json"]  # not --quiet: progress, evaluation lines and the summary on stderr
    hows = ("full", "pipe", "closed")
    cases += [([*train, "--out-dir", tmp_path / how], "stderr", how) for how in hows]
    results = run_harness(cases)
    for (args, which, how), (code, other) in zip(cases, results):
        what = f"{args[0]} {' '.join(a for a in map(str, args) if a.startswith('--'))} with {which} {how}"
        assert "Traceback" not in other, (what, other)
        if which == "stdout" and how == "pipe":
            assert code == 0 and "Error" not in other, (what, code, other)
        elif which == "stdout":
            lines = [line for line in other.splitlines() if line.startswith("Error:")]
            assert code == 5 and len(lines) == 1, (what, code, other)
            assert "cannot write the output to stdout" in lines[0], (what, lines)
        else:  # stderr failed: training went on, wrote its checkpoints, and printed its JSON summary
            assert code == 0, (what, code, other)
            summary = strict_loads(other)
            assert summary["steps"] == 12 and summary["best"] is not None, what
            assert charrnn.load(summary["last"]).checkpoint.progress["step"] == 12


@pytest.mark.slow  # a few short training runs
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fail_after=st.integers(0, 3000), err=st.sampled_from(ERRNOS), on=st.sampled_from(["write", "flush"]))
def test_progress_that_cannot_be_written_falls_silent_and_training_goes_on(
    tmp_path_factory, corpus_file, fail_after, err, on
):
    out = tmp_path_factory.mktemp("silent")
    stream = FailingStream(fail_after, err, on)
    progress = Progress(quiet=False, stream=stream)
    try:
        result = charrnn.train(
            corpus_file,
            out_dir=out,
            cell="gru",
            num_layers=1,
            hidden_size=16,
            embedding_size=8,
            batch_size=4,
            seq_len=16,
            max_steps=12,
            eval_every=3,
            sample_length=0,
            device="cpu",
            callback=progress,
        )
    finally:
        progress.close()
    assert result.steps == 12 and progress.silent == stream.failed
    assert charrnn.load(out / "last.pt").checkpoint.progress["step"] == 12
    if stream.failed:  # nothing was written after the failure: a torn line is worse than none
        assert len(stream.text.getvalue()) == stream.written_before_failure


finite_or_not = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=5), st.none(), st.booleans()
)
json_like = st.recursive(
    finite_or_not,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


def _same_but_nulls(sent, got) -> bool:
    if isinstance(sent, float) and not isinstance(sent, bool):
        return got is None if not math.isfinite(sent) else got == sent
    if isinstance(sent, dict):
        return sent.keys() == got.keys() and all(_same_but_nulls(sent[k], got[k]) for k in sent)
    if isinstance(sent, (list, tuple)):
        return len(sent) == len(got) and all(_same_but_nulls(a, b) for a, b in zip(sent, got))
    return sent == got


@settings(max_examples=200, deadline=None)
@given(obj=json_like)
def test_json_output_is_strict_json_with_null_for_nan_and_infinity(obj):
    buffer = io.StringIO()
    saved = sys.stdout
    sys.stdout = buffer
    try:
        echo_json(obj)
    finally:
        sys.stdout = saved
    got = strict_loads(buffer.getvalue())
    assert _same_but_nulls(obj, got)


@pytest.mark.slow  # two short training runs
def test_train_json_of_a_resume_with_nothing_left_to_train_is_strict(runner, corpus_file, tmp_path):
    base = ["train", str(corpus_file), *TINY_MODEL, *TINY_TRAIN, "--out-dir", str(tmp_path), "--device", "cpu"]
    first = runner.invoke(cli, [*base, "--max-steps", "6", "--eval-every", "3", "-q", "--json"])
    assert first.exit_code == 0, first.stderr
    again = runner.invoke(cli, ["train", "--resume", str(tmp_path / "last.pt"), "--max-steps", "6", "-q", "--json"])
    assert again.exit_code == 0, again.stderr
    summary = strict_loads(again.stdout)
    assert summary["steps"] == 6
    shown = runner.invoke(cli, ["inspect", str(tmp_path / "last.pt"), "--json"])
    assert shown.exit_code == 0
    strict_loads(shown.stdout)

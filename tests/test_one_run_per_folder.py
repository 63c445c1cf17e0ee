"""One run per out-dir, and a corpus cache that sees every edit (docs/guarantees.md, docs/corpus.md):
an OS lock that a second run is refused by and a dead one gives back, leftovers cleared at the next
start, a resume that would overwrite a later last.pt only with --force, and cache entries that notice
an edit keeping size and modification time, shared between relative and absolute paths and between
concurrent builds."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn import checkpoint as ckpt_io
from charrnn.cli import cli
from charrnn.corpus import load_corpus
from charrnn.errors import ConfigError
from charrnn.run import OUT_DIR_LOCK, Run
from conftest import TINY_MODEL, TINY_TRAIN, one_line_error, write

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(num_layers=1, hidden_size=16, embedding_size=8, batch_size=4, seq_len=16, sample_length=0, device="cpu")


def start_runs(n: int, corpus, out) -> list:
    """``n`` runs prepared at once into ``out`` (threads): each a Run or the exception it raised."""
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def start(i):
        barrier.wait()
        try:
            results[i] = Run(corpus, out_dir=out, max_steps=4, no_cache=True, **TINY)
        except Exception as exc:  # the losers' errors are the result
            results[i] = exc

    threads = [threading.Thread(target=start, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.slow  # several runs prepared at once
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 4))
def test_runs_started_together_into_one_folder_one_wins_the_others_name_its_pid(tmp_path_factory, corpus_file, n):
    out = tmp_path_factory.mktemp("together")
    results = start_runs(n, corpus_file, out)
    winners = [r for r in results if isinstance(r, Run)]
    losers = [r for r in results if not isinstance(r, Run)]
    assert len(winners) == 1 and len(losers) == n - 1, results
    for exc in losers:
        assert isinstance(exc, ConfigError), exc
        assert f"in use by another training run (process {os.getpid()})" in str(exc)
    winners[0].execute()  # trains, then gives the folder back
    assert ckpt_io.load(out / "last.pt").progress["step"] == 4
    again = Run(corpus_file, out_dir=out, max_steps=4, no_cache=True, force=True, **TINY)
    again.release()


@pytest.mark.slow  # two child processes train
def test_two_cli_runs_started_together_one_trains_the_other_is_refused(corpus_file, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "charrnn", "train", str(corpus_file), *TINY_MODEL, *TINY_TRAIN]
    # The winner trains for 6 s, so the loser (started at the same moment) tries while it holds the folder.
    args += ["--max-time", "6s", "--eval-every", "5", "--out-dir", str(out), "-q", "--device", "cpu"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = [(p.pid, *p.communicate(timeout=300), p.returncode) for p in procs]
    codes = sorted(code for *_, code in done)
    assert codes == [0, 1], done
    (winner,) = [pid for pid, _, _, code in done if code == 0]
    (refused,) = [err for _, _, err, code in done if code == 1]
    assert refused.strip() == (
        f"Error: {out} is in use by another training run (process {winner}); wait for it to end, stop it, "
        "or pick another --out-dir"
    )
    assert ckpt_io.load(out / "last.pt").progress["step"] >= 1  # the winner's checkpoints, whole


@pytest.mark.slow  # a child process is killed while it trains
def test_a_killed_run_gives_the_folder_back_and_its_leftovers_are_cleared(corpus_file, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "charrnn", "train", str(corpus_file), *TINY_MODEL, *TINY_TRAIN]
    args += ["--max-steps", "100000", "--out-dir", str(out), "-q", "--device", "cpu", "--no-cache"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = out / OUT_DIR_LOCK
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().strip() == str(proc.pid)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    with pytest.raises(ConfigError, match=f"process {proc.pid}"):
        Run(corpus_file, out_dir=out, max_steps=4, no_cache=True, **TINY)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    # What a killed run can leave: a checkpoint's temporary file, a write probe.
    leftovers = [
        write(out / ".last.pt.k1ll3d.tmp", b"half"),
        write(out / ".best.pt.x.tmp", b""),
        write(out / ".charrnn-write-test-7", b""),
    ]
    run = Run(corpus_file, out_dir=out, max_steps=4, no_cache=True, force=True, **TINY)
    try:
        assert not any(p.exists() for p in leftovers)
    finally:
        run.release()


@pytest.mark.slow  # four short training runs
def test_resuming_an_earlier_checkpoint_over_a_later_last_pt_needs_force(runner, corpus_file, tmp_path):
    base = ["train", str(corpus_file), *TINY_MODEL, *TINY_TRAIN, "--out-dir", str(tmp_path), "--device", "cpu"]
    assert runner.invoke(cli, [*base, "--max-steps", "4", "--eval-every", "2", "-q"]).exit_code == 0
    shutil.copy(tmp_path / "last.pt", tmp_path / "early.pt")
    resume = ["train", "--resume"]
    assert runner.invoke(cli, [*resume, str(tmp_path / "last.pt"), "--max-steps", "8", "-q"]).exit_code == 0
    refused = runner.invoke(cli, [*resume, str(tmp_path / "early.pt"), "--max-steps", "10", "-q"])
    one_line_error(refused, 1, r"resuming from .*early\.pt \(step 4\) would overwrite .*last\.pt \(step 8\).*--force")
    assert ckpt_io.load(tmp_path / "last.pt").progress["step"] == 8, "last.pt is untouched"
    forced = runner.invoke(cli, [*resume, str(tmp_path / "early.pt"), "--max-steps", "6", "-q", "--force"])
    assert forced.exit_code == 0, forced.stderr
    assert ckpt_io.load(tmp_path / "last.pt").progress["step"] == 6
    # From last.pt itself, or from a checkpoint as far on as last.pt, nothing is lost: no --force needed.
    shutil.copy(tmp_path / "last.pt", tmp_path / "same.pt")
    again = runner.invoke(cli, [*resume, str(tmp_path / "same.pt"), "--max-steps", "8", "-q"])
    assert again.exit_code == 0, again.stderr


# -- the corpus cache ---------------------------------------------------------------------------


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.slow  # 40 cases
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(alphabet="abcdefgh \n", min_size=20, max_size=400),
    data=st.data(),
)
def test_an_edit_that_keeps_size_and_mtime_is_seen(tmp_path_factory, text, data):
    folder = tmp_path_factory.mktemp("edit")
    path = write(folder / "t.txt", text)
    first = load_corpus(path, cache_dir=folder / "cache")
    assert first.cache == "built" and load_corpus(path, cache_dir=folder / "cache").cache == "hit"
    at = data.draw(st.integers(0, len(text) - 1))
    other = data.draw(st.sampled_from([c for c in "abcdefgh \n" if c != text[at]]))
    edited = text[:at] + other + text[at + 1 :]
    before = os.stat(path)
    path.write_text(edited, encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # `touch -r`: the same size and mtime
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    second = load_corpus(path, cache_dir=folder / "cache")
    assert second.cache == "built" and second.corpus.sha256 == _sha(edited) != first.corpus.sha256


def test_relative_and_absolute_paths_share_one_entry(tmp_path, monkeypatch):
    write(tmp_path / "texts" / "t.txt", "some text to cache\n" * 20)
    monkeypatch.chdir(tmp_path / "texts")
    assert load_corpus("t.txt", cache_dir=tmp_path / "cache").cache == "built"
    monkeypatch.chdir(tmp_path)
    assert load_corpus(tmp_path / "texts" / "t.txt", cache_dir=tmp_path / "cache").cache == "hit"
    assert load_corpus("texts/t.txt", cache_dir=tmp_path / "cache").cache == "hit"


def test_orphans_and_temporary_files_of_a_killed_build_are_removed_at_the_next_start(tmp_path):
    path = write(tmp_path / "t.txt", "some text to cache\n" * 20)
    cache = tmp_path / "cache"
    built = load_corpus(path, cache_dir=cache)
    key = built.cache_file.name.split("-")[0]
    orphans = [write(cache / f"{key}-0123456789ab.npy", b"x"), write(cache / f".{key}-zz.npy.tmp", b"y")]
    other_entry = write(cache / "ffffffffffffffffffff-0123456789ab.npy", b"z")  # another entry's: not ours to judge
    assert load_corpus(path, cache_dir=cache).cache == "hit"
    assert not any(p.exists() for p in orphans) and built.cache_file.exists() and other_entry.exists()


@pytest.mark.slow  # several builds at once
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 5))
def test_concurrent_builds_of_one_entry_agree_and_leave_one_ids_file(tmp_path_factory, n):
    folder = tmp_path_factory.mktemp("builds")
    text = "".join(f"line {i} of the text\n" for i in range(3000))
    path = write(folder / "t.txt", text)
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def build(i):
        barrier.wait()
        results[i] = load_corpus(path, cache_dir=folder / "cache", chunk_size=4096)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.cache for r in results) == ["built"] + ["hit"] * (n - 1)
    assert {r.corpus.sha256 for r in results} == {_sha(text)}
    assert len(list((folder / "cache").glob("*.npy"))) == 1

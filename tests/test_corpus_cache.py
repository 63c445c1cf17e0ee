"""The corpus cache: reuse, every invalidation, crash safety, and damaged manifests refused (under
``python -O`` too); the cache alone, with no encoder, and through ``load_corpus``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from charrnn import corpus, corpus_cache
from charrnn.corpus import load_corpus
from charrnn.corpus_cache import CACHEDIR_TAG, Cache, stat_files
from charrnn.data import Vocab
from charrnn.errors import DataError, OutputError
from conftest import write


@pytest.fixture
def tree(tmp_path):
    """src/ with three text files, a binary, a Latin-1 file and an empty one."""
    src = tmp_path / "src"
    write(src / "b" / "two.txt", "second file\n")
    write(src / "a.txt", "\ufefffirst file, with a BOM\n")
    write(src / "b" / "c" / "three.txt", "çà et là — 日本語 😀\n")
    write(src / "b" / "logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    write(src / "latin1.txt", "déjà".encode("latin-1"))
    write(src / "empty.txt", b"")
    return src


# -- the cache alone: no reader, no encoder --------------------------------------------------------


def entry(tmp_path, vocab=None, ids=(0, 1, 2, 2)):
    """A source file and a committed cache entry for it, written by hand: (cache, stats)."""
    vocab = vocab if vocab is not None else Vocab("abc")
    source = write(tmp_path / "t.txt", "abcc")
    stats = stat_files((source,))
    cache = Cache(tmp_path / "cache", "t.txt", {"inputs": str(source), "encoding": "utf-8", "separator": "\n"})
    ids = np.array(ids, dtype=np.uint8)
    data_file, sha = cache.store(len(ids), np.dtype(np.uint8), lambda w: (w(ids[:1]), w(ids[1:]), "f" * 64)[-1])
    cache.commit(
        stats,
        n_files=1,
        skipped=[("x.bin", "binary")],
        n_chars=len(ids),
        text_chars="abc",
        vocab=vocab,
        sha256=sha,
        data_file=data_file,
    )
    return cache, stats


def test_an_entry_is_found_as_it_was_committed(tmp_path):
    cache, stats = entry(tmp_path)
    hit = Cache(cache.folder, "t.txt", cache.identity).lookup(stats, None)
    assert hit is not None and isinstance(hit.ids, np.memmap) and hit.ids.tolist() == [0, 1, 2, 2]
    assert (hit.vocab, hit.sha256, hit.n_files, hit.skipped) == (Vocab("abc"), "f" * 64, 1, (("x.bin", "binary"),))
    manifest = json.loads(cache.manifest_path.read_text())
    assert manifest["version"] == corpus_cache.CACHE_VERSION == 3 and manifest["n_chars"] == 4
    assert "chars" not in manifest and manifest["n_files"] == 1 and (cache.folder / CACHEDIR_TAG).exists()
    assert cache.lookup([[*stats[0][:2], stats[0][2] + 1]], None) is None  # another mtime: not trusted
    assert cache.lookup(stats, Vocab("abcd")) is None  # another vocabulary: re-encode
    with pytest.raises(DataError, match=r"^t.txt: 1 character\(s\) are not in the model's vocabulary: 'c'"):
        cache.lookup(stats, Vocab("ab"))


@pytest.mark.parametrize(
    "damage",
    [
        {"vocab": "cba", "text_chars": "cba"},  # unsorted
        {"vocab": "aabc", "text_chars": "aabc"},  # a duplicate
        {"vocab": 7},
        {"version": 1},  # an older format: rebuilt, not misread
        {"n_chars": 5},
        {"skipped": [["x.bin"]]},
        {"sha256": None},
    ],
)
def test_a_damaged_manifest_is_refused(tmp_path, damage):
    cache, stats = entry(tmp_path)
    manifest = json.loads(cache.manifest_path.read_text())
    assert cache.lookup(stats, None) is not None
    cache.manifest_path.write_text(json.dumps({**manifest, **damage}))
    assert cache.lookup(stats, None) is None


@pytest.mark.slow  # a python -O subprocess
def test_a_damaged_vocabulary_is_refused_under_python_O_too(tmp_path):
    """No assert does the refusing: run where asserts are stripped."""
    script = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from charrnn.corpus import load_corpus
        assert False, "asserts are on"  # stripped by -O: the script goes on only there
        folder, cache = Path(sys.argv[1]), Path(sys.argv[2])
        first = load_corpus(folder, cache_dir=cache)
        manifest_path = next(cache.glob("*.json"))
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        for damaged in (manifest["vocab"][::-1], manifest["vocab"][0] + manifest["vocab"]):
            damage = {"vocab": damaged, "text_chars": damaged}
            manifest_path.write_text(json.dumps({**manifest, **damage}), encoding="utf-8")
            again = load_corpus(folder, cache_dir=cache)
            print(again.cache, again.corpus.vocab == first.corpus.vocab, again.corpus.sha256 == first.corpus.sha256)
    """)
    folder = tmp_path / "src"
    write(folder / "a.txt", "some text\n")
    write(folder / "b.txt", "more text\n")
    env = dict(os.environ)  # PYTHONPATH inherited, with this checkout first
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(corpus.__file__).parents[1]), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-O", "-c", script, str(folder), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == ["built True True", "built True True", ""]


# -- through load_corpus -----------------------------------------------------------------------------


def build_count(monkeypatch) -> dict:
    """Count pass-2 encodes: a cache hit does none."""
    calls = {"n": 0}
    real = corpus.encode

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus, "encode", counting)
    return calls


def test_cache_is_reused_when_nothing_changed(tree, tmp_path, monkeypatch):
    builds = build_count(monkeypatch)
    cache = tmp_path / "cache"
    first = load_corpus(tree, cache_dir=cache)
    mtime = first.cache_file.stat().st_mtime_ns
    second = load_corpus(tree, cache_dir=cache)
    assert (first.cache, second.cache, builds["n"]) == ("built", "hit", 1)
    assert isinstance(second.corpus.ids, np.memmap) and second.cache_file.stat().st_mtime_ns == mtime
    assert np.array_equal(first.corpus.ids, second.corpus.ids) and second.corpus.sha256 == first.corpus.sha256
    assert second.skipped == first.skipped and second.n_files == 3
    assert (cache / CACHEDIR_TAG).exists()


@pytest.mark.parametrize("change", ["grow", "same_size_new_mtime", "add_file", "remove_file", "skipped_file_fixed"])
def test_cache_is_rebuilt_when_an_input_changes(tree, tmp_path, monkeypatch, change):
    builds = build_count(monkeypatch)
    cache = tmp_path / "cache"
    first = load_corpus(tree, cache_dir=cache)
    target = tree / "b" / "two.txt"
    if change == "grow":
        target.write_text("second file, longer\n")
    elif change == "same_size_new_mtime":
        before = target.stat()
        target.write_text("SECOND FILE\n")  # the same size
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        assert target.stat().st_size == before.st_size
    elif change == "add_file":
        write(tree / "b" / "four.txt", "fourth\n")
    elif change == "remove_file":
        target.unlink()
    else:
        write(tree / "latin1.txt", "déjà".encode())
    second = load_corpus(tree, cache_dir=cache)
    assert (second.cache, builds["n"]) == ("built", 2)
    assert second.corpus.sha256 != first.corpus.sha256
    assert not first.cache_file.exists(), "the superseded ids file is removed"
    assert load_corpus(tree, cache_dir=cache).cache == "hit"


def test_a_build_interrupted_between_write_and_rename_is_never_trusted(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    load_corpus(tree, cache_dir=cache)
    (tree / "a.txt").write_text("changed\n")
    real_replace = os.replace

    def crash(src, dst):  # dies after the ids are written, before they are renamed into place
        if str(dst).endswith(".npy"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(corpus_cache.os, "replace", crash)
    with pytest.raises(OutputError, match=r"^cannot write the corpus cache in .*another cache_dir, or pass no_cache$"):
        load_corpus(tree, cache_dir=cache)
    monkeypatch.setattr(corpus_cache.os, "replace", real_replace)
    assert not list(cache.glob(".*.tmp")), "the temp file is removed"
    again = load_corpus(tree, cache_dir=cache)
    assert again.cache == "built" and "changed\n" in again.corpus.vocab.decode(again.corpus.ids)


def test_a_build_killed_before_its_manifest_is_written_leaves_the_old_entry_untrusted(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    load_corpus(tree, cache_dir=cache)
    (tree / "a.txt").write_text("changed, and longer than before\n")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the new ids file is in place, the manifest still describes the old files

    monkeypatch.setattr(corpus_cache.Cache, "commit", killed)
    with pytest.raises(KeyboardInterrupt):
        load_corpus(tree, cache_dir=cache)
    monkeypatch.undo()
    assert load_corpus(tree, cache_dir=cache).cache == "built"


@pytest.mark.parametrize("damage", ["manifest", "ids"])
def test_a_damaged_cache_is_rebuilt(tree, tmp_path, damage):
    cache = tmp_path / "cache"
    first = load_corpus(tree, cache_dir=cache)
    before = np.array(first.corpus.ids)  # a copy: the mapping would see the damage
    if damage == "manifest":
        manifest = next(cache.glob("*.json"))
        manifest.write_text(manifest.read_text()[:50])
    else:
        with open(first.cache_file, "r+b") as fh:
            fh.truncate(first.cache_file.stat().st_size - 3)
    again = load_corpus(tree, cache_dir=cache)
    assert again.cache == "built" and np.array_equal(again.corpus.ids, before)


def test_an_edited_file_list_in_the_manifest_is_not_trusted(tree, tmp_path):
    cache = tmp_path / "cache"
    load_corpus(tree, cache_dir=cache)
    manifest_path = next(cache.glob("*.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["files_sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    assert load_corpus(tree, cache_dir=cache).cache == "built"


def test_cache_entries_depend_on_separator_and_vocabulary(tree, tmp_path):
    cache = tmp_path / "cache"
    own = load_corpus(tree, cache_dir=cache)
    assert load_corpus(tree, cache_dir=cache, separator="\n\n").cache == "built"  # another entry
    assert load_corpus(tree, cache_dir=cache, vocab=own.corpus.vocab).cache == "hit"
    wider = Vocab("".join(sorted(set(own.corpus.vocab.chars) | set("XYZ"))))
    refit = load_corpus(tree, cache_dir=cache, vocab=wider)
    assert refit.cache == "built" and refit.corpus.vocab == wider
    with pytest.raises(DataError, match="are not in the model's vocabulary"):
        load_corpus(tree, cache_dir=cache, vocab=Vocab("abc"))  # said from the manifest, no re-read

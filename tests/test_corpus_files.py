"""Corpora from disk: folders and globs, skipped files, streamed encoding, and the encoded cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from charrnn import corpus_files
from charrnn.cli import cli
from charrnn.corpus_files import CACHEDIR_TAG, load_corpus, resolve_inputs
from charrnn.data import Batches, Corpus, Vocab, read_text, split
from charrnn.errors import DataError, OutputError
from charrnn.loss import eval_subset, evaluate
from charrnn.model import CharRNN, ModelConfig
from charrnn.trainer import Callback, TrainConfig, Trainer
from conftest import TINY_MODEL, TINY_TRAIN, make_text

# 1-, 2-, 3- and 4-byte UTF-8 characters, CRLF, and a character that is its own escape.
MIXED = "plain ascii\r\nçà et là — “quoted” 日本語 😀🎭 \\ end\n"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.fixture
def tree(tmp_path):
    """src/ with nested text files, a hidden one, a binary, a Latin-1 file and an empty one."""
    src = tmp_path / "src"
    write(src / "b" / "two.txt", "second file\n")
    write(src / "a.txt", "\ufefffirst file, with a BOM\n")
    write(src / "b" / "c" / "three.txt", MIXED)
    write(src / ".hidden.txt", "never read")
    write(src / ".git" / "HEAD", "ref: refs/heads/main\n")
    write(src / "b" / "logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    write(src / "latin1.txt", "déjà".encode("latin-1"))
    write(src / "empty.txt", b"")
    return src


def expected(paths: list[Path], separator: str) -> str:
    return separator.join(read_text(p) for p in paths)


def assert_same_corpus(got: Corpus, text: str) -> None:
    ref = Corpus.from_text(text, "ref")
    assert got.vocab == ref.vocab
    assert np.array_equal(np.asarray(got.ids), ref.ids) and got.ids.dtype == ref.ids.dtype
    assert got.sha256 == ref.sha256


# -- what TEXT names ------------------------------------------------------------------------------


def test_folder_joins_files_in_sorted_order_with_the_separator_and_skips_binaries(tree):
    loaded = load_corpus(tree, separator="<|>")
    order = [tree / "a.txt", tree / "b" / "c" / "three.txt", tree / "b" / "two.txt"]
    assert_same_corpus(loaded.corpus, expected(order, "<|>"))
    assert loaded.files == 3 and loaded.cache == "off"
    assert sorted((Path(s.path).name, s.reason) for s in loaded.skipped) == [
        ("empty.txt", "empty"), ("latin1.txt", "not utf-8"), ("logo.png", "binary")]
    assert loaded.corpus.path == str(tree.resolve()) and loaded.corpus.separator == "<|>"
    assert "3 file(s) skipped: " in corpus_files.describe_skipped(loaded.skipped)


def test_glob_selects_files_recursively_in_sorted_order(tree):
    loaded = load_corpus(str(tree / "**" / "*.txt"), separator="\n")
    order = [tree / "a.txt", tree / "b" / "c" / "three.txt", tree / "b" / "two.txt"]
    assert_same_corpus(loaded.corpus, expected(order, "\n"))
    assert [Path(s.path).name for s in loaded.skipped] == ["empty.txt", "latin1.txt"]  # .hidden.txt never matched


def test_encoding_applies_to_every_file(tmp_path):
    write(tmp_path / "x" / "1.txt", "café\n".encode("latin-1"))
    write(tmp_path / "x" / "2.txt", "naïve\n".encode("latin-1"))
    loaded = load_corpus(tmp_path / "x", encoding="latin-1", separator="")
    assert_same_corpus(loaded.corpus, "café\nnaïve\n")


def test_one_explicit_file_keeps_strict_errors(tree):
    with pytest.raises(DataError, match="binary"):
        load_corpus(tree / "b" / "logo.png")
    with pytest.raises(DataError, match=r"not valid utf-8 \(byte 0xe9 at offset 1\).*--encoding latin-1"):
        load_corpus(tree / "latin1.txt")
    with pytest.raises(DataError, match="empty"):
        load_corpus(tree / "empty.txt")


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nope.txt", r"no such file or folder"),
    (lambda p: str(p / "*.nothing"), r"matches no files.*quote it"),
    (lambda p: write(p / "only" / "x.bin", b"\x00\x01"), None),
])
def test_nothing_usable_is_an_error_that_says_so(tmp_path, make, message):
    target = make(tmp_path)
    if message is None:  # a folder of binaries
        target, message = target.parent, r"no usable text files \(1 file\(s\) skipped: 1 binary"
    with pytest.raises(DataError, match=message):
        load_corpus(target)


def test_output_folders_inside_the_input_are_left_out(tmp_path):
    src = tmp_path / "src"
    write(src / "a.txt", "text\n")
    write(src / "out" / "notes.txt", "written by the run\n")
    write(src / "cache" / CACHEDIR_TAG, "Signature: 8a477f597d28d172789f06886806bc55\n")
    write(src / "cache" / "x.json", "{}")
    sources = resolve_inputs(src, exclude=(src / "out",))
    assert [p.name for p in sources.files] == ["a.txt"]
    assert len(resolve_inputs(src, exclude=(src,)).files) == 2  # never exclude the folder itself


# -- streamed encoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 4096])
def test_streamed_encoding_equals_encoding_the_whole_text(tmp_path, chunk_size):
    text = MIXED * 50
    path = write(tmp_path / "t.txt", "\ufeff" + text)  # the BOM is dropped, as read_text does
    loaded = load_corpus(path, chunk_size=chunk_size)
    assert_same_corpus(loaded.corpus, text)
    assert np.array_equal(loaded.corpus.ids, Vocab.from_text(text).encode(text))


@pytest.mark.parametrize("chunk_size", [1, 3, 4096])
def test_streamed_encoding_of_other_codecs_and_wide_vocabularies(tmp_path, chunk_size):
    wide = "".join(chr(0x4E00 + i) for i in range(300)) + "😀\n"  # > 256 characters: uint16 ids
    path = write(tmp_path / "w.txt", wide * 3)
    assert_same_corpus(load_corpus(path, chunk_size=chunk_size).corpus, wide * 3)
    utf16 = write(tmp_path / "u16.txt", ("\ufeff" + MIXED).encode("utf-16-le"))
    assert_same_corpus(load_corpus(utf16, encoding="utf-16-le", chunk_size=chunk_size).corpus, MIXED)


def test_a_fixed_vocabulary_is_used_and_checked(tmp_path):
    path = write(tmp_path / "t.txt", "abcab")
    vocab = Vocab("abcdef")
    loaded = load_corpus(path, vocab=vocab)
    assert loaded.corpus.vocab == vocab and loaded.corpus.ids.tolist() == [0, 1, 2, 0, 1]
    with pytest.raises(DataError, match=r"not in the checkpoint's vocabulary: 'c'"):
        load_corpus(path, vocab=Vocab("ab"))


# -- the cache ---------------------------------------------------------------------------------------


def build_count(monkeypatch) -> dict:
    """Count pass-2 encodes: a cache hit does none."""
    calls = {"n": 0}
    real = corpus_files._encode

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus_files, "_encode", counting)
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
    assert second.skipped == first.skipped and second.files == 3
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
        write(tree / "latin1.txt", "déjà".encode("utf-8"))
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

    monkeypatch.setattr(corpus_files.os, "replace", crash)
    with pytest.raises(OutputError, match=r"corpus cache .*--no-cache"):
        load_corpus(tree, cache_dir=cache)
    monkeypatch.setattr(corpus_files.os, "replace", real_replace)
    assert not list(cache.glob(".*.tmp")), "the temp file is removed"
    again = load_corpus(tree, cache_dir=cache)
    assert again.cache == "built" and read_text(tree / "a.txt") in again.corpus.vocab.decode(again.corpus.ids)


def test_a_build_killed_before_its_manifest_is_written_leaves_the_old_entry_untrusted(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    load_corpus(tree, cache_dir=cache)
    (tree / "a.txt").write_text("changed, and longer than before\n")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the new ids file is in place, the manifest still describes the old files

    monkeypatch.setattr(corpus_files._Cache, "commit", killed)
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
    with pytest.raises(DataError, match="not in the checkpoint's vocabulary"):
        load_corpus(tree, cache_dir=cache, vocab=Vocab("abc"))  # said from the manifest, no re-read


# -- a memory-mapped corpus in the rest of charrnn -------------------------------------------------


def test_memmapped_corpus_trains_and_evaluates_like_one_in_memory(tmp_path):
    path = write(tmp_path / "t.txt", make_text(300))
    mapped = load_corpus(path, cache_dir=tmp_path / "cache")
    mapped = load_corpus(path, cache_dir=tmp_path / "cache")  # the hit: a read-only np.memmap
    assert mapped.cache == "hit" and isinstance(mapped.corpus.ids, np.memmap)
    in_memory = Corpus.from_text(read_text(path), "t.txt")
    train, val = split(mapped.corpus.ids, 0.1)
    x, y = Batches(train, 4, 16)[3]
    assert x.dtype == np.int64 and np.array_equal(x, Batches(split(in_memory.ids, 0.1)[0], 4, 16)[3][0])
    model = CharRNN(ModelConfig(vocab_size=len(in_memory.vocab), num_layers=1, hidden_size=16, embedding_size=8))
    assert evaluate(model, val, batch_size=4, seq_len=32) == evaluate(model, split(in_memory.ids, 0.1)[1], batch_size=4, seq_len=32)

    class Losses(Callback):
        def __init__(self):
            self.losses = []

        def on_step(self, info):
            self.losses.append(info.loss)

    runs = []
    for name, corpus in (("mapped", mapped.corpus), ("memory", in_memory)):
        rec = Losses()
        mc = ModelConfig(vocab_size=len(corpus.vocab), num_layers=1, hidden_size=16, embedding_size=8)
        Trainer(mc, TrainConfig(batch_size=4, seq_len=16, max_steps=5, eval_every=5), corpus, tmp_path / name,
                callback=rec).run()
        runs.append(rec.losses)
    assert runs[0] == runs[1]


def test_eval_subset_is_a_seeded_spread_of_windows():
    ids = np.arange(1_000_000, dtype=np.uint32)
    assert eval_subset(ids, None, seed=1) is ids  # under ~2M characters: all of it
    a, b = eval_subset(ids, 80_000, seed=1), eval_subset(ids, 80_000, seed=1)
    assert len(a) == 80_000 and np.array_equal(a, b)
    windows = np.split(a, 8)
    assert all(np.all(np.diff(w) == 1) for w in windows)  # contiguous inside each window
    assert [int(w[0]) // 125_000 for w in windows] == list(range(8))  # one in each eighth of the split
    assert not np.array_equal(a, eval_subset(ids, 80_000, seed=2))


# -- through the CLI ---------------------------------------------------------------------------------


def test_cli_trains_on_a_folder_reports_skips_and_reuses_its_cache(runner, tree, tmp_path):
    write(tree / "b" / "big.txt", make_text(200))
    args = ["train", str(tree), *TINY_MODEL, *TINY_TRAIN, "--max-steps", "2", "--eval-every", "2",
            "--sample-length", "0", "--device", "cpu", "--separator", r"\n\n", "--eval-chars", "100"]
    first = runner.invoke(cli, [*args, "--out-dir", str(tmp_path / "one")])
    assert first.exit_code == 0, first.stderr
    assert "3 file(s) skipped: 1 binary, 1 empty, 1 not utf-8; e.g." in first.stderr
    assert "corpus encoded into" in first.stderr and (tmp_path / "one" / "cache" / CACHEDIR_TAG).exists()
    second = runner.invoke(cli, [*args, "--out-dir", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "one" / "cache")])
    assert second.exit_code == 0 and "cached corpus reused" in second.stderr
    third = runner.invoke(cli, [*args, "--out-dir", str(tmp_path / "three"), "--no-cache", "-q"])
    assert third.exit_code == 0 and not (tmp_path / "three" / "cache").exists()
    from charrnn import checkpoint as ckpt_io

    saved = ckpt_io.load(tmp_path / "one" / "last.pt")
    assert saved.corpus["separator"] == "\n\n" and saved.train_config["eval_chars"] == 100
    assert saved.corpus["sha256"] == ckpt_io.load(tmp_path / "three" / "last.pt").corpus["sha256"]
    evaluated = runner.invoke(cli, ["eval", str(tmp_path / "one" / "last.pt"), "--json", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.stderr  # finds the folder, separator and cache again


def test_cli_rejects_an_unknown_separator_escape(runner, tree, tmp_path):
    result = runner.invoke(cli, ["train", str(tree), "--separator", r"\q", "--out-dir", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown escape" in result.stderr

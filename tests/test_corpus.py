"""Reading text: what TEXT names, the streaming reader's checks, streamed encoding, read_text, and the
embedded corpus as one more input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from charrnn import checkpoint as ckpt_io
from charrnn import corpus, reader
from charrnn.cli import cli
from charrnn.corpus import EMBEDDED_NAME, default_corpus_path, describe_skipped, load_corpus, read_text, resolve_inputs
from charrnn.corpus_cache import CACHEDIR_TAG
from charrnn.data import Batches, Corpus, Vocab, split
from charrnn.errors import ConfigError, DataError, cli_names
from charrnn.loss import evaluate
from charrnn.model import CharRNN, ModelConfig
from charrnn.trainer import TrainConfig, Trainer
from conftest import TINY_MODEL, TINY_TRAIN, Recorder, make_text, write

# 1-, 2-, 3- and 4-byte UTF-8 characters, CRLF, and a character that is its own escape.
MIXED = "plain ascii\r\nçà et là — “quoted” 日本語 😀🎭 \\ end\n"


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


ORDER = ("a.txt", "b/c/three.txt", "b/two.txt")  # the usable files of ``tree``, in sorted path order


def expected(root: Path, separator: str, names=ORDER) -> str:
    """The joined text, decoded here without charrnn's reader: UTF-8, a leading BOM dropped."""
    return separator.join((root / n).read_bytes().decode("utf-8").removeprefix("\ufeff") for n in names)


def assert_same_corpus(got: Corpus, text: str) -> None:
    ref = Corpus.from_text(text, "ref")
    assert got.vocab == ref.vocab
    assert np.array_equal(np.asarray(got.ids), ref.ids) and got.ids.dtype == ref.ids.dtype
    assert got.sha256 == ref.sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- what TEXT names ------------------------------------------------------------------------------


def test_folder_joins_files_in_sorted_order_with_the_separator_and_skips_binaries(tree):
    loaded = load_corpus(tree, separator="<|>")
    assert_same_corpus(loaded.corpus, expected(tree, "<|>"))
    assert loaded.n_files == 3 and loaded.cache == "off"
    assert sorted((Path(s.path).name, s.reason) for s in loaded.skipped) == [
        ("empty.txt", "empty"),
        ("latin1.txt", "not utf-8"),
        ("logo.png", "binary"),
    ]
    assert loaded.corpus.path == str(tree.resolve()) and loaded.corpus.separator == "<|>"
    assert "3 file(s) skipped: " in describe_skipped(loaded.skipped)


def test_glob_selects_files_recursively_in_sorted_order(tree):
    loaded = load_corpus(str(tree / "**" / "*.txt"), separator="\n")
    assert_same_corpus(loaded.corpus, expected(tree, "\n"))
    assert [Path(s.path).name for s in loaded.skipped] == ["empty.txt", "latin1.txt"]  # .hidden.txt never matched


def test_encoding_applies_to_every_file(tmp_path):
    write(tmp_path / "x" / "1.txt", "café\n".encode("latin-1"))
    write(tmp_path / "x" / "2.txt", "naïve\n".encode("latin-1"))
    loaded = load_corpus(tmp_path / "x", encoding="latin-1", separator="")
    assert_same_corpus(loaded.corpus, "café\nnaïve\n")


def test_one_explicit_file_keeps_strict_errors(tree):
    with pytest.raises(DataError, match="binary"):
        load_corpus(tree / "b" / "logo.png")
    with pytest.raises(DataError, match=r"not valid utf-8 \(byte 0xe9 at offset 1\).*encoding='latin-1'"):
        load_corpus(tree / "latin1.txt")
    with pytest.raises(DataError, match="empty"):
        load_corpus(tree / "empty.txt")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "nope.txt", r"no such file or folder"),
        (lambda p: str(p / "*.nothing"), r"matches no files.*quote it"),
        (lambda p: write(p / "only" / "x.bin", b"\x00\x01"), None),
    ],
)
def test_nothing_usable_is_an_error_that_says_so(tmp_path, make, message):
    target = make(tmp_path)
    if message is None:  # a folder of binaries
        target, message = target.parent, r"no usable text files \(1 file\(s\) skipped: 1 binary"
    with pytest.raises(DataError, match=message):
        load_corpus(target)
    with pytest.raises(DataError, match=message):
        read_text(target)


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
    path = write(tmp_path / "t.txt", "\ufeff" + text)  # the BOM is dropped
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
    with pytest.raises(DataError, match=r"^t.txt: 1 character\(s\) are not in the model's vocabulary: 'c'"):
        load_corpus(path, vocab=Vocab("ab"))


# -- read_text: the same reader, the text as a string --------------------------------------------


def test_read_text_keeps_crlf_and_drops_bom(tmp_path):
    path = write(tmp_path / "a.txt", "\ufeffline one\r\nline two\r\n")
    assert read_text(path) == "line one\r\nline two\r\n"


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "f.txt: the file is empty"),
        (b"\x00\x01\x02binary", "f.txt: looks like a binary file"),
        (b"\xff\xfea\x00b\x00", r"looks like UTF-16: pass encoding='utf-16'"),
        ("caf\u00e9".encode("latin-1"), r"f.txt: is not valid utf-8 \(byte 0xe9 at offset 3\).*encoding='latin-1'"),
        (b"\xef\xbb\xbf", "f.txt: the file holds no text"),
    ],
)
def test_read_text_errors_name_the_problem_in_one_line(tmp_path, raw, message):
    path = write(tmp_path / "f.txt", raw)
    with pytest.raises(DataError, match=message) as caught:
        read_text(path)
    assert "\n" not in str(caught.value)


def test_messages_name_options_as_the_caller_spells_them(tmp_path):
    latin1 = write(tmp_path / "f.txt", "caf\u00e9".encode("latin-1"))
    with cli_names(), pytest.raises(DataError, match=r"pass it with --encoding, e\.g\. --encoding latin-1"):
        read_text(latin1)
    with cli_names(), pytest.raises(ConfigError, match=r"^unknown --encoding 'no-such-codec'"):
        read_text(latin1, encoding="no-such-codec")
    with pytest.raises(ConfigError, match=r"^unknown encoding 'no-such-codec'"):
        load_corpus(latin1, encoding="no-such-codec")


def test_read_text_in_another_encoding(tmp_path):
    assert read_text(write(tmp_path / "f", "caf\u00e9".encode("latin-1")), encoding="latin-1") == "café"


def test_read_text_takes_folders_and_globs_and_agrees_with_load_corpus(tree):
    for inputs in (tree, str(tree / "**" / "*.txt")):
        text = read_text(inputs, separator="<|>")
        assert text == expected(tree, "<|>")
        assert Corpus.from_text(text, "t").sha256 == load_corpus(inputs, separator="<|>").corpus.sha256


@pytest.mark.parametrize("max_chars", [1, 5, 11, 12, 26, 30, 10_000])
def test_read_text_stops_at_max_chars(tree, max_chars):
    whole = read_text(tree, separator="<|>")
    assert read_text(tree, separator="<|>", max_chars=max_chars) == whole[:max_chars]


def test_read_text_max_chars_reads_no_further_than_it_needs(tmp_path, monkeypatch):
    path = write(tmp_path / "big.txt", "x" * 5000)
    reads = []

    class SmallChunks(reader.Reader):
        def __init__(self, encoding):
            super().__init__(encoding, chunk_size=100)

        def pieces(self, *args):
            for piece in super().pieces(*args):
                reads.append(piece)
                yield piece

    monkeypatch.setattr(corpus, "Reader", SmallChunks)
    assert read_text(path, max_chars=250) == "x" * 250
    assert len(reads) == 3  # 100-byte chunks: three hold 250 characters; the other 47 are never read


def test_read_text_missing(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="the folder holds no files"):
        read_text(tmp_path)


# -- the embedded corpus is one more input -------------------------------------------------------


def test_the_embedded_corpus_reads_through_the_same_reader(tmp_path):
    loaded = load_corpus(None, encoding="latin-1", cache_dir=tmp_path / "cache")  # UTF-8, never cached
    raw = default_corpus_path().read_bytes().decode("utf-8")
    assert loaded.corpus.name == EMBEDDED_NAME == resolve_inputs(None).name
    assert loaded.corpus.path is None and loaded.corpus.separator is None  # what checkpoints record
    assert loaded.cache == "off" and loaded.n_files == 1 and not (tmp_path / "cache").exists()
    assert_same_corpus(loaded.corpus, raw)
    assert read_text(None) == raw and read_text(None, max_chars=10) == raw[:10]
    with pytest.raises(DataError, match=r"^tinyshakespeare \(embedded\): 1 character\(s\) are not in the model's"):
        load_corpus(None, vocab=Vocab(loaded.corpus.vocab.chars.replace("z", "")))


# -- a memory-mapped corpus in the rest of charrnn -------------------------------------------------


def test_memmapped_corpus_trains_and_evaluates_like_one_in_memory(tmp_path):
    path = write(tmp_path / "t.txt", make_text(300))
    mapped = load_corpus(path, cache_dir=tmp_path / "cache")
    mapped = load_corpus(path, cache_dir=tmp_path / "cache")  # the hit: a read-only np.memmap
    assert mapped.cache == "hit" and isinstance(mapped.corpus.ids, np.memmap)
    in_memory = Corpus.from_text(path.read_text(encoding="utf-8"), "t.txt")
    train, val = split(mapped.corpus.ids, 0.1)
    x, y = Batches(train, 4, 16)[3]
    assert x.dtype == np.int64 and np.array_equal(x, Batches(split(in_memory.ids, 0.1)[0], 4, 16)[3][0])
    model = CharRNN(ModelConfig(vocab_size=len(in_memory.vocab), num_layers=1, hidden_size=16, embedding_size=8))
    in_memory_val = split(in_memory.ids, 0.1)[1]
    assert evaluate(model, val, batch_size=4, seq_len=32) == evaluate(model, in_memory_val, batch_size=4, seq_len=32)
    runs = []
    for name, corpus_ in (("mapped", mapped.corpus), ("memory", in_memory)):
        rec = Recorder()
        mc = ModelConfig(vocab_size=len(corpus_.vocab), num_layers=1, hidden_size=16, embedding_size=8)
        Trainer(
            mc, TrainConfig(batch_size=4, seq_len=16, max_steps=5, eval_every=5), corpus_, tmp_path / name, callback=rec
        ).run()
        runs.append(rec.losses)
    assert len(runs[0]) == 5 and runs[0] == runs[1]


# -- through the CLI ---------------------------------------------------------------------------------


def test_cli_trains_on_a_folder_reports_skips_and_reuses_its_cache(runner, tree, tmp_path):
    write(tree / "b" / "big.txt", make_text(200))
    args = [
        "train",
        str(tree),
        *TINY_MODEL,
        *TINY_TRAIN,
        "--max-steps",
        "2",
        "--eval-every",
        "2",
        "--sample-length",
        "0",
        "--device",
        "cpu",
        "--separator",
        r"\n\n",
        "--eval-chars",
        "100",
    ]
    first = runner.invoke(cli, [*args, "--out-dir", str(tmp_path / "one")])
    assert first.exit_code == 0, first.stderr
    assert "3 file(s) skipped: 1 binary, 1 empty, 1 not utf-8; e.g." in first.stderr
    assert "corpus encoded into" in first.stderr and (tmp_path / "one" / "cache" / CACHEDIR_TAG).exists()
    shared_cache = str(tmp_path / "one" / "cache")
    second = runner.invoke(cli, [*args, "--out-dir", str(tmp_path / "two"), "--cache-dir", shared_cache])
    assert second.exit_code == 0 and "cached corpus reused" in second.stderr
    third = runner.invoke(cli, [*args, "--out-dir", str(tmp_path / "three"), "--no-cache", "-q"])
    assert third.exit_code == 0 and not (tmp_path / "three" / "cache").exists()
    saved = ckpt_io.load(tmp_path / "one" / "last.pt")
    assert saved.corpus["separator"] == "\n\n" and saved.train_config["eval_chars"] == 100
    assert saved.corpus["sha256"] == ckpt_io.load(tmp_path / "three" / "last.pt").corpus["sha256"]
    evaluated = runner.invoke(cli, ["eval", str(tmp_path / "one" / "last.pt"), "--json", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.stderr  # finds the folder, separator and cache again


def test_cli_rejects_an_unknown_separator_escape(runner, tree, tmp_path):
    result = runner.invoke(cli, ["train", str(tree), "--separator", r"\q", "--out-dir", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown escape" in result.stderr


def test_visualize_text_takes_a_folder_or_glob_like_train(runner, tree, tmp_path):
    vocab = Vocab.from_text(expected(tree, "\n"))
    torch.manual_seed(0)
    config = ModelConfig(len(vocab), num_layers=1, hidden_size=8, embedding_size=4)
    ckpt = ckpt_io.Checkpoint(path=None, model_config=config, vocab=vocab.chars, weights=CharRNN(config).state_dict())
    path = str(ckpt_io.save(ckpt, tmp_path / "m.pt"))
    for inputs in (str(tree), str(tree / "**" / "*.txt")):
        result = runner.invoke(cli, ["visualize", path, "--text", inputs, "--predictions", "--json", "--device", "cpu"])
        assert result.exit_code == 0, result.stderr
        shown = json.loads(result.stdout)
        assert shown["text"] == expected(tree, "\n") and shown["source_n_chars"] == len(shown["text"])
    cut = runner.invoke(
        cli, ["visualize", path, "--text", str(tree), "--predictions", "--json", "--max-chars", "20", "--device", "cpu"]
    )
    assert cut.exit_code == 0, cut.stderr
    assert "using the first 20 of a longer text; raise --max-chars" in cut.stderr
    shown = json.loads(cut.stdout)
    assert shown["text"] == expected(tree, "\n")[:20] and shown["source_n_chars"] is None

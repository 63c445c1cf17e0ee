import numpy as np
import pytest

from charrnn.data import Batches, Corpus, Vocab, escape_char, split
from charrnn.errors import ConfigError, DataError, cli_names


def test_vocab_is_sorted_code_points_and_round_trips_astral_characters():
    text = "héllo wörld 😀 日本\r\n"
    vocab = Vocab.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    assert "😀" in vocab.chars and len(vocab) == len(set(text))  # one symbol, not 4 bytes
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text


def test_encode_names_unknown_characters():
    vocab = Vocab.from_text("abc")
    with pytest.raises(DataError, match="'z'"):
        vocab.encode("abz")
    assert vocab.missing("xabcy") == ["x", "y"]


def test_check_is_the_one_not_in_vocabulary_error():
    vocab = Vocab("ab")
    vocab.check("abba", "t.txt")  # nothing to say
    with pytest.raises(DataError) as caught:
        vocab.check("a\tzbz\n", "t.txt")
    message = str(caught.value)
    assert message.startswith("t.txt: 3 character(s) are not in the model's vocabulary: '\\t', '\\n', 'z'; remove them")
    assert "charrnn inspect CHECKPOINT" in message and "\n" not in message  # one line


@pytest.mark.parametrize("chars", ["ba", "aab", "", 5])
def test_vocab_refuses_what_is_not_a_sorted_set_even_under_python_O(chars):
    if chars == "":
        assert len(Vocab(chars)) == 0  # empty is sorted and unique
        return
    with pytest.raises(ValueError, match="sorted string of distinct characters"):
        Vocab(chars)


def test_index_dtype_grows_with_vocabulary():
    small = Vocab.from_text("ab")
    big = Vocab("".join(chr(0x4E00 + i) for i in range(300)))
    assert small.encode("ab").dtype == np.uint8
    assert big.encode(big.chars).dtype == np.uint16


def test_split_is_contiguous_with_validation_last():
    ids = np.arange(100)
    train, val = split(ids, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    with pytest.raises(ConfigError, match=r"^val_frac must be in \[0, 1\)"):
        split(ids, 1.0)


@pytest.mark.parametrize("world_size", [1, 2])
def test_batches_carry_state_line_up_with_next_batch(world_size):
    ids = np.arange(1000) % 251
    streams = []
    for rank in range(world_size):
        b = Batches(ids.astype(np.int64), batch_size=3, seq_len=7, rank=rank, world_size=world_size)
        streams.append(b)
    first = streams[0]
    assert len(first) == ((1000 - 1) // (3 * world_size)) // 7
    for b in streams:
        for i in range(len(b) - 1):
            x0, y0 = b[i]
            x1, _ = b[i + 1]
            assert x0.shape == (3, 7) and x0.dtype == np.int64
            # targets are inputs shifted by one ...
            assert (y0[:, :-1] == x0[:, 1:]).all()
            # ... and row b of the next batch continues where row b stopped
            assert (x1[:, 0] == y0[:, -1]).all()
    if world_size == 2:
        # the two ranks own different streams
        assert not np.array_equal(streams[0][0][0], streams[1][0][0])
        # together they are the same layout as one process with the global batch
        single = Batches(ids.astype(np.int64), batch_size=6, seq_len=7)
        together = np.concatenate([streams[0][0][0], streams[1][0][0]])
        assert np.array_equal(single[0][0], together)


def test_batches_too_short_says_how_short_and_what_to_change():
    with pytest.raises(DataError, match=r"need at least 3,201.*a smaller batch_size / seq_len"):
        Batches(np.zeros(500, dtype=np.int64), batch_size=32, seq_len=100)
    with cli_names(), pytest.raises(DataError, match=r"a smaller --batch-size / --seq-len"):
        Batches(np.zeros(500, dtype=np.int64), batch_size=32, seq_len=100)


def test_corpus_with_fixed_vocab_lists_missing_characters():
    with pytest.raises(DataError, match=r"^t.txt: 1 character\(s\) are not in the model's vocabulary: 'x'"):
        Corpus.from_text("abx", "t.txt", Vocab("ab"))


def test_escape_char_makes_invisible_characters_visible():
    assert escape_char("\n") == "\\n" and escape_char("\t") == "\\t"
    assert escape_char("\u200b") == "U+200B" and escape_char("a") == "a"

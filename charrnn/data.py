"""In-memory text data: the code-point vocabulary, encoded corpora, the split, and the batch layout
for truncated backpropagation through time. Reading text from disk is ``charrnn.corpus``'s job.

Characters are Unicode code points, never bytes: "é" is one symbol whether the file spells it in one
UTF-8 byte sequence or another, and an emoji outside the Basic Multilingual Plane is one symbol too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from charrnn.errors import ConfigError, DataError, UnknownCharsError, option


@dataclass(frozen=True)
class Vocab:
    """The sorted set of characters (code points) a model knows; index i is ``chars[i]``.

    ValueError if ``chars`` is not a sorted string of distinct characters (a damaged cache or a
    programming error; checkpoints are checked before they get here).
    """

    chars: str

    def __post_init__(self) -> None:
        if not isinstance(self.chars, str) or self.chars != "".join(sorted(set(self.chars))):
            raise ValueError(f"a vocabulary is a sorted string of distinct characters, got {self.chars!r:.80}")

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def missing(self, text: str) -> list[str]:
        """The distinct characters of ``text`` that are not in this vocabulary, sorted."""
        return sorted(set(text) - set(self.chars))

    def check(self, text: str, where: str) -> None:
        """DataError naming ``where`` (a file, a corpus, an option) if ``text`` has characters outside
        this vocabulary: how many, which ones, and how to fix it. The one not-in-vocabulary error."""
        unknown = self.missing(text)
        if unknown:
            raise UnknownCharsError(
                f"{where}: {len(unknown)} character(s) are not in the model's vocabulary: {describe_chars(unknown)}; "
                "remove them (`charrnn inspect CHECKPOINT` lists the vocabulary)",
                unknown,
            )

    def encode(self, text: str, where: str = "the text") -> np.ndarray:
        """text -> (len(text),) unsigned integer indices (``index_dtype``); DataError via ``check``,
        naming ``where``, for characters outside the vocabulary (looked for only when some are)."""
        codes = _code_points(text)
        table = _code_points(self.chars)
        idx = np.minimum(np.searchsorted(table, codes), max(len(table) - 1, 0))
        if len(codes) and (not len(table) or not np.array_equal(table[idx], codes)):
            self.check(text, where)
        return idx.astype(index_dtype(len(self)))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def _code_points(text: str) -> np.ndarray:
    """text -> (len(text),) uint32 code points, via one C-level encode."""
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")


def index_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every index of a vocabulary this size."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def escape_char(ch: str) -> str:
    """A printable, unambiguous spelling of one character: '\\n', '\\t', ' ', 'U+200B', ..."""
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␣", "\\": "\\\\"}
    if ch in named:
        return named[ch]
    if not ch.isprintable() or ch in "\u00a0\u200b\ufeff":
        return f"U+{ord(ch):04X}"
    return ch


def describe_chars(chars, limit: int = 20) -> str:
    """'a', 'b', '\\n' ... for a one-line error message."""
    chars = list(chars)
    shown = ", ".join(f"'{escape_char(c)}'" if escape_char(c) != c else repr(c) for c in chars[:limit])
    if len(chars) > limit:
        shown += f" and {len(chars) - limit} more"
    return shown


@dataclass(frozen=True)
class Corpus:
    """An encoded text: ``ids`` (N,) unsigned ints into ``vocab``, plus what identifies the text.

    ``ids`` may be a read-only numpy.memmap of a corpus cache (see charrnn.corpus_cache); everything
    that reads it slices it. ``sha256`` is the SHA-256 of the text in UTF-8 (BOM dropped; several
    files joined by ``separator``), whatever the file's own encoding.
    """

    name: str
    ids: np.ndarray
    vocab: Vocab
    sha256: str
    path: str | None = None
    separator: str | None = None  # between the files of a folder or glob; None for one file

    @classmethod
    def from_text(cls, text: str, name: str, vocab: Vocab | None = None, path: str | None = None) -> Corpus:
        """Encode ``text``; with ``vocab`` given (fine-tuning), every character must be in it."""
        if vocab is None:
            vocab = Vocab.from_text(text)
        else:
            vocab.check(text, name)
        digest = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
        return cls(name=name, ids=vocab.encode(text), vocab=vocab, sha256=digest, path=path)

    def __len__(self) -> int:
        return len(self.ids)


def split(ids: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous split: the last ``val_frac`` of the characters is validation, the rest training."""
    if not 0.0 <= val_frac < 1.0:
        raise ConfigError(f"{option('val_frac')} must be in [0, 1), got {val_frac}")
    n_val = int(round(len(ids) * val_frac))
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


class Batches:
    """A split cut into parallel contiguous streams, read ``seq_len`` characters at a time.

    With S = batch_size * world_size streams of length L = (N - 1) // S, the data is laid out as::

        stream 0   | x[0:T]      | x[T:2T]      | x[2T:3T]      | ...      rank 0 owns streams
        stream 1   | x[L:L+T]    | x[L+T:L+2T]  | ...                      0 .. batch_size-1,
        ...                                                                rank 1 the next batch_size,
        stream S-1 | x[(S-1)L:] ...                                        and so on
                     batch 0       batch 1        batch 2

    Row b of batch i+1 continues exactly where row b of batch i stopped, so the hidden state left by
    one batch is the right starting state for the next (truncated BPTT). Targets are the inputs
    shifted by one character. The last partial chunk of each stream (< T characters) is dropped.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1):
        assert 0 <= rank < world_size, "rank must lie in [0, world_size)"
        self.batch_size, self.seq_len = batch_size, seq_len
        streams = batch_size * world_size
        self.stream_len = (len(ids) - 1) // streams
        self.steps_per_epoch = self.stream_len // seq_len
        if self.steps_per_epoch < 1:
            need = streams * seq_len + 1
            raise DataError(
                f"{len(ids):,} characters are too few for one batch of {streams} stream(s) x "
                f"{seq_len} characters (need at least {need:,}); use a longer text or a smaller "
                f"{option('batch_size')} / {option('seq_len')}"
            )
        usable = streams * self.stream_len
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        self._x = ids[:usable].reshape(streams, self.stream_len)[rows]  # (B, L) view, no copy
        self._y = ids[1 : usable + 1].reshape(streams, self.stream_len)[rows]

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch i -> (x, y), each (B, T) int64."""
        if not 0 <= i < self.steps_per_epoch:
            raise IndexError(i)
        cols = slice(i * self.seq_len, (i + 1) * self.seq_len)
        return self._x[:, cols].astype(np.int64), self._y[:, cols].astype(np.int64)

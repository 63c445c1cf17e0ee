"""A corpus's two passes over the streaming reader: pass 1 (``survey``) finds the usable files, their
lengths and characters; pass 2 (``encode``) turns them into ids and the text's SHA-256, a chunk at a
time. docs/corpus.md describes them.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.data import Vocab, index_dtype
from charrnn.errors import DataError
from charrnn.reader import Reader, Skipped, Sources, Unusable, no_text, usable_files


class _CharSet:
    """The distinct characters of the usable files read so far, and apart from them (``new``) those of
    the file being read, kept only once it is known to be usable. ASCII pieces cost one C-level pass."""

    def __init__(self):
        self.chars: set[str] = set()
        self.new: set[str] = set()
        self._ascii = b""  # the ASCII characters known, as bytes for bytes.translate(None, delete)

    def start_file(self) -> None:
        self.new = set()  # a file that failed part-way leaves nothing behind
        self._decoder = codecs.getincrementaldecoder("utf-8")()  # for the non-ASCII remainders
        self._update_ascii()

    def keep_file(self) -> None:
        self.chars |= self.new

    def _update_ascii(self) -> None:
        self._ascii = bytes(sorted(ord(c) for c in self.chars | self.new if ord(c) < 0x80))

    def add(self, raw: bytes | None, text: str | None) -> None:
        if raw is not None:
            # UTF-8: deleting the ASCII bytes already known leaves new ASCII characters and whole
            # multi-byte sequences (they never contain ASCII bytes): usually a tiny remainder.
            rest = raw.translate(None, self._ascii)
            if not rest:
                return
            found = set(self._decoder.decode(rest)) if text is not None else {chr(b) for b in set(rest)}
        else:
            assert text is not None, "Reader.pieces decodes every piece it gives no bytes of"
            codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
            found = {chr(c) for c in np.flatnonzero(np.bincount(codes))} if len(codes) else set()
        found -= self.chars
        if not found <= self.new:
            self.new |= found
            self._update_ascii()


@dataclass
class Survey:
    files: list[tuple[Path, int]]  # usable files and their lengths in characters
    skipped: list[Skipped]
    chars: str  # sorted distinct characters of the joined text
    n_chars: int  # of the joined text, separators included


def survey(sources: Sources, reader: Reader, separator: str) -> Survey:
    """Pass 1: which files are text, how long each is, which characters occur."""
    chars = _CharSet()

    def count(path: Path, name: str) -> int:
        chars.start_file()
        n_chars = 0
        for raw, text in reader.pieces(path, name):
            if text is None:
                assert raw is not None, "Reader.pieces gives the bytes of every piece it does not decode"
                n_chars += len(raw)
            else:
                n_chars += len(text)
            chars.add(raw, text)
        if n_chars == 0:
            raise no_text(name)
        chars.keep_file()
        return n_chars

    skipped: list[Skipped] = []
    accepted = list(usable_files(sources, reader, count, skipped))
    found = chars.chars | (set(separator) if len(accepted) > 1 else set())
    n_chars = sum(n for _, n in accepted) + len(separator) * (len(accepted) - 1)
    return Survey(accepted, skipped, "".join(sorted(found)), n_chars)


_LEAD_MASK = np.array([0, 0, 0x1F, 0x0F, 0x07], dtype=np.uint32)  # payload bits of a lead byte, by length


class Encoder:
    """Characters -> ids through a lookup table indexed by code point (at most 0x110000 entries)."""

    def __init__(self, vocab: Vocab):
        self.dtype = index_dtype(len(vocab))
        codes = [ord(c) for c in vocab.chars]
        self.max_code = codes[-1]
        self.lut = np.zeros(max(self.max_code + 1, 0x100), dtype=self.dtype)
        self.lut[codes] = np.arange(len(codes), dtype=self.dtype)
        # With at most 256 characters, bytes.translate maps one byte to one id in a single C pass.
        self.table = self.lut[:0x100].tobytes() if self.dtype == np.uint8 else None

    def ascii(self, raw: bytes) -> np.ndarray:
        if self.table is not None:
            return np.frombuffer(raw.translate(self.table), dtype=np.uint8)
        return self.lut[np.frombuffer(raw, dtype=np.uint8)]

    def utf8(self, raw: bytes) -> np.ndarray:
        """Whole UTF-8 characters -> ids without building a str: ASCII bytes go through the table, and
        only the multi-byte sequences (usually few) are decoded, vectorised."""
        if raw.isascii():
            return self.ascii(raw)
        b = np.frombuffer(raw, dtype=np.uint8)
        high = np.flatnonzero(b >= 0x80)
        is_lead = b[high] >= 0xC0
        leads, conts = high[is_lead], high[~is_lead]
        first = b[leads].astype(np.uint32)
        length = 2 + (first >= 0xE0) + (first >= 0xF0)  # bytes in each multi-byte character
        code = first & _LEAD_MASK[length]
        for k in (1, 2, 3):
            more = length > k
            code[more] = (code[more] << 6) | (b[leads[more] + k] & 0x3F)
        keep = np.ones(len(b), dtype=bool)
        keep[conts] = False
        ids = self.ascii(raw)[keep]  # one id per character; those of multi-byte ones are wrong yet
        ids[leads - np.searchsorted(conts, leads)] = self.lut[code]
        return ids

    def text(self, text: str) -> np.ndarray:
        """Through the narrowest codec that holds every character of the vocabulary."""
        if self.max_code < 0x100:  # every character is one latin-1 byte
            return self.ascii(text.encode("latin-1"))
        if self.max_code < 0x10000:  # UTF-16 code units are the code points
            codes = np.frombuffer(text.encode("utf-16-le", errors="surrogatepass"), dtype="<u2")
        else:
            assert text is not None, "Reader.pieces decodes every piece it gives no bytes of"
            codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
        return self.lut[codes]


def encode(survey: Survey, reader: Reader, separator: str, vocab: Vocab, write: Callable[[np.ndarray], object]) -> str:
    """Pass 2: every usable file (separators between) through ``write(ids)``; the text's SHA-256."""
    encoder = Encoder(vocab)
    sep_ids = vocab.encode(separator) if len(survey.files) > 1 else None
    sep_utf8 = separator.encode("utf-8", errors="surrogatepass")
    sha = hashlib.sha256()
    for i, (path, expected) in enumerate(survey.files):
        if i:
            assert sep_ids is not None, "there is a separator whenever there are several files"
            write(sep_ids)
            sha.update(sep_utf8)
        name = str(path)
        n_chars = 0
        try:
            if reader.utf8:  # checked in pass 1: encode the bytes directly, hash them as they are
                for raw in reader.utf8_pieces(path, name):
                    ids = encoder.utf8(raw)
                    write(ids)
                    n_chars += len(ids)
                    sha.update(raw)
            else:
                for _, text in reader.pieces(path, name):
                    assert text is not None, "Reader.pieces decodes every piece of a file not in UTF-8"
                    ids = encoder.text(text)
                    write(ids)
                    n_chars += len(ids)
                    sha.update(text.encode("utf-8", errors="surrogatepass"))
        except (Unusable, UnicodeEncodeError, IndexError):  # not what pass 1 read
            n_chars = -1
        if n_chars != expected:
            raise DataError(f"{name}: changed while the corpus was being encoded; run again")
    return sha.hexdigest()

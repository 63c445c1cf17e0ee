"""The streaming reader: the text of files in chunks, with the checks every text gets (empty, binary,
undecodable, unreadable) and their one-line messages; which files of a folder or glob are usable.

Memory stays at a few chunks whatever the size of the files (docs/corpus.md).
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from charrnn.errors import ConfigError, DataError, option

CHUNK_BYTES = 8 << 20  # bytes read (and decoded, and encoded) at a time
BINARY_SNIFF_BYTES = 8192  # how far into a file NUL bytes mean "binary"
T = TypeVar("T")


@dataclass(frozen=True)
class Sources:
    """What TEXT names: the files to join, in order."""

    name: str  # the corpus's name: the file's name, the folder or pattern as given, or the embedded corpus's
    path: str | None  # absolute file, folder or pattern: how a resumed run finds the text again; None: embedded
    files: tuple[Path, ...]
    single: bool  # one file named explicitly: its problems are errors, not skips


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str  # "binary", "not <encoding>", "empty" or "unreadable"


def describe_skipped(skipped: tuple[Skipped, ...] | list[Skipped]) -> str:
    """'3 file(s) skipped: 2 binary, 1 not utf-8; e.g. src/logo.png', for a one-line notice."""
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    reasons = ", ".join(f"{n} {r}" for r, n in counts.items())
    return f"{len(skipped)} file(s) skipped: {reasons}; e.g. {skipped[0].path}"


def is_utf8(encoding: str) -> bool:
    """UTF-8 with or without a BOM: the encodings where NUL bytes mean "binary"."""
    return encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig")


def check_encoding(encoding: str) -> None:
    """ConfigError unless ``encoding`` names a codec that turns bytes into text (not base64, zlib, rot13)."""
    try:
        info = codecs.lookup(encoding)
    except (LookupError, TypeError, ValueError):
        raise ConfigError(
            f"unknown {option('encoding')} {encoding!r}; use a Python codec name such as utf-8 or latin-1"
        ) from None
    if not getattr(info, "_is_text_encoding", True):  # CPython marks bytes-to-bytes and str-to-str codecs
        raise ConfigError(f"{option('encoding')} {encoding!r} is not a text encoding; use one such as utf-8 or latin-1")


class Unusable(Exception):
    """A file that cannot be used: ``reason`` for the skip list, ``message`` for a strict error."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class Reader:
    """Streams one file's text as (raw, text) pieces, BOM dropped.

    For UTF-8, ``raw`` is the piece's exact bytes (the UTF-8 of the text, ready to hash), and ``text``
    is None when the piece is plain ASCII: then every byte is its own character and nothing needs
    decoding. For other encodings ``raw`` is None and ``text`` the decoded piece.
    """

    def __init__(self, encoding: str, chunk_size: int = CHUNK_BYTES):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 byte, got {chunk_size}")
        check_encoding(encoding)
        self.encoding, self.chunk_size = encoding, chunk_size
        self.utf8 = is_utf8(encoding)
        self.codec = "utf-8" if self.utf8 else encoding

    def pieces(self, path: Path, name: str) -> Generator[tuple[bytes | None, str | None], None, None]:
        """The file's text, checked: Unusable for an empty, binary, undecodable or unreadable file."""
        try:
            with open(path, "rb") as fh:
                chunks, dropped = self._chunks(fh, name)
                yield from self._decode(chunks, name, dropped)
        except OSError as exc:
            raise Unusable("unreadable", f"{name}: cannot be read ({exc.strerror}); check its permissions") from None

    def utf8_pieces(self, path: Path, name: str) -> Iterator[bytes]:
        """The bytes of a file ``pieces`` accepted, cut at character boundaries; no decoding.

        For pass 2: pass 1 has checked the file is valid UTF-8 (if it changed since, the lengths or
        the modification time give it away).
        """
        assert self.utf8, "utf8_pieces is for UTF-8 files"
        try:
            with open(path, "rb") as fh:
                chunks, _ = self._chunks(fh, name)
                carry = b""
                for chunk in chunks:
                    data = carry + chunk if carry else chunk
                    cut = _last_boundary(data)
                    carry = data[cut:]
                    if cut:
                        yield data[:cut]
                if carry:
                    raise Unusable(f"not {self.encoding}", f"{name}: ends inside a character")
        except OSError as exc:
            raise Unusable("unreadable", f"{name}: cannot be read ({exc.strerror}); check its permissions") from None

    def _chunks(self, fh, name: str) -> tuple[Iterator[bytes], int]:
        """The file in chunk_size pieces after the checks of its head; and how many BOM bytes were dropped."""
        head = fh.read(BINARY_SNIFF_BYTES)
        if not head:
            raise Unusable("empty", f"{name}: the file is empty; pass a text file with some text in it")
        dropped = 0  # a BOM dropped before decoding still counts in error offsets
        if self.utf8:
            if b"\x00" in head:
                utf16 = head[:2] in (b"\xff\xfe", b"\xfe\xff")
                hint = f" (it looks like UTF-16: pass {option('encoding', 'utf-16')})" if utf16 else ""
                raise Unusable(
                    "binary",
                    f"{name}: looks like a binary file, not text (it contains NUL bytes){hint}; pass a text file",
                )
            if head.startswith(codecs.BOM_UTF8):
                head, dropped = head[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
        step = self.chunk_size
        head_pieces = (head[i : i + step] for i in range(0, len(head), step))
        return itertools.chain(head_pieces, iter(lambda: fh.read(step), b"")), dropped

    def _decode(self, chunks, name: str, dropped: int) -> Iterator[tuple[bytes | None, str | None]]:
        decoder = codecs.getincrementaldecoder(self.codec)()
        fed = dropped  # bytes of the file consumed so far
        at_start = True
        for raw in chunks:
            if self.utf8 and raw.isascii() and not decoder.getstate()[0]:
                fed += len(raw)
                yield raw, None
                continue
            try:
                text = decoder.decode(raw)
            except UnicodeDecodeError as exc:  # exc.object is what the decoder held back, then raw
                raise self._undecodable(name, exc, fed + len(raw) - len(exc.object)) from None
            except (UnicodeError, ValueError, TypeError) as exc:  # what other codecs raise (utf-16: no BOM)
                raise self._undecodable(name, exc, fed) from None
            fed += len(raw)
            if not self.utf8 and at_start and text:
                at_start = False
                text = text[1:] if text.startswith("\ufeff") else text
            yield (raw if self.utf8 else None), text
        try:
            tail = decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:  # the file ends inside a character
            raise self._undecodable(name, exc, fed - len(exc.object)) from None
        except (UnicodeError, ValueError, TypeError) as exc:
            raise self._undecodable(name, exc, fed) from None
        if tail:
            yield (b"" if self.utf8 else None), tail

    def _undecodable(self, name: str, exc: Exception, base: int) -> Unusable:
        """The one-line encoding error, whatever the codec raised: where, when it says, else its words."""
        if isinstance(exc, UnicodeDecodeError) and exc.start < len(exc.object):
            where = f"byte 0x{exc.object[exc.start]:02x} at offset {base + exc.start}"
        elif isinstance(exc, UnicodeDecodeError):
            where = f"it ends inside a character, at offset {base + exc.start}"
        else:
            where = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Unusable(
            f"not {self.encoding}",
            (
                f"{name}: is not valid {self.encoding} ({where}); if it is Latin-1 or another encoding, pass it with "
                f"{option('encoding')}, e.g. {option('encoding', 'latin-1')}"
            ),
        )


def _last_boundary(data: bytes) -> int:
    """The length of the longest prefix of UTF-8 ``data`` that ends on a character boundary."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)  # ASCII: a boundary right after it
        if byte >= 0xC0:  # the lead byte of the last character: is the character whole?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)  # not UTF-8 after all; pass 2 finds out


def usable_files(
    sources: Sources, reader: Reader, read: Callable[[Path, str], T], skipped: list[Skipped]
) -> Iterator[tuple[Path, T]]:
    """(path, ``read(path, name)``) for each usable file, in order. A file ``read`` finds Unusable is a
    DataError when it is the one file named, else it goes to ``skipped``; DataError if none is usable."""
    accepted = 0
    for path in sources.files:
        try:
            result = read(path, str(path))
        except Unusable as problem:
            if sources.single:
                raise DataError(problem.message) from None
            skipped.append(Skipped(str(path), problem.reason))
            continue
        accepted += 1
        yield path, result
    if not accepted:
        raise DataError(
            f"{sources.name}: no usable text files ({describe_skipped(skipped)}); pass text files "
            f"in {reader.encoding}, or name their encoding with {option('encoding')}"
        )


def no_text(name: str) -> Unusable:
    """A file whose only content is a byte-order mark."""
    return Unusable("empty", f"{name}: the file holds no text; pass a text file with some text in it")


def read_joined(sources: Sources, reader: Reader, separator: str, max_chars: int | None) -> str:
    """The usable files' texts joined by ``separator``; with ``max_chars``, its first ``max_chars``
    characters, read no further (so a problem further on in a file goes unseen)."""
    parts: list[str] = []
    total = 0

    def text_of(path: Path, name: str) -> str:
        pieces: list[str] = []
        n_chars = 0
        with contextlib.closing(reader.pieces(path, name)) as stream:
            for raw, text in stream:
                if text is None:
                    assert raw is not None, "Reader.pieces gives the bytes of every piece it does not decode"
                    piece = raw.decode("ascii")
                else:
                    piece = text
                pieces.append(piece)
                n_chars += len(piece)
                if max_chars is not None and total + n_chars >= max_chars:
                    break
        if n_chars == 0:
            raise no_text(name)
        return "".join(pieces)

    for _, text in usable_files(sources, reader, text_of, []):
        if parts:
            parts.append(separator)
            total += len(separator)
        parts.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    joined = "".join(parts)
    return joined if max_chars is None else joined[:max_chars]

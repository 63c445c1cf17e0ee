"""Corpora from disk at any size: one file, a folder or a glob, streamed and encoded once into a
memory-mapped cache.

    TEXT --resolve--> sorted files --pass 1--> characters, length --pass 2--> ids (.npy) + SHA-256
                                    (skip binary / undecodable)            (memory-mapped for training)

Both passes read ``chunk_size`` bytes at a time. Pass 1 checks them through an incremental decoder,
so a character whose bytes straddle two chunks is decoded once and right; pass 2 cuts UTF-8 at
character boundaries and maps the bytes to ids directly (other encodings are decoded again). Peak
memory is a few chunks whatever the size of the corpus: the ids are written to the file as they are
made, never held whole. An entry also records the vocabulary it was encoded with; a checkpoint's
(fine-tuning, resuming, evaluating) that differs re-encodes it.

The text of several files is their texts (BOM dropped) in sorted path order, joined by ``separator``.
Its SHA-256 (of the UTF-8 bytes) is what ``Corpus.from_text`` gives for the same text, so the
checks of ``--resume`` and ``charrnn eval`` do not care how a corpus was read.

The cache (``<cache_dir>/<key>.json`` + ``<key>-<build>.npy``, one entry per TEXT, separator and
encoding) is trusted only when the path, size and modification time (ns) of every file TEXT names
now, skipped files included, equal those recorded when it was built, and the recorded list still
matches the hash stored beside it. Anything else rebuilds it: a file added, removed, grown, or
rewritten (a rewrite bumps the mtime). A change that keeps both size and mtime, which only a tool
that resets the mtime makes, is not seen; delete the cache folder or pass --no-cache then. The ids
file is written under a temporary name, fsynced and renamed, and only then does the manifest that
names it replace the old one, so an interrupted build never leaves a cache that is later trusted.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import itertools
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from charrnn.data import (
    BINARY_SNIFF_BYTES,
    Corpus,
    Vocab,
    binary_message,
    describe_chars,
    empty_message,
    index_dtype,
    is_utf8,
    no_text_message,
    undecodable_message,
    unknown_encoding_message,
)
from charrnn.errors import ConfigError, DataError, OutputError
from charrnn.fsio import replace_atomic

CHUNK_SIZE = 8 << 20  # bytes read (and decoded, and encoded) at a time
CACHE_FORMAT = "charrnn-corpus-cache"
CACHE_VERSION = 1
_GLOB_MAGIC = "*?["
_STALE_TEMP_SECONDS = 3600  # temp files of a build older than this were left by a crash
# A cache folder says what it is (https://bford.info/cachedir/), so that backups, and charrnn itself
# reading a folder that holds an earlier run's output, leave it out.
CACHEDIR_TAG = "CACHEDIR.TAG"
_CACHEDIR_TAG_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by charrnn: encoded corpora, rebuilt when needed.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)


@dataclass(frozen=True)
class Sources:
    """What TEXT names: the files to join, in order."""

    name: str  # the corpus's name: the file's name, or the folder or pattern as given
    path: str  # absolute file, folder or pattern: how --resume and eval find the text again
    files: tuple[Path, ...]
    single: bool  # one file named explicitly: its problems are errors, not skips


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str  # "binary", "not <encoding>", "empty" or "unreadable"


@dataclass(frozen=True)
class LoadedCorpus:
    """A corpus read from disk, and how: files joined, files skipped, what the cache did."""

    corpus: Corpus
    files: int
    skipped: tuple[Skipped, ...]
    cache: str  # "hit" (reused), "built" (encoded and stored) or "off" (encoded in memory)
    cache_file: Path | None


def is_glob(text: str) -> bool:
    return any(ch in text for ch in _GLOB_MAGIC)


def resolve_inputs(inputs: str | Path, exclude: tuple[Path, ...] = ()) -> Sources:
    """A file, a folder (every file below it) or a glob (``**`` spans folders) -> sorted files.

    Names starting with "." (``.git``, editor swap files) are left out of folders and globs, and so
    are cache folders (tagged with CACHEDIR.TAG) and anything under a folder of ``exclude`` that lies
    inside the folder searched (the run's own checkpoints would otherwise change the corpus at every
    start).
    """
    text = str(inputs)
    path = Path(text).expanduser()
    if path.is_file():
        return Sources(path.name, str(path.resolve()), (path,), single=True)
    if path.is_dir():
        root = path.resolve()
        excluded = _inside(root, exclude)
        found = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".") and not _under(Path(folder, d), excluded)
                       and not Path(folder, d, CACHEDIR_TAG).exists()]
            found += [Path(folder, n) for n in names if not n.startswith(".") and Path(folder, n).is_file()]
        files = _sorted_files(found, excluded)
        if not files:
            raise DataError(f"{text}: the folder holds no files; pass a folder with text files in it")
        return Sources(text.rstrip("/\\") + "/", str(root), files, single=False)
    if is_glob(text):
        pattern = os.path.abspath(os.path.expanduser(text))
        fixed = Path(pattern.split("*")[0].split("?")[0].split("[")[0])  # the part before any wildcard
        excluded = _inside(fixed if fixed.is_dir() else fixed.parent, exclude)
        tagged: dict[Path, bool] = {}
        matches = [Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        files = _sorted_files([p for p in matches if not _in_cache_folder(p, tagged)], excluded)
        if not files:
            raise DataError(
                f"{text}: the pattern matches no files; check it, and quote it so that the shell "
                "passes it to charrnn unexpanded"
            )
        return Sources(text, pattern, files, single=False)
    raise DataError(f"{text}: no such file or folder; pass a text file, a folder or a quoted glob such as 'src/**/*.c'")


def _in_cache_folder(path: Path, tagged: dict[Path, bool]) -> bool:
    """Whether a folder above ``path`` holds a CACHEDIR.TAG (memoised per folder in ``tagged``)."""
    for folder in path.parents:
        if folder not in tagged:
            tagged[folder] = (folder / CACHEDIR_TAG).exists()
        if tagged[folder]:
            return True
    return False


def _inside(root: Path, exclude: tuple[Path, ...]) -> tuple[Path, ...]:
    """The folders of ``exclude`` strictly inside ``root`` (excluding the root itself would leave nothing)."""
    root = root.resolve()
    resolved = (Path(p).resolve() for p in exclude)
    return tuple(p for p in resolved if root in p.parents)


def _under(path: Path, excluded: tuple[Path, ...]) -> bool:
    if not excluded:
        return False
    resolved = path.resolve()
    return any(resolved == ex or ex in resolved.parents for ex in excluded)


def _sorted_files(paths: list[Path], excluded: tuple[Path, ...]) -> tuple[Path, ...]:
    """Absolute, without duplicates or excluded files, sorted by path string (stable everywhere)."""
    unique = {str(p.absolute()): p.absolute() for p in paths if not _under(p, excluded)}
    return tuple(unique[k] for k in sorted(unique))


def load_corpus(
    inputs: str | Path,
    *,
    encoding: str = "utf-8",
    separator: str = "\n",
    vocab: Vocab | None = None,
    cache_dir: str | Path | None = None,
    exclude: tuple[Path, ...] = (),
    chunk_size: int = CHUNK_SIZE,
) -> LoadedCorpus:
    """Read, encode and (with ``cache_dir``) cache the text ``inputs`` names; see the module docstring.

    ``vocab`` (fine-tuning, resuming, evaluating) fixes the vocabulary: every character must be in it.
    Without ``cache_dir`` the ids are built in memory (N x 1, 2 or 4 bytes). One explicitly named
    file keeps ``read_text``'s errors (empty, binary, not decodable); in a folder or glob such files
    are skipped and listed in the result. DataError/ConfigError/OutputError for what the user can fix.
    """
    assert chunk_size >= 1, "chunk_size must be positive"
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(unknown_encoding_message(encoding)) from None
    sources = resolve_inputs(inputs, exclude)
    stats = _stat_files(sources.files)
    reader = _Reader(encoding, chunk_size)
    if cache_dir is None:
        return _build(sources, stats, reader, separator, vocab, None)
    cache = _Cache(Path(cache_dir), sources, encoding, separator)
    found = cache.lookup(stats, vocab)
    if found is not None:
        return found
    return _build(sources, stats, reader, separator, vocab, cache)


# -- reading ---------------------------------------------------------------------------------------


class _Unusable(Exception):
    """A file that cannot be used: ``reason`` for the skip list, ``message`` for a strict error."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class _Reader:
    """Streams one file's text as (raw, text) pieces, BOM dropped.

    For UTF-8, ``raw`` is the piece's exact bytes (the UTF-8 of the text, ready to hash), and ``text``
    is None when the piece is plain ASCII: then every byte is its own character and nothing needs
    decoding. For other encodings ``raw`` is None and ``text`` the decoded piece.
    """

    def __init__(self, encoding: str, chunk_size: int):
        self.encoding, self.chunk_size = encoding, chunk_size
        self.utf8 = is_utf8(encoding)
        self.codec = "utf-8" if self.utf8 else encoding

    def pieces(self, path: Path, name: str) -> Iterator[tuple[bytes | None, str | None]]:
        """The file's text, checked: _Unusable for an empty, binary or undecodable file."""
        try:
            with open(path, "rb") as fh:
                chunks, dropped = self._chunks(fh, name)
                yield from self._decode(chunks, name, dropped)
        except OSError as exc:
            raise _Unusable("unreadable", f"{name}: cannot be read ({exc.strerror}); check its permissions") from None

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
                    raise _Unusable(f"not {self.encoding}", f"{name}: ends inside a character")
        except OSError as exc:
            raise _Unusable("unreadable", f"{name}: cannot be read ({exc.strerror}); check its permissions") from None

    def _chunks(self, fh, name: str) -> tuple[Iterator[bytes], int]:
        """The file in chunk_size pieces after the checks of its head; and how many BOM bytes were dropped."""
        head = fh.read(BINARY_SNIFF_BYTES)
        if not head:
            raise _Unusable("empty", empty_message(name))
        dropped = 0  # a BOM dropped before decoding still counts in error offsets
        if self.utf8:
            if b"\x00" in head:
                raise _Unusable("binary", binary_message(name, head))
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
            fed += len(raw)
            if not self.utf8 and at_start and text:
                at_start = False
                text = text[1:] if text.startswith("\ufeff") else text
            yield (raw if self.utf8 else None), text
        try:
            tail = decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:  # the file ends inside a character
            raise self._undecodable(name, exc, fed - len(exc.object)) from None
        if tail:
            yield (b"" if self.utf8 else None), tail

    def _undecodable(self, name: str, exc: UnicodeDecodeError, base: int) -> _Unusable:
        bad = exc.object[exc.start]
        return _Unusable(f"not {self.encoding}", undecodable_message(name, self.encoding, bad, base + exc.start))


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


def _stat_files(files: tuple[Path, ...]) -> list[list]:
    """[path, size, mtime_ns] per file: what decides whether a cache is still good."""
    stats = []
    for path in files:
        try:
            st = path.stat()
            stats.append([str(path), st.st_size, st.st_mtime_ns])
        except OSError:
            stats.append([str(path), -1, -1])  # vanished or unreadable: the read reports it
    return stats


def _code_points(text: str, max_code: int) -> np.ndarray:
    """text -> code points, through the narrowest codec that holds every character of the corpus."""
    if max_code < 0x100:
        return np.frombuffer(text.encode("latin-1"), dtype=np.uint8)
    if max_code < 0x10000:
        return np.frombuffer(text.encode("utf-16-le", errors="surrogatepass"), dtype="<u2")
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")


class _CharSet:
    """The distinct characters of the files read so far; a file's own are kept apart until it is
    known to be usable. ASCII pieces cost one C-level pass each."""

    def __init__(self):
        self.chars: set[str] = set()
        self.new: set[str] = set()  # found in the file being read
        self._ascii = b""  # the ASCII characters known, as bytes for bytes.translate(None, delete)

    def start_file(self) -> None:
        self.new = set()
        self._decoder = codecs.getincrementaldecoder("utf-8")()  # for the non-ASCII remainders
        self._update_ascii()

    def end_file(self, usable: bool) -> None:
        if usable:
            self.chars |= self.new
        self.new = set()
        self._update_ascii()

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
            codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
            found = {chr(c) for c in np.flatnonzero(np.bincount(codes))} if len(codes) else set()
        found -= self.chars
        if not found <= self.new:
            self.new |= found
            self._update_ascii()


@dataclass
class _Survey:
    files: list[tuple[Path, int]]  # accepted files and their lengths in characters
    skipped: list[Skipped]
    chars: str  # sorted distinct characters of the joined text
    length: int


def _survey(sources: Sources, reader: _Reader, separator: str) -> _Survey:
    """Pass 1: which files are text, how long each is, which characters occur."""
    accepted: list[tuple[Path, int]] = []
    skipped: list[Skipped] = []
    chars = _CharSet()
    for path in sources.files:
        name = str(path)
        chars.start_file()
        length = 0
        try:
            for raw, text in reader.pieces(path, name):
                length += len(raw) if text is None else len(text)
                chars.add(raw, text)
            if length == 0:
                raise _Unusable("empty", no_text_message(name))
        except _Unusable as problem:
            chars.end_file(usable=False)
            if sources.single:
                raise DataError(problem.message) from None
            skipped.append(Skipped(str(path), problem.reason))
            continue
        chars.end_file(usable=True)
        accepted.append((path, length))
    if not accepted:
        raise DataError(
            f"{sources.name}: no usable text files ({describe_skipped(skipped)}); pass text files "
            f"in {reader.encoding}, or name their encoding with --encoding"
        )
    found = chars.chars | (set(separator) if len(accepted) > 1 else set())
    length = sum(n for _, n in accepted) + len(separator) * (len(accepted) - 1)
    return _Survey(accepted, skipped, "".join(sorted(found)), length)


def _count_reasons(skipped) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    return counts


def describe_skipped(skipped: tuple[Skipped, ...] | list[Skipped]) -> str:
    """'3 file(s) skipped: 2 binary, 1 not utf-8; e.g. src/logo.png', for a one-line notice."""
    reasons = ", ".join(f"{n} {r}" for r, n in _count_reasons(skipped).items())
    return f"{len(skipped)} file(s) skipped: {reasons}; e.g. {skipped[0].path}"


_LEAD_MASK = np.array([0, 0, 0x1F, 0x0F, 0x07], dtype=np.uint32)  # payload bits of a lead byte, by length


class _Encoder:
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
        if self.max_code < 0x100:  # every character is one latin-1 byte
            return self.ascii(text.encode("latin-1"))
        if self.max_code < 0x10000:  # UTF-16 code units are the code points
            codes = np.frombuffer(text.encode("utf-16-le", errors="surrogatepass"), dtype="<u2")
        else:
            codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
        return self.lut[codes]


def _encode(sources: Sources, survey: _Survey, reader: _Reader, separator: str, vocab: Vocab, write) -> str:
    """Pass 2: every usable file (separators between) through ``write(ids)``; the text's SHA-256."""
    encoder = _Encoder(vocab)
    sep_ids = vocab.encode(separator) if len(survey.files) > 1 else None
    sep_utf8 = separator.encode("utf-8", errors="surrogatepass")
    sha = hashlib.sha256()
    for i, (path, expected) in enumerate(survey.files):
        if i:
            write(sep_ids)
            sha.update(sep_utf8)
        name = str(path)
        length = 0
        try:
            if reader.utf8:  # checked in pass 1: encode the bytes directly, hash them as they are
                for raw in reader.utf8_pieces(path, name):
                    ids = encoder.utf8(raw)
                    write(ids)
                    length += len(ids)
                    sha.update(raw)
            else:
                for _, text in reader.pieces(path, name):
                    ids = encoder.text(text)
                    write(ids)
                    length += len(ids)
                    sha.update(text.encode("utf-8", errors="surrogatepass"))
        except (_Unusable, UnicodeEncodeError, IndexError):  # not what pass 1 read
            length = -1
        if length != expected:
            raise DataError(f"{name}: changed while the corpus was being encoded; run again")
    return sha.hexdigest()


def _build(sources: Sources, stats: list[list], reader: _Reader, separator: str, vocab: Vocab | None,
           cache: "_Cache | None") -> LoadedCorpus:
    """Both passes; into ``cache`` (then memory-mapped) or into memory."""
    survey = _survey(sources, reader, separator)
    if vocab is None:
        vocab = Vocab(survey.chars)
    else:
        unknown = sorted(set(survey.chars) - set(vocab.chars))
        if unknown:
            raise DataError(_not_in_vocab(sources.name, unknown))
    dtype = index_dtype(len(vocab))
    data_file = None
    if cache is None:
        ids = np.empty(survey.length, dtype=dtype)
        pos = 0

        def write(chunk: np.ndarray) -> None:
            nonlocal pos
            ids[pos : pos + len(chunk)] = chunk
            pos += len(chunk)

        digest = _encode(sources, survey, reader, separator, vocab, write)
        assert pos == survey.length, "pass 2 wrote another length than pass 1 counted"
    else:
        data_file, digest = cache.store(survey, dtype, lambda w: _encode(sources, survey, reader, separator, vocab, w))
    if _stat_files(sources.files) != stats:
        if data_file is not None:
            _remove(data_file)
        raise DataError(f"{sources.name}: files changed while the corpus was being encoded; run again")
    if cache is not None:
        cache.commit(stats, survey, vocab, digest, data_file)
        ids = np.load(data_file, mmap_mode="r")
    corpus = Corpus(
        name=sources.name, ids=ids, vocab=vocab, sha256=digest, path=sources.path,
        separator=None if sources.single else separator,
    )
    return LoadedCorpus(corpus, len(survey.files), tuple(survey.skipped), "off" if cache is None else "built", data_file)


def _not_in_vocab(name: str, unknown: list[str]) -> str:
    return (
        f"{name}: {len(unknown)} character(s) are not in the checkpoint's vocabulary: "
        f"{describe_chars(unknown)}; remove them from the text or train from scratch"
    )


# -- the cache -------------------------------------------------------------------------------------


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")).hexdigest()


class _Cache:
    """One cache entry: a manifest ``<key>.json`` naming an ids file ``<key>-<build>.npy``."""

    def __init__(self, folder: Path, sources: Sources, encoding: str, separator: str):
        self.folder, self.sources = folder, sources
        self.identity = {"inputs": sources.path, "encoding": encoding, "separator": separator}
        self.key = _digest({"version": CACHE_VERSION, **self.identity})[:20]
        self.manifest_path = folder / f"{self.key}.json"
        self._previous_data: str | None = None

    def _read_manifest(self) -> dict | None:
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
            return None
        return manifest

    def lookup(self, stats: list[list], vocab: Vocab | None) -> LoadedCorpus | None:
        """The cached corpus if every file is as recorded and the vocabulary fits, else None."""
        m = self._read_manifest()
        if m is None:
            return None
        self._previous_data = m.get("data") if isinstance(m.get("data"), str) else None
        try:
            if any(m[k] != v for k, v in self.identity.items()):
                return None
            if m["files"] != stats or _digest(m["files"]) != m["files_sha256"]:
                return None  # a file was added, removed or changed (size or mtime), or the manifest was edited
            if vocab is not None and vocab.chars != m["vocab"]:
                unknown = sorted(set(m["text_chars"]) - set(vocab.chars))
                if unknown:  # no need to read 500 MB again to say so
                    raise DataError(_not_in_vocab(self.sources.name, unknown))
                return None  # encoded with another vocabulary: re-encode with this one
            if vocab is None and m["vocab"] != m["text_chars"]:
                return None  # encoded with a checkpoint's larger vocabulary; a new run wants the text's own
            data_file = self.folder / Path(m["data"]).name
            if data_file.stat().st_size != m["data_bytes"]:
                return None
            ids = np.load(data_file, mmap_mode="r")
            the_vocab = Vocab(m["vocab"])
            if ids.shape != (m["chars"],) or ids.dtype != index_dtype(len(the_vocab)):
                return None
            corpus = Corpus(
                name=self.sources.name, ids=ids, vocab=the_vocab, sha256=m["sha256"], path=self.sources.path,
                separator=None if self.sources.single else self.identity["separator"],
            )
            skipped = tuple(Skipped(p, r) for p, r in m["skipped"])
            return LoadedCorpus(corpus, int(m["accepted"]), skipped, "hit", data_file)
        except (KeyError, TypeError, ValueError, OSError, AssertionError):
            return None  # a damaged or foreign manifest or ids file: build a fresh one

    def store(self, survey: _Survey, dtype: np.dtype, encode) -> tuple[Path, str]:
        """Write the ids through ``encode(write)`` into a new, durable ``<key>-<build>.npy``."""
        data_file = self.folder / f"{self.key}-{uuid.uuid4().hex[:12]}.npy"
        tmp_name = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tag = self.folder / CACHEDIR_TAG
            if not tag.exists():
                tag.write_text(_CACHEDIR_TAG_TEXT)
            self._remove_stale_temps()
            fd, tmp_name = tempfile.mkstemp(prefix=f".{self.key}-", suffix=".npy.tmp", dir=self.folder)
            with os.fdopen(fd, "wb", buffering=1 << 20) as fh:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (survey.length,)}
                np.lib.format.write_array_header_1_0(fh, header)
                digest = encode(lambda ids: fh.write(memoryview(np.ascontiguousarray(ids, dtype=dtype))))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, data_file)
            tmp_name = None
        except OSError as exc:
            raise OutputError(
                f"cannot write the corpus cache in {self.folder} ({exc.strerror or exc}); free some disk "
                "space, choose another --cache-dir, or pass --no-cache"
            ) from None
        finally:
            if tmp_name is not None:
                _remove(Path(tmp_name))
        return data_file, digest

    def commit(self, stats: list[list], survey: _Survey, vocab: Vocab, digest: str, data_file: Path) -> None:
        """Point the manifest at ``data_file`` (atomically), then drop the ids file it named before."""
        manifest = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            **self.identity,
            "name": self.sources.name,
            "files": stats,  # every file TEXT named, skipped ones too, as [path, size, mtime_ns]
            "files_sha256": _digest(stats),
            "accepted": len(survey.files),
            "skipped": [[s.path, s.reason] for s in survey.skipped],
            "chars": survey.length,
            "text_chars": survey.chars,
            "vocab": vocab.chars,
            "dtype": np.dtype(index_dtype(len(vocab))).name,
            "sha256": digest,
            "data": data_file.name,
            "data_bytes": data_file.stat().st_size,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        try:
            replace_atomic(self.manifest_path, json.dumps(manifest, ensure_ascii=False).encode("utf-8"))
        except OSError as exc:
            _remove(data_file)
            raise OutputError(
                f"cannot write the corpus cache in {self.folder} ({exc.strerror or exc}); free some disk "
                "space, choose another --cache-dir, or pass --no-cache"
            ) from None
        if self._previous_data and self._previous_data != data_file.name:
            _remove(self.folder / Path(self._previous_data).name)

    def _remove_stale_temps(self) -> None:
        """Temp files of this entry that a killed build left behind (a live build's are recent)."""
        now = time.time()
        for stale in self.folder.glob(f".{self.key}-*.npy.tmp"):
            try:
                if now - stale.stat().st_mtime > _STALE_TEMP_SECONDS:
                    stale.unlink()
            except OSError:
                pass


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass

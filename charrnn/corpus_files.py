"""Corpora from disk at any size: one file, a folder or a glob, streamed and encoded once into a
memory-mapped cache.

    TEXT --resolve--> sorted files --pass 1--> characters, length --pass 2--> ids (.npy) + SHA-256
                                    (skip binary / undecodable)            (memory-mapped for training)

Both passes read ``chunk_size`` bytes at a time through an incremental decoder, so a character whose
bytes straddle two chunks is decoded once and right, and peak memory is a few chunks whatever the
size of the corpus. The encoded ids are written to the file as they are made, never held whole.

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

CHUNK_SIZE = 8 << 20  # bytes read (and decoded, and encoded) at a time
CACHE_FORMAT = "charrnn-corpus-cache"
CACHE_VERSION = 1
_GLOB_MAGIC = "*?["
_STALE_TEMP_SECONDS = 3600  # temp files of a build older than this were left by a crash


@dataclass(frozen=True)
class Sources:
    """What TEXT names: the files to join, in order."""

    name: str  # for messages and the checkpoint: the file, folder or pattern as given
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
    is anything under ``exclude`` (the run's own output and cache folders, which may sit inside).
    """
    text = str(inputs)
    path = Path(text).expanduser()
    excluded = tuple(Path(p).resolve() for p in exclude)
    if path.is_file():
        return Sources(text, str(path.resolve()), (path,), single=True)
    if path.is_dir():
        root = path.resolve()
        found = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".") and not _under(Path(folder, d), excluded)]
            found += [Path(folder, n) for n in names if not n.startswith(".") and Path(folder, n).is_file()]
        files = _sorted_files(found, excluded)
        if not files:
            raise DataError(f"{text}: the folder holds no files; pass a folder with text files in it")
        return Sources(text.rstrip("/\\") + "/", str(root), files, single=False)
    if is_glob(text):
        pattern = os.path.abspath(os.path.expanduser(text))
        files = _sorted_files([Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)], excluded)
        if not files:
            raise DataError(
                f"{text}: the pattern matches no files; check it, and quote it so that the shell "
                "passes it to charrnn unexpanded"
            )
        return Sources(text, pattern, files, single=False)
    raise DataError(f"{text}: no such file or folder; pass a text file, a folder or a quoted glob such as 'src/**/*.c'")


def _under(path: Path, excluded: tuple[Path, ...]) -> bool:
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
        return _build(sources, stats, reader, separator, vocab, None, None)
    cache = _Cache(Path(cache_dir), sources, encoding, separator)
    found = cache.lookup(stats, vocab)
    if found is not None:
        return found
    return _build(sources, stats, reader, separator, vocab, cache, None)


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
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise _Unusable("unreadable", f"{name}: cannot be read ({exc.strerror}); check its permissions") from None
        with fh:
            try:
                yield from self._decode(self._chunks(fh, name), name)
            except OSError as exc:
                raise _Unusable("unreadable", f"{name}: cannot be read ({exc.strerror}); check its permissions") from None

    def _chunks(self, fh, name: str) -> Iterator[bytes]:
        head = fh.read(BINARY_SNIFF_BYTES)
        if not head:
            raise _Unusable("empty", empty_message(name))
        if self.utf8:
            if b"\x00" in head:
                raise _Unusable("binary", binary_message(name, head))
            if head.startswith(codecs.BOM_UTF8):
                head = head[len(codecs.BOM_UTF8) :]
                self._skipped_bytes = len(codecs.BOM_UTF8)
        for start in range(0, len(head), self.chunk_size):
            yield head[start : start + self.chunk_size]
        while chunk := fh.read(self.chunk_size):
            yield chunk

    def _decode(self, chunks: Iterator[bytes], name: str) -> Iterator[tuple[bytes | None, str | None]]:
        decoder = codecs.getincrementaldecoder(self.codec)()
        self._skipped_bytes = 0  # a BOM dropped before decoding; counts in error offsets
        fed = 0  # bytes given to the decoder so far
        at_start = True
        for raw in chunks:
            pending = decoder.getstate()[0] if self.utf8 else b""
            if self.utf8 and not pending and raw.isascii():
                fed += len(raw)
                at_start = False
                yield raw, None
                continue
            try:
                text = decoder.decode(raw)
            except UnicodeDecodeError as exc:
                raise self._undecodable(name, exc, fed - len(pending)) from None
            fed += len(raw)
            if at_start and text:
                at_start = False
                if not self.utf8 and text.startswith("\ufeff"):
                    text = text[1:]
            yield (raw if self.utf8 else None), text
        try:
            tail = decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            pending = decoder.getstate()[0] if self.utf8 else b""
            raise self._undecodable(name, exc, fed - len(exc.object)) from None
        if tail:
            yield (b"" if self.utf8 else None), tail

    def _undecodable(self, name: str, exc: UnicodeDecodeError, base: int) -> _Unusable:
        offset = self._skipped_bytes + base + exc.start
        return _Unusable(f"not {self.encoding}", undecodable_message(name, self.encoding, exc.object[exc.start], offset))


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
    """The distinct characters of a stream of pieces; ASCII pieces cost one C-level pass each."""

    def __init__(self, known: set[str]):
        self.chars = set(known)
        self._ascii_known = bytes(sorted(ord(c) for c in self.chars if ord(c) < 0x80))

    def add(self, raw: bytes | None, text: str | None, decoder) -> None:
        if raw is not None:
            # UTF-8: deleting the ASCII bytes already known leaves new ASCII characters and the
            # multi-byte sequences, whole (they never contain ASCII bytes), usually a tiny remainder.
            rest = raw.translate(None, self._ascii_known)
            if not rest:
                return
            new = set(decoder.decode(rest)) if text is not None else {chr(b) for b in set(rest)}
        else:
            codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
            new = {chr(c) for c in np.flatnonzero(np.bincount(codes))} if len(codes) else set()
        if not new <= self.chars:
            self.chars |= new
            self._ascii_known = bytes(sorted(ord(c) for c in self.chars if ord(c) < 0x80))


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
    chars: set[str] = set()
    for path in sources.files:
        name = str(path) if not sources.single else sources.name
        seen = _CharSet(chars)
        decoder = codecs.getincrementaldecoder("utf-8")()  # for the non-ASCII remainders
        length = 0
        try:
            for raw, text in reader.pieces(path, name):
                length += len(raw) if text is None else len(text)
                seen.add(raw, text, decoder)
            if length == 0:
                raise _Unusable("empty", no_text_message(name))
        except _Unusable as problem:
            if sources.single:
                raise DataError(problem.message) from None
            skipped.append(Skipped(str(path), problem.reason))
            continue
        accepted.append((path, length))
        chars = seen.chars
    if not accepted:
        reasons = ", ".join(f"{n} {r}" for r, n in _count_reasons(skipped).items())
        raise DataError(f"{sources.name}: no usable text files ({reasons}); pass files of text in {reader.encoding}, or set --encoding")
    if len(accepted) > 1:
        chars |= set(separator)
    length = sum(n for _, n in accepted) + len(separator) * (len(accepted) - 1)
    return _Survey(accepted, skipped, "".join(sorted(chars)), length)


def _count_reasons(skipped) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    return counts


def describe_skipped(skipped: tuple[Skipped, ...] | list[Skipped]) -> str:
    """'3 files skipped (2 binary, 1 not utf-8), e.g. logo.png' for a one-line notice."""
    reasons = ", ".join(f"{n} {r}" for r, n in _count_reasons(skipped).items())
    return f"{len(skipped)} file(s) skipped ({reasons}), e.g. {skipped[0].path}"


def _encode_pieces(sources: Sources, survey: _Survey, reader: _Reader, separator: str, vocab: Vocab, write) -> str:
    """Pass 2: encode every accepted file (and the separators) through ``write(ids)``; the text's SHA-256."""
    dtype = index_dtype(len(vocab))
    codes = [ord(c) for c in vocab.chars]
    max_code = codes[-1]
    lut = np.zeros(max_code + 1, dtype=dtype)
    lut[codes] = np.arange(len(codes), dtype=dtype)
    ascii_lut = lut[:0x80] if max_code >= 0x80 else np.pad(lut, (0, 0x80 - len(lut)))
    sep_ids = vocab.encode(separator) if len(survey.files) > 1 else None
    sha = hashlib.sha256()
    for i, (path, expected) in enumerate(survey.files):
        if i and sep_ids is not None:
            write(sep_ids)
            sha.update(separator.encode("utf-8", errors="surrogatepass"))
        name = str(path) if not sources.single else sources.name
        length = 0
        try:
            for raw, text in reader.pieces(path, name):
                if text is None:  # ASCII: one byte, one character
                    ids = ascii_lut[np.frombuffer(raw, dtype=np.uint8)]
                else:
                    ids = lut[_code_points(text, max_code)]
                write(ids)
                length += len(ids)
                sha.update(raw if raw is not None else text.encode("utf-8", errors="surrogatepass"))
        except _Unusable as problem:
            raise DataError(f"{problem.message} (it changed while being read; run again)") from None
        if length != expected:
            raise DataError(f"{name}: changed while being read ({expected:,} then {length:,} characters); run again")
    return sha.hexdigest()


def _build(sources, stats, reader, separator, vocab, cache, _unused) -> LoadedCorpus:
    survey = _survey(sources, reader, separator)
    if vocab is None:
        vocab = Vocab(survey.chars)
    else:
        unknown = sorted(set(survey.chars) - set(vocab.chars))
        if unknown:
            raise DataError(
                f"{sources.name}: {len(unknown)} character(s) are not in the checkpoint's vocabulary: "
                f"{describe_chars(unknown)}; remove them from the text or train from scratch"
            )
    dtype = index_dtype(len(vocab))
    if cache is None:
        ids = np.empty(survey.length, dtype=dtype)
        pos = 0

        def write(chunk: np.ndarray) -> None:
            nonlocal pos
            ids[pos : pos + len(chunk)] = chunk
            pos += len(chunk)

        digest = _encode_pieces(sources, survey, reader, separator, vocab, write)
        assert pos == survey.length, "pass 2 wrote a different length than pass 1 counted"
        data_file = None
    else:
        data_file, digest = cache.store(survey, vocab, lambda write: _encode_pieces(sources, survey, reader, separator, vocab, write))
        if _stat_files(sources.files) != stats:
            raise DataError(f"{sources.name}: files changed while the corpus was being encoded; run again")
        cache.commit(stats, survey, vocab, digest, data_file)
        ids = np.load(data_file, mmap_mode="r")
    corpus = Corpus(
        name=sources.name, ids=ids, vocab=vocab, sha256=digest, path=sources.path,
        separator=None if sources.single else separator,
    )
    return LoadedCorpus(corpus, len(survey.files), tuple(survey.skipped), "off" if cache is None else "built", data_file)


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
                    raise DataError(
                        f"{self.sources.name}: {len(unknown)} character(s) are not in the checkpoint's "
                        f"vocabulary: {describe_chars(unknown)}; remove them from the text or train from scratch"
                    )
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

    def store(self, survey: _Survey, vocab: Vocab, encode) -> tuple[Path, str]:
        """Write the ids through ``encode(write)`` into a new, durable ``<key>-<build>.npy``."""
        dtype = index_dtype(len(vocab))
        data_file = self.folder / f"{self.key}-{uuid.uuid4().hex[:12]}.npy"
        tmp_name = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
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
        from charrnn.checkpoint import write_atomic  # the same temp + fsync + rename as checkpoints

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
            write_atomic(self.manifest_path, json.dumps(manifest, ensure_ascii=False).encode("utf-8"))
        except OutputError:
            _remove(data_file)
            raise OutputError(
                f"cannot write the corpus cache in {self.folder}; free some disk space, choose another "
                "--cache-dir, or pass --no-cache"
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

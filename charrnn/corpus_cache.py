"""The corpus cache: one entry per TEXT, encoding and separator, a manifest ``<key>.json`` naming a
memory-mapped ids file ``<key>-<build>.npy``, trusted only while the files it was built from are unchanged.

docs/corpus.md gives the contract: what an entry records, what invalidates it, why a crash never
leaves one that is trusted. A damaged or foreign manifest is never an error: the entry is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.data import Vocab, index_dtype
from charrnn.errors import OutputError, option
from charrnn.fsio import replace_atomic
from charrnn.lock import FileLock

CACHE_FORMAT = "charrnn-corpus-cache"
# 2: the counts are "n_chars" and "n_files" (1 had "chars" and "accepted"); 3: files record their
# absolute path, ctime and inode besides size and mtime
CACHE_VERSION = 3
# A cache folder says what it is (https://bford.info/cachedir/), so that backups, and charrnn itself
# reading a folder that holds an earlier run's output, leave it out.
CACHEDIR_TAG = "CACHEDIR.TAG"
_CACHEDIR_TAG_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by charrnn: encoded corpora, rebuilt when needed.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)

Stats = list  # [[path, size, mtime_ns, ctime_ns, inode], ...] of every file TEXT names, skipped ones too


def stat_files(files: tuple[Path, ...]) -> Stats:
    """[absolute path, size, mtime_ns, ctime_ns, inode] per file: what decides whether an entry is still
    good. The inode change time (ctime) is what an edit cannot hide: writing a file, or setting its
    modification time back (``touch -r``), sets it to now, and no tool can set it. A content hash would
    see the same edits, but costs a read of the whole corpus at every start; stat costs microseconds
    per file (``benchmarks/bench_cache_check.py`` measures both)."""
    stats = []
    for path in files:
        try:
            st = path.stat()
            stats.append([os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
        except OSError:
            stats.append([os.path.abspath(path), -1, -1, -1, -1])  # vanished or unreadable: the read reports it
    return stats


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Entry:
    """A cache hit: the ids (a read-only memmap) and what the manifest says about them."""

    ids: np.ndarray
    vocab: Vocab
    sha256: str
    n_files: int  # files joined
    skipped: tuple[tuple[str, str], ...]  # (path, reason) of each file left out
    data_file: Path


class Cache:
    """One entry in ``folder``, for the text ``name`` identified by ``identity`` (the absolute TEXT,
    encoding and separator)."""

    def __init__(self, folder: Path, name: str, identity: dict[str, str | None]):
        self.folder, self.name, self.identity = folder, name, identity
        self.key = _digest({"version": CACHE_VERSION, **identity})[:20]
        self.manifest_path = folder / f"{self.key}.json"
        self._previous_data: str | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this entry (``<key>.lock``) while it is looked up, built and committed, so that two runs
        never build it at once (the second waits, then finds it); what a killed build left behind is
        removed first. A folder where no lock can be made (read-only) is used without one."""
        lock = FileLock(self.folder / f"{self.key}.lock")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock.acquire(wait=True)
        except OSError:
            pass
        if not lock.held:
            yield
            return
        try:
            self._remove_orphans()
            yield
        finally:
            lock.release()

    def lookup(self, stats: Stats, vocab: Vocab | None) -> Entry | None:
        """The entry if every file is as recorded and the vocabulary fits, else None (rebuild).

        With ``vocab`` given, DataError (``Vocab.check``) if the text has characters outside it: the
        manifest knows, so there is no need to read the files again to say so."""
        m = self._read_manifest()
        if m is None:
            return None
        self._previous_data = m.get("data") if isinstance(m.get("data"), str) else None
        try:
            if any(m[k] != v for k, v in self.identity.items()):
                return None
            if m["files"] != stats or _digest(m["files"]) != m["files_sha256"]:
                return None  # a file was added, removed or changed (size or mtime), or the manifest was edited
            text_vocab, the_vocab = Vocab(m["text_chars"]), Vocab(m["vocab"])  # ValueError if damaged
            if vocab is not None and vocab != the_vocab:
                vocab.check(text_vocab.chars, self.name)
                return None  # encoded with another vocabulary: re-encode with this one
            if vocab is None and the_vocab != text_vocab:
                return None  # encoded with a checkpoint's larger vocabulary; a new run wants the text's own
            data_file = self.folder / Path(m["data"]).name
            if data_file.stat().st_size != m["data_bytes"] or not isinstance(m["sha256"], str):
                return None
            ids = np.load(data_file, mmap_mode="r")
            if ids.shape != (m["n_chars"],) or ids.dtype != index_dtype(len(the_vocab)):
                return None
            skipped = tuple((str(path), str(reason)) for path, reason in m["skipped"])
            return Entry(ids, the_vocab, m["sha256"], int(m["n_files"]), skipped, data_file)
        except (KeyError, TypeError, ValueError, OSError):
            return None  # a damaged or foreign manifest or ids file: build a fresh one

    def _read_manifest(self) -> dict | None:
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict):
            return None
        if (manifest.get("format"), manifest.get("version")) != (CACHE_FORMAT, CACHE_VERSION):
            return None
        return manifest

    def store(self, n_chars: int, dtype: np.dtype, encode: Callable) -> tuple[Path, str]:
        """Write ``n_chars`` ids of ``dtype`` through ``encode(write) -> sha256`` into a new, durable
        ``<key>-<build>.npy``; its path and the SHA-256 ``encode`` returned. Not yet in the manifest."""
        data_file = self.folder / f"{self.key}-{uuid.uuid4().hex[:12]}.npy"
        tmp_name = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tag = self.folder / CACHEDIR_TAG
            if not tag.exists():
                tag.write_text(_CACHEDIR_TAG_TEXT)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{self.key}-", suffix=".npy.tmp", dir=self.folder)
            with os.fdopen(fd, "wb", buffering=1 << 20) as fh:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n_chars,)}
                np.lib.format.write_array_header_1_0(fh, header)
                digest = encode(lambda ids: fh.write(np.ascontiguousarray(ids, dtype=dtype).data))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, data_file)
            tmp_name = None
        except OSError as exc:
            raise self._write_error(exc) from None
        finally:
            if tmp_name is not None:
                discard(Path(tmp_name))
        return data_file, digest

    def commit(
        self,
        stats: Stats,
        *,
        n_files: int,
        skipped: list[tuple[str, str]],
        n_chars: int,
        text_chars: str,
        vocab: Vocab,
        sha256: str,
        data_file: Path,
    ) -> None:
        """Point the manifest at ``data_file`` (atomically), then drop the ids file it named before."""
        manifest = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            **self.identity,
            "name": self.name,
            "files": stats,
            "files_sha256": _digest(stats),
            "n_files": n_files,
            "skipped": [list(s) for s in skipped],
            "n_chars": n_chars,
            "text_chars": text_chars,
            "vocab": vocab.chars,
            "dtype": np.dtype(index_dtype(len(vocab))).name,
            "sha256": sha256,
            "data": data_file.name,
            "data_bytes": data_file.stat().st_size,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        try:
            replace_atomic(self.manifest_path, json.dumps(manifest, ensure_ascii=False).encode("utf-8"))
        except OSError as exc:
            discard(data_file)
            raise self._write_error(exc) from None
        if self._previous_data and self._previous_data != data_file.name:
            discard(self.folder / Path(self._previous_data).name)

    def _write_error(self, exc: OSError) -> OutputError:
        return OutputError(
            f"cannot write the corpus cache in {self.folder} ({exc.strerror or exc}); free some disk space, "
            f"choose another {option('cache_dir')}, or pass {option('no_cache')}"
        )

    def _remove_orphans(self) -> None:
        """Files of this entry that no manifest names: ids files of a build that lost a race or was
        killed before its commit, and temp files of a killed build. Only while holding the entry."""
        m = self._read_manifest()
        named = Path(m["data"]).name if m is not None and isinstance(m.get("data"), str) else None
        for path in [*self.folder.glob(f"{self.key}-*.npy"), *self.folder.glob(f".{self.key}-*.npy.tmp")]:
            if path.name != named:
                discard(path)


def discard(path: Path) -> None:
    """Remove ``path`` if it can be; a leftover is harmless (no manifest names it)."""
    try:
        path.unlink()
    except OSError:
        pass

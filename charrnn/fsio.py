"""File helpers: durable atomic replacement (checkpoints, the corpus cache) and an early writability check."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from charrnn.errors import OutputError, option


def replace_atomic(path: Path, payload) -> None:
    """Write ``payload`` to ``path`` atomically and durably: a temp file beside it, flush and fsync,
    ``os.replace`` over ``path``, fsync the folder. On failure the OSError propagates for the caller
    to word, ``path`` is untouched and the temp file is removed."""
    folder = path.parent
    tmp_name = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(folder)
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform (e.g. Windows); the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(out_dir: Path) -> None:
    """Fail now, not after an hour of training, if checkpoints cannot be written to ``out_dir``."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".charrnn-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write to {option('out_dir')} {out_dir} ({exc.strerror or exc}); choose a writable folder"
        ) from None

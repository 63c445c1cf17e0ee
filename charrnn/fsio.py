"""File helpers: durable atomic replacement (checkpoints, the corpus cache) and an early writability check."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from charrnn.errors import OutputError, option


def replace_atomic(path: Path, payload) -> None:
    """Write ``payload`` to ``path`` atomically and durably: a temp file beside it, flush and fsync,
    ``os.replace`` over ``path``, fsync the folder. On failure the OSError propagates for the caller
    to word, ``path`` is untouched and the temp file is removed. The file gets ``path``'s mode if it
    exists, else the mode ``open`` would give it (the temp file itself starts owner-only)."""
    folder = path.parent
    tmp_name = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)  # temp_name_pattern
        with os.fdopen(fd, "wb") as fh:
            _chmod(fh.fileno(), _mode_for(path))
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


def _chmod(fd: int, mode: int) -> None:
    """Best effort: some file systems (FAT, some network mounts) refuse modes, and a save must not fail
    for it; Windows has no ``fchmod``."""
    if hasattr(os, "fchmod"):
        try:
            os.fchmod(fd, mode)
        except OSError:
            pass


def _mode_for(path: Path) -> int:
    """``path``'s permission bits if it exists, else those a new file gets under the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it (setting it is process-wide, and threads may be creating files)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


PROBE_PREFIX = ".charrnn-write-test-"


def temp_name_pattern(name: str) -> str:
    """The glob that matches the temporary files ``replace_atomic`` writes on the way to ``name``."""
    return f".{name}.*.tmp"


def check_writable(out_dir: Path) -> None:
    """Fail now, not after an hour of training, if checkpoints cannot be written to ``out_dir``."""
    probe = out_dir / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_bytes(b"ok")
        finally:
            if probe.exists():  # also after a failed write (a full disk creates the file, then fails)
                probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write to {option('out_dir')} {out_dir} ({exc.strerror or exc}); choose a writable folder"
        ) from None


def remove_leftovers(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Remove what a killed or failed writer left in ``folder``: the temporary files of ``replace_atomic``
    on the way to each of ``names``, and write probes. Only safe while no one else writes there (the
    caller holds the folder's lock). The paths removed."""
    removed = []
    patterns = [temp_name_pattern(name) for name in names] + [PROBE_PREFIX + "*"]
    for pattern in patterns:
        for path in folder.glob(pattern):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass  # harmless: the next start tries again
    return removed

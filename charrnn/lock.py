"""Exclusive locks on files, held by the OS: one training run per out-dir, one build per cache entry.

A lock is ``flock`` on a small file that stays in place (deleting a lock file races with the next
locker). The OS releases it when the process ends, however it ends, so a killed run never leaves a
folder locked. The file holds the PID of the process that holds it, so whoever finds it taken can say
who has it. Where ``fcntl`` is missing (Windows), or the file system has no locks (some network
mounts), locks are granted without guarding anything.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


# What flock says on a file system that has no locks.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


class Locked(Exception):
    """The lock is held by another process (``pid``; None if it could not be read) or by another
    ``FileLock`` of this process."""

    def __init__(self, path: Path, pid: int | None):
        super().__init__(f"{path} is locked by {'process ' + str(pid) if pid else 'another process'}")
        self.path, self.pid = path, pid


class FileLock:
    """An exclusive lock on ``path`` (created if missing). OSError if the file cannot be created or opened."""

    def __init__(self, path: Path):
        self.path = path
        self._file: IO[bytes] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self, wait: bool = False) -> FileLock:
        """Take the lock: at once (``Locked`` if another holds it) or, with ``wait``, when it is free."""
        if self._file is not None:
            return self
        fh = open(self.path, "a+b")  # held open for as long as the lock is
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    raise Locked(self.path, self._holder()) from None
                except OSError as exc:
                    if exc.errno not in _NO_LOCKS:
                        raise
                    # A file system without locks (some network mounts): granted, guarding nothing.
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n".encode())
            fh.flush()
        except BaseException:
            fh.close()
            raise
        self._file = fh
        return self

    def _holder(self) -> int | None:
        """The PID the holder wrote; it writes it just after taking the lock, so allow it a moment."""
        deadline = time.monotonic() + 1.0
        while True:
            try:
                text = self.path.read_text(encoding="ascii", errors="replace").strip()
            except OSError:
                return None
            if text.isdigit():
                return int(text)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def release(self) -> None:
        """Give the lock back (closing the file releases it); the file stays."""
        fh, self._file = self._file, None
        if fh is not None:
            try:
                fh.truncate(0)  # no stale PID for the next one to find
            except OSError:
                pass
            fh.close()

    def __enter__(self) -> FileLock:
        return self.acquire(wait=True)

    def __exit__(self, *exc) -> None:
        self.release()

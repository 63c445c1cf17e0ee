"""What the command line does when stdout or stderr cannot be written.

- stdout carries the product: a write that fails (a full disk, an I/O error, a closed descriptor) is
  exit 5 with one line on stderr; a reader that went away (``charrnn sample | head``) is a quiet exit 0.
- stderr carries the rest (progress, notices, errors): a write that fails there falls silent, and the
  command goes on, so a training run whose terminal closed still writes its checkpoints.

Every command writes stdout through ``Product`` (installed by ``CharRNNGroup.invoke``) and stderr
through ``Diagnostics`` (installed by ``main`` for the process, and by ``stderr_console`` and the
progress bar for what they print).
"""

from __future__ import annotations

import errno
import os
from typing import Any


class ReaderGone(Exception):
    """The reader of stdout went away (EPIPE): the command stops, quietly, with exit code 0."""


class StdoutFailed(Exception):
    """stdout could not be written: ``reason`` says why (the OS's words), ``fix`` what to do."""

    def __init__(self, reason: str, fix: str = "free some space, or redirect the output to another file"):
        super().__init__(reason)
        self.reason, self.fix = reason, fix


class Closed:
    """Stands in for a stream whose file descriptor was closed before charrnn started: text written
    to it fails as a write to a closed descriptor does (EBADF); nothing written is nothing lost."""

    encoding, errors = "utf-8", "strict"

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError("write() argument must be str")
        if text:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return 0

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _Proxy:
    """Forwards everything to ``target``; subclasses decide what a failed write or flush means."""

    def __init__(self, target: Any):
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def write(self, text):
        try:
            return self._target.write(text)
        except OSError as exc:
            return self._failed(exc)

    def flush(self) -> None:
        try:
            self._target.flush()
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: OSError) -> Any:
        raise NotImplementedError


class Product(_Proxy):
    """stdout: an OSError on write or flush becomes ReaderGone (EPIPE) or StdoutFailed."""

    def _failed(self, exc: OSError) -> Any:
        if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
            raise ReaderGone from None
        if exc.errno == errno.EBADF:
            raise StdoutFailed("it is closed", "run the command with stdout open, or redirect it to a file") from None
        raise StdoutFailed(exc.strerror or str(exc)) from None


class Diagnostics(_Proxy):
    """stderr: the first failed write silences it for good (a torn line is worse than none)."""

    def __init__(self, target: Any):
        super().__init__(target)
        self.failed = False

    def write(self, text):
        if self.failed:
            return len(text)
        return super().write(text)

    def flush(self) -> None:
        if not self.failed:
            super().flush()

    def _failed(self, exc: OSError) -> Any:
        self.failed = True
        return 0


def product(stream: Any) -> Product:
    """``stream`` (sys.stdout; None when the descriptor was closed) behind ``Product``."""
    if isinstance(stream, Product):
        return stream
    return Product(Closed() if stream is None else stream)


def diagnostics(stream: Any) -> Diagnostics:
    """``stream`` (sys.stderr; None when the descriptor was closed) behind ``Diagnostics``."""
    if isinstance(stream, Diagnostics):
        return stream
    return Diagnostics(Closed() if stream is None else stream)


def guard_descriptors() -> None:
    """Open /dev/null on any of file descriptors 0, 1 and 2 that was closed when charrnn started.

    Otherwise the next file opened (a checkpoint, a lock file) would get that number, and whatever a
    library writes to "stdout" would land in it. The Python stream of a closed descriptor stays
    None, so a write to it still fails as it should (``Closed``).
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                null = os.open(os.devnull, os.O_RDWR)
            except OSError:
                return
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def silence(stream: Any) -> None:
    """Point the file descriptor under ``stream`` (a failed or abandoned stdout) at /dev/null, so the
    interpreter's last flush of what it still buffers neither fails nor prints an "Exception ignored"
    traceback. A stream without a descriptor (a test's buffer) is left alone."""
    target = stream._target if isinstance(stream, _Proxy) else stream
    try:
        fd = target.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)

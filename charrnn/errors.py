"""The exceptions charrnn raises for problems a user can fix, each with the exit code the CLI uses.

Every message is one line that names the problem and says what to do about it. A message names an
option the way the caller spelled it: ``option("top_k")`` is ``top_k`` for a Python caller and
``--top-k`` inside the command line, which says so with ``cli_names()``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

_CLI_NAMES: contextvars.ContextVar[bool] = contextvars.ContextVar("charrnn_cli_names", default=False)


def option(name: str, value: Any = ...) -> str:
    """How the caller spells the option ``name`` (a Python keyword such as ``"top_k"``), with ``value``
    if given: ``top_k`` / ``top_k=5`` for Python callers, ``--top-k`` / ``--top-k 5`` for the CLI."""
    if _CLI_NAMES.get():
        flag = "--" + name.replace("_", "-")
        return flag if value is ... or value is True else f"{flag} {value}"
    return name if value is ... else f"{name}={value!r}"


@contextlib.contextmanager
def cli_names() -> Iterator[None]:
    """Within the block, ``option`` spells options as command-line flags."""
    token = _CLI_NAMES.set(True)
    try:
        yield
    finally:
        _CLI_NAMES.reset(token)


class CharRNNError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class DataError(CharRNNError):
    """The text to train or evaluate on cannot be used (missing, empty, binary, wrong encoding, too short)."""


class UnknownCharsError(DataError):
    """A text holds characters outside a model's vocabulary; ``chars`` lists them all, sorted."""

    def __init__(self, message: str, chars: list[str]):
        super().__init__(message)
        self.chars = chars


class ConfigError(CharRNNError):
    """Options that make no sense together or do not fit the data or checkpoint."""


class CheckpointError(CharRNNError):
    """A checkpoint is missing, corrupt, foreign, from a newer charrnn, or does not match its own config."""

    exit_code = 3


class DivergedError(CharRNNError):
    """Training produced a NaN or infinite loss or gradient."""

    exit_code = 4


class OutputError(CharRNNError):
    """A file could not be written (unwritable folder, disk full)."""

    exit_code = 5


class PeerFailed(CharRNNError):
    """Another process of a data-parallel job failed before training started; its own message says why."""

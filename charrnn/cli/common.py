"""What every command shares: error reporting, exit codes, option types, rich consoles."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from charrnn.errors import CharRNNError, cli_names

DEFAULT_OUT_DIR = "out"


class UserError(click.ClickException):
    """A one-line error with its own exit code; click prints it as ``Error: message``."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        # click declares exit_code a ClassVar (one code per exception class) but reads it from the
        # instance; a library error carries its own code, so it is set per instance.
        self.exit_code = exit_code  # type: ignore[misc]


class CharRNNGroup(click.Group):
    """Turns library errors into one-line messages with the documented exit codes, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            with cli_names():  # library messages name options as flags: --top-k, not top_k
                return super().invoke(ctx)
        except CharRNNError as exc:
            raise UserError(str(exc), exc.exit_code) from None
        except BrokenPipeError:
            # `charrnn sample | head`: the reader went away; that is not an error.
            _silence_stdout()
            ctx.exit(0)
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            ctx.exit(130)


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)  # a line stays one line (copy-pastable commands)


class Duration(click.ParamType):
    """'90', '90s', '10m', '1.5h', '2d', or combinations like '1h30m' -> seconds (float)."""

    name = "DURATION"

    def convert(self, value, param, ctx):
        from charrnn.options import parse_duration

        try:
            return parse_duration(value if isinstance(value, (int, float)) else str(value), name=None)
        except CharRNNError as exc:  # click names the flag itself
            self.fail(str(exc), param, ctx)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


THREADS_HELP = "CPU threads for torch and for numpy's BLAS (default: their choice, usually one per core)."


DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."

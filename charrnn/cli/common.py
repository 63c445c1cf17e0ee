"""What every command shares: error reporting, exit codes, option types, rich consoles."""

from __future__ import annotations

import json
import math
import numbers
import sys
from typing import IO, cast

import click
from rich.console import Console

from charrnn.cli.streams import ReaderGone, StdoutFailed, diagnostics, product, silence
from charrnn.errors import CharRNNError, cli_names
from charrnn.threads import MAX_THREADS
from charrnn.train_config import MAX_SEED

DEFAULT_OUT_DIR = "out"


class UserError(click.ClickException):
    """A one-line error with its own exit code; click prints it as ``Error: message``."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        # click declares exit_code a ClassVar (one code per exception class) but reads it from the
        # instance; a library error carries its own code, so it is set per instance.
        self.exit_code = exit_code  # type: ignore[misc]


class CharRNNGroup(click.Group):
    """Turns library errors into one-line messages with the documented exit codes, never a traceback,
    and gives every command the same stdout rules (``charrnn.cli.streams``)."""

    def invoke(self, ctx: click.Context):
        stdout = sys.stdout
        sys.stdout = product(stdout)
        try:
            with cli_names():  # library messages name options as flags: --top-k, not top_k
                result = super().invoke(ctx)
            sys.stdout.flush()  # what the command printed is on its way, or its failure is this command's
            return result
        except CharRNNError as exc:
            raise UserError(str(exc), exc.exit_code) from None
        except (ReaderGone, BrokenPipeError):
            # `charrnn sample | head`: the reader went away; that is not an error.
            silence(sys.stdout)
            ctx.exit(0)
        except StdoutFailed as exc:
            silence(sys.stdout)
            raise UserError(f"cannot write the output to stdout ({exc.reason}); {exc.fix}", 5) from None
        except KeyboardInterrupt:
            click.echo("\nInterrupted.", err=True)
            ctx.exit(130)
        finally:
            sys.stdout = stdout


def stderr_console() -> Console:
    """A console on stderr that falls silent if stderr cannot be written, instead of ending the command;
    soft-wrapped, so that a line stays one line (copy-pastable commands)."""
    return Console(file=cast(IO[str], diagnostics(sys.stderr)), highlight=False, soft_wrap=True)


class Duration(click.ParamType):
    """'90', '90s', '10m', '1.5h', '2d', or combinations like '1h30m' -> seconds (float)."""

    name = "DURATION"

    def convert(self, value, param, ctx):
        from charrnn.options import parse_duration

        try:
            return parse_duration(value if isinstance(value, (int, float)) else str(value), name=None)
        except CharRNNError as exc:  # click names the flag itself
            self.fail(str(exc), param, ctx)


class Finite(click.FloatRange):
    """A float in an optional range that is a number: NaN and infinities are usage errors (exit 2)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


SEED = click.IntRange(0, MAX_SEED)  # what torch's and numpy's generators take
COUNT_MAX = 2**63 - 1  # steps, epochs, characters: what a checkpoint's int64 fields and JSON readers hold
THREADS = click.IntRange(1, MAX_THREADS)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def strict(obj):
    """``obj`` with every float that JSON cannot hold (NaN, Infinity) as None: ``--json`` is strict JSON."""
    if isinstance(obj, numbers.Real) and not isinstance(obj, numbers.Integral):  # float, numpy floats
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, dict):
        return {key: strict(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(value) for value in obj]
    return obj


def echo_json(obj) -> None:
    """One JSON object on stdout: strict JSON (no NaN or Infinity: null), indented, Unicode as is."""
    click.echo(json.dumps(strict(obj), indent=2, ensure_ascii=False, allow_nan=False))


THREADS_HELP = "CPU threads for torch and for numpy's BLAS (default: their choice, usually one per core)."


DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."

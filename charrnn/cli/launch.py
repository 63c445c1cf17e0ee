"""``charrnn train --nproc N``: the same command in N processes through torchrun's own launcher, and
the ``--separator`` type whose escapes survive the trip through a command line."""

from __future__ import annotations

import logging
import os
import re

import click
from click.core import ParameterSource

from charrnn.errors import ConfigError

SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


class Separator(click.ParamType):
    """A string with the escapes \\n, \\t, \\r, \\0 and \\\\ understood (shells pass them literally)."""

    name = "TEXT"
    ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\"}

    def convert(self, value, param, ctx):
        def unescape(match):
            if match.group(1) not in self.ESCAPES:
                self.fail(f"unknown escape \\{match.group(1)} in {value!r}; use \\n, \\t, \\r, \\0 or \\\\", param, ctx)
            return self.ESCAPES[match.group(1)]

        return re.sub(r"\\(.)", unescape, value, flags=re.DOTALL)

    @classmethod
    def escape(cls, value: str) -> str:
        """The inverse of ``convert``: what to put on a command line to get ``value`` back."""
        for plain, escaped in (("\\", "\\\\"), ("\n", "\\n"), ("\t", "\\t"), ("\r", "\\r"), ("\0", "\\0")):
            value = value.replace(plain, escaped)
        return value


def _command_line(ctx: click.Context, leave_out: tuple[str, ...]) -> list[str]:
    """The options and arguments given to this command, as a command line (for --nproc's processes)."""
    args: list[str] = []
    for param in ctx.command.params:
        if param.name in leave_out or ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        flag = isinstance(param, click.Option) and param.is_flag
        if isinstance(param, click.Argument):
            args.insert(0, str(value))
        elif flag and param.secondary_opts:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        elif flag:
            if value:
                args.append(param.opts[0])
        else:
            args += [param.opts[0], Separator.escape(value) if isinstance(param.type, Separator) else str(value)]
    return args


def launch(ctx: click.Context, nproc: int, device) -> None:
    """--nproc N: run this same command in N processes through torch.distributed.run (torchrun's own
    launcher, on this machine), wait for them, and exit with the first failure's exit code."""
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if device.type == "cuda" and device.index is not None:
        raise ConfigError(
            f"--device {device} picks one GPU, but --nproc gives each process its own; pass --device cuda or auto"
        )
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(
            f"--nproc {nproc} wants a GPU per process, but there are {torch.cuda.device_count()}; use --nproc {torch.cuda.device_count()} or --device cpu"
        )
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"--nproc needs --device cuda or cpu, not {device.type}")
    cores = os.cpu_count() or 1
    if device.type == "cpu" and nproc > cores:
        raise ConfigError(
            f"--nproc {nproc} starts more processes than this machine has CPU cores ({cores}); use --nproc {cores} or fewer"
        )
    argv = ["--standalone", "--nproc-per-node", str(nproc), "-m", "charrnn", "train", *_command_line(ctx, ("nproc",))]
    # The launcher's own notices (rendezvous details, "sending SIGINT to workers") are not for users;
    # the workers' errors and rank 0's output still reach the terminal.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        code = failure.exitcode
        ctx.exit(code if code > 0 else 128 - code if code < 0 else 1)  # killed by signal N: 128 + N
    except SignalException as exc:
        ctx.exit(SIGNAL_EXIT.get(exc.sigval.name, 130))

"""The ``charrnn`` command line: the only layer that imports click, rich and tqdm.

stdout carries the product (sampled text, ``--json``); everything else goes to stderr.
"""

from __future__ import annotations

import signal
import sys

import click

from charrnn import __version__
from charrnn.cli.common import CharRNNGroup
from charrnn.cli.streams import diagnostics, guard_descriptors

EXIT_CODES_HELP = """
\b
Exit codes:
  0    success
  1    unusable input or options (missing/empty/binary text, bad prime, ...)
  2    command-line usage error (unknown flag, value out of range)
  3    checkpoint missing, corrupt, foreign or from a newer charrnn
  4    training diverged (NaN/inf loss or gradient)
  5    cannot write output (unwritable folder, disk full, stdout)
  130  interrupted by Ctrl-C (SIGINT); 143 stopped by SIGTERM
"""


@click.group(cls=CharRNNGroup, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="charrnn")
def cli() -> None:
    """Train character-level LSTM / GRU / RNN language models on any text, and sample from them.

    \b
    charrnn train                   train on the embedded Tiny Shakespeare corpus
    charrnn train linux.txt --cell gru --num-layers 3 --out-dir runs/linux
    charrnn sample runs/linux/best.pt --prime "static int" --temperature 0.7
    charrnn inspect runs/linux/best.pt
    """


def _register() -> None:
    from charrnn.cli import eval as eval_cli
    from charrnn.cli import inspect, sample, train

    cli.add_command(train.train)
    cli.add_command(sample.sample)
    cli.add_command(inspect.inspect_cmd)
    cli.add_command(inspect.inspect_cmd, name="inspect-checkpoint")
    cli.add_command(eval_cli.eval_cmd)
    from charrnn.cli import visualize

    cli.add_command(visualize.visualize)
    from charrnn.cli import serve

    cli.add_command(serve.serve)
    from charrnn.cli import export

    cli.add_command(export.export_cmd)
    from charrnn.cli.analyze import analyze

    cli.add_command(analyze)


_register()


def _utf8_streams() -> None:
    """Text is Unicode: never fail to print a character because the locale says ASCII."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8")


def main() -> None:
    """Console-script entry point."""
    guard_descriptors()
    _utf8_streams()
    sys.stderr = diagnostics(sys.stderr)  # an error line that cannot be shown is dropped, never a traceback
    code: str | int | None  # what sys.exit takes
    try:
        code = cli.main(prog_name="charrnn", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:  # a second Ctrl-C as the command returned, after its handler was gone
        code = 130
    # The command is done and all it saved is on disk; what is left is the interpreter's shutdown
    # (torch's takes about half a second). A signal there, often the user's second Ctrl-C after
    # training stopped on the first, would print an "Exception ignored" traceback from an atexit hook
    # or, once Python has restored the default handlers, kill the process with no exit code of ours.
    # Ignored signals stay ignored to the end, so the process exits with the command's code.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)

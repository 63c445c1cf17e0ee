"""``charrnn sample``: stream generated text to stdout."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import click

from charrnn.api import load, read_prime
from charrnn.cli.common import (
    DEFAULT_OUT_DIR,
    DEVICE_HELP,
    SEED,
    THREADS,
    THREADS_HELP,
    Finite,
    UserError,
    echo_json,
)
from charrnn.sample import DEFAULT_MAX_PRIME, stopped_at
from charrnn.threads import set_threads

DEFAULT_CHECKPOINT = Path(DEFAULT_OUT_DIR) / "best.pt"


class _Stream:
    """Write characters to stdout, flushing at line ends or at least every 0.1 s, so output streams."""

    def __init__(self, out):
        self.out = out
        self.last_flush = time.monotonic()

    def write(self, text: str) -> None:
        self.out.write(text)
        now = time.monotonic()
        if "\n" in text or now - self.last_flush > 0.1:
            self.out.flush()
            self.last_flush = now


def unescape(text: str) -> str:
    """A command-line string with its backslash escapes (\\n, \\t, \\\\, \\u00e9, ...) turned into characters."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _stop_strings(ctx, param, values):
    try:
        return tuple(unescape(v) for v in values)
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"cannot read the escapes in it ({exc.reason}); write a backslash as \\\\") from None


def _stdin_prime(max_prime: int) -> str:
    """The prime piped into standard input, read no further than one character past ``max_prime``."""
    stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")  # the prime exactly as piped
    try:
        text = stream.read(max_prime + 1)
    except UnicodeDecodeError as exc:
        raise UserError(f"--prime -: standard input is not UTF-8 text ({exc.reason}); pipe a text file") from None
    finally:
        stream.detach()  # leave sys.stdin's own buffer open
    if not text:
        raise UserError("--prime -: standard input is empty; pipe a prime into it, or drop --prime -")
    if len(text) > max_prime:
        raise UserError(
            f"--prime -: the prime has more than --max-prime ({max_prime:,}) characters; shorten it or raise --max-prime"
        )
    return text


@click.command(
    epilog="""\b
Examples:
  charrnn sample --prime "ROMEO:" --temperature 0.7 --seed 1
  charrnn sample --prime-file scene.txt --length 500
  cat scene.txt | charrnn sample --prime -
  charrnn sample --stop-at '\\n' --num-samples 5 --json      # five lines, each ends at its newline
  charrnn sample --top-p 0.9 --top-k 40 --temperature 0.9
  charrnn sample --beam 8 --prime "KING:" --length 60
"""
)
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path), default=DEFAULT_CHECKPOINT)
@click.option(
    "--length",
    "-n",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Characters to generate (after the prime).",
)
@click.option(
    "--temperature",
    "-t",
    type=Finite(),
    default=0.8,
    show_default=True,
    help="> 0; lower is more conservative, 1 samples the model's own distribution.",
)
@click.option(
    "--prime",
    "--primetext",
    "prime",
    default="",
    help="Text that seeds the hidden state, printed before the continuation; - reads it from standard input.",
)
@click.option(
    "--prime-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Read the prime from this UTF-8 file instead.",
)
@click.option(
    "--max-prime",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PRIME,
    show_default=True,
    help="Longest prime accepted, in characters; it runs through the network as one sequence.",
)
@click.option(
    "--stop-at",
    multiple=True,
    callback=_stop_strings,
    metavar="STRING",
    help="End a sample as soon as it ends with STRING (written out; escapes such as \\n understood; repeatable). "
    "Each of --num-samples stops on its own.",
)
@click.option("--argmax", is_flag=True, help="Always take the most likely character (greedy) instead of sampling.")
@click.option(
    "--top-k", type=click.IntRange(min=1), default=None, help="Sample only from the k most likely characters."
)
@click.option(
    "--top-p",
    type=Finite(min=0, max=1, min_open=True),
    default=None,
    help="Nucleus sampling: only from the fewest most likely characters whose probability reaches P "
    "(after --temperature and --top-k).",
)
@click.option(
    "--beam",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Beam search with N hypotheses for the continuation of exactly --length characters with the highest "
    "total log-probability (the sum, not length-normalised); deterministic, no --temperature; --beam 1 is --argmax.",
)
@click.option("--seed", type=SEED, default=None, help="Seed for reproducible samples.")
@click.option(
    "--num-samples",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Independent samples, generated together as a batch.",
)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--threads", type=THREADS, default=None, help=THREADS_HELP)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (prime, samples, options) instead of streaming."
)
def sample(
    checkpoint: Path,
    length,
    temperature,
    prime,
    prime_file,
    max_prime,
    stop_at,
    argmax,
    top_k,
    top_p,
    beam,
    seed,
    num_samples,
    device,
    threads,
    as_json,
):
    """Generate text from CHECKPOINT (default: out/best.pt) and stream it to stdout.

    Only the text goes to stdout, so `charrnn sample > out.txt` works. With --num-samples N > 1 the
    samples are printed one after another, each followed by a blank line and a line of dashes.
    The same options and --seed give the text `charrnn.load(CHECKPOINT).sample(...)` returns.
    """
    if prime == "-":
        if prime_file is not None:
            raise UserError("--prime - and --prime-file both give a prime; pass one of them")
        prime = _stdin_prime(max_prime)
    set_threads(threads)
    model = load(checkpoint, device=device)
    prime = read_prime(prime, prime_file, max_prime)  # once, here: the JSON shows it
    options = dict(
        prime=prime,
        max_prime=max_prime,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        argmax=argmax,
        beam=beam,
        stop_at=list(stop_at),
        seed=seed,
        num_samples=num_samples,
    )
    if as_json or num_samples > 1:
        texts = model.sample(length, **options)
        texts = [texts] if isinstance(texts, str) else texts
        if as_json:
            echo_json(
                {
                    "checkpoint": str(checkpoint),
                    "length": length,
                    "num_samples": num_samples,
                    "prime_file": None if prime_file is None else str(prime_file),
                    **options,
                    "samples": texts,
                    "stopped_at": [stopped_at(text, len(text) - len(prime), stop_at) for text in texts],
                }
            )
        else:
            for text in texts:
                sys.stdout.write(text + "\n\n" + "-" * 40 + "\n")
            sys.stdout.flush()
        return
    out = _Stream(sys.stdout)
    for piece in model.generate(length, **options):
        out.write(piece)
    out.write("\n")
    sys.stdout.flush()

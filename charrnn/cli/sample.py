"""``charrnn sample``: stream generated text to stdout."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from charrnn.api import load
from charrnn.cli.common import DEFAULT_OUT_DIR, DEVICE_HELP, SEED, THREADS, THREADS_HELP, Finite, echo_json
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


@click.command()
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
    help="Text that seeds the hidden state; printed before the continuation.",
)
@click.option("--argmax", is_flag=True, help="Always take the most likely character (greedy) instead of sampling.")
@click.option(
    "--top-k", type=click.IntRange(min=1), default=None, help="Sample only from the k most likely characters."
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
def sample(checkpoint: Path, length, temperature, prime, argmax, top_k, seed, num_samples, device, threads, as_json):
    """Generate text from CHECKPOINT (default: out/best.pt) and stream it to stdout.

    Only the text goes to stdout, so `charrnn sample > out.txt` works. With --num-samples N > 1 the
    samples are printed one after another, each followed by a blank line and a line of dashes.
    The same options and --seed give the text `charrnn.load(CHECKPOINT).sample(...)` returns.
    """
    set_threads(threads)
    model = load(checkpoint, device=device)
    options = dict(prime=prime, temperature=temperature, top_k=top_k, argmax=argmax, seed=seed, num_samples=num_samples)
    if as_json or num_samples > 1:
        texts = model.sample(length, **options)
        texts = [texts] if isinstance(texts, str) else texts
        if as_json:
            echo_json(
                {
                    "checkpoint": str(checkpoint),
                    "length": length,
                    "num_samples": num_samples,
                    **options,
                    "samples": texts,
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

"""``charrnn eval``: the loss of a checkpoint on a text, in nats/char, bits/char and perplexity."""

from __future__ import annotations

from pathlib import Path

import click

from charrnn.api import evaluate
from charrnn.cli.common import DEVICE_HELP, UserError, echo_json, stderr_console
from charrnn.errors import CharRNNError


@click.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("text", required=False, type=click.Path(path_type=Path))
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Parallel streams.")
@click.option(
    "--seq-len",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Characters per chunk; the state carries across chunks.",
)
@click.option("--encoding", default="utf-8", show_default=True)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option(
    "--baseline",
    metavar="ngram:N",
    callback=lambda ctx, param, value: _baseline_order(value),
    help="Also score an interpolated Kneser-Ney character N-gram (N up to 20) on the same characters, "
    "fitted on the checkpoint's training split (docs/analysis.md).",
)
@click.option("--baseline-text", type=click.Path(path_type=Path), help="Fit the --baseline on this text instead.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def eval_cmd(
    checkpoint: Path, text: Path | None, batch_size, seq_len, encoding, device, baseline, baseline_text, as_json
):
    """Loss of CHECKPOINT on TEXT, or on the checkpoint's own validation split when TEXT is omitted.

    TEXT may be a file, a folder or a quoted glob, as for `charrnn train`. Every character is scored
    (no --eval-chars subset here). Without TEXT, the checkpoint's text is found again the way
    `charrnn train --resume` finds it, and the run's corpus cache next to CHECKPOINT is reused
    when it is still valid.
    """
    if baseline_text is not None and baseline is None:
        raise UserError("--baseline-text needs --baseline ngram:N; add it, or drop --baseline-text")
    result = evaluate(checkpoint, text, batch_size=batch_size, seq_len=seq_len, encoding=encoding, device=device)
    base = None
    if baseline is not None:
        from charrnn.baseline import evaluate_baseline

        base = evaluate_baseline(
            checkpoint, text, baseline, baseline_text, batch_size=batch_size, seq_len=seq_len, encoding=encoding
        )
    if as_json:
        echo_json(
            {
                "checkpoint": str(checkpoint),
                "text": result.text,
                "n_chars": result.n_chars,
                "loss_nats": result.nats,
                "loss_bits": result.bits,
                "perplexity": result.perplexity,
                # Deprecated spellings (charrnn 1.0), to be removed in 1.2.
                "chars": result.n_chars,
                "nats_per_char": result.nats,
                "bits_per_char": result.bits,
                **({"baseline": base.to_json(result)} if base is not None else {}),
            }
        )
    else:
        stderr_console().print(f"[dim]{result.text}: {result.n_chars:,} characters scored")
        click.echo(f"{result.nats:.4f} nats/char  {result.bits:.4f} bits/char  perplexity {result.perplexity:.3f}")
        if base is not None:
            stderr_console().print(f"[dim]{base.name} fitted on {base.fit_text} ({base.n_fit_chars:,} characters)")
            click.echo(
                f"{base.nats:.4f} nats/char  {base.bits:.4f} bits/char  perplexity {base.perplexity:.3f}  {base.name}"
                f" (the model's gain: {base.nats - result.nats:+.4f} nats/char)"
            )


def _baseline_order(value: str | None) -> int | None:
    """--baseline ngram:N -> N, or a usage error (exit 2) naming the form."""
    from charrnn.ngram import parse_baseline

    try:
        return parse_baseline(value) if value is not None else None
    except CharRNNError as exc:
        raise click.BadParameter(str(exc)) from None

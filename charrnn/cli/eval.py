"""``charrnn eval``: the loss of a checkpoint on a text, in nats/char, bits/char and perplexity."""

from __future__ import annotations

from pathlib import Path

import click

from charrnn.api import evaluate
from charrnn.cli.common import DEVICE_HELP, UserError, echo_json, stderr_console
from charrnn.cli.score_lines import per_record
from charrnn.errors import CharRNNError


@click.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("text", nargs=-1, type=click.Path(path_type=Path))
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
@click.option(
    "--per-line",
    "per",
    flag_value="line",
    default=None,
    help="Score every line of TEXT...: one JSON line each, in input order, as it is done.",
)
@click.option("--per-file", "per", flag_value="file", help="Score every file of TEXT...: one JSON line each.")
@click.option(
    "--top-surprises",
    type=click.IntRange(min=0),
    default=0,
    metavar="K",
    help="With --per-line/--per-file: also list each record's K most surprising characters and their positions.",
)
@click.option("--reset-each", is_flag=True, help="With --per-line/--per-file: start every record from a fresh state.")
@click.option(
    "--unknown",
    type=click.Choice(["error", "skip"]),
    default="error",
    show_default=True,
    help="With --per-line/--per-file: characters outside the vocabulary are an error, or are skipped and counted.",
)
def eval_cmd(
    checkpoint: Path,
    text: tuple[Path, ...],
    batch_size,
    seq_len,
    encoding,
    device,
    baseline,
    baseline_text,
    as_json,
    per,
    top_surprises,
    reset_each,
    unknown,
):
    """Loss of CHECKPOINT on TEXT, or on the checkpoint's own validation split when TEXT is omitted.

    TEXT may be a file, a folder or a quoted glob, as for `charrnn train`. Every character is scored
    (no --eval-chars subset here). Without TEXT, the checkpoint's text is found again the way
    `charrnn train --resume` finds it, and the run's corpus cache next to CHECKPOINT is reused
    when it is still valid.

    With --per-line (or --per-file), one JSON object per line (or file) of TEXT... goes to stdout as
    soon as it is scored, with flat memory for any size; the hidden state carries from line to line
    unless --reset-each. For example:

    \b
      charrnn eval out/best.pt poems.txt --per-line --top-surprises 3
      charrnn eval out/best.pt logs/ --per-file --reset-each --unknown skip
    """
    if per is not None and baseline is not None:
        raise click.UsageError("--baseline scores the whole text; it does not go with --per-line or --per-file")
    if per is not None:
        per_record(checkpoint, text, per, top_surprises, reset_each, unknown, encoding, device)
        return
    extra = [name for name, on in (("--top-surprises", top_surprises), ("--reset-each", reset_each)) if on]
    extra += ["--unknown skip"] if unknown == "skip" else []
    if extra:
        raise click.UsageError(f"{extra[0]} needs --per-line or --per-file")
    if len(text) > 1:
        raise click.UsageError("one TEXT at a time without --per-line or --per-file")
    if baseline_text is not None and baseline is None:
        raise UserError("--baseline-text needs --baseline ngram:N; add it, or drop --baseline-text")
    one = text[0] if text else None
    result = evaluate(checkpoint, one, batch_size=batch_size, seq_len=seq_len, encoding=encoding, device=device)
    base = None
    if baseline is not None:
        from charrnn.baseline import evaluate_baseline

        base = evaluate_baseline(
            checkpoint, one, baseline, baseline_text, batch_size=batch_size, seq_len=seq_len, encoding=encoding
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

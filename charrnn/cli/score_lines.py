"""``charrnn eval --per-line`` / ``--per-file``: one JSON line per record on stdout, as each is scored."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from charrnn.api import load
from charrnn.cli.common import stderr_console
from charrnn.scoring import RecordScore


def record_json(record: RecordScore, with_surprises: bool) -> dict:
    """One record's JSON object (docs/json.md, ``eval --per-line``)."""
    out: dict = {"file": record.file}
    if record.line is not None:
        out["line"] = record.line
    out.update(
        n_chars=record.n_chars,
        n_unknown=record.n_unknown,
        total_nats=record.total_nats,
        loss_nats=record.nats,
        loss_bits=record.bits,
        perplexity=record.perplexity,
    )
    if with_surprises:
        out["top_surprises"] = [{"position": s.position, "char": s.char, "bits": s.bits} for s in record.top_surprises]
    return out


def per_record(checkpoint: Path, texts, per, top_surprises, reset_each, unknown, encoding, device) -> None:
    if not texts:
        raise click.UsageError(f"--per-{per} needs TEXT: the file(s) to score")
    model = load(checkpoint, device=device)
    records = model.score_each(
        list(texts), per=per, top_surprises=top_surprises, reset_each=reset_each, unknown=unknown, encoding=encoding
    )
    count, n_chars, total, n_unknown = 0, 0, 0.0, 0
    last_flush = time.monotonic()
    for record in records:
        sys.stdout.write(json.dumps(record_json(record, top_surprises > 0), ensure_ascii=False) + "\n")
        count, n_chars, total, n_unknown = (
            count + 1,
            n_chars + record.n_chars,
            total + record.total_nats,
            n_unknown + record.n_unknown,
        )
        if time.monotonic() - last_flush > 0.1:
            sys.stdout.flush()
            last_flush = time.monotonic()
    sys.stdout.flush()
    summary = f"{count:,} {per}(s), {n_chars:,} characters scored"
    if n_chars:
        summary += f", {total / n_chars:.4f} nats/char overall"
    if n_unknown:
        summary += f", {n_unknown:,} unknown skipped"
    stderr_console().print(f"[dim]{summary}")

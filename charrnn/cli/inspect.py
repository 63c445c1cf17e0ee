"""``charrnn inspect``: what a checkpoint holds, as rich tables or one JSON object."""

from __future__ import annotations

import math
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from charrnn import checkpoint as ckpt_io
from charrnn.cli.common import echo_json, format_duration
from charrnn.describe import describe

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    """One block character per value (the last ``width``), low values low."""
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)][-width:]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))] for v in values)


def _kv_table(title: str, rows) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", title_style="bold")
    table.add_column(style="cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def _vocab_history_rows(history: list[dict]) -> list[tuple[str, str]]:
    """The vocabulary's history as table rows: the original characters, then each addition."""
    if len(history) < 2:
        return []
    first, *added = history
    rows = [("original", f"{first['n_chars']} characters, {first['date']}")]
    for entry in added:
        rows.append((f"added at step {entry['step']}", f"{' '.join(entry['escaped'])}  ({entry['date']})"))
    return rows


@click.command("inspect")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def inspect_cmd(checkpoint: Path, as_json: bool):
    """Show what CHECKPOINT holds: model, vocabulary, training options, progress and loss history."""
    info = describe(ckpt_io.load(checkpoint))
    if as_json:
        echo_json(info)
        return
    console = Console(highlight=False)  # the tables are this command's product: stdout
    m = info["model"]
    console.print(
        _kv_table(
            f"{checkpoint}",
            [
                ("format", f"{info['format']['marker']} v{info['format']['version']}"),
                (
                    "written by",
                    f"charrnn {info['written_by']['charrnn']}, torch {info['written_by']['torch']}, {info['written_by']['created']}",
                ),
            ],
        )
    )
    console.print(
        _kv_table(
            "model",
            [
                ("cell", m["cell"].upper()),
                ("layers x hidden", f"{m['num_layers']} x {m['hidden_size']}"),
                ("embedding", m["embedding_size"]),
                ("dropout", m["dropout"]),
                ("parameters", f"{m['parameters']:,}"),
            ],
        )
    )
    console.print(
        _kv_table(
            "vocabulary",
            [
                ("size", info["vocab"]["n_chars"]),
                ("characters", " ".join(info["vocab"]["escaped"])),
                *_vocab_history_rows(info["vocab_history"]),
            ],
        )
    )
    corpus = info["corpus"]
    console.print(
        _kv_table(
            "corpus",
            [
                ("name", corpus.get("name")),
                ("characters", f"{corpus.get('n_chars', 0):,}"),
                ("sha256", corpus.get("sha256")),
                ("validation", f"last {corpus.get('val_frac')} of the text"),
            ],
        )
    )
    p, loss = info["progress"], info["loss"]
    rows = [
        ("step / epoch", f"{p.get('step')} / {p.get('epoch')}"),
        ("training time", format_duration(p.get("elapsed_s", 0))),
        ("characters seen", f"{p.get('n_chars_seen', 0):,}"),
    ]
    if loss["last_train_nats"] is not None:
        rows.append(
            ("last train loss", f"{loss['last_train_nats']:.4f} nats/char = {loss['last_train_bits']:.4f} bits/char")
        )
    if loss["best_val_nats"] is not None:
        rows.append(("best val loss", f"{loss['best_val_nats']:.4f} nats/char = {loss['best_val_bits']:.4f} bits/char"))
    val = info["history"].get("val_nats", [])
    if val:
        rows.append(("val loss history", f"{sparkline(val)}  {val[0]:.3f} -> {val[-1]:.3f} ({len(val)} evaluations)"))
    rows.append(("resumable", "yes" if info["resumable"] else "no"))
    console.print(_kv_table("progress", rows))
    options = {k: v for k, v in info["train_config"].items()}
    console.print(_kv_table("training options", sorted(options.items())))

"""``charrnn inspect``: what a checkpoint holds, as rich tables or one JSON object."""

from __future__ import annotations

import math
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from charrnn import checkpoint as ckpt_io
from charrnn.cli.common import echo_json, format_duration
from charrnn.data import escape_char
from charrnn.loss import LN2

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    """One block character per value (the last ``width``), low values low."""
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)][-width:]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))] for v in values)


# Checkpoint keys (docs/checkpoint-format.md) -> their names in JSON (docs/json.md). The checkpoint's
# own names are written too, deprecated, until charrnn 1.2.
CORPUS_KEYS = {"chars": "n_chars"}
PROGRESS_KEYS = {"elapsed": "elapsed_s", "chars_seen": "n_chars_seen"}
HISTORY_KEYS = {"train_loss": "train_nats", "val_loss": "val_nats", "elapsed": "elapsed_s"}


def _renamed(record: dict, names: dict[str, str]) -> dict:
    """``record`` with each key of ``names`` also under its JSON name (the JSON name first)."""
    out = {names[k]: v for k, v in record.items() if k in names}
    out.update(record)
    return out


def describe(ckpt: ckpt_io.Checkpoint) -> dict:
    """Everything ``inspect`` shows, as plain JSON-ready data."""
    cfg = ckpt.model_config
    params = sum(t.numel() for t in ckpt.weights.values())
    bits = lambda v: v / LN2 if isinstance(v, (int, float)) else None  # noqa: E731
    return {
        "path": str(ckpt.path),
        "format": {"marker": ckpt_io.FORMAT_MARKER, "version": ckpt.version},
        "written_by": {"charrnn": ckpt.charrnn_version, "torch": ckpt.torch_version, "created": ckpt.created},
        "model": {**cfg.to_dict(), "parameters": params},
        "vocab": {
            "n_chars": len(ckpt.vocab),
            "size": len(ckpt.vocab),  # deprecated (1.0): n_chars
            "chars": ckpt.vocab.chars,
            "escaped": [escape_char(c) for c in ckpt.vocab.chars],
        },
        "corpus": _renamed(ckpt.corpus, CORPUS_KEYS),
        "train_config": ckpt.train_config,
        "progress": _renamed(ckpt.progress, PROGRESS_KEYS),
        "loss": {
            "last_train_nats": ckpt.last_train_loss,
            "last_train_bits": bits(ckpt.last_train_loss),
            "best_val_nats": ckpt.best_val_loss,
            "best_val_bits": bits(ckpt.best_val_loss),
        },
        "history": _renamed(ckpt.history, HISTORY_KEYS),
        "resumable": ckpt.resume is not None,
        "vocab_history": [
            {**entry, "n_chars": len(entry["chars"]), "escaped": [escape_char(c) for c in entry["chars"]]}
            for entry in ckpt.vocab_history
        ],
    }


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

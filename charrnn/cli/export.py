"""``charrnn export``: a model for places without charrnn (ONNX, safetensors, one HTML page)."""

from __future__ import annotations

from pathlib import Path

import click

from charrnn.cli.common import echo_json
from charrnn.export import export


def megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.2f} MB" if n_bytes >= 10_000 else f"{n_bytes:,} bytes"


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option(
    "--half",
    is_flag=True,
    help="Store the matrices as float16, half the size (.html and .safetensors); what it costs in loss is in docs/performance.md.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (what was written).")
def export_cmd(checkpoint: Path, output: Path, half: bool, as_json: bool):
    """Write CHECKPOINT as OUTPUT, in the format OUTPUT's suffix names.

    \b
    .onnx          the one-character step: (idx, state) -> (logits, next state), any batch size;
                   needs pip install 'charrnn[onnx]'
    .safetensors   the weights, and the config as JSON beside them (model.json); every charrnn
                   command reads the pair back
    .html          one self-contained page: type a prime and it writes, in any browser, offline

    A size report goes to stderr. docs/export.md describes the formats.
    """
    done = export(checkpoint, output, half=half)
    if as_json:
        echo_json(
            {
                "checkpoint": str(checkpoint),
                "format": done.format,
                "files": [{"path": str(p), "n_bytes": p.stat().st_size} for p in done.paths],
                "n_bytes": done.n_bytes,
                "parameters": done.parameters,
                "half": done.half,
            }
        )
        return
    weights = "float16 matrices" if done.half else "float32"
    files = " and ".join(f"{p} ({megabytes(p.stat().st_size)})" for p in done.paths)
    click.echo(f"wrote {files}: {done.parameters:,} parameters, {weights}", err=True)
    if done.format == "html":
        click.echo(f"open {done.paths[0]} in a browser: it needs no server and no network", err=True)

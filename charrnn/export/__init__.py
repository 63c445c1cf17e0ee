"""``charrnn export``: a trained model in a form that runs without charrnn, chosen by the file's suffix.

    .onnx          the one-character step, (idx, state) -> (logits, next state)   charrnn.export.onnx_step
    .safetensors   weights + a JSON config beside them                             charrnn.export.safetensors_pair
    .html          one self-contained page that writes in any browser, offline    charrnn.export.page

    from charrnn.export import export
    done = export("out/best.pt", "playground.html", half=True)   # an Exported: paths and sizes

The library writes the files and says what it wrote; the CLI reports it. docs/export.md has the
formats, and the ONNX sampling loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from charrnn import checkpoint as ckpt_io
from charrnn.errors import ConfigError, OutputError, option
from charrnn.fsio import replace_atomic

FORMATS = {".onnx": "onnx", ".safetensors": "safetensors", ".html": "html", ".htm": "html"}


@dataclass(frozen=True)
class Exported:
    """What ``export`` wrote: the ``format``, the ``paths`` (the main file first) and their ``n_bytes``,
    the model's ``parameters``, and whether its matrices were stored as float16 (``half``)."""

    format: str
    paths: list[Path]
    n_bytes: int
    parameters: int
    half: bool


def write_file(path: Path, payload: bytes) -> None:
    """Write one exported file atomically (a temp file beside it, renamed over it); OutputError if the
    folder or the disk refuses, the old file untouched."""
    try:
        replace_atomic(path, payload)
    except OSError as exc:
        raise OutputError(
            f"cannot write {path} ({exc.strerror or exc}); choose a writable folder or free some disk space"
        ) from None


def format_of(path: str | Path) -> str:
    """'onnx', 'safetensors' or 'html' from the suffix; ConfigError naming the suffixes otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(
            f"cannot tell the format of {path} from its suffix {suffix or '(none)'!r}; "
            "name the output .onnx, .safetensors or .html"
        )
    return FORMATS[suffix]


def export(checkpoint: str | Path | ckpt_io.Checkpoint, path: str | Path, *, half: bool = False) -> Exported:
    """Write ``checkpoint`` (a path or a loaded Checkpoint) to ``path`` in the format its suffix names.

    ``half`` stores the matrices as float16 (.html and .safetensors; ConfigError for .onnx). The
    source is never overwritten: ConfigError if ``path`` (or the JSON beside a .safetensors) is it.
    """
    fmt = format_of(path)
    path = Path(path)
    if half and fmt == "onnx":
        raise ConfigError(f"{option('half')} applies to .html and .safetensors; the ONNX step is float32")
    ckpt = checkpoint if isinstance(checkpoint, ckpt_io.Checkpoint) else ckpt_io.load(checkpoint)
    _check_not_source(ckpt, path, fmt)
    if fmt == "onnx":
        from charrnn.export import onnx_step

        paths = [onnx_step.save(ckpt, path)]
    elif fmt == "safetensors":
        from charrnn.export import safetensors_pair

        paths = safetensors_pair.save(ckpt, path, half=half)
    else:
        from charrnn.export import page

        paths = [page.save(ckpt, path, half=half)]
    return Exported(
        format=fmt,
        paths=paths,
        n_bytes=sum(p.stat().st_size for p in paths),
        parameters=sum(t.numel() for t in ckpt.weights.values()),
        half=half,
    )


def _check_not_source(ckpt: ckpt_io.Checkpoint, path: Path, fmt: str) -> None:
    """Refuse to write over the checkpoint being exported, or over a JSON file that is not ours."""
    targets = [path]
    if fmt == "safetensors":
        from charrnn.export.safetensors_pair import FORMAT_MARKER, config_path

        side = config_path(path)
        targets.append(side)
        if side.is_file() and not _starts_with_marker(side, FORMAT_MARKER):
            raise ConfigError(
                f"{side} exists and is not a charrnn model config; exporting to {path} would replace it: "
                "move it or choose another output name"
            )
    if ckpt.path is not None:
        source = Path(ckpt.path).resolve()
        sources = {source, source.with_suffix(".json")} if source.suffix == ".safetensors" else {source}
        for target in targets:
            if target.resolve() in sources:
                raise ConfigError(f"{target} is the checkpoint being exported; choose another output name")


def _starts_with_marker(path: Path, marker: str) -> bool:
    """Whether the first few kilobytes of ``path`` name ``marker`` (a JSON config this module wrote)."""
    try:
        with path.open("rb") as fh:
            return marker.encode() in fh.read(4096)
    except OSError:
        return False

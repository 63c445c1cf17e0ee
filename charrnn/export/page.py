"""One self-contained HTML page that writes with the model in any browser, offline.

The page is the template ``page.html`` with the sampler ``page.js`` inlined and two data blocks:

    <script type="application/json" id="model">            the config, the vocabulary, where each tensor lies
    <script type="application/octet-stream" id="weights">  every tensor of charrnn.export.fused, base64

The tensors are little-endian float32, or with ``half`` the matrices float16 (biases stay float32),
each starting on a 4-byte boundary so the script views them without copying. No external script,
style, font or request; a Content-Security-Policy of ``default-src 'none'`` makes sure of it.
"""

from __future__ import annotations

import base64
import html
import json
import re
from importlib import resources
from pathlib import Path

from charrnn import __version__
from charrnn.checkpoint import Checkpoint
from charrnn.export import write_file
from charrnn.export.fused import step_arrays

FORMAT_MARKER = "charrnn-page"
FORMAT_VERSION = 1


def _template(name: str) -> str:
    return resources.files("charrnn.export").joinpath(name).read_text(encoding="utf-8")


def _script_json(data: dict) -> str:
    """JSON safe inside a <script> element: no "<" (so no "</script>"), no "&"; the escapes are JSON's own."""
    return json.dumps(data, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def weights_blob(ckpt: Checkpoint, half: bool = False) -> tuple[bytes, list[dict]]:
    """The tensors as one byte string and, per tensor, its name, dtype, shape and byte offset."""
    parts, layout, offset = [], [], 0
    for name, array in step_arrays(ckpt).items():
        stored = array.astype("<f2" if half and array.ndim >= 2 else "<f4")
        raw = stored.tobytes()
        layout.append(
            {
                "name": name,
                "dtype": "float16" if stored.itemsize == 2 else "float32",
                "shape": list(array.shape),
                "offset": offset,
            }
        )
        pad = -len(raw) % 4
        parts.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    return b"".join(parts), layout


def render(ckpt: Checkpoint, *, half: bool = False) -> str:
    """The page as a string."""
    cfg = ckpt.model_config
    blob, layout = weights_blob(ckpt, half)
    vocab = ckpt.vocab.chars
    meta = {
        "format": FORMAT_MARKER,
        "version": FORMAT_VERSION,
        "charrnn_version": __version__,
        "cell": cfg.cell,
        "num_layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "embedding_size": cfg.embedding_size,
        "vocab_size": cfg.vocab_size,
        "vocab": vocab,
        "start": vocab.index("\n") if "\n" in vocab else 0,  # with no prime: after a line break, as charrnn sample
        "half": half,
        "tensors": layout,
    }
    corpus = ckpt.corpus.get("name")
    title = f"charrnn: {cfg.cell.upper()} {cfg.num_layers}x{cfg.hidden_size}" + (f" on {corpus}" if corpus else "")
    about = [f"{cfg.vocab_size} characters", f"{sum(t.numel() for t in ckpt.weights.values()):,} parameters"]
    if isinstance(ckpt.best_val_loss, (int, float)):
        about.append(f"validation loss {ckpt.best_val_loss:.3f} nats/char")
    about.append("float16 matrices" if half else "float32 weights")
    about.append("runs in this page, offline")
    fills = {
        "VERSION": html.escape(__version__),
        "TITLE": html.escape(title),
        "ABOUT": html.escape(", ".join(about)),
        "MODEL": _script_json(meta),
        "WEIGHTS": base64.b64encode(blob).decode("ascii"),
        "SCRIPT": _template("page.js"),
    }
    # One pass, so that nothing filled in (a corpus name, the vocabulary) is itself taken for a slot.
    return re.sub(r"__([A-Z]+)__", lambda m: fills[m.group(1)], _template("page.html"))


def save(ckpt: Checkpoint, path: str | Path, *, half: bool = False) -> Path:
    """Write the page to ``path`` atomically; the path."""
    path = Path(path)
    write_file(path, render(ckpt, half=half).encode("utf-8"))
    return path

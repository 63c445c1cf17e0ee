"""What a checkpoint holds, as plain JSON-ready data: ``charrnn inspect --json`` and the server's
``GET /v1/models`` give these same facts. No I/O and no printing here."""

from __future__ import annotations

from charrnn import checkpoint as ckpt_io
from charrnn.data import escape_char
from charrnn.loss import LN2

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

"""The one checkpoint format every command shares: versioned, self-describing, safe to load.

A checkpoint is a plain dict of tensors and primitives (no pickled classes), so it opens with
``torch.load(..., weights_only=True)``: loading a stranger's file cannot run code. Every key, the
checks ``load`` makes and how ``save`` writes atomically are described in docs/checkpoint-format.md
(a test keeps that table and what ``save`` writes in step). What a training run puts in it, and how
it is restored, lives in charrnn.snapshot.
"""

from __future__ import annotations

import datetime as _dt
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from charrnn import __version__, checkpoint_archive, checkpoint_schema
from charrnn.data import Vocab
from charrnn.errors import CheckpointError, OutputError, option
from charrnn.fsio import replace_atomic
from charrnn.model import CharRNN, ModelConfig

FORMAT_KEY = "format"
FORMAT_MARKER = "charrnn-checkpoint"
VERSION_KEY = "version"
FORMAT_VERSION = 1

# The keys every checkpoint has; charrnn.checkpoint_schema checks them and the optional ones.
REQUIRED = ("model_config", "vocab", "model", "train_config", "corpus", "progress", "history")


def vocab_entry(chars: str, step: int, date: str | None = None) -> dict:
    """One entry of ``vocab_history``: characters added to the vocabulary, at which training step, and
    when (ISO 8601 in UTC; None: now)."""
    return {
        "chars": chars,
        "step": int(step),
        "date": date or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


@dataclass
class Checkpoint:
    """A loaded (and validated) checkpoint. ``weights`` is the model's state dict (file key "model");
    ``build_model()`` makes the module. ``vocab`` given as a string of characters becomes a Vocab."""

    path: Path | None
    model_config: ModelConfig
    vocab: Vocab
    weights: dict
    train_config: dict = field(default_factory=dict)
    corpus: dict = field(default_factory=dict)
    progress: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    best_val_loss: float | None = None
    last_train_loss: float | None = None
    resume: dict | None = None
    charrnn_version: str = __version__
    torch_version: str = str(torch.__version__)
    created: str = ""
    version: int = FORMAT_VERSION
    # How the vocabulary grew: [{"chars", "step", "date"}], the original vocabulary first, then the
    # characters each --extend-vocab fine-tune added. Empty: one entry, the whole vocabulary at step 0.
    vocab_history: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.vocab, str):
            self.vocab = Vocab(self.vocab)
        if not self.vocab_history:
            self.vocab_history = [vocab_entry(self.vocab.chars, 0, self.created or None)]

    def build_model(self, device: torch.device | str = "cpu") -> CharRNN:
        """A CharRNN with this checkpoint's weights, in eval mode, on ``device``."""
        model = CharRNN(self.model_config)
        model.load_state_dict(self.weights)
        return model.to(device).eval()

    def to_dict(self) -> dict:
        return {
            FORMAT_KEY: FORMAT_MARKER,
            VERSION_KEY: FORMAT_VERSION,
            "charrnn_version": __version__,
            "torch_version": str(torch.__version__),  # TorchVersion is a class, not plain data
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model_config": self.model_config.to_dict(),
            "vocab": self.vocab.chars,
            "model": {k: v.detach().cpu() for k, v in self.weights.items()},
            "train_config": dict(self.train_config),
            "corpus": dict(self.corpus),
            "progress": dict(self.progress),
            "history": {k: list(v) for k, v in self.history.items()},
            "best_val_loss": self.best_val_loss,
            "last_train_loss": self.last_train_loss,
            "resume": self.resume,
            "vocab_history": [dict(entry) for entry in self.vocab_history],
        }


def save(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write ``ckpt`` to ``path`` atomically and durably; OutputError if the disk or folder refuses."""
    path = Path(path)
    data = ckpt.to_dict()
    buffer = io.BytesIO()
    torch.save(data, buffer)  # serialise fully before touching the disk
    write_atomic(path, buffer.getbuffer())
    return path


def write_atomic(path: Path, payload) -> None:
    """Write ``payload`` to ``path`` atomically and durably: a temp file beside it, fsync, rename over
    ``path``, fsync the folder. OutputError (the old file untouched, no temp file left) on failure."""
    try:
        replace_atomic(path, payload)
    except OSError as exc:
        raise OutputError(
            f"cannot write {path} ({exc.strerror or exc}); free some disk space or choose another "
            f"{option('out_dir')} (earlier checkpoints are untouched)"
        ) from None


def load(path: str | Path) -> Checkpoint:
    """Open and validate a checkpoint; CheckpointError (one line, naming the path) for anything wrong.

    The archive is checked first (charrnn.checkpoint_archive: only torch.save's records, each once,
    inside the file, with their checksums; a capped pickle), then read from the same open file with
    ``torch.load(weights_only=True)``, so a file holding pickled objects is refused, never run; then
    every field is validated (charrnn.checkpoint_schema) before anything is built from it. Tensors
    are mapped to the CPU, so a checkpoint saved on a GPU opens anywhere.
    """
    path = Path(path)
    with checkpoint_archive.open_checked(path) as file:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols; we refuse them anyway
                data = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad files: pickle, zip, EOF, runtime...
            raise checkpoint_archive.not_valid(path, _first_line(exc)) from None
    return from_dict(data, path)


def _first_line(exc: BaseException) -> str:
    """The informative line of torch.load's (often long, multi-line) error.

    torch's weights_only refusal opens with advice to pass ``weights_only=False``, which is exactly
    what must not be done with a stranger's file; the line after it names what was refused.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    for line in lines:
        if "global" in line.lower():
            what = line.split(":", 1)[-1].strip() if "Unsupported global" in line else line
            return f"it holds pickled Python objects, which charrnn refuses to load: {what[:150]}"
        if "Unsupported operand" in line:
            return f"its pickle uses an operation the safe loader refuses: {line[:150]}"
    if lines and lines[0].startswith("Weights only load failed"):
        lines = [line for line in lines[1:] if not line.startswith("Check the documentation")] or ["unpickling failed"]
    return (lines[0] if lines else type(exc).__name__)[:200]


def from_dict(data, path: Path | None = None) -> Checkpoint:
    """Validate a raw checkpoint dict and return a Checkpoint."""
    where = f"{path}: " if path is not None else ""
    bad = f"{where}not a valid charrnn checkpoint"
    if not isinstance(data, dict) or data.get(FORMAT_KEY) != FORMAT_MARKER:
        raise CheckpointError(f"{bad} (no charrnn format marker); pass a file written by `charrnn train`")
    version = data.get(VERSION_KEY)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{bad} (format version {checkpoint_schema.short(version)})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}checkpoint format version {checkpoint_schema.short(version)} is newer than this charrnn understands "
            f"({FORMAT_VERSION}); upgrade charrnn (pip install -U charrnn)"
        )
    try:
        config = checkpoint_schema.validate(data, REQUIRED)
    except checkpoint_schema.Invalid as exc:
        detail = " ".join(str(exc).split())  # one line, whatever a value's repr held
        raise CheckpointError(f"{bad} ({detail[:300]})") from None
    resume = data.get("resume")
    history = data.get("vocab_history")  # missing in checkpoints from before charrnn 1.1; checked by the schema
    return Checkpoint(
        path=path,
        model_config=config,
        vocab=Vocab(data["vocab"]),
        weights=data["model"],
        train_config=data["train_config"],
        corpus=data["corpus"],
        progress=data["progress"],
        history=data["history"],
        best_val_loss=data.get("best_val_loss"),
        last_train_loss=data.get("last_train_loss"),
        resume=resume,
        charrnn_version=str(data.get("charrnn_version", "?")),
        torch_version=str(data.get("torch_version", "?")),
        created=str(data.get("created", "")),
        version=version,
        vocab_history=[dict(entry) for entry in history] if history else [],
    )

"""The safetensors pair: a second safe checkpoint format, for sharing weights with other tools.

``model.safetensors`` holds the weights under their PyTorch names (``rnn.weight_ih_l0`` ...), so
``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` or any safetensors reader can load them without pickle;
``model.json`` beside it holds the config: the format marker and version, the model config, the
vocabulary, and what ``charrnn inspect`` and ``charrnn eval`` show (corpus, training options,
progress, losses). The same JSON is embedded in the safetensors metadata (key ``charrnn_config``), so
the weights file alone is enough; when both are present they must agree on the model and vocabulary.

``load`` returns the ``Checkpoint`` every command runs on, without training state: ``--resume``
refuses it, ``--init-from`` takes it. It treats the files as hostile: the JSON is size-capped and
checked key by key, and the tensors' names, shapes and dtypes are checked against the config from the
safetensors header before any tensor is read. docs/export.md describes both files.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import torch

from charrnn import __version__
from charrnn.checkpoint import Checkpoint
from charrnn.data import Vocab
from charrnn.errors import CheckpointError, ConfigError
from charrnn.export import write_file
from charrnn.export.fused import halved
from charrnn.model import ModelConfig, parameter_shapes

FORMAT_MARKER = "charrnn-safetensors"
FORMAT_VERSION = 1
METADATA_KEY = "charrnn_config"
MAX_JSON_BYTES = 64 << 20  # a vocabulary of a million characters and a long history fit easily
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_SCALARS = (str, int, float, bool, type(None))


def config_path(path: str | Path) -> Path:
    """The JSON file beside ``path``: ``model.safetensors`` -> ``model.json``."""
    return Path(path).with_suffix(".json")


def config_of(ckpt: Checkpoint, half: bool = False) -> dict:
    """The JSON config describing ``ckpt``'s weights (plain data, ready for ``json.dumps``)."""
    return {
        "format": FORMAT_MARKER,
        "version": FORMAT_VERSION,
        "charrnn_version": ckpt.charrnn_version,
        "torch_version": ckpt.torch_version,
        "created": ckpt.created,
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "exported_by": __version__,
        "half": half,
        "model_config": ckpt.model_config.to_dict(),
        "vocab": ckpt.vocab.chars,
        "corpus": dict(ckpt.corpus),
        "train_config": dict(ckpt.train_config),
        "progress": dict(ckpt.progress),
        "history": {k: list(v) for k, v in ckpt.history.items()},
        "best_val_loss": ckpt.best_val_loss,
        "last_train_loss": ckpt.last_train_loss,
    }


def save(ckpt: Checkpoint, path: str | Path, *, half: bool = False) -> list[Path]:
    """Write ``path`` (.safetensors) and the JSON beside it, each atomically; the paths written."""
    from safetensors.torch import save as save_tensors

    path = Path(path)
    weights = {k: v.detach().cpu().contiguous() for k, v in ckpt.weights.items()}
    if half:
        weights = halved(weights)
    config = config_of(ckpt, half)
    text = json.dumps(config, ensure_ascii=False, indent=1)  # readable: the characters as themselves
    embedded = json.dumps(config, ensure_ascii=True)  # any code point, even a lone surrogate, survives
    payload = save_tensors(weights, metadata={"format": FORMAT_MARKER, METADATA_KEY: embedded})
    side = config_path(path)
    write_file(path, payload)
    write_file(side, (text + "\n").encode("utf-8", errors="surrogatepass"))
    return [path, side]


def load(path: str | Path) -> Checkpoint:
    """Read a safetensors pair back as a validated Checkpoint; CheckpointError (one line) otherwise."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise CheckpointError(f"{path}: {what}; pass a .safetensors file written by `charrnn export`")
    bad = f"{path}: not a valid charrnn safetensors file"
    try:
        with safe_open(str(path), framework="pt") as archive:
            ckpt = _checkpoint(path, archive.metadata() or {}, bad)
            names = archive.keys()
            _check_count(names, ckpt.model_config, bad)  # before looking at each of a hostile file's names
            layout = {name: archive.get_slice(name) for name in names}
            _check_layout({k: (tuple(s.get_shape()), s.get_dtype()) for k, s in layout.items()}, ckpt.model_config, bad)
            for name in layout:
                ckpt.weights[name] = archive.get_tensor(name).to(torch.float32)
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors' header and I/O errors, mmap failures on a truncated file
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{bad} ({detail}); export it again with `charrnn export`") from None
    for name, tensor in ckpt.weights.items():
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{bad} (weight {name!r} holds NaN or infinite values)")
    return ckpt


def _checkpoint(path: Path, metadata: dict, bad: str) -> Checkpoint:
    """The Checkpoint without its weights, from the config (beside, or embedded), checked."""
    embedded = metadata.get(METADATA_KEY)
    side = config_path(path)
    if side.is_file():
        config = _parse(side, _read_json(side), f"{side}: not a valid charrnn model config")
        if embedded is not None:
            inner = _parse(path, embedded, bad)
            if (inner["model_config"], inner["vocab"]) != (config["model_config"], config["vocab"]):
                raise CheckpointError(
                    f"{side} describes another model than {path} holds; export the pair again or remove {side.name}"
                )
    elif embedded is not None:
        config = _parse(path, embedded, bad)
    else:
        raise CheckpointError(f"{bad} (no config: {side.name} is missing beside it); export it with `charrnn export`")
    return Checkpoint(
        path=path,
        model_config=config["model_config"],
        vocab=config["vocab"],
        weights={},
        train_config=config["train_config"],
        corpus=config["corpus"],
        progress=config["progress"],
        history=config["history"],
        best_val_loss=config["best_val_loss"],
        last_train_loss=config["last_train_loss"],
        resume=None,
        charrnn_version=config["charrnn_version"],
        torch_version=config["torch_version"],
        created=config["created"],
        version=config["version"],
    )


def _read_json(side: Path) -> str:
    try:
        size = side.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CheckpointError(f"{side}: {size:,} bytes is too large for a model config; export it again")
        return side.read_bytes().decode("utf-8", errors="surrogatepass")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{side}: cannot read the model config ({exc}); export it again") from None


def _parse(where: Path, text: str, bad: str) -> dict:
    """The JSON config, every key checked; values normalised (ModelConfig, Vocab, plain dicts)."""
    if len(text) > MAX_JSON_BYTES:
        raise CheckpointError(f"{bad} (its config is too large)")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{bad} (config is not JSON: {str(exc)[:120]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_MARKER:
        raise CheckpointError(f"{bad} (no {FORMAT_MARKER!r} format marker); pass a file written by `charrnn export`")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{bad} (format version {version!r})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format version {version} is newer than this charrnn understands ({FORMAT_VERSION}); "
            "upgrade charrnn (pip install -U charrnn)"
        )
    raw = data.get("model_config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{bad} (missing or malformed 'model_config')")
    try:
        model_config = ModelConfig.from_dict(raw)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{bad} ({exc})") from None
    if not isinstance(model_config.dropout, (int, float)) or not math.isfinite(model_config.dropout):
        raise CheckpointError(f"{bad} (malformed dropout)")
    vocab = data.get("vocab")
    if not isinstance(vocab, str) or len(vocab) != model_config.vocab_size:
        raise CheckpointError(f"{bad} (the vocabulary does not have the model's {model_config.vocab_size} characters)")
    if "".join(sorted(set(vocab))) != vocab:
        raise CheckpointError(f"{bad} (vocabulary is not a sorted set of characters)")
    out = {"version": version, "model_config": model_config, "vocab": Vocab(vocab)}
    for key in ("corpus", "train_config", "progress"):
        value = data.get(key, {})
        if not isinstance(value, dict) or not all(_plain(v) for v in value.values()):
            raise CheckpointError(f"{bad} (malformed {key!r})")
        out[key] = value
    history = data.get("history", {})
    if not isinstance(history, dict) or not all(
        isinstance(v, list) and all(_number(x) for x in v) for v in history.values()
    ):
        raise CheckpointError(f"{bad} (malformed 'history')")
    out["history"] = history
    for key in ("best_val_loss", "last_train_loss"):
        value = data.get(key)
        if value is not None and not _number(value):
            raise CheckpointError(f"{bad} (malformed {key!r})")
        out[key] = value
    for key in ("charrnn_version", "torch_version", "created"):
        value = data.get(key, "?")
        out[key] = value if isinstance(value, str) else "?"
    return out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(value) -> bool:
    """A value ``inspect`` can show and ``eval`` can use: a scalar, or a flat list of scalars."""
    if isinstance(value, list):
        return all(isinstance(v, _SCALARS) for v in value)
    return isinstance(value, _SCALARS)


def _check_count(names: list, config: ModelConfig, bad: str) -> None:
    expected = 4 * config.num_layers + 3  # embedding, 4 per layer, head weight and bias
    if len(names) != expected:
        raise CheckpointError(
            f"{bad} (it holds {len(names)} tensors but a {config.num_layers}-layer model has {expected})"
        )


def _check_layout(layout: dict, config: ModelConfig, bad: str) -> None:
    """The tensors the header lists are exactly the model's, each with its shape and a float dtype."""
    expected = parameter_shapes(config)
    missing = sorted(set(expected) - set(layout))
    if missing:
        raise CheckpointError(f"{bad} (missing weights: {', '.join(missing[:5])})")
    for name, shape in expected.items():
        found, dtype = layout[name]
        if dtype not in DTYPES:
            raise CheckpointError(f"{bad} (weight {name!r} is {dtype}; expected F32, F16 or BF16)")
        if found != shape:
            raise CheckpointError(f"{bad} (weight {name!r} has shape {found} but the config needs {shape})")

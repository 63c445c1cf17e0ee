"""The safetensors pair: a second safe checkpoint format, for sharing weights with other tools.

``model.safetensors`` holds the weights under their PyTorch names (``rnn.weight_ih_l0`` ...), so
``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` or any safetensors reader can load them without pickle;
``model.json`` beside it holds the config: the format marker and version, the model config, the
vocabulary, and what ``charrnn inspect`` and ``charrnn eval`` show (corpus, training options,
progress, losses). The same JSON is embedded in the safetensors metadata (key ``charrnn_config``), so
the weights file alone is enough; when both are present they must agree on the model and vocabulary.

``load`` returns the ``Checkpoint`` every command runs on, without training state: ``--resume``
refuses it, ``--init-from`` takes it. It treats the files as hostile: the JSON is size-capped, its
format, model config and vocabulary are checked first, the tensors' names, shapes and dtypes are
checked against that config from the safetensors header before any tensor is read, and then the whole
is validated by ``charrnn.checkpoint.from_dict``, the checks a .pt checkpoint gets (corpus, options,
progress, history, losses, finite weights). docs/export.md describes both files.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import torch

from charrnn import __version__
from charrnn import checkpoint as ckpt_io
from charrnn.checkpoint import Checkpoint
from charrnn.errors import CheckpointError, ConfigError
from charrnn.export import write_file
from charrnn.export.fused import halved
from charrnn.model import ModelConfig, parameter_shapes

FORMAT_MARKER = "charrnn-safetensors"
FORMAT_VERSION = 1
METADATA_KEY = "charrnn_config"
MAX_JSON_BYTES = 64 << 20  # a vocabulary of a million characters and a long history fit easily
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# What a checkpoint holds that the config carries too: all but the weights and the training state.
_CARRIED = "model_config vocab train_config corpus progress history best_val_loss last_train_loss".split()
_CARRIED += ["charrnn_version", "torch_version", "created"]


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
            config = _config(path, archive.metadata() or {}, bad)
            model_config = ModelConfig.from_dict(config["model_config"])  # checked by _parse
            names = archive.keys()
            _check_count(names, model_config, bad)  # before looking at each of a hostile file's names
            layout = {name: archive.get_slice(name) for name in names}
            _check_layout({k: (tuple(s.get_shape()), s.get_dtype()) for k, s in layout.items()}, model_config, bad)
            weights = {name: archive.get_tensor(name).to(torch.float32) for name in layout}
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors' header and I/O errors, mmap failures on a truncated file
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{bad} ({detail}); export it again with `charrnn export`") from None
    # The rest is what a .pt checkpoint holds, less the training state: the same checks (the
    # corpus, options, progress, history and losses; finite weights) by the same code.
    data = {key: config[key] for key in _CARRIED if key in config}
    data.update({ckpt_io.FORMAT_KEY: ckpt_io.FORMAT_MARKER, ckpt_io.VERSION_KEY: 1, "model": weights, "resume": None})
    for key in ("train_config", "corpus", "progress", "history"):
        data.setdefault(key, {})
    return ckpt_io.from_dict(data, path)


def _config(path: Path, metadata: dict, bad: str) -> dict:
    """The JSON config (beside, or embedded), its format, model config and vocabulary checked."""
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
        return config
    if embedded is not None:
        return _parse(path, embedded, bad)
    raise CheckpointError(f"{bad} (no config: {side.name} is missing beside it); export it with `charrnn export`")


def _read_json(side: Path) -> str:
    try:
        size = side.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CheckpointError(f"{side}: {size:,} bytes is too large for a model config; export it again")
        return side.read_bytes().decode("utf-8", errors="surrogatepass")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{side}: cannot read the model config ({exc}); export it again") from None


def _parse(where: Path, text: str, bad: str) -> dict:
    """The JSON config as a dict: its format, version, model config and vocabulary checked here, the
    rest by ``charrnn.checkpoint.from_dict`` once the weights are read."""
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
    return data


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

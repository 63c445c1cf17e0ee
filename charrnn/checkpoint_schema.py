"""The schema of a loaded checkpoint: every field's type and range, checked before anything uses it.

``validate(data)`` walks the dict ``torch.load`` returned and raises ``Invalid(field, problem)`` for
the first thing wrong, naming the field the way docs/checkpoint-format.md does
(``progress.elapsed``, ``history.val_loss[3]``, ``resume.optimizer.state.2.exp_avg``). It checks:

- numbers: integers (never bools) and finite floats in the field's range; counts below MAX_COUNT;
- strings: valid Unicode (no lone surrogates), so they print and encode;
- lists: their element type, and the history's lists one length;
- tensors: dense, contiguous CPU tensors whose storage holds exactly their elements and no other
  tensor's, so that their memory is what the file stores; float weights of the shape the config
  implies, whose size is checked against the stored bytes before any shape table is built;
- the resume state: Adam's state and parameter groups, the grad scaler's state, RNG states torch
  accepts, carried hidden states of the model's shape.

Keys it does not know (a newer minor format may add some) are ignored if they hold plain data: a
tree of None, bools, 64-bit integers, finite floats, valid strings, lists and string-keyed dicts, at
most MAX_DEPTH deep. The pickle's own size caps (charrnn.checkpoint_archive) bound how much.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import numpy as np
import torch

from charrnn.errors import ConfigError
from charrnn.model import GATES, ModelConfig, parameter_shapes
from charrnn.train_config import DTYPES, RUN_FACTS, SCHEDULES, TrainConfig
from charrnn.train_state import HISTORY_KEYS

MAX_COUNT = 2**50  # steps, epochs, characters: far beyond any run, and safe in seed arithmetic
MAX_OPTION = 2**31 - 1  # batch sizes, lengths, intervals
MAX_DEPTH = 16
FLOAT_DTYPES = frozenset(DTYPES.values())  # the float dtypes charrnn computes in


class Invalid(Exception):
    """A field that breaks the schema: ``field`` (dotted) and what is wrong with it."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field, self.problem = field, problem


# -- scalars -------------------------------------------------------------------------------------


def integer(value: Any, field: str, lo: int = 0, hi: int = MAX_COUNT) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(field, f"must be an integer, got {_kind(value)}")
    if not lo <= value <= hi:
        raise Invalid(field, f"must be from {lo} to {hi}, got {short(value)}")
    return value


def number(
    value: Any,
    field: str,
    lo: float = 0.0,
    hi: float = math.inf,
    *,
    open_lo: bool = False,
    open_hi: bool = False,
    nan: bool = False,
) -> float:
    """A finite int or float in [lo, hi] (without the ends marked open); NaN too where ``nan``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise Invalid(field, f"must be a number, got {_kind(value)}")
    if isinstance(value, int) and abs(value) > 2**63:
        raise Invalid(field, f"must be a number from {lo} to {hi}, got {short(value)}")
    value = float(value)
    if nan and math.isnan(value):
        return value
    if not math.isfinite(value) or not lo <= value <= hi or (open_lo and value == lo) or (open_hi and value == hi):
        bounds = f"{'above' if open_lo else 'from'} {lo:g}"
        bounds += f" {'and below' if open_hi else 'to'} {hi:g}" if hi != math.inf else ""
        raise Invalid(field, f"must be a finite number {bounds}, got {value!r}")
    return value


def text(value: Any, field: str, *, empty: bool = True, max_len: int | None = None) -> str:
    """A string that is valid Unicode (encodes as UTF-8: no lone surrogates)."""
    if not isinstance(value, str):
        raise Invalid(field, f"must be a string, got {_kind(value)}")
    if not empty and not value:
        raise Invalid(field, "must not be empty")
    if max_len is not None and len(value) > max_len:
        raise Invalid(field, f"is {len(value):,} characters long, more than {max_len:,}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(field, "is not valid Unicode (it holds a lone surrogate)") from None
    return value


def boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(field, f"must be true or false, got {_kind(value)}")
    return value


def choice(value: Any, field: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise Invalid(field, f"must be one of {', '.join(choices)}, got {short(value)}")
    return value


def optional(check: Callable[..., Any]) -> Callable[..., Any]:
    return lambda value, field, *args, **kw: None if value is None else check(value, field, *args, **kw)


def record(value: Any, field: str) -> dict:
    """A dict whose keys are valid strings."""
    if not isinstance(value, dict):
        raise Invalid(field, f"must be a dict, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise Invalid(field, f"has a key that is not a string: {short(key)}")
        text(key, f"{field} key {key[:40]!r}")
    return value


def listing(value: Any, field: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise Invalid(field, f"must be a list, got {_kind(value)}")
    return list(value)


def plain(value: Any, field: str) -> None:
    """Data a newer format may add: a tree (no cycles, no shared containers) of JSON-like values."""
    seen: set[int] = set()
    stack = [(value, field, 0)]
    while stack:
        item, where, depth = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if abs(item) >= 2**63:
                raise Invalid(where, f"is an integer beyond 64 bits: {short(item)}")
        elif isinstance(item, float):
            number(item, where, -math.inf, math.inf)
        elif isinstance(item, str):
            text(item, where)
        elif isinstance(item, (list, tuple, dict)):
            if depth >= MAX_DEPTH:
                raise Invalid(where, f"is nested more than {MAX_DEPTH} deep")
            if id(item) in seen:
                raise Invalid(where, "refers to a list or dict that appears elsewhere (or holds itself)")
            seen.add(id(item))
            if isinstance(item, dict):
                record(item, where)
                stack.extend((v, f"{where}.{k[:40]}", depth + 1) for k, v in item.items())
            else:
                stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item))
        else:
            raise Invalid(where, f"holds {_kind(item)}, which is not plain data")


def _kind(value: Any) -> str:
    return "None" if value is None else f"{type(value).__name__} {short(value)}"


def short(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {len(str(abs(value)))} digits" if value.bit_length() < 10_000 else "a huge integer"
    if isinstance(value, torch.Tensor):
        return f"of shape {tuple(value.shape)}"
    return repr(value).encode("ascii", "backslashreplace").decode()[:60]


# -- tensors -------------------------------------------------------------------------------------


class Tensors:
    """Checks tensors, remembering the storages seen: a storage belongs to one tensor only."""

    def __init__(self) -> None:
        self.owners: dict[int, int] = {}  # storage address -> id of the tensor that owns it
        self.finite: set[int] = set()  # ids of tensors already found finite
        self.bytes = 0  # bytes held by the tensors checked so far

    def dense(self, value: Any, field: str, dtypes=None, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise Invalid(field, f"must be a tensor, got {_kind(value)}")
        if value.layout != torch.strided or value.device.type != "cpu" or value.is_quantized:
            raise Invalid(field, f"must be a dense CPU tensor, not {value.layout} on {value.device}")
        if dtypes is not None and value.dtype not in dtypes:
            raise Invalid(field, f"has dtype {value.dtype}, not one of {', '.join(sorted(map(str, dtypes)))}")
        if shape is not None and tuple(value.shape) != shape:
            raise Invalid(field, f"has shape {tuple(value.shape)} but the model needs {shape}")
        nbytes = value.numel() * value.element_size()
        storage = value.untyped_storage()
        if not value.is_contiguous() or value.storage_offset() != 0 or storage.nbytes() != nbytes:
            raise Invalid(
                field,
                f"is not a dense tensor whose storage holds exactly its elements (shape {tuple(value.shape)}, "
                f"strides {value.stride()}, {storage.nbytes()} bytes stored)",
            )
        if nbytes:
            owner = self.owners.get(storage.data_ptr())
            if owner is None:
                self.owners[storage.data_ptr()] = id(value)
                self.bytes += nbytes
            elif owner != id(value):
                raise Invalid(field, "shares its storage with another tensor")
        return value

    def floats(self, value: Any, field: str, shape: tuple[int, ...] | None = None, lo: float | None = None):
        """A dense float tensor, finite (and >= ``lo`` if given)."""
        tensor = self.dense(value, field, dtypes=FLOAT_DTYPES | {torch.float64}, shape=shape)
        if id(tensor) not in self.finite:
            if not bool(torch.isfinite(tensor).all()):
                raise Invalid(field, "holds NaN or infinite values")
            if lo is not None and tensor.numel() and float(tensor.min()) < lo:
                raise Invalid(field, f"holds values below {lo:g}")
            self.finite.add(id(tensor))
        return tensor


# -- the checkpoint ------------------------------------------------------------------------------

_TRAIN_CONFIG: dict[str, Callable[[Any, str], Any]] = {
    "batch_size": lambda v, f: integer(v, f, 1, MAX_OPTION),
    "seq_len": lambda v, f: integer(v, f, 1, MAX_OPTION),
    "lr": lambda v, f: number(v, f, 0.0, open_lo=True),
    "schedule": lambda v, f: choice(v, f, SCHEDULES),
    "warmup_steps": lambda v, f: integer(v, f, 0, MAX_COUNT),
    "min_lr_frac": lambda v, f: number(v, f, 0.0, 1.0),
    "lr_decay": lambda v, f: number(v, f, 0.0, 1.0, open_lo=True),
    "lr_decay_after": lambda v, f: integer(v, f, 0, MAX_OPTION),
    "grad_clip": lambda v, f: number(v, f, 0.0, open_lo=True),
    "weight_decay": lambda v, f: number(v, f, 0.0),
    "max_epochs": optional(lambda v, f: integer(v, f, 1, MAX_COUNT)),
    "max_steps": optional(lambda v, f: integer(v, f, 1, MAX_COUNT)),
    "max_time": optional(lambda v, f: number(v, f, 0.0, 1e12, open_lo=True)),
    "eval_every": lambda v, f: integer(v, f, 1, MAX_OPTION),
    "eval_batch_size": lambda v, f: integer(v, f, 1, MAX_OPTION),
    "eval_seq_len": lambda v, f: integer(v, f, 1, MAX_OPTION),
    "eval_chars": optional(lambda v, f: integer(v, f, 2, MAX_COUNT)),
    "val_frac": lambda v, f: number(v, f, 0.0, 1.0, open_lo=True, open_hi=True),
    "seed": lambda v, f: integer(v, f, 0, 2**63 - 1),
    "dtype": lambda v, f: choice(v, f, tuple(DTYPES)),
    "compile": boolean,
    "on_nan": lambda v, f: choice(v, f, ("stop", "skip")),
    "device": lambda v, f: text(v, f, max_len=100),
    "world_size": lambda v, f: integer(v, f, 1, 2**20),
}
assert set(_TRAIN_CONFIG) == {f.name for f in fields(TrainConfig)} | set(RUN_FACTS), "one check per option"

_CORPUS: dict[str, Callable[[Any, str], Any]] = {
    "name": lambda v, f: text(v, f, max_len=4096),
    "path": optional(lambda v, f: _path(v, f)),
    "chars": integer,
    "sha256": lambda v, f: _sha256(v, f),
    "val_frac": lambda v, f: number(v, f, 0.0, 1.0, open_lo=True, open_hi=True),
    "separator": optional(lambda v, f: text(v, f, max_len=4096)),
}

_PROGRESS: dict[str, Callable[[Any, str], Any]] = {
    "step": integer,
    "epoch": integer,
    "batch": integer,
    "elapsed": lambda v, f: number(v, f, 0.0, 1e12),
    "chars_seen": integer,
    "lr_scale": lambda v, f: number(v, f, 0.0, 1.0, open_lo=True),
}

_HISTORY: dict[str, Callable[[Any, str], Any]] = {
    "step": integer,
    "train_loss": lambda v, f: number(v, f, 0.0, nan=True),  # NaN: no step since the evaluation before
    "val_loss": number,
    "lr": number,
    "elapsed": lambda v, f: number(v, f, 0.0, 1e12),
}
assert tuple(_HISTORY) == HISTORY_KEYS, "one check per history list"


def _path(value: Any, field: str) -> str:
    text(value, field, empty=False, max_len=4096)
    if "\0" in value:
        raise Invalid(field, "holds a NUL character, which no path can")
    return value


def _sha256(value: Any, field: str) -> str:
    text(value, field)
    if len(value) != 64 or value.strip("0123456789abcdef"):
        raise Invalid(field, f"must be 64 lowercase hex digits, got {short(value)}")
    return value


def _fields(data: dict, name: str, checks: dict[str, Callable[[Any, str], Any]]) -> None:
    """``data[name]``: a dict whose known keys pass their check; the others plain data."""
    record(data[name], name)
    for key, value in data[name].items():
        if key in checks:
            checks[key](value, f"{name}.{key}")
        else:
            plain(value, f"{name}.{key}")


def validate(data: dict, required: tuple[str, ...]) -> ModelConfig:
    """Check every field of a raw checkpoint dict whose ``format`` and ``version`` were checked; the
    model's config back. ``required``: the keys that must be there. Invalid for the first problem."""
    record(data, "")
    for key in required:
        if key not in data:
            raise Invalid("", f"missing {key!r}")
    for key in ("charrnn_version", "torch_version", "created"):
        if key in data:
            text(data[key], key, max_len=200)
    config = _model_config(data["model_config"])
    vocab = text(data["vocab"], "vocab")
    if len(vocab) != config.vocab_size:
        raise Invalid("vocab", f"has {len(vocab)} characters but the model expects {config.vocab_size}")
    if "".join(sorted(set(vocab))) != vocab:
        raise Invalid("vocab", "is not a sorted set of characters")
    tensors = Tensors()
    _weights(data["model"], config, tensors)
    for name, checks in (("train_config", _TRAIN_CONFIG), ("corpus", _CORPUS), ("progress", _PROGRESS)):
        _fields(data, name, checks)
    _history(data["history"])
    for key in ("best_val_loss", "last_train_loss"):
        optional(number)(data.get(key), key)
    if data.get("resume") is not None:
        _resume(data["resume"], config, tensors)
    if "vocab_history" in data:
        _vocab_history(data["vocab_history"], vocab)
    known = set(required) | {"format", "version", "charrnn_version", "torch_version", "created"}
    known |= {"best_val_loss", "last_train_loss", "resume", "vocab_history"}
    for key, value in data.items():
        if key not in known:
            plain(value, key)
    return config


def _model_config(value: Any) -> ModelConfig:
    record(value, "model_config")
    if "cell" in value and not isinstance(value["cell"], str):
        raise Invalid("model_config.cell", f"must be a string, got {_kind(value['cell'])}")
    for key in ("vocab_size", "num_layers", "hidden_size", "embedding_size"):
        if key in value:
            integer(value[key], f"model_config.{key}", 1, MAX_OPTION)
    if "dropout" in value:
        number(value["dropout"], "model_config.dropout", 0.0, 1.0, open_hi=True)
    try:
        return ModelConfig.from_dict(value)
    except ConfigError as exc:
        raise Invalid("model_config", str(exc)) from None


def parameter_count(config: ModelConfig) -> int:
    """The parameters ``config`` implies, computed without building anything (``parameter_shapes``
    builds a table of ``num_layers`` entries)."""
    v, e, h, layers = config.vocab_size, config.embedding_size, config.hidden_size, config.num_layers
    g = GATES[config.cell] * h
    per_layer = g * h + 2 * g  # weight_hh and the two biases
    return v * e + (g * e + per_layer) + (layers - 1) * (g * h + per_layer) + v * h + v


def _weights(value: Any, config: ModelConfig, tensors: Tensors) -> None:
    record(value, "model")
    # 1. Every tensor dense, its own storage, a float dtype: then what it holds is what the file stores.
    for name, tensor in value.items():
        tensors.dense(tensor, f"model.{name[:80]}", dtypes=FLOAT_DTYPES)
    # 2. The size the config implies against those bytes, before any table of num_layers entries.
    implied = parameter_count(config)
    smallest = min(dtype.itemsize for dtype in FLOAT_DTYPES)
    if implied * smallest > tensors.bytes:
        raise Invalid(
            "model",
            f"model_config implies {implied:,} parameters but the file stores only {tensors.bytes:,} bytes of weights",
        )
    # 3. The implied names and shapes, and finite values.
    expected = parameter_shapes(config)
    missing = sorted(set(expected) - set(value))
    if missing:
        raise Invalid("model", f"missing weights: {', '.join(missing[:5])}")
    extra = sorted(set(value) - set(expected))
    if extra:
        raise Invalid("model", f"unexpected weights: {', '.join(e[:80] for e in extra[:5])}")
    for name, shape in expected.items():
        tensors.floats(value[name], f"model.{name}", shape=shape)


def _history(value: Any) -> None:
    record(value, "history")
    lengths = {}
    for key, items in value.items():
        if key not in _HISTORY:
            plain(items, f"history.{key}")
            continue
        items = listing(items, f"history.{key}")
        if not _history_list_fits(key, items):  # then find the first item at fault, and say why
            for i, item in enumerate(items):
                _HISTORY[key](item, f"history.{key}[{i}]")
        lengths[key] = len(items)
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{key} {n}" for key, n in lengths.items())
        raise Invalid("history", f"lists have different lengths ({sizes}); each holds one entry per evaluation")


def _history_list_fits(key: str, items: list) -> bool:
    """The checks of ``_HISTORY[key]`` over a whole list at once (a long run's history holds
    hundreds of thousands of numbers); False if any item may break them."""
    kinds = set(map(type, items))
    if not items:
        return True
    if key == "step":
        return kinds == {int} and 0 <= min(items) and max(items) <= MAX_COUNT
    if not kinds <= {int, float} or (int in kinds and not -(2**63) < min(items) <= max(items) < 2**63):
        return False
    values = np.asarray(items, dtype=np.float64)
    ok = np.isfinite(values) & (values >= 0.0) & (values <= (1e12 if key == "elapsed" else np.inf))
    if key == "train_loss":
        ok |= np.isnan(values)
    return bool(ok.all())


def _vocab_history(value: Any, vocab: str) -> None:
    """Entries {"chars", "step", "date"} whose characters, taken together, are the vocabulary, each once."""
    entries = listing(value, "vocab_history")
    if not entries:
        raise Invalid("vocab_history", "is empty; it lists at least the original vocabulary")
    for i, entry in enumerate(entries):
        where = f"vocab_history[{i}]"
        record(entry, where)
        for key in ("chars", "step", "date"):
            if key not in entry:
                raise Invalid(f"{where}.{key}", "is missing")
        text(entry["chars"], f"{where}.chars", empty=False)
        integer(entry["step"], f"{where}.step")
        text(entry["date"], f"{where}.date", max_len=200)
        for key, item in entry.items():
            if key not in ("chars", "step", "date"):
                plain(item, f"{where}.{key}")
    if "".join(sorted("".join(entry["chars"] for entry in entries))) != vocab:
        raise Invalid("vocab_history", "does not add up to the vocabulary (each character once)")


# -- the resume state ----------------------------------------------------------------------------


def _resume(value: Any, config: ModelConfig, tensors: Tensors) -> None:
    record(value, "resume")
    world_size = integer(value.get("world_size", 1), "resume.world_size", 1, 2**20)
    if "optimizer" in value:
        _optimizer(value["optimizer"], config, tensors)
    if "scaler" in value:
        _scaler(value["scaler"])
    _rank(value, "resume", config, tensors)
    if "ranks" in value:
        ranks = listing(value["ranks"], "resume.ranks")
        if len(ranks) != world_size:
            raise Invalid("resume.ranks", f"has {len(ranks)} entries for a world_size of {world_size}")
        for i, rank in enumerate(ranks):
            record(rank, f"resume.ranks[{i}]")
            _rank(rank, f"resume.ranks[{i}]", config, tensors)
    for key, item in value.items():
        if key not in ("optimizer", "scaler", "rng", "state", "world_size", "ranks"):
            plain(item, f"resume.{key}")


def _rank(value: dict, where: str, config: ModelConfig, tensors: Tensors) -> None:
    """One process's RNG states and carried hidden state."""
    if "rng" in value:
        rng = record(value["rng"], f"{where}.rng")
        for key, state in rng.items():
            field = f"{where}.rng.{key}"
            if key == "torch":
                _torch_rng(tensors.dense(state, field, dtypes={torch.uint8}), field)
            elif key == "cuda":
                tensor = tensors.dense(state, field, dtypes={torch.uint8})
                if tensor.dim() != 1 or tensor.numel() > 64:
                    raise Invalid(field, f"is not a CUDA generator state (shape {tuple(tensor.shape)})")
            else:
                plain(state, field)
    if "state" in value:
        states = listing(value["state"], f"{where}.state")
        if states and len(states) != config.state_tensors:
            raise Invalid(
                f"{where}.state", f"holds {len(states)} tensors; a {config.cell} carries {config.state_tensors}"
            )
        batch = None
        for i, state in enumerate(states):
            field = f"{where}.state[{i}]"
            tensor = tensors.floats(state, field)
            if tensor.dim() != 3 or tensor.shape[0] != config.num_layers or tensor.shape[2] != config.hidden_size:
                raise Invalid(
                    field, f"has shape {tuple(tensor.shape)}, not ({config.num_layers}, batch, {config.hidden_size})"
                )
            if tensor.shape[1] < 1 or batch not in (None, tensor.shape[1]):
                raise Invalid(field, f"has a batch of {tensor.shape[1]} streams, unlike the state before it")
            batch = tensor.shape[1]


def _torch_rng(tensor: torch.Tensor, field: str) -> None:
    try:
        torch.Generator().set_state(tensor)  # a scratch generator: torch's own check of the state
    except (RuntimeError, ValueError, TypeError) as exc:
        raise Invalid(field, f"is not a CPU generator state torch accepts ({str(exc).splitlines()[0][:80]})") from None


_ADAM_GROUP: dict[str, Callable[[Any, str], Any]] = {
    "lr": number,
    "betas": lambda v, f: [number(b, f"{f}[{i}]", 0.0, 1.0) for i, b in enumerate(_pair(v, f))],
    "eps": lambda v, f: number(v, f, 0.0, open_lo=True),
    "weight_decay": number,
    "amsgrad": lambda v, f: _false(v, f),
    "maximize": boolean,
    "foreach": optional(boolean),
    "capturable": lambda v, f: _false(v, f),
    "differentiable": lambda v, f: _false(v, f),
    "fused": optional(boolean),
    "decoupled_weight_decay": boolean,
}
# What Adam's step reads from its group and load_state_dict does not fill in (it sets the flags'
# defaults, not these): without them the first step is a KeyError.
_ADAM_GROUP_REQUIRED = ("lr", "betas", "eps", "weight_decay")


def _pair(value: Any, field: str) -> list:
    items = listing(value, field)
    if len(items) != 2:
        raise Invalid(field, f"must hold two numbers, got {len(items)}")
    return items


def _false(value: Any, field: str) -> None:
    if boolean(value, field):
        raise Invalid(field, "must be false, as charrnn's Adam is built")


def _optimizer(value: Any, config: ModelConfig, tensors: Tensors) -> None:
    """Adam's state dict for the model's parameters, in ``parameter_shapes`` order."""
    where = "resume.optimizer"
    record(value, where)
    shapes = list(parameter_shapes(config).values())
    groups = listing(value.get("param_groups"), f"{where}.param_groups")
    if len(groups) != 1:
        raise Invalid(f"{where}.param_groups", f"must hold one group, got {len(groups)}")
    group = record(groups[0], f"{where}.param_groups[0]")
    params = listing(group.get("params"), f"{where}.param_groups[0].params")
    if [type(p) for p in params] != [int] * len(shapes) or params != list(range(len(shapes))):
        raise Invalid(f"{where}.param_groups[0].params", f"must be the indices 0 to {len(shapes) - 1}")
    for key in _ADAM_GROUP_REQUIRED:
        if key not in group:
            raise Invalid(f"{where}.param_groups[0].{key}", "is missing")
    for key, item in group.items():
        if key in _ADAM_GROUP:
            _ADAM_GROUP[key](item, f"{where}.param_groups[0].{key}")
        elif key != "params":
            plain(item, f"{where}.param_groups[0].{key}")
    state = value.get("state")
    if not isinstance(state, dict):
        raise Invalid(f"{where}.state", f"must be a dict, got {_kind(state)}")
    for index, entry in state.items():
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(shapes):
            raise Invalid(f"{where}.state", f"has a key that is not a parameter index: {short(index)}")
        field = f"{where}.state.{index}"
        record(entry, field)
        for key in ("step", "exp_avg", "exp_avg_sq"):
            if key not in entry:
                raise Invalid(f"{field}.{key}", "is missing")
        step = tensors.floats(entry["step"], f"{field}.step", lo=0.0)
        if step.numel() != 1:
            raise Invalid(f"{field}.step", f"must be one number, got shape {tuple(step.shape)}")
        tensors.floats(entry["exp_avg"], f"{field}.exp_avg", shape=shapes[index])
        tensors.floats(entry["exp_avg_sq"], f"{field}.exp_avg_sq", shape=shapes[index], lo=0.0)
        for key, item in entry.items():
            if key not in ("step", "exp_avg", "exp_avg_sq"):
                plain(item, f"{field}.{key}")


def _scaler(value: Any) -> None:
    """The fp16 grad scaler's state dict (empty when the run had none)."""
    record(value, "resume.scaler")
    checks = {
        "scale": lambda v, f: number(v, f, 0.0, open_lo=True),
        "growth_factor": lambda v, f: number(v, f, 1.0, open_lo=True),
        "backoff_factor": lambda v, f: number(v, f, 0.0, 1.0, open_lo=True),
        "growth_interval": lambda v, f: integer(v, f, 1, MAX_OPTION),
        "_growth_tracker": integer,
    }
    for key, item in value.items():
        (checks.get(key) or plain)(item, f"resume.scaler.{key}")

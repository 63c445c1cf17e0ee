"""The JSON bodies the server accepts, checked field by field before any work is done.

Each check either returns a typed request or raises ``RequestError``, which the server answers with
``{"error": {"message": ..., "field": ...}}`` and the error's status: 400 for a body that is not a
JSON object, 422 for a field that is unknown, of the wrong type or out of range, 404 for an unknown
model. Field names are the Python keywords and ``--flags`` of ``charrnn sample`` (``top_k``,
``num_samples``), and the limits are the server's (``Limits``). No I/O here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from charrnn import features
from charrnn import visualize as viz
from charrnn.data import Vocab
from charrnn.errors import CharRNNError
from charrnn.model import ModelConfig
from charrnn.serve.limits import Limits

MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_UNITS = 64  # (layer, unit) pairs traced per request
MAX_TOP = 50  # units ranked per /v1/units request
# Characters a unit trace or ranking may run over: they go through the network one step at a time
# with every layer's internals kept (charrnn.visualize.run), which is far slower than scoring.
MAX_TRACE_CHARS = 20_000
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
UNIT_FEATURES = ("quote", "line-position", "bracket-depth", "indent", "comment", "word-position")


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx), a one-line ``message`` and the ``field`` at fault."""

    def __init__(self, message: str, field: str | None = None, status: int = 422):
        super().__init__(message)
        self.message, self.field, self.status = message, field, status

    def body(self) -> dict:
        return {"error": {"message": self.message, "field": self.field}}


@dataclass(frozen=True)
class ServedModel:
    """What validation needs to know of a served model: its name, configuration and vocabulary."""

    name: str
    config: ModelConfig
    vocab: Vocab


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    prime: str
    ids: list[int]  # the prime encoded; a newline (or the first character) when the prime is empty
    length: int
    temperature: float
    top_k: int | None
    argmax: bool
    seed: int | None
    stop: list[str]
    num_samples: int
    stream: bool
    surprisal: bool
    units: list[tuple[int, int]]  # (layer from 0, unit from 0)
    what: str


@dataclass(frozen=True)
class ScoreRequest:
    model: str
    text: str
    units: list[tuple[int, int]]
    what: str


@dataclass(frozen=True)
class UnitsRequest:
    model: str
    feature: str
    text: str | None  # None: rank on a sample of the model's own writing
    top: int
    what: str


def parse_json(body: bytes) -> dict:
    """The request body as a JSON object; RequestError (400) if it is not one."""
    try:
        value = json.loads(body.decode("utf-8")) if body.strip() else None
    except UnicodeDecodeError:
        raise RequestError("the body is not UTF-8 text; send a JSON object encoded as UTF-8", None, 400) from None
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"the body is not valid JSON ({exc.msg} at character {exc.pos}); send a JSON object", None, 400
        ) from None
    if not isinstance(value, dict):
        raise RequestError('the body must be a JSON object, such as {"prime": "ROMEO:"}', None, 400)
    return value


def _fields(body: dict, allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            raise RequestError(f"unknown field {key!r}; the fields are {', '.join(allowed)}", key)


def _integer(body: dict, name: str, default: int | None, lo: int, hi: int, nullable: bool = False) -> int | None:
    value = body.get(name, default)
    if value is None and (nullable or default is None):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(f"{name} must be a whole number, got {json.dumps(value)}", name)
    if not lo <= value <= hi:
        raise RequestError(f"{name} must be between {lo} and {hi}, got {value}", name)
    return value


def _boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {json.dumps(value)}", name)
    return value


def _string(body: dict, name: str, default: str | None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a string, got {json.dumps(value)}", name)
    return value


def pick_model(body: dict, models: dict[str, ServedModel]) -> ServedModel:
    """The model a request names (404 if none is served by that name); the first one if it names none."""
    name = body.get("model")
    if name is None:
        return next(iter(models.values()))
    if not isinstance(name, str) or name not in models:
        raise RequestError(
            f"no model named {json.dumps(name)} is served here; GET /v1/models lists them: {', '.join(models)}",
            "model",
            404,
        )
    return models[name]


def _encode(vocab: Vocab, text: str, name: str) -> list[int]:
    try:
        return vocab.encode(text, name).tolist()
    except CharRNNError as exc:
        raise RequestError(str(exc), name) from None


def _units(body: dict, config: ModelConfig) -> tuple[list[tuple[int, int]], str]:
    """``units``: [[layer, unit], ...] with layers from 1 as ``--layer`` takes them; ``what``: the quantity."""
    what = _string(body, "what", viz.default_quantity(config.cell))
    try:
        viz.check_quantity(config.cell, what)
    except CharRNNError as exc:
        raise RequestError(str(exc), "what") from None
    pairs = body.get("units", [])
    if pairs is None:
        pairs = []
    shape_error = RequestError(
        f"units must be a list of [layer, unit] pairs (layer from 1 to {config.num_layers}, unit from 0 to "
        f"{config.hidden_size - 1}), got {json.dumps(pairs)[:80]}",
        "units",
    )
    if not isinstance(pairs, list) or len(pairs) > MAX_UNITS:
        if isinstance(pairs, list):
            raise RequestError(f"units may list at most {MAX_UNITS} pairs, got {len(pairs)}", "units")
        raise shape_error
    out = []
    for pair in pairs:
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        ):
            raise shape_error
        try:
            layer = viz.check_layer(config, pair[0])
            viz.check_units(config, [pair[1]])
        except CharRNNError as exc:
            raise RequestError(str(exc), "units") from None
        out.append((layer, pair[1]))
    return out, what


GENERATE_FIELDS = (
    "model", "prime", "length", "temperature", "top_k", "argmax", "seed", "stop", "num_samples", "stream",
    "surprisal", "units", "what",
)  # fmt: skip


def generate_request(body: dict, models: dict[str, ServedModel], limits: Limits) -> GenerateRequest:
    """``POST /v1/generate``'s body, checked against the model and the server's limits."""
    _fields(body, GENERATE_FIELDS)
    served = pick_model(body, models)
    vocab = served.vocab
    prime = _string(body, "prime", "")
    ids = _encode(vocab, prime, "prime") if prime else [vocab.chars.index("\n") if "\n" in vocab.chars else 0]
    length = _integer(body, "length", min(1000, limits.max_length), 1, limits.max_length)
    temperature = body.get("temperature", 0.8)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
        raise RequestError(f"temperature must be a number, got {json.dumps(temperature)}", "temperature")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise RequestError(
            f'temperature must be greater than 0, got {temperature}; use "argmax": true for greedy decoding',
            "temperature",
        )
    top_k = _integer(body, "top_k", None, 1, len(vocab), nullable=True)
    seed = _integer(body, "seed", None, *SEED_RANGE, nullable=True)
    stop = body.get("stop", [])
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError('stop must be a list of non-empty strings, such as ["\\n\\n"]', "stop")
    if len(stop) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stop):
        raise RequestError(f"stop takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters", "stop")
    units, what = _units(body, served.config)
    assert length is not None, "length has a default"
    num_samples = _integer(body, "num_samples", 1, 1, limits.max_streams)
    assert num_samples is not None, "num_samples has a default"
    return GenerateRequest(
        model=served.name,
        prime=prime,
        ids=ids,
        length=length,
        temperature=float(temperature),
        top_k=top_k,
        argmax=_boolean(body, "argmax", False),
        seed=seed,
        stop=stop,
        num_samples=num_samples,
        stream=_boolean(body, "stream", False),
        surprisal=_boolean(body, "surprisal", False),
        units=units,
        what=what,
    )


def score_request(body: dict, models: dict[str, ServedModel]) -> ScoreRequest:
    """``POST /v1/score``'s body: a text of at least 2 characters the model knows; optional units to trace."""
    _fields(body, ("model", "text", "units", "what"))
    served = pick_model(body, models)
    if "text" not in body:
        raise RequestError("text is required: the text to score", "text")
    text = _string(body, "text", None)
    if len(text) < 2:
        raise RequestError(f"text has {len(text)} character(s); scoring needs at least 2", "text")
    _encode(served.vocab, text, "text")
    units, what = _units(body, served.config)
    if units and len(text) > MAX_TRACE_CHARS:
        raise RequestError(
            f"text has {len(text)} characters; tracing units runs over at most {MAX_TRACE_CHARS} (leave out units to "
            "score a longer text)",
            "text",
        )
    return ScoreRequest(served.name, text, units, what)


def units_request(body: dict, models: dict[str, ServedModel]) -> UnitsRequest:
    """``POST /v1/units``'s body: a feature (as ``visualize --find`` takes it) and optionally the text to rank on."""
    _fields(body, ("model", "feature", "text", "top", "what"))
    served = pick_model(body, models)
    feature = _string(body, "feature", "quote")
    if feature not in features.FEATURES and not feature.startswith("regex:"):
        raise RequestError(
            f"unknown feature {feature!r}; choose one of {', '.join(features.FEATURES)}, or regex:PATTERN", "feature"
        )
    text = body.get("text")
    if text is not None:
        text = _string(body, "text", None)
        if not text:
            raise RequestError("text is empty; leave it out to rank units on the model's own writing", "text")
        if len(text) > MAX_TRACE_CHARS:
            raise RequestError(
                f"text has {len(text)} characters; units are ranked on at most {MAX_TRACE_CHARS}", "text"
            )
        _encode(served.vocab, text, "text")
    top = _integer(body, "top", 10, 1, MAX_TOP)
    assert top is not None, "top has a default"
    _, what = _units({"what": body["what"]} if "what" in body else {}, served.config)
    return UnitsRequest(served.name, feature, text, top, what)

"""Looking inside a trained model: per-character activations, predictions, text features, and the
cells that track them (Karpathy, Johnson & Fei-Fei 2015, "Visualizing and Understanding Recurrent
Networks").

``run`` feeds a text through ``StepModel`` one character at a time from a zero state, in chunks with
the state carried across, and hands each chunk to *probes* that keep only what they need:

- ``CellProbe``         chosen cells of one layer, per character            (N, cells)
- ``PredictionProbe``   the probability of each character and the top-k guesses  (N,), (N, k)
- ``CorrelationProbe``  running sums for Pearson r of every cell with a feature   (layers, H)
- ``GateProbe``         per unit, how often each sigmoid gate is saturated          (layers, H)

so memory grows with the text only for the per-character outputs asked for (a few numbers per
character), never with text x model size.

Positions: the activation at character t is the state *after* reading ``text[t]``; the prediction
at t is the distribution over ``text[t]`` *before* reading it, so position 0 has none. Features
follow the activations: their value at t describes the text up to and including ``text[t]``.
Layers are numbered from 0 here; the CLI numbers them from 1. No I/O and no printing here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from charrnn.data import Vocab
from charrnn.errors import ConfigError, DataError
from charrnn.model import CharRNN, ModelConfig
from charrnn.inference import LayerInternals, StepModel

# What can be recorded per cell type. "c" is shown as tanh(c), as in the paper: c itself is unbounded.
QUANTITIES = {
    "lstm": ("c", "h", "gate:input", "gate:forget", "gate:cell", "gate:output"),
    "gru": ("h", "gate:reset", "gate:update", "gate:candidate"),
    "rnn": ("h",),
}
# The gates squashed by a sigmoid, whose saturation (< 0.1 or > 0.9) the paper studies.
SIGMOID_GATES = {"lstm": ("input", "forget", "output"), "gru": ("reset", "update"), "rnn": ()}
SATURATION = (0.1, 0.9)
CHUNK_SIZE = 512


def default_quantity(cell: str) -> str:
    """tanh(c) for an LSTM (the paper's choice), h otherwise."""
    return "c" if cell == "lstm" else "h"


def check_quantity(cell: str, what: str) -> str:
    """``what`` if the cell type records it, else ConfigError listing the choices."""
    if what not in QUANTITIES[cell]:
        raise ConfigError(
            f"--what {what!r} is not recorded for a {cell.upper()}; choose one of {', '.join(QUANTITIES[cell])}"
        )
    return what


def describe_quantity(what: str) -> str:
    """'tanh(c)', 'h', 'forget gate', ... for labels."""
    if what == "c":
        return "tanh(c)"
    if what.startswith("gate:"):
        return what[5:] + " gate"
    return what


def value_range(what: str) -> tuple[float, float]:
    """The range a quantity lives in: (0, 1) for sigmoid gates, (-1, 1) for tanh(c), h and the rest."""
    gate = what[5:] if what.startswith("gate:") else None
    if gate in ("input", "forget", "output", "reset", "update"):
        return 0.0, 1.0
    return -1.0, 1.0


def check_layer(config: ModelConfig, layer: int) -> int:
    """A layer number as the user gives it (from 1) -> the 0-based index; ConfigError if out of range."""
    if not 1 <= layer <= config.num_layers:
        raise ConfigError(
            f"--layer {layer}: this model has {config.num_layers} layer(s); pass a number from 1 to {config.num_layers}"
        )
    return layer - 1


def check_cells(config: ModelConfig, cells: Iterable[int]) -> list[int]:
    """Unit indices (from 0); ConfigError naming the valid range for any that does not exist."""
    cells = list(cells)
    for cell in cells:
        if not 0 <= cell < config.hidden_size:
            raise ConfigError(
                f"--cell {cell}: each layer has {config.hidden_size} cells; pass a number from 0 to {config.hidden_size - 1}"
            )
    return cells


def encode_text(vocab: Vocab, text: str, source: str) -> np.ndarray:
    """text -> (N,) int64 ids; DataError (naming ``source``) for empty text or unknown characters."""
    if not text:
        raise DataError(f"{source}: the text is empty; pass some text to run the model over")
    vocab.check(text, source)
    return vocab.encode(text).astype(np.int64)


# -- running the model -------------------------------------------------------------------------


class Chunk:
    """A stretch of the text after the model read it: ``ids`` (T,) starting at ``start``, the
    ``logits`` (T, V) output after each character, and each step's per-layer internals."""

    def __init__(self, start: int, ids: np.ndarray, logits: torch.Tensor, steps: list[list[LayerInternals]]):
        self.start, self.ids, self.logits, self._steps = start, ids, logits, steps
        self._cache: dict[tuple[int, str], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def quantity(self, layer: int, what: str) -> torch.Tensor:
        """(T, H) float32 values of ``what`` ('h', 'c' -> tanh(c), 'gate:NAME') in ``layer`` (from 0)."""
        key = (layer, what)
        if key not in self._cache:
            if what == "h":
                rows = [step[layer].h for step in self._steps]
            elif what == "c":
                rows = [step[layer].c for step in self._steps]
            else:
                rows = [step[layer].gates[what[5:]] for step in self._steps]
            values = torch.cat(rows).float()  # each row is (1, H)
            self._cache[key] = values.tanh() if what == "c" else values
        return self._cache[key]


@torch.no_grad()
def run(
    model: CharRNN,
    ids: np.ndarray,
    probes: Iterable,
    *,
    chunk_size: int = CHUNK_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Feed ``ids`` (N,) through ``model`` from a zero state; give each chunk to every probe's ``update``.

    Uses ``StepModel`` (the same weights, the same arithmetic as the fused modules), so memory holds
    one chunk of internals at a time. ``progress(done, total)`` is called after each chunk.
    """
    probes = list(probes)
    stepper = StepModel(model)
    device = stepper.device
    state = stepper.init_state(1)
    ids = np.asarray(ids, dtype=np.int64)  # Vocab.encode gives the smallest unsigned type; gather needs int64
    all_ids = torch.as_tensor(ids, device=device)
    total = len(all_ids)
    for start in range(0, total, chunk_size):
        chunk_ids = all_ids[start : start + chunk_size]
        steps, logits = [], []
        for t in range(len(chunk_ids)):
            internals: list[LayerInternals] = []
            out, state = stepper.step(chunk_ids[t : t + 1], state, internals)
            steps.append(internals)
            logits.append(out)
        chunk = Chunk(start, ids[start : start + chunk_size], torch.cat(logits).float(), steps)
        for probe in probes:
            probe.update(chunk)
        if progress is not None:
            progress(min(start + chunk_size, total), total)


class CellProbe:
    """Keeps the values of ``cells`` of ``layer`` (from 0) for every character: ``values`` (N, len(cells))."""

    def __init__(self, layer: int, what: str, cells: list[int]):
        self.layer, self.what, self.cells = layer, what, list(cells)
        self._parts: list[np.ndarray] = []

    def update(self, chunk: Chunk) -> None:
        self._parts.append(chunk.quantity(self.layer, self.what)[:, self.cells].cpu().numpy())

    @property
    def values(self) -> np.ndarray:
        if not self._parts:
            return np.zeros((0, len(self.cells)), dtype=np.float32)
        return np.concatenate(self._parts)


@dataclass
class Predictions:
    """What the model expected at each position, before reading it. Row 0 has no prediction (NaN, -1).

    prob: (N,) p(text[t] | text[:t]);  top_ids: (N, k) vocabulary indices, most likely first;
    top_probs: (N, k) their probabilities.
    """

    prob: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray

    @property
    def bits(self) -> np.ndarray:
        """(N,) surprisal -log2 p in bits; NaN at position 0."""
        with np.errstate(divide="ignore"):
            return -np.log2(self.prob.astype(np.float64))


class PredictionProbe:
    """Collects ``Predictions``: each character's probability and the model's top-k guesses for it."""

    def __init__(self, k: int = 5):
        self.k = k
        self._pending: torch.Tensor | None = None  # the logits after the previous chunk's last character
        self._prob, self._ids, self._probs = [], [], []

    def update(self, chunk: Chunk) -> None:
        logits, ids = chunk.logits, torch.as_tensor(chunk.ids, device=chunk.logits.device)
        if self._pending is None:  # the first character of the text has no prediction
            k = min(self.k, logits.shape[1])
            self._prob.append(np.array([np.nan], dtype=np.float32))
            self._ids.append(np.full((1, k), -1, dtype=np.int64))
            self._probs.append(np.full((1, k), np.nan, dtype=np.float32))
            before, targets = logits[:-1], ids[1:]
        else:
            before, targets = torch.cat([self._pending, logits[:-1]]), ids
        self._pending = logits[-1:]
        if len(targets):
            probs = torch.softmax(before, dim=1)  # (T, V)
            top = torch.topk(probs, min(self.k, probs.shape[1]), dim=1)
            self._prob.append(probs.gather(1, targets[:, None])[:, 0].cpu().numpy())
            self._ids.append(top.indices.cpu().numpy())
            self._probs.append(top.values.cpu().numpy())

    @property
    def result(self) -> Predictions:
        return Predictions(np.concatenate(self._prob), np.concatenate(self._ids), np.concatenate(self._probs))


class CorrelationProbe:
    """Pearson r of every cell of ``layers`` with ``feature`` (N,), from running sums, in bounded memory.

    Keeps n, sum x, sum x^2, sum xy per cell and sum y, sum y^2 in float64, each shifted by the first
    chunk's mean so that the final ``E[xy] - E[x]E[y]`` does not cancel catastrophically.
    """

    def __init__(self, feature: np.ndarray, what: str, layers: list[int], hidden_size: int):
        self.feature = np.asarray(feature, dtype=np.float64)
        self.what, self.layers = what, list(layers)
        shape = (len(self.layers), hidden_size)
        self.n = 0
        self.sx, self.sxx, self.sxy = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.sy = self.syy = 0.0
        self._shift_x: np.ndarray | None = None
        self._shift_y = 0.0

    def update(self, chunk: Chunk) -> None:
        y = self.feature[chunk.start : chunk.start + len(chunk)]
        x = np.stack([chunk.quantity(layer, self.what).cpu().numpy() for layer in self.layers]).astype(np.float64)
        if self._shift_x is None:  # (L, T, H)
            self._shift_x, self._shift_y = x.mean(axis=1), float(y.mean())
        x = x - self._shift_x[:, None, :]
        y = y - self._shift_y
        self.n += len(y)
        self.sx += x.sum(axis=1)
        self.sxx += np.einsum("lth,lth->lh", x, x)
        self.sxy += np.einsum("lth,t->lh", x, y)
        self.sy += float(y.sum())
        self.syy += float(y @ y)

    @property
    def r(self) -> np.ndarray:
        """(len(layers), H) correlations in [-1, 1]; 0 where a cell or the feature is constant."""
        n = max(self.n, 1)
        mx, my = self.sx / n, self.sy / n
        var_x = np.maximum(self.sxx / n - mx * mx, 0.0)
        var_y = max(self.syy / n - my * my, 0.0)
        cov = self.sxy / n - mx * my
        den = np.sqrt(var_x * var_y)
        # A constant cell (or feature) has no correlation to speak of: 0, not NaN.
        ok = (var_x > 1e-12) & (var_y > 1e-12)
        r = np.divide(cov, den, out=np.zeros_like(cov), where=ok & (den > 0))
        return np.clip(r, -1.0, 1.0)


@dataclass(frozen=True)
class CellScore:
    layer: int  # from 0
    cell: int
    r: float


def rank_cells(r: np.ndarray, layers: list[int], top: int) -> list[CellScore]:
    """The ``top`` cells by |r|, strongest first (ties: lower layer, then lower cell, first)."""
    flat = np.abs(r).ravel()
    order = np.lexsort((np.arange(flat.size), -flat))[:top]  # stable: index breaks ties
    hidden = r.shape[1]
    return [CellScore(layers[i // hidden], int(i % hidden), float(r.flat[i])) for i in order]


@dataclass(frozen=True)
class GateSaturation:
    """For one gate of one layer, per unit: the fraction of characters it was < 0.1 and > 0.9. Each (H,)."""

    layer: int  # from 0
    gate: str
    left: np.ndarray
    right: np.ndarray


class GateProbe:
    """Counts, per unit, how often each sigmoid gate of every layer is left- or right-saturated."""

    def __init__(self, config: ModelConfig):
        self.gates = SIGMOID_GATES[config.cell]
        if not self.gates:
            raise ConfigError("--gates needs an LSTM or GRU checkpoint; a vanilla RNN has no gates")
        self.num_layers = config.num_layers
        shape = (config.num_layers, len(self.gates), config.hidden_size)
        self.left, self.right = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
        self.n = 0

    def update(self, chunk: Chunk) -> None:
        lo, hi = SATURATION
        for layer in range(self.num_layers):
            for g, gate in enumerate(self.gates):
                values = chunk.quantity(layer, f"gate:{gate}")
                self.left[layer, g] += (values < lo).sum(dim=0).cpu().numpy()
                self.right[layer, g] += (values > hi).sum(dim=0).cpu().numpy()
        self.n += len(chunk)

    @property
    def result(self) -> list[GateSaturation]:
        n = max(self.n, 1)
        return [
            GateSaturation(layer, gate, self.left[layer, g] / n, self.right[layer, g] / n)
            for layer in range(self.num_layers)
            for g, gate in enumerate(self.gates)
        ]


# -- text features -----------------------------------------------------------------------------
# Each maps a text of N characters to (N,) float64: the feature's value after reading text[t].


def quote_feature(text: str) -> np.ndarray:
    """1 inside "...": from the opening quote up to (not including) the closing one. A plain toggle."""
    is_quote = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4") == ord('"')
    return (np.cumsum(is_quote) % 2).astype(np.float64)


def line_position_feature(text: str) -> np.ndarray:
    """Characters of the current line read so far: 1 for the first, 2 for the second; 0 after a newline."""
    out = np.zeros(len(text))
    column = 0
    for i, ch in enumerate(text):
        column = 0 if ch == "\n" else column + 1
        out[i] = column
    return out


def bracket_depth_feature(text: str) -> np.ndarray:
    """Nesting depth of (), [] and {} after each character (never below 0 on unbalanced text)."""
    out = np.zeros(len(text))
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        out[i] = depth
    return out


def indent_feature(text: str) -> np.ndarray:
    """Leading spaces and tabs of the current line (each counts 1), as far as read; 0 after a newline."""
    out = np.zeros(len(text))
    indent, leading = 0, True
    for i, ch in enumerate(text):
        if ch == "\n":
            indent, leading = 0, True
        elif leading and ch in " \t":
            indent += 1
        else:
            leading = False
        out[i] = indent
    return out


_LATEX_MARKER = re.compile(r"\\(?:documentclass|begin\{)")


def comment_feature(text: str) -> np.ndarray:
    """1 inside comments. LaTeX ``%`` comments if the text has ``\\documentclass`` or ``\\begin{``;
    otherwise C ``/* ... */`` and ``// ...`` (ignoring those inside "strings" and 'c' literals).

    An opening delimiter counts from its last character (``/*``: the ``*``), a closing one is inside.
    """
    if _LATEX_MARKER.search(text):
        return _latex_comments(text)
    return _c_comments(text)


def _latex_comments(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    inside, prev = False, ""
    for i, ch in enumerate(text):
        if inside and ch == "\n":
            inside = False
        elif not inside and ch == "%" and prev != "\\":
            inside = True
        out[i] = inside
        prev = ch
    return out


def _c_comments(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    state, prev, opened_at = "code", "", -1  # state: code | string | char | line | block
    for i, ch in enumerate(text):
        mark = False
        if state == "code":
            if ch == '"':
                state = "string"
            elif ch == "'":
                state = "char"
            elif prev == "/" and ch == "/":
                state, mark = "line", True
            elif prev == "/" and ch == "*":
                state, mark, opened_at = "block", True, i
        elif state in ("string", "char"):
            if ch == "\\" and prev == "\\":
                ch = ""  # an escaped backslash escapes nothing after it
            elif ch == ('"' if state == "string" else "'") and prev != "\\":
                state = "code"
            elif ch == "\n":
                state = "code"  # an unterminated literal ends with its line
        elif state == "line":
            if ch == "\n":
                state = "code"
            else:
                mark = True
        else:  # block
            mark = True
            if prev == "*" and ch == "/" and i - opened_at >= 2:
                state, ch = "code", ""  # "*/" then "/" must not open a line comment
        out[i] = mark
        prev = ch
    return out


def word_position_feature(text: str) -> np.ndarray:
    """Position in the current word (letters, digits, _): 1 for its first character; 0 between words."""
    out = np.zeros(len(text))
    position = 0
    for i, ch in enumerate(text):
        position = position + 1 if (ch.isalnum() or ch == "_") else 0
        out[i] = position
    return out


def regex_feature(text: str, pattern: str) -> np.ndarray:
    """1 on every character inside a match of ``pattern`` (non-overlapping, as ``re.finditer``)."""
    if not pattern:
        raise ConfigError("--find regex: needs a pattern after the colon, e.g. --find 'regex:[0-9]+'")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--find regex:{pattern}: not a valid regular expression ({exc}); fix the pattern") from None
    out = np.zeros(len(text))
    for match in compiled.finditer(text):
        out[match.start() : match.end()] = 1.0
    return out


FEATURES: dict[str, Callable[[str], np.ndarray]] = {
    "quote": quote_feature,
    "line-position": line_position_feature,
    "bracket-depth": bracket_depth_feature,
    "indent": indent_feature,
    "comment": comment_feature,
    "word-position": word_position_feature,
}


def feature_values(name: str, text: str) -> np.ndarray:
    """The feature ``name`` (one of FEATURES, or ``regex:PATTERN``) over ``text``: (N,) float64.

    ConfigError for an unknown name or bad pattern; DataError if the feature is constant over the
    text (no correlation is defined then).
    """
    if name.startswith("regex:"):
        values = regex_feature(text, name[len("regex:") :])
    elif name in FEATURES:
        values = FEATURES[name](text)
    else:
        raise ConfigError(
            f"unknown --find feature {name!r}; choose one of {', '.join(FEATURES)}, or regex:PATTERN"
        )
    if len(values) and math.isclose(float(values.min()), float(values.max())):
        raise DataError(
            f"--find {name}: the feature is {values[0]:g} at every character of this text, so nothing can "
            "correlate with it; pass a text where it varies (e.g. one with quotes for 'quote')"
        )
    return values


def feature_window(values: np.ndarray, width: int) -> tuple[int, int]:
    """A ``width``-character window that starts a little before the feature first changes."""
    n = len(values)
    changes = np.flatnonzero(values != values[0]) if n else np.array([], dtype=int)
    start = max(0, int(changes[0]) - width // 4) if len(changes) else 0
    start = max(0, min(start, n - width))
    return start, min(n, start + width)

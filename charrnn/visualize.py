"""Looking inside a trained model: run it over a text and record, per character, what its units and
gates computed and what it predicted (Karpathy, Johnson & Fei-Fei 2015, "Visualizing and Understanding
Recurrent Networks").

``run`` feeds a text through ``StepModel`` one character at a time from a zero state, in chunks with
the state carried across, and hands each chunk to *probes* that keep only what they need:

- ``UnitProbe``         chosen units of one layer, per character                  (N, units)
- ``PredictionProbe``   the probability of each character and the top-k guesses   (N,), (N, k)
- ``CorrelationProbe``  running sums for Pearson r of every unit with a feature   (layers, H)
- ``GateProbe``         per unit, how often each sigmoid gate is saturated        (layers, H)

so memory grows with the text only for the per-character outputs asked for (a few numbers per
character), never with text x model size. The features themselves are in ``charrnn.features``.

A *unit* is one of the ``hidden_size`` components of a layer's state (the paper's "cell"; here "cell"
is only the cell type, lstm/gru/rnn). Positions: the activation at character t is the state *after*
reading ``text[t]``; the prediction at t is the distribution over ``text[t]`` *before* reading it, so
position 0 has none. Layers are numbered from 0 here, except in ``check_layer``, which takes the
number a user gives (from 1). No I/O and no printing here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.data import Vocab
from charrnn.errors import ConfigError, DataError, option
from charrnn.inference import LayerInternals, StepModel
from charrnn.model import CharRNN, ModelConfig

# What can be recorded per cell type. "c" is shown as tanh(c), as in the paper: c itself is unbounded.
# "gate:g" is the LSTM's candidate (tanh) gate, the g in c' = f*c + i*g.
QUANTITIES = {
    "lstm": ("c", "h", "gate:input", "gate:forget", "gate:g", "gate:output"),
    "gru": ("h", "gate:reset", "gate:update", "gate:candidate"),
    "rnn": ("h",),
}
# The gates squashed by a sigmoid, whose saturation (< 0.1 or > 0.9) the paper studies.
SIGMOID_GATES = {"lstm": ("input", "forget", "output"), "gru": ("reset", "update"), "rnn": ()}
SATURATION = (0.1, 0.9)
CHUNK_CHARS = 512  # characters per chunk: the internals of one chunk are in memory at a time


def default_quantity(cell: str) -> str:
    """tanh(c) for an LSTM (the paper's choice), h otherwise."""
    return "c" if cell == "lstm" else "h"


def check_quantity(cell: str, what: str) -> str:
    """``what`` if the cell type records it, else ConfigError listing the choices."""
    if what not in QUANTITIES[cell]:
        raise ConfigError(
            f"{option('what', what)} is not recorded for {'a GRU' if cell == 'gru' else 'an ' + cell.upper()}; "
            f"choose one of {', '.join(QUANTITIES[cell])}"
        )
    return what


def describe_quantity(what: str) -> str:
    """'tanh(c)', 'h', 'forget gate', 'g (candidate) gate', ... for labels."""
    if what == "c":
        return "tanh(c)"
    if what == "gate:g":
        return "g (candidate) gate"
    if what.startswith("gate:"):
        return what[5:] + " gate"
    return what


def value_range(what: str) -> tuple[float, float]:
    """The range a quantity lives in: (0, 1) for sigmoid gates, (-1, 1) for tanh(c), h and the tanh gates."""
    sigmoid = {gate for gates in SIGMOID_GATES.values() for gate in gates}
    if what.startswith("gate:") and what[5:] in sigmoid:
        return 0.0, 1.0
    return -1.0, 1.0


def check_layer(config: ModelConfig, layer: int) -> int:
    """A layer number as the user gives it (from 1) -> the 0-based index; ConfigError if out of range."""
    if not 1 <= layer <= config.num_layers:
        raise ConfigError(
            f"{option('layer', layer)}: this model has {config.num_layers} layer(s); "
            f"pass a number from 1 to {config.num_layers}"
        )
    return layer - 1


def check_units(config: ModelConfig, units: Iterable[int]) -> list[int]:
    """Unit indices (from 0) within a layer; ConfigError naming the valid range for any that does not exist."""
    units = list(units)
    for unit in units:
        if not 0 <= unit < config.hidden_size:
            raise ConfigError(
                f"{option('unit', unit)}: each layer has {config.hidden_size} units; "
                f"pass a number from 0 to {config.hidden_size - 1}"
            )
    return units


def encode_text(vocab: Vocab, text: str, source: str) -> np.ndarray:
    """text -> (N,) int64 ids; DataError (naming ``source``) for empty text or unknown characters."""
    if not text:
        raise DataError(f"{source}: the text is empty; pass some text to run the model over")
    return vocab.encode(text, source).astype(np.int64)


# -- running the model -------------------------------------------------------------------------


def _recorded(internals: LayerInternals, what: str) -> torch.Tensor:
    """One step's ``what`` ('h', 'c', 'gate:NAME') of one layer; ValueError if the cell has no such
    quantity (``check_quantity`` keeps that from happening)."""
    if what == "h":
        return internals.h
    found = internals.c if what == "c" else None if internals.gates is None else internals.gates[what[5:]]
    if found is None:
        raise ValueError(f"this cell records no {what!r}; check_quantity lists what it records")
    return found


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
            rows = [_recorded(step[layer], what) for step in self._steps]
            values = torch.cat(rows).float()  # each row is (1, H)
            self._cache[key] = values.tanh() if what == "c" else values
        return self._cache[key]


@torch.no_grad()
def run(
    model: CharRNN,
    ids: np.ndarray,
    probes: Iterable,
    *,
    chunk_chars: int = CHUNK_CHARS,
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
    for start in range(0, total, chunk_chars):
        chunk_ids = all_ids[start : start + chunk_chars]
        steps, logits = [], []
        for t in range(len(chunk_ids)):
            internals: list[LayerInternals] = []
            out, state = stepper.step(chunk_ids[t : t + 1], state, internals)
            steps.append(internals)
            logits.append(out)
        chunk = Chunk(start, ids[start : start + chunk_chars], torch.cat(logits).float(), steps)
        for probe in probes:
            probe.update(chunk)
        if progress is not None:
            progress(min(start + chunk_chars, total), total)


class UnitProbe:
    """Keeps the values of ``units`` of ``layer`` (from 0) for every character: ``values`` (N, len(units))."""

    def __init__(self, layer: int, what: str, units: list[int]):
        self.layer, self.what, self.units = layer, what, list(units)
        self._parts: list[np.ndarray] = []

    def update(self, chunk: Chunk) -> None:
        self._parts.append(chunk.quantity(self.layer, self.what)[:, self.units].cpu().numpy())

    @property
    def values(self) -> np.ndarray:
        if not self._parts:
            return np.zeros((0, len(self.units)), dtype=np.float32)
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
        self._prob: list[np.ndarray] = []  # per chunk: (T,) probabilities of the characters read
        self._ids: list[np.ndarray] = []  # (T, k) the top-k guesses
        self._probs: list[np.ndarray] = []  # (T, k) their probabilities

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
    """Pearson r of every unit of ``layers`` with ``feature`` (N,), from running sums, in bounded memory.

    Keeps n, sum x, sum x^2, sum xy per unit and sum y, sum y^2 in float64, each shifted by the first
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
        """(len(layers), H) correlations in [-1, 1]; 0 where a unit or the feature is constant."""
        n = max(self.n, 1)
        mx, my = self.sx / n, self.sy / n
        var_x = np.maximum(self.sxx / n - mx * mx, 0.0)
        var_y = max(self.syy / n - my * my, 0.0)
        cov = self.sxy / n - mx * my
        den = np.sqrt(var_x * var_y)
        # A constant unit (or feature) has no correlation to speak of: 0, not NaN.
        ok = (var_x > 1e-12) & (var_y > 1e-12)
        r = np.divide(cov, den, out=np.zeros_like(cov), where=ok & (den > 0))
        return np.clip(r, -1.0, 1.0)


@dataclass(frozen=True)
class UnitScore:
    """How closely one unit tracks a feature: Pearson ``r`` in [-1, 1]."""

    layer: int  # from 0
    unit: int
    r: float


def rank_units(r: np.ndarray, layers: list[int], top: int) -> list[UnitScore]:
    """The ``top`` units of ``r`` (len(layers), H) by |r|, strongest first (ties: lower layer, then lower unit)."""
    flat = np.abs(r).ravel()
    order = np.lexsort((np.arange(flat.size), -flat))[:top]  # stable: index breaks ties
    hidden = r.shape[1]
    return [UnitScore(layers[i // hidden], int(i % hidden), float(r.flat[i])) for i in order]


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
            raise ConfigError(f"{option('gates')} needs an LSTM or GRU checkpoint; a vanilla RNN has no gates")
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

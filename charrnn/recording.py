"""What one ``charrnn visualize`` run records (``record`` -> ``Recording``), and its JSON and HTML forms.

``record`` checks the options against the model, runs it over the text once with the probes they need
(``charrnn.visualize``) and, with ``find``, a second time to record only the best units, so memory stays
bounded. The terminal views (in the CLI), ``to_json`` and ``to_html`` are all made from the one
``Recording``. Layers are numbered from 1 in the options, as a user gives them, and from 0 in
``Trace.layer``. No printing here; ``to_html`` returns the page and the caller writes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn import colours, html_report
from charrnn import visualize as viz
from charrnn.data import Vocab
from charrnn.features import feature_values
from charrnn.model import CharRNN, ModelConfig


@dataclass(frozen=True)
class Trace:
    """One unit's values at every character, (N,) in the quantity's own range; ``r`` for a found unit."""

    layer: int  # from 0
    unit: int
    values: np.ndarray
    r: float | None = None


@dataclass(frozen=True)
class FoundTrace(Trace):
    """A unit found to track the feature: a Trace whose ``r`` (Pearson, with the feature) is always there."""

    r: float


@dataclass
class Recording:
    """What one run over a text recorded: all that the views, the JSON and the page show."""

    text: str  # the text the model read (at most max_chars of the source)
    source: str  # where the text came from, for labels: a path, "--string", "--sample N"
    source_n_chars: int | None  # the source's length before max_chars (None: not read to its end)
    checkpoint: str  # for labels; "" if unknown
    config: ModelConfig
    vocab: Vocab
    what: str  # the quantity recorded: "c" (shown as tanh(c)), "h" or "gate:NAME"
    units: list[Trace]  # the asked-for units, in the order given
    found: list[FoundTrace]  # the units that track ``feature`` best, strongest |r| first
    predictions: viz.Predictions
    feature: str | None = None
    feature_values: np.ndarray | None = None  # (N,)
    gates: list[viz.GateSaturation] | None = None

    @property
    def mean_bits(self) -> float:
        """Mean surprisal in bits/char over the characters that have a prediction (NaN for one character)."""
        bits = self.predictions.bits[1:]
        return float(bits.mean()) if len(bits) else float("nan")

    def positions(self, trace: Trace) -> np.ndarray:
        """(N,) positions of ``trace`` on the diverging colour scale, the quantity's range mapped to -1..1."""
        return colours.scale_values(trace.values, *viz.value_range(self.what))


def check_options(
    config: ModelConfig,
    *,
    what: str | None = None,
    units: Iterable[int] = (),
    layer: int | None = None,
    gates: bool = False,
) -> tuple[str, list[int], int | None]:
    """``record``'s options checked against a model's config, before any work: (the quantity, defaulted;
    the units; the layer index from 0, or None). ConfigError naming the option that does not fit."""
    what = viz.check_quantity(config.cell, what or viz.default_quantity(config.cell))
    chosen = viz.check_layer(config, layer) if layer is not None else None
    units = viz.check_units(config, units)
    if gates:
        viz.GateProbe(config)  # refuses a vanilla RNN, which has no gates to count
    return what, units, chosen


def record(
    model: CharRNN,
    vocab: Vocab,
    text: str,
    *,
    what: str | None = None,
    units: Iterable[int] = (),
    layer: int | None = None,
    find: str | None = None,
    top: int = 10,
    gates: bool = False,
    max_chars: int | None = None,
    source: str = "text",
    checkpoint: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> Recording:
    """Run ``model`` over ``text`` (its first ``max_chars`` characters) and record what the options ask for.

    ``what``: the quantity (default: c for an LSTM, h otherwise); ``units``: unit indices from 0 in
    ``layer`` (from 1; default the last); ``find``: a feature name whose best ``top`` units to rank,
    in ``layer`` or every layer; ``gates``: gate saturation. Predictions are always recorded.
    ``progress(done, total)`` is called after each chunk of each pass. ConfigError or DataError
    (naming ``source``) for an option or text that does not fit the model.
    """
    cfg = model.config
    what, units, chosen = check_options(cfg, what=what, units=units, layer=layer, gates=gates)
    gate_probe = viz.GateProbe(cfg) if gates else None
    source_n_chars = len(text)
    text = text if max_chars is None else text[:max_chars]
    ids = viz.encode_text(vocab, text, source)
    values = feature_values(find, text) if find else None

    # One pass for everything but the found units, which a second pass records once they are known.
    unit_layer = chosen if chosen is not None else cfg.num_layers - 1
    unit_probe = viz.UnitProbe(unit_layer, what, units) if units else None
    prediction_probe = viz.PredictionProbe(k=5)
    search_layers = [chosen] if chosen is not None else list(range(cfg.num_layers))
    corr_probe = viz.CorrelationProbe(values, what, search_layers, cfg.hidden_size) if values is not None else None
    probes = [p for p in (unit_probe, prediction_probe, corr_probe, gate_probe) if p is not None]
    viz.run(model, ids, probes, progress=progress)
    found: list[FoundTrace] = []
    if corr_probe is not None:
        found = _record_found(model, ids, what, viz.rank_units(corr_probe.r, search_layers, top), progress)
    asked = [] if unit_probe is None else [Trace(unit_layer, u, unit_probe.values[:, i]) for i, u in enumerate(units)]
    return Recording(
        text,
        source,
        source_n_chars,
        checkpoint,
        cfg,
        vocab,
        what,
        units=asked,
        found=found,
        predictions=prediction_probe.result,
        feature=find,
        feature_values=values,
        gates=gate_probe.result if gate_probe is not None else None,
    )


def _record_found(model, ids, what, ranking: list[viz.UnitScore], progress) -> list[FoundTrace]:
    """The second pass: per-character values of the ranked units only, in ranking order."""
    by_layer: dict[int, list[int]] = {}
    for score in ranking:
        by_layer.setdefault(score.layer, []).append(score.unit)
    probes = {layer: viz.UnitProbe(layer, what, units) for layer, units in by_layer.items()}
    viz.run(model, ids, probes.values(), progress=progress)
    return [
        FoundTrace(s.layer, s.unit, probes[s.layer].values[:, by_layer[s.layer].index(s.unit)], s.r) for s in ranking
    ]


# -- JSON and HTML -----------------------------------------------------------------------------


def _rounded(values: np.ndarray, digits: int = 4) -> list:
    return [None if not np.isfinite(v) else round(float(v), digits) for v in values]


def to_json(rec: Recording) -> dict:
    """The ``--json`` object: the text, the units (values rounded to 4 decimals), predictions, find, gates.

    ``units`` holds the asked-for units, then the found ones (with their ``r``); ``find`` and ``gates``
    appear only when recorded. Position 0 has ``null`` predictions.
    """
    cfg, preds = rec.config, rec.predictions
    units = [{"layer": t.layer + 1, "unit": t.unit, "what": rec.what, "values": _rounded(t.values)} for t in rec.units]
    units += [
        {"layer": t.layer + 1, "unit": t.unit, "what": rec.what, "r": round(t.r, 4), "values": _rounded(t.values)}
        for t in rec.found
    ]
    top = [
        None if ids[0] < 0 else [[rec.vocab.chars[int(i)], round(float(p), 4)] for i, p in zip(ids, probs)]
        for ids, probs in zip(preds.top_ids, preds.top_probs)
    ]
    result = {
        "checkpoint": rec.checkpoint,
        "source": rec.source,
        "n_chars": len(rec.text),
        "source_n_chars": rec.source_n_chars,
        "model": {"cell": cfg.cell, "num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size},
        "text": rec.text,
        "what": rec.what,
        "units": units,
        "predictions": {
            "prob": _rounded(preds.prob, 5),
            "surprisal_bits": _rounded(preds.bits, 3),
            "bits": _rounded(preds.bits, 3),  # deprecated (1.0): surprisal_bits
            "top": top,
        },
    }
    if rec.feature:
        result["find"] = {
            "feature": rec.feature,
            "what": rec.what,
            "ranking": [{"layer": t.layer + 1, "unit": t.unit, "r": round(t.r, 4)} for t in rec.found],
        }
    if rec.gates is not None:
        result["gates"] = [
            {"layer": g.layer + 1, "gate": g.gate, "left": _rounded(g.left), "right": _rounded(g.right)}
            for g in rec.gates
        ]
    return result


def to_html(rec: Recording) -> str:
    """The ``--html`` page: one view per asked-for unit, per found unit, the feature itself, then surprisal."""
    lo, hi = viz.value_range(rec.what)
    quantity = viz.describe_quantity(rec.what)

    def view(t: Trace, note: str = "") -> html_report.View:
        label = f"layer {t.layer + 1}, unit {t.unit}, {quantity}{note}"
        return html_report.View(f"L{t.layer + 1} #{t.unit} {quantity}", label, rec.positions(t), "diverging", lo, hi)

    views = [view(t) for t in rec.units]
    find = None
    if rec.found:
        if rec.feature is None or rec.feature_values is None:
            raise ValueError("a Recording with found units needs the feature they were found for and its values")
        rows = [(viz.UnitScore(t.layer, t.unit, t.r), len(views) + i) for i, t in enumerate(rec.found)]
        views += [view(t, f", r = {t.r:+.3f} with {rec.feature}") for t in rec.found]
        fmin, fmax = float(rec.feature_values.min()), float(rec.feature_values.max())
        views.append(
            html_report.View(
                f"feature {rec.feature}",
                f"the feature itself: {rec.feature}",
                colours.scale_values(rec.feature_values, fmin, fmax, "sequential"),
                "sequential",
                fmin,
                fmax,
            )
        )
        find = (rec.feature, rows)
    views.append(html_report.surprisal_view(rec.predictions))
    cfg = rec.config
    meta = [
        f"checkpoint {rec.checkpoint}: {cfg.cell.upper()}, {cfg.num_layers} layer(s) x {cfg.hidden_size} units",
        f"text: {rec.source}, {len(rec.text):,} characters"
        + (f", {rec.mean_bits:.3f} bits/char" if len(rec.text) > 1 else ""),
    ]
    title = f"charrnn visualize: {Path(rec.checkpoint).name}" if rec.checkpoint else "charrnn visualize"
    return html_report.render_page(
        rec.text,
        title=title,
        meta=meta,
        views=views,
        vocab=rec.vocab.chars,
        predictions=rec.predictions,
        find=find,
        gates=rec.gates,
    )

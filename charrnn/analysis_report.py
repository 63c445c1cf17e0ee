"""The HTML pages of ``charrnn analyze``: the gradient-flow chart (an SVG, log scale, one curve per
model, layer and state) and the per-class comparison with an n-gram, its text coloured by the model's
gain (built on ``charrnn.html_report``'s page). Self-contained, no network; returns strings.
"""

from __future__ import annotations

import html
import math

import numpy as np

from charrnn.colours import colour, text_colour
from charrnn.gradflow import GradientFlow
from charrnn.html_report import _CSS, View, render_page
from charrnn.wins import Group, Wins

# Colour per model (checkpoint), from the same family as the gate colours of the visualize page.
SERIES = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
DASHES = ("", "6 3", "2 3", "8 3 2 3")  # per layer
GAIN_MAX_BITS = 4.0  # the ends of the gain scale: the model 4 bits better (red) or worse (blue)


def _log_ticks(lo: float, hi: float) -> list[int]:
    return list(range(math.floor(lo), math.ceil(hi) + 1))


def _k_ticks(steps: int) -> list[int]:
    """0 and multiples of a round step (1, 2 or 5 times a power of ten) up to ``steps``: at most 7."""
    unit = 1
    for power in range(12):
        for m in (1, 2, 5):
            unit = m * 10**power
            if steps // unit <= 6:
                return list(range(0, steps + 1, unit))
    return [0, steps]


def gradflow_svg(flows: list[tuple[str, GradientFlow]], width: int = 760, height: int = 380) -> str:
    """The chart: x = k (steps back), y = log10 of the mean gradient norm; solid h, dotted c."""
    left, right, top, bottom = 64, 16, 16, 44
    series = []  # (label, colour, dash, values)
    for i, (label, flow) in enumerate(flows):
        for layer in flow.layers:
            tag = f"{label}, layer {layer.layer + 1}"
            dash = DASHES[layer.layer % len(DASHES)]
            series.append((f"{tag}, h", SERIES[i % len(SERIES)], dash, layer.h, 2.0))
            if layer.c is not None:
                series.append((f"{tag}, c", SERIES[i % len(SERIES)], dash, layer.c, 1.0))
    positive = np.concatenate([s[3][s[3] > 0] for s in series] or [np.ones(1)])
    lo, hi = math.log10(positive.min()), math.log10(positive.max())
    if hi - lo < 1:
        lo, hi = lo - 0.5, hi + 0.5
    steps = max(flow.steps for _, flow in flows)
    span_x, span_y = width - left - right, height - top - bottom

    def xy(k: int, v: float) -> str:
        return f"{left + k / steps * span_x:.1f} {top + (hi - math.log10(v)) / (hi - lo) * span_y:.1f}"

    out = [
        f'<svg viewBox="0 0 {width} {height}" width={width} height={height} role=img>'
        "<title>mean gradient norm of the loss with respect to the state k steps back</title>",
        f'<path d="M{left} {top}V{top + span_y}H{left + span_x}" stroke="#888" fill=none />',
    ]
    ticks = [tick for tick in _log_ticks(lo, hi) if lo <= tick <= hi]
    every = 1 if len(ticks) <= 12 else 2 if len(ticks) <= 24 else 5  # a label per decade, or fewer
    for tick in ticks:
        if tick % every == 0:
            y = top + (hi - tick) / (hi - lo) * span_y
            out.append(f'<path d="M{left} {y:.1f}h{span_x}" stroke="#eee" />')
            out.append(f"<text x={left - 6} y={y + 3:.1f} text-anchor=end>1e{tick}</text>")
    for k in _k_ticks(steps):
        x = left + k / steps * span_x
        out.append(f"<text x={x:.1f} y={top + span_y + 14} text-anchor=middle>{k}</text>")
    out.append(
        f"<text x={left + span_x / 2:.0f} y={height - 8} text-anchor=middle>k: steps back from the loss</text>"
        f'<text transform="translate(14 {top + span_y / 2:.0f}) rotate(-90)" text-anchor=middle>'
        "mean ‖d loss_t / d state_(t−k)‖</text>"
    )
    for label, stroke, dash, values, width_px in series:
        d, pen = [], "M"
        for k, v in enumerate(values):
            if v > 0 and math.isfinite(v):
                d.append(f"{pen}{xy(k, v)}")
                pen = "L"
            else:
                pen = "M"  # a zero gradient has no place on a log scale: a gap
        dasharray = f' stroke-dasharray="{dash}"' if dash else ""
        opacity = "" if label.endswith(", h") else " opacity=.6"
        out.append(
            f'<path d="{"".join(d)}" stroke="{stroke}" stroke-width={width_px}{dasharray}{opacity} fill=none>'
            f"<title>{html.escape(label)}</title></path>"
        )
    out.append("</svg>")
    legend = "".join(
        f'<li><svg width=36 height=10><path d="M0 5h36" stroke="{stroke}" stroke-width={w}'
        + (f' stroke-dasharray="{dash}"' if dash else "")
        + f" /></svg> {html.escape(label)}</li>"
        for label, stroke, dash, _, w in series
    )
    return "".join(out) + f"<ul class=legend>{legend}</ul>"


def _gradflow_table(flows: list[tuple[str, GradientFlow]]) -> str:
    rows = [
        "<table><tr><th>model<th>layer<th>σmax(W_hh)<th>per gate block<th>mean gates"
        "<th>‖∂L/∂h‖ at k=1<th>at k=K<th>ratio</tr>"
    ]
    for label, flow in flows:
        for layer in flow.layers:
            blocks = ", ".join(f"{name} {value:.2f}" for name, value in layer.sigma_max_blocks.items())
            gates = ", ".join(f"{name} {value:.2f}" for name, value in layer.gates.items()) or "–"
            first, last = layer.h[min(1, flow.steps)], layer.h[-1]
            ratio = f"{last / first:.2g}" if first > 0 else "–"
            rows.append(
                f"<tr><td>{html.escape(label)}<td>{layer.layer + 1}<td>{layer.sigma_max:.3f}<td>{blocks}"
                f"<td>{gates}<td>{first:.3g}<td>{last:.3g}<td>{ratio}</tr>"
            )
    return "".join(rows) + "</table>"


def gradflow_page(flows: list[tuple[str, GradientFlow]], meta: list[str]) -> str:
    """A page with the chart and the table of singular values and gates."""
    title = "Gradient flow through time"
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width,initial-scale=1">',
            f"<title>{title}</title><style>{_CSS}.legend{{list-style:none;padding:0;columns:2}}</style></head><body>",
            f"<h1>{title}</h1>",
            *(f"<p class=meta>{html.escape(line)}</p>" for line in meta),
            "<p class=note>How strongly the loss at character t depends on each layer's state k characters "
            "earlier: the mean norm of its gradient, on a log scale (solid: h; thin: an LSTM's cell state c; "
            "dash pattern: the layer). A straight falling line is the vanishing gradient of the lecture.</p>",
            gradflow_svg(flows),
            _gradflow_table(flows),
            "</body></html>",
        ]
    )


def _gain_cell(bits: float) -> str:
    rgb = colour("diverging", bits / GAIN_MAX_BITS)
    return f'<td style="background:rgb{rgb};color:rgb{text_colour(rgb)}">{bits:+.3f}'


def _groups_table(title: str, groups: list[Group], order: int, escape) -> str:
    rows = [
        f"<section><h2>{html.escape(title)}</h2><table><tr><th>characters<th>n<th>model bits"
        f"<th>{order}-gram bits<th>gain<th>model errors<th>{order}-gram errors</tr>"
    ]
    for g in groups:
        rows.append(
            f"<tr><td><code>{html.escape(escape(g.name))}</code><td>{g.n_chars:,}<td>{g.model_bits:.3f}"
            f"<td>{g.ngram_bits:.3f}{_gain_cell(g.gain_bits)}<td>{g.model_errors:,}<td>{g.ngram_errors:,}</tr>"
        )
    return "".join(rows) + "</table></section>"


def wins_page(wins: Wins, vocab: str, meta: list[str], escape) -> str:
    """The text coloured by the model's gain per character (views for each model's surprisal too),
    above it the per-class and per-character tables. ``escape`` spells a character for a table."""
    n = f"{wins.order}-gram"
    gain = wins.gain_bits
    views = [
        View(
            name="gain (bits)",
            label=f"the model's gain over the {n}: its bits minus the model's (red: the model did better)",
            values=np.clip(gain / GAIN_MAX_BITS, -1, 1),
            kind="diverging",
            lo=-GAIN_MAX_BITS,
            hi=GAIN_MAX_BITS,
        ),
        View(
            name="model surprisal",
            label="the model's surprisal (0 .. 8+ bits)",
            values=wins.model_nats / math.log(2) / 8,
            kind="sequential",
            lo=0.0,
            hi=8.0,
        ),
        View(
            name=f"{n} surprisal",
            label=f"the {n}'s surprisal (0 .. 8+ bits)",
            values=wins.ngram_nats / math.log(2) / 8,
            kind="sequential",
            lo=0.0,
            hi=8.0,
        ),
    ]
    o = wins.overall
    summary = (
        f"<section><h2>Overall</h2><p>{o.n_chars:,} characters: the model {o.model_bits:.3f} bits/char, "
        f"the {n} {o.ngram_bits:.3f} ({o.gain_bits:+.3f} for the model); errors (p &lt; 0.5): the model "
        f"{o.model_errors:,}, the {n} {o.ngram_errors:,}.</p></section>"
    )
    sections = [
        summary,
        _groups_table("Per class, by the model's gain", wins.classes, wins.order, escape),
        _groups_table("The most frequent characters, by the model's gain", wins.top_chars, wins.order, escape),
    ]
    return render_page(
        wins.text,
        title=f"Where the model wins over a {n}",
        meta=meta,
        views=views,
        vocab=vocab,
        predictions=wins.predictions,
        sections=sections,
    )

"""One self-contained HTML page showing what ``charrnn visualize`` recorded: no network, no external
scripts or fonts; inline CSS and JS only. Returns a string; the caller writes it.

Layout of the page::

    header      title, meta lines, a <select> of views (units, surprisal) and a colour legend
    #text       one <span> per character, nothing else in it: the colours are set by the script
    #find       (with --find) the ranked units; clicking a row shows that unit
    #gates      (with --gates) an SVG scatter per layer: left vs right saturation, one dot per unit
    #data       <script type="application/json">: views and predictions as base64 byte arrays

Per character the page carries ~14 bytes of markup plus, base64-encoded, 1 byte per view (int8
colour position, -128 = none) and 11 bytes of predictions (the surprisal and the top-5 guesses,
each guess as a vocabulary index and a surprisal in 1/16 bit), so 20,000 characters stay well under
a megabyte. Hovering a character shows the tooltip; opening the page with ``#selftest`` (or
``#selftest=T``) hovers character T itself and copies the tooltip into ``#selftest``, which is how
the browser test checks the page without a mouse.

The colour scales come from ``charrnn.colours``, which the terminal view shares; the page's script
interpolates the same anchors.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass

import numpy as np

from charrnn.colours import MAPS, SURPRISAL_MAX_BITS, colour, surprisal_positions, text_colour
from charrnn.data import escape_char
from charrnn.visualize import GateSaturation, Predictions, UnitScore

GATE_COLOURS = {"input": "#2ca02c", "forget": "#1f77b4", "output": "#d62728", "reset": "#9467bd", "update": "#ff7f0e"}
_NONE = -128  # int8 colour position meaning "no value here"
_NO_PREDICTION = 255  # uint8 surprisal code meaning "no prediction" (position 0)


@dataclass
class View:
    """One way of colouring the text. ``values`` (N,) are positions on the ``kind`` scale (NaN = none);
    ``lo`` and ``hi`` are what the ends of the scale stand for, shown in the legend and tooltip."""

    name: str  # short, for the tooltip: "L2 #117 tanh(c)"
    label: str  # for the selector: "layer 2, unit 117, tanh(c), r = +0.93"
    values: np.ndarray
    kind: str = "diverging"
    lo: float = -1.0
    hi: float = 1.0


def surprisal_view(predictions: Predictions) -> View:
    """The view that colours each character by its surprisal, 0 (white) to SURPRISAL_MAX_BITS or more (red)."""
    bits = predictions.bits
    return View(
        name="surprisal",
        label=f"surprisal: how unexpected each character was (0 .. {SURPRISAL_MAX_BITS:g}+ bits)",
        values=surprisal_positions(bits),
        kind="sequential",
        lo=0.0,
        hi=SURPRISAL_MAX_BITS,
    )


def glyph(ch: str) -> str:
    """How a character appears in the page: newline as '↵' and a real break, tab as '→' and a tab."""
    if ch == "\n":
        return "↵\n"
    if ch == "\t":
        return "→\t"
    if ch == "\r":
        return "␍"
    return ch if ch.isprintable() or ch == " " else escape_char(ch)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _quantise(values: np.ndarray) -> np.ndarray:
    """Scale positions (-1..1) -> int8, NaN -> -128."""
    v = np.asarray(values, dtype=np.float64)
    q = np.round(np.clip(np.nan_to_num(v, nan=0.0), -1.0, 1.0) * 127).astype(np.int8)
    q[np.isnan(v)] = _NONE
    return q


def _bits_code(probs: np.ndarray) -> np.ndarray:
    """Probabilities -> uint8 surprisal in 1/16 bit (0..254); NaN -> 255 (no prediction)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = -np.log2(np.clip(p, 1e-300, 1.0))
    code = np.round(np.clip(np.nan_to_num(bits, nan=0.0), 0.0, 254 / 16) * 16).astype(np.uint8)
    code[np.isnan(p)] = _NO_PREDICTION
    return code


def _data(views: list[View], vocab: str, predictions: Predictions | None) -> str:
    data: dict = {
        "maps": {kind: [[x, list(rgb)] for x, rgb in anchors] for kind, anchors in MAPS.items()},
        "views": [
            {"name": v.name, "label": v.label, "kind": v.kind, "lo": v.lo, "hi": v.hi, "q": _b64(_quantise(v.values))}
            for v in views
        ],
        "pred": None,
    }
    if predictions is not None:
        wide = len(vocab) > 256
        ids = np.where(predictions.top_ids < 0, 0, predictions.top_ids).astype("<u2" if wide else np.uint8)
        data["pred"] = {
            "k": int(predictions.top_ids.shape[1]),
            "idbytes": 2 if wide else 1,
            "vocab": [escape_char(c) for c in vocab],
            "bits": _b64(_bits_code(predictions.prob)),
            "top": _b64(ids),
            "topbits": _b64(_bits_code(predictions.top_probs)),
        }
    # "</" inside a <script> would end it early; JSON allows the escaped form.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")


def _find_table(feature: str, rows: list[tuple[UnitScore, int]]) -> str:
    out = [
        f"<section id=find><h2>Units that track <code>{html.escape(feature)}</code></h2>",
        "<table><tr><th>#<th>layer<th>unit<th>r</tr>",
    ]
    for rank, (score, view) in enumerate(rows, 1):
        rgb = colour("diverging", score.r)
        out.append(
            f"<tr data-view={view}><td>{rank}<td>{score.layer + 1}<td>{score.unit}"
            f'<td style="background:rgb{rgb};color:rgb{text_colour(rgb)}">{score.r:+.3f}</tr>'
        )
    out.append(
        "</table><p class=note>Pearson r of the unit's activation with the feature, over this text. "
        "Click a row to show that unit.</p></section>"
    )
    return "\n".join(out)


def _gates_svg(gates: list[GateSaturation]) -> str:
    """One scatter per layer: x = fraction of time left-saturated (< 0.1), y = right-saturated (> 0.9)."""
    size, pad = 240, 36
    span = size - 2 * pad
    layers = sorted({g.layer for g in gates})
    parts = [
        "<section id=gates><h2>Gate saturation</h2><p class=note>One dot per unit and gate: how often the "
        "gate was left-saturated (&lt; 0.1, closed) and right-saturated (&gt; 0.9, open) over this text. "
        "Dots on the diagonal are always saturated; dots near the origin never are.</p>"
    ]
    for layer in layers:
        svg = [
            f'<svg viewBox="0 0 {size} {size}" width={size} height={size} role=img>'
            f"<title>layer {layer + 1} gate saturation</title>",
            f"<text x={size // 2} y=14 text-anchor=middle font-weight=bold>layer {layer + 1}</text>",
            f'<path d="M{pad} {pad}V{size - pad}H{size - pad}" stroke="#888" fill=none />',
            f'<path d="M{pad} {pad}L{size - pad} {size - pad}" stroke="#ccc" stroke-dasharray="3 3" fill=none />',
            f"<text x={size // 2} y={size - 8} text-anchor=middle>left-saturated</text>",
            f'<text transform="translate(12 {size // 2}) rotate(-90)" text-anchor=middle>right-saturated</text>',
            f"<text x={pad} y={size - pad + 12} text-anchor=middle>0</text>"
            f"<text x={size - pad} y={size - pad + 12} text-anchor=middle>1</text>"
            f"<text x={pad - 4} y={pad + 4} text-anchor=end>1</text>",
        ]
        for g in (g for g in gates if g.layer == layer):
            xs = pad + g.left * span
            ys = size - pad - g.right * span
            # A zero-length segment with a round cap is a dot: ~12 bytes per unit instead of a <circle>.
            d = "".join(f"M{x:.1f} {y:.1f}h0" for x, y in zip(xs, ys))
            svg.append(
                f'<path d="{d}" stroke="{GATE_COLOURS.get(g.gate, "#444")}" stroke-width=4 '
                f"stroke-linecap=round opacity=.55 fill=none><title>{g.gate} gate</title></path>"
            )
        svg.append("</svg>")
        parts.append("".join(svg))
    names = []
    for name in dict.fromkeys(g.gate for g in gates):
        names.append(f'<span class=key style="background:{GATE_COLOURS.get(name, "#444")}"></span>{name} gate')
    parts.append("<p class=legend>" + " &nbsp; ".join(names) + "</p></section>")
    return "\n".join(parts)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2em 1.5em;color:#111;background:#fff}
h1{font-size:1.25em;margin:0 0 .2em}h2{font-size:1.05em;margin:1.4em 0 .4em}
.meta,.note{color:#555;margin:.2em 0}
#controls{margin:.7em 0;display:flex;flex-wrap:wrap;gap:.6em 1.2em;align-items:center}
#bar{display:inline-block;width:160px;height:12px;vertical-align:middle;border:1px solid #bbb;margin:0 .4em}
#text{font:13px/1.6 ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;white-space:pre-wrap;
word-break:break-all;tab-size:4;border:1px solid #ddd;padding:.6em .8em;max-width:110ch}
#tip{position:fixed;pointer-events:none;background:#222;color:#f4f4f4;padding:.45em .65em;border-radius:4px;
font:12px/1.45 ui-monospace,Menlo,Consolas,monospace;white-space:pre;z-index:9;max-width:60ch}
table{border-collapse:collapse}td,th{padding:.15em .6em;text-align:right;border-bottom:1px solid #eee}
#find tr[data-view]{cursor:pointer}#find tr[data-view]:hover{background:#f2f2f2}
svg{font:10px sans-serif;margin-right:1em}.key{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:.3em}
#selftest{white-space:pre-wrap}
"""

_JS = r"""
(() => {
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const box = document.getElementById("text"), spans = box.children, N = spans.length;
const tip = document.getElementById("tip"), select = document.getElementById("view");
const bytes = s => Uint8Array.from(atob(s), c => c.charCodeAt(0));
const views = D.views.map(v => Object.assign({}, v, {q: new Int8Array(bytes(v.q).buffer)}));
const P = D.pred && {
  k: D.pred.k, vocab: D.pred.vocab, bits: bytes(D.pred.bits), topbits: bytes(D.pred.topbits),
  top: D.pred.idbytes === 2 ? new Uint16Array(bytes(D.pred.top).buffer) : bytes(D.pred.top),
};
function rgb(kind, s) {
  const m = D.maps[kind];
  s = Math.min(Math.max(s, m[0][0]), m[m.length - 1][0]);
  for (let i = 1; i < m.length; i++) {
    if (s <= m[i][0]) {
      const w = (s - m[i - 1][0]) / (m[i][0] - m[i - 1][0]);
      return m[i][1].map((b, j) => Math.round(m[i - 1][1][j] + (b - m[i - 1][1][j]) * w));
    }
  }
  return m[m.length - 1][1];
}
const css = {};  // per scale: 256 ready-made style strings, indexed by the int8 position + 128
for (const kind in D.maps) {
  css[kind] = [""];
  for (let q = -127; q <= 127; q++) {
    const c = rgb(kind, q / 127), dark = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] <= 140;
    css[kind].push(`background:rgb(${c})` + (dark ? ";color:#fff" : ""));
  }
}
for (let t = 0; t < N; t++) spans[t]._i = t;
let cur = 0;
function value(v, t) {
  const s = v.q[t] / 127;
  return v.kind === "diverging" ? v.lo + (s + 1) / 2 * (v.hi - v.lo) : v.lo + s * (v.hi - v.lo);
}
function show(i) {
  cur = i;
  const v = views[i], pal = css[v.kind];
  for (let t = 0; t < N; t++) spans[t].style.cssText = pal[v.q[t] + 128];
  const m = D.maps[v.kind];
  document.getElementById("bar").style.background =
    "linear-gradient(to right," + m.map(a => `rgb(${a[1]})`).join(",") + ")";
  document.getElementById("lo").textContent = +v.lo.toFixed(2);
  document.getElementById("hi").textContent = +v.hi.toFixed(2);
  select.value = String(i);
}
const pct = code => (100 * Math.pow(2, -code / 16)).toFixed(1) + "%";
function glyphAt(t) {
  const g = spans[t].textContent;
  return g.length === 2 && (g[1] === "\n" || g[1] === "\t") ? g[0] : g;
}
function describe(t) {
  const lines = [`#${t}  '${glyphAt(t)}'`];
  const v = views[cur];
  if (v.q[t] !== -128) lines.push(`${v.name}: ${value(v, t).toFixed(2)}`);
  if (P) {
    if (P.bits[t] === 255) lines.push("no prediction (first character)");
    else {
      lines.push(`p = ${pct(P.bits[t])}  (${(P.bits[t] / 16).toFixed(2)} bits)`);
      const g = [];
      for (let j = 0; j < P.k; j++) g.push(`'${P.vocab[P.top[t * P.k + j]]}' ${pct(P.topbits[t * P.k + j])}`);
      lines.push(`top-${P.k} guesses: ` + g.join("  "));
    }
  }
  return lines.join("\n");
}
box.addEventListener("mouseover", e => {
  const t = e.target._i;
  if (t === undefined) return;
  tip.textContent = describe(t);
  tip.hidden = false;
  const r = e.target.getBoundingClientRect();
  tip.style.left = Math.max(0, Math.min(r.left, innerWidth - tip.offsetWidth - 8)) + "px";
  tip.style.top = (r.bottom + 4 + tip.offsetHeight > innerHeight ? r.top - tip.offsetHeight - 4 : r.bottom + 4) + "px";
});
box.addEventListener("mouseleave", () => { tip.hidden = true; });
select.addEventListener("change", () => show(+select.value));
for (const row of document.querySelectorAll("#find tr[data-view]"))
  row.addEventListener("click", () => show(+row.dataset.view));
if (views.length) show(0);
const m = /^#selftest(?:=(\d+))?$/.exec(location.hash);
if (m && N) {
  const t = Math.min(N - 1, m[1] === undefined ? N - 1 : +m[1]);
  spans[t].dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
  let coloured = 0;
  for (let i = 0; i < N; i++) if (spans[i].style.backgroundColor) coloured++;
  const out = document.getElementById("selftest");
  out.hidden = false;
  out.textContent = `selftest: ${N} spans, ${coloured} coloured, hover #${t}\n` + tip.textContent;
}
})();
"""


def render_page(
    text: str,
    *,
    title: str,
    meta: list[str],
    views: list[View],
    vocab: str,
    predictions: Predictions | None = None,
    find: tuple[str, list[tuple[UnitScore, int]]] | None = None,
    gates: list[GateSaturation] | None = None,
    sections: list[str] | None = None,
) -> str:
    """The whole page as a string. ``find``: the feature name and (score, index into ``views``) rows;
    ``sections``: more HTML, shown above the text (``charrnn.analysis_report``'s tables)."""
    for v in views:
        assert len(v.values) == len(text), f"view {v.name!r} has {len(v.values)} values for {len(text)} characters"
    options = "".join(f'<option value="{i}">{html.escape(v.label)}</option>' for i, v in enumerate(views))
    spans = "".join(f"<span>{html.escape(glyph(ch), quote=False)}</span>" for ch in text)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f"<p class=meta>{html.escape(line)}</p>" for line in meta),
        *(sections or []),
        f"<div id=controls><label>show <select id=view>{options}</select></label>"
        "<span><span id=lo></span><span id=bar></span><span id=hi></span></span>"
        "<span class=note>hover a character for its value and the model's guesses</span></div>",
        f"<div id=text>{spans}</div>",
    ]
    if find is not None:
        parts.append(_find_table(*find))
    if gates:
        parts.append(_gates_svg(gates))
    parts += [
        "<div id=tip hidden></div><pre id=selftest hidden></pre>",
        f'<script type="application/json" id=data>{_data(views, vocab, predictions)}</script>',
        f"<script>{_JS}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"

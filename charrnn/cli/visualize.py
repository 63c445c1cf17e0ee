"""``charrnn visualize``: what the network has learned, character by character, in the terminal,
as JSON, or as one self-contained HTML page.

1. load the checkpoint and check every option against it (layer, cells, quantity, feature);
2. read the text (--text, --string or --sample) and encode it;
3. run the model over it once with the probes the options need (``charrnn.visualize``);
   with --find, run it a second time to record only the best cells, so memory stays bounded;
4. show: --json on stdout, or rich views on stdout; --html writes the page.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

from charrnn import checkpoint as ckpt_io
from charrnn import html_report
from charrnn import visualize as viz
from charrnn.cli.common import DEFAULT_OUT_DIR, DEVICE_HELP, UserError, echo_json, stderr_console
from charrnn.data import Vocab, escape_char, read_text
from charrnn.sample import generate
from charrnn.devices import resolve_device

DEFAULT_CHECKPOINT = Path(DEFAULT_OUT_DIR) / "best.pt"
TABLE_ROWS = 40  # predictions table rows when no --range is given
PREVIEW_WIDTH = 48  # characters in a --find preview line


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path), default=DEFAULT_CHECKPOINT)
@click.option("--text", "text_path", type=click.Path(path_type=Path), help="Run the model over this text file.")
@click.option("--string", "string", metavar="TEXT", help="Run the model over this literal text.")
@click.option("--sample", "sample_length", type=click.IntRange(min=1), metavar="N",
              help="Run the model over N characters it generates itself.")
@click.option("--seed", type=int, default=1337, show_default=True, help="Seed for --sample.")
@click.option("--temperature", "-t", type=float, default=0.8, show_default=True, help="Temperature for --sample.")
@click.option("--layer", type=int, default=None,
              help="Layer, numbered from 1. Default: the last for --cell; every layer for --find.")
@click.option("--cell", "cells", type=int, multiple=True, help="Cell (unit) index from 0; repeat for several.")
@click.option("--what", default=None, metavar="QUANTITY",
              help="h, c (shown as tanh(c)) or gate:NAME (LSTM: input, forget, cell, output; GRU: reset, "
                   "update, candidate). Default: c for an LSTM, h otherwise.")
@click.option("--find", "feature", metavar="FEATURE",
              help="Rank every cell by its correlation with a feature: quote, line-position, bracket-depth, "
                   "indent, comment, word-position, or regex:PATTERN.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Rows of the --find ranking.")
@click.option("--predictions", is_flag=True, help="Colour by surprisal; table of each position's top-5 guesses.")
@click.option("--range", "span", metavar="START:END",
              help="The characters the terminal views show (from 0, END excluded). Default: all; the "
                   f"predictions table shows the first {TABLE_ROWS}.")
@click.option("--gates", is_flag=True, help="How often each gate is saturated (< 0.1 or > 0.9), per layer.")
@click.option("--html", "html_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write one self-contained HTML page with the coloured text, hover guesses and a cell selector.")
@click.option("--json", "as_json", is_flag=True, help="Print per-character activations and predictions as JSON instead.")
@click.option("--max-chars", type=click.IntRange(min=1), default=20000, show_default=True,
              help="Use at most this many characters of the text.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
def visualize(checkpoint: Path, text_path, string, sample_length, seed, temperature, layer, cells, what,
              feature, top, predictions, span, gates, html_path, as_json, max_chars, device):
    """See what CHECKPOINT (default: out/best.pt) has learned: per-character cell activations,
    predictions and surprise, and a hunt for cells that track a feature of the text.

    \b
    charrnn visualize best.pt --text some.txt --layer 2 --cell 117
    charrnn visualize best.pt --text some.c --find quote
    charrnn visualize best.pt --string "Hello (world)" --predictions --range 0:13
    charrnn visualize best.pt --text some.txt --find line-position --html cells.html
    charrnn visualize best.pt --sample 2000 --gates

    Activations are the state after reading each character; tanh(c) for an LSTM by default, as in
    Karpathy, Johnson & Fei-Fei (2015). Colours run from -1 (blue) through 0 (white) to +1 (red).
    """
    if not (cells or feature or predictions or gates):
        raise UserError("nothing to show: pass --cell N, --find FEATURE, --predictions or --gates (see --help)")

    # 1. The checkpoint, and every option checked against it before any work.
    ckpt = ckpt_io.load(checkpoint)
    cfg = ckpt.model_config
    vocab = ckpt.vocab
    what = viz.check_quantity(cfg.cell, what or viz.default_quantity(cfg.cell))
    chosen_layer = viz.check_layer(cfg, layer) if layer is not None else None
    cells = viz.check_cells(cfg, cells)
    cell_layer = chosen_layer if chosen_layer is not None else cfg.num_layers - 1
    gate_probe = viz.GateProbe(cfg) if gates else None
    model = ckpt.build_model(resolve_device(device))

    # 2. The text.
    text, source = _read_source(text_path, string, sample_length, model, vocab, seed, temperature)
    full_length = len(text)
    text = text[:max_chars]
    ids = viz.encode_text(vocab, text, source)
    feature_values = viz.feature_values(feature, text) if feature else None
    start, end = _parse_range(span, len(text))
    err = stderr_console()
    if full_length > len(text):
        err.print(f"[dim]using the first {len(text):,} of {full_length:,} characters; raise --max-chars to see more")

    # 3. One pass for everything but the --find cells, which a second pass records once they are known.
    cell_probe = viz.CellProbe(cell_layer, what, cells) if cells else None
    prediction_probe = viz.PredictionProbe(k=5)
    search_layers = [chosen_layer] if chosen_layer is not None else list(range(cfg.num_layers))
    corr_probe = viz.CorrelationProbe(feature_values, what, search_layers, cfg.hidden_size) if feature else None
    probes = [p for p in (cell_probe, prediction_probe, corr_probe, gate_probe) if p is not None]
    _run(model, ids, probes, err)
    preds = prediction_probe.result
    ranking, found = [], []
    if corr_probe is not None:
        ranking = viz.rank_cells(corr_probe.r, search_layers, top)
        found = _record_cells(model, ids, what, ranking, err)
    gate_stats = gate_probe.result if gate_probe is not None else None
    bits = preds.bits[1:]
    err.print(
        f"[dim]{source}: {len(text):,} characters, {cfg.cell.upper()} {cfg.num_layers} x {cfg.hidden_size}; "
        + (f"{bits.mean():.3f} bits/char" if len(bits) else "")
    )

    # 4. Output.
    explicit = [(cell_layer, c, cell_probe.values[:, i]) for i, c in enumerate(cells)] if cells else []
    if as_json:
        echo_json(_json(checkpoint, source, text, full_length, cfg, what, explicit, ranking, found, feature, preds,
                        vocab, gate_stats))
    else:
        out = Console(highlight=False)  # the views are this command's product: stdout
        for layer_index, cell, values in explicit:
            _show_cell(out, text, values, layer_index, cell, what, start, end)
        if ranking:
            _show_ranking(out, text, feature, feature_values, what, ranking, found, start, end)
        if predictions:
            _show_predictions(out, text, preds, vocab, start, end, explicit_range=span is not None)
        if gate_stats is not None:
            _show_gates(out, gate_stats)
    if html_path is not None:
        page = _html(checkpoint, source, text, cfg, what, explicit, ranking, found, feature, feature_values, preds,
                     vocab, gate_stats)
        try:
            html_path.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write {html_path} ({exc.strerror or exc}); choose a writable path", 5) from None
        err.print(f"[dim]wrote {html_path} ({len(page.encode('utf-8')) / 1024:,.0f} KiB)")


# -- input -------------------------------------------------------------------------------------


def _read_source(text_path, string, sample_length, model, vocab, seed, temperature) -> tuple[str, str]:
    given = [name for name, value in (("--text", text_path), ("--string", string), ("--sample", sample_length))
             if value is not None]
    if len(given) != 1:
        what = "none" if not given else " and ".join(given)
        raise UserError(f"pass exactly one of --text FILE, --string TEXT or --sample N (got {what})")
    if text_path is not None:
        return read_text(text_path), str(text_path)
    if string is not None:
        return string, "--string"
    steps = generate(model, vocab, length=sample_length, temperature=temperature, seed=seed)
    return "".join(chars[0] for chars in steps), f"--sample {sample_length}"


def _parse_range(span: str | None, n: int) -> tuple[int, int]:
    """'START:END' (either may be empty) -> (start, end) within the text; UserError if empty or malformed."""
    if span is None:
        return 0, n
    try:
        first, last = span.split(":")
        start = int(first) if first.strip() else 0
        end = int(last) if last.strip() else n
    except ValueError:
        raise UserError(f"--range {span!r}: use START:END with whole numbers, e.g. --range 0:200") from None
    end = min(end, n)
    if start < 0 or start >= end:
        raise UserError(f"--range {span!r} selects nothing of a text of {n:,} characters; use 0 <= START < END")
    return start, end


def _run(model, ids, probes, err: Console) -> None:
    """``viz.run`` with a transient progress bar on an interactive stderr."""
    if not err.is_terminal or len(ids) < 2000:
        viz.run(model, ids, probes)
        return
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("running the model", total=len(ids))
        viz.run(model, ids, probes, progress=lambda done, total: bar.update(task, completed=done))


def _record_cells(model, ids, what, ranking, err) -> list[np.ndarray]:
    """The second pass: per-character values of the ranked cells only, in ranking order."""
    by_layer: dict[int, list[int]] = {}
    for score in ranking:
        by_layer.setdefault(score.layer, []).append(score.cell)
    probes = {layer: viz.CellProbe(layer, what, cells) for layer, cells in by_layer.items()}
    _run(model, ids, probes.values(), err)
    return [probes[s.layer].values[:, by_layer[s.layer].index(s.cell)] for s in ranking]


# -- terminal views ----------------------------------------------------------------------------


class _Palette:
    """rich Styles for positions on a colour scale, quantised to 64 steps so a long text shares a few."""

    def __init__(self, kind: str):
        self.kind = kind
        self._styles: dict[int, Style] = {}

    def style(self, s: float) -> Style | None:
        if not np.isfinite(s):
            return None
        key = int(round(float(np.clip(s, -1.0, 1.0)) * 32))
        if key not in self._styles:
            bg = html_report.colour(self.kind, key / 32)
            fg = html_report.text_colour(bg)
            self._styles[key] = Style(color=f"rgb({fg[0]},{fg[1]},{fg[2]})", bgcolor=f"rgb({bg[0]},{bg[1]},{bg[2]})")
        return self._styles[key]


def coloured_text(text: str, positions: np.ndarray, kind: str, start: int, end: int, inline: bool = False) -> Text:
    """``text[start:end]`` with each character's background set by its scale position; newlines as
    '↵' (then a real break unless ``inline``), tabs as '→'. Neighbours of one colour share a span."""
    palette = _Palette(kind)
    out = Text(no_wrap=inline, overflow="crop" if inline else "fold")
    run: list[str] = []
    run_style: Style | None = None
    for i in range(start, end):
        ch, style = text[i], palette.style(positions[i])
        if style is not run_style and run:
            out.append("".join(run), run_style)
            run = []
        run_style = style
        if ch == "\n":
            run.append("↵")
            if not inline:
                out.append("".join(run), run_style)
                out.append("\n")
                run = []
        elif ch == "\t":
            run.append("→" if inline else "→   ")
        else:
            run.append(ch if ch.isprintable() or ch == " " else escape_char(ch))
    if run:
        out.append("".join(run), run_style)
    return out


def legend(kind: str, lo: float, hi: float, label: str) -> Text:
    palette = _Palette(kind)
    first = -1.0 if kind == "diverging" else 0.0
    signed = "+g" if kind == "diverging" and lo < 0 else "g"
    out = Text(f"{lo:{signed}} ", style="dim")
    for i in range(24):
        out.append(" ", palette.style(first + (1.0 - first) * i / 23))
    out.append(f" {hi:{signed}}{'+' if kind == 'sequential' else ''}   {label}", style="dim")
    return out


def _show_cell(out: Console, text, values, layer_index, cell, what, start, end, note: str = "") -> None:
    lo, hi = viz.value_range(what)
    out.rule(f"layer {layer_index + 1}, cell {cell}, {viz.describe_quantity(what)}{note}")
    out.print(coloured_text(text, html_report.scale_values(values, lo, hi), "diverging", start, end))
    out.print(legend("diverging", lo, hi, viz.describe_quantity(what)))


def _show_ranking(out, text, feature, feature_values, what, ranking, found, start, end) -> None:
    lo, hi = viz.value_range(what)
    w0, w1 = viz.feature_window(feature_values, PREVIEW_WIDTH)
    table = Table(title=f"cells that track {feature} ({viz.describe_quantity(what)}, Pearson r over "
                        f"{len(text):,} characters)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("layer", justify="right")
    table.add_column("cell", justify="right")
    table.add_column("r", justify="right")
    table.add_column(f"preview (characters {w0}..{w1 - 1})", no_wrap=True)
    fmin, fmax = float(feature_values.min()), float(feature_values.max())
    feature_row = coloured_text(text, (feature_values - fmin) / (fmax - fmin) * 2 - 1, "diverging", w0, w1, inline=True)
    table.add_row("", "", "", "", feature_row, end_section=True)
    for rank, (score, values) in enumerate(zip(ranking, found), 1):
        colour = "red" if score.r > 0 else "blue" if score.r < 0 else ""
        preview = coloured_text(text, html_report.scale_values(values, lo, hi), "diverging", w0, w1, inline=True)
        table.add_row(str(rank), str(score.layer + 1), str(score.cell), Text(f"{score.r:+.3f}", style=colour), preview)
    out.print(table)
    out.print(Text(f"first row: the feature itself ({fmin:g} blue .. {fmax:g} red)", style="dim"))
    best = ranking[0]
    _show_cell(out, text, found[0], best.layer, best.cell, what, start, end, note=f", r = {best.r:+.3f} with {feature}")


def _show_predictions(out, text, preds: viz.Predictions, vocab: Vocab, start, end, explicit_range: bool) -> None:
    bits = preds.bits
    out.rule("surprisal: how unexpected each character was")
    out.print(coloured_text(text, bits / html_report.SURPRISAL_MAX_BITS, "sequential", start, end))
    out.print(legend("sequential", 0, html_report.SURPRISAL_MAX_BITS, "bits (-log2 p); white = expected"))
    rows_end = end if explicit_range else min(end, start + TABLE_ROWS)
    table = Table(title=f"what the model expected at characters {start}..{rows_end - 1}", title_justify="left")
    for name in ("pos", "char", "p", "bits"):
        table.add_column(name, justify="right")
    table.add_column("top-5 guesses (before reading the character)")
    palette = _Palette("sequential")
    for t in range(start, rows_end):
        char = Text(escape_char(text[t]), style=palette.style(bits[t] / html_report.SURPRISAL_MAX_BITS))
        if np.isnan(preds.prob[t]):
            table.add_row(str(t), char, "", "", Text("(first character: no prediction)", style="dim"))
            continue
        guesses = Text()
        for idx, p in zip(preds.top_ids[t], preds.top_probs[t]):
            guess = vocab.chars[int(idx)]
            guesses.append(f"{escape_char(guess)} ", style="bold" if guess == text[t] else "")
            guesses.append(f"{p:.0%}  ", style="dim")
        table.add_row(str(t), char, f"{preds.prob[t]:.3f}", f"{bits[t]:.2f}", guesses)
    out.print(table)
    if not explicit_range and rows_end < end:
        stderr_console().print("[dim]pass --range START:END to see the guesses at other positions")


def _show_gates(out, stats: list[viz.GateSaturation]) -> None:
    table = Table(title="gate saturation: fraction of characters with the gate < 0.1 (left) or > 0.9 (right)",
                  title_justify="left")
    for name in ("layer", "gate", "left, mean", "right, mean", "units mostly left", "units mostly right",
                 "units never saturated"):
        table.add_column(name, justify="right")
    for g in stats:
        never = int(((g.left + g.right) < 0.05).sum())
        table.add_row(str(g.layer + 1), g.gate, f"{g.left.mean():.1%}", f"{g.right.mean():.1%}",
                      str(int((g.left > 0.5).sum())), str(int((g.right > 0.5).sum())), str(never))
    out.print(table)
    out.print(Text("mostly = more than half of the time; never saturated = under 5% of the time", style="dim"))


# -- JSON and HTML -----------------------------------------------------------------------------


def _rounded(values: np.ndarray, digits: int = 4) -> list:
    return [None if not np.isfinite(v) else round(float(v), digits) for v in values]


def _json(checkpoint, source, text, full_length, cfg, what, explicit, ranking, found, feature, preds, vocab,
          gate_stats) -> dict:
    cells = [{"layer": layer + 1, "cell": cell, "what": what, "values": _rounded(values)}
             for layer, cell, values in explicit]
    cells += [{"layer": s.layer + 1, "cell": s.cell, "what": what, "r": round(s.r, 4), "values": _rounded(values)}
              for s, values in zip(ranking, found)]
    top = [
        None if ids[0] < 0 else [[vocab.chars[int(i)], round(float(p), 4)] for i, p in zip(ids, probs)]
        for ids, probs in zip(preds.top_ids, preds.top_probs)
    ]
    result = {
        "checkpoint": str(checkpoint),
        "source": source,
        "chars": len(text),
        "source_chars": full_length,
        "model": {"cell": cfg.cell, "num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size},
        "text": text,
        "what": what,
        "cells": cells,
        "predictions": {"prob": _rounded(preds.prob, 5), "bits": _rounded(preds.bits, 3), "top": top},
    }
    if feature:
        result["find"] = {"feature": feature, "what": what,
                          "ranking": [{"layer": s.layer + 1, "cell": s.cell, "r": round(s.r, 4)} for s in ranking]}
    if gate_stats is not None:
        result["gates"] = [{"layer": g.layer + 1, "gate": g.gate, "left": _rounded(g.left), "right": _rounded(g.right)}
                           for g in gate_stats]
    return result


def _html(checkpoint, source, text, cfg, what, explicit, ranking, found, feature, feature_values, preds, vocab,
          gate_stats) -> str:
    lo, hi = viz.value_range(what)
    quantity = viz.describe_quantity(what)
    views = [
        html_report.View(f"L{layer + 1} #{cell} {quantity}", f"layer {layer + 1}, cell {cell}, {quantity}",
                         html_report.scale_values(values, lo, hi), "diverging", lo, hi)
        for layer, cell, values in explicit
    ]
    find = None
    if ranking:
        rows = []
        for score, values in zip(ranking, found):
            rows.append((score, len(views)))
            views.append(html_report.View(
                f"L{score.layer + 1} #{score.cell} {quantity}",
                f"layer {score.layer + 1}, cell {score.cell}, {quantity}, r = {score.r:+.3f} with {feature}",
                html_report.scale_values(values, lo, hi), "diverging", lo, hi))
        fmin, fmax = float(feature_values.min()), float(feature_values.max())
        views.append(html_report.View(f"feature {feature}", f"the feature itself: {feature}",
                                      html_report.scale_values(feature_values, fmin, fmax, "sequential"),
                                      "sequential", fmin, fmax))
        find = (feature, rows)
    views.append(html_report.surprisal_view(preds))
    bits = preds.bits[1:]
    meta = [
        f"checkpoint {checkpoint}: {cfg.cell.upper()}, {cfg.num_layers} layer(s) x {cfg.hidden_size} cells",
        f"text: {source}, {len(text):,} characters"
        + (f", {bits.mean():.3f} bits/char" if len(bits) else ""),
    ]
    return html_report.render_page(text, title=f"charrnn visualize: {Path(str(checkpoint)).name}", meta=meta,
                                   views=views, vocab=vocab.chars, predictions=preds, find=find, gates=gate_stats)

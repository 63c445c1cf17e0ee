"""``charrnn visualize``: what the network has learned, unit by unit and character by character, in
the terminal, as JSON, or as one self-contained HTML page.

1. load the checkpoint and check every option against it (layer, units, quantity, feature);
2. read the text (--text, --string or --sample) and encode it;
3. run the model over it once with the probes the options need (``charrnn.visualize``);
   with --find, run it a second time to record only the best units, so memory stays bounded;
4. show: --json on stdout, or rich views on stdout; --html writes the page.

Steps 1 and 3 are ``charrnn.recording.record``; this module adds the flags, the text sources, and the
terminal views of the ``Recording`` it returns (the JSON and the page are ``charrnn.recording``'s too).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

from charrnn import checkpoint as ckpt_io
from charrnn import colours, memory
from charrnn import visualize as viz
from charrnn.cli.common import DEFAULT_OUT_DIR, DEVICE_HELP, SEED, Finite, UserError, echo_json, stderr_console
from charrnn.corpus import read_text
from charrnn.data import escape_char
from charrnn.devices import resolve_device
from charrnn.errors import OutputError
from charrnn.features import feature_window
from charrnn.recording import Recording, Trace, check_options, record, to_html, to_json
from charrnn.sample import generate

DEFAULT_CHECKPOINT = Path(DEFAULT_OUT_DIR) / "best.pt"
TABLE_ROWS = 40  # predictions table rows when no --range is given
PREVIEW_WIDTH = 48  # characters in a --find preview line
CELL_DEPRECATED = "--cell is deprecated for visualize and will be removed; use --unit"
GATE_CELL_DEPRECATED = "--what gate:cell is deprecated and will be removed; use --what gate:g (the same candidate gate)"


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path), default=DEFAULT_CHECKPOINT)
@click.option(
    "--text",
    "text_path",
    type=click.Path(path_type=Path),
    help="Run the model over this text: a file, a folder or a quoted glob, as for `charrnn train`.",
)
@click.option("--string", "string", metavar="TEXT", help="Run the model over this literal text.")
@click.option(
    "--sample",
    "sample_length",
    type=click.IntRange(min=1),
    metavar="N",
    help="Run the model over N characters it generates itself.",
)
@click.option("--seed", type=SEED, default=1337, show_default=True, help="Seed for --sample.")
@click.option(
    "--temperature",
    "-t",
    type=Finite(min=0, min_open=True),
    default=0.8,
    show_default=True,
    help="Temperature for --sample (> 0).",
)
@click.option(
    "--layer",
    type=click.IntRange(min=1),
    default=None,
    help="Layer, numbered from 1. Default: the last for --unit; every layer for --find.",
)
@click.option(
    "--unit",
    "units",
    type=click.IntRange(min=0),
    multiple=True,
    help="Unit (hidden-state component) index from 0; repeat for several.",
)
@click.option(
    "--cell", "deprecated_units", type=click.IntRange(min=0), multiple=True, hidden=True, help="Deprecated: use --unit."
)
@click.option(
    "--what",
    default=None,
    metavar="QUANTITY",
    help="h, c (shown as tanh(c)) or gate:NAME (LSTM: input, forget, g, output; GRU: reset, "
    "update, candidate). Default: c for an LSTM, h otherwise.",
)
@click.option(
    "--find",
    "feature",
    metavar="FEATURE",
    help="Rank every unit by its correlation with a feature: quote, line-position, bracket-depth, "
    "indent, comment, word-position, or regex:PATTERN.",
)
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Rows of the --find ranking.")
@click.option("--predictions", is_flag=True, help="Colour by surprisal; table of each position's top-5 guesses.")
@click.option(
    "--range",
    "span",
    metavar="START:END",
    help="The characters the terminal views show (from 0, END excluded). Default: all; the "
    f"predictions table shows the first {TABLE_ROWS}.",
)
@click.option("--gates", is_flag=True, help="How often each gate is saturated (< 0.1 or > 0.9), per layer.")
@click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write one self-contained HTML page with the coloured text, hover guesses and a unit selector.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print per-character activations and predictions as JSON instead."
)
@click.option(
    "--max-chars",
    type=click.IntRange(min=1),
    default=20000,
    show_default=True,
    help="Use at most this many characters of the text.",
)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
def visualize(
    checkpoint: Path,
    text_path,
    string,
    sample_length,
    seed,
    temperature,
    layer,
    units,
    deprecated_units,
    what,
    feature,
    top,
    predictions,
    span,
    gates,
    html_path,
    as_json,
    max_chars,
    device,
):
    """See what CHECKPOINT (default: out/best.pt) has learned: per-character unit activations,
    predictions and surprise, and a hunt for units that track a feature of the text.

    \b
    charrnn visualize best.pt --text some.txt --layer 2 --unit 117
    charrnn visualize best.pt --text some.c --find quote
    charrnn visualize best.pt --string "Hello (world)" --predictions --range 0:13
    charrnn visualize best.pt --text some.txt --find line-position --html units.html
    charrnn visualize best.pt --sample 2000 --gates

    Activations are the state after reading each character; tanh(c) for an LSTM by default, as in
    Karpathy, Johnson & Fei-Fei (2015). Colours run from -1 (blue) through 0 (white) to +1 (red).
    """
    err = stderr_console()
    if deprecated_units:
        err.print(CELL_DEPRECATED, markup=False)
        units = (*units, *deprecated_units)
    if not (units or feature or predictions or gates):
        raise UserError("nothing to show: pass --unit N, --find FEATURE, --predictions or --gates (see --help)")

    # 1. The checkpoint, and every option checked against it before any work.
    ckpt = ckpt_io.load(checkpoint)
    cfg = ckpt.model_config
    vocab = ckpt.vocab
    if what == "gate:cell" and cfg.cell == "lstm":
        err.print(GATE_CELL_DEPRECATED, markup=False)
        what = "gate:g"
    check_options(cfg, what=what, units=units, layer=layer, gates=gates)
    model = ckpt.build_model(resolve_device(device))

    # 2. The text, then 3. the runs over it.
    text, source = _read_source(text_path, string, sample_length, model, vocab, seed, temperature, max_chars)
    n_chars = min(len(text), max_chars)
    start, end = _parse_range(span, n_chars)
    # A --text is read no further than max_chars + 1 characters: its full length is then unknown.
    length_known = text_path is None or len(text) <= n_chars
    total = sample_length if sample_length is not None else len(text)  # --sample generates only what is shown
    if len(text) > n_chars:
        of = f"{total:,} characters" if length_known else "a longer text"
        err.print(f"[dim]using the first {n_chars:,} of {of}; raise --max-chars to see more")
    with _progress(err, n_chars) as progress:
        rec = record(
            model,
            vocab,
            text,
            what=what,
            units=units,
            layer=layer,
            find=feature,
            top=top,
            gates=gates,
            max_chars=max_chars,
            source=source,
            checkpoint=str(checkpoint),
            progress=progress,
        )
    if not length_known:
        rec = dataclasses.replace(rec, source_n_chars=None)
    elif total != len(text):
        rec = dataclasses.replace(rec, source_n_chars=total)
    err.print(
        f"[dim]{source}: {n_chars:,} characters, {cfg.cell.upper()} {cfg.num_layers} x {cfg.hidden_size}"
        + (f"; {rec.mean_bits:.3f} bits/char" if n_chars > 1 else "")
    )

    # 4. Output.
    if as_json:
        echo_json(to_json(rec))
    else:
        out = Console(highlight=False)  # the views are this command's product: stdout
        for trace in rec.units:
            _show_unit(out, rec, trace, start, end)
        if rec.found:
            _show_ranking(out, rec, start, end)
        if predictions:
            _show_predictions(out, rec, start, end, explicit_range=span is not None)
        if rec.gates is not None:
            _show_gates(out, rec.gates)
    if html_path is not None:
        page = to_html(rec)
        try:
            html_path.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write {html_path} ({exc.strerror or exc}); choose a writable path") from None
        err.print(f"[dim]wrote {html_path} ({len(page.encode('utf-8')) / 1024:,.0f} KiB)")


# -- input -------------------------------------------------------------------------------------


def _read_source(text_path, string, sample_length, model, vocab, seed, temperature, max_chars) -> tuple[str, str]:
    """The text and what to call it; a --text only to max_chars + 1 characters (enough to tell it was cut)."""
    given = [
        name
        for name, value in (("--text", text_path), ("--string", string), ("--sample", sample_length))
        if value is not None
    ]
    if len(given) != 1:
        what = "none" if not given else " and ".join(given)
        raise UserError(f"pass exactly one of --text FILE, --string TEXT or --sample N (got {what})")
    if text_path is not None:
        return read_text(text_path, max_chars=max_chars + 1), str(text_path)
    if string is not None:
        return string, "--string"
    # Only what is shown is generated: the first max_chars (+1, to tell that the text was cut).
    length = min(sample_length, max_chars + 1)
    need = memory.sampling_bytes(model.config, 1, length)
    memory.check_fits(need, next(model.parameters()).device, f"generating {length:,} characters", ("max_chars",))
    steps = generate(model, vocab, length=length, temperature=temperature, seed=seed)
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


@contextlib.contextmanager
def _progress(err: Console, n_chars: int) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing a transient bar on an interactive stderr, else None."""
    if not err.is_terminal or n_chars < 2000:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("running the model", total=n_chars)
        yield lambda done, total: bar.update(task, completed=done, total=total)


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
            bg = colours.colour(self.kind, key / 32)
            fg = colours.text_colour(bg)
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
    """A 24-step colour bar from ``lo`` to ``hi`` with the quantity's name."""
    palette = _Palette(kind)
    first = -1.0 if kind == "diverging" else 0.0
    signed = "+g" if kind == "diverging" and lo < 0 else "g"
    out = Text(f"{lo:{signed}} ", style="dim")
    for i in range(24):
        out.append(" ", palette.style(first + (1.0 - first) * i / 23))
    out.append(f" {hi:{signed}}{'+' if kind == 'sequential' else ''}   {label}", style="dim")
    return out


def _show_unit(out: Console, rec: Recording, trace: Trace, start: int, end: int, note: str = "") -> None:
    quantity = viz.describe_quantity(rec.what)
    out.rule(f"layer {trace.layer + 1}, unit {trace.unit}, {quantity}{note}")
    out.print(coloured_text(rec.text, rec.positions(trace), "diverging", start, end))
    out.print(legend("diverging", *viz.value_range(rec.what), quantity))


def _show_ranking(out: Console, rec: Recording, start: int, end: int) -> None:
    text, feature, values = rec.text, rec.feature, rec.feature_values
    if feature is None or values is None:
        raise ValueError("a ranking needs a Recording with the feature its units were found for")
    w0, w1 = feature_window(values, PREVIEW_WIDTH)
    table = Table(
        title=f"units that track {feature} ({viz.describe_quantity(rec.what)}, Pearson r over "
        f"{len(text):,} characters)",
        title_justify="left",
    )
    for name in ("#", "layer", "unit", "r"):
        table.add_column(name, justify="right")
    table.add_column(f"preview (characters {w0}..{w1 - 1})", no_wrap=True)
    fmin, fmax = float(values.min()), float(values.max())
    feature_row = coloured_text(text, (values - fmin) / (fmax - fmin) * 2 - 1, "diverging", w0, w1, inline=True)
    table.add_row("", "", "", "", feature_row, end_section=True)
    for rank, trace in enumerate(rec.found, 1):
        colour = "red" if trace.r > 0 else "blue" if trace.r < 0 else ""
        preview = coloured_text(text, rec.positions(trace), "diverging", w0, w1, inline=True)
        table.add_row(str(rank), str(trace.layer + 1), str(trace.unit), Text(f"{trace.r:+.3f}", style=colour), preview)
    out.print(table)
    out.print(Text(f"first row: the feature itself ({fmin:g} blue .. {fmax:g} red)", style="dim"))
    best = rec.found[0]
    _show_unit(out, rec, best, start, end, note=f", r = {best.r:+.3f} with {feature}")


def _show_predictions(out: Console, rec: Recording, start: int, end: int, explicit_range: bool) -> None:
    text, preds = rec.text, rec.predictions
    bits, positions = preds.bits, colours.surprisal_positions(preds.bits)
    out.rule("surprisal: how unexpected each character was")
    out.print(coloured_text(text, positions, "sequential", start, end))
    out.print(legend("sequential", 0, colours.SURPRISAL_MAX_BITS, "bits (-log2 p); white = expected"))
    rows_end = end if explicit_range else min(end, start + TABLE_ROWS)
    table = Table(title=f"what the model expected at characters {start}..{rows_end - 1}", title_justify="left")
    for name in ("pos", "char", "p", "bits"):
        table.add_column(name, justify="right")
    table.add_column("top-5 guesses (before reading the character)")
    palette = _Palette("sequential")
    for t in range(start, rows_end):
        char = Text(escape_char(text[t]), style=palette.style(positions[t]) or "")  # "": Text's own default
        if np.isnan(preds.prob[t]):
            table.add_row(str(t), char, "", "", Text("(first character: no prediction)", style="dim"))
            continue
        guesses = Text()
        for idx, p in zip(preds.top_ids[t], preds.top_probs[t]):
            guess = rec.vocab.chars[int(idx)]
            guesses.append(f"{escape_char(guess)} ", style="bold" if guess == text[t] else "")
            guesses.append(f"{p:.0%}  ", style="dim")
        table.add_row(str(t), char, f"{preds.prob[t]:.3f}", f"{bits[t]:.2f}", guesses)
    out.print(table)
    if not explicit_range and rows_end < end:
        stderr_console().print("[dim]pass --range START:END to see the guesses at other positions")


def _show_gates(out: Console, stats: list[viz.GateSaturation]) -> None:
    table = Table(
        title="gate saturation: fraction of characters with the gate < 0.1 (left) or > 0.9 (right)",
        title_justify="left",
    )
    for name in (
        "layer",
        "gate",
        "left, mean",
        "right, mean",
        "units mostly left",
        "units mostly right",
        "units never saturated",
    ):
        table.add_column(name, justify="right")
    for g in stats:
        never = int(((g.left + g.right) < 0.05).sum())
        table.add_row(
            str(g.layer + 1),
            g.gate,
            f"{g.left.mean():.1%}",
            f"{g.right.mean():.1%}",
            str(int((g.left > 0.5).sum())),
            str(int((g.right > 0.5).sum())),
            str(never),
        )
    out.print(table)
    out.print(Text("mostly = more than half of the time; never saturated = under 5% of the time", style="dim"))

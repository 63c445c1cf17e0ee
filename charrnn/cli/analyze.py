"""``charrnn analyze``: the lecture's and the paper's analyses on your own models.

- ``analyze gradflow A.pt [B.pt ...]``: how the gradient of the loss falls (or grows) with the steps
  back through time, per layer, overlaid for several models (``charrnn.gradflow``);
- ``analyze wins CHECKPOINT [TEXT]``: where the model beats an n-gram, per character class
  (``charrnn.wins``).

Each shows tables in the terminal (stdout), one JSON object with ``--json``, or an HTML page with
``--html`` (``charrnn.analysis_report``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from charrnn import checkpoint as ckpt_io
from charrnn.analysis_report import GAIN_MAX_BITS, gradflow_page, wins_page
from charrnn.baseline import eval_text, fit_text
from charrnn.cli.common import DEVICE_HELP, echo_json, stderr_console
from charrnn.cli.visualize import coloured_text, legend
from charrnn.corpus import read_text
from charrnn.data import escape_char
from charrnn.devices import resolve_device
from charrnn.errors import CharRNNError, DataError, OutputError
from charrnn.gradflow import DEFAULT_POSITIONS, DEFAULT_STEPS, DEFAULT_WARMUP, GradientFlow, gradient_flow
from charrnn.ngram import NGram, parse_baseline
from charrnn.wins import DEFAULT_TOP_CHARS, Group, compare

SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 32


@click.group()
def analyze() -> None:
    """The lecture's and the paper's analyses on your own models: gradient flow through time, and
    where an RNN beats an n-gram (docs/analysis.md)."""


def _check_writable(path: Path | None) -> None:
    """Fail before the work, not after it, if the --html page cannot be written."""
    if path is None:
        return
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK) or path.is_dir():
        why = "no such folder" if not folder.is_dir() else "a folder" if path.is_dir() else "not writable"
        raise OutputError(f"cannot write {path} ({why}); choose a writable path for --html")


def _write(path: Path, page: str) -> None:
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); choose a writable path") from None
    stderr_console().print(f"[dim]wrote {path} ({len(page.encode('utf-8')) / 1024:,.0f} KiB)")


def _encoded(ckpt: ckpt_io.Checkpoint, text: Path | None, max_chars: int, encoding: str) -> tuple[str, np.ndarray, str]:
    """The text to analyse (TEXT, else the checkpoint's validation split), at most ``max_chars`` of it:
    (text, ids, what to call it)."""
    if text is None:
        ids, what = eval_text(ckpt, None, encoding=encoding)
        ids = np.asarray(ids[:max_chars], dtype=np.int64)
        return ckpt.vocab.decode(ids), ids, what
    string = read_text(text, encoding=encoding, max_chars=max_chars)
    if not string:
        raise DataError(f"{text}: the text is empty; pass some text to analyse")
    return string, ckpt.vocab.encode(string, str(text)).astype(np.int64), str(text)


# -- gradflow ----------------------------------------------------------------------------------


@analyze.command("gradflow")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--text",
    "text_path",
    type=click.Path(path_type=Path),
    help="The text to measure on (default: each checkpoint's own validation split).",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=DEFAULT_STEPS, show_default=True, help="K: the steps back."
)
@click.option(
    "--positions",
    type=click.IntRange(min=1),
    default=DEFAULT_POSITIONS,
    show_default=True,
    help="Places t in the text to average over.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=DEFAULT_WARMUP,
    show_default=True,
    help="Characters each window reads first, without gradients, so its state is a real one.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Which places t.")
@click.option("--max-chars", type=click.IntRange(min=1), default=1_000_000, show_default=True)
@click.option("--encoding", default="utf-8", show_default=True)
@click.option("--html", "html_path", type=click.Path(path_type=Path, dir_okay=False), help="Also write the chart.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
def gradflow(checkpoints, text_path, steps, positions, warmup, seed, max_chars, encoding, html_path, as_json, device):
    """How the gradient of the loss at t flows back to each layer's state at t - k, k = 0 .. --steps:
    the mean norm over --positions places, with each layer's largest singular value of W_hh and its
    mean gates. Several CHECKPOINTS overlay their curves.

    \b
    charrnn analyze gradflow runs/rnn/best.pt runs/gru/best.pt runs/lstm/best.pt --html flow.html
    """
    err = stderr_console()
    _check_writable(html_path)
    loaded = [ckpt_io.load(path) for path in checkpoints]  # every checkpoint checked before any work
    flows: list[tuple[str, GradientFlow]] = []
    texts = []
    for path, ckpt in zip(checkpoints, loaded):
        _, ids, what = _encoded(ckpt, text_path, max_chars, encoding)
        model = ckpt.build_model(resolve_device(device))
        cfg = ckpt.model_config
        flows.append((str(path), gradient_flow(model, ids, steps=steps, positions=positions, warmup=warmup, seed=seed)))
        err.print(f"[dim]{path}: {cfg.cell.upper()} {cfg.num_layers} x {cfg.hidden_size} on {what}")
        texts.append(what)
    if as_json:
        echo_json(
            {
                "steps": steps,
                "n_positions": positions,
                "warmup": flows[0][1].warmup,
                "seed": seed,
                "models": [_flow_json(label, what, flow) for (label, flow), what in zip(flows, texts)],
            }
        )
    else:
        _show_flows(Console(highlight=False), flows)
    if html_path is not None:
        meta = [
            f"{len(flows)} model(s); mean over {positions} places t, each after {flows[0][1].warmup} characters "
            f"of warm-up; k = 0 .. {steps}"
        ]
        meta += [
            f"{label}: {flow.cell.upper()} {flow.num_layers} x {flow.hidden_size} on {what}"
            for (label, flow), what in zip(flows, texts)
        ]
        _write(html_path, gradflow_page(flows, meta))


def _flow_json(label: str, what: str, flow: GradientFlow) -> dict:
    return {
        "checkpoint": label,
        "text": what,
        "cell": flow.cell,
        "num_layers": flow.num_layers,
        "hidden_size": flow.hidden_size,
        "layers": [
            {
                "layer": layer.layer + 1,
                "sigma_max": layer.sigma_max,
                "sigma_max_blocks": layer.sigma_max_blocks,
                "gates": layer.gates,
                "grad_norm_h": layer.h.tolist(),
                "grad_norm_c": layer.c.tolist() if layer.c is not None else None,
            }
            for layer in flow.layers
        ],
    }


def _spark(values: np.ndarray, lo: float, hi: float) -> str:
    """log10 of ``values`` as block characters on the shared scale [lo, hi]; a space for a zero."""
    picks = np.linspace(0, len(values) - 1, min(SPARK_WIDTH, len(values))).round().astype(int)
    out = []
    for v in values[picks]:
        if not (v > 0 and math.isfinite(v)):
            out.append(" ")
            continue
        s = (math.log10(v) - lo) / (hi - lo or 1.0)
        out.append(SPARK[min(len(SPARK) - 1, max(0, int(s * (len(SPARK) - 1) + 0.5)))])
    return "".join(out)


def _show_flows(out: Console, flows: list[tuple[str, GradientFlow]]) -> None:
    curves = [c for _, f in flows for layer in f.layers for c in (layer.h, layer.c) if c is not None]
    positive = np.concatenate([c[c > 0] for c in curves] or [np.ones(1)])
    lo, hi = math.log10(positive.min()), math.log10(positive.max())
    steps = max(f.steps for _, f in flows)
    ks = sorted({k for k in (1, 10, 100, steps) if k <= steps})
    for i, (label, flow) in enumerate(flows, 1):
        out.print(f"#{i}  {label}: {flow.cell.upper()} {flow.num_layers} x {flow.hidden_size}")
    table = Table(
        title=f"mean ‖d loss_t / d state_(t-k)‖ (sparkline: log scale 1e{lo:.0f} .. 1e{hi:.0f}, k = 0 .. {steps})",
        title_justify="left",
    )
    for name in ("#", "layer", "state"):
        table.add_column(name)
    table.add_column("k = 0 .. K", no_wrap=True)
    for k in ks:
        table.add_column(f"k={k}", justify="right")
    for i, (_, flow) in enumerate(flows, 1):
        for layer in flow.layers:
            for state, curve in (("h", layer.h), ("c", layer.c)):
                if curve is None:
                    continue
                cells = [f"{curve[k]:.1e}" if k < len(curve) else "" for k in ks]
                table.add_row(f"#{i}", str(layer.layer + 1), state, _spark(curve, lo, hi), *cells)
    out.print(table)
    stats = Table(title="recurrent matrices and gates", title_justify="left")
    for name in ("#", "layer", "σmax(W_hh)", "σmax per gate block", "mean gates"):
        stats.add_column(name, justify="right" if name == "layer" else "left")
    for i, (_, flow) in enumerate(flows, 1):
        for layer in flow.layers:
            blocks = ", ".join(f"{name} {value:.2f}" for name, value in layer.sigma_max_blocks.items())
            gates = ", ".join(f"{name} {value:.2f}" for name, value in layer.gates.items()) or "-"
            stats.add_row(f"#{i}", str(layer.layer + 1), f"{layer.sigma_max:.3f}", blocks, gates)
    out.print(stats)


# -- wins --------------------------------------------------------------------------------------


@analyze.command("wins")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("text", required=False, type=click.Path(path_type=Path))
@click.option(
    "--baseline",
    default="ngram:20",
    show_default=True,
    metavar="ngram:N",
    help="The interpolated Kneser-Ney character N-gram to compare with (N up to 20).",
)
@click.option(
    "--baseline-text",
    type=click.Path(path_type=Path),
    help="Fit the n-gram on this text (default: the checkpoint's training split).",
)
@click.option(
    "--top-chars",
    type=click.IntRange(min=0),
    default=DEFAULT_TOP_CHARS,
    show_default=True,
    help="Rows for the most frequent characters.",
)
@click.option(
    "--max-chars",
    type=click.IntRange(min=2),
    default=100_000,
    show_default=True,
    help="Use at most this many characters of the text.",
)
@click.option(
    "--show",
    type=click.IntRange(min=0),
    default=600,
    show_default=True,
    help="Characters of the text to show coloured by the model's gain (0: none).",
)
@click.option("--encoding", default="utf-8", show_default=True)
@click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write a page: the tables and the whole text coloured by the model's gain.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
def wins(checkpoint, text, baseline, baseline_text, top_chars, max_chars, show, encoding, html_path, as_json, device):
    """Where CHECKPOINT beats an n-gram: the mean loss of both per character class (letters, space,
    newline, digits, punctuation, each bracket and quote) and for the most frequent characters, sorted
    by the model's gain, and how many characters each gave a probability below 0.5 (an error).

    TEXT (default: the checkpoint's validation split) is scored by both; the n-gram is fitted on the
    checkpoint's training split or --baseline-text.

    \b
    charrnn analyze wins out/best.pt --baseline ngram:20 --html wins.html
    """
    err = stderr_console()
    try:
        order = parse_baseline(baseline)
    except CharRNNError as exc:  # a usage error here, as for charrnn eval --baseline
        raise click.BadParameter(str(exc), param_hint="'--baseline'") from None
    _check_writable(html_path)
    ckpt = ckpt_io.load(checkpoint)
    string, ids, what = _encoded(ckpt, text, max_chars, encoding)
    if len(ids) < 2:
        raise DataError(f"{what}: {len(ids)} character(s) are too few to compare; pass a longer text")
    fit_ids, fit_what = fit_text(ckpt, baseline_text, encoding=encoding)
    err.print(f"[dim]fitting a {order}-gram on {fit_what} ({len(fit_ids):,} characters)")
    ngram = NGram.fit(fit_ids, order, len(ckpt.vocab))
    model = ckpt.build_model(resolve_device(device))
    err.print(f"[dim]scoring {len(ids):,} characters of {what}")
    result = compare(model, ngram, ids, string, top_chars=top_chars)
    if as_json:
        echo_json(
            {
                "checkpoint": str(checkpoint),
                "text": what,
                "n_chars": result.overall.n_chars,
                "baseline": {
                    "name": f"ngram:{order}",
                    "order": order,
                    "fit_text": fit_what,
                    "n_fit_chars": len(fit_ids),
                },
                "overall": _group_json(result.overall),
                "classes": [_group_json(g) for g in result.classes],
                "top_chars": [_group_json(g) for g in result.top_chars],
            }
        )
    else:
        _show_wins(Console(highlight=False), result, show)
    if html_path is not None:
        meta = [
            f"{checkpoint}: {ckpt.model_config.cell.upper()} {ckpt.model_config.num_layers} x "
            f"{ckpt.model_config.hidden_size}; {len(ids):,} characters of {what}",
            f"baseline: interpolated Kneser-Ney {order}-gram fitted on {fit_what} ({len(fit_ids):,} characters)",
        ]
        _write(html_path, wins_page(result, ckpt.vocab.chars, meta, escape_char))


def _group_json(g: Group) -> dict:
    return {
        "name": g.name,
        "n_chars": g.n_chars,
        "model_nats": g.model_nats,
        "model_bits": g.model_bits,
        "ngram_nats": g.ngram_nats,
        "ngram_bits": g.ngram_bits,
        "gain_nats": g.gain_nats,
        "gain_bits": g.gain_bits,
        "n_model_errors": g.model_errors,
        "n_ngram_errors": g.ngram_errors,
    }


def _gain_text(bits: float) -> Text:
    return Text(f"{bits:+.3f}", style="red" if bits > 0 else "blue" if bits < 0 else "")


def _groups_table(title: str, groups: list[Group], order: int, name_escape=lambda s: s) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("characters", no_wrap=True)
    for name in ("n", "model bits", f"{order}-gram bits", "gain", "model errors", f"{order}-gram errors"):
        table.add_column(name, justify="right")
    for g in groups:
        table.add_row(
            name_escape(g.name),
            f"{g.n_chars:,}",
            f"{g.model_bits:.3f}",
            f"{g.ngram_bits:.3f}",
            _gain_text(g.gain_bits),
            f"{g.model_errors:,} ({g.model_errors / g.n_chars:.0%})",
            f"{g.ngram_errors:,} ({g.ngram_errors / g.n_chars:.0%})",
        )
    return table


def _show_wins(out: Console, result, show: int) -> None:
    o, n = result.overall, f"{result.order}-gram"
    out.print(
        f"{o.n_chars:,} characters: model {o.model_bits:.3f} bits/char, {n} {o.ngram_bits:.3f} bits/char, "
        f"gain {o.gain_bits:+.3f}; errors (p < 0.5): model {o.model_errors:,}, {n} {o.ngram_errors:,}"
    )
    single = lambda s: escape_char(s) if len(s) == 1 else s  # a class name is a word or one character
    out.print(_groups_table("per class, by the model's gain (bits/char)", result.classes, result.order, single))
    if result.top_chars:
        out.print(_groups_table("the most frequent characters", result.top_chars, result.order, single))
    if show:
        end = min(show, len(result.text))
        positions = np.clip(result.gain_bits / GAIN_MAX_BITS, -1, 1)
        out.rule(f"the model's gain over the {n} per character (first {end:,})")
        out.print(coloured_text(result.text, positions, "diverging", 0, end))
        out.print(legend("diverging", -GAIN_MAX_BITS, GAIN_MAX_BITS, "bits; red: the model did better"))

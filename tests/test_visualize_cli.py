"""``charrnn visualize`` through click's CliRunner: every mode, its numbers against the library's, the
deprecated spellings, and the user mistakes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charrnn import checkpoint as ckpt_io
from charrnn import colours
from charrnn import visualize as viz
from charrnn.cli import cli
from charrnn.cli.visualize import CELL_DEPRECATED, GATE_CELL_DEPRECATED
from charrnn.data import Vocab
from charrnn.model import CharRNN, ModelConfig
from conftest import one_line_error, usage_error

TEXT = 'int main(void) {\n\tputs("hi (there)");\n\treturn 0;\n}\n' * 3
LINE = "int main(void) { return 0; }"  # one line of TEXT's characters: one terminal row, no glyphs
# A terminal that takes 24-bit colour, so the views carry their colours as ANSI codes.
COLOUR_TERMINAL = {"FORCE_COLOR": "1", "COLORTERM": "truecolor", "TERM": "xterm-256color", "COLUMNS": "200"}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Untrained 2-layer x 8 checkpoints for each cell type, "lstm-big" with its weights x 4 so that its
    gates saturate, and TEXT as a file: {"lstm": path, ..., "text": path}."""
    folder = tmp_path_factory.mktemp("viz")
    vocab = Vocab.from_text(TEXT + "abcxyz")
    paths = {}
    for name, cell, scale in (("lstm", "lstm", 1), ("gru", "gru", 1), ("rnn", "rnn", 1), ("lstm-big", "lstm", 4)):
        torch.manual_seed(0)
        config = ModelConfig(len(vocab), cell=cell, num_layers=2, hidden_size=8, embedding_size=6)
        weights = {k: v * scale for k, v in CharRNN(config).state_dict().items()}
        ckpt = ckpt_io.Checkpoint(path=None, model_config=config, vocab=vocab.chars, weights=weights)
        paths[name] = str(ckpt_io.save(ckpt, folder / f"{name}.pt"))
    text = folder / "main.c"
    text.write_text(TEXT, encoding="utf-8")
    paths["text"] = str(text)
    return paths


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["visualize", *args], env=env)


def library_values(path: str, text: str, layer: int, what: str, units: list[int]) -> np.ndarray:
    """(N, len(units)) values of ``what`` in ``layer`` (from 0), recorded by charrnn.visualize directly."""
    ckpt = ckpt_io.load(path)
    probe = viz.UnitProbe(layer, what, units)
    viz.run(ckpt.build_model(), viz.encode_text(ckpt.vocab, text, "t"), [probe])
    return probe.values


def json_units(result) -> list[dict]:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["units"]


_SGR = re.compile(r"\x1b\[([0-9;]*)m")


def coloured_row(line: str) -> list[tuple[str, tuple[int, int, int] | None]]:
    """Each character of one terminal row with its 24-bit background, from rich's ANSI codes."""
    out, bg, pos = [], None, 0
    for match in [*_SGR.finditer(line), None]:
        end = match.start() if match else len(line)
        out += [(ch, bg) for ch in line[pos:end]]
        if match is None:
            break
        codes, pos = match.group(1).split(";"), match.end()
        if codes in (["0"], [""]):
            bg = None
        for i in range(len(codes) - 4):
            if codes[i : i + 2] == ["48", "2"]:
                bg = tuple(int(c) for c in codes[i + 2 : i + 5])
    return out


def scale_position(rgb: tuple[int, int, int], kind: str = "diverging") -> float:
    """Where on the scale a background colour sits: the terminal quantises to steps of 1/32."""
    steps = [k / 32 for k in range(-32 if kind == "diverging" else 0, 33)]
    return next(s for s in steps if colours.colour(kind, s) == rgb)


# -- the views show the library's numbers ------------------------------------------------------


def test_one_unit_is_shown_over_the_text_with_visible_newlines_and_tabs(ckpts):
    result = invoke(ckpts["lstm"], "--text", ckpts["text"], "--layer", "2", "--unit", "3")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "layer 2, unit 3, tanh(c)" in lines[0]
    assert lines[1:5] == ["int main(void) {↵", '→   puts("hi (there)");↵', "→   return 0;↵", "}↵"]
    assert lines[-1] == "-1 " + " " * 24 + " +1   tanh(c)"  # the legend: the scale's ends and the quantity
    summary = re.fullmatch(
        rf"{re.escape(ckpts['text'])}: {len(TEXT)} characters, LSTM 2 x 8; (\d+\.\d{{3}}) bits/char\n", result.stderr
    )
    ckpt = ckpt_io.load(ckpts["lstm"])
    predictions = viz.PredictionProbe()
    viz.run(ckpt.build_model(), viz.encode_text(ckpt.vocab, TEXT, "t"), [predictions])
    assert summary and float(summary[1]) == pytest.approx(predictions.result.bits[1:].mean(), abs=6e-4)


def test_each_character_is_coloured_by_the_units_value(ckpts):
    result = invoke(ckpts["lstm"], "--string", LINE, "--layer", "2", "--unit", "3", env=COLOUR_TERMINAL)
    assert result.exit_code == 0, result.stderr
    row = coloured_row(result.stdout.splitlines()[1])
    assert "".join(ch for ch, _ in row) == LINE
    expected = library_values(ckpts["lstm"], LINE, 1, "c", [3])[:, 0]  # tanh(c), already on the -1..1 scale
    shown = np.array([scale_position(bg) for _, bg in row])
    np.testing.assert_allclose(shown, expected, atol=1 / 64 + 1e-6)
    assert np.ptp(expected) > 2 / 32, "the test needs a unit whose colour changes along the text"


def test_find_ranks_units_as_the_library_does_and_shows_the_best(ckpts):
    result = invoke(ckpts["lstm"], "--text", ckpts["text"], "--find", "bracket-depth", "--top", "3")
    assert result.exit_code == 0, result.stderr
    assert "units that track bracket-depth" in result.stdout
    rows = [
        line.split("│")[1:5]
        for line in result.stdout.splitlines()
        if line.startswith("│ ") and line[2:4].strip().isdigit()
    ]
    shown = [(int(layer), int(unit), float(r)) for _, layer, unit, r in rows]
    data = json.loads(
        invoke(ckpts["lstm"], "--text", ckpts["text"], "--find", "bracket-depth", "--top", "3", "--json").stdout
    )
    assert shown == [(r["layer"], r["unit"], round(r["r"], 3)) for r in data["find"]["ranking"]]
    best = shown[0]
    assert f"layer {best[0]}, unit {best[1]}, tanh(c), r = {best[2]:+.3f} with bracket-depth" in result.stdout


def test_predictions_table_shows_the_models_probabilities(ckpts):
    result = invoke(ckpts["gru"], "--string", "int main", "--predictions", "--range", "0:4")
    assert result.exit_code == 0, result.stderr
    assert "surprisal" in result.stdout
    assert "what the model expected at characters 0..3" in result.stdout
    assert "first character: no prediction" in result.stdout
    probs = json.loads(invoke(ckpts["gru"], "--string", "int main", "--predictions", "--json").stdout)
    rows = [line.split("│")[1:5] for line in result.stdout.splitlines() if re.match(r"│\s+[123] │", line)]
    assert [(int(t), float(p)) for t, _, p, _ in rows] == [
        (t, round(probs["predictions"]["prob"][t], 3)) for t in (1, 2, 3)
    ]
    assert "bits/char" in result.stderr


def gate_rows(stdout: str) -> dict[tuple[int, str], list[str]]:
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in stdout.splitlines() if re.match(r"│\s+\d+ │", line)]
    return {(int(r[0]), r[1]): r[2:] for r in rows}


@pytest.mark.parametrize("name, gates", [("lstm-big", ("input", "forget", "output")), ("gru", ("reset", "update"))])
def test_gates_table_shows_the_saturation_the_library_counts(ckpts, name, gates):
    result = invoke(ckpts[name], "--text", ckpts["text"], "--gates")
    assert result.exit_code == 0, result.stderr
    ckpt = ckpt_io.load(ckpts[name])
    probe = viz.GateProbe(ckpt.model_config)
    viz.run(ckpt.build_model(), viz.encode_text(ckpt.vocab, TEXT, "t"), [probe])
    expected = {
        (g.layer + 1, g.gate): [
            f"{g.left.mean():.1%}",
            f"{g.right.mean():.1%}",
            str(int((g.left > 0.5).sum())),
            str(int((g.right > 0.5).sum())),
            str(int(((g.left + g.right) < 0.05).sum())),
        ]
        for g in probe.result
    }
    assert gate_rows(result.stdout) == expected
    assert set(expected) == {(layer, gate) for layer in (1, 2) for gate in gates}
    if name == "lstm-big":  # the scaled weights saturate: the numbers say something
        assert any(row[0] != "0.0%" for row in expected.values())


# -- JSON and HTML -----------------------------------------------------------------------------


def test_json_holds_the_activations_and_predictions(ckpts):
    result = invoke(
        ckpts["lstm"], "--text", ckpts["text"], "--unit", "1", "--unit", "5", "--layer", "1", "--what", "h", "--json"
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    n = len(TEXT)
    assert data["n_chars"] == n and data["source_n_chars"] == n and data["text"] == TEXT and data["what"] == "h"
    assert data["model"] == {"cell": "lstm", "num_layers": 2, "hidden_size": 8}
    assert [(u["layer"], u["unit"]) for u in data["units"]] == [(1, 1), (1, 5)]
    # The same numbers as the library records.
    expected = library_values(ckpts["lstm"], TEXT, 0, "h", [1, 5])
    for i in range(2):
        np.testing.assert_allclose(np.array(data["units"][i]["values"]), expected[:, i], atol=1e-4)
    predictions = data["predictions"]
    assert predictions["prob"][0] is None and predictions["top"][0] is None
    assert len(predictions["top"]) == n and len(predictions["top"][1]) == 5
    assert all(0 <= p <= 1 for p in predictions["prob"][1:])


def test_json_find_and_gates(ckpts):
    result = invoke(ckpts["gru"], "--text", ckpts["text"], "--find", "line-position", "--top", "4", "--gates", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    ranking = data["find"]["ranking"]
    assert len(ranking) == 4 and {r["layer"] for r in ranking} <= {1, 2}
    assert [abs(r["r"]) for r in ranking] == sorted((abs(r["r"]) for r in ranking), reverse=True)
    assert [(u["layer"], u["unit"], u["r"]) for u in data["units"]] == [
        (r["layer"], r["unit"], r["r"]) for r in ranking
    ]
    assert len(data["units"][0]["values"]) == len(TEXT)
    assert {(g["layer"], g["gate"]) for g in data["gates"]} == {
        (layer, gate) for layer in (1, 2) for gate in ("reset", "update")
    }


def test_html_page_is_written(ckpts, tmp_path):
    page = tmp_path / "units.html"
    result = invoke(
        ckpts["lstm"],
        "--text",
        ckpts["text"],
        "--find",
        "indent",
        "--top",
        "2",
        "--unit",
        "0",
        "--gates",
        "--html",
        str(page),
    )
    assert result.exit_code == 0, result.stderr
    html = page.read_text(encoding="utf-8")
    assert html.count("<option") == 5  # unit 0, two found units, the feature, surprisal
    assert "<svg" in html and "units that track" in html.lower()
    assert f"wrote {page}" in result.stderr


def test_an_unwritable_html_path_is_an_output_error(ckpts, tmp_path):
    page = tmp_path / "no-such-folder" / "units.html"
    result = invoke(ckpts["lstm"], "--string", "int main", "--unit", "0", "--html", str(page))
    assert result.exit_code == 5
    error = result.stderr.splitlines()[-1]  # after the run's summary line: the page is made last
    assert error.startswith(f"Error: cannot write {page} (") and result.stderr.count("Error") == 1
    assert "choose a writable path" in result.stderr and not page.exists()


def test_sample_and_max_chars(ckpts):
    result = invoke(ckpts["rnn"], "--sample", "60", "--seed", "3", "--unit", "2", "--max-chars", "40")
    assert result.exit_code == 0, result.stderr
    assert "using the first 40 of 60 characters" in result.stderr
    assert "layer 2, unit 2, h" in result.stdout


# -- the unit and gate names, old and new -------------------------------------------------------


def test_deprecated_cell_works_like_unit_with_one_line_on_stderr(ckpts):
    args = (ckpts["lstm"], "--text", ckpts["text"], "--layer", "1", "--json")
    new = invoke(*args, "--unit", "2", "--unit", "6")
    old = invoke(*args, "--cell", "2", "--cell", "6")
    assert old.exit_code == 0, old.stderr
    assert old.stdout == new.stdout
    assert old.stderr.splitlines()[0] == CELL_DEPRECATED and old.stderr.count("deprecated") == 1
    assert old.stderr.splitlines()[1:] == new.stderr.splitlines() and "deprecated" not in new.stderr
    assert "--cell" not in invoke("--help").stdout  # hidden: --unit is the documented spelling


def test_gate_g_is_the_lstm_candidate_gate(ckpts):
    args = ("--text", ckpts["text"], "--what", "gate:g", "--unit", "4", "--json")
    units = json_units(invoke(ckpts["lstm-big"], *args))
    assert units[0]["what"] == "gate:g"
    values = np.array(units[0]["values"])
    np.testing.assert_allclose(values, library_values(ckpts["lstm-big"], TEXT, 1, "gate:g", [4])[:, 0], atol=1e-4)
    assert values.min() < 0 < values.max()  # a tanh gate, unlike the sigmoid ones
    shown = invoke(ckpts["lstm"], "--string", "int main", "--what", "gate:g", "--unit", "4")
    assert "layer 2, unit 4, g (candidate) gate" in shown.stdout


def test_deprecated_gate_cell_means_gate_g_with_one_line_on_stderr(ckpts):
    args = (ckpts["lstm"], "--text", ckpts["text"], "--unit", "4", "--json")
    old, new = invoke(*args, "--what", "gate:cell"), invoke(*args, "--what", "gate:g")
    assert old.exit_code == 0, old.stderr
    assert old.stdout == new.stdout
    assert old.stderr.splitlines()[0] == GATE_CELL_DEPRECATED and old.stderr.count("deprecated") == 1


# -- mistakes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "3", "--unit", "0"], "--layer 3: this model has 2 layer(s); pass a number from 1 to 2"),
        (["--unit", "8"], "--unit 8: each layer has 8 units; pass a number from 0 to 7"),
        (["--cell", "8"], "--unit 8: each layer has 8 units"),
        (["--find", "nope"], "unknown --find feature 'nope'"),
        (["--find", "regex:("], "--find regex:(: not a valid regular expression"),
        (["--find", "regex:"], "--find regex: needs a pattern after the colon"),
        (["--find", "comment"], "--find comment: the feature is 0 at every character"),
        (["--what", "gate:reset", "--unit", "0"], "--what gate:reset is not recorded for an LSTM; choose one of c, h"),
        (["--unit", "0", "--range", "x"], "--range 'x': use START:END"),
        (["--unit", "0", "--range", "9:20"], "selects nothing"),
        ([], "nothing to show: pass --unit N"),
    ],
)
def test_user_mistakes_give_one_line_errors(ckpts, args, message):
    result = invoke(ckpts["lstm"], "--string", "int main", *args)
    assert result.exit_code == 1, result.stdout
    assert message in result.stderr
    error = result.stderr.splitlines()[-1]  # a deprecated --cell says so first
    assert error.startswith("Error: ") and result.stderr.count("Error") == 1
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    "args, option",
    [
        (["--layer", "0", "--unit", "0"], "--layer"),
        (["--unit", "-1"], "--unit"),
        (["--cell", "-1"], "--cell"),
        (["--sample", "10", "--temperature", "0", "--unit", "0"], "--temperature"),
        (["--unit", "0", "--top", "0"], "--top"),
    ],
)
def test_out_of_range_numbers_are_usage_errors(ckpts, args, option):
    extra = [] if "--sample" in args else ["--string", "int main"]
    usage_error(invoke(ckpts["lstm"], *extra, *args), re.escape(f"Invalid value for '{option}'"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--string", "", "--unit", "0"], "the text is empty"),
        (["--string", "int €", "--unit", "0"], "1 character(s) are not in the model's vocabulary: '€'"),
        (
            ["--string", "ab", "--sample", "5", "--unit", "0"],
            "pass exactly one of --text FILE, --string TEXT or --sample N",
        ),
        (["--unit", "0"], "pass exactly one of"),
        (["--text", "/nonexistent.txt", "--unit", "0"], "no such file"),
    ],
)
def test_text_mistakes(ckpts, args, message):
    one_line_error(invoke(ckpts["lstm"], *args), 1, re.escape(message))


def test_device_option(ckpts):
    result = invoke(ckpts["gru"], "--string", "int main", "--unit", "0", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    result = invoke(ckpts["gru"], "--string", "int main", "--unit", "0", "--device", "tpu")
    one_line_error(result, 1, r"unknown --device 'tpu'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_cuda_says_so(ckpts):
    result = invoke(ckpts["gru"], "--string", "int main", "--unit", "0", "--device", "cuda")
    one_line_error(result, 1, r"CUDA is not available")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_records_what_the_cpu_records(ckpts):
    args = (ckpts["lstm"], "--text", ckpts["text"], "--unit", "1", "--find", "quote", "--top", "3", "--json")
    cpu, gpu = (json.loads(invoke(*args, "--device", device).stdout) for device in ("cpu", "cuda"))
    assert [u["unit"] for u in gpu["units"]] == [u["unit"] for u in cpu["units"]]
    for a, b in zip(cpu["units"], gpu["units"]):
        np.testing.assert_allclose(a["values"], b["values"], atol=2e-3)
    np.testing.assert_allclose(cpu["predictions"]["prob"][1:], gpu["predictions"]["prob"][1:], atol=2e-3)


def test_gates_of_a_vanilla_rnn_and_a_missing_checkpoint(ckpts, tmp_path):
    result = invoke(ckpts["rnn"], "--string", "int", "--gates")
    assert result.exit_code == 1 and "--gates needs an LSTM or GRU checkpoint" in result.stderr
    result = invoke(str(tmp_path / "none.pt"), "--string", "int", "--unit", "0")
    assert result.exit_code == 3 and "no such checkpoint" in result.stderr

"""``charrnn visualize`` through click's CliRunner: every mode, and the user mistakes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charrnn import checkpoint as ckpt_io
from charrnn import visualize as viz
from charrnn.cli import cli
from charrnn.data import Vocab
from charrnn.model import CharRNN, ModelConfig

TEXT = 'int main(void) {\n\tputs("hi (there)");\n\treturn 0;\n}\n' * 3


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Untrained 2-layer x 8 checkpoints for each cell, and TEXT as a file: {"lstm": path, ..., "text": path}."""
    folder = tmp_path_factory.mktemp("viz")
    vocab = Vocab.from_text(TEXT + "abcxyz")
    paths = {}
    for cell in ("lstm", "gru", "rnn"):
        torch.manual_seed(0)
        config = ModelConfig(len(vocab), cell=cell, num_layers=2, hidden_size=8, embedding_size=6)
        model = CharRNN(config)
        ckpt = ckpt_io.Checkpoint(path=None, model_config=config, vocab=vocab.chars, weights=model.state_dict())
        paths[cell] = str(ckpt_io.save(ckpt, folder / f"{cell}.pt"))
    text = folder / "main.c"
    text.write_text(TEXT, encoding="utf-8")
    paths["text"] = str(text)
    return paths


def invoke(*args: str):
    return CliRunner().invoke(cli, ["visualize", *args])


def test_one_cell_is_shown_over_the_text_with_visible_newlines_and_tabs(ckpts):
    result = invoke(ckpts["lstm"], "--text", ckpts["text"], "--layer", "2", "--cell", "3")
    assert result.exit_code == 0, result.stderr
    assert "layer 2, cell 3, tanh(c)" in result.stdout
    assert "↵" in result.stdout and "→" in result.stdout
    assert "int main(void) {↵\n" in result.stdout  # the glyph, then a real line break
    assert "-1" in result.stdout and "+1" in result.stdout  # the legend
    assert f"main.c: {len(TEXT)} characters, LSTM 2 x 8" in result.stderr


def test_find_ranks_cells_and_shows_the_best(ckpts):
    result = invoke(ckpts["lstm"], "--text", ckpts["text"], "--find", "bracket-depth", "--top", "3")
    assert result.exit_code == 0, result.stderr
    assert "cells that track bracket-depth" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ ") and line[2:4].strip().isdigit()]
    assert len(rows) == 3
    assert "with bracket-depth" in result.stdout  # the best cell, rendered after the table


def test_predictions_table_for_a_range(ckpts):
    result = invoke(ckpts["gru"], "--string", "int main", "--predictions", "--range", "0:4")
    assert result.exit_code == 0, result.stderr
    assert "surprisal" in result.stdout
    assert "what the model expected at characters 0..3" in result.stdout
    assert "first character: no prediction" in result.stdout
    assert "bits/char" in result.stderr


def test_gates_table(ckpts):
    result = invoke(ckpts["lstm"], "--string", "int main", "--gates")
    assert result.exit_code == 0, result.stderr
    for gate in ("input", "forget", "output"):
        assert gate in result.stdout
    result = invoke(ckpts["gru"], "--string", "int main", "--gates")
    assert result.exit_code == 0 and "reset" in result.stdout and "update" in result.stdout


def test_json_holds_the_activations_and_predictions(ckpts):
    result = invoke(ckpts["lstm"], "--text", ckpts["text"], "--cell", "1", "--cell", "5", "--layer", "1",
                    "--what", "h", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    n = len(TEXT)
    assert data["chars"] == n and data["text"] == TEXT and data["what"] == "h"
    assert [(c["layer"], c["cell"]) for c in data["cells"]] == [(1, 1), (1, 5)]
    # The same numbers as the library records.
    ckpt = ckpt_io.load(ckpts["lstm"])
    probe = viz.CellProbe(0, "h", [1, 5])
    viz.run(ckpt.build_model(), viz.encode_text(ckpt.vocab, TEXT, "t"), [probe])
    np.testing.assert_allclose(np.array(data["cells"][1]["values"]), probe.values[:, 1], atol=1e-4)
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
    assert len(data["cells"]) == 4 and len(data["cells"][0]["values"]) == len(TEXT)
    assert {(g["layer"], g["gate"]) for g in data["gates"]} == {(1, "reset"), (1, "update"), (2, "reset"), (2, "update")}


def test_html_page_is_written(ckpts, tmp_path):
    page = tmp_path / "cells.html"
    result = invoke(ckpts["lstm"], "--text", ckpts["text"], "--find", "indent", "--top", "2", "--cell", "0",
                    "--gates", "--html", str(page))
    assert result.exit_code == 0, result.stderr
    html = page.read_text(encoding="utf-8")
    assert html.count("<option") == 5  # cell 0, two found cells, the feature, surprisal
    assert "<svg" in html and "cells that track" in html.lower()
    assert f"wrote {page}" in result.stderr


def test_sample_and_max_chars(ckpts):
    result = invoke(ckpts["rnn"], "--sample", "60", "--seed", "3", "--cell", "2", "--max-chars", "40")
    assert result.exit_code == 0, result.stderr
    assert "using the first 40 of 60 characters" in result.stderr
    assert "layer 2, cell 2, h" in result.stdout


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--layer", "3", "--cell", "0"], 1, "--layer 3: this model has 2 layer(s); pass a number from 1 to 2"),
        (["--layer", "0", "--cell", "0"], 1, "--layer 0"),
        (["--cell", "8"], 1, "--cell 8: each layer has 8 cells; pass a number from 0 to 7"),
        (["--cell", "-1"], 1, "--cell -1"),
        (["--find", "nope"], 1, "unknown --find feature 'nope'"),
        (["--find", "regex:("], 1, "not a valid regular expression"),
        (["--find", "comment"], 1, "the feature is 0 at every character"),
        (["--what", "gate:reset", "--cell", "0"], 1, "choose one of c, h, gate:input"),
        (["--cell", "0", "--range", "x"], 1, "--range 'x': use START:END"),
        (["--cell", "0", "--range", "9:20"], 1, "selects nothing"),
        ([], 1, "nothing to show"),
    ],
)
def test_user_mistakes_give_one_line_errors(ckpts, args, code, message):
    result = invoke(ckpts["lstm"], "--string", "int main", *args)
    assert result.exit_code == code, result.stdout
    assert message in result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--string", "", "--cell", "0"], 1, "the text is empty"),
        (["--string", "int €", "--cell", "0"], 1, "1 character(s) are not in the model's vocabulary: '€'"),
        (["--string", "ab", "--sample", "5", "--cell", "0"], 1, "pass exactly one of --text FILE, --string TEXT or --sample N"),
        (["--cell", "0"], 1, "pass exactly one of"),
        (["--text", "/nonexistent.txt", "--cell", "0"], 1, "no such file"),
    ],
)
def test_text_mistakes(ckpts, args, code, message):
    result = invoke(ckpts["lstm"], *args)
    assert result.exit_code == code
    assert message in result.stderr and "Traceback" not in result.stderr


def test_device_option(ckpts):
    result = invoke(ckpts["gru"], "--string", "int main", "--cell", "0", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    result = invoke(ckpts["gru"], "--string", "int main", "--cell", "0", "--device", "tpu")
    assert result.exit_code == 1 and "unknown --device 'tpu'" in result.stderr
    if not torch.cuda.is_available():
        result = invoke(ckpts["gru"], "--string", "int main", "--cell", "0", "--device", "cuda")
        assert result.exit_code == 1 and "CUDA is not available" in result.stderr


def test_gates_of_a_vanilla_rnn_and_a_missing_checkpoint(ckpts, tmp_path):
    result = invoke(ckpts["rnn"], "--string", "int", "--gates")
    assert result.exit_code == 1 and "--gates needs an LSTM or GRU checkpoint" in result.stderr
    result = invoke(str(tmp_path / "none.pt"), "--string", "int", "--cell", "0")
    assert result.exit_code == 3 and "no such checkpoint" in result.stderr

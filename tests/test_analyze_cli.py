"""`charrnn analyze gradflow` and `charrnn analyze wins` end to end: terminal, --json (against its
schema in docs/json.md), --html, and the one-line errors."""

from __future__ import annotations

import json

import pytest
from test_json import validate

from charrnn.cli import cli
from conftest import one_line_error, usage_error

pytestmark = pytest.mark.slow  # the shared tiny trained run


def test_gradflow_overlays_several_checkpoints(runner, trained_run, tmp_path):
    out, _ = trained_run
    best, last = str(out / "best.pt"), str(out / "last.pt")
    args = ["analyze", "gradflow", best, last, "--steps", "20", "--positions", "4", "--device", "cpu"]
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    data = validate("analyze_gradflow", result.stdout)
    assert [m["checkpoint"] for m in data["models"]] == [best, last]
    layer = data["models"][0]["layers"][0]
    assert len(layer["grad_norm_h"]) == 21 and len(layer["grad_norm_c"]) == 21
    assert set(layer["gates"]) == {"input", "forget", "output"}
    assert all(v > 0 for v in layer["grad_norm_h"])

    page = tmp_path / "flow.html"
    shown = runner.invoke(cli, [*args, "--html", str(page)])
    assert shown.exit_code == 0, shown.stderr
    assert "σmax" in shown.stdout and "#2" in shown.stdout
    html = page.read_text(encoding="utf-8")
    assert html.count("<svg") >= 1 and f"{best}, layer 1, h" in html and f"{last}, layer 1, c" in html


def test_gradflow_errors(runner, trained_run, corpus_file, tmp_path):
    out, _ = trained_run
    best = str(out / "best.pt")
    one_line_error(runner.invoke(cli, ["analyze", "gradflow", str(tmp_path / "none.pt")]), 3, "none.pt")
    short = tmp_path / "short.txt"
    short.write_text(corpus_file.read_text(encoding="utf-8")[:30], encoding="utf-8")
    one_line_error(
        runner.invoke(cli, ["analyze", "gradflow", best, "--text", str(short), "--steps", "50"]),
        1,
        "--steps 50 needs at least 52",
    )
    usage_error(runner.invoke(cli, ["analyze", "gradflow", best, "--steps", "0"]), "--steps")


def test_wins_compares_the_model_with_an_ngram_per_class(runner, trained_run, tmp_path):
    out, _ = trained_run
    ckpt = str(out / "best.pt")
    result = runner.invoke(cli, ["analyze", "wins", ckpt, "--baseline", "ngram:3", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    data = validate("analyze_wins", result.stdout)
    assert data["baseline"]["name"] == "ngram:3" and data["text"].startswith("validation split of")
    assert sum(g["n_chars"] for g in data["classes"]) == data["n_chars"] == data["overall"]["n_chars"]
    assert {"letter", "space", "newline", "punctuation"} <= {g["name"] for g in data["classes"]}
    gains = [g["gain_nats"] for g in data["classes"]]
    assert gains == sorted(gains, reverse=True)
    assert len(data["top_chars"]) == 10

    page = tmp_path / "wins.html"
    shown = runner.invoke(cli, ["analyze", "wins", ckpt, "--baseline", "ngram:3", "--html", str(page), "--show", "80"])
    assert shown.exit_code == 0, shown.stderr
    assert "per class" in shown.stdout and "3-gram" in shown.stdout
    html = page.read_text(encoding="utf-8")
    assert "Where the model wins over a 3-gram" in html and "the model's gain over the 3-gram" in html


def test_wins_errors(runner, trained_run, tmp_path):
    out, _ = trained_run
    ckpt = str(out / "best.pt")
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("ωμέγα ωμέγα", encoding="utf-8")
    one_line_error(runner.invoke(cli, ["analyze", "wins", ckpt, str(foreign)]), 1, "not in the model's vocabulary")
    usage_error(runner.invoke(cli, ["analyze", "wins", ckpt, "--baseline", "ngram:99"]), "from 1 to 20")
    one_line_error(
        runner.invoke(cli, ["analyze", "wins", ckpt, "--html", str(tmp_path / "no" / "such" / "dir" / "w.html")]),
        5,
        "cannot write",
    )


def test_the_json_of_analyze_has_its_schema():
    from test_json import schemas

    found = schemas()
    assert {"analyze_gradflow", "analyze_wins"} <= set(found)
    json.dumps(found["analyze_wins"])  # a plain JSON document

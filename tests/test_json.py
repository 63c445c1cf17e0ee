"""Every command's --json output against its JSON Schema in docs/json.md, and the key vocabulary."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jsonschema
import pytest

from charrnn.cli import cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "json.md"


def schemas() -> dict[str, dict]:
    blocks = re.findall(r"^```json schema=(\w+)\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)
    return {name: json.loads(body) for name, body in blocks}


def validate(command: str, output: str) -> dict:
    data = json.loads(output)
    jsonschema.validate(data, schemas()[command])
    return data


def properties(schema: dict):
    """Every (name, subschema) in a schema, nested ones included."""
    for name, sub in schema.get("properties", {}).items():
        yield name, sub
        if isinstance(sub, dict):
            yield from properties(sub)
            if isinstance(sub.get("items"), dict):
                yield from properties(sub["items"])


def test_every_schema_is_valid_and_speaks_the_vocabulary():
    found = schemas()
    assert set(found) == {
        "train",
        "sample",
        "eval",
        "eval_record",
        "inspect",
        "visualize",
        "analyze_gradflow",
        "analyze_wins",
        "export",
    }
    for name, schema in found.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        for key, sub in properties(schema):
            if "deprecated" in str(sub.get("description", "")):
                continue
            old = re.search(r"(_loss|_bpc|_per_char|seconds)$", key) or key in ("chars_seen", "elapsed", "size")
            assert not old, f"{name}: {key} breaks the vocabulary"


def test_train_json(trained_run):
    _, summary = trained_run
    jsonschema.validate(summary, schemas()["train"])
    assert summary["best_val_bits"] == pytest.approx(summary["best_val_nats"] / 0.6931471805599453)


def test_sample_json(runner, trained_run):
    out, _ = trained_run
    result = runner.invoke(
        cli,
        ["sample", str(out / "best.pt"), "--json", "-n", "20", "--num-samples", "2", "--seed", "1", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.stderr
    data = validate("sample", result.stdout)
    assert all(len(s) == 20 for s in data["samples"])


def test_eval_json(runner, trained_run, corpus_file):
    out, _ = trained_run
    result = runner.invoke(cli, ["eval", str(out / "best.pt"), str(corpus_file), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    data = validate("eval", result.stdout)
    assert data["loss_bits"] == pytest.approx(data["loss_nats"] / 0.6931471805599453)


def test_eval_per_line_json(runner, trained_run, corpus_file):
    out, _ = trained_run
    result = runner.invoke(
        cli, ["eval", str(out / "best.pt"), str(corpus_file), "--per-line", "--top-surprises", "2", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(corpus_file.read_text(encoding="utf-8").splitlines())
    for line in lines[:50]:
        data = validate("eval_record", line)
        assert len(data["top_surprises"]) == min(2, data["n_chars"])


def test_inspect_json(runner, trained_run):
    out, _ = trained_run
    result = runner.invoke(cli, ["inspect", str(out / "best.pt"), "--json"])
    assert result.exit_code == 0, result.stderr
    data = validate("inspect", result.stdout)
    assert data["history"]["val_nats"][-1] == pytest.approx(data["loss"]["best_val_nats"]) or (
        min(data["history"]["val_nats"]) == pytest.approx(data["loss"]["best_val_nats"])
    )
    assert data["vocab"]["n_chars"] == len(data["vocab"]["chars"]) == data["model"]["vocab_size"]


def test_visualize_json(runner, trained_run):
    out, _ = trained_run
    text = "KING:\nthe cat sees the mat.\nQUEEN:\na dog loves a crown.\n"
    result = runner.invoke(
        cli,
        [
            "visualize",
            str(out / "best.pt"),
            "--string",
            text,
            "--unit",
            "3",
            "--find",
            "line-position",
            "--top",
            "2",
            "--gates",
            "--json",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.stderr
    data = validate("visualize", result.stdout)
    assert data["n_chars"] == len(text) == len(data["units"][0]["values"])
    bits, prob = data["predictions"]["surprisal_bits"], data["predictions"]["prob"]
    assert bits[0] is None and bits[5] == pytest.approx(-math.log2(prob[5]), abs=2e-3)

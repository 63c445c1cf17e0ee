"""Every command's --json output against its JSON Schema in docs/json.md, and the key vocabulary."""

from __future__ import annotations

import json
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


def keys(schema: dict) -> set[str]:
    """Every property name in a schema, nested ones included."""
    found = set()
    for name, sub in schema.get("properties", {}).items():
        found.add(name)
        if isinstance(sub, dict):
            found |= keys(sub)
            if isinstance(sub.get("items"), dict):
                found |= keys(sub["items"])
    return found


def test_every_schema_is_valid_and_speaks_the_vocabulary():
    found = schemas()
    assert {"train", "sample", "eval"} <= set(found)
    for name, schema in found.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        for key in keys(schema):
            deprecated = "deprecated" in json.dumps(schema["properties"].get(key, {}))
            if deprecated:
                continue
            assert not re.search(r"(_loss|_bpc|_per_char|seconds)$", key), f"{name}: {key} breaks the vocabulary"


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

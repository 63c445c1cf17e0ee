"""`charrnn export` from the command line: each format, the size report on stderr, --json against its
schema in docs/json.md, and every documented mistake as one line with its exit code."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import torch

import charrnn
from charrnn.checkpoint import Checkpoint, save
from charrnn.cli import cli
from charrnn.model import CharRNN, ModelConfig
from conftest import one_line_error, usage_error

VOCAB = "\n !.abcdeiklmnorst"
JSON_DOC = Path(__file__).resolve().parents[1] / "docs" / "json.md"


def export_schema() -> dict:
    """The schema of `charrnn export --json` in docs/json.md (tests/test_json.py checks its vocabulary)."""
    body = re.search(r"^```json schema=export\n(.*?)^```", JSON_DOC.read_text(encoding="utf-8"), re.M | re.S)
    assert body is not None, "docs/json.md should have the export schema"
    return json.loads(body.group(1))


@pytest.fixture
def source(tmp_path):
    """A small LSTM checkpoint written the way training writes one: (path, parameter count)."""
    torch.manual_seed(0)
    config = ModelConfig(len(VOCAB), num_layers=1, hidden_size=16, embedding_size=4)
    weights = CharRNN(config).state_dict()
    path = save(Checkpoint(None, config, VOCAB, weights), tmp_path / "best.pt")
    return path, sum(t.numel() for t in weights.values())


@pytest.mark.parametrize("name", ["model.safetensors", "page.html", "page.htm", "model.onnx"])
def test_each_format_is_written_with_a_size_report_on_stderr(runner, source, tmp_path, name):
    if name.endswith(".onnx"):
        pytest.importorskip("onnx")
    path, parameters = source
    result = runner.invoke(cli, ["export", str(path), str(tmp_path / name)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    report = result.stderr.splitlines()[0]
    size = (tmp_path / name).stat().st_size
    assert report.startswith(f"wrote {tmp_path / name} (") and f"{parameters:,} parameters, float32" in report
    assert f"{size / 1e6:.2f} MB" in report or f"{size:,} bytes" in report
    assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_json_says_what_was_written(runner, source, tmp_path):
    path, parameters = source
    result = runner.invoke(cli, ["export", str(path), str(tmp_path / "m.safetensors"), "--half", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    jsonschema.validate(data, export_schema())
    files = [(tmp_path / "m.safetensors"), (tmp_path / "m.json")]
    assert data["files"] == [{"path": str(p), "n_bytes": p.stat().st_size} for p in files]
    assert data["n_bytes"] == sum(p.stat().st_size for p in files)
    assert (data["format"], data["parameters"], data["half"]) == ("safetensors", parameters, True)


def test_a_pair_exports_again_to_a_page(runner, source, tmp_path):
    path, _ = source
    assert runner.invoke(cli, ["export", str(path), str(tmp_path / "m.safetensors")]).exit_code == 0
    result = runner.invoke(cli, ["export", str(tmp_path / "m.safetensors"), str(tmp_path / "p.html"), "--half"])
    assert result.exit_code == 0, result.stderr
    assert "float16 matrices" in result.stderr and "no server and no network" in result.stderr
    assert charrnn.load(tmp_path / "m.safetensors").vocab.chars == VOCAB


def test_documented_mistakes_are_one_line_with_their_exit_code(runner, source, tmp_path):
    path, _ = source
    export = lambda *args: runner.invoke(cli, ["export", *map(str, args)])  # noqa: E731
    one_line_error(
        export(path, tmp_path / "m.pt"),
        1,
        r"cannot tell the format of .*m\.pt.*name the output \.onnx, \.safetensors or \.html",
    )
    one_line_error(export(path, tmp_path / "m"), 1, r"its suffix '\(none\)'")
    one_line_error(export(path, tmp_path / "m.onnx", "--half"), 1, r"--half applies to \.html and \.safetensors")
    one_line_error(export(tmp_path / "nope.pt", tmp_path / "m.html"), 3, r"nope\.pt: no such checkpoint")
    (tmp_path / "text.txt").write_text("not a checkpoint", encoding="utf-8")
    one_line_error(export(tmp_path / "text.txt", tmp_path / "m.html"), 3, r"not a valid charrnn checkpoint")
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    one_line_error(export(path, blocker / "m.html"), 5, r"cannot write .*m\.html \(.*\); choose a writable folder")
    usage_error(export(path), r"Missing argument 'OUTPUT'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "file", "text.txt"]  # nothing half-written


def test_an_existing_export_is_replaced_whole(runner, source, tmp_path):
    path, _ = source
    target = tmp_path / "page.html"
    target.write_text("an older page", encoding="utf-8")
    assert runner.invoke(cli, ["export", str(path), str(target)]).exit_code == 0
    assert re.search(r'<script type="application/json" id="model">', target.read_text(encoding="utf-8"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left

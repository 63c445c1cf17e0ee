"""``charrnn eval --per-line / --per-file`` and ``Model.score_each``: per-record scores, streamed,
checked against ``Model.score`` of the same text (an independent whole-text computation)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_sample_controls import VOCAB, peaky_model, save

import charrnn
from charrnn import scoring
from charrnn.cli import cli
from charrnn.errors import DataError
from conftest import one_line_error, usage_error

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "ab cd\nefgh\n\nabc hh\nbad cafe\nfeed"  # the last line has no newline


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save(peaky_model(VOCAB, seed=2), VOCAB, tmp_path_factory.mktemp("scoring") / "m.pt")


@pytest.fixture(scope="module")
def model(ckpt):
    return charrnn.load(ckpt, device="cpu")


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def lines_of(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def reference_nats(model, text: str) -> np.ndarray:
    """Each character's nats, the text read from a newline: ``Model.score`` of one whole string."""
    return model.score("\n" + text).surprisal_bits[1:] * math.log(2)


def test_lines_carry_the_state_and_add_up_to_the_whole_text(model, text_file):
    records = list(model.score_each(text_file))
    per_char = reference_nats(model, TEXT)
    assert [r.line for r in records] == list(range(1, len(lines_of(TEXT)) + 1))
    at = 0
    for record, line in zip(records, lines_of(TEXT)):
        assert record.n_chars == len(line) and record.file == str(text_file)
        assert record.total_nats == pytest.approx(per_char[at : at + len(line)].sum(), abs=1e-4)
        assert record.nats == pytest.approx(record.total_nats / len(line))
        at += len(line)
    (whole,) = model.score_each(text_file, per="file")
    assert whole.n_chars == len(TEXT) and whole.line is None
    assert whole.total_nats == pytest.approx(per_char.sum(), abs=1e-4)


def test_reset_each_scores_every_line_on_its_own(model, text_file):
    reset = list(model.score_each(text_file, reset_each=True))
    carried = list(model.score_each(text_file))
    for record, line in zip(reset, lines_of(TEXT)):
        assert record.total_nats == pytest.approx(reference_nats(model, line).sum(), abs=1e-4)
    assert any(abs(a.total_nats - b.total_nats) > 1e-3 for a, b in zip(reset, carried)), "reset_each was ignored"


def test_chunks_and_records_cut_anywhere_give_the_same_scores(model, text_file, monkeypatch):
    want = [r.total_nats for r in model.score_each(text_file)]
    monkeypatch.setattr(scoring, "SCORE_CHUNK", 3)
    monkeypatch.setattr(scoring, "PIECE_CHARS", 4)  # lines cut across the reader's pieces too
    cut = list(model.score_each(text_file, top_surprises=2))
    assert [r.total_nats for r in cut] == pytest.approx(want, abs=1e-4)
    assert [r.n_chars for r in cut] == [len(line) for line in lines_of(TEXT)]


def test_top_surprises_are_the_most_surprising_characters_with_their_positions(model, text_file):
    per_char_bits = reference_nats(model, TEXT) / math.log(2)
    at = 0
    for record, line in zip(model.score_each(text_file, top_surprises=3), lines_of(TEXT)):
        bits = per_char_bits[at : at + len(line)]
        order = sorted(range(len(line)), key=lambda i: (-bits[i], i))[:3]
        assert [s.position for s in record.top_surprises] == order
        assert [s.char for s in record.top_surprises] == [line[i] for i in order]
        assert [s.bits for s in record.top_surprises] == pytest.approx([bits[i] for i in order], abs=1e-4)
        at += len(line)


def test_unknown_characters_are_an_error_naming_them_or_skipped_and_counted(model, tmp_path):
    path = tmp_path / "u.txt"
    path.write_text("ab xcd\nef\nzz\n", encoding="utf-8")
    with pytest.raises(DataError, match="'x', 'z'.*unknown"):
        list(model.score_each(path))
    records = list(model.score_each(path, unknown="skip"))
    assert [r.n_unknown for r in records] == [1, 0, 2]
    assert [r.n_chars for r in records] == [6, 3, 1]
    known = "ab cd\nef\n\n"
    per_char = reference_nats(model, known)
    assert sum(r.total_nats for r in records) == pytest.approx(per_char.sum(), abs=1e-4)


def test_cli_per_line_streams_json_lines_in_input_order(ckpt, model, text_file, tmp_path, runner):
    second = tmp_path / "second.txt"
    second.write_text("hh\nab\n", encoding="utf-8")
    result = runner.invoke(cli, ["eval", str(ckpt), str(text_file), str(second), "--per-line", "--top-surprises", "2"])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["file"], r["line"]) for r in rows] == [(str(text_file), i) for i in range(1, 7)] + [
        (str(second), 1),
        (str(second), 2),
    ]
    api = list(model.score_each([text_file, second], top_surprises=2))
    for row, record in zip(rows, api):
        assert row["total_nats"] == pytest.approx(record.total_nats)
        assert row["loss_bits"] == pytest.approx(record.total_nats / record.n_chars / math.log(2))
        assert row["perplexity"] == pytest.approx(math.exp(row["loss_nats"]))
        assert [s["position"] for s in row["top_surprises"]] == [s.position for s in record.top_surprises]
    assert "8 line(s)" in result.stderr
    files = runner.invoke(cli, ["eval", str(ckpt), str(text_file), str(second), "--per-file", "--reset-each"])
    rows = [json.loads(line) for line in files.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(text_file), str(second)] and "line" not in rows[0]
    assert rows[1]["total_nats"] == pytest.approx(reference_nats(model, "hh\nab\n").sum(), abs=1e-4)


def test_cli_per_line_errors(ckpt, tmp_path, runner, text_file):
    path = tmp_path / "u.txt"
    path.write_text("ab xcd\n", encoding="utf-8")
    one_line_error(runner.invoke(cli, ["eval", str(ckpt), str(path), "--per-line"]), 1, "'x'.*--unknown skip")
    skipped = runner.invoke(cli, ["eval", str(ckpt), str(path), "--per-line", "--unknown", "skip"])
    assert json.loads(skipped.stdout)["n_unknown"] == 1
    usage_error(runner.invoke(cli, ["eval", str(ckpt), str(text_file), "--reset-each"]), "needs --per-line")
    usage_error(runner.invoke(cli, ["eval", str(ckpt), "--per-line"]), "needs TEXT")
    usage_error(runner.invoke(cli, ["eval", str(ckpt), str(text_file), str(path)]), "one TEXT at a time")
    one_line_error(runner.invoke(cli, ["eval", str(ckpt), str(tmp_path / "none.txt"), "--per-file"]), 1, "none.txt")

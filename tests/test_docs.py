"""The documentation's examples run as written, so they cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


@pytest.mark.slow
def test_api_examples_run_in_order(tmp_path, monkeypatch, capsys):
    blocks = python_blocks((DOCS / "api.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 8
    shakespeare = DOCS.parent / "data" / "tinyshakespeare" / "input.txt"
    (tmp_path / "input.txt").write_text(shakespeare.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/api.md, python block {i + 1}", "exec"), namespace)
        except Exception as exc:  # say which block broke
            pytest.fail(f"docs/api.md block {i + 1} raised {type(exc).__name__}: {exc}\n{block}")
    printed = capsys.readouterr().out
    assert "did you mean 'hidden_size'" in printed
    assert "interrupt:should_stop" in printed
    assert "bits/char" in printed


def test_every_test_the_docs_cite_exists():
    """docs/guarantees.md backs each promise with tests by name: a renamed or deleted test breaks it here."""
    defined = set()
    for path in (DOCS.parent / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(encoding="utf-8"), flags=re.M))
    cited = set()
    for doc in DOCS.glob("*.md"):
        cited |= set(re.findall(r"\b(test_\w+)\b(?!\.py)", doc.read_text(encoding="utf-8")))  # not file names
    assert len(cited) > 20
    assert sorted(cited - defined) == []

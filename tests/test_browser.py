"""The HTML page of ``charrnn visualize`` in a real browser: headless Chromium renders it, runs its
script, and ``--dump-dom`` shows the result. The page's ``#selftest=T`` mode hovers character T
itself and copies the tooltip into ``<pre id=selftest>``, so no mouse or driver is needed.

Skipped where /usr/bin/chromium is missing; CI installs it with .ci/browser-deps.sh.
"""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from charrnn import html_report
from charrnn import visualize as viz
from charrnn.data import Vocab, escape_char
from charrnn.model import CharRNN, ModelConfig
from conftest import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.slow,  # a Chromium launch per test
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs /usr/bin/chromium: run .ci/browser-deps.sh (or apt-get install chromium) to enable",
    ),
]

TEXT = 'if (a < b && c) {\n\tputs("x\'s");\n}\n'
HOVER = 12  # the character the self-test hovers


class DomParser(HTMLParser):
    """The text of each span in #text, and of <pre id=selftest>."""

    def __init__(self):
        super().__init__()
        self.spans: list[str] = []
        self.styled = 0
        self.selftest = ""
        self._where = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("id") == "text":
            self._where = "text"
        elif tag == "span" and self._where == "text":
            self.spans.append("")
            self.styled += "background" in (attrs.get("style") or "")
        elif tag == "pre" and attrs.get("id") == "selftest":
            self._where = "selftest"

    def handle_endtag(self, tag):
        if (tag, self._where) in (("div", "text"), ("pre", "selftest")):
            self._where = None

    def handle_data(self, data):
        if self._where == "text" and self.spans:
            self.spans[-1] += data
        elif self._where == "selftest":
            self.selftest += data


def chromium(tmp_path: Path, *args: str) -> str:
    command = [
        str(CHROMIUM),
        *CHROMIUM_ARGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """An untrained LSTM's page for TEXT: (path, vocab, predictions)."""
    vocab = Vocab.from_text(TEXT)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(len(vocab), num_layers=1, hidden_size=8, embedding_size=4)).eval()
    units = viz.UnitProbe(0, "c", [0, 1])
    predictions = viz.PredictionProbe()
    viz.run(model, viz.encode_text(vocab, TEXT, "test"), [units, predictions])
    views = [
        html_report.View(f"L1 #{u} tanh(c)", f"layer 1, unit {u}", units.values[:, i]) for i, u in enumerate([0, 1])
    ]
    html = html_report.render_page(
        TEXT, title="browser test", meta=[], views=views, vocab=vocab.chars, predictions=predictions.result
    )
    path = tmp_path_factory.mktemp("page") / "page.html"
    path.write_text(html, encoding="utf-8")
    return path, vocab, predictions.result


def test_the_browser_renders_every_character_coloured_and_the_hover_shows_the_top5(page, tmp_path):
    path, vocab, predictions = page
    dom = DomParser()
    dom.feed(chromium(tmp_path, "--dump-dom", f"{path.as_uri()}#selftest={HOVER}"))

    assert dom.spans == [html_report.glyph(ch) for ch in TEXT]
    assert dom.styled == len(TEXT), "the script should colour every character"
    header, *tooltip = dom.selftest.splitlines()
    assert header == f"selftest: {len(TEXT)} spans, {len(TEXT)} coloured, hover #{HOVER}"
    assert tooltip[0] == f"#{HOVER}  '{TEXT[HOVER]}'"
    assert tooltip[1].startswith("L1 #0 tanh(c): ")

    # The guesses in the tooltip are the model's top 5 for that position, with their probabilities.
    line = next(t for t in tooltip if t.startswith("top-5 guesses: "))
    shown = re.findall(r"'(.*?)' (\d+\.\d)%", line[len("top-5 guesses: ") :])
    expected = [escape_char(vocab.chars[i]) for i in predictions.top_ids[HOVER]]
    assert [g for g, _ in shown] == expected
    for (_, pct), p in zip(shown, predictions.top_probs[HOVER]):
        assert float(pct) == pytest.approx(100 * p, rel=0.03, abs=0.06)  # 1/16-bit quantisation


def test_the_first_character_has_no_prediction(page, tmp_path):
    path, _, _ = page
    dom = DomParser()
    dom.feed(chromium(tmp_path, "--dump-dom", f"{path.as_uri()}#selftest=0"))
    assert "no prediction (first character)" in dom.selftest

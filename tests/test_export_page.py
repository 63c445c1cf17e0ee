"""The exported HTML page in a real browser (headless Chromium driven by Playwright): its greedy text
is `charrnn sample --argmax`'s, it samples with a seed, it refuses unknown characters, it stops when
asked, and it makes no request beyond its own file.

Skipped where /usr/bin/chromium or playwright is missing; CI installs Chromium with .ci/browser-deps.sh.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charrnn.api import Model
from charrnn.checkpoint import Checkpoint
from charrnn.data import Vocab
from charrnn.export import export
from charrnn.export.fused import halved
from charrnn.model import CharRNN, ModelConfig
from conftest import CHROMIUM, CHROMIUM_ARGS, make_text

playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install '.[test]')")
pytestmark = [
    pytest.mark.slow,  # Chromium, and a few seconds of training per cell
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium: run .ci/browser-deps.sh to enable"),
]

LENGTH = 400  # greedy characters compared; the issue asks for at least 300
TIMEOUT_MS = 120_000


def trained_checkpoint(cell: str, steps: int = 80) -> Checkpoint:
    """A small two-layer model trained briefly on conftest's sentences: a greedy continuation with
    structure (words, lines, speakers), where an untrained model's repeats one character."""
    text = make_text(200)
    vocab = Vocab.from_text(text)
    ids = torch.from_numpy(vocab.encode(text).astype(np.int64))
    torch.manual_seed(0)
    config = ModelConfig(len(vocab), cell=cell, num_layers=2, hidden_size=32, embedding_size=8)
    model = CharRNN(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 49, (8,)).tolist()
        batch = torch.stack([ids[s : s + 49] for s in starts])
        logits, _ = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return Checkpoint(None, config, vocab, {k: v.detach().clone() for k, v in model.state_dict().items()})


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def checkpoints(one_thread):
    with torch.random.fork_rng():
        return {cell: trained_checkpoint(cell) for cell in ("lstm", "gru", "rnn")}


class Page:
    """One exported page opened in the browser; every request it makes is recorded and refused
    unless it is for the page's own file."""

    def __init__(self, browser, path: Path):
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        own = path.resolve().as_uri()

        def route(r):
            self.requests.append(r.request.url)
            if r.request.url == own:
                r.continue_()
            else:
                r.abort()

        self.page.route("**/*", route)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(own)
        self.page.wait_for_selector("body[data-state=ready]", timeout=TIMEOUT_MS)

    def generate(self, prime: str = "", length: int = LENGTH, argmax: bool = True, **fields) -> str:
        p = self.page
        p.fill("#prime", prime)
        p.fill("#length", str(length))
        p.set_checked("#argmax", argmax)
        for name, value in fields.items():
            p.fill(f"#{name.replace('_', '-')}", str(value))
        p.click("#generate")
        p.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=TIMEOUT_MS)
        return p.text_content("#output") or ""

    def close(self) -> None:
        self.context.close()


def open_page(browser, ckpt: Checkpoint, path: Path, half: bool = False) -> Page:
    export(ckpt, path, half=half)
    return Page(browser, path)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_pages_greedy_text_is_charrnn_sample_argmax(browser, checkpoints, tmp_path, cell):
    ckpt = checkpoints[cell]
    model = Model(ckpt, "cpu")
    page = open_page(browser, ckpt, tmp_path / "page.html")
    for prime in ("KING:\nthe ", ""):  # with no prime, both start after a line break
        expected = model.sample(LENGTH, prime=prime, argmax=True)
        assert len(set(expected[len(prime) :])) >= 10, "the model should write more than a repeated character"
        assert page.generate(prime) == expected
    last = page.page.evaluate("window.charrnnPage.last")
    assert last["n_chars"] == LENGTH and last["chars_per_s"] > 0
    assert page.page.evaluate("window.charrnnPage.startup_ms") > 0  # shown as "Ready in ... s"
    assert page.errors == []
    page.close()


def test_a_half_page_runs_the_models_float16_matrices(browser, checkpoints, tmp_path):
    ckpt = checkpoints["lstm"]
    rounded = {k: v.float() for k, v in halved(ckpt.weights).items()}
    expected = Model(Checkpoint(None, ckpt.model_config, ckpt.vocab, rounded), "cpu").sample(
        LENGTH, prime="QUEEN:\n", argmax=True
    )
    full, half = tmp_path / "full.html", tmp_path / "half.html"
    export(ckpt, full)
    page = open_page(browser, ckpt, half, half=True)
    assert page.generate("QUEEN:\n") == expected
    assert page.page.evaluate("window.charrnnPage.meta.half") is True
    assert half.stat().st_size < 0.75 * full.stat().st_size
    page.close()


def test_the_page_samples_reproducibly_from_a_seed_and_top_k_1_is_greedy(browser, checkpoints, tmp_path):
    ckpt = checkpoints["gru"]
    page = open_page(browser, ckpt, tmp_path / "page.html")
    first = page.generate("the ", 300, argmax=False, seed=7)
    assert page.generate("the ", 300, argmax=False, seed=7) == first
    assert page.generate("the ", 300, argmax=False, seed=8) != first
    assert set(first) <= set(ckpt.vocab.chars) and first.startswith("the ") and len(first) == 304
    greedy = Model(ckpt, "cpu").sample(300, prime="the ", argmax=True)
    assert page.generate("the ", 300, argmax=False, seed=9, top_k=1) == greedy
    status = page.page.text_content("#status") or ""
    assert "seed 9" in status and "top-k 1" in status
    page.close()


def test_the_page_names_unknown_characters_and_bad_options_instead_of_writing(browser, checkpoints, tmp_path):
    page = open_page(browser, checkpoints["rnn"], tmp_path / "page.html")
    page.generate("the Zorro \u00e9", 50)
    assert page.page.get_attribute("body", "data-state") == "error"
    status = page.page.text_content("#status") or ""
    assert "2 character(s)" in status and "'Z'" in status and "'\u00e9'" in status, status
    page.generate("the ", 0)
    assert "length must be a whole number of at least 1" in (page.page.text_content("#status") or "")
    page.generate("the ", 10, top_k=10_000)
    assert "top-k must be at most the vocabulary size" in (page.page.text_content("#status") or "")
    page.generate("the ", 10, argmax=False, seed="x", top_k=0)
    assert "seed must be a whole number" in (page.page.text_content("#status") or "")
    assert page.generate("the ", 10, seed="").startswith("the ")  # and it writes again once the mistake is fixed
    page.close()


def test_stop_ends_a_long_run_early(browser, checkpoints, tmp_path):
    page = open_page(browser, checkpoints["lstm"], tmp_path / "page.html")
    p = page.page
    p.fill("#length", "100000000")
    p.click("#generate")
    p.wait_for_function("document.getElementById('output').textContent.length > 200", timeout=TIMEOUT_MS)
    p.click("#stop")
    p.wait_for_selector("body[data-state=done]", timeout=TIMEOUT_MS)
    last = p.evaluate("window.charrnnPage.last")
    assert last["stopped"] is True and 0 < last["n_chars"] < 100_000_000
    assert (p.text_content("#status") or "").startswith("Stopped after")
    page.close()


def test_the_page_is_one_file_that_requests_nothing(browser, checkpoints, tmp_path):
    path = tmp_path / "page.html"
    page = open_page(browser, checkpoints["lstm"], path)
    page.generate("the ", 50)
    assert page.requests == [path.resolve().as_uri()]
    html = path.read_text(encoding="utf-8")
    assert "default-src 'none'" in html
    for external in ("src=", "href=", "http://", "https://", "@import", "url("):
        assert external not in html, external
    page.close()

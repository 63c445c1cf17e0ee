"""The playground page in a real browser: Playwright drives the system's headless Chromium against the
real server. Type a prime, press Generate, watch the text grow from the prime, press Stop, switch the
colouring and see the spans recoloured, hover a character for its tooltip.

Skipped where /usr/bin/chromium or the playwright package is missing (CI installs Chromium with
.ci/browser-deps.sh); Playwright's own browser download is never used.
"""

from __future__ import annotations

import json

import pytest
from serve_util import Served, tiny_checkpoint, wait_idle

from charrnn.serve import Limits
from conftest import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium: run .ci/browser-deps.sh"),
]
sync_api = pytest.importorskip("playwright.sync_api")
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("page") / "m.pt", hidden_size=128)
    server = Served({"tiny": ckpt}, Limits(max_length=20_000))
    yield server
    server.close()


@pytest.fixture(scope="module")
def page(served):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(served.url + "/")
        yield page
        browser.close()


BACKGROUNDS = "[...document.querySelectorAll('.sample .text span:not(.prime)')].map(s => s.style.background)"


def backgrounds(page) -> list[str]:
    return page.evaluate(f"() => {BACKGROUNDS}")


def wait_for_backgrounds(page, want: list[str]) -> list[str]:
    """The colours once the page has repainted to ``want`` (or Playwright's timeout); a busy machine
    may take longer than any fixed pause."""
    try:
        page.wait_for_function(
            f"JSON.stringify({BACKGROUNDS}) === {json.dumps(json.dumps(want, separators=(',', ':')))}"
        )
    except sync_api.TimeoutError:
        pass  # the assertion below shows what the page has instead
    return backgrounds(page)


def test_generate_stream_stop_and_recolour(page, served):
    page.wait_for_selector("#model option[value=tiny]", state="attached")
    page.fill("#prime", "KING:\n")
    page.fill("#seed", "3")
    page.fill("#num_samples", "2")
    page.evaluate("() => { const l = document.getElementById('length'); l.max = 20000; l.value = 20000; }")
    page.click("#generate")
    first = ".sample:nth-child(1) .text"
    page.wait_for_function(
        f"document.querySelector('{first}') && document.querySelector('{first}').children.length > 40"
    )
    text = page.inner_text(first)
    assert text.startswith("KING:\n") and len(text) > 40
    grown = page.eval_on_selector(first, "t => t.children.length")
    page.wait_for_function(f"document.querySelector('{first}').children.length > {grown + 20}")
    assert page.eval_on_selector_all(".sample", "s => s.length") == 2

    page.click("#stop")
    page.wait_for_function("[...document.querySelectorAll('.sample')].every(s => s.dataset.reason === 'stopped')")
    stopped = page.eval_on_selector(first, "t => t.children.length")
    page.wait_for_timeout(300)
    assert page.eval_on_selector(first, "t => t.children.length") == stopped  # no more text after Stop
    assert wait_idle(served) == 0  # and the server let go of the streams
    assert page.is_enabled("#generate") and not page.is_enabled("#stop")

    by_surprisal = backgrounds(page)
    assert by_surprisal and all(by_surprisal)  # every generated character is coloured
    page.select_option("#colour", "unit")
    page.fill("#layer", "2")
    page.fill("#unit", "7")
    page.dispatch_event("#unit", "change")
    page.wait_for_function("document.querySelector('#lo').textContent === '-1'")
    page.wait_for_timeout(200)
    by_unit = backgrounds(page)
    assert len(by_unit) == len(by_surprisal) and all(by_unit) and by_unit != by_surprisal
    assert len(set(by_unit)) > 3  # a unit's values vary along the text

    # One of the top units for bracket depth, as visualize --find ranks them (traced through /v1/score).
    page.select_option("#feature", "bracket-depth")
    page.wait_for_function("document.querySelectorAll('#found option').length > 1")
    value = page.eval_on_selector("#found", "s => s.options[1].value")
    page.select_option("#found", value)
    page.wait_for_function(
        f"document.getElementById('layer').value + ':' + document.getElementById('unit').value === '{value}'"
    )
    before = json.dumps(by_unit[:stopped])
    page.wait_for_function(
        f"JSON.stringify([...document.querySelectorAll('{first} span:not(.prime)')].map(s => s.style.background))"
        f" !== {json.dumps(before)}"
    )
    page.select_option("#colour", "surprisal")
    assert wait_for_backgrounds(page, by_surprisal) == by_surprisal  # switching back restores the same colours

    page.hover(f"{first} span:nth-child(10)")
    tip = page.inner_text("#tip")
    assert tip.startswith("#8") and "p = " in tip and "top-5 guesses" in tip

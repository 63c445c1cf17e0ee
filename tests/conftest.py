"""Shared fixtures: a small generated corpus and one tiny trained run reused by many tests."""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from charrnn.cli import cli
from charrnn.threads import torch_threads
from charrnn.trainer import Callback

SUBJECTS = ["the cat", "a dog", "my king", "the queen", "our lord"]
VERBS = ["sees", "loves", "hates", "finds", "serves"]
OBJECTS = ["the mat.", "a crown.", "the sword.", "my horse.", "thy face."]


def make_text(n_lines: int = 800, seed: int = 0) -> str:
    """Simple sentences: learnable structure, a clear gap between unigram entropy and what a model reaches."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        speaker = rng.choice(["KING", "QUEEN"])
        lines.append(f"{speaker}:\n{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}\n")
    return "\n".join(lines)


def unigram_entropy(text: str) -> float:
    """Entropy in nats/char of the character frequencies: what a model with no context can reach."""
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log(c / n) for c in counts.values())


def write(path: Path, text: str | bytes) -> Path:
    """Write ``text`` (UTF-8) or raw bytes to ``path``, making its folders; the path back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def one_line_error(result, code: int, pattern: str) -> None:
    """A CLI result that is a user mistake: exit ``code``, nothing on stdout, and on stderr one line,
    ``Error: ...`` matching the regular expression ``pattern``, with no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def usage_error(result, pattern: str) -> None:
    """click's usage error: exit 2, a usage line and a hint, then one 'Error:' line matching the regular
    expression ``pattern``; nothing on stdout."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert re.search(pattern, errors[0]), errors[0]
    assert result.stderr.startswith("Usage: ")


class Recorder(Callback):
    """Records what a training run reports: each step's loss, each evaluation, each NaN skip."""

    def __init__(self):
        self.losses, self.evals, self.skips = [], [], []

    def on_step(self, info):
        self.losses.append(info.loss)

    def on_eval(self, info):
        self.evals.append(info)

    def on_nan_skip(self, step, new_lr_scale):
        self.skips.append((step, new_lr_scale))

    @property
    def vals(self) -> list[float]:
        """The validation losses, nats/char."""
        return [e.val.nats for e in self.evals]


# Debian's Chromium (.ci/browser-deps.sh installs it), and the flags every browser test starts it with:
# headless, as root, and quiet on a machine whose network is closed (no background connections).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

TINY_MODEL = ["--num-layers", "1", "--hidden-size", "48", "--embedding-size", "16"]
TINY_TRAIN = ["--batch-size", "8", "--seq-len", "32", "--lr", "1e-2", "--warmup-steps", "0"]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_file):
    """One tiny model trained through the CLI: (out_dir, the JSON summary)."""
    import json

    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            str(corpus_file),
            *TINY_MODEL,
            *TINY_TRAIN,
            "--max-steps",
            "300",
            "--eval-every",
            "100",
            "--out-dir",
            str(out),
            "--json",
            "-q",
            "--sample-length",
            "0",
            "--device",
            "cpu",
            "--force",
        ],
    )
    assert result.exit_code == 0, result.stderr
    return out, json.loads(result.stdout)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    more threads only add start-up cost to each small product, and stall badly on a busy machine."""
    with torch_threads(1):
        yield

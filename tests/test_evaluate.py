"""charrnn.loss: evaluate() against a naive per-character sum, the evaluation layout, the subset of a
long validation split, and the units of a Loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from charrnn.errors import DataError
from charrnn.loss import DEFAULT_EVAL_CHARS, LN2, Loss, eval_layout, eval_subset, evaluate
from charrnn.model import CharRNN, ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB_SIZE = 13


def build(cell: str) -> CharRNN:
    """A small random model, left in training mode with dropout: evaluate() must switch it to eval mode."""
    torch.manual_seed(3)
    config = ModelConfig(VOCAB_SIZE, cell=cell, num_layers=2, hidden_size=16, embedding_size=8, dropout=0.3)
    model = CharRNN(config)
    with torch.no_grad():
        model.head.weight.mul_(4.0)  # spread the predictions, so that a wrong target or state shows
    return model.train()


def random_ids(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, VOCAB_SIZE, n).astype(np.uint8)


def naive_loss(model: CharRNN, ids: np.ndarray, batch_size: int, seq_len: int) -> tuple[float, int]:
    """Mean -ln p(target) and the number of targets, one character at a time.

    The layout is the documented one, worked out here by hand: chunks of T = min(seq_len, N - 1)
    characters, S = as many streams as asked that hold one chunk (at least one), each stream the next
    L = (N - 1) // S characters, scored for its whole chunks only, each from a zero state.
    """
    n = len(ids)
    chunk = min(seq_len, n - 1)
    streams = max(1, min(batch_size, (n - 1) // chunk))
    stream_len = (n - 1) // streams
    scored = stream_len // chunk * chunk
    model.eval()
    total = 0.0
    with torch.no_grad():
        for s in range(streams):
            state = model.init_state(1)
            for t in range(s * stream_len, s * stream_len + scored):
                logits, state = model(torch.tensor([[int(ids[t])]]), state)
                total -= float(torch.log_softmax(logits[0, 0].double(), dim=0)[int(ids[t + 1])])
    return total / (streams * scored), streams * scored


# (N, batch_size, seq_len): a partial last chunk in every stream, more streams asked than fit, a
# seq_len longer than the text, one stream that fits exactly, and the shortest text there is.
LAYOUTS = [(1001, 4, 32), (500, 3, 50), (200, 16, 20), (300, 32, 256), (257, 1, 16), (2, 8, 4)]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("n, batch_size, seq_len", LAYOUTS, ids=[f"N{n}-B{b}-T{t}" for n, b, t in LAYOUTS])
def test_evaluate_is_the_mean_of_each_characters_loss(cell, n, batch_size, seq_len):
    model = build(cell)
    ids = random_ids(n)
    got = evaluate(model, ids, batch_size=batch_size, seq_len=seq_len)
    assert model.training, "evaluate() gives the model back in the mode it found it"
    nats, n_chars = naive_loss(model, ids, batch_size, seq_len)
    assert got.n_chars == n_chars
    assert got.nats == pytest.approx(nats, rel=1e-5)


def test_evaluate_scores_every_character_when_the_text_is_one_chunk():
    model = build("lstm")
    ids = random_ids(100)
    loss = evaluate(model, ids, batch_size=8, seq_len=256)
    assert loss.n_chars == 99  # every character but the first is a target


@pytest.mark.parametrize(
    "n, batch_size, seq_len, layout",
    [
        (2, 32, 256, (1, 1)),  # the shortest text: one stream, one prediction
        (100, 32, 256, (1, 99)),  # seq_len longer than the text: one chunk of all of it
        (1001, 4, 32, (4, 32)),  # as many streams as asked
        (200, 16, 20, (9, 20)),  # more streams asked than hold a chunk: as many as fit
        (201, 10, 20, (10, 20)),  # exactly enough for every stream asked
        (41, 3, 20, (2, 20)),
        (21, 5, 20, (1, 20)),
    ],
)
def test_eval_layout(n, batch_size, seq_len, layout):
    streams, chunk = eval_layout(n, batch_size, seq_len)
    assert (streams, chunk) == layout
    assert streams * chunk <= n - 1, "every stream holds at least one whole chunk"


@pytest.mark.parametrize("n", [0, 1])
def test_eval_layout_refuses_a_text_too_short_to_predict_anything(n):
    with pytest.raises(DataError, match=rf"^{n} character\(s\) are too few to evaluate on; need at least 2$"):
        eval_layout(n, 32, 256)
    with pytest.raises(DataError, match="too few"):
        evaluate(build("gru"), random_ids(n))


def test_eval_subset_is_a_seeded_spread_of_windows():
    ids = np.arange(1_000_000, dtype=np.uint32)
    assert eval_subset(ids, None, seed=1) is ids  # under ~2M characters: all of it
    a, b = eval_subset(ids, 80_000, seed=1), eval_subset(ids, 80_000, seed=1)
    assert len(a) == 80_000 and np.array_equal(a, b)
    windows = np.split(a, 8)
    assert all(np.all(np.diff(w) == 1) for w in windows)  # contiguous inside each window
    assert [int(w[0]) // 125_000 for w in windows] == list(range(8))  # one in each eighth of the split
    assert not np.array_equal(a, eval_subset(ids, 80_000, seed=2))


@pytest.mark.parametrize("extra", [0, 1])
def test_eval_subset_takes_everything_up_to_the_limit(extra):
    ids = np.arange(50_000 + extra, dtype=np.uint32)
    subset = eval_subset(ids, 50_000, seed=0)
    if extra:
        assert len(subset) == 50_000 and subset is not ids
    else:
        assert subset is ids


def test_eval_subset_default_limit_is_about_two_million_characters():
    ids = np.zeros(DEFAULT_EVAL_CHARS, dtype=np.uint8)
    assert eval_subset(ids, None, seed=0) is ids
    longer = np.arange(DEFAULT_EVAL_CHARS + 1, dtype=np.uint32)
    assert len(eval_subset(longer, None, seed=0)) == DEFAULT_EVAL_CHARS


@pytest.mark.parametrize(
    "max_chars, windows, width",
    [
        (80_000, 8, 10_000),  # the default count of windows
        (25_000, 2, 12_500),  # fewer windows, so that each holds at least 10,000 characters
        (5_000, 1, 5_000),  # under 10,000: one window
        (80_005, 8, 10_000),  # a limit that does not divide: whole windows only, never over the limit
    ],
)
def test_eval_subset_windows(max_chars, windows, width):
    n = 1_000_003
    ids = np.arange(n, dtype=np.uint32)
    subset = eval_subset(ids, max_chars, seed=4)
    assert len(subset) == windows * width <= max_chars
    part = n // windows
    for i, window in enumerate(np.split(subset, windows)):
        assert np.all(np.diff(window) == 1), "each window is contiguous"
        assert i * part <= window[0] and window[-1] < (i + 1) * part, "window i lies in the i-th part"


def test_eval_subset_reads_a_memmap_and_gives_its_characters(tmp_path):
    values = np.random.default_rng(0).integers(0, 200, 300_000).astype(np.uint8)
    values.tofile(tmp_path / "ids.bin")
    mapped = np.memmap(tmp_path / "ids.bin", dtype=np.uint8, mode="r")
    assert np.array_equal(eval_subset(mapped, 40_000, seed=9), eval_subset(values, 40_000, seed=9))


def test_loss_units():
    loss = Loss(nats=1.5 * LN2, n_chars=10)
    assert LN2 == math.log(2)
    assert loss.bits == pytest.approx(1.5)
    assert loss.perplexity == pytest.approx(2**1.5)
    assert Loss(nats=0.0, n_chars=1).perplexity == 1.0
    assert Loss(nats=699.0, n_chars=1).perplexity == math.exp(699.0)
    assert Loss(nats=800.0, n_chars=1).perplexity == math.inf  # past float range: inf, not OverflowError
    assert Loss(nats=math.inf, n_chars=1).perplexity == math.inf

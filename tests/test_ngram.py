"""charrnn.ngram and charrnn.baseline: the vectorised Kneser–Ney n-gram against a dict-based one,
normalisation, a known Markov source's entropy rate, and `charrnn eval --baseline`."""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from charrnn.baseline import scored_positions
from charrnn.cli import cli
from charrnn.data import Batches
from charrnn.errors import ConfigError, DataError
from charrnn.loss import eval_layout
from charrnn.ngram import NGram, check_order, parse_baseline
from conftest import one_line_error, usage_error


def reference_log_probs(train: list[int], test: list[int], order: int, vocab_size: int) -> list[float]:
    """Interpolated modified Kneser–Ney written the slow, obvious way: tuples in dicts, recursion."""
    raw = [Counter(tuple(train[i - k + 1 : i + 1]) for i in range(k - 1, len(train))) for k in range(order + 1)]
    counts = {order: raw[order]}
    for k in range(1, order):
        counts[k] = Counter(gram[1:] for gram in raw[k + 1])  # one per distinct left extension
    discounts = {}
    for k in range(1, order + 1):
        n = Counter(min(c, 5) for c in counts[k].values() if c > 0)
        fallback = {1: 0.5, 2: 1.0, 3: 1.5}  # the documented choice where counts of counts are missing
        if n[1] == 0 or n[2] == 0:
            discounts[k] = fallback
            continue
        y = n[1] / (n[1] + 2 * n[2])
        discounts[k] = {
            c: min(max(c - (c + 1) * y * n[c + 1] / n[c], 0.05), c - 0.05) if n[c] else fallback[c] for c in (1, 2, 3)
        }
    by_context = {k: defaultdict(dict) for k in counts}
    for k, table in counts.items():
        for gram, c in table.items():
            by_context[k][gram[:-1]][gram[-1]] = c

    def prob(k: int, context: tuple, w: int) -> float:
        if k == 0:
            return 1.0 / vocab_size
        following = by_context[k].get(context, {})
        total = sum(following.values())
        lower = prob(k - 1, context[1:], w)
        if total == 0:
            return lower
        d = discounts[k]
        c = following.get(w, 0)
        mass = sum(d[min(x, 3)] for x in following.values() if x > 0)
        return max(c - (d[min(c, 3)] if c else 0.0), 0.0) / total + mass / total * lower

    out = []
    for t, w in enumerate(test):
        context = tuple(test[max(0, t - order + 1) : t])
        out.append(math.log(prob(len(context) + 1, context, w)))
    return out


def markov_text(transitions: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n symbols from a Markov chain whose state is the last ``transitions.ndim - 1`` symbols."""
    rng = np.random.default_rng(seed)
    v, memory = transitions.shape[-1], transitions.ndim - 1
    cumulative = {state: list(transitions[state].cumsum()) for state in np.ndindex(transitions.shape[:-1])}
    out = [int(s) for s in rng.integers(0, v, memory)]
    for u in rng.random(n - memory).tolist():
        out.append(min(bisect.bisect_left(cumulative[tuple(out[-memory:])], u), v - 1))
    return np.array(out)


def entropy_rate(transitions: np.ndarray, text: np.ndarray) -> float:
    """The source's entropy rate in nats/char, weighting each state by how often the text visits it."""
    memory = transitions.ndim - 1
    states = Counter(tuple(text[i - memory : i]) for i in range(memory, len(text)))
    total = sum(states.values())
    rate = 0.0
    for state, count in states.items():
        p = transitions[state]
        rate -= count / total * float((p * np.log(p)).sum())
    return rate


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_log_probs_match_a_dict_based_kneser_ney(order):
    rng = np.random.default_rng(order)
    # Skewed symbol frequencies, so that counts of 1, 2, 3 and 4 all occur at every order.
    train = rng.choice(6, size=3000, p=[0.4, 0.25, 0.15, 0.1, 0.07, 0.03])
    test = np.concatenate([rng.choice(6, size=200), [6, 0, 6, 6]])  # symbol 6 is never seen in training
    model = NGram.fit(train, order, vocab_size=7)
    expected = reference_log_probs(train.tolist(), test.tolist(), order, 7)
    np.testing.assert_allclose(model.log_probs(test), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 6, pytest.param(20, marks=pytest.mark.slow)])
def test_the_probabilities_sum_to_one_over_the_vocabulary_at_every_position(order):
    rng = np.random.default_rng(0)
    train = rng.choice(5, size=2000, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    test = np.concatenate([train[:40], rng.integers(0, 8, 40)])  # seen contexts, then unseen ones and symbols
    model = NGram.fit(train, order, vocab_size=8)
    for t in range(len(test) + 1):
        p = model.distribution(test[:t])
        assert p.shape == (8,) and (p > 0).all()
        assert p.sum() == pytest.approx(1.0, abs=1e-12), (t, p)
        if t < len(test):  # and log_probs gives the same number as the distribution
            assert math.exp(model.log_probs(test[: t + 1])[-1]) == pytest.approx(p[test[t]], rel=1e-12)


def test_a_text_shorter_than_the_order_still_gives_a_distribution():
    model = NGram.fit(np.array([0, 1, 0]), 5, vocab_size=3)
    assert model.n_grams == [2, 2, 1, 0, 0]
    for context in ([], [0], [0, 1], [0, 1, 0], [2, 2, 2, 2]):
        assert model.distribution(np.array(context)).sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.slow  # 240,000 symbols drawn one at a time
@pytest.mark.parametrize("memory", [1, 2])
def test_a_markov_source_s_entropy_rate_is_approached_by_the_matching_order(memory):
    """A source whose next symbol depends on the last ``memory`` symbols: the (memory+1)-gram, which
    sees exactly that context, comes within 0.01 nats of the entropy rate on fresh text from the
    source; the unigram, which sees none, stays far above it."""
    rng = np.random.default_rng(memory)
    v = 4
    transitions = rng.dirichlet(np.full(v, 0.5), size=(v,) * memory)  # peaked rows: a low entropy rate
    train = markov_text(transitions, 200_000, seed=10)
    test = markov_text(transitions, 40_000, seed=11)
    rate = entropy_rate(transitions, test)
    matching = -NGram.fit(train, memory + 1, v).log_probs(test)[memory:].mean()
    unigram = -NGram.fit(train, 1, v).log_probs(test)[memory:].mean()
    assert abs(matching - rate) < 0.01, (matching, rate)
    assert unigram > rate + 0.1, (unigram, rate)


def test_fit_refuses_what_it_cannot_count():
    with pytest.raises(DataError):
        NGram.fit(np.array([], dtype=np.int64), 3, 4)
    with pytest.raises(ValueError):
        NGram.fit(np.array([0, 4]), 3, 4)
    for bad in (0, 21, 2.5, True):
        with pytest.raises(ConfigError):
            check_order(bad)


def test_parse_baseline():
    assert parse_baseline("ngram:20") == 20
    assert parse_baseline("NGRAM:1") == 1
    for bad in ("ngram", "ngram:", "ngram:0", "ngram:21", "kenlm:5", "ngram:-3", "5"):
        with pytest.raises(ConfigError, match="ngram:N|from 1 to 20"):
            parse_baseline(bad)


@pytest.mark.parametrize("n, batch_size, seq_len", [(1001, 4, 32), (500, 3, 50), (300, 32, 256), (2, 8, 4)])
def test_scored_positions_are_the_targets_evaluate_reads(n, batch_size, seq_len):
    ids = np.arange(n, dtype=np.int64)  # each id is its own position
    streams, length = eval_layout(n, batch_size, seq_len)
    batches = Batches(ids, streams, length)
    targets = np.sort(np.concatenate([batches[i][1].ravel() for i in range(len(batches))]))
    np.testing.assert_array_equal(scored_positions(n, batch_size, seq_len), targets)


@pytest.mark.slow
def test_eval_baseline_reports_the_ngram_beside_the_model(runner, trained_run, tmp_path):
    out, _ = trained_run
    ckpt = str(out / "best.pt")
    result = runner.invoke(cli, ["eval", ckpt, "--baseline", "ngram:3", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    base = data["baseline"]
    assert base["name"] == "ngram:3" and base["n_chars"] == data["n_chars"]
    assert base["fit_text"].startswith("training split of")
    assert base["loss_bits"] == pytest.approx(base["loss_nats"] / math.log(2))
    assert base["gain_nats"] == pytest.approx(base["loss_nats"] - data["loss_nats"])
    # A unigram fitted on the same text knows no context: far worse than the 3-gram.
    uni = runner.invoke(cli, ["eval", ckpt, "--baseline", "ngram:1", "--json", "--device", "cpu"])
    assert json.loads(uni.stdout)["baseline"]["loss_nats"] > base["loss_nats"] + 0.3

    plain = runner.invoke(cli, ["eval", ckpt, "--baseline", "ngram:3", "--device", "cpu"])
    assert plain.exit_code == 0
    lines = plain.stdout.splitlines()
    assert len(lines) == 2 and "ngram:3" in lines[1] and "nats/char" in lines[1]

    usage_error(runner.invoke(cli, ["eval", ckpt, "--baseline", "ngram:21"]), "from 1 to 20")
    usage_error(runner.invoke(cli, ["eval", ckpt, "--baseline", "trigram"]), "ngram:N")
    one_line_error(runner.invoke(cli, ["eval", ckpt, "--baseline-text", ckpt]), 1, "needs --baseline")
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("日本語のテキスト", encoding="utf-8")
    one_line_error(
        runner.invoke(cli, ["eval", ckpt, "--baseline", "ngram:2", "--baseline-text", str(foreign)]),
        1,
        "not in the model's vocabulary",
    )

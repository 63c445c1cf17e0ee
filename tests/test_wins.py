"""charrnn.wins: character classes, the model's per-character predictions in side-by-side streams
against one stream read from the start, and the per-class comparison against a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from charrnn.data import Vocab
from charrnn.model import CharRNN, ModelConfig
from charrnn.ngram import NGram
from charrnn.wins import char_class, compare, model_predictions

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = 'KING:\nThe (cat) sat, on [the] mat; \'twas "3" {cats}!\n\nQUEEN:\nA <dog> \t 42 dogs.\n' * 6
VOCAB = Vocab.from_text(TEXT)


def model(cell: str = "lstm") -> CharRNN:
    torch.manual_seed(0)
    m = CharRNN(ModelConfig(len(VOCAB), cell=cell, num_layers=2, hidden_size=16, embedding_size=8))
    with torch.no_grad():
        m.head.weight.mul_(5.0)  # spread the predictions so that a misplaced one shows
    return m.eval()


def test_char_class_puts_every_character_in_one_class():
    expected = {
        "a": "letter",
        "Q": "letter",
        "é": "letter",
        "7": "digit",
        " ": "space",
        "\n": "newline",
        "\t": "other whitespace",
        "(": "(",
        ")": ")",
        "}": "}",
        "'": "'",
        '"': '"',
        "“": "“",
        ",": "punctuation",
        ";": "punctuation",
        "#": "punctuation",
    }
    assert {ch: char_class(ch) for ch in expected} == expected


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_side_by_side_streams_with_a_long_warmup_match_one_stream_from_the_start(cell):
    m = model(cell)
    ids = VOCAB.encode(TEXT).astype(np.int64)
    preds = model_predictions(m, ids, streams=4, warmup=len(ids))
    with torch.no_grad():
        logits, _ = m(torch.as_tensor(ids[None, :-1]))
    probs = torch.softmax(logits[0].double(), dim=-1)
    expected = probs[torch.arange(len(ids) - 1), torch.as_tensor(ids[1:])].numpy()
    assert math.isnan(preds.prob[0])
    np.testing.assert_allclose(preds.prob[1:], expected, rtol=1e-4)
    np.testing.assert_array_equal(preds.top_ids[1:, 0], probs.argmax(dim=-1).numpy())


def test_with_a_short_warmup_each_character_is_predicted_from_its_own_stream_s_start():
    m = model()
    ids = VOCAB.encode(TEXT).astype(np.int64)
    warmup, streams = 20, 5
    preds = model_predictions(m, ids, streams=streams, warmup=warmup)
    bounds = np.linspace(1, len(ids), streams + 1).astype(int)
    for r in range(streams):
        start = max(bounds[r] - 1 - warmup, 0)
        for t in (bounds[r], bounds[r] + 7, bounds[r + 1] - 1):
            with torch.no_grad():
                logits, _ = m(torch.as_tensor(ids[None, start:t]))
            p = torch.softmax(logits[0, -1].double(), dim=-1)[ids[t]].item()
            assert preds.prob[t] == pytest.approx(p, rel=1e-4), (r, t)
    assert not np.isnan(preds.prob[1:]).any()


def test_compare_per_class_matches_a_direct_computation():
    m = model()
    ids = VOCAB.encode(TEXT).astype(np.int64)
    ngram = NGram.fit(ids, 3, len(VOCAB))
    result = compare(m, ngram, ids, TEXT, top_chars=5, streams=3, warmup=50)
    model_nats = -np.log(result.predictions.prob[1:])
    ngram_nats = -ngram.log_probs(ids)[1:]
    np.testing.assert_allclose(result.model_nats[1:], model_nats)
    assert result.overall.n_chars == len(TEXT) - 1
    assert result.overall.model_nats == pytest.approx(model_nats.mean())
    assert result.overall.ngram_nats == pytest.approx(ngram_nats.mean())
    assert sum(g.n_chars for g in result.classes) == len(TEXT) - 1
    assert {g.name for g in result.classes} >= {"letter", "digit", "space", "newline", "other whitespace", "(", ")"}
    gains = [g.gain_nats for g in result.classes]
    assert gains == sorted(gains, reverse=True)
    chars = np.array(list(TEXT[1:]))
    for g in result.classes:
        mask = np.array([char_class(ch) == g.name for ch in chars])
        assert g.n_chars == mask.sum()
        assert g.model_nats == pytest.approx(model_nats[mask].mean())
        assert g.ngram_nats == pytest.approx(ngram_nats[mask].mean())
        assert g.gain_bits == pytest.approx((ngram_nats[mask].mean() - model_nats[mask].mean()) / math.log(2))
        assert g.model_errors == int((np.exp(-model_nats[mask]) < 0.5).sum())
        assert g.ngram_errors == int((np.exp(-ngram_nats[mask]) < 0.5).sum())
    counts = {ch: (chars == ch).sum() for ch in set(chars)}
    assert sorted(g.n_chars for g in result.top_chars) == sorted(counts.values())[-5:]
    assert all(g.n_chars == counts[g.name] for g in result.top_chars)

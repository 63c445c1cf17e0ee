import pytest
import torch

from charrnn.data import Vocab
from charrnn.errors import ConfigError, DataError
from charrnn.model import CharRNN, ModelConfig
from charrnn.sample import generate

VOCAB = Vocab("\n abcdefgh")


def model(cell="lstm"):
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=len(VOCAB), cell=cell, hidden_size=16, embedding_size=8)).eval()


def text(m, **kw):
    return "".join(c[0] for c in generate(m, VOCAB, **kw))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_same_seed_same_text_other_seed_other_text(cell):
    m = model(cell)
    a = text(m, length=200, seed=1)
    assert len(a) == 200 and set(a) <= set(VOCAB.chars)
    assert text(m, length=200, seed=1) == a
    assert text(m, length=200, seed=2) != a


def test_argmax_is_deterministic_without_seed():
    m = model()
    assert text(m, length=50, argmax=True) == text(m, length=50, argmax=True)


def test_top_k_one_equals_argmax():
    m = model()
    assert text(m, length=50, top_k=1, seed=3, prime="ab") == text(m, length=50, argmax=True, prime="ab")


def test_num_samples_are_batched_and_independent():
    steps = list(generate(model(), VOCAB, length=100, num_samples=3, seed=0))
    assert len(steps) == 100 and all(len(s) == 3 for s in steps)
    columns = ["".join(s[i] for s in steps) for i in range(3)]
    assert len(set(columns)) == 3


def test_low_temperature_concentrates_on_likely_characters():
    m = model()
    cold = text(m, length=300, temperature=0.05, seed=0)
    hot = text(m, length=300, temperature=5.0, seed=0)
    assert len(set(cold)) < len(set(hot))


@pytest.mark.parametrize(
    "kw, error, message",
    [
        (dict(temperature=0), ConfigError, "temperature"),
        (dict(temperature=-1), ConfigError, "temperature"),
        (dict(top_k=99), ConfigError, "top-k"),
        (dict(length=0), ConfigError, "length"),
        (dict(prime="xyz"), DataError, "'x', 'y', 'z'"),
        (dict(prime="abz"), DataError, "'z'"),
    ],
)
def test_bad_options(kw, error, message):
    kw.setdefault("length", 10)
    with pytest.raises(error, match=message):
        text(model(), **kw)

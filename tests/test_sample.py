import pytest
import torch

from charrnn.data import Vocab
from charrnn.errors import ConfigError, DataError
from charrnn.model import CharRNN, ModelConfig
from charrnn.sample import Draw, generate

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
        (dict(top_k=99), ConfigError, "top_k must"),
        (dict(length=0), ConfigError, "length"),
        (dict(prime="xyz"), DataError, "'x', 'y', 'z'"),
        (dict(prime="abz"), DataError, "'z'"),
    ],
)
def test_bad_options(kw, error, message):
    kw.setdefault("length", 10)
    with pytest.raises(error, match=message):
        text(model(), **kw)


LOGITS = torch.tensor([2.0, 1.0, 0.0, -1.0, 3.0, 0.5])


def frequencies(draw: Draw, steps: int, streams: int) -> torch.Tensor:
    """How often each index was drawn, over ``steps`` calls on ``streams`` copies of LOGITS."""
    logits = LOGITS.expand(streams, -1)
    counts = torch.zeros(len(LOGITS))
    for _ in range(steps):
        counts += torch.bincount(draw(logits), minlength=len(LOGITS))
    return counts / counts.sum()


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.5, None), (2.0, 3)])
def test_draw_samples_the_softmax_distribution(temperature, top_k):
    # 200 steps x 500 streams = 100,000 draws (more than one noise block): each frequency's standard
    # error is under 0.0016, and the check allows 0.006.
    draw = Draw(500, len(LOGITS), temperature=temperature, top_k=top_k, generator=torch.Generator().manual_seed(0))
    scaled = LOGITS / temperature
    if top_k is not None:
        scaled = scaled.masked_fill(scaled < scaled.topk(top_k).values[-1], float("-inf"))
    expected = torch.softmax(scaled, dim=0)
    got = frequencies(draw, 200, 500)
    assert torch.allclose(got, expected, atol=0.006), (got, expected)
    if top_k is not None:
        assert (got[expected == 0] == 0).all(), "characters outside the top k are never drawn"


def test_draw_argmax_and_streams_are_independent():
    assert Draw(3, len(LOGITS), argmax=True)(LOGITS.expand(3, -1)).tolist() == [4, 4, 4]
    draw = Draw(64, len(LOGITS), generator=torch.Generator().manual_seed(1))
    picks = draw(torch.zeros(64, len(LOGITS)))  # uniform: 64 streams must not all agree
    assert len(set(picks.tolist())) > 3


def test_a_longer_sample_starts_with_the_shorter_one():
    m = model()
    short = text(m, length=Draw.NOISE_BLOCK - 7, seed=5)
    assert text(m, length=3 * Draw.NOISE_BLOCK, seed=5).startswith(short)


def test_noise_blocks_stay_small_for_many_streams():
    assert Draw(1, 65).block_steps == Draw.NOISE_BLOCK
    many = Draw(5000, 300)
    assert many.block_steps * 5000 * 300 <= max(Draw.NOISE_ELEMENTS, 5000 * 300)
    assert Draw(10**6, 300).block_steps == 1

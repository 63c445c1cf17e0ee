import pytest
import torch

from charrnn.errors import ConfigError
from charrnn.model import CharRNN, ModelConfig, detach_state, parameter_shapes


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_shapes_and_state_carry(cell, num_layers):
    cfg = ModelConfig(vocab_size=11, cell=cell, num_layers=num_layers, hidden_size=16, embedding_size=8, dropout=0.1)
    model = CharRNN(cfg).eval()
    idx = torch.randint(0, 11, (3, 10))
    logits, state = model(idx)
    assert logits.shape == (3, 10, 11)
    assert len(state) == (2 if cell == "lstm" else 1)
    assert all(s.shape == (num_layers, 3, 16) for s in state)
    # Running the halves with the state carried equals running the whole sequence.
    a, mid = model(idx[:, :4])
    b, _ = model(idx[:, 4:], detach_state(mid))
    torch.testing.assert_close(torch.cat([a, b], dim=1), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_parameter_shapes_are_the_state_dicts(cell, num_layers):
    """Checkpoint loading checks weights against parameter_shapes: it must name exactly what CharRNN holds."""
    config = ModelConfig(vocab_size=13, cell=cell, num_layers=num_layers, hidden_size=6, embedding_size=5)
    want = {name: tuple(t.shape) for name, t in CharRNN(config).state_dict().items()}
    assert parameter_shapes(config) == want


@pytest.mark.parametrize("bad", [dict(cell="transformer"), dict(hidden_size=0), dict(dropout=1.0), dict(num_layers=-1)])
def test_config_rejects_nonsense(bad):
    with pytest.raises(ConfigError):
        ModelConfig(vocab_size=5, **bad)


def test_config_round_trip():
    cfg = ModelConfig(vocab_size=5, cell="gru", num_layers=3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_tiny_model_overfits_a_repeating_string():
    torch.manual_seed(0)
    text = "abcabdabe" * 20
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text]).unsqueeze(0)
    model = CharRNN(ModelConfig(vocab_size=len(chars), hidden_size=32, embedding_size=8, num_layers=1))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(150):
        logits, _ = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    # The only uncertainty left is which of c/d/e follows "ab": 1/3 of positions at log(3) nats.
    assert loss.item() < 0.5

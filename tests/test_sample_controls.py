"""The sampling controls of issue 15: --prime-file / --prime -, --max-prime, --stop-at, --top-p and
--beam, through the library, the Python API and the command line, each checked against an
independent computation so that a control that is ignored fails its test."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import charrnn
from charrnn import checkpoint as ckpt_io
from charrnn import sample as sample_mod
from charrnn.cli import cli
from charrnn.data import Vocab
from charrnn.errors import ConfigError
from charrnn.model import CharRNN, ModelConfig
from charrnn.sample import Draw, nucleus
from conftest import one_line_error, usage_error

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = Vocab("\n abcdefgh")


def peaky_model(vocab: Vocab, seed: int = 0, cell: str = "lstm") -> CharRNN:
    """A random model whose next-character distributions are far from uniform (a scaled-up head)."""
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell=cell, hidden_size=16, embedding_size=8))
    with torch.no_grad():
        model.head.weight.mul_(12.0)
        model.embedding.weight.mul_(3.0)
    return model.eval()


def save(model: CharRNN, vocab: Vocab, path):
    return ckpt_io.save(
        ckpt_io.Checkpoint(path=None, model_config=model.config, vocab=vocab, weights=model.state_dict()), path
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save(peaky_model(VOCAB), VOCAB, tmp_path_factory.mktemp("controls") / "m.pt")


@pytest.fixture(scope="module")
def model(ckpt):
    return charrnn.load(ckpt, device="cpu")


def continuation_log_prob(module: CharRNN, vocab: Vocab, prime: str, texts: list[str]) -> torch.Tensor:
    """ln p(text | prime) for each text (all of one length), by one plain forward pass: the reference."""
    ids = torch.tensor([vocab.encode(prime + t).tolist() for t in texts], dtype=torch.long)
    with torch.no_grad():
        logits, _ = module(ids[:, :-1])
    log_probs = torch.log_softmax(logits.double(), dim=2)
    targets = ids[:, 1:]
    picked = log_probs.gather(2, targets[..., None])[..., 0]  # (B, T-1)
    return picked[:, len(prime) - 1 :].sum(dim=1)


# -- top-p -----------------------------------------------------------------------------------------


def smallest_set_reaching(probs: list[float], p: float) -> set[int]:
    """Brute force: of all sets whose probability reaches p, the smallest (and of those the most probable)."""
    best = None
    for size in range(1, len(probs) + 1):
        for subset in itertools.combinations(range(len(probs)), size):
            mass = sum(probs[i] for i in subset)
            if mass >= p and (best is None or mass > best[0]):
                best = (mass, set(subset))
        if best is not None:
            return best[1]
    raise AssertionError("p above 1")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.8, 0.95, 0.999])
def test_nucleus_keeps_the_smallest_set_whose_probability_reaches_p(seed, top_p):
    logits = torch.randn(1, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    probs = torch.softmax(logits[0], dim=0).tolist()
    kept = set(torch.isfinite(nucleus(logits, top_p)[0]).nonzero().flatten().tolist())
    assert kept == smallest_set_reaching(probs, top_p)


def test_draw_with_top_p_samples_the_renormalised_nucleus_after_temperature_and_top_k():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 3.0, 0.5])
    temperature, top_k, top_p = 1.5, 5, 0.7
    draw = Draw(500, 6, temperature=temperature, top_k=top_k, top_p=top_p, generator=torch.Generator().manual_seed(0))
    # The reference: temperature, then the top k, then the smallest set reaching p, renormalised.
    scaled = logits / temperature
    order = scaled.argsort(descending=True).tolist()
    allowed = order[:top_k]
    probs = torch.softmax(scaled[allowed], dim=0).tolist()
    nucleus_set = {allowed[i] for i in smallest_set_reaching(probs, top_p)}
    expected = torch.zeros(6)
    keep = torch.tensor(sorted(nucleus_set))
    expected[keep] = torch.softmax(scaled[keep], dim=0)
    counts = torch.zeros(6)
    for _ in range(200):
        counts += torch.bincount(draw(logits.expand(500, -1)), minlength=6)
    got = counts / counts.sum()
    assert torch.allclose(got, expected, atol=0.006), (got, expected)
    assert (got[expected == 0] == 0).all()


def test_top_p_changes_samples_and_a_tiny_p_is_greedy(model, ckpt, runner):
    greedy = model.sample(80, prime="ab", argmax=True)
    assert model.sample(80, prime="ab", top_p=1e-6, seed=4, temperature=1.0) == greedy
    free = model.sample(80, prime="ab", seed=4, temperature=1.5)
    narrow = model.sample(80, prime="ab", seed=4, temperature=1.5, top_p=0.5)
    assert free != narrow
    result = runner.invoke(cli, ["sample", str(ckpt), "--prime", "ab", "-n", "80", "--top-p", "1e-6", "--seed", "4"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == greedy + "\n"
    result = runner.invoke(
        cli, ["sample", str(ckpt), "--prime", "ab", "-n", "80", "-t", "1.5", "--top-p", "0.5", "--seed", "4"]
    )
    assert result.stdout == narrow + "\n"


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_top_p_out_of_range_is_a_usage_error(ckpt, runner, value):
    usage_error(runner.invoke(cli, ["sample", str(ckpt), "--top-p", value]), "--top-p")


def test_top_p_out_of_range_from_python(model):
    with pytest.raises(ConfigError, match="top_p must be in"):
        model.sample(10, top_p=0)


# -- stop strings ------------------------------------------------------------------------------------


def cut_at(text: str, prime: str, stops: list[str]) -> str:
    """The reference for --stop-at: the sample cut just after the first generated character at which
    the text (prime included) ends with a stop string."""
    for end in range(len(prime) + 1, len(text) + 1):
        if any(text[:end].endswith(s) for s in stops):
            return text[:end]
    return text


@pytest.mark.parametrize("stops", [["\n"], ["a", "ch"], ["b\n"]])
def test_each_sample_stops_on_its_own_at_its_first_stop_string(model, stops):
    full = model.sample(200, prime="ab", seed=7, num_samples=5, temperature=1.2)
    cut = model.sample(200, prime="ab", seed=7, num_samples=5, temperature=1.2, stop_at=stops)
    assert cut == [cut_at(t, "ab", stops) for t in full]
    assert any(c != t for c, t in zip(cut, full)), "no sample stopped: the test shows nothing"
    one = model.sample(200, prime="ab", seed=7, temperature=1.2, stop_at=stops)
    assert one == cut_at(model.sample(200, prime="ab", seed=7, temperature=1.2), "ab", stops)


def test_a_stop_string_may_begin_in_the_prime_but_must_end_in_the_sample(model):
    greedy = model.sample(30, prime="ab", argmax=True)
    stop = "b" + greedy[2]  # the prime's last character and the first generated one
    assert model.sample(30, prime="ab", argmax=True, stop_at=stop) == "ab" + greedy[2]
    assert model.sample(30, prime="ab", argmax=True, stop_at="b") == cut_at(greedy, "ab", ["b"])


def test_cli_stop_at_understands_escapes_and_says_how_each_sample_ended(model, ckpt, runner):
    args = ["sample", str(ckpt), "--prime", "ab", "-n", "120", "--seed", "7", "-t", "1.2", "--num-samples", "5"]
    result = runner.invoke(cli, [*args, "--stop-at", "\\n", "--stop-at", "ch", "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["stop_at"] == ["\n", "ch"]
    full = model.sample(120, prime="ab", seed=7, num_samples=5, temperature=1.2)
    assert out["samples"] == [cut_at(t, "ab", ["\n", "ch"]) for t in full]
    for text, ended in zip(out["samples"], out["stopped_at"]):
        if ended is None:
            assert len(text) == 2 + 120 and not text.endswith(("\n", "ch"))
        else:
            assert text.endswith(ended) and len(text) <= 2 + 120
    assert set(out["stopped_at"]) - {None}, "no sample stopped"
    streamed = runner.invoke(
        cli, ["sample", str(ckpt), "--prime", "ab", "-n", "120", "--seed", "7", "-t", "1.2", "--stop-at", "\\n"]
    )
    assert (
        streamed.stdout
        == cut_at(full[0][:0] + model.sample(120, prime="ab", seed=7, temperature=1.2), "ab", ["\n"]) + "\n"
    )


def test_a_stop_string_the_model_cannot_write_is_an_error(ckpt, runner):
    one_line_error(runner.invoke(cli, ["sample", str(ckpt), "--stop-at", "xyz"]), 1, "--stop-at 'xyz' can never")
    usage_error(runner.invoke(cli, ["sample", str(ckpt), "--stop-at", "a\\"]), "--stop-at")


# -- beam search -------------------------------------------------------------------------------------


def test_beam_one_is_argmax(model, ckpt, runner):
    assert model.sample(60, prime="ab", beam=1) == model.sample(60, prime="ab", argmax=True)
    beam = runner.invoke(cli, ["sample", str(ckpt), "--prime", "ab", "-n", "60", "--beam", "1"])
    greedy = runner.invoke(cli, ["sample", str(ckpt), "--prime", "ab", "-n", "60", "--argmax"])
    assert beam.exit_code == 0 and beam.stdout == greedy.stdout


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_beam_is_at_least_as_probable_as_greedy_and_its_score_is_right(cell):
    module = peaky_model(VOCAB, seed=3, cell=cell)
    greedy = "".join(c[0] for c in sample_mod.generate(module, VOCAB, length=25, prime="a", argmax=True))
    found = sample_mod.beam_search(module, VOCAB, length=25, prime="a", beam=6)
    reference = continuation_log_prob(module, VOCAB, "a", [found.text, greedy])
    assert found.log_prob_nats == pytest.approx(float(reference[0]), abs=1e-4)
    assert reference[0] >= reference[1] - 1e-9


def test_a_wide_enough_beam_equals_an_exhaustive_search():
    vocab = Vocab("\nab")
    for seed in range(3):
        module = peaky_model(vocab, seed=seed)
        texts = ["".join(t) for t in itertools.product(vocab.chars, repeat=4)]
        scores = continuation_log_prob(module, vocab, "ab", texts)
        found = sample_mod.beam_search(module, vocab, length=4, prime="ab", beam=27)  # 3**3: exact
        assert found.text == texts[int(scores.argmax())]
        assert found.log_prob_nats == pytest.approx(float(scores.max()), abs=1e-4)
        narrow = sample_mod.beam_search(module, vocab, length=4, prime="ab", beam=2)
        assert narrow.log_prob_nats <= found.log_prob_nats + 1e-5  # float sums of another batch size


def test_beam_through_the_api_and_cli_is_the_search_and_rejects_sampling_options(model, ckpt, runner):
    found = model.beam_search(40, prime="ab", beam=4)
    assert model.sample(40, prime="ab", beam=4) == "ab" + found.text
    result = runner.invoke(cli, ["sample", str(ckpt), "--prime", "ab", "-n", "40", "--beam", "4", "--json"])
    assert json.loads(result.stdout)["samples"] == ["ab" + found.text]
    for extra in (["--top-p", "0.5"], ["--num-samples", "2"], ["--stop-at", "a"]):
        one_line_error(
            runner.invoke(cli, ["sample", str(ckpt), "--beam", "3", *extra]), 1, "--beam .* cannot be combined"
        )


# -- primes: from a file, from standard input, long ones -----------------------------------------------


def test_prime_file_and_stdin_prime_equal_the_prime_given_inline(model, ckpt, runner, tmp_path):
    prime = "ab cd\nef\n" * 3
    (tmp_path / "p.txt").write_text(prime, encoding="utf-8")
    want = model.sample(50, prime=prime, seed=2)
    assert model.sample(50, prime_file=tmp_path / "p.txt", seed=2) == want
    base = ["sample", str(ckpt), "-n", "50", "--seed", "2"]
    from_file = runner.invoke(cli, [*base, "--prime-file", str(tmp_path / "p.txt")])
    from_stdin = runner.invoke(cli, [*base, "--prime", "-"], input=prime)
    assert from_file.exit_code == 0 and from_stdin.exit_code == 0, (from_file.stderr, from_stdin.stderr)
    assert from_file.stdout == from_stdin.stdout == want + "\n"
    assert model.sample(50, prime="zz"[:0] + "ab", seed=2) != want  # the prime matters


def test_prime_errors(ckpt, runner, tmp_path, model):
    (tmp_path / "p.txt").write_text("abcabc", encoding="utf-8")
    (tmp_path / "bad.txt").write_text("abx", encoding="utf-8")
    base = ["sample", str(ckpt), "-n", "5"]
    one_line_error(runner.invoke(cli, [*base, "--prime", "abcabc", "--max-prime", "5"]), 1, "more than --max-prime")
    one_line_error(
        runner.invoke(cli, [*base, "--prime-file", str(tmp_path / "p.txt"), "--max-prime", "5"]), 1, "--max-prime"
    )
    one_line_error(runner.invoke(cli, [*base, "--prime", "-", "--max-prime", "5"], input="abcabc"), 1, "--max-prime")
    one_line_error(runner.invoke(cli, [*base, "--prime", "-"], input=""), 1, "standard input is empty")
    one_line_error(
        runner.invoke(cli, [*base, "--prime", "ab", "--prime-file", str(tmp_path / "p.txt")]), 1, "pass one of them"
    )
    one_line_error(runner.invoke(cli, [*base, "--prime-file", str(tmp_path / "none.txt")]), 1, "none.txt")
    one_line_error(runner.invoke(cli, [*base, "--prime-file", str(tmp_path / "bad.txt")]), 1, "'x'")
    with pytest.raises(ConfigError, match="max_prime"):
        model.sample(5, prime="abcabc", max_prime=5)


def test_a_long_prime_runs_in_chunks_with_the_state_carried(monkeypatch):
    module = peaky_model(VOCAB, seed=1)
    ids = VOCAB.encode("ab cd\nefgh " * 40).tolist()  # 440 characters
    whole_logits, whole_state = sample_mod.run_prime(module, ids, 3)
    monkeypatch.setattr(sample_mod, "PRIME_CHUNK", 64)
    logits, state = sample_mod.run_prime(module, ids, 3)
    assert logits.shape == (3, len(VOCAB))
    assert torch.allclose(logits, whole_logits, atol=1e-5)
    for got, want in zip(state, whole_state):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    short_prime = sample_mod.run_prime(module, ids[:50], 1)[0]
    assert not torch.allclose(short_prime, logits[:1], atol=1e-3), "the whole prime must count"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_a_short_prime_read_through_the_step_gives_the_sequence_passs_state(cell):
    from charrnn.inference import StepModel

    module = peaky_model(VOCAB, seed=2, cell=cell)
    stepper = StepModel(module)
    for text in ["a", "ab cd", ("efgh abc " * 4)[: sample_mod.SHORT_PRIME]]:
        ids = VOCAB.encode(text).tolist()
        stepped_logits, stepped_state = sample_mod.run_prime(module, ids, 2, stepper=stepper)
        whole_logits, whole_state = sample_mod.run_prime(module, ids, 2)
        assert stepped_logits.shape == whole_logits.shape == (2, len(VOCAB))
        assert torch.allclose(stepped_logits, whole_logits, atol=1e-5)
        for got, want in zip(stepped_state, whole_state):
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    longer = VOCAB.encode("ab cd efgh" * 4).tolist()
    assert len(longer) > sample_mod.SHORT_PRIME
    after_long = sample_mod.run_prime(module, longer, 1, stepper=stepper)[0]
    assert not torch.allclose(after_long, sample_mod.run_prime(module, longer[-8:], 1)[0], atol=1e-3)


def test_help_and_readme_show_an_example_of_each_control(runner):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    sample_help = runner.invoke(cli, ["sample", "--help"]).stdout
    examples = sample_help[sample_help.index("Examples:") :]
    for flag in ("--prime-file", "--prime -", "--stop-at", "--top-p", "--beam"):
        assert "charrnn sample" in examples and flag in examples, flag
        assert any(line.lstrip().startswith("charrnn") and flag in line for line in readme.splitlines()), flag
    eval_help = runner.invoke(cli, ["eval", "--help"]).stdout
    train_help = runner.invoke(cli, ["train", "--help"]).stdout
    assert "charrnn eval out/best.pt poems.txt --per-line --top-surprises 3" in eval_help
    assert "charrnn train new.txt --init-from old.pt --extend-vocab" in " ".join(train_help.split())
    assert "--per-line --top-surprises 3" in readme and "--init-from old.pt --extend-vocab" in readme

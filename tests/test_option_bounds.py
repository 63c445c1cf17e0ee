"""Every option bounded (docs/guarantees.md): values outside an option's range, non-finite numbers,
seeds outside 64 bits, sizes that need more memory than any machine has, and encodings that do not
decode text all end in one line and exit 1 or 2, before any work, never a traceback or a hang."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import charrnn
from charrnn import memory
from charrnn.cli import cli
from charrnn.corpus import read_text
from charrnn.errors import ConfigError, DataError
from charrnn.model import CharRNN, ModelConfig
from conftest import write

pytestmark = pytest.mark.usefixtures("one_thread")

non_finite = st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity", "1e999", "-1e999"])
huge = st.integers(10**12, 10**40).map(str)  # needs more memory than any machine has
beyond_64_bits = st.one_of(st.integers(2**64, 2**200), st.integers(-(2**200), -1)).map(str)

# (option, values that must be refused) for `charrnn train`.
TRAIN_BAD = [
    ("--dropout", non_finite),
    ("--lr", non_finite),
    ("--min-lr-frac", non_finite),
    ("--lr-decay", non_finite),
    ("--grad-clip", non_finite),
    ("--weight-decay", non_finite),
    ("--val-frac", non_finite),
    ("--seed", beyond_64_bits),
    ("--threads", st.one_of(st.integers(1025, 10**30), st.integers(-(10**6), 0)).map(str)),
    ("--max-time", st.integers(310, 400).map(lambda n: "9" * n)),  # more seconds than a float holds
    ("--hidden-size", huge),
    ("--num-layers", huge),
    ("--embedding-size", huge),
    ("--batch-size", huge),
    ("--seq-len", huge),
    ("--sample-length", huge),
    ("--nproc", st.integers(10**4, 10**9).map(str)),
    ("--max-steps", st.integers(2**63, 2**200).map(str)),  # counts a checkpoint keeps as int64
    ("--eval-every", st.integers(2**63, 2**200).map(str)),
    ("--warmup-steps", st.integers(2**63, 2**200).map(str)),
]


def assert_refused(result) -> None:
    """Exit 1 (the library's ConfigError/DataError) or 2 (click's usage error), one Error line, no traceback."""
    assert result.exit_code in (1, 2), (result.exit_code, result.stdout, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    if result.exit_code == 1:
        assert result.stderr.strip() == errors[0], result.stderr


@pytest.mark.slow  # 120 refused starts
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), which=st.integers(0, len(TRAIN_BAD) - 1))
def test_train_refuses_every_option_out_of_bounds_before_any_work(runner, corpus_file, tmp_path_factory, data, which):
    flag, values = TRAIN_BAD[which]
    value = data.draw(values)
    out = tmp_path_factory.mktemp("bounds")
    args = ["train", str(corpus_file), "--out-dir", str(out), "--max-steps", "1", "--device", "cpu", "--no-cache"]
    result = runner.invoke(cli, [*args, flag, value])
    assert_refused(result)
    assert not (out / "last.pt").exists()
    if result.exit_code == 1 and flag in ("--hidden-size", "--num-layers", "--embedding-size", "--batch-size"):
        assert re.search(
            r"needs about [\d.,]+ [KMGTP]iB of memory, more than the .* free on cpu; lower ", result.stderr
        )


@pytest.mark.slow  # uses the trained checkpoint
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    case=st.sampled_from(
        [
            ("sample", "--temperature", non_finite),
            ("sample", "--seed", beyond_64_bits),
            ("sample", "--num-samples", huge),
            ("sample", "--threads", st.integers(1025, 10**30).map(str)),
            ("visualize", "--seed", beyond_64_bits),
            ("visualize", "--temperature", non_finite),
            ("visualize", "--max-chars", huge),
        ]
    ),
    data=st.data(),
)
def test_sample_and_visualize_refuse_options_out_of_bounds(runner, trained_run, case, data):
    command, flag, values = case
    out, _ = trained_run
    args = [command, str(out / "best.pt"), "--device", "cpu", flag, data.draw(values)]
    if command == "visualize":  # --max-chars is what --sample generates at most
        args += ["--sample", "1000000000000000" if flag == "--max-chars" else "20", "--unit", "0"]
    assert_refused(runner.invoke(cli, args))


@pytest.mark.parametrize("codec", ["rot13", "base64", "hex", "zlib", "bz2", "uu", "quopri"])
def test_a_codec_that_does_not_decode_text_is_the_one_line_encoding_error(runner, tmp_path, codec):
    text = write(tmp_path / "t.txt", "some text\n" * 50)
    result = runner.invoke(cli, ["train", str(text), "--encoding", codec, "--out-dir", str(tmp_path / "o")])
    assert_refused(result)
    assert f"--encoding '{codec}' is not a text encoding" in result.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.binary(min_size=1, max_size=64),
    encoding=st.sampled_from(["utf-16", "utf-32", "utf-16-le", "utf-16-be", "utf-32-le", "idna", "punycode", "utf-7"]),
)
def test_any_decoding_failure_is_the_one_line_encoding_error(tmp_path_factory, raw, encoding):
    path = write(tmp_path_factory.mktemp("enc") / "t.txt", raw)
    try:
        text = read_text(path, encoding=encoding)
    except DataError as exc:  # anything else fails the test
        message = str(exc)
        assert "\n" not in message and message.startswith(f"{path}: "), message
        assert re.search(rf"is not valid {encoding} \(|file is empty|holds no text", message), message
        return
    assert isinstance(text, str) and text


def test_every_decoding_failure_through_the_reader(tmp_path):
    cases = {
        "nobom.txt": (b"\x00a\x00b\x00c", "utf-16"),
        "odd.txt": (b"abc", "utf-16-le"),
        "idna.txt": (b"xn--a\xff", "idna"),
    }
    for name, (raw, encoding) in cases.items():
        path = write(tmp_path / name, raw)
        with pytest.raises(DataError, match=rf"is not valid {encoding} \("):
            read_text(path, encoding=encoding)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 3])
def test_the_memory_estimate_counts_the_parameters_the_model_has(cell, layers):
    cfg = ModelConfig(vocab_size=41, cell=cell, num_layers=layers, hidden_size=20, embedding_size=7)
    assert memory.parameter_count(cfg) == CharRNN(cfg).num_parameters()


def test_a_size_that_fits_is_not_refused_and_one_that_does_not_is(monkeypatch):
    cfg = ModelConfig(vocab_size=65)
    need = memory.training_bytes(cfg, 32, 100)
    monkeypatch.setattr(memory, "free_bytes", lambda device: need)
    memory.check_fits(need, torch.device("cpu"), "training this model", ("hidden_size",))
    monkeypatch.setattr(memory, "free_bytes", lambda device: need - 1)
    with pytest.raises(
        ConfigError, match=r"training this model needs about .* of memory, more than .*; lower hidden_size"
    ):
        memory.check_fits(need, torch.device("cpu"), "training this model", ("hidden_size",))
    assert memory.free_bytes(torch.device("cpu")) is None or memory.free_bytes(torch.device("cpu")) > 0


def test_python_api_refuses_the_same_values(tmp_path, corpus_file):
    for options, pattern in [
        (dict(weight_decay=math.nan), "weight_decay must be a finite number"),
        (dict(seed=-1), "seed must be a whole number from 0 to 2\\*\\*64 - 1"),
        (dict(seed=2**64), "seed must be a whole number"),
        (dict(threads=10**6), "threads must be a whole number from 1 to 1024"),
        (dict(max_time=math.inf), "max_time .* is not a finite duration"),
        (dict(hidden_size=10**9), "needs about .* of memory"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            charrnn.train(corpus_file, out_dir=tmp_path, max_steps=1, device="cpu", no_cache=True, **options)

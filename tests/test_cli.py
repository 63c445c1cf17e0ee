"""Every command and every documented error through CliRunner, stdout and stderr checked separately."""

import json

import pytest
import torch

from charrnn import __version__
from charrnn import checkpoint as ckpt_io
from charrnn.cli import cli
from conftest import TINY_MODEL, TINY_TRAIN, one_line_error, unigram_entropy, usage_error

# The error for --device cuda where there is none can only be seen on a machine without CUDA.
NO_CUDA_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


def invoke(runner, *args):
    return runner.invoke(cli, [str(a) for a in args])


def test_version_and_help(runner):
    result = invoke(runner, "--version")
    assert result.exit_code == 0 and __version__ in result.stdout
    result = invoke(runner, "--help")
    assert result.exit_code == 0 and "Exit codes" in result.stdout and "inspect-checkpoint" in result.stdout


def test_end_to_end_train_sample_inspect_eval(runner, trained_run, corpus_file):
    out, summary = trained_run
    text = corpus_file.read_text()
    assert summary["steps"] == 300 and summary["best"] == str(out / "best.pt")
    assert summary["best_val_loss"] < 0.6 * unigram_entropy(text), "the model must learn the structure"

    result = invoke(runner, "sample", out / "best.pt", "--length", 200, "--seed", 3, "--prime", "KING:\n")
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.startswith("KING:\n") and len(result.stdout) == len("KING:\n") + 200 + 1
    again = invoke(runner, "sample", out / "best.pt", "--length", 200, "--seed", 3, "--prime", "KING:\n")
    assert again.stdout == result.stdout
    words = set(text.split())
    sampled = result.stdout.split()
    assert sum(w in words for w in sampled) > 0.5 * len(sampled), "samples use the corpus's words"

    result = invoke(runner, "inspect", out / "best.pt", "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["model"]["hidden_size"] == 48 and info["vocab"]["chars"] == "".join(sorted(set(text)))
    assert info["loss"]["best_val_nats"] == pytest.approx(summary["best_val_loss"])
    assert info["loss"]["best_val_bits"] == pytest.approx(summary["best_val_loss"] / 0.6931471805599453)
    assert info["history"]["step"] == [100, 200, 300] and info["format"]["version"] == 1
    assert info["corpus"]["name"] == "tiny.txt" and len(info["corpus"]["sha256"]) == 64

    result = invoke(runner, "inspect", out / "best.pt")
    assert result.exit_code == 0 and "LSTM" in result.stdout and "bits/char" in result.stdout
    alias = invoke(runner, "inspect-checkpoint", out / "best.pt")
    assert alias.exit_code == 0 and alias.stdout == result.stdout

    result = invoke(runner, "eval", out / "best.pt", "--json")
    assert result.exit_code == 0
    ev = json.loads(result.stdout)
    assert ev["nats_per_char"] == pytest.approx(summary["best_val_loss"], rel=1e-3)
    assert ev["bits_per_char"] == pytest.approx(ev["nats_per_char"] / 0.6931471805599453)


def test_sample_num_samples_and_json(runner, trained_run):
    out, _ = trained_run
    result = invoke(runner, "sample", out / "best.pt", "--length", 30, "--num-samples", 3, "--seed", 1, "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert len(data["samples"]) == 3 and all(len(s) == 30 for s in data["samples"])
    plain = invoke(runner, "sample", out / "best.pt", "--length", 30, "--num-samples", 3, "--seed", 1)
    assert plain.stdout.count("-" * 40) == 3
    assert data["samples"][0] in plain.stdout


def test_sample_argmax_takes_the_models_most_likely_character_at_every_step(runner, trained_run):
    out, _ = trained_run
    prime = "QUEEN:\n"
    result = invoke(runner, "sample", out / "last.pt", "--argmax", "--prime", prime, "--length", 80)
    assert result.exit_code == 0, result.stderr
    text = result.stdout.removesuffix("\n")
    assert text.startswith(prime) and len(text) == len(prime) + 80
    # Replay: the model reads the printed text in one pass; at every generated position the character
    # printed next must have the largest logit (to within float noise: the sampler runs the fused step).
    ckpt = ckpt_io.load(out / "last.pt")
    ids = torch.from_numpy(ckpt.vocab.encode(text).astype("int64"))
    with torch.no_grad():
        logits, _ = ckpt.build_model().eval()(ids[None, :-1])
    logits = logits[0, len(prime) - 1 :]  # the predictions of the 80 generated characters
    chosen = logits.gather(1, ids[len(prime) :, None])[:, 0]
    gap = logits.max(dim=1).values - chosen
    assert float(gap.max()) < 1e-4, gap


def test_resume_continues_to_the_new_max_steps(runner, trained_run, corpus_file, tmp_path):
    out, _ = trained_run
    import shutil

    run = tmp_path / "run"
    shutil.copytree(out, run)
    result = invoke(
        runner, "train", "--resume", run / "last.pt", "--max-steps", 320, "--json", "-q", "--sample-length", 0
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 320


def test_resume_with_conflicting_architecture_names_the_flag(runner, trained_run):
    out, _ = trained_run
    result = invoke(runner, "train", "--resume", out / "last.pt", "--hidden-size", 64)
    one_line_error(result, 1, r"--hidden-size 64 conflicts with .*hidden-size 48")


def test_resume_of_a_run_with_options_this_version_lacks_says_upgrade(runner, trained_run, tmp_path):
    out, _ = trained_run
    saved = ckpt_io.load(out / "last.pt")
    saved.train_config["future_knob"] = 3
    newer = ckpt_io.save(saved, tmp_path / "newer.pt")
    result = invoke(runner, "train", "--resume", newer, "--out-dir", tmp_path / "o")
    one_line_error(result, 3, r"newer.pt: unknown train config key\(s\): future_knob .*upgrade charrnn.*--init-from")
    assert not (tmp_path / "o").exists(), "nothing is created for a run that cannot start"


def test_init_from_with_uncovered_vocabulary_lists_missing(runner, trained_run, tmp_path):
    out, _ = trained_run
    new = tmp_path / "new.txt"
    new.write_text("KING:\nzzz jjj\n" * 500)
    result = invoke(runner, "train", new, "--init-from", out / "best.pt", "--out-dir", tmp_path / "o")
    one_line_error(result, 1, r"new.txt: 2 character\(s\) are not in the model's vocabulary: 'j', 'z'")


def test_refuses_to_overwrite_another_run(runner, trained_run):
    out, _ = trained_run
    before = (out / "best.pt").read_bytes()
    result = invoke(runner, "train", "--out-dir", out, "--max-steps", 1)
    one_line_error(result, 1, r"already holds checkpoints.*--resume.*--force")
    assert (out / "best.pt").read_bytes() == before


@pytest.fixture
def text_files(tmp_path):
    files = {}
    files["empty"] = tmp_path / "empty.txt"
    files["empty"].write_bytes(b"")
    files["binary"] = tmp_path / "data.bin"
    files["binary"].write_bytes(bytes(range(256)) * 10)
    files["latin1"] = tmp_path / "latin1.txt"
    files["latin1"].write_bytes("Voilà, ça marche très bien.\n".encode("latin-1") * 200)
    files["short"] = tmp_path / "short.txt"
    files["short"].write_text("to be or not to be\n")
    return files


@pytest.mark.parametrize(
    "args, code, pattern",
    [
        (["train", "{tmp}/missing.txt"], 1, r"no such file"),
        (["train", "{empty}"], 1, r"empty"),
        (["train", "{binary}"], 1, r"binary"),
        (["train", "{latin1}"], 1, r"not valid utf-8.*--encoding latin-1"),
        (["train", "{tmp}/nothing/*.txt"], 1, r"matches no files.*quote it"),
        (["train", "{short}"], 1, r"too few for one batch.*--batch-size / --seq-len"),
        (["train", "{latin1}", "--device", "tpu"], 1, r"unknown --device 'tpu'"),
        pytest.param(["train", "{latin1}", "--device", "cuda"], 1, r"CUDA is not available", marks=NO_CUDA_ONLY),
        (["train", "{latin1}", "--encoding", "nope"], 1, r"unknown --encoding"),
        (["train", "{latin1}", "--resume", "{tmp}/x.pt", "--init-from", "{tmp}/x.pt"], 1, r"cannot be combined"),
        (["train", "{latin1}", "--resume", "{tmp}/none.pt"], 3, r"no such checkpoint"),
        (["train", "--hidden-size", "0"], 2, r"--hidden-size"),
        (["train", "--batch-size", "-3"], 2, r"--batch-size"),
        (["train", "--val-frac", "0"], 2, r"--val-frac"),
        (["train", "--max-time", "ten minutes"], 2, r"not a duration"),
        (["train", "--cell", "transformer"], 2, r"--cell"),
        (["sample", "{tmp}/none.pt"], 3, r"no such checkpoint"),
        (["sample", "{latin1}"], 3, r"not a valid charrnn checkpoint"),
        (["inspect", "{binary}"], 3, r"not a valid charrnn checkpoint"),
        (["eval", "{tmp}/none.pt"], 3, r"no such checkpoint"),
    ],
)
def test_documented_errors(runner, text_files, tmp_path, args, code, pattern):
    fmt = {"tmp": tmp_path, **{k: v for k, v in text_files.items()}}
    args = [a.format(**fmt) for a in args]
    if "--out-dir" not in args and args[0] == "train":
        args += ["--out-dir", str(tmp_path / "out")]
    result = runner.invoke(cli, args)
    if code == 2:
        usage_error(result, pattern)
        return
    one_line_error(result, code, pattern)


def train_two_steps(runner, out, *args) -> dict:
    """``charrnn train ARGS`` of the tiny model for two quiet steps into ``out``; what
    ``charrnn inspect --json`` says of the last.pt it wrote."""
    args = (*args, *TINY_MODEL, *TINY_TRAIN, "--max-steps", 2, "--out-dir", out)
    result = invoke(runner, "train", *args, "-q", "--json", "--sample-length", 0)
    assert result.exit_code == 0, result.stderr
    return json.loads(invoke(runner, "inspect", out / "last.pt", "--json").stdout)


def test_latin1_trains_with_encoding_flag(runner, text_files, tmp_path):
    info = train_two_steps(runner, tmp_path / "o", text_files["latin1"], "--encoding", "latin-1")
    assert "à" in info["vocab"]["chars"]


@pytest.mark.parametrize(
    "extra, code, pattern",
    [
        (["--temperature", "0"], 1, r"--temperature must be greater than 0"),
        (["--top-k", "500"], 1, r"--top-k must be between 1 and the vocabulary size"),
        (["--length", "0"], 2, r"Invalid value for '--length'"),
        (["--top-k", "0"], 2, r"Invalid value for '--top-k'"),
        (["--num-samples", "0"], 2, r"Invalid value for '--num-samples'"),
        (["--prime", "@@@"], 1, r"not in the model's vocabulary: '@'"),
        pytest.param(["--device", "cuda"], 1, r"CUDA is not available", marks=NO_CUDA_ONLY),
    ],
)
def test_sample_errors(runner, trained_run, extra, code, pattern):
    out, _ = trained_run
    result = invoke(runner, "sample", out / "best.pt", *extra)
    if code == 2:
        usage_error(result, pattern)
    else:
        one_line_error(result, code, pattern)


def test_checkpoint_from_newer_charrnn(runner, trained_run, tmp_path):
    out, _ = trained_run
    data = torch.load(out / "best.pt", weights_only=True)
    data["version"] = 99
    torch.save(data, tmp_path / "future.pt")
    one_line_error(invoke(runner, "inspect", tmp_path / "future.pt"), 3, r"version 99 is newer.*upgrade charrnn")


def test_default_corpus_used_without_text(runner, tmp_path):
    info = train_two_steps(runner, tmp_path / "o")
    assert info["corpus"]["name"] == "tinyshakespeare (embedded)" and info["corpus"]["chars"] > 1_000_000


def test_train_reports_progress_on_stderr_only(runner, corpus_file, tmp_path):
    result = invoke(
        runner,
        "train",
        corpus_file,
        *TINY_MODEL,
        *TINY_TRAIN,
        "--max-steps",
        20,
        "--eval-every",
        10,
        "--out-dir",
        tmp_path / "o",
        "--sample-length",
        40,
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "bits/char" in result.stderr and "best checkpoint" in result.stderr and "sample from" in result.stderr

"""The safetensors pair: written by `charrnn export`, read back by `charrnn.load` and every command with
the same logits, and refused with one line (exit 3) when damaged, foreign or inconsistent."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

import charrnn
from charrnn.checkpoint import Checkpoint
from charrnn.cli import cli
from charrnn.errors import CheckpointError, ConfigError
from charrnn.export import export
from charrnn.export.fused import halved
from charrnn.export.safetensors_pair import config_path
from charrnn.model import CharRNN, ModelConfig
from conftest import one_line_error

VOCAB = "\n !.:abcdeghiklmnorstuvwy"


def checkpoint(cell: str = "lstm", seed: int = 0) -> Checkpoint:
    torch.manual_seed(seed)
    config = ModelConfig(len(VOCAB), cell=cell, num_layers=2, hidden_size=24, embedding_size=8)
    weights = CharRNN(config).state_dict()
    return Checkpoint(
        None,
        config,
        VOCAB,
        weights,
        corpus={"name": "tiny.txt", "sha256": "0" * 64, "val_frac": 0.1, "path": None},
        progress={"step": 3, "epoch": 0},
        history={"val_loss": [2.5, 2.1]},
        best_val_loss=2.1,
        resume={"optimizer": {}},
    )


def logits_of(model: CharRNN) -> torch.Tensor:
    idx = torch.tensor([[VOCAB.index(c) for c in "the king sees a crown.\n"]])
    with torch.no_grad():
        return model(idx)[0]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_pair_round_trips_to_the_same_logits(tmp_path, cell):
    source = checkpoint(cell)
    done = export(source, tmp_path / "model.safetensors")
    assert [p.name for p in done.paths] == ["model.safetensors", "model.json"]
    model = charrnn.load(tmp_path / "model.safetensors", device="cpu")
    assert model.vocab.chars == VOCAB and model.config == source.model_config
    assert torch.equal(logits_of(model.module), logits_of(source.build_model()))
    ckpt = model.checkpoint
    assert ckpt.resume is None and ckpt.best_val_loss == 2.1 and ckpt.history == {"val_loss": [2.5, 2.1]}
    assert ckpt.corpus["name"] == "tiny.txt" and ckpt.progress["step"] == 3


def test_other_tools_read_the_weights_under_their_pytorch_names(tmp_path):
    from safetensors.torch import load_file

    source = checkpoint("gru")
    export(source, tmp_path / "m.safetensors")
    tensors = load_file(tmp_path / "m.safetensors")
    rnn = torch.nn.GRU(8, 24, num_layers=2, batch_first=True)
    rnn.load_state_dict({k.removeprefix("rnn."): v for k, v in tensors.items() if k.startswith("rnn.")})
    config = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert config["vocab"] == VOCAB and config["model_config"]["cell"] == "gru"


def test_half_stores_float16_matrices_and_loads_as_those_values(tmp_path):
    source = checkpoint()
    export(source, tmp_path / "full.safetensors")
    export(source, tmp_path / "half.safetensors", half=True)
    assert (tmp_path / "half.safetensors").stat().st_size < 0.6 * (tmp_path / "full.safetensors").stat().st_size
    loaded = charrnn.load(tmp_path / "half.safetensors", device="cpu").checkpoint.weights
    for name, value in halved(source.weights).items():
        assert loaded[name].dtype == torch.float32
        assert torch.equal(loaded[name], value.float()), name
    assert json.loads((tmp_path / "half.json").read_text(encoding="utf-8"))["half"] is True


def test_the_weights_file_alone_is_enough_and_a_json_for_another_model_is_refused(tmp_path):
    export(checkpoint(seed=0), tmp_path / "a.safetensors")
    config_path(tmp_path / "a.safetensors").unlink()
    assert charrnn.load(tmp_path / "a.safetensors", device="cpu").vocab.chars == VOCAB  # the embedded config
    other = checkpoint("gru")
    export(other, tmp_path / "b.safetensors")
    (tmp_path / "a.json").write_bytes((tmp_path / "b.json").read_bytes())
    with pytest.raises(CheckpointError, match=r"a\.json describes another model than .*a\.safetensors"):
        charrnn.load(tmp_path / "a.safetensors")


def test_resume_refuses_the_pair_and_init_from_names_it(tmp_path):
    export(checkpoint(), tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="holds no training state to resume; use init_from"):
        charrnn.train(resume=tmp_path / "m.safetensors")


def test_export_never_overwrites_its_source_or_a_foreign_json(tmp_path):
    export(checkpoint(), tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="is the checkpoint being exported"):
        export(tmp_path / "m.safetensors", tmp_path / "m.safetensors")
    (tmp_path / "notes.json").write_text('{"mine": true}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"notes\.json exists and is not a charrnn model config"):
        export(checkpoint(), tmp_path / "notes.safetensors")
    assert (tmp_path / "notes.json").read_text(encoding="utf-8") == '{"mine": true}'
    assert not (tmp_path / "notes.safetensors").exists()


# ---- hostile and damaged files: each a one-line CheckpointError naming the file -------------------


def rewrite_config(folder: Path, change) -> Path:
    """An exported pair whose JSON went through ``change(dict)``, the copy in the metadata removed
    (so the JSON is the one read); the path of the .safetensors."""
    from safetensors.torch import load_file, save_file

    path = folder / "m.safetensors"
    export(checkpoint(), path)
    save_file(load_file(path), path)  # no metadata
    config = json.loads(config_path(path).read_text(encoding="utf-8"))
    change(config)
    config_path(path).write_text(json.dumps(config), encoding="utf-8")
    return path


def rewrite_tensors(folder: Path, change) -> Path:
    """An exported pair whose tensors went through ``change(dict)``, its JSON untouched."""
    from safetensors.torch import load_file, save_file

    path = folder / "m.safetensors"
    export(checkpoint(), path)
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)
    return path


def truncate(folder: Path) -> Path:
    path = folder / "m.safetensors"
    export(checkpoint(), path)
    path.write_bytes(path.read_bytes()[:-100])
    return path


def huge_header(folder: Path) -> Path:
    path = folder / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    return path


HOSTILE = {
    "garbage bytes": (lambda d: _garbage(d), r"not a valid charrnn safetensors file"),
    "truncated": (truncate, r"not a valid charrnn safetensors file \(.*\); export it again"),
    "a header claiming a terabyte": (huge_header, r"not a valid charrnn safetensors file"),
    "JSON that is not JSON": (lambda d: _broken_json(d), r"config is not JSON"),
    "no format marker": (
        lambda d: rewrite_config(d, lambda c: c.pop("format")),
        r"no 'charrnn-safetensors' format marker",
    ),
    "a newer format": (
        lambda d: rewrite_config(d, lambda c: c.update(version=99)),
        r"newer than this charrnn understands.*pip install -U charrnn",
    ),
    "a bool version": (lambda d: rewrite_config(d, lambda c: c.update(version=True)), r"format version True"),
    "unknown model key": (
        lambda d: rewrite_config(d, lambda c: c["model_config"].update(colour="red")),
        r"unknown model config key",
    ),
    "a string size": (
        lambda d: rewrite_config(d, lambda c: c["model_config"].update(hidden_size="24")),
        r"hidden_size must be a positive integer",
    ),
    "a list as cell": (
        lambda d: rewrite_config(d, lambda c: c["model_config"].update(cell=["lstm"])),
        r"m\.json: not a valid charrnn model config",
    ),
    "a billion layers": (
        lambda d: rewrite_config(d, lambda c: c["model_config"].update(num_layers=10**9)),
        r"holds 11 tensors but a 1000000000-layer model has",
    ),
    "a short vocabulary": (
        lambda d: rewrite_config(d, lambda c: c.update(vocab=VOCAB[:-1])),
        r"vocabulary does not have the model's 25 characters",
    ),
    "an unsorted vocabulary": (lambda d: rewrite_config(d, lambda c: c.update(vocab=VOCAB[::-1])), r"not a sorted set"),
    "a nested corpus": (
        lambda d: rewrite_config(d, lambda c: c["corpus"].update(path={"x": 1})),
        r"corpus\.path: must be a string",
    ),
    "a history of strings": (
        lambda d: rewrite_config(d, lambda c: c["history"].update(val_loss=["x"])),
        r"history\.val_loss\[0\]: must be a number",
    ),
    "a string loss": (
        lambda d: rewrite_config(d, lambda c: c.update(best_val_loss="low")),
        r"best_val_loss: must be a number",
    ),
    "a string duration": (
        lambda d: rewrite_config(d, lambda c: c["progress"].update(elapsed="1h")),
        r"progress\.elapsed: must be a number",
    ),
    "a negative character count": (
        lambda d: rewrite_config(d, lambda c: c["corpus"].update(chars=-5)),
        r"corpus\.chars: ",
    ),
    "a renamed tensor": (
        lambda d: rewrite_tensors(d, lambda t: t.update(extra=t.pop("head.bias"))),
        r"missing weights: head\.bias",
    ),
    "a wrong shape": (
        lambda d: rewrite_tensors(d, lambda t: t.update({"head.bias": torch.zeros(3)})),
        r"'head\.bias' has shape \(3,\) but the config needs \(25,\)",
    ),
    "integer weights": (
        lambda d: rewrite_tensors(d, lambda t: t.update({"head.bias": torch.zeros(25, dtype=torch.int32)})),
        r"'head\.bias' is I32; expected F32, F16 or BF16",
    ),
    "a NaN weight": (
        lambda d: rewrite_tensors(d, lambda t: t["head.weight"].view(-1).__setitem__(0, float("nan"))),
        r"model\.head\.weight: holds NaN",
    ),
    "no config at all": (lambda d: _no_config(d), r"no config: m\.json is missing beside it"),
}


def _garbage(folder: Path) -> Path:
    path = folder / "m.safetensors"
    path.write_bytes(b"\x00\x01 not safetensors")
    return path


def _broken_json(folder: Path) -> Path:
    path = rewrite_config(folder, lambda c: None)
    config_path(path).write_text('{"format": "charrnn-safetensors", ', encoding="utf-8")
    return path


def _no_config(folder: Path) -> Path:
    path = rewrite_config(folder, lambda c: None)
    config_path(path).unlink()
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_or_damaged_pair_is_one_line_naming_it(tmp_path, case):
    make, pattern = HOSTILE[case]
    path = make(tmp_path)
    with pytest.raises(CheckpointError, match=pattern) as caught:
        charrnn.load(path)
    message = str(caught.value)
    assert "\n" not in message and str(path.parent) in message


def test_every_command_reads_the_pair_and_exits_3_on_a_bad_one(runner, tmp_path):
    path = tmp_path / "m.safetensors"
    export(checkpoint(), path)
    result = runner.invoke(cli, ["sample", str(path), "--argmax", "--length", "20", "--prime", "the "])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == charrnn.load(path, device="cpu").sample(20, prime="the ", argmax=True) + "\n"
    result = runner.invoke(cli, ["inspect", str(path), "--json"])
    info = json.loads(result.stdout)
    assert result.exit_code == 0 and info["resumable"] is False and info["format"]["marker"] == "safetensors"
    truncate(tmp_path)
    for command in (
        ["sample", str(path)],
        ["inspect", str(path)],
        ["eval", str(path)],
        ["export", str(path), str(tmp_path / "x.html")],
    ):
        one_line_error(runner.invoke(cli, command), 3, r"m\.safetensors: not a valid charrnn safetensors file")

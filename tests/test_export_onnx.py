"""The ONNX step: checked by onnx.checker, run by onnxruntime against PyTorch's logits for every cell,
its metadata enough to sample, and docs/export.md's sampling loop giving `charrnn sample --argmax`'s text."""

from __future__ import annotations

import builtins
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from charrnn import __version__
from charrnn.checkpoint import Checkpoint
from charrnn.cli import cli
from charrnn.errors import ConfigError
from charrnn.export import export
from charrnn.model import CharRNN, ModelConfig
from conftest import one_line_error

onnx = pytest.importorskip("onnx", reason="needs pip install 'charrnn[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="needs pip install 'charrnn[onnx]'")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: more threads only stall a busy machine
DOC = Path(__file__).resolve().parents[1] / "docs" / "export.md"
VOCAB = "\n !',.:;?abcdefghijklmnopqrstuvwxyz\u00e9\U0001f600"
STEPS = 200


def checkpoint(cell: str, num_layers: int = 2) -> Checkpoint:
    torch.manual_seed(1)
    config = ModelConfig(len(VOCAB), cell=cell, num_layers=num_layers, hidden_size=40, embedding_size=12)
    return Checkpoint(None, config, VOCAB, CharRNN(config).state_dict())


@pytest.mark.slow  # 2 x 200 steps in both runtimes: about half a second each
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_onnxruntime_matches_pytorch_for_200_steps_at_any_batch_size(tmp_path, cell):
    ckpt = checkpoint(cell, num_layers=3 if cell == "rnn" else 2)
    path = export(ckpt, tmp_path / "step.onnx").paths[0]
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    names = json.loads(meta["state"])
    assert names == (["h", "c"] if cell == "lstm" else ["h"])
    model = ckpt.build_model()
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        idx = torch.randint(0, len(VOCAB), (batch, STEPS), generator=generator)
        state = {n: np.zeros((ckpt.model_config.num_layers, batch, 40), np.float32) for n in names}
        torch_state = None
        worst = 0.0
        with torch.no_grad():
            for t in range(STEPS):
                expected, torch_state = model(idx[:, t : t + 1], torch_state)
                logits, *new_state = session.run(None, {"idx": idx[:, t].numpy(), **state})
                state = dict(zip(names, new_state))
                worst = max(worst, float(np.abs(logits - expected[:, 0].numpy()).max()))
        assert worst <= 1e-4, (cell, batch, worst)
        for got, want in zip(new_state, torch_state):
            assert np.abs(got - want.numpy()).max() <= 1e-4


def test_the_metadata_says_what_a_sampler_needs(tmp_path):
    export(checkpoint("lstm"), tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["vocab"]) == VOCAB  # the emoji and the é survive
    assert meta["cell"] == "lstm" and meta["charrnn_version"] == __version__
    assert (meta["vocab_size"], meta["num_layers"], meta["hidden_size"], meta["embedding_size"]) == (
        str(len(VOCAB)),
        "2",
        "40",
        "12",
    )
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    outputs = [o.name for o in model.graph.output]
    assert inputs == {"idx": ["batch"], "h": [2, "batch", 40], "c": [2, "batch", 40]}
    assert outputs == ["logits", "next_h", "next_c"]


def test_without_onnx_the_export_names_the_install_command(tmp_path, monkeypatch, runner):
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ConfigError, match=re.escape("install it with pip install 'charrnn[onnx]'")):
        export(checkpoint("gru"), tmp_path / "m.onnx")
    source = tmp_path / "m.safetensors"
    export(checkpoint("gru"), source)
    result = runner.invoke(cli, ["export", str(source), str(tmp_path / "m.onnx")])
    one_line_error(result, 1, re.escape("pip install 'charrnn[onnx]'"))
    assert not (tmp_path / "m.onnx").exists()


def sampler_script() -> str:
    """The Python block of docs/export.md that runs onnxruntime."""
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.M | re.S)
    found = [b for b in blocks if "onnxruntime" in b]
    assert len(found) == 1, "docs/export.md should have one onnxruntime sampling loop"
    assert len(found[0].strip().splitlines()) <= 35, "the loop should stay short"
    return found[0]


@pytest.mark.slow  # trains the shared tiny model and starts two Python processes
def test_the_documented_sampling_loop_writes_charrnn_sample_argmax_text(runner, trained_run, tmp_path):
    out, _ = trained_run
    result = runner.invoke(cli, ["export", str(out / "best.pt"), str(tmp_path / "model.onnx")])
    assert result.exit_code == 0, result.stderr
    script = tmp_path / "sample_onnx.py"
    script.write_text(sampler_script(), encoding="utf-8")
    for prime in ("KING:\n", ""):
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "model.onnx"), prime, "300"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        expected = runner.invoke(
            cli, ["sample", str(out / "best.pt"), "--argmax", "--length", "300", "--prime", prime, "--device", "cpu"]
        )
        assert expected.exit_code == 0, expected.stderr
        assert done.stdout == expected.stdout
        assert len(set(done.stdout)) > 5
    sampled = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "model.onnx"), "KING:", "100", "0.8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("KING:") and len(sampled.stdout) == len("KING:") + 100 + 1

"""The CUDA-oriented code paths (autocast dtypes, torch.compile), exercised on the CPU where they can be."""

import functools

import pytest
import torch
from charrnn import checkpoint as ckpt_io
from charrnn.data import Corpus
from charrnn.errors import ConfigError
from charrnn.model import ModelConfig
from charrnn.trainer import TrainConfig, Trainer
from conftest import Losses, make_text

CORPUS = Corpus.from_text(make_text(200), "t.txt")


def run(tmp_path, **kw):
    rec = Losses()
    mc = ModelConfig(vocab_size=len(CORPUS.vocab), hidden_size=32, embedding_size=8)
    cfg = TrainConfig(batch_size=4, seq_len=16, max_steps=6, eval_every=100, warmup_steps=0, **kw)
    result = Trainer(mc, cfg, CORPUS, tmp_path, callback=rec).run()
    return rec.values, result


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_needs_cuda(tmp_path, dtype):
    with pytest.raises(ConfigError, match=f"--dtype {dtype} needs a CUDA device"):
        run(tmp_path, dtype=dtype)


def test_unknown_dtype_is_refused():
    with pytest.raises(ConfigError, match="unknown --dtype"):
        TrainConfig(dtype="int8")


def test_compile_gives_the_same_run_and_saves_the_uncompiled_module(tmp_path, monkeypatch):
    eager, _ = run(tmp_path / "eager")
    # aot_eager traces the model with dynamo and AOTAutograd like inductor does, without a C++ build.
    monkeypatch.setattr("charrnn.trainer.torch.compile", functools.partial(torch.compile, backend="aot_eager"))
    compiled, result = run(tmp_path / "compiled", compile=True)
    assert compiled == pytest.approx(eager, rel=1e-4)
    raw = torch.load(result.last_path, weights_only=True)
    assert not [k for k in raw["model"] if k.startswith("_orig_mod")], "no torch.compile key prefixes"
    ckpt_io.load(result.last_path).build_model()

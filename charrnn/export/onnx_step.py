"""The one-character step as an ONNX graph: (idx, state) -> (logits, next state), any batch size.

    inputs   idx (batch,) int64       h (num_layers, batch, hidden_size) float32     [c: the same, LSTM]
    outputs  logits (batch, vocab_size) float32     next_h, [next_c]: shaped like h and c

The graph is written here node by node with ``onnx.helper`` rather than traced by ``torch.onnx``: the
step is a dozen operators per layer, the exporter needs further packages (onnxscript) and names its
nodes differently from release to release, and the graph below is the same computation as
``charrnn.inference.StepModel`` on the weights of ``charrnn.export.fused``. The model's metadata
(``metadata_props``) says what a sampler needs: ``vocab`` (a JSON string, index i is character i),
``state`` (a JSON list of the state inputs), ``cell``, the sizes and the charrnn version.
docs/export.md has a complete sampling loop with onnxruntime and numpy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from charrnn import __version__
from charrnn.checkpoint import Checkpoint
from charrnn.errors import ConfigError
from charrnn.export import write_file
from charrnn.export.fused import step_arrays

OPSET = 17  # onnxruntime 1.14 and later; Split takes its sizes as an input up to opset 17
INSTALL = "pip install 'charrnn[onnx]'"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ConfigError(f"exporting to ONNX needs the onnx package; install it with {INSTALL}") from None
    return onnx


class _Graph:
    """Nodes and initializers under construction, each output named uniquely."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.initializers = onnx, [], []
        self.count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, kind: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs) -> list[str]:
        self.count += 1
        names = [name] if name is not None else [f"{kind.lower()}_{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(kind, list(inputs), names, **attrs))
        return names

    def one(self, kind: str, *inputs: str, name: str | None = None, **attrs) -> str:
        return self.op(kind, *inputs, name=name, **attrs)[0]


def build(ckpt: Checkpoint):
    """The step as an ``onnx.ModelProto``, checked with ``onnx.checker``."""
    onnx = _onnx()
    helper, tensor = onnx.helper, onnx.TensorProto
    cfg = ckpt.model_config
    H = cfg.hidden_size
    arrays = step_arrays(ckpt)
    g = _Graph(onnx)
    state_names = ["h", "c"] if cfg.cell == "lstm" else ["h"]

    x = g.one("Gather", g.const("embedding", arrays["embedding"]), "idx", axis=0)  # (B, E)
    hs, cs = [], []
    for layer in range(cfg.num_layers):
        at = g.const(f"layer{layer}.index", np.array(layer, dtype=np.int64))
        h = g.one("Gather", "h", at, axis=0)  # (B, H)
        p = f"layer{layer}."
        if cfg.cell == "gru":
            gi = g.one(
                "Gemm", x, g.const(p + "w_ih", arrays[p + "w_ih"]), g.const(p + "b_ih", arrays[p + "b_ih"]), transB=1
            )
            gh = g.one(
                "Gemm", h, g.const(p + "w_hh", arrays[p + "w_hh"]), g.const(p + "b_hh", arrays[p + "b_hh"]), transB=1
            )
            thirds = g.const(p + "split", np.array([H, H, H], dtype=np.int64))
            i_r, i_z, i_n = g.op("Split", gi, thirds, outputs=3, axis=1)
            h_r, h_z, h_n = g.op("Split", gh, thirds, outputs=3, axis=1)
            r = g.one("Sigmoid", g.one("Add", i_r, h_r))
            z = g.one("Sigmoid", g.one("Add", i_z, h_z))
            n = g.one("Tanh", g.one("Add", i_n, g.one("Mul", r, h_n)))
            h = g.one("Add", n, g.one("Mul", z, g.one("Sub", h, n)))  # (1 - z) * n + z * h
        else:
            xh = g.one("Concat", x, h, axis=1)  # (B, in + H)
            pre = g.one("Gemm", xh, g.const(p + "w", arrays[p + "w"]), g.const(p + "b", arrays[p + "b"]), transB=1)
            if cfg.cell == "lstm":
                c = g.one("Gather", "c", at, axis=0)
                quarters = g.const(p + "split", np.array([H, H, H, H], dtype=np.int64))
                i, f, gg, o = g.op("Split", pre, quarters, outputs=4, axis=1)
                c = g.one(
                    "Add", g.one("Mul", g.one("Sigmoid", f), c), g.one("Mul", g.one("Sigmoid", i), g.one("Tanh", gg))
                )
                h = g.one("Mul", g.one("Sigmoid", o), g.one("Tanh", c))
                cs.append(c)
            else:
                h = g.one("Tanh", pre)
        hs.append(h)
        x = h
    g.one("Gemm", x, g.const("head.w", arrays["head.w"]), g.const("head.b", arrays["head.b"]), transB=1, name="logits")
    zero = g.const("axis0", np.array([0], dtype=np.int64))
    for name, parts in (("next_h", hs), ("next_c", cs)):
        if parts:
            g.one("Concat", *[g.one("Unsqueeze", part, zero) for part in parts], axis=0, name=name)

    state_shape = [cfg.num_layers, "batch", H]
    inputs = [helper.make_tensor_value_info("idx", tensor.INT64, ["batch"])]
    inputs += [helper.make_tensor_value_info(s, tensor.FLOAT, state_shape) for s in state_names]
    outputs = [helper.make_tensor_value_info("logits", tensor.FLOAT, ["batch", cfg.vocab_size])]
    outputs += [helper.make_tensor_value_info("next_" + s, tensor.FLOAT, state_shape) for s in state_names]
    graph = helper.make_graph(g.nodes, f"charrnn_{cfg.cell}_step", inputs, outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="charrnn",
        producer_version=__version__,
        doc_string="charrnn one-character step: (idx, state) -> (logits, next state); see docs/export.md",
    )
    model.ir_version = 8  # what onnxruntime 1.14 and later read
    metadata = {
        "format": "charrnn-onnx-step",
        "charrnn_version": __version__,
        "vocab": json.dumps(ckpt.vocab.chars),  # ASCII JSON: any character survives protobuf's UTF-8
        "state": json.dumps(state_names),
        "cell": cfg.cell,
        "vocab_size": str(cfg.vocab_size),
        "num_layers": str(cfg.num_layers),
        "hidden_size": str(cfg.hidden_size),
        "embedding_size": str(cfg.embedding_size),
    }
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def save(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write the step to ``path`` atomically; the path."""
    path = Path(path)
    write_file(path, build(ckpt).SerializeToString())
    return path

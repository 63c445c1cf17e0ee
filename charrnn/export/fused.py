"""A checkpoint's weights laid out for a one-character step outside PyTorch (ONNX, the HTML page).

Per layer, the products the step needs, as float32 numpy arrays (row-major, one row per output):

    lstm, rnn   w (G*H, in+H) and b (G*H,): the gates of [x; h] in one product; b = b_ih + b_hh
    gru         w_ih (3H, in), b_ih, w_hh (3H, H), b_hh: kept apart, since the candidate needs
                r * (w_hn h + b_hn) on its own (the same split as charrnn.inference.StepModel)

with G gate blocks in torch.nn's order (LSTM: i, f, g, o; GRU: r, z, n), ``in`` the embedding size
for layer 0 and H above it. Plus "embedding" (V, E), "head.w" (V, H) and "head.b" (V,).

``half`` is what ``--half`` means in every format: the matrices (the embedding included) rounded to
float16, the biases kept in float32 (a few kilobytes). ``benchmarks/bench_export.py`` measures what
that rounding costs in loss by evaluating ``halved`` weights.
"""

from __future__ import annotations

import numpy as np
import torch

from charrnn.checkpoint import Checkpoint


def _array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to(torch.float32).cpu().numpy())


def step_arrays(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """The arrays above, named ``embedding``, ``layer{l}.w`` ... ``head.b``, in the order the step reads them."""
    w = ckpt.weights
    cfg = ckpt.model_config
    arrays = {"embedding": _array(w["embedding.weight"])}
    for layer in range(cfg.num_layers):
        w_ih, w_hh = w[f"rnn.weight_ih_l{layer}"], w[f"rnn.weight_hh_l{layer}"]
        b_ih, b_hh = w[f"rnn.bias_ih_l{layer}"], w[f"rnn.bias_hh_l{layer}"]
        if cfg.cell == "gru":
            arrays[f"layer{layer}.w_ih"] = _array(w_ih)
            arrays[f"layer{layer}.b_ih"] = _array(b_ih)
            arrays[f"layer{layer}.w_hh"] = _array(w_hh)
            arrays[f"layer{layer}.b_hh"] = _array(b_hh)
        else:
            arrays[f"layer{layer}.w"] = _array(torch.cat([w_ih, w_hh], dim=1))
            arrays[f"layer{layer}.b"] = _array(b_ih.float() + b_hh.float())
    arrays["head.w"] = _array(w["head.weight"])
    arrays["head.b"] = _array(w["head.bias"])
    return arrays


def halved(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` as ``--half`` stores them: every matrix in float16, every bias (1-D) as it was."""
    return {name: t.to(torch.float16) if t.dim() >= 2 else t for name, t in weights.items()}

"""Fine-tuning onto new characters: a checkpoint's model given a larger vocabulary, the old
characters' rows kept exactly, the new ones added so that the model's old predictions barely change.

A vocabulary is a sorted string, so adding characters moves old ones to new indices; each old row of
the embedding and of the output layer (weight and bias) moves with its character, its values
untouched. A new character gets:

- an embedding row equal to the mean of the old rows, an input the network has seen the like of;
- an output row of zero weights and a bias such that the new characters together take ``NEW_MASS``
  of the probability on average over a probe text of old characters read by the old model (a new
  character's logit is then that bias, whatever the state, and its probability at a position is
  K e^bias / Z with Z the old softmax's partition there). The loss on text of old characters so grows
  by about ln(1 + NEW_MASS) nats per character, and training raises the new rows from there: a much
  lower bias would take the optimizer longer to undo, a higher one would cost the old text more.
  ``tests/test_extend_vocab.py`` checks the growth stays under 0.01 nats per character.

The vocabulary's history (checkpoint key ``vocab_history``) gains an entry naming the characters
added, the training step the old checkpoint had reached, and the date.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from charrnn.checkpoint import Checkpoint, vocab_entry
from charrnn.data import Vocab
from charrnn.model import CharRNN

NEW_MASS = 0.003  # the probability all new characters together get, on average over the probe
PROBE_CHARS = 4096  # characters of the new text (its old ones) the old model is run on to set the bias


@torch.no_grad()
def log_mean_inverse_partition(model: CharRNN, ids: np.ndarray) -> float:
    """ln of the mean of 1 / Z over the positions of ``ids`` read by ``model`` from a zero state, where
    Z is the sum of exp(logits): ln E[e^b / Z] = b + this."""
    x = torch.as_tensor(np.asarray(ids, dtype=np.int64)[None], device=model.head.weight.device)
    logits, _ = model.eval()(x)
    neg_log_z = -torch.logsumexp(logits[0].double(), dim=1)  # (T,)
    return float(torch.logsumexp(neg_log_z, dim=0) - math.log(len(neg_log_z)))


def extend(ckpt: Checkpoint, chars: str, probe: str, *, date: str | None = None) -> Checkpoint:
    """``ckpt`` with ``chars`` (characters it lacks) added to its vocabulary and model; see the module
    docstring. ``probe`` is text whose characters the old model knows (others are dropped from it).
    Returns a Checkpoint for fine-tuning (no training state to resume); ``ckpt`` is not changed."""
    old = ckpt.vocab
    added = "".join(sorted(set(chars) - set(old.chars)))
    if not added:
        return ckpt
    new = Vocab("".join(sorted(set(old.chars) | set(added))))
    moved = torch.tensor([new.chars.index(c) for c in old.chars])  # old index i -> its new index
    fresh = torch.tensor([new.chars.index(c) for c in added])
    known = "".join(c for c in probe if c in set(old.chars))[:PROBE_CHARS] or old.chars
    old_model = ckpt.build_model("cpu")
    bias = math.log(NEW_MASS / len(added)) - log_mean_inverse_partition(old_model, old.encode(known))

    weights = {k: v.detach().cpu().clone() for k, v in ckpt.weights.items()}
    for key in ("embedding.weight", "head.weight", "head.bias"):
        rows = weights[key]
        grown = rows.new_zeros((len(new),) + tuple(rows.shape[1:]))
        grown[moved] = rows
        if key == "embedding.weight":
            grown[fresh] = rows.mean(dim=0)
        elif key == "head.bias":
            grown[fresh] = bias
        weights[key] = grown
    config = dataclasses.replace(ckpt.model_config, vocab_size=len(new))
    step = int(ckpt.progress.get("step", 0)) if isinstance(ckpt.progress, dict) else 0
    history = [*ckpt.vocab_history, vocab_entry(added, step, date)]
    return dataclasses.replace(
        ckpt, model_config=config, vocab=new, weights=weights, resume=None, vocab_history=history
    )

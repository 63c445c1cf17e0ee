"""One character at a time through a CharRNN, fast: the inference step used for sampling.

Calling ``nn.LSTM`` with a sequence of length 1 pays the fused-RNN kernel's set-up on every
character. Here each layer is one matrix multiply instead:

- layer 0: the embedding is folded into the input weights, ``table = E @ W_ih^T + b`` (V, G*H), so the
  input half of the gates is a row lookup and only ``h @ W_hh^T`` is multiplied;
- layers > 0 (LSTM, RNN): ``[x, h] @ [W_ih, W_hh]^T + (b_ih + b_hh)`` in one ``addmm``;
- GRU keeps the input and hidden products apart because its candidate gate needs ``r * (W_hn h + b_hn)``.

The arithmetic is the same as PyTorch's cells (gate order i, f, g, o for LSTM; r, z, n for GRU), so
``tests/test_step.py`` checks the logits against ``CharRNN.forward`` to float tolerance. The
weights are copies made once; the source model is not changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from charrnn.model import CharRNN, State


@dataclass
class LayerInternals:
    """What one layer computed for one step: each (B, H). ``c`` and gates only where the cell has them."""

    h: torch.Tensor
    c: torch.Tensor | None = None
    gates: dict[str, torch.Tensor] | None = None


class StepModel:
    """idx: (B,) int64, state -> logits: (B, V), next state; for inference only (no dropout, no grad)."""

    @torch.no_grad()
    def __init__(self, model: CharRNN):
        cfg = model.config
        self.cell = cfg.cell
        self.num_layers = cfg.num_layers
        self.hidden_size = cfg.hidden_size
        self.state_tensors = cfg.state_tensors
        rnn = model.rnn
        self.activation = torch.tanh if getattr(rnn, "nonlinearity", "tanh") == "tanh" else torch.relu
        emb = model.embedding.weight
        self.layers = []
        for layer in range(cfg.num_layers):
            w_ih = getattr(rnn, f"weight_ih_l{layer}")
            w_hh = getattr(rnn, f"weight_hh_l{layer}")
            b_ih = getattr(rnn, f"bias_ih_l{layer}")
            b_hh = getattr(rnn, f"bias_hh_l{layer}")
            if cfg.cell == "gru":
                # Input and hidden halves stay separate (see module docstring).
                entry = {"w_hh_t": w_hh.t().contiguous(), "b_hh": b_hh.clone()}
                if layer == 0:
                    entry["table"] = torch.addmm(b_ih, emb, w_ih.t())  # (V, 3H)
                else:
                    entry["w_ih_t"] = w_ih.t().contiguous()
                    entry["b_ih"] = b_ih.clone()
            elif layer == 0:
                entry = {"table": torch.addmm(b_ih + b_hh, emb, w_ih.t()), "w_hh_t": w_hh.t().contiguous()}
            else:
                entry = {"w_t": torch.cat([w_ih, w_hh], dim=1).t().contiguous(), "b": b_ih + b_hh}
            self.layers.append(entry)
        self.head_w_t = model.head.weight.t().contiguous()  # (H, V)
        self.head_b = model.head.bias.detach().clone()

    def init_state(self, batch_size: int) -> State:
        shape = (self.num_layers, batch_size, self.hidden_size)
        return tuple(self.head_w_t.new_zeros(shape) for _ in range(self.state_tensors))

    @torch.no_grad()
    def step(
        self, idx: torch.Tensor, state: State, internals: list[LayerInternals] | None = None
    ) -> tuple[torch.Tensor, State]:
        """Advance every stream by one character; append each layer's internals if a list is given."""
        hs, cs = [], []
        x = None
        for layer, w in enumerate(self.layers):
            h = state[0][layer]
            if self.cell == "lstm":
                c = state[1][layer]
                if layer == 0:
                    gates = torch.addmm(w["table"][idx], h, w["w_hh_t"])  # (B, 4H)
                else:
                    gates = torch.addmm(w["b"], torch.cat([x, h], dim=1), w["w_t"])
                # One sigmoid over all four gates (the g slice of it goes unused; g takes its tanh):
                # fewer kernel launches matter at one character per step.
                act = gates.sigmoid()
                H = self.hidden_size
                g = gates[:, 2 * H : 3 * H].tanh()
                i, f, o = act[:, :H], act[:, H : 2 * H], act[:, 3 * H :]
                c = f * c + i * g
                h = o * c.tanh()
                cs.append(c)
                if internals is not None:
                    internals.append(LayerInternals(h, c, {"input": i, "forget": f, "cell": g, "output": o}))
            elif self.cell == "gru":
                gi = w["table"][idx] if layer == 0 else torch.addmm(w["b_ih"], x, w["w_ih_t"])
                gh = torch.addmm(w["b_hh"], h, w["w_hh_t"])
                i_r, i_z, i_n = gi.chunk(3, dim=1)
                h_r, h_z, h_n = gh.chunk(3, dim=1)
                r = (i_r + h_r).sigmoid()
                z = (i_z + h_z).sigmoid()
                n = (i_n + r * h_n).tanh()
                h = n + z * (h - n)  # == (1 - z) * n + z * h
                if internals is not None:
                    internals.append(LayerInternals(h, None, {"reset": r, "update": z, "candidate": n}))
            else:
                if layer == 0:
                    pre = torch.addmm(w["table"][idx], h, w["w_hh_t"])
                else:
                    pre = torch.addmm(w["b"], torch.cat([x, h], dim=1), w["w_t"])
                h = self.activation(pre)
                if internals is not None:
                    internals.append(LayerInternals(h))
            hs.append(h)
            x = h
        logits = torch.addmm(self.head_b, x, self.head_w_t)
        new_state = (torch.stack(hs),) if self.cell != "lstm" else (torch.stack(hs), torch.stack(cs))
        return logits, new_state

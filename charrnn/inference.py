"""One character at a time through a CharRNN, fast: the inference step used for sampling.

Calling ``nn.LSTM`` with a sequence of length 1 pays the fused-RNN kernel's set-up on every
character. Here each layer is one matrix multiply instead:

- layer 0: the embedding is folded into the input weights, ``table = E @ W_ih^T + b`` (V, G*H), so the
  input half of the gates is a row lookup and only ``h @ W_hh^T`` is multiplied;
- layers > 0 (LSTM, RNN): ``[x, h] @ [W_ih, W_hh]^T + (b_ih + b_hh)`` in one product;
- GRU keeps the input and hidden products apart because its candidate gate needs ``r * (W_hn h + b_hn)``.

Which library runs each product (``Linear``) depends on the rows (streams) and the threads:

- several streams on the CPU: oneDNN, with the weight packed once, ahead of time, into the layout its
  kernels read (as PyTorch's own frozen and compiled CPU graphs run a linear layer), because MKL's
  ``addmm`` is slow on these small shapes (``onednn_wins``). The packed path uses a PyTorch operator
  outside the public API, so it is prepared only after a probe product agrees with ``addmm``;
  anything else (no oneDNN, a GPU, not float32, an operator that changed) uses ``addmm``. The packed
  copy costs a second copy of the weights.
- one stream on the CPU: each product is a matrix-vector product (GEMV), which numpy's BLAS
  (OpenBLAS in numpy's wheels) can do faster than the MKL GEMV PyTorch's CPU wheels call. It is used
  through a zero-copy numpy view of the weight, but only while torch runs on one thread
  (``numpy_wins``): numpy's BLAS has its own worker threads, and when they and torch's OpenMP workers
  both wait busily for work on the same cores they starve each other. ``charrnn sample`` therefore
  runs one CPU stream with torch on one thread and the products on numpy's BLAS threads
  (``charrnn.threads.sampling_threads``).

``benchmarks/bench_linear.py`` measures these choices and ``benchmarks/bench_sample.py`` the whole
step (``--mixed-pools`` the clash of the two thread pools); docs/sampling.md explains them and
docs/performance.md has the figures. ``backend`` forces "blas", "onednn" or "numpy" for every product.

On a GPU the products are small and a step is some twenty tiny kernels, so one stream is bound by
kernel launches, not arithmetic: ``StepModel.runner`` records the step once as a CUDA graph
(``GraphedStep``) and replays it per character.

The arithmetic is the same as PyTorch's cells (gate order i, f, g, o for LSTM; r, z, n for GRU), so
``tests/test_step.py`` checks the logits against ``CharRNN.forward`` to float tolerance, on every
backend. The weights are copies made once; the source model is not changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from charrnn.model import CharRNN, State


@dataclass
class LayerInternals:
    """What one layer computed for one step: each (B, H). ``c`` and gates only where the cell has them."""

    h: torch.Tensor
    c: torch.Tensor | None = None
    gates: dict[str, torch.Tensor] | None = None


Backend = Literal["auto", "onednn", "blas", "numpy"]


def onednn_usable(weight: torch.Tensor) -> bool:
    """Whether the packed oneDNN product can serve this weight: CPU, float32, oneDNN built in."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def onednn_wins(rows: int) -> bool:
    """Whether the packed oneDNN product beats BLAS for ``rows`` streams at the current thread count.

    For one row MKL's GEMV is as fast or faster; oneDNN wins from 2 rows with several threads, and on
    one thread from 4 rows (for 2-3 rows on one thread its gain was not consistent, so BLAS stays).
    ``benchmarks/bench_linear.py`` measures it; its "auto picks" column shows what this rule chose.
    """
    return rows >= 4 or (rows >= 2 and torch.get_num_threads() > 1)


def numpy_usable(weight: torch.Tensor) -> bool:
    """Whether numpy's BLAS can serve this weight through a view: a float32 CPU tensor."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32


def numpy_wins(rows: int) -> bool:
    """Whether numpy's BLAS should run a product of ``rows`` rows: one row, torch on one thread.

    For one row numpy's GEMV beats MKL's; from 2 rows oneDNN beats numpy (``benchmarks/bench_linear.py``
    measures both). With torch on more than one thread, torch's OpenMP workers and numpy's BLAS
    workers wait busily for work on the same cores and starve each other (see the module docstring;
    ``benchmarks/bench_sample.py --mixed-pools`` measures it), so numpy is left out then.
    """
    return rows == 1 and torch.get_num_threads() == 1


def _probe_agrees(want: torch.Tensor, got: torch.Tensor) -> bool:
    scale = want.abs().max().item() + 1.0
    return got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=1e-4 * scale)


class Linear:
    """``x @ weight.T + bias`` for inference, with ``weight`` (N, K) prepared once for the backend.

    ``backend``: "onednn" (the packed product for every call; an error if it cannot be used),
    "numpy" (numpy's BLAS for every call; likewise), "blas" (``addmm`` always), or "auto": the
    packed oneDNN product where oneDNN is usable and a probe product matches ``addmm``, and numpy
    where its probe matches; each call takes numpy where ``numpy_wins``, else oneDNN where
    ``onednn_wins``, else BLAS. Afterwards ``backend`` says whether the packed weight was prepared
    ("onednn") or not ("blas"), and ``numpy_ready`` whether the numpy view was.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, backend: Backend = "auto"):
        self.nbytes = weight.nbytes + (bias.nbytes if bias is not None else 0)  # weights read per product
        self.bias = None if bias is None else bias.detach().clone()
        self.weight = weight.detach().contiguous().clone()  # (N, K): one copy, for addmm and numpy
        self.weight_t = self.weight.t()  # (K, N) view, as F.linear passes it to addmm
        self.packed = None
        self.weight_np: np.ndarray | None = None
        self.always = backend if backend in ("onednn", "numpy") else None
        self.backend = "blas"
        if backend in ("auto", "numpy"):
            self._prepare_numpy(required=backend == "numpy")
        if backend in ("auto", "onednn"):
            self._prepare_onednn(required=backend == "onednn")

    def _probe(self) -> torch.Tensor:
        """Three rows to check a backend's product against ``addmm``'s (both backends are CPU float32)."""
        return torch.randn(3, self.weight.shape[1], generator=torch.Generator().manual_seed(0))

    def _prepare_numpy(self, required: bool) -> None:
        if not numpy_usable(self.weight):
            if required:
                raise ValueError("the numpy backend needs a float32 CPU weight")
            return
        probe = self._probe()
        self.weight_np = self.weight.numpy()  # shares memory with self.weight
        want = self._blas(probe)
        if not all(_probe_agrees(want[:rows], self._numpy(probe[:rows])) for rows in (1, 3)):
            self.weight_np = None
            if required:
                raise RuntimeError("numpy's product differs from addmm's")

    def _prepare_onednn(self, required: bool) -> None:
        if not onednn_usable(self.weight):
            if required:
                raise ValueError("the oneDNN backend needs a float32 CPU weight and a PyTorch built with oneDNN")
            return
        probe = self._probe()
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(self.weight)
            if not _probe_agrees(self._blas(probe), self._onednn(probe, packed)):
                raise RuntimeError("oneDNN's product differs from addmm's")
        except Exception:  # the operator is private: any failure means "use BLAS"
            if required:
                raise
            return
        self.packed = packed
        self.backend = "onednn"

    @property
    def numpy_ready(self) -> bool:
        return self.weight_np is not None

    def _blas(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight_t if self.bias is None else torch.addmm(self.bias, x, self.weight_t)

    def _onednn(self, x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")

    def _numpy(self, x: torch.Tensor) -> torch.Tensor:
        weight_np = self.weight_np
        assert weight_np is not None, "the numpy product runs only once the numpy view is prepared"
        xs = x.detach().numpy()
        # One row: a matrix-vector product on the (N, K) rows, the BLAS routine made for it.
        out = np.dot(weight_np, xs[0])[None] if xs.shape[0] == 1 else xs @ weight_np.T
        out = torch.from_numpy(out)
        return out if self.bias is None else out.add_(self.bias)

    def __call__(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """The product, plus ``add`` (same shape as the result) if given: one ``addmm`` on BLAS."""
        rows = x.shape[0]
        if self.weight_np is not None and (self.always == "numpy" or (self.always is None and numpy_wins(rows))):
            out = self._numpy(x)
            return out if add is None else out.add_(add)
        if self.packed is not None and (self.always == "onednn" or onednn_wins(rows)):
            out = self._onednn(x, self.packed)
            return out if add is None else out.add_(add)
        if add is not None and self.bias is None:
            return torch.addmm(add, x, self.weight_t)
        out = self._blas(x)
        return out if add is None else out.add_(add)


class StepModel:
    """idx: (B,) int64, state -> logits: (B, V), next state; for inference only (no dropout, no grad).

    ``backend`` picks how the matrix products run (see ``Linear``); ``self.backend`` says whether
    the packed oneDNN weights were prepared, ``self.numpy_ready`` whether numpy's BLAS can serve.
    """

    @torch.no_grad()
    def __init__(self, model: CharRNN, backend: Backend = "auto"):
        cfg = model.config
        self.cell = cfg.cell
        self.num_layers = cfg.num_layers
        self.hidden_size = cfg.hidden_size
        self.state_tensors = cfg.state_tensors
        rnn = model.rnn
        self.activation = torch.tanh if getattr(rnn, "nonlinearity", "tanh") == "tanh" else torch.relu
        emb = model.embedding.weight
        # ``table`` (V, G*H): layer 0's input half of the gates, one row per character. Per layer, its
        # products: "in" the input product (GRU layers > 0), "hh" the hidden product; LSTM/RNN layers > 0
        # have one "cat" product of [x, h] instead.
        self.layers: list[dict[str, Linear]] = []
        for layer in range(cfg.num_layers):
            w_ih = getattr(rnn, f"weight_ih_l{layer}")
            w_hh = getattr(rnn, f"weight_hh_l{layer}")
            b_ih = getattr(rnn, f"bias_ih_l{layer}")
            b_hh = getattr(rnn, f"bias_hh_l{layer}")
            if cfg.cell == "gru":
                # Input and hidden halves stay separate (see module docstring).
                entry = {"hh": Linear(w_hh, b_hh, backend)}
                if layer == 0:
                    self.table = torch.addmm(b_ih, emb, w_ih.t())  # (V, 3H)
                else:
                    entry["in"] = Linear(w_ih, b_ih, backend)
            elif layer == 0:
                self.table = torch.addmm(b_ih + b_hh, emb, w_ih.t())
                entry = {"hh": Linear(w_hh, None, backend)}
            else:
                entry = {"cat": Linear(torch.cat([w_ih, w_hh], dim=1), b_ih + b_hh, backend)}
            self.layers.append(entry)
        self.head = Linear(model.head.weight, model.head.bias, backend)
        self.device = emb.device
        self.dtype = emb.dtype
        linears = [self.head] + [lin for entry in self.layers for lin in entry.values()]
        self.backend = "onednn" if all(lin.backend == "onednn" for lin in linears) else "blas"
        self.numpy_ready = all(lin.numpy_ready for lin in linears)  # numpy's BLAS can run one stream

    def weight_bytes_per_step(self, batch_size: int) -> int:
        """Bytes of weights one step reads: every matrix once, one table row per stream."""
        total = self.table[0].nbytes * batch_size
        for entry in [{"head": self.head}] + self.layers:
            for lin in entry.values():
                total += lin.nbytes
        return total

    def runner(self, batch_size: int) -> Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]:
        """The fastest ``step`` for ``batch_size`` streams here: a ``GraphedStep`` on CUDA (if the
        graph can be recorded), else ``self.step`` itself. Mind ``GraphedStep``'s contract: what it
        returns is overwritten by its next call."""
        if self.device.type == "cuda":
            try:
                return GraphedStep(self, batch_size)
            except RuntimeError:  # recording refused (e.g. another capture in progress): run eagerly
                pass
        return self.step

    def init_state(self, batch_size: int) -> State:
        shape = (self.num_layers, batch_size, self.hidden_size)
        return tuple(torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.state_tensors))

    @torch.no_grad()
    def read(self, ids: list[int], num_samples: int = 1) -> tuple[torch.Tensor, State]:
        """Read ``ids`` from a zero state a character at a time, as ``num_samples`` copies: the logits
        after the last character (N, V) and the state. For a short prime (``charrnn.sample.run_prime``)."""
        state = self.init_state(num_samples)
        logits = torch.empty(0)
        for i in ids:
            logits, state = self.step(torch.full((num_samples,), i, dtype=torch.long, device=self.device), state)
        return logits, state

    @torch.no_grad()
    def step(
        self, idx: torch.Tensor, state: State, internals: list[LayerInternals] | None = None
    ) -> tuple[torch.Tensor, State]:
        """Advance every stream by one character; append each layer's internals if a list is given."""
        hs, cs = [], []
        # The input of each layer: for layer 0 its input half of the gates, a row of the table per
        # stream; for the layers above, the h of the layer below.
        x = self.table.index_select(0, idx)
        for layer, w in enumerate(self.layers):
            h = state[0][layer]
            if self.cell == "lstm":
                c = state[1][layer]
                if layer == 0:
                    gates = w["hh"](h, add=x)  # (B, 4H)
                else:
                    gates = w["cat"](torch.cat([x, h], dim=1))
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
                    internals.append(LayerInternals(h, c, {"input": i, "forget": f, "g": g, "output": o}))
            elif self.cell == "gru":
                gi = x if layer == 0 else w["in"](x)
                gh = w["hh"](h)
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
                    pre = w["hh"](h, add=x)
                else:
                    pre = w["cat"](torch.cat([x, h], dim=1))
                h = self.activation(pre)
                if internals is not None:
                    internals.append(LayerInternals(h))
            hs.append(h)
            x = h
        logits = self.head(x)
        new_state = (torch.stack(hs),) if self.cell != "lstm" else (torch.stack(hs), torch.stack(cs))
        return logits, new_state


class GraphedStep:
    """``StepModel.step`` for a fixed number of streams on CUDA, recorded once as a CUDA graph and
    replayed per character: one launch instead of one per kernel. Same kernels, same results.

    The logits and state it returns live in the graph's own buffers and are overwritten by the next
    call: use (or clone) them first. Passing back the state it returned costs no copy.
    """

    @torch.no_grad()
    def __init__(self, stepper: StepModel, batch_size: int):
        device = stepper.device
        # The graph reads the stepper's weight tensors by address: they must outlive it, or the
        # allocator hands their memory to other tensors while the graph still reads from it.
        self.stepper = stepper
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.state = stepper.init_state(batch_size)
        # Recording needs the libraries' lazy set-up done first, on a side stream (PyTorch's recipe).
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                stepper.step(self.idx, self.state)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits, new_state = stepper.step(self.idx, self.state)
            for buffer, new in zip(self.state, new_state):
                buffer.copy_(new)  # last in stream order: every read of the old state comes before

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        self.idx.copy_(idx)
        for buffer, given in zip(self.state, state):
            if given is not buffer:
                buffer.copy_(given)
        self.graph.replay()
        return self.logits, self.state

"""The training loop: truncated BPTT with Adam, a learning-rate schedule, clipping, evaluation,
checkpoints and exact resume. It reports through a ``Callback`` and never prints.

The options and budget live in charrnn.train_config, the progress record in charrnn.train_state,
checkpoint capture and resume in charrnn.snapshot, what several processes share in
charrnn.distributed, and what the loop reports in charrnn.callbacks; this module runs the loop.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from charrnn import checkpoint as ckpt_io
from charrnn.callbacks import Callback, EvalInfo, StepInfo, TrainResult
from charrnn.data import Batches, Corpus, split
from charrnn.distributed import Session
from charrnn.errors import ConfigError, DivergedError, option
from charrnn.loss import DEFAULT_EVAL_CHARS, DEFAULT_EVAL_CHARS_CPU, Loss, eval_subset, evaluate
from charrnn.model import CharRNN, ModelConfig, detach_state
from charrnn.snapshot import rank_record, restore, snapshot
from charrnn.train_config import DEFAULT_MAX_STEPS, DTYPES, SCHEDULES, Budget, TrainConfig, learning_rate
from charrnn.train_state import TrainState

# The options' and callbacks' names stay importable from here, where callers have always found them.
__all__ = [
    "Trainer",
    "STOP_REASONS",
    "Callback",
    "StepInfo",
    "EvalInfo",
    "TrainResult",
    "TrainConfig",
    "learning_rate",
    "DEFAULT_MAX_STEPS",
    "DTYPES",
    "SCHEDULES",
]

# Why a run stops, in rising order of precedence: with several processes the highest any of them
# reports wins, so all stop at the same step for the same reason.
STOP_REASONS = (
    None,
    "max_steps",
    "max_epochs",
    "max_time",
    "interrupt:should_stop",
    "interrupt:SIGINT",
    "interrupt:SIGTERM",
)


def _finite_step(loss: float, grad_norm: float, scaled: bool) -> bool:
    """May the optimizer step? Not on a NaN/inf loss or gradient norm; under fp16 loss scaling an
    overflowing gradient is the scaler's to skip, so only the loss counts."""
    return math.isfinite(loss) and (scaled or math.isfinite(grad_norm))


class Trainer:
    """One training run. Build it, then ``run()``; see the module docstring.

    ``session`` is this process's place in a data-parallel job (charrnn.distributed.init); None
    trains in one process. ``budget`` says when the run stops and where a progress bar stands;
    ``state`` is the progress so far (what a checkpoint records).
    """

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        corpus: Corpus,
        out_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        init_from: ckpt_io.Checkpoint | None = None,
        resume: ckpt_io.Checkpoint | None = None,
        callback: Callback | None = None,
        should_stop: Callable[[], str | None] = lambda: None,
        session: Session | None = None,
    ):
        cfg = train_config
        self.model_config, self.train_config, self.corpus = model_config, cfg, corpus
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.callback = callback or Callback()
        self.should_stop = should_stop
        self.session = session or Session(device=self.device)
        if cfg.dtype != "fp32" and self.device.type != "cuda":
            # oneDNN's CPU LSTM kernel has no bf16 autocast path, and fp16 needs CUDA's loss scaling.
            raise ConfigError(
                f"{option('dtype', cfg.dtype)} needs a CUDA device; use {option('dtype', 'fp32')} on {self.device.type}"
            )

        # 1. Data: contiguous split, then each split laid out as parallel streams.
        self.train_ids, self.val_ids = split(corpus.ids, cfg.val_frac)
        if len(self.val_ids) < 2:
            raise ConfigError(
                f"{option('val_frac', cfg.val_frac)} leaves {len(self.val_ids)} validation character(s) of "
                f"{len(corpus):,}; raise {option('val_frac')} or use a longer text"
            )
        eval_chars = cfg.eval_chars or (DEFAULT_EVAL_CHARS if self.device.type == "cuda" else DEFAULT_EVAL_CHARS_CPU)
        self.eval_ids = eval_subset(self.val_ids, eval_chars, cfg.seed)  # the same at every evaluation
        self.batches = Batches(self.train_ids, cfg.batch_size, cfg.seq_len, self.session.rank, self.session.world_size)
        self.chars_per_step = cfg.batch_size * cfg.seq_len * self.session.world_size
        self.budget = Budget.of(cfg, len(self.batches))

        # 2. Model and optimizer, seeded so the same seed and data give the same run; then each
        #    process its own dropout stream (the same initial weights everywhere).
        torch.manual_seed(cfg.seed)
        self.model = CharRNN(model_config).to(self.device)
        if init_from is not None:
            self.model.load_state_dict(init_from.weights)
        source = resume or init_from
        self.vocab_history = (
            source.vocab_history if source is not None else [ckpt_io.vocab_entry(corpus.vocab.chars, 0)]
        )
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            # One fused kernel for the whole update, on the CPU too, instead of the default for-each
            # ops (a gain of a few percent of a step; bench_train.py's ratios show it).
            fused=self.device.type in ("cuda", "cpu") or None,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.dtype == "fp16")
        self.session.seed_per_rank(cfg.seed)
        self.forward_model = self.session.wrap(self.model)
        if cfg.compile:
            # torch.compile types its result as the callable it was given; for a Module it is an
            # OptimizedModule, itself a Module (``train()`` below needs one).
            self.forward_model = cast(torch.nn.Module, torch.compile(self.forward_model))

        # 3. Progress, either fresh or restored from a checkpoint.
        self.state, carried = TrainState(), None
        if resume is not None:
            restored = restore(
                resume,
                self.model,
                self.optimizer,
                self.scaler,
                train_config=cfg,
                steps_per_epoch=len(self.batches),
                device=self.device,
                rank=self.session.rank,
                world_size=self.session.world_size,
            )
            self.state, carried = restored.state, restored.carried
        self.carried = carried or self.model.init_state(cfg.batch_size, self.device)
        self.current_lr, self.eval_seconds = self._lr(), 0.0

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.train_config.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.train_config.dtype])

    def _lr(self) -> float:
        s = self.state
        return learning_rate(self.train_config, s.step, self.budget.fraction(s.step, s.elapsed), s.epoch) * s.lr_scale

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    # -- one step, one evaluation, one save --------------------------------------------------

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        """One optimizer step on inputs ``x`` and targets ``y`` (B, T) int64, from the carried state.

        Returns the loss in nats/char (the mean over all processes), or None when the loss or the
        gradient was not finite on any process: then no update is made, and with on_nan "skip" the
        learning rate is halved and the carried state reset; with "stop" it raises DivergedError.
        """
        cfg = self.train_config
        # 1. The learning rate of this step.
        self.current_lr = lr = self._lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # 2. Forward and backward through seq_len steps, then clip.
        with self.autocast():
            logits, carried = self.forward_model(x, self.carried)
            loss = F.cross_entropy(logits.float().view(-1, self.model_config.vocab_size), y.view(-1))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        # 3. Refuse to step on a NaN/inf anywhere: one decision for all processes. Loss and norm come
        #    back in one transfer: on a GPU each is a wait for the device.
        loss_value, norm_value = torch.stack([loss.detach().float(), grad_norm.detach().float()]).tolist()
        finite = _finite_step(loss_value, norm_value, self.scaler.is_enabled())
        total, bad = self.session.sum_of([loss_value, 0.0 if finite else 1.0])
        loss_value = total / self.session.world_size  # the loss over the whole global batch
        if bad:
            self._not_finite(lr)
            return None
        # 4. The update, and the state the next batch starts from.
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.carried = detach_state(carried)
        return loss_value

    def _not_finite(self, lr: float) -> None:
        cfg, s = self.train_config, self.state
        if cfg.on_nan == "stop":
            raise DivergedError(
                f"training diverged at step {s.step + 1}: the loss or gradient is not finite (NaN/inf); "
                f"lower {option('lr')} (it was {lr:.3g}) or tighten {option('grad_clip')} (it was "
                f"{cfg.grad_clip:g}), then continue with {option('resume', str(self.last_path))} "
                "(best.pt was not touched)"
            )
        s.lr_scale *= 0.5
        self.optimizer.zero_grad(set_to_none=True)
        self.carried = self.model.init_state(cfg.batch_size, self.device)
        self.callback.on_nan_skip(s.step + 1, s.lr_scale)

    def evaluate(self) -> Loss:
        """The loss on the validation subset; with several processes rank 0's, on every process (the
        weights are the same everywhere, so the others need not spend the time)."""
        loss = Loss(nats=0.0, n_chars=0)
        if self.session.is_main:
            cfg = self.train_config
            loss = evaluate(
                self.model,
                self.eval_ids,
                batch_size=cfg.eval_batch_size,
                seq_len=cfg.eval_seq_len,
                device=self.device,
                autocast=self.autocast(),
            )
        nats, chars = self.session.from_main([loss.nats, loss.n_chars])
        return Loss(nats=nats, n_chars=int(chars))

    def _save(self, best: bool) -> None:
        # Every process's RNG and carried state go into rank 0's checkpoint, so that a run resumed on
        # as many processes continues exactly (a collective: every process comes here).
        ranks = self.session.gather(rank_record(self.carried, self.device))
        if not self.session.is_main:
            return
        ckpt = snapshot(
            model_config=self.model_config,
            train_config=self.train_config,
            corpus=self.corpus,
            model=self.model,
            optimizer=self.optimizer,
            scaler=self.scaler,
            state=self.state,
            ranks=ranks,
            device=self.device,
            vocab_history=self.vocab_history,
        )
        ckpt_io.save(ckpt, self.last_path)
        if best:
            ckpt_io.save(ckpt, self.best_path)

    def _eval_and_save(self, losses_since_eval: list[float]) -> None:
        t0 = time.perf_counter()
        val = self.evaluate()
        seconds = time.perf_counter() - t0
        self.eval_seconds += seconds
        train_loss = float(np.mean(losses_since_eval)) if losses_since_eval else float("nan")
        best = self.state.record_eval(train_loss, val.nats, self.current_lr)
        self._save(best)
        self.callback.on_eval(EvalInfo(self.state.step, self.state.epoch, train_loss, val, best, seconds))
        self.budget.record_closing(time.perf_counter() - t0)

    def _agreed_stop_reason(self) -> str | None:
        """Why to stop now, decided by all processes together: the most pressing reason any has wins,
        and all take the largest elapsed time and time estimates any has measured, so all stop at the
        same step and follow the same max_time schedule."""
        s, b = self.state, self.budget
        reason = b.reason(s.step, s.elapsed)
        if reason is None and (signal_name := self.should_stop()):
            reason = f"interrupt:{signal_name}"
        if reason not in STOP_REASONS:
            reason = "interrupt:SIGINT"
        code, s.elapsed, b.step_s, b.closing_s = self.session.max_of(
            [STOP_REASONS.index(reason), s.elapsed, b.step_s, b.closing_s]
        )
        return STOP_REASONS[int(code)]

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train until the budget (steps, epochs, time) is spent or ``should_stop`` says so; the
        final state is evaluated and saved (an interrupted run is only saved)."""
        s, cfg = self.state, self.train_config
        self.current_lr, self.eval_seconds = self._lr(), 0.0
        losses_since_eval: list[float] = []
        last_eval_step = s.step if s.history["step"] and s.history["step"][-1] == s.step else None
        self.callback.on_start(self)
        self.forward_model.train()
        clock = time.perf_counter()
        while (stopped_by := self._agreed_stop_reason()) is None:
            # 1. Next batch; a new epoch starts every stream again from a zero state.
            if s.batch >= len(self.batches):
                s.epoch, s.batch = s.epoch + 1, 0
                self.carried = self.model.init_state(cfg.batch_size, self.device)
            x, y = (self._to_device(a) for a in self.batches[s.batch])
            # 2. One step; a skipped (non-finite) one still uses up its batch.
            loss = self.train_step(x, y)
            s.batch += 1
            if loss is None:
                continue
            # 3. Book-keeping.
            s.step += 1
            s.chars_seen += self.chars_per_step
            s.last_train_loss = loss
            losses_since_eval.append(loss)
            now = time.perf_counter()
            self.budget.record_step(now - clock)
            s.elapsed, clock = s.elapsed + now - clock, now
            self.callback.on_step(
                StepInfo(
                    s.step,
                    s.epoch,
                    loss,
                    self.current_lr,
                    self.chars_per_step,
                    s.elapsed,
                    self.budget.fraction(s.step, s.elapsed),
                )
            )
            # 4. Evaluation and checkpoints on schedule; max_time is wall clock, so they count too.
            if s.step % cfg.eval_every == 0:
                self._eval_and_save(losses_since_eval)
                losses_since_eval, last_eval_step = [], s.step
                now = time.perf_counter()
                s.elapsed, clock = s.elapsed + now - clock, now

        # 5. The final state of the run is always evaluated and saved (an interrupt only saves).
        if stopped_by.startswith("interrupt"):
            self._save(best=False)
        elif s.step != last_eval_step:
            self._eval_and_save(losses_since_eval)
        s.elapsed += time.perf_counter() - clock  # the closing evaluation and save are part of the run's time
        return TrainResult(
            steps=s.step,
            epochs=s.epoch + s.batch / len(self.batches),
            elapsed=s.elapsed,
            best_val_loss=s.best_val_loss,
            last_val_loss=s.last_val_loss,
            stopped_by=stopped_by,
            last_path=self.last_path,
            best_path=self.best_path if s.best_val_loss is not None else None,
            eval_seconds=self.eval_seconds,
        )

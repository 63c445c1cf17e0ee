"""The training loop: truncated BPTT with Adam, a learning-rate schedule, clipping, evaluation,
checkpoints and exact resume. It reports through a ``Callback`` and never prints.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from charrnn import checkpoint as ckpt_io
from charrnn import distributed
from charrnn.data import Batches, Corpus, split
from charrnn.errors import ConfigError, DivergedError
from charrnn.loss import DEFAULT_EVAL_CHARS, DEFAULT_EVAL_CHARS_CPU, Loss, eval_subset, evaluate
from charrnn.model import CharRNN, ModelConfig, detach_state

SCHEDULES = ("cosine", "wsd", "step", "constant")
# wsd: the share of the budget, at its end, over which the learning rate decays linearly.
WSD_DECAY_FRAC = 0.2
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# With no --max-steps, --max-epochs or --max-time, a run stops after this many steps: under 10
# minutes of the default model on a 2-core CPU, evaluations included (docs/defaults.md: the
# default recipe ran 454 steps in 5 minutes there).
DEFAULT_MAX_STEPS = 850

# Why a run stops, in rising order of precedence: with several processes the highest any of them
# reports wins, so all stop at the same step for the same reason.
STOP_REASONS = (None, "max_steps", "max_epochs", "max_time", "interrupt:SIGINT", "interrupt:SIGTERM")


@dataclass
class TrainConfig:
    """The options of a training run (everything but the model's shape and the device)."""

    batch_size: int = 32
    seq_len: int = 100
    lr: float = 4e-3
    schedule: str = "wsd"
    warmup_steps: int = 20
    min_lr_frac: float = 0.1
    lr_decay: float = 0.97
    lr_decay_after: int = 10
    grad_clip: float = 5.0
    weight_decay: float = 0.0
    max_epochs: int | None = None
    max_steps: int | None = None
    max_time: float | None = None
    eval_every: int = 250
    eval_batch_size: int = 32
    eval_seq_len: int = 256
    eval_chars: int | None = None  # score at most this many validation characters (None: by device)
    val_frac: float = 0.1
    seed: int = 1337
    dtype: str = "fp32"
    compile: bool = False
    on_nan: str = "stop"

    def __post_init__(self) -> None:
        positive = ("batch_size", "seq_len", "eval_every", "eval_batch_size", "eval_seq_len")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_epochs", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.eval_chars is not None and self.eval_chars < 2:
            raise ConfigError(f"--eval-chars must be at least 2, got {self.eval_chars}")
        if self.max_time is not None and not self.max_time > 0:
            raise ConfigError(f"--max-time must be positive, got {self.max_time}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if not self.grad_clip > 0:
            raise ConfigError(f"--grad-clip must be positive, got {self.grad_clip}")
        if not 0 < self.val_frac < 1:
            raise ConfigError(f"--val-frac must be between 0 and 1 (exclusive), got {self.val_frac}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown --schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown --dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.on_nan not in ("stop", "skip"):
            raise ConfigError(f"unknown --on-nan {self.on_nan!r}; choose stop or skip")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_frac <= 1 or not 0 < self.lr_decay <= 1:
            raise ConfigError("--warmup-steps must be >= 0, --min-lr-frac in [0, 1], --lr-decay in (0, 1]")
        if self.max_steps is None and self.max_epochs is None and self.max_time is None:
            self.max_steps = DEFAULT_MAX_STEPS

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class StepInfo:
    step: int
    epoch: int
    loss: float  # nats/char of this batch
    lr: float
    chars: int  # characters in this step (all ranks)
    elapsed: float  # seconds of training, this run and earlier ones
    progress: float  # fraction of the budget done, 0..1


@dataclass(frozen=True)
class EvalInfo:
    step: int
    epoch: int
    train_loss: float  # mean over the steps since the last evaluation
    val: Loss
    best: bool
    seconds: float  # how long the evaluation took


@dataclass(frozen=True)
class TrainResult:
    steps: int
    epochs: float
    elapsed: float
    best_val_loss: float | None
    last_val_loss: float | None
    stopped_by: str  # "max_steps" | "max_epochs" | "max_time" | "interrupt:<signal>" 
    last_path: Path
    best_path: Path | None
    eval_seconds: float
    sample: str | None = None  # the closing sample from best.pt (charrnn.run), if one was asked for


class Callback:
    """Hooks the trainer calls; the CLI implements them for progress bars and tables."""

    def on_start(self, trainer: "Trainer") -> None: ...

    def on_step(self, info: StepInfo) -> None: ...

    def on_eval(self, info: EvalInfo) -> None: ...

    def on_nan_skip(self, step: int, new_lr_scale: float) -> None: ...


def learning_rate(cfg: TrainConfig, step: int, progress: float, epoch: int) -> float:
    """The learning rate for ``step`` (0-based): linear warm-up, then the chosen schedule.

    cosine: from lr down to lr * min_lr_frac over the run's budget (``progress`` 0..1).
    wsd (warm-up, stable, decay): lr until the last WSD_DECAY_FRAC of the budget, then linearly down
        to lr * min_lr_frac; a short budget spends most of its steps at the full rate.
    step: char-rnn's rule: at the end of every epoch from the ``lr_decay_after``-th on, lr *= lr_decay.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        floor = cfg.lr * cfg.min_lr_frac
        return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if cfg.schedule == "wsd":
        floor = cfg.lr * cfg.min_lr_frac
        into_decay = (min(1.0, progress) - (1.0 - WSD_DECAY_FRAC)) / WSD_DECAY_FRAC
        return cfg.lr if into_decay <= 0 else cfg.lr - (cfg.lr - floor) * into_decay
    if cfg.schedule == "step":
        return cfg.lr * cfg.lr_decay ** max(0, epoch - max(1, cfg.lr_decay_after) + 1)
    return cfg.lr


class Trainer:
    """One training run. Build it, then ``run()``; see the module docstring."""

    def __init__(
        self,
        model_config: ModelConfig,
        config: TrainConfig,
        corpus: Corpus,
        out_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        init_from: ckpt_io.Checkpoint | None = None,
        resume: ckpt_io.Checkpoint | None = None,
        callback: Callback | None = None,
        should_stop: Callable[[], str | None] = lambda: None,
        rank: int = 0,
        world_size: int = 1,
        wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    ):
        self.model_config, self.config, self.corpus = model_config, config, corpus
        self.out_dir = Path(out_dir)
        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        self.callback = callback or Callback()
        self.should_stop = should_stop
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0

        if config.dtype != "fp32" and self.device.type != "cuda":
            # oneDNN's CPU LSTM kernel has no bf16 autocast path, and fp16 needs CUDA's loss scaling.
            raise ConfigError(f"--dtype {config.dtype} needs a CUDA device; use --dtype fp32 on {self.device.type}")

        # 1. Data: contiguous split, then each split laid out as parallel streams.
        self.train_ids, self.val_ids = split(corpus.ids, config.val_frac)
        if len(self.val_ids) < 2:
            raise ConfigError(
                f"--val-frac {config.val_frac} leaves {len(self.val_ids)} validation character(s) of "
                f"{len(corpus):,}; raise --val-frac or use a longer text"
            )
        eval_chars = config.eval_chars
        if eval_chars is None:
            eval_chars = DEFAULT_EVAL_CHARS if self.device.type == "cuda" else DEFAULT_EVAL_CHARS_CPU
        self.eval_ids = eval_subset(self.val_ids, eval_chars, config.seed)  # the same at every evaluation
        self.batches = Batches(self.train_ids, config.batch_size, config.seq_len, rank, world_size)
        if config.max_epochs is None and config.max_steps is None:
            self.total_steps = None
        else:
            candidates = []
            if config.max_steps is not None:
                candidates.append(config.max_steps)
            if config.max_epochs is not None:
                candidates.append(config.max_epochs * len(self.batches))
            self.total_steps = min(candidates)

        # 2. Model and optimizer, seeded so the same seed and data give the same run.
        torch.manual_seed(config.seed)
        self.model = CharRNN(model_config).to(self.device)
        if init_from is not None:
            self.model.load_state_dict(init_from.model)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            # One fused kernel for the whole update, on the CPU too, instead of the default for-each
            # ops (a gain of a few percent of a step; bench_train.py's ratios show it).
            fused=self.device.type in ("cuda", "cpu") or None,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.dtype == "fp16")
        # Several processes: the same initial weights (seeded above), but each its own dropout stream.
        self._distributed = world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
        if world_size > 1:
            torch.manual_seed(config.seed + rank)
        self.forward_model = self.model
        if wrap_model is not None:
            self.forward_model = wrap_model(self.model)
        if config.compile:
            self.forward_model = torch.compile(self.forward_model)

        # 3. Progress, either fresh or restored from a checkpoint.
        self.step = 0
        self.epoch = 0
        self.batch_index = 0
        self.elapsed = 0.0
        self.chars_seen = 0
        self.lr_scale = 1.0
        self.best_val_loss: float | None = None
        self.last_val_loss: float | None = None
        self.last_train_loss: float | None = None
        self.history: dict[str, list] = {"step": [], "train_loss": [], "val_loss": [], "lr": [], "elapsed": []}
        self.state = self.model.init_state(config.batch_size, self.device)
        if resume is not None:
            self._restore(resume)

    # -- checkpoints -------------------------------------------------------------------------

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def _checkpoint(self) -> ckpt_io.Checkpoint:
        train_config = self.config.to_dict()
        train_config["device"] = str(self.device)
        train_config["world_size"] = self.world_size
        rng = self._rng_state()
        return ckpt_io.Checkpoint(
            path=None,
            model_config=self.model_config,
            vocab=self.corpus.vocab.chars,
            model=self.model.state_dict(),
            train_config=train_config,
            corpus={
                "name": self.corpus.name,
                "path": self.corpus.path,
                "chars": len(self.corpus),
                "sha256": self.corpus.sha256,
                "val_frac": self.config.val_frac,
                "separator": self.corpus.separator,
            },
            progress={
                "step": self.step,
                "epoch": self.epoch,
                "batch": self.batch_index,
                "elapsed": self.elapsed,
                "chars_seen": self.chars_seen,
                "lr_scale": self.lr_scale,
            },
            history=self.history,
            best_val_loss=self.best_val_loss,
            last_train_loss=self.last_train_loss,
            resume={
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "rng": rng,
                "state": [s.detach().cpu() for s in self.state],
                "world_size": self.world_size,
            },
        )

    def _rng_state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def _restore(self, ckpt: ckpt_io.Checkpoint) -> None:
        """Continue exactly where ``ckpt`` stopped: weights, optimizer, RNG, data position, state."""
        self.model.load_state_dict(ckpt.model)
        p = ckpt.progress
        self.step, self.epoch, self.batch_index = int(p["step"]), int(p["epoch"]), int(p["batch"])
        self.elapsed, self.chars_seen = float(p["elapsed"]), int(p["chars_seen"])
        self.lr_scale = float(p.get("lr_scale", 1.0))
        self.history = {k: list(v) for k, v in ckpt.history.items()}
        self.best_val_loss = ckpt.best_val_loss
        self.last_train_loss = ckpt.last_train_loss
        resume = ckpt.resume or {}
        if "optimizer" in resume:
            self.optimizer.load_state_dict(resume["optimizer"])
            for group in self.optimizer.param_groups:
                # The saved groups carry the saving machine's kernel choice; this device decides.
                group["fused"], group["foreach"] = self.optimizer.defaults["fused"], self.optimizer.defaults["foreach"]
        if resume.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(resume["scaler"])
        rng = resume.get("rng", {})
        per_rank = resume.get("ranks")  # every process's RNG and carried state, from a run of several
        exact = isinstance(per_rank, list) and len(per_rank) == self.world_size
        if exact:
            rng = per_rank[self.rank]["rng"]
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        if self.world_size > 1 and not exact:
            # Another process count: bitwise resume is off, but each process still needs its own stream.
            torch.manual_seed(self.config.seed + self.rank + 7919 * self.step)
        saved_state = per_rank[self.rank]["state"] if exact else resume.get("state")
        same_layout = resume.get("world_size", 1) == self.world_size
        if saved_state and same_layout and saved_state[0].shape[1] == self.config.batch_size:
            self.state = tuple(s.to(self.device) for s in saved_state)
        if self.batch_index >= len(self.batches) or not same_layout:
            # The data layout changed (another process count): start the next epoch cleanly.
            self.epoch += 1 if self.batch_index else 0
            self.batch_index = 0
            self.state = self.model.init_state(self.config.batch_size, self.device)

    def _save(self, best: bool) -> None:
        # Every process's RNG and carried state go into rank 0's checkpoint, so that a run resumed on
        # as many processes continues exactly (a collective: every process comes here).
        per_rank = None
        if self._distributed:
            per_rank = distributed.gather({"rng": self._rng_state(), "state": [s.detach().cpu() for s in self.state]})
        if not self.is_main:
            return
        ckpt = self._checkpoint()
        if per_rank is not None:
            ckpt.resume["ranks"] = per_rank
        ckpt_io.save(ckpt, self.last_path)
        if best:
            ckpt_io.save(ckpt, self.best_path)

    # -- the loop ----------------------------------------------------------------------------

    def progress(self) -> float:
        """Fraction of the budget used: the largest of steps, epochs and time fractions."""
        fractions = [0.0]
        if self.total_steps:
            fractions.append(self.step / self.total_steps)
        if self.config.max_time:
            fractions.append(self.elapsed / self.config.max_time)
        return min(1.0, max(fractions))

    def _stop_reason(self) -> str | None:
        cfg = self.config
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_epochs is not None and self.step >= cfg.max_epochs * len(self.batches):
            return "max_epochs"
        if cfg.max_time is not None and self.elapsed >= cfg.max_time:
            return "max_time"
        signal_name = self.should_stop()
        if signal_name:
            return f"interrupt:{signal_name}"
        return None

    def _agreed_stop_reason(self) -> str | None:
        """``_stop_reason``, decided by all processes together (the most pressing reason any has wins)
        at the largest elapsed time any has measured, so all stop at the same step and follow the
        same --max-time schedule."""
        reason = self._stop_reason()
        if not self._distributed:
            return reason
        if reason not in STOP_REASONS:
            reason = "interrupt:SIGINT"
        code, self.elapsed = distributed.max_of([STOP_REASONS.index(reason), self.elapsed], self.device)
        return STOP_REASONS[int(code)]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.config.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.config.dtype])

    def evaluate(self) -> Loss:
        """The loss on the validation subset; with several processes rank 0's, on every process (the
        weights are the same everywhere, so the others need not spend the time)."""
        loss = Loss(nats=0.0, chars=0)
        if self.is_main or not self._distributed:
            loss = evaluate(
                self.model,
                self.eval_ids,
                batch_size=self.config.eval_batch_size,
                seq_len=self.config.eval_seq_len,
                device=self.device,
                autocast=self.autocast(),
            )
        if self._distributed:
            nats, chars = distributed.from_main([loss.nats, loss.chars], self.device)
            loss = Loss(nats=nats, chars=int(chars))
        return loss

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _eval_and_save(self, losses_since_eval: list[float]) -> None:
        t0 = time.perf_counter()
        val = self.evaluate()
        seconds = time.perf_counter() - t0
        self.eval_seconds += seconds
        train_loss = float(np.mean(losses_since_eval)) if losses_since_eval else float("nan")
        best = self.best_val_loss is None or val.nats < self.best_val_loss
        if best:
            self.best_val_loss = val.nats
        self.last_val_loss = val.nats
        for key, value in (
            ("step", self.step),
            ("train_loss", train_loss),
            ("val_loss", val.nats),
            ("lr", self.current_lr),
            ("elapsed", self.elapsed),
        ):
            self.history[key].append(value)
        self._save(best)
        self.callback.on_eval(EvalInfo(self.step, self.epoch, train_loss, val, best, seconds))

    def run(self) -> TrainResult:
        """Train until a budget (steps, epochs, time) is spent or ``should_stop`` says so."""
        cfg = self.config
        vocab_size = self.model_config.vocab_size
        chars_per_step = cfg.batch_size * cfg.seq_len * self.world_size
        self.eval_seconds = 0.0
        self.current_lr = learning_rate(cfg, self.step, self.progress(), self.epoch) * self.lr_scale
        losses_since_eval: list[float] = []
        last_eval_step = self.step if self.history["step"] and self.history["step"][-1] == self.step else None
        self.callback.on_start(self)
        self.forward_model.train()
        clock = time.perf_counter()
        stopped_by = None
        while stopped_by is None:
            stopped_by = self._agreed_stop_reason()
            if stopped_by is not None:
                break
            # 1. Next batch; a new epoch starts every stream again from a zero state.
            if self.batch_index >= len(self.batches):
                self.epoch += 1
                self.batch_index = 0
                self.state = self.model.init_state(cfg.batch_size, self.device)
            x_np, y_np = self.batches[self.batch_index]
            x, y = self._to_device(x_np), self._to_device(y_np)

            # 2. Forward and backward through seq_len steps, starting from the carried state.
            lr = learning_rate(cfg, self.step, self.progress(), self.epoch) * self.lr_scale
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.current_lr = lr
            with self.autocast():
                logits, state = self.forward_model(x, self.state)
                loss = F.cross_entropy(logits.float().view(-1, vocab_size), y.view(-1))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)

            # 3. Refuse to step on a NaN/inf loss or gradient (fp16 overflow is the scaler's job).
            # Loss and norm come back in one transfer: on a GPU each is a wait for the device.
            loss_value, norm_value = torch.stack([loss.detach().float(), grad_norm.detach().float()]).tolist()
            finite = math.isfinite(loss_value) and (self.scaler.is_enabled() or math.isfinite(norm_value))
            if self._distributed:  # one decision for all; the loss over the whole global batch
                total, bad = distributed.sum_of([loss_value, 0.0 if finite else 1.0], self.device)
                loss_value, finite = total / self.world_size, bad == 0
            if not finite:
                if cfg.on_nan == "stop":
                    self.elapsed += time.perf_counter() - clock
                    raise DivergedError(
                        f"training diverged at step {self.step + 1}: the loss or gradient is "
                        f"{'NaN/inf' if not math.isfinite(loss_value) else 'not finite'}; lower --lr "
                        f"(it was {lr:.3g}) or tighten --grad-clip (it was {cfg.grad_clip:g}), then "
                        f"--resume {self.last_path} (best.pt was not touched)"
                    )
                self.lr_scale *= 0.5
                self.optimizer.zero_grad(set_to_none=True)
                self.state = self.model.init_state(cfg.batch_size, self.device)
                self.batch_index += 1
                self.callback.on_nan_skip(self.step + 1, self.lr_scale)
                continue
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.state = detach_state(state)

            # 4. Book-keeping, then evaluation and checkpoints on schedule.
            self.step += 1
            self.batch_index += 1
            self.chars_seen += chars_per_step
            now = time.perf_counter()
            self.elapsed += now - clock
            clock = now
            losses_since_eval.append(loss_value)
            self.last_train_loss = loss_value
            self.callback.on_step(
                StepInfo(self.step, self.epoch, loss_value, lr, chars_per_step, self.elapsed, self.progress())
            )
            if self.step % cfg.eval_every == 0:
                self._eval_and_save(losses_since_eval)
                losses_since_eval = []
                last_eval_step = self.step
                now = time.perf_counter()  # --max-time is wall-clock: evaluation counts too
                self.elapsed += now - clock
                clock = now

        # 5. The final state of the run is always evaluated and saved.
        if self.step != last_eval_step and not (stopped_by or "").startswith("interrupt"):
            self._eval_and_save(losses_since_eval)
            self.elapsed += time.perf_counter() - clock  # the closing evaluation is part of the run's time
        elif stopped_by.startswith("interrupt"):
            self._save(best=False)
        return TrainResult(
            steps=self.step,
            epochs=self.epoch + self.batch_index / len(self.batches),
            elapsed=self.elapsed,
            best_val_loss=self.best_val_loss,
            last_val_loss=self.last_val_loss,
            stopped_by=stopped_by,
            last_path=self.last_path,
            best_path=self.best_path if self.best_val_loss is not None else None,
            eval_seconds=self.eval_seconds,
        )

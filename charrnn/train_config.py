"""The options of a training run, the budget they set, and the learning-rate schedule over that budget."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from charrnn.errors import ConfigError, option

SCHEDULES = ("cosine", "wsd", "step", "constant")
# wsd: the share of the budget, at its end, over which the learning rate decays linearly.
WSD_DECAY_FRAC = 0.2
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# With no max_steps, max_epochs or max_time, a run stops after this many steps: a bare `charrnn train`
# of the default model has to end by itself within minutes on a small CPU (docs/defaults.md says how
# the number was chosen).
DEFAULT_MAX_STEPS = 850

# A seed is what torch's and numpy's generators both take: a whole number from 0 to 2**64 - 1.
MAX_SEED = 2**64 - 1


def check_seed(seed) -> None:
    """ConfigError unless ``seed`` is a whole number from 0 to MAX_SEED."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{option('seed')} must be a whole number from 0 to 2**64 - 1, got {seed!r}")


# Keys the trainer adds to the options it saves in a checkpoint's train_config: facts about the run
# that wrote it, not options to train with again.
RUN_FACTS = ("device", "world_size")


@dataclass
class TrainConfig:
    """The options of a training run (everything but the model's shape and the device).

    A budget left at None stays None: ``Budget.of`` applies DEFAULT_MAX_STEPS when none is given.
    """

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
    max_time: float | None = None  # seconds of wall clock for the whole run, closing evaluation and save included
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
        for name in ("batch_size", "seq_len", "eval_every", "eval_batch_size", "eval_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{option(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("max_epochs", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{option(name)} must be at least 1, got {value}")
        if self.eval_chars is not None and self.eval_chars < 2:
            raise ConfigError(f"{option('eval_chars')} must be at least 2, got {self.eval_chars}")
        if self.max_time is not None and not self.max_time > 0:
            raise ConfigError(f"{option('max_time')} must be positive, got {self.max_time}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"{option('lr')} must be a positive number, got {self.lr}")
        for name in ("lr", "grad_clip", "weight_decay", "min_lr_frac", "lr_decay", "val_frac"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"{option(name)} must be a finite number, got {value!r}")
        if not self.grad_clip > 0:
            raise ConfigError(f"{option('grad_clip')} must be positive, got {self.grad_clip}")
        if self.weight_decay < 0:
            raise ConfigError(f"{option('weight_decay')} must be at least 0, got {self.weight_decay}")
        check_seed(self.seed)
        if not 0 < self.val_frac < 1:
            raise ConfigError(f"{option('val_frac')} must be between 0 and 1 (exclusive), got {self.val_frac}")
        for name, choices in (("schedule", SCHEDULES), ("dtype", tuple(DTYPES)), ("on_nan", ("stop", "skip"))):
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown {option(name, getattr(self, name))}; choose one of {', '.join(choices)}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_frac <= 1 or not 0 < self.lr_decay <= 1:
            raise ConfigError(
                f"{option('warmup_steps')} must be >= 0, {option('min_lr_frac')} in [0, 1], "
                f"{option('lr_decay')} in (0, 1]"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Rebuild from ``to_dict()`` output or a checkpoint's train_config; unknown keys raise ConfigError.

        The run facts a checkpoint carries beside the options (RUN_FACTS) are left out; missing
        options take their defaults.
        """
        unknown = cls.unknown_keys(data)
        if unknown:
            raise ConfigError(f"unknown train config key(s): {', '.join(unknown)}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def unknown_keys(cls, data: dict) -> list[str]:
        """The keys of ``data`` that are neither options nor RUN_FACTS (a newer charrnn's), sorted."""
        return sorted(set(data) - {f.name for f in fields(cls)} - set(RUN_FACTS))


@dataclass
class Budget:
    """How long a run may train: the first of ``max_steps``, ``max_epochs`` (of ``steps_per_epoch``
    steps) and ``max_time`` seconds to run out ends it.

    ``max_time`` is the wall clock of the whole run, the closing evaluation and save included, so the
    loop stops while there is still time for them: the trainer reports each step's duration
    (``record_step``) and each evaluation-and-save's (``record_closing``), and ``reason`` stops a run
    when one more step and an evaluation like the last would not fit. Until the first evaluation its
    duration is unknown and counted as zero.

    A progress bar counts ``total`` of ``unit`` ("step", or "s" for a budget of time alone) and
    stands at ``position(step, elapsed)``.
    """

    max_steps: int | None = None
    max_epochs: int | None = None
    max_time: float | None = None
    steps_per_epoch: int = 1
    step_s: float = 0.0  # mean seconds per training step in this run, the first (warm-up) step left out
    closing_s: float = 0.0  # seconds the last evaluation and save took: what the closing ones will take
    steps_timed: int = 0

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_epochs is None and self.max_time is None:
            raise ConfigError(
                f"a training budget needs {option('max_steps')}, {option('max_epochs')} or {option('max_time')}"
            )

    @classmethod
    def of(cls, config: TrainConfig, steps_per_epoch: int) -> Budget:
        """The budget ``config`` sets; DEFAULT_MAX_STEPS when it sets none."""
        unset = config.max_steps is None and config.max_epochs is None and config.max_time is None
        return cls(
            DEFAULT_MAX_STEPS if unset else config.max_steps, config.max_epochs, config.max_time, steps_per_epoch
        )

    @property
    def total_steps(self) -> int | None:
        """The step the step and epoch budgets end at; None for a budget of time alone."""
        limits = [self.max_steps] if self.max_steps is not None else []
        if self.max_epochs is not None:
            limits.append(self.max_epochs * self.steps_per_epoch)
        return min(limits) if limits else None

    @property
    def unit(self) -> str:
        return "s" if self.total_steps is None else "step"

    @property
    def total(self) -> float:
        """What a progress bar counts to: total_steps, or max_time seconds for a budget of time alone."""
        total = self.total_steps
        if total is not None:
            return float(total)
        assert self.max_time is not None, "__post_init__ refuses a budget of neither steps, epochs nor time"
        return float(self.max_time)

    def position(self, step: int, elapsed: float) -> float:
        """Where a progress bar stands, in ``unit``: the step, or the seconds elapsed."""
        return float(step) if self.unit == "step" else elapsed

    def record_step(self, seconds: float) -> None:
        """One training step took ``seconds`` (the first of a run, with its warm-up, is replaced by the next)."""
        self.steps_timed += 1
        n = self.steps_timed - 1  # the steps after the first
        self.step_s = seconds if n <= 1 else self.step_s + (seconds - self.step_s) / n

    def record_closing(self, seconds: float) -> None:
        """An evaluation and save took ``seconds``."""
        self.closing_s = seconds

    def fraction(self, step: int, elapsed: float) -> float:
        """The share of the budget used at ``step`` after ``elapsed`` seconds, 0..1: the largest of the
        step, epoch and time shares (time counted against what the closing evaluation leaves)."""
        fractions = [0.0]
        total = self.total_steps
        if total:
            fractions.append(step / total)
        if self.max_time:
            room = self.max_time - self.closing_s
            fractions.append(elapsed / room if room > 0 else 1.0)
        return min(1.0, max(fractions))

    def reason(self, step: int, elapsed: float) -> str | None:
        """Why a run at ``step``, ``elapsed`` seconds in, must stop now: "max_steps", "max_epochs",
        "max_time" (one more step and the closing evaluation would overrun it), or None."""
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        if self.max_epochs is not None and step >= self.max_epochs * self.steps_per_epoch:
            return "max_epochs"
        if self.max_time is not None and elapsed + self.step_s + self.closing_s >= self.max_time:
            return "max_time"
        return None


def learning_rate(cfg: TrainConfig, step: int, progress: float, epoch: int) -> float:
    """The learning rate for ``step`` (0-based): linear warm-up, then the chosen schedule.

    ``progress`` is the share of the budget used, 0..1 (``Budget.fraction``).
    cosine: from lr down to lr * min_lr_frac over the run's budget.
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

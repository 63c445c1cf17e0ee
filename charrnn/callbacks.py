"""What a training run reports: the ``Callback`` hooks, the records they receive, and the result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from charrnn.loss import Loss

if TYPE_CHECKING:
    from charrnn.trainer import Trainer


@dataclass(frozen=True)
class StepInfo:
    """One optimizer step, as ``Callback.on_step`` sees it."""

    step: int
    epoch: int
    loss: float  # nats/char of this batch
    lr: float
    n_chars: int  # characters in this step (all ranks)
    elapsed: float  # seconds of training, this run and earlier ones
    progress: float  # fraction of the budget done, 0..1


@dataclass(frozen=True)
class EvalInfo:
    """One evaluation (and save), as ``Callback.on_eval`` sees it; losses in nats/char."""

    step: int
    epoch: int
    train_loss: float  # mean over the steps since the last evaluation
    val: Loss
    best: bool
    seconds: float  # how long the evaluation took


@dataclass(frozen=True)
class TrainResult:
    """What ``Trainer.run()`` returns: where the run ended, its losses (nats/char) and checkpoints."""

    steps: int
    epochs: float
    elapsed: float  # seconds of wall clock, this run and the ones it resumed
    best_val_loss: float | None
    last_val_loss: float | None
    stopped_by: str  # "max_steps" | "max_epochs" | "max_time" | "interrupt:<signal>"
    last_path: Path
    best_path: Path | None
    eval_seconds: float  # of which evaluating, in this run
    sample: str | None = None  # the closing sample from best.pt (charrnn.run), if one was asked for


class Callback:
    """Hooks the trainer calls; the CLI implements them for progress bars and tables.

    With several processes every one calls them; the CLI gives the others a plain Callback.
    """

    def on_start(self, trainer: Trainer) -> None: ...

    def on_step(self, info: StepInfo) -> None: ...

    def on_eval(self, info: EvalInfo) -> None: ...

    def on_nan_skip(self, step: int, new_lr_scale: float) -> None: ...

    def on_signal(self, name: str) -> None:
        """The first SIGINT/SIGTERM arrived (``name``): the run stops after this step and saves last.pt."""

"""How far a training run has come: the record a checkpoint keeps of its progress and losses."""

from __future__ import annotations

from dataclasses import dataclass, field

# One entry per evaluation in each list.
HISTORY_KEYS = ("step", "train_loss", "val_loss", "lr", "elapsed")
PROGRESS_KEYS = ("step", "epoch", "batch", "elapsed", "chars_seen", "lr_scale")


def _new_history() -> dict[str, list]:
    return {key: [] for key in HISTORY_KEYS}


@dataclass
class TrainState:
    """A run's progress: what ``to_dict`` writes into a checkpoint and ``from_dict`` reads back.

    ``step`` counts optimizer steps; ``epoch`` and ``batch`` are the data position (the next batch
    to read is ``batch`` of epoch ``epoch``); ``elapsed`` is seconds of wall clock over this run and
    the ones it resumes; ``chars_seen`` counts training characters over all processes; ``lr_scale``
    is what NaN skips have left of the learning rate (halved at each). Losses are nats per character;
    ``history`` holds one entry per evaluation under each of HISTORY_KEYS.
    """

    step: int = 0
    epoch: int = 0
    batch: int = 0
    elapsed: float = 0.0
    chars_seen: int = 0
    lr_scale: float = 1.0
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    last_train_loss: float | None = None
    history: dict[str, list] = field(default_factory=_new_history)

    def record_eval(self, train_loss: float, val_loss: float, lr: float) -> bool:
        """Add an evaluation at this step to the history; True if ``val_loss`` is the best so far."""
        best = self.best_val_loss is None or val_loss < self.best_val_loss
        if best:
            self.best_val_loss = val_loss
        self.last_val_loss = val_loss
        for key, value in zip(HISTORY_KEYS, (self.step, train_loss, val_loss, lr, self.elapsed)):
            self.history[key].append(value)
        return best

    def to_dict(self) -> dict:
        """The checkpoint keys this state fills: progress, history, best_val_loss, last_train_loss.

        The last validation loss is the history's last entry, so it has no key of its own.
        """
        return {
            "progress": {key: getattr(self, key) for key in PROGRESS_KEYS},
            "history": {key: list(values) for key, values in self.history.items()},
            "best_val_loss": self.best_val_loss,
            "last_train_loss": self.last_train_loss,
        }

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        """Read back ``to_dict()`` output (or a whole checkpoint dict); ValueError naming what is malformed.

        ``lr_scale`` may be missing (1.0), as in checkpoints written before NaN skips existed.
        """
        progress, history = data.get("progress"), data.get("history")
        if not isinstance(progress, dict) or not isinstance(history, dict):
            raise ValueError("no progress or history record")
        missing = [key for key in PROGRESS_KEYS[:-1] if key not in progress]
        missing += [f"history.{key}" for key in HISTORY_KEYS if not isinstance(history.get(key), (list, tuple))]
        if missing:
            raise ValueError(f"progress record lacks {', '.join(missing)}")
        try:
            state = cls(
                step=int(progress["step"]),
                epoch=int(progress["epoch"]),
                batch=int(progress["batch"]),
                elapsed=float(progress["elapsed"]),
                chars_seen=int(progress["chars_seen"]),
                lr_scale=float(progress.get("lr_scale", 1.0)),
                best_val_loss=_loss(data.get("best_val_loss")),
                last_train_loss=_loss(data.get("last_train_loss")),
                history={key: list(values) for key, values in history.items()},
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed progress record ({exc})") from None
        val = state.history["val_loss"]
        state.last_val_loss = float(val[-1]) if val else None
        return state


def _loss(value) -> float | None:
    return None if value is None else float(value)

"""What ``charrnn train`` shows while it runs: a tqdm bar on stderr and a rich line per evaluation.

All of it goes through one ``Diagnostics`` stream: if stderr cannot be written (full, closed, its
reader gone), the progress falls silent and training goes on, writing its checkpoints.
"""

from __future__ import annotations

import sys
import time
from typing import IO, cast

from rich.console import Console
from tqdm import tqdm

from charrnn.cli.streams import diagnostics
from charrnn.trainer import Callback, Trainer


class Progress(Callback):
    """A tqdm bar on stderr and a rich line per evaluation."""

    def __init__(self, quiet: bool, stream=None):
        self.out = diagnostics(stream if stream is not None else sys.stderr)
        self.console = Console(file=cast(IO[str], self.out), highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.bar: tqdm | None = None
        self._tick: float | None = None  # when the last step ended (perf_counter seconds)
        self._rate: float | None = None  # smoothed characters per second

    def on_start(self, trainer: Trainer) -> None:
        self.trainer = trainer
        budget = trainer.budget
        self.by_time = budget.unit == "s"
        if self.quiet:
            return
        self.bar = tqdm(
            total=round(budget.total),
            initial=round(budget.position(trainer.state.step, trainer.state.elapsed)),
            unit=budget.unit,
            file=self.out,
            dynamic_ncols=True,
            mininterval=0.5,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
        )
        self._tick = time.perf_counter()

    def on_step(self, info) -> None:
        now = time.perf_counter()
        if self._tick is not None:
            rate = info.n_chars / max(now - self._tick, 1e-9)
            self._rate = rate if self._rate is None else 0.9 * self._rate + 0.1 * rate
        self._tick = now
        if self.bar is None:
            return
        self.bar.set_postfix_str(
            f"step {info.step} ep {info.epoch} loss {info.loss:.3f} lr {info.lr:.2e} {self._rate or 0:,.0f} char/s",
            refresh=False,
        )
        self.bar.update(round(info.elapsed) - self.bar.n if self.by_time else info.step - self.bar.n)

    def on_eval(self, info) -> None:
        self._tick = time.perf_counter()  # do not count evaluation time against the char/s rate
        if self.quiet:
            return
        mark = "[bold green]best[/]" if info.best else ""
        line = (
            f"step {info.step:>6}  epoch {info.epoch:>3}  train {info.train_loss:.4f}  "
            f"val {info.val.nats:.4f} nats/char = {info.val.bits:.4f} bits/char  ({info.seconds:.1f}s) {mark}"
        )
        self._print(line)

    def on_nan_skip(self, step, new_lr_scale) -> None:
        # Shown even with --quiet: the run is not doing what was asked.
        self._print(f"[yellow]step {step}: NaN/inf loss, batch skipped, learning rate now x{new_lr_scale:g}")

    def on_signal(self, name: str) -> None:
        self._print(f"[yellow]{name}: finishing this step and saving last.pt (press Ctrl-C again to quit at once)")

    def _print(self, line: str) -> None:
        with tqdm.external_write_mode(file=self.out):
            self.console.print(line)

    @property
    def silent(self) -> bool:
        """Whether stderr failed, and the progress fell silent."""
        return self.out.failed

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

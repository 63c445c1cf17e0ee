"""Data-parallel training across processes: the process group, each process's device, and the few
collectives that keep the processes in step.

torchrun (or ``charrnn train --nproc N``, which calls the same launcher) starts one process per
device and tells each who it is through the environment::

    RANK        0 .. WORLD_SIZE-1, unique across all machines   (rank 0 writes checkpoints and logs)
    LOCAL_RANK  0 .. processes on this machine - 1              (picks this process's GPU: cuda:LOCAL_RANK)
    WORLD_SIZE  processes in all
    MASTER_ADDR, MASTER_PORT   where the processes meet (torchrun sets them from its rendezvous)

Without these variables (or with WORLD_SIZE=1) there is one process and nothing here talks to anyone.
The backend is NCCL when the processes train on CUDA, gloo on the CPU.

Every collective is entered by every process in the same order, or all of them wait forever; the
trainer therefore decides together whatever one process could decide alone: whether to stop
(max_time is measured per process; a signal may reach one process), whether a step was finite,
what the validation loss was. Before training starts, ``Session.agree`` makes a failure on one
process (a missing file, a bad option) stop all of them instead of leaving the others waiting.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from charrnn.errors import ConfigError, PeerFailed, option

__all__ = ["Session", "PeerFailed", "launched", "init", "local_main_first", "TIMEOUT"]

# Long enough for local rank 0 to encode a large corpus while the others wait for it.
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass
class Session:
    """This process's place in the job, and the collectives that keep the processes in step.

    A single process has rank 0 of 1 and no process group (``active`` False): then every collective
    returns this process's own values, ``wrap`` returns the model itself, and code that trains one
    process or several reads the same. Every process must enter each collective at the same point.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: no process group (one process)
    _settled: bool = True  # False until the processes have agreed that setup went well

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None

    def agree(self, failed: bool = False) -> None:
        """Every process says whether its setup failed; PeerFailed here if another's did.

        Setup code calls it at its checkpoints (``failed=False``); ``close`` calls it with ``True``
        for a process that left setup by an exception, so the others never wait for it in vain.
        """
        if not self.active or self._settled:
            return
        flag = torch.tensor([1 if failed else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if failed:
            self._settled = True
        elif int(flag.item()):
            self._settled = True  # the failing process reported; no more agreement calls
            raise PeerFailed(
                f"process {self.rank} stopped: another process failed before training started (see its error)"
            )

    def check_same(self, value: str, what: str) -> None:
        """ConfigError on every process if ``value`` is not the same on all (a collective).

        For what each process reads from its own disk: on several machines, a corpus path that holds
        different files on one of them would otherwise train each rank on other text, silently.
        """
        if not self.active:
            return
        values = self.gather(value)
        odd = [rank for rank, v in enumerate(values) if v != values[0]]
        if odd:
            raise ConfigError(
                f"{what} differs between processes (rank 0 and rank(s) {', '.join(map(str, odd))}); "
                "give every machine the same files at the same path"
            )

    def settle(self) -> None:
        """Setup went well everywhere: from here on, failures are training's business."""
        self.agree()
        self._settled = True

    def close(self) -> None:
        """Leave the job: tell the others if setup failed here, then tear the process group down."""
        if not self.active:
            return
        try:
            if not self._settled:
                self.agree(failed=True)
        except Exception:  # the others may be gone already; leaving is all that is left to do
            pass
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
            self.backend = None

    # -- the collectives the trainer uses ------------------------------------------------------

    def max_of(self, values: list[float]) -> list[float]:
        """Element-wise maximum over all processes (one process: ``values``)."""
        return self._reduce(values, dist.ReduceOp.MAX)

    def sum_of(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes (one process: ``values``)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def from_main(self, values: list[float]) -> list[float]:
        """Rank 0's ``values``, on every process (one process: ``values``)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def gather(self, obj) -> list:
        """Every process's ``obj`` (picklable), in rank order, on every process (one process: ``[obj]``)."""
        if not self.active:
            return [obj]
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` as the processes train it together: DistributedDataParallel, which averages the
        gradients over the processes during backward (so every process applies the same update) and
        copies rank 0's weights to all. One process: ``model`` itself."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def seed_per_rank(self, seed: int) -> None:
        """Give each process its own random stream (dropout) after the shared initial weights: rank r
        draws from ``seed + r``. One process keeps the stream it has, so its run is what it always was."""
        if self.world_size > 1:
            torch.manual_seed(seed + self.rank)

    def _reduce(self, values: list[float], op) -> list[float]:
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()


def launched() -> bool:
    """True in a process started by torchrun (or --nproc) for a job of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init(device: torch.device, init_method: str | None = None) -> Session:
    """Join the job described by the environment, or return a one-process Session on ``device``.

    ``device`` is what the device option resolved to: on CUDA each process takes cuda:LOCAL_RANK (an explicit
    cuda:N is refused, as the processes would share one GPU); anything else trains on the CPU with
    gloo. ``init_method`` overrides the rendezvous (tests use a file:// store).
    """
    if not launched():
        return Session(device=device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"{option('device', str(device))} picks one GPU, but under torchrun every process takes the "
                f"GPU of its LOCAL_RANK; pass {option('device', 'cuda')} (or auto)"
            )
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process with LOCAL_RANK {local_rank} has no GPU of its own (this machine has "
                f"{torch.cuda.device_count()}); start at most that many processes per machine"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"{option('device', device.type)} cannot train with several processes; use cuda or cpu")
    dist.init_process_group(
        backend, init_method=init_method or "env://", rank=rank, world_size=world_size, timeout=TIMEOUT
    )
    return Session(rank, world_size, local_rank, device, backend, _settled=False)


def local_main_first(session: Session, load):
    """``load()`` on local rank 0 first, then on the other processes of its machine.

    Local rank 0 builds what they share on this machine's disk (the corpus cache); the others wait,
    then find it ready. A failure on either side stops every process (see ``Session.agree``).
    """
    if session.is_local_main:
        result = load()
        session.agree()
        return result
    session.agree()
    return load()

"""CPU threads: torch's intra-op pool and numpy's BLAS, which has its own (set through threadpoolctl).

The two pools are separate, and both wait busily for work for a while after each call, so a
sampling step that uses both on the same cores runs many times slower than one that leaves torch
on one thread (``benchmarks/bench_sample.py --mixed-pools`` measures it). For one stream
``charrnn sample`` therefore gives the cores to numpy's BLAS and runs torch on one thread (see
``charrnn.inference``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_info, threadpool_limits

from charrnn.errors import ConfigError, option


def blas_threads() -> int:
    """Threads numpy's BLAS runs a product on (the most among the BLAS libraries loaded; 1 if none)."""
    return max((lib["num_threads"] for lib in threadpool_info() if lib.get("user_api") == "blas"), default=1)


MAX_THREADS = 1024  # more threads than any machine charrnn runs on has cores; torch would try to start them


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in torch and in numpy's BLAS, for the rest of the process (None: leave both)."""
    if threads is not None and (
        not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS
    ):
        raise ConfigError(f"{option('threads')} must be a whole number from 1 to {MAX_THREADS}, got {threads!r}")
    if threads:
        torch.set_num_threads(threads)
        threadpool_limits(threads, user_api="blas")


def sampling_threads(num_samples: int, device: torch.device) -> int | None:
    """The torch thread count that samples ``num_samples`` streams fastest on ``device``; None: as it is.

    One stream on a CPU: 1, when numpy's BLAS has several threads, so that the step's products run
    there (``charrnn.inference.numpy_wins``). Anything else: the products are matrix-matrix ones, and
    torch's own threads serve them best.
    """
    if num_samples == 1 and device.type == "cpu" and blas_threads() > 1:
        return 1
    return None


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with torch on ``threads`` threads (None: unchanged), then restore the count."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

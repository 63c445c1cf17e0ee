"""What the benchmarks share: a description of the machine, peak-memory readings, tables and JSON.

Only the standard library and torch: the benchmarks must run wherever charrnn runs.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

import charrnn.threads

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# -- the machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or platform's best guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Everything a reader needs to judge a number: CPU, cores, load, versions, threads, date."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    import numpy  # noqa: PLC0415  (only for its version)

    import charrnn  # noqa: PLC0415

    return {
        "host": platform.node(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "load_avg_1_5_15": load,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "numpy_blas_threads": charrnn.threads.blas_threads(),
        "charrnn": charrnn.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cuda_version": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def describe(info: dict) -> str:
    """One line for the top of a table."""
    load = info["load_avg_1_5_15"]
    gpu = f"{info['gpu']} (CUDA {info['cuda_version']}, cuDNN {info['cudnn']}) | " if info.get("gpu") else ""
    return (
        f"{gpu}{info['cpu']} | {info['usable_cpus']} usable CPUs | torch {info['torch']} "
        f"({info['torch_threads']} threads; numpy's BLAS {info.get('numpy_blas_threads', '?')}) | charrnn {info['charrnn']} | load {load[0] if load else '?'} | {info['date']}"
    )


def stamp(device: torch.device) -> float:
    """The time now, once the device has finished the work queued so far (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def set_threads(threads: int | None) -> None:
    """Use ``threads`` threads in torch and numpy's BLAS (None: their default); every phase of a run shares it."""
    charrnn.threads.set_threads(threads)


# -- memory --------------------------------------------------------------------------------------
# tracemalloc does not see torch's allocations, so we read the kernel's numbers for the process.


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Resident memory now, in MiB (Linux only)."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def peak_rss_mb() -> float | None:
    """Peak resident memory since start or the last ``reset_peak_rss()``, in MiB.

    Falls back to getrusage (peak since start, no reset) where /proc is missing.
    """
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    import resource  # noqa: PLC0415

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def release_memory() -> None:
    """Give freed memory back to the OS so the next phase's peak starts from what is really in use."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if not possible."""
    release_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- numbers and tables --------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> float:
    """(max - min) / median: how far apart the repetitions were, as a fraction."""
    if len(values) < 2:
        return 0.0
    return (max(values) - min(values)) / statistics.median(values)


def fmt(value, digits: int = 0) -> str:
    """Numbers with thousands separators; None and NaN as '-'."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def print_table(title: str, columns: list[str], rows: list[list], file=None) -> None:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    file = file or sys.stdout
    cells = [[str(c) for c in row] for row in rows]
    widths = [
        max(len(columns[i]), *(len(r[i]) for r in cells)) if cells else len(columns[i]) for i in range(len(columns))
    ]

    def line(values):
        parts = [values[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(values[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    print(title, file=file)
    print(line(columns), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in cells:
        print(line(row), file=file)
    print(file=file)


# -- JSON ----------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "unknown"


def result_path(target: str | Path, benchmark: str, info: dict) -> Path:
    """``target`` itself, or for a folder ``<folder>/<benchmark>-<date>-<host>-<cpu>.json``."""
    target = Path(target)
    if target.is_dir() or str(target).endswith(os.sep):
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return target / f"{benchmark}-{stamp}-{_slug(info['host'])}-{_slug(info['cpu'])}.json"
    return target


def write_json(target: str | Path, benchmark: str, info: dict, args: dict, results) -> Path:
    """Write one run's results with the machine and options that produced them; return the path."""
    path = result_path(target, benchmark, info)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": benchmark, "machine": info, "options": args, "results": results}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def json_help() -> str:
    return f"Also write the results as JSON to this file, or into this folder under a dated name (e.g. {RESULTS_DIR.name}/)."

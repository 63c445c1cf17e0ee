"""Long runs keep flat memory: resident memory over many training steps, and over a 1,000,000-character sample.

    python benchmarks/bench_memory.py [--steps 3000] [--sample-chars 1000000] [--json PATH]

(1) Trains a 2x128 LSTM on the embedded corpus in this process for --steps steps (evaluating and
    checkpointing every --eval-every) and reads VmRSS from /proc/self/status every 100 steps.
(2) Runs `charrnn sample CKPT --length N > file` in a subprocess and reads its VmRSS every 0.25 s.
Flat means: the resident memory at the end is within a few MB of the memory after warm-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from charrnn.corpus import default_corpus_path, read_text
from charrnn.data import Corpus
from charrnn.model import ModelConfig
from charrnn.trainer import Callback, TrainConfig, Trainer


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size in MB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssRecorder(Callback):
    def __init__(self, every: int):
        self.every, self.points = every, []

    def on_step(self, info) -> None:
        if info.step % self.every == 0:
            self.points.append((info.step, round(rss_mb(), 1)))


def bench_training(steps: int, eval_every: int, out_dir: Path) -> dict:
    corpus = Corpus.from_text(read_text(default_corpus_path()), "tinyshakespeare (embedded)")
    cfg = ModelConfig(vocab_size=len(corpus.vocab), num_layers=2, hidden_size=128, embedding_size=32)
    recorder = RssRecorder(every=100)
    tc = TrainConfig(batch_size=32, seq_len=64, max_steps=steps, eval_every=eval_every, eval_seq_len=256)
    t0 = time.perf_counter()
    Trainer(cfg, tc, corpus, out_dir, callback=recorder).run()
    pts = recorder.points
    warm = next((rss for step, rss in pts if step >= min(steps // 5, 500)), pts[0][1])
    return {
        "model": "LSTM 2x128, B32 T64",
        "steps": steps,
        "eval_every": eval_every,
        "seconds": round(time.perf_counter() - t0, 1),
        "rss_after_warmup_mb": warm,
        "rss_end_mb": pts[-1][1],
        "rss_growth_mb": round(pts[-1][1] - warm, 1),
        "rss_points": pts,
    }


def bench_sampling(checkpoint: Path, chars: int, out_dir: Path) -> dict:
    target = out_dir / "sample.txt"
    cmd = [sys.executable, "-m", "charrnn", "sample", str(checkpoint), "--length", str(chars), "--seed", "1"]
    t0 = time.perf_counter()
    points = []
    with open(target, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.PIPE)
        while proc.poll() is None:
            try:
                points.append((round(time.perf_counter() - t0, 2), round(rss_mb(proc.pid), 1), target.stat().st_size))
            except (FileNotFoundError, ProcessLookupError):
                pass
            time.sleep(0.25)
        proc.wait()
    seconds = time.perf_counter() - t0
    written = len(target.read_text(encoding="utf-8")) - 1  # the trailing newline
    assert proc.returncode == 0, proc.stderr.read().decode()
    steady = [rss for _, rss, size in points if size > 0.1 * written]
    return {
        "chars": written,
        "seconds": round(seconds, 1),
        "chars_per_s": round(written / seconds),
        "rss_at_10pct_mb": steady[0] if steady else None,
        "rss_end_mb": points[-1][1] if points else None,
        "rss_peak_mb": max(rss for _, rss, _ in points) if points else None,
        "rss_points": points[:: max(1, len(points) // 40)],
    }


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": dt.date.today().isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--sample-chars", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="300 steps and 20,000 characters, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.eval_every, args.sample_chars = 300, 100, 20_000
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = bench_training(args.steps, args.eval_every, tmp / "run")
        print(
            f"training   {train['steps']} steps in {train['seconds']}s: RSS {train['rss_after_warmup_mb']} MB after warm-up, "
            f"{train['rss_end_mb']} MB at the end (growth {train['rss_growth_mb']} MB)"
        )
        sample = bench_sampling(tmp / "run" / "best.pt", args.sample_chars, tmp)
        print(
            f"sampling   {sample['chars']:,} chars in {sample['seconds']}s ({sample['chars_per_s']:,} chars/s): RSS "
            f"{sample['rss_at_10pct_mb']} MB at 10%, {sample['rss_end_mb']} MB at the end, peak {sample['rss_peak_mb']} MB"
        )
    result = {
        "benchmark": "memory",
        "machine": machine(),
        "command": " ".join(sys.argv),
        "training": train,
        "sampling": sample,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

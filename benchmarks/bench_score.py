"""`charrnn eval --per-line` keeps flat memory: peak resident memory and speed of streaming per-line
scoring over files of growing size.

    python benchmarks/bench_score.py [--sizes-mb 1,8,32] [--json benchmarks/results/]

For each size, a file of that many megabytes of generated lines is written to a temporary folder and
`charrnn eval CKPT FILE --per-line --top-surprises 3 > /dev/null` runs on it in a fresh process (a
randomly initialised LSTM 1x64, vocabulary of the lines, saved as a checkpoint first), its peak
resident memory (VmHWM) read from /proc at the end. Flat memory means the peak does not grow with the
file: the largest file's peak within a few MiB of the smallest's. chars/s = characters scored per
second of the whole command (start-up included). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import common
from charrnn import checkpoint as ckpt_io
from charrnn.data import Vocab
from charrnn.model import CharRNN, ModelConfig

QUICK = {"sizes_mb": "0.2,0.5"}
WORDS = "the cat dog king queen sees loves finds a my thy mat crown sword horse face".split()


def write_lines(path: Path, megabytes: float, seed: int = 0) -> int:
    """Lines of 3 to 12 random words until the file holds ``megabytes`` MB; its character count."""
    rng = random.Random(seed)
    target, written = int(megabytes * 1e6), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            lines = [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) + ".\n" for _ in range(2000)]
            block = "".join(lines)
            f.write(block)
            written += len(block)
    return written


def run_eval(ckpt: Path, text: Path, threads: int | None) -> dict:
    """`charrnn eval --per-line` in a fresh process; its peak RSS (MiB) and wall time."""
    script = (
        "import sys, runpy, pathlib\n"
        "sys.argv = ['charrnn'] + sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_module('charrnn', run_name='__main__')\n"
        "finally:\n"
        "    hwm = [l for l in pathlib.Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM')]\n"
        "    print(hwm[0].split()[1], file=sys.stderr)\n"
    )
    args = [sys.executable, "-c", script, "eval", str(ckpt), str(text), "--per-line", "--top-surprises", "3"]
    args += ["--device", "cpu"]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    t0 = time.perf_counter()
    done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"charrnn eval failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    peak_kb = int(done.stderr.strip().splitlines()[-1])
    return {"seconds": seconds, "peak_rss_mb": peak_kb / 1024}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes-mb", default="1,8,32", help="Comma-separated file sizes in MB.")
    parser.add_argument("--threads", type=int, default=None, help="Torch threads of the eval process.")
    parser.add_argument("--json", default=None, metavar="PATH", help=common.json_help())
    parser.add_argument("--quick", action="store_true", help=f"Smoke run: {QUICK}.")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes_mb = QUICK["sizes_mb"]
    sizes = [float(s) for s in args.sizes_mb.split(",")]
    info = common.machine()
    print(common.describe(info), file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        vocab = Vocab.from_text("".join(WORDS) + " .\n")
        model = CharRNN(ModelConfig(vocab_size=len(vocab), num_layers=1, hidden_size=64, embedding_size=16))
        ckpt = ckpt_io.save(
            ckpt_io.Checkpoint(path=None, model_config=model.config, vocab=vocab, weights=model.state_dict()),
            folder / "m.pt",
        )
        for size in sizes:
            text = folder / f"lines-{size}.txt"
            chars = write_lines(text, size)
            lines = text.read_text(encoding="utf-8").count("\n")
            result = run_eval(ckpt, text, args.threads)
            rows.append(
                {
                    "size_mb": size,
                    "n_chars": chars,
                    "n_lines": lines,
                    **result,
                    "chars_per_s": chars / result["seconds"],
                }
            )
            text.unlink()
    common.print_table(
        "charrnn eval --per-line --top-surprises 3, LSTM 1x64" + (" (QUICK)" if args.quick else ""),
        ["MB", "lines", "seconds", "chars/s", "peak RSS MiB"],
        [
            [
                r["size_mb"],
                f"{r['n_lines']:,}",
                f"{r['seconds']:.1f}",
                common.fmt(r["chars_per_s"]),
                f"{r['peak_rss_mb']:.1f}",
            ]
            for r in rows
        ],
    )
    growth = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    print(f"peak RSS grew {growth:+.1f} MiB from {sizes[0]} MB to {sizes[-1]} MB of text")
    if args.json:
        path = common.write_json(args.json, "score", info, vars(args), {"rows": rows, "peak_rss_growth_mb": growth})
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

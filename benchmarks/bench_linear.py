"""The matrix products of one sampling step: BLAS (``addmm``), oneDNN (packed weights) and numpy's BLAS.

For a given model size, the products StepModel runs per character (layer 0's hidden product, one
[x, h] product per further layer, the head) are timed in turn, as a step runs them, through
``charrnn.inference.Linear`` with backend "blas", "onednn" and "numpy", for several numbers of rows
(parallel streams) and thread counts. The thread count is torch's and numpy's BLAS's alike
(``charrnn.threads.set_threads``). Reported: microseconds per step's products, GFLOP/s, the
speed-ups over BLAS, and which one StepModel's "auto" backend picks (``numpy_wins``, then
``onednn_wins``). This is the measurement behind those rules. Only the products are timed here;
how the pools get along inside a whole step is for bench_sample.py.
Usage: python benchmarks/bench_linear.py --help
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import common
from charrnn.inference import Linear, numpy_wins, onednn_usable, onednn_wins
from charrnn.threads import set_threads

QUICK = {"rows": [1, 4], "threads": [1], "calls": 5, "repeats": 1}


def shapes(num_layers: int, hidden: int, vocab: int) -> list[tuple[int, int]]:
    """(out, in) of every product in one LSTM step: layer 0's W_hh, each later [W_ih, W_hh], the head."""
    return [(4 * hidden, hidden)] + [(4 * hidden, 2 * hidden)] * (num_layers - 1) + [(vocab, hidden)]


def time_products(linears: list[Linear], inputs: list[torch.Tensor], calls: int) -> float:
    """Seconds per step: every product once, in order, averaged over ``calls`` steps."""
    for lin, x in zip(linears, inputs):  # warm-up
        lin(x)
    start = time.perf_counter()
    for _ in range(calls):
        for lin, x in zip(linears, inputs):
            lin(x)
    return (time.perf_counter() - start) / calls


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Per-step matrix products of the sampling step: addmm, packed oneDNN and numpy's BLAS.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=65)
    parser.add_argument("--rows", default="1,2,3,4,8,32", help="Comma-separated numbers of rows (streams).")
    parser.add_argument("--threads", default="1,2", help="Comma-separated thread counts (torch and numpy's BLAS).")
    parser.add_argument("--calls", type=int, default=200, help="Timed steps per repetition.")
    parser.add_argument(
        "--repeats", type=int, default=5, help="Repetitions, backends alternating; the median is reported."
    )
    parser.add_argument("--json", default=None, metavar="PATH", help=common.json_help())
    parser.add_argument("--quick", action="store_true", help=f"Smoke run in seconds: {QUICK}.")
    args = parser.parse_args(argv)
    try:
        args.rows = [int(r) for r in args.rows.split(",")]
        args.threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error("--rows and --threads must be comma-separated integers")
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if min(args.rows) < 1 or min(args.threads) < 1 or args.calls < 1 or args.repeats < 1:
        parser.error("--rows, --threads, --calls and --repeats must be at least 1")
    return args


@torch.no_grad()
def main(argv=None) -> None:
    args = parse_args(argv)
    info = common.machine()
    print(common.describe(info), file=sys.stderr)
    if not onednn_usable(torch.zeros(1)):
        sys.exit("this PyTorch has no oneDNN: nothing to compare")
    torch.manual_seed(0)
    dims = shapes(args.num_layers, args.hidden_size, args.vocab_size)
    weights = [(torch.randn(n, k) / k**0.5, torch.randn(n)) for n, k in dims]
    names = ("blas", "onednn", "numpy")
    backends = {b: [Linear(w, bias, b) for w, bias in weights] for b in names}
    flops_per_row = sum(2 * n * k for n, k in dims)

    results = []
    for threads in args.threads:
        set_threads(threads)
        for rows in args.rows:
            inputs = [torch.randn(rows, k) for _, k in dims]
            seconds = {b: [] for b in backends}
            for rep in range(args.repeats):
                for b in names[rep % len(names) :] + names[: rep % len(names)]:  # take turns: drift hits all alike
                    seconds[b].append(time_products(backends[b], inputs, args.calls))
            picks = "numpy" if numpy_wins(rows) else "onednn" if onednn_wins(rows) else "blas"
            row = {"threads": threads, "rows": rows, "auto_picks": picks}
            for b in backends:
                s = common.median(seconds[b])
                row[b] = {
                    "us_per_step": s * 1e6,
                    "gflop_s": flops_per_row * rows / s / 1e9,
                    "spread": common.spread(seconds[b]),
                    "reps_s": seconds[b],
                }
            row["onednn_speedup"] = row["blas"]["us_per_step"] / row["onednn"]["us_per_step"]
            row["numpy_speedup"] = row["blas"]["us_per_step"] / row["numpy"]["us_per_step"]
            results.append(row)

    columns = [
        "threads",
        "rows",
        "blas us",
        "onednn us",
        "numpy us",
        "blas GFLOP/s",
        "onednn speed-up",
        "numpy speed-up",
        "auto picks",
        "spread",
    ]
    table = [
        [
            r["threads"],
            r["rows"],
            common.fmt(r["blas"]["us_per_step"]),
            common.fmt(r["onednn"]["us_per_step"]),
            common.fmt(r["numpy"]["us_per_step"]),
            common.fmt(r["blas"]["gflop_s"], 1),
            f"{r['onednn_speedup']:.2f}x",
            f"{r['numpy_speedup']:.2f}x",
            r["auto_picks"],
            f"{max(r[b]['spread'] for b in names):.0%}",
        ]
        for r in results
    ]
    name = f"LSTM {args.num_layers}x{args.hidden_size}, vocab {args.vocab_size}: products {dims}"
    common.print_table(
        f"sampling step's products, {name}, median of {args.repeats}" + (" (QUICK)" if args.quick else ""),
        columns,
        table,
    )
    print(
        "us = microseconds for one step's products; speed-up = blas time / that backend's time; auto picks =\n"
        "what charrnn.inference's numpy_wins and onednn_wins choose for that many rows at that thread count;\n"
        "spread = (max - min) / median, the worst backend."
    )
    if args.json:
        path = common.write_json(args.json, "linear", info, dict(vars(args)), {"rows": results, "shapes": dims})
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

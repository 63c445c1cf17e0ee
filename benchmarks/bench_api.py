"""Sampling speed through the Python API against `charrnn sample`, on the same checkpoint.

  cli  `python -m charrnn sample CKPT -n L --seed S --device D` in a fresh process
  api  `charrnn.load(CKPT, device=D).sample(L, seed=S)` in this process

Each is run for a short and a long length and timed whole; the rate is the difference in characters
over the difference in seconds, so process start, imports, loading and the prime cancel out and what
is left is the steady sampling rate each way. The checkpoint is the default model (LSTM 2x512 unless
told otherwise) after one training step on the embedded Tiny Shakespeare. The ratio api/cli should be
about 1: `Model.generate` applies the thread policy `charrnn sample` relies on (charrnn.threads).
Usage: python benchmarks/bench_api.py --help
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import charrnn
import common

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(folder: Path, args) -> Path:
    charrnn.train(
        None,
        out_dir=folder,
        cell=args.cell,
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        max_steps=1,
        eval_chars=1000,
        sample_length=0,
        device=args.device,
        force=True,
    )
    return folder / "best.pt"


def time_cli(ckpt: Path, length: int, args) -> float:
    cmd = [
        sys.executable,
        "-m",
        "charrnn",
        "sample",
        str(ckpt),
        "-n",
        str(length),
        "--seed",
        "1",
        "--device",
        args.device,
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t0


def time_api(model: charrnn.Model, length: int) -> float:
    t0 = time.perf_counter()
    model.sample(length, seed=1)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm")
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--short", type=int, default=200, help="Characters of the short sample.")
    parser.add_argument("--long", type=int, default=20200, help="Characters of the long sample.")
    parser.add_argument("--repeats", type=int, default=3, help="Repetitions; the median rate is reported.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, metavar="PATH", help=common.json_help())
    args = parser.parse_args()

    info = common.machine()
    print(common.describe(info), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp), args)
        model = charrnn.load(ckpt, device=args.device)
        time_api(model, args.short)  # warm-up: first-use set-up of the kernels
        rates: dict[str, list[float]] = {"cli": [], "api": []}
        for _ in range(args.repeats):  # the two take turns, so drift hits both alike
            extra = args.long - args.short
            rates["cli"].append(extra / (time_cli(ckpt, args.long, args) - time_cli(ckpt, args.short, args)))
            rates["api"].append(extra / (time_api(model, args.long) - time_api(model, args.short)))
    cli, api = common.median(rates["cli"]), common.median(rates["api"])
    rows = [[name, common.fmt(common.median(r)), f"{common.spread(r):.0%}"] for name, r in rates.items()]
    rows.append(["api / cli", f"{api / cli:.3f}", ""])
    common.print_table(
        f"one-stream sampling, {args.cell.upper()} {args.num_layers}x{args.hidden_size} on "
        f"{args.device} (chars/s, median of {args.repeats})",
        ["way", "chars/s", "spread"],
        rows,
    )
    if args.json:
        path = common.write_json(
            args.json,
            "api",
            info,
            vars(args),
            {"rates": rates, "cli_median": cli, "api_median": api, "ratio": api / cli},
        )
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

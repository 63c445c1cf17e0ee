"""Reading a short prime: one whole-sequence pass of the model against a character at a time through
the step, the two ways ``charrnn.sample.run_prime`` can read it (``SHORT_PRIME`` picks between them).

    python benchmarks/bench_prime.py [--cells lstm gru] [--num-layers 2] [--hidden-size 512] [--json DIR]

For each cell and prime length, the median time of ``run_prime`` for one stream without a stepper
(the sequence pass) and with one (primes of up to ``SHORT_PRIME`` characters go through the step;
longer ones are timed through ``StepModel.read`` directly, to show where the two cross). Torch runs
on the threads ``charrnn sample`` gives one stream (``charrnn.threads.sampling_threads``), which is
also what ``charrnn serve`` uses for a request that arrives alone. Untrained weights: the speed of a
pass does not depend on what the weights learned.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import common
from charrnn.inference import StepModel
from charrnn.model import CharRNN, ModelConfig
from charrnn.sample import SHORT_PRIME, run_prime
from charrnn.threads import sampling_threads, torch_threads

VOCAB_SIZE = 65  # Tiny Shakespeare's


def timed(fn, args: tuple, repeats: int) -> float:
    fn(*args)  # warm-up: the kernels' first-use set-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        runs.append(time.perf_counter() - t0)
    return common.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all).")
    parser.add_argument("--json", default=None, metavar="PATH", help=common.json_help())
    args = parser.parse_args()
    common.set_threads(args.threads)
    info = common.machine()
    print(common.describe(info), file=sys.stderr)
    results: dict = {"short_prime": SHORT_PRIME, "cases": []}
    rows = []
    for cell in args.cells:
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=VOCAB_SIZE, cell=cell, num_layers=args.num_layers, hidden_size=args.hidden_size)
        model = CharRNN(cfg).eval()
        with torch.no_grad(), torch_threads(sampling_threads(1, torch.device("cpu"))):
            stepper = StepModel(model)
            for length in args.lengths:
                ids = torch.randint(0, VOCAB_SIZE, (length,), generator=torch.Generator().manual_seed(length)).tolist()
                sequence = timed(run_prime, (model, ids, 1), args.repeats)
                step = timed(stepper.read, (ids,), args.repeats)
                chosen = step if length <= SHORT_PRIME else sequence
                results["cases"].append(
                    {"cell": cell, "chars": length, "sequence_s": sequence, "step_s": step, "run_prime_s": chosen}
                )
                rows.append(
                    [
                        f"{cell} {args.num_layers}x{args.hidden_size}",
                        length,
                        f"{sequence * 1e3:.2f}",
                        f"{step * 1e3:.2f}",
                        "step" if length <= SHORT_PRIME else "sequence",
                    ]
                )
    common.print_table(
        f"reading a prime, one stream on the CPU (median of {args.repeats}); SHORT_PRIME = {SHORT_PRIME}",
        ["model", "chars", "sequence pass (ms)", "through the step (ms)", "run_prime reads it by"],
        rows,
    )
    if args.json:
        path = common.write_json(args.json, "prime", info, {**vars(args), "command": " ".join(sys.argv)}, results)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

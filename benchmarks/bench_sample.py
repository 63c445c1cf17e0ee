"""Sampling throughput of a randomly initialised model, three ways, for 1 and for 32 streams:

  naive      CharRNN.forward on (N, 1) per character: nn.LSTM with a sequence of length one
  step-blas  StepModel(backend="blas").step per character: the fused step with MKL/BLAS addmm products
             (cuBLAS on a GPU), each kernel launched one by one
  step       StepModel.runner per character: the fused step as `charrnn sample` runs it (on the CPU, for
             one stream torch on one thread and the products in numpy's BLAS, see charrnn.threads;
             for several, the products through oneDNN with packed weights when available, "backend"
             in the JSON; on CUDA, replayed from a CUDA graph)
  generate   the charrnn.sample.generate iterator, as `charrnn sample` gets it (same threads as step)

Each draws the next character the same way generate does at temperature 1 (charrnn.sample.Draw,
the Gumbel-max trick), so (generate - step) is the iterator's own overhead. Rates are characters per second summed over
the streams, timed after the first character (set-up and the prime are not counted). The methods
take turns within each repetition so drift hits all alike. With --device cuda everything runs on the
GPU (there "step" is the graph of "step-blas"'s kernels: oneDNN is CPU-only), each character's timestamp
is taken after torch.cuda.synchronize(), as a sampler that prints every character must wait for it,
and peak memory is torch.cuda.max_memory_allocated.

--prime-chars N also times priming (issue 15): a random prime of N characters read by
charrnn.sample.run_prime (whole-sequence passes, as `charrnn sample --prime-file` does) on the torch
threads `charrnn sample` runs one stream with (and with --prime-all-threads on all of torch's), against
the fused one-character step reading the first --prime-step-chars of it one character at a time (its
rate extrapolated to N), all in the same run.
Usage: python benchmarks/bench_sample.py --help
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import charrnn.threads
import common
from charrnn.data import Vocab
from charrnn.inference import StepModel
from charrnn.model import CharRNN, ModelConfig
from charrnn.sample import Draw, generate, run_prime
from charrnn.threads import sampling_threads, torch_threads

METHODS = ("naive", "step-blas", "step", "generate")
TARGETS = {1: 1000.0, 32: 6000.0}  # chars/s from issue 3, for a 2x512 LSTM
# One thread unless --threads says otherwise: a smoke run must not stall on a busy machine.
QUICK = {"length": 30, "warmup": 3, "repeats": 1, "bandwidth_mb": 64, "threads": 1}


def device_of(model: CharRNN) -> torch.device:
    return model.head.weight.device


@torch.no_grad()
def run_naive(model: CharRNN, streams: int, length: int) -> list[float]:
    device = device_of(model)
    draw = Draw(streams, model.config.vocab_size, generator=torch.Generator(device=device).manual_seed(0))
    logits, state = model(torch.zeros(streams, 1, dtype=torch.long, device=device))
    times = []
    for _ in range(length):
        nxt = draw(logits[:, -1])
        logits, state = model(nxt.view(streams, 1), state)  # (N, 1, V)
        times.append(common.stamp(device))
    return times


@torch.no_grad()
def run_step(step, model: CharRNN, streams: int, length: int) -> list[float]:
    """``step``: StepModel.step or what StepModel.runner returns."""
    device = device_of(model)
    draw = Draw(streams, model.config.vocab_size, generator=torch.Generator(device=device).manual_seed(0))
    logits, state = model(torch.zeros(streams, 1, dtype=torch.long, device=device))
    logits = logits[:, -1]
    times = []
    for _ in range(length):
        nxt = draw(logits)
        logits, state = step(nxt, state)  # (N, V)
        times.append(common.stamp(device))
    return times


def run_generate(model: CharRNN, vocab: Vocab, streams: int, length: int) -> list[float]:
    times = []
    for _chars in generate(model, vocab, length=length + 1, num_samples=streams, seed=0):
        times.append(time.perf_counter())
    return times


def mixed_pools(model: CharRNN, length: int, repeats: int) -> dict:
    """One stream through numpy's BLAS, with torch on its own thread count ("both": two pools that
    each wait busily, on the same cores) and with torch on one thread, as charrnn runs it."""
    stepper = StepModel(model, backend="numpy")
    rates = {"both": [], "torch_one": []}
    for _ in range(repeats):
        for key, threads in (("both", None), ("torch_one", 1)):
            with torch_threads(threads):
                rates[key].append(rate(run_step(stepper.step, model, 1, length + 1), 1))
    out = {key: {"chars_per_s": common.median(r), "reps_chars_per_s": r} for key, r in rates.items()}
    return {
        **out,
        "torch_threads": torch.get_num_threads(),
        "blas_threads": charrnn.threads.blas_threads(),
        "length": length,
    }


@torch.no_grad()
def prime_times(model: CharRNN, chars: int, step_chars: int, repeats: int, all_threads: bool) -> dict:
    """Seconds to read a random prime of ``chars`` characters: run_prime on the torch threads `charrnn
    sample` gives one stream (one, when numpy's BLAS has several) and, with ``all_threads``, on all of
    torch's; and the one-character step over ``step_chars`` of them, extrapolated to ``chars``."""
    device = device_of(model)
    rng = torch.Generator().manual_seed(1)
    ids = torch.randint(model.config.vocab_size, (chars,), generator=rng).tolist()
    own = sampling_threads(1, device)
    stepper = StepModel(model)
    out: dict = {
        "prime_chars": chars,
        "torch_threads": own or torch.get_num_threads(),
        "all_torch_threads": torch.get_num_threads(),
        "step_chars": min(step_chars, chars),
    }
    runs = {"run_prime": own} | ({"run_prime_all_threads": None} if all_threads else {})
    timings: dict[str, list[float]] = {key: [] for key in [*runs, "step"]}
    with torch_threads(own):
        run_prime(model, ids[:1000], 1)  # warm-up: the kernels' first-use set-up
    for _ in range(repeats):
        for key, threads in runs.items():
            with torch_threads(threads):
                t0 = common.stamp(device)
                logits, _ = run_prime(model, ids, 1)
                logits.sum().item()
                timings[key].append(common.stamp(device) - t0)
        with torch_threads(own):
            step = stepper.runner(1)
            state = stepper.init_state(1)
            t0 = common.stamp(device)
            for i in ids[: out["step_chars"]]:
                logits, state = step(torch.tensor([i], device=device), state)
            logits.sum().item()
            timings["step"].append((common.stamp(device) - t0) * chars / out["step_chars"])
    for key, values in timings.items():
        out[key] = {"s": common.median(values), "reps_s": values, "chars_per_s": chars / common.median(values)}
    out["step_over_run_prime"] = out["step"]["s"] / out["run_prime"]["s"]
    return out


def rate(times: list[float], streams: int) -> float:
    """Characters per second over all streams, from the first timestamp to the last."""
    return (len(times) - 1) * streams / (times[-1] - times[0])


def copy_bandwidth(megabytes: int, device: torch.device, repeats: int = 5) -> float:
    """Bytes per second moved (read + written) by the fastest of a few large tensor copies."""
    src = torch.ones(megabytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = common.stamp(device)
        dst.copy_(src)
        best = min(best, common.stamp(device) - t0)
    return 2 * src.nbytes / best


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        common.reset_peak_rss()


def peak_mb(device: torch.device) -> float | None:
    """Peak GPU memory allocated by PyTorch on CUDA, else the process's peak RSS, in MiB."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else common.peak_rss_mb()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Sampling throughput (chars/s) of a naive nn.LSTM loop, charrnn's fused step and generate().",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm")
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--embedding-size", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=65, help="65: Tiny Shakespeare's.")
    parser.add_argument("--streams", default="1,32", help="Comma-separated numbers of parallel samples.")
    parser.add_argument("--length", type=int, default=400, help="Timed characters per stream per repetition.")
    parser.add_argument(
        "--warmup", type=int, default=20, help="Untimed characters per method before the first repetition."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Repetitions; the median is reported.")
    parser.add_argument(
        "--threads", type=int, default=None, help="Threads for torch and numpy's BLAS [default: their choice]."
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N].")
    parser.add_argument(
        "--bandwidth-mb", type=int, default=256, help="Size of the copy that estimates memory bandwidth (0: skip)."
    )
    parser.add_argument(
        "--mixed-pools",
        type=int,
        default=0,
        metavar="CHARS",
        help="Also time one stream's step through numpy's BLAS with torch on its own threads too "
        "(the combination charrnn avoids) against torch on one thread, for CHARS characters (0: skip).",
    )
    parser.add_argument(
        "--prime-chars", type=int, default=0, metavar="N", help="Also time reading a prime of N characters (0: skip)."
    )
    parser.add_argument(
        "--prime-step-chars",
        type=int,
        default=2000,
        help="Characters the one-character step reads for the prime comparison (its rate is extrapolated).",
    )
    parser.add_argument(
        "--prime-all-threads",
        action="store_true",
        help="Also time run_prime on all of torch's threads (charrnn sample uses one for one stream).",
    )
    parser.add_argument(
        "--prime-only", action="store_true", help="Only the prime timing (with --prime-chars): no throughput table."
    )
    parser.add_argument("--json", default=None, metavar="PATH", help=common.json_help())
    parser.add_argument("--quick", action="store_true", help=f"Smoke run in seconds: {QUICK}.")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if key != "threads" or args.threads is None:
                setattr(args, key, value)
    try:
        args.streams = [int(s) for s in args.streams.split(",")]
    except ValueError:
        parser.error(f"--streams must be comma-separated integers, got {args.streams!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if min(args.streams) < 1 or args.length < 2 or args.repeats < 1 or args.warmup < 0:
        parser.error("--streams and --repeats must be at least 1, --length at least 2, --warmup at least 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    common.set_threads(args.threads)
    info = common.machine()
    print(common.describe(info), file=sys.stderr)
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=args.vocab_size,
        cell=args.cell,
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        embedding_size=args.embedding_size,
    )
    device = torch.device(args.device)
    model = CharRNN(config).to(device).eval()
    # generate() only needs the characters; any args.vocab_size distinct ones will do.
    vocab = Vocab("".join(sorted(chr(ord("\n") if i == 0 else 31 + i) for i in range(args.vocab_size))))
    stepper, blas_stepper = StepModel(model), StepModel(model, backend="blas")
    methods = {
        "naive": lambda n, length: run_naive(model, n, length),
        "step-blas": lambda n, length: run_step(blas_stepper.step, model, n, length),
        "step": lambda n, length: run_step(stepper.runner(n), model, n, length),
        "generate": lambda n, length: run_generate(model, vocab, n, length),
    }
    name = f"{args.cell.upper()} {args.num_layers}x{args.hidden_size}"
    print(
        f"{name}, embedding {args.embedding_size}, vocab {args.vocab_size}, {model.num_parameters():,} parameters, "
        f"step backend {stepper.backend}",
        file=sys.stderr,
    )

    results = []
    for streams in [] if args.prime_only else args.streams:
        # charrnn's own methods run with the threads `charrnn sample` gives them; the others as they are.
        own_threads = sampling_threads(streams, device)
        threads = {m: own_threads if m in ("step", "generate") else None for m in METHODS}
        rates = {m: [] for m in METHODS}
        peaks = {m: None for m in METHODS}
        for method in METHODS:
            if args.warmup:
                with torch_threads(threads[method]):
                    methods[method](streams, args.warmup)
        for rep in range(args.repeats):
            order = METHODS[rep % len(METHODS) :] + METHODS[: rep % len(METHODS)]
            for method in order:
                reset_peak(device)
                with torch_threads(threads[method]):
                    times = methods[method](streams, args.length + 1)
                peak = peak_mb(device)
                peaks[method] = max(peaks[method] or 0.0, peak or 0.0) or None
                rates[method].append(rate(times, streams))
        row = {
            "streams": streams,
            "length": args.length,
            "repeats": args.repeats,
            "backend": stepper.backend,
            "numpy_one_stream": stepper.numpy_ready and streams == 1 and own_threads == 1,
            "torch_threads": {m: threads[m] or torch.get_num_threads() for m in METHODS},
            "device": str(device),
            "peak_memory": "cuda_allocated" if device.type == "cuda" else "rss",
        }
        for method in METHODS:
            row[method] = {
                "chars_per_s": common.median(rates[method]),
                "reps_chars_per_s": rates[method],
                "spread": common.spread(rates[method]),
                "peak_rss_mb": peaks[method],
            }
        row["step_speedup"] = row["step"]["chars_per_s"] / row["naive"]["chars_per_s"]
        row["generate_overhead"] = 1 - row["generate"]["chars_per_s"] / row["step"]["chars_per_s"]
        # The targets are for a 2-core CPU (issue 3); on a GPU the table shows the rates alone.
        target = (
            TARGETS.get(streams)
            if (args.cell, args.num_layers, args.hidden_size, device.type) == ("lstm", 2, 512, "cpu")
            else None
        )
        row["target_chars_per_s"] = target
        row["meets_target"] = None if target is None else row["generate"]["chars_per_s"] >= target
        results.append(row)

    mixed = mixed_pools(model, args.mixed_pools, args.repeats) if args.mixed_pools and device.type == "cpu" else None
    prime = (
        prime_times(model, args.prime_chars, args.prime_step_chars, args.repeats, args.prime_all_threads)
        if args.prime_chars
        else None
    )

    bound = None
    if args.bandwidth_mb:
        bandwidth = copy_bandwidth(args.bandwidth_mb, device)
        weights = stepper.weight_bytes_per_step(1)
        bound = {
            "copy_bandwidth_gb_s": bandwidth / 1e9,
            "weight_bytes_per_step": weights,
            "one_stream_chars_per_s": bandwidth / weights,
        }

    columns = [
        "streams",
        "naive ch/s",
        "step-blas ch/s",
        "step ch/s",
        "generate ch/s",
        "target",
        "met",
        "step/naive",
        "gen overhead",
        "spread",
        "peak MiB",
    ]
    rows = [
        [
            r["streams"],
            common.fmt(r["naive"]["chars_per_s"]),
            common.fmt(r["step-blas"]["chars_per_s"]),
            common.fmt(r["step"]["chars_per_s"]),
            common.fmt(r["generate"]["chars_per_s"]),
            common.fmt(r["target_chars_per_s"]),
            {None: "-", True: "yes", False: "NO"}[r["meets_target"]],
            f"{r['step_speedup']:.2f}x",
            f"{r['generate_overhead']:.0%}",
            f"{max(r[m]['spread'] for m in METHODS):.0%}",
            common.fmt(max(r[m]["peak_rss_mb"] or 0 for m in METHODS)),
        ]
        for r in results
    ]
    title = f"sampling throughput, {name} on {device}, median of {args.repeats}" + (
        " (QUICK: noisy smoke run)" if args.quick else ""
    )
    if rows:
        common.print_table(title, columns, rows)
    print(
        "ch/s = characters per second over all streams; target (issue 3) applies to generate with a 2x512 LSTM;\n"
        "gen overhead = how much slower generate() is than the bare step loop; spread = (max - min) / median of\n"
        "the repetitions, the worst method; peak MiB = peak RSS of the process during any method (on CUDA:\n"
        "torch.cuda.max_memory_allocated)."
    )
    if mixed:
        print(
            f"mixed pools, 1 stream, numpy's BLAS on {mixed['blas_threads']} threads: torch on {mixed['torch_threads']} "
            f"threads {mixed['both']['chars_per_s']:,.0f} ch/s, torch on 1 thread {mixed['torch_one']['chars_per_s']:,.0f} ch/s "
            f"(median of {args.repeats} x {args.mixed_pools} characters)."
        )
    if bound:
        print(
            f"bandwidth bound, 1 stream: {bound['weight_bytes_per_step'] / 2**20:.1f} MiB of weights per step at "
            f"{bound['copy_bandwidth_gb_s']:.1f} GB/s (large-copy read+write) = ~{bound['one_stream_chars_per_s']:,.0f} chars/s; "
            "weights that fit in cache can beat it."
        )
    if prime:
        also = (
            f", {prime['run_prime_all_threads']['s']:.2f} s on {prime['all_torch_threads']}"
            if "run_prime_all_threads" in prime
            else ""
        )
        print(
            f"prime of {prime['prime_chars']:,} characters, {name}: run_prime {prime['run_prime']['s']:.2f} s on "
            f"{prime['torch_threads']} torch thread(s) ({prime['run_prime']['chars_per_s']:,.0f} ch/s){also}; "
            f"one character at a time {prime['step']['s']:.2f} s (from {prime['step_chars']:,} characters) = "
            f"{prime['step_over_run_prime']:.1f}x slower (median of {args.repeats})."
        )
    if args.json:
        options = {k: v for k, v in vars(args).items()}
        path = common.write_json(
            args.json,
            "sample",
            info,
            options,
            {"rows": results, "bandwidth_bound": bound, "mixed_pools": mixed, "prime": prime},
        )
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

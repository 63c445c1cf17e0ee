"""Training throughput: charrnn's own training step against a bare PyTorch loop of the same model.

For each configuration, one child process runs both, alternating repetitions (bare, charrnn,
charrnn, bare, ...) so that drift in the machine's speed hits both alike:

  bare     Embedding -> nn.LSTM/GRU/RNN -> Linear, cross entropy, Adam, clip_grad_norm_, the hidden
           state carried and detached: the loop anyone would write, and nothing else.
  charrnn  Trainer.run() with the CLI's progress callback (quiet, as `charrnn train -q`), the learning-
           rate schedule, the NaN guard and everything else it does per step. Evaluation is
           switched off (eval_every beyond the run); the evaluation and save that run() always does
           at the end fall outside the timed span, which runs from the last warm-up step's
           on_step to the last step's on_step.

Peak memory comes from separate short child processes, one per (configuration, loop), so that the
two models in the timing process do not add up: resident memory, and on CUDA the GPU memory
PyTorch allocated (torch.cuda.max_memory_allocated).

--device cuda runs both loops on the GPU, --dtype bf16|fp16 under autocast (fp16 with a GradScaler
in both). There, every step's timestamp is taken after torch.cuda.synchronize() in both loops, so a
step counts when its kernels have finished, not when they were queued.
Usage: python benchmarks/bench_train.py --help
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import common
from charrnn.cli.progress import Progress
from charrnn.corpus import default_corpus_path, read_text
from charrnn.data import Corpus, split
from charrnn.model import ModelConfig
from charrnn.trainer import DTYPES, Callback, TrainConfig, Trainer

EMBEDDING_SIZE = 64
LR = 2e-3
GRAD_CLIP = 5.0
TARGET_RATIO = 0.95


@dataclass(frozen=True)
class Spec:
    """One benchmark configuration; ``steps`` is the default number of timed steps per repetition."""

    cell: str
    num_layers: int
    hidden_size: int
    batch_size: int
    seq_len: int
    steps: int


CONFIGS = {
    "lstm-2x128": Spec("lstm", 2, 128, 50, 50, steps=100),
    "lstm-2x512": Spec("lstm", 2, 512, 64, 100, steps=10),
    "lstm-3x512": Spec("lstm", 3, 512, 64, 100, steps=8),
    "gru-2x512": Spec("gru", 2, 512, 64, 100, steps=10),
    "rnn-2x512": Spec("rnn", 2, 512, 64, 100, steps=30),
}
# One thread unless --threads says otherwise: a smoke run must not stall on a busy machine.
QUICK = {"configs": ["lstm-2x128"], "steps": 5, "warmup": 1, "repeats": 2, "threads": 1}


# -- (a) the bare loop ---------------------------------------------------------------------------


class BareModel(nn.Module):
    """Embedding -> RNN -> Linear, written out here so the reference owes nothing to charrnn."""

    def __init__(self, spec: Spec, vocab_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, EMBEDDING_SIZE)
        rnn_class = getattr(nn, spec.cell.upper())
        self.rnn = rnn_class(EMBEDDING_SIZE, spec.hidden_size, spec.num_layers, batch_first=True)
        self.head = nn.Linear(spec.hidden_size, vocab_size)

    def forward(self, x, state):
        out, state = self.rnn(self.embedding(x), state)  # (B, T, H)
        return self.head(out), state  # (B, T, V)


class BareLoop:
    """The plain truncated-BPTT loop over ``batch_size`` contiguous streams of ``ids``."""

    def __init__(
        self, spec: Spec, ids: np.ndarray, vocab_size: int, seed: int = 0, device: str = "cpu", dtype: str = "fp32"
    ):
        torch.manual_seed(seed)
        self.spec, self.vocab_size = spec, vocab_size
        self.device, self.dtype = torch.device(device), dtype
        self.model = BareModel(spec, vocab_size).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype == "fp16")
        stream_len = (len(ids) - 1) // spec.batch_size
        usable = spec.batch_size * stream_len
        self.x = ids[:usable].reshape(spec.batch_size, stream_len)  # (B, L)
        self.y = ids[1 : usable + 1].reshape(spec.batch_size, stream_len)
        self.batches = stream_len // spec.seq_len
        self.position = 0
        shape = (spec.num_layers, spec.batch_size, spec.hidden_size)
        zeros = lambda: torch.zeros(shape, device=self.device)  # noqa: E731
        self.state = (zeros(), zeros()) if spec.cell == "lstm" else zeros()

    def run(self, steps: int, on_last_step=None) -> list[float]:
        """Train ``steps`` steps; return the time after each one."""
        times = []
        for i in range(steps):
            if self.position == self.batches:
                self.position = 0
            cols = slice(self.position * self.spec.seq_len, (self.position + 1) * self.spec.seq_len)
            x = torch.from_numpy(self.x[:, cols].astype(np.int64)).to(self.device)
            y = torch.from_numpy(self.y[:, cols].astype(np.int64)).to(self.device)
            with torch.autocast(self.device.type, dtype=DTYPES[self.dtype], enabled=self.dtype != "fp32"):
                logits, state = self.model(x, self.state)
                loss = F.cross_entropy(logits.float().view(-1, self.vocab_size), y.view(-1))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
            self.position += 1
            times.append(common.stamp(self.device))
            if on_last_step is not None and i == steps - 1:
                on_last_step()
        return times


# -- (b) charrnn's Trainer -----------------------------------------------------------------------


class Timer(Callback):
    """The CLI's callback, plus a timestamp after each step it reports."""

    def __init__(self, inner: Callback, device: torch.device):
        self.inner, self.times, self.on_last_step, self.last = inner, [], None, None
        self.device = device

    def on_start(self, trainer):
        self.inner.on_start(trainer)

    def on_step(self, info):
        self.inner.on_step(info)
        self.times.append(common.stamp(self.device))
        if info.step == self.last and self.on_last_step is not None:
            self.on_last_step()  # before run()'s closing evaluation and save

    def on_eval(self, info):
        self.inner.on_eval(info)

    def on_nan_skip(self, step, new_lr_scale):
        self.inner.on_nan_skip(step, new_lr_scale)


class CharrnnLoop:
    """charrnn's Trainer, run again for each repetition, timed through its callback."""

    def __init__(
        self,
        spec: Spec,
        corpus: Corpus,
        val_frac: float,
        progress_bar: bool,
        seed: int = 0,
        device: str = "cpu",
        dtype: str = "fp32",
    ):
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-train-")
        self.progress = Progress(quiet=not progress_bar)
        self.timer = Timer(self.progress, torch.device(device))
        model_config = ModelConfig(
            vocab_size=len(corpus.vocab),
            cell=spec.cell,
            num_layers=spec.num_layers,
            hidden_size=spec.hidden_size,
            embedding_size=EMBEDDING_SIZE,
        )
        config = TrainConfig(
            batch_size=spec.batch_size,
            seq_len=spec.seq_len,
            lr=LR,
            grad_clip=GRAD_CLIP,
            max_steps=1,
            eval_every=10**9,
            val_frac=val_frac,
            seed=seed,
            dtype=dtype,
        )
        self.trainer = Trainer(model_config, config, corpus, self.tmp.name, device=device, callback=self.timer)

    def run(self, steps: int, on_last_step=None) -> list[float]:
        """Train ``steps`` more steps in one Trainer.run(); return the time after each one."""
        trainer = self.trainer
        budget = trainer.budget = dataclasses.replace(trainer.budget, max_steps=trainer.state.step + steps)
        self.timer.times, self.timer.last, self.timer.on_last_step = [], budget.max_steps, on_last_step
        self.trainer.run()
        self.progress.close()
        return self.timer.times

    def close(self):
        self.tmp.cleanup()


# -- one configuration, in a child process -------------------------------------------------------


def load_corpus(path: str | None) -> Corpus:
    path = Path(path) if path else default_corpus_path()
    return Corpus.from_text(read_text(path), path.name, path=str(path))


def chars_per_second(times: list[float], warmup: int, chars_per_step: int) -> tuple[float, float]:
    """Rates over the steps after the warm-up: (over the whole span, from the median step).

    The first is the headline number; the second shrugs off stalls from other processes on a
    busy machine, but would also hide a slow step that recurs every few steps.
    """
    assert warmup >= 1 and len(times) > warmup, "need at least one warm-up and one timed step"
    span = (len(times) - warmup) * chars_per_step / (times[-1] - times[warmup - 1])
    steps = [b - a for a, b in zip(times[warmup - 1 :], times[warmup:])]
    return span, chars_per_step / common.median(steps)


def child(args) -> dict:
    """Time (or, with --child-memory, measure the peak memory of) one configuration."""
    common.set_threads(args.threads)
    spec = CONFIGS[args.child]
    steps = args.steps or spec.steps
    corpus = load_corpus(args.corpus)
    base_mb = common.rss_mb()
    train_ids, _ = split(corpus.ids, args.val_frac)
    chars_per_step = spec.batch_size * spec.seq_len
    loops = {}
    if args.child_memory in (None, "bare"):
        loops["bare"] = BareLoop(spec, train_ids, len(corpus.vocab), device=args.device, dtype=args.dtype)
    if args.child_memory in (None, "charrnn"):
        loops["charrnn"] = CharrnnLoop(
            spec, corpus, args.val_frac, args.progress_bar, device=args.device, dtype=args.dtype
        )
    model = loops["bare"].model if "bare" in loops else loops["charrnn"].trainer.model
    result = {"params": sum(p.numel() for p in model.parameters())}
    result["rates"] = {name: [] for name in loops}
    result["step_rates"] = {name: [] for name in loops}

    if args.child_memory:
        # Memory: one short run, peak read after its last step (before charrnn's final eval/save).
        name, loop = next(iter(loops.items()))
        common.reset_peak_rss()
        cuda = args.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        peak = {}

        def read_peaks():
            peak.setdefault("mb", common.peak_rss_mb())
            if cuda:
                peak.setdefault("gpu_mb", torch.cuda.max_memory_allocated() / 2**20)

        loop.run(args.warmup + 2, on_last_step=read_peaks)
        result.update(base_rss_mb=base_mb, peak_rss_mb=peak.get("mb"), peak_gpu_mb=peak.get("gpu_mb"))
    else:
        # Throughput: alternate the order each repetition (ABBA) so drift cancels.
        order = list(loops)
        for rep in range(args.repeats):
            for name in order if rep % 2 == 0 else order[::-1]:
                times = loops[name].run(args.warmup + steps)
                span, per_step = chars_per_second(times, args.warmup, chars_per_step)
                result["rates"][name].append(span)
                result["step_rates"][name].append(per_step)
    for loop in loops.values():
        if isinstance(loop, CharrnnLoop):
            loop.close()
    result["steps"] = steps
    return result


def start_child(args, name: str, memory: str | None) -> subprocess.Popen:
    """Start this script on one configuration in a fresh process; ``finish_child`` collects it."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        name,
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
        "--val-frac",
        str(args.val_frac),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
    ]
    for flag, value in (
        ("--steps", args.steps),
        ("--threads", args.threads),
        ("--corpus", args.corpus),
        ("--child-memory", memory),
    ):
        if value:
            cmd += [flag, str(value)]
    if args.progress_bar:
        cmd.append("--progress-bar")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def finish_child(proc: subprocess.Popen, name: str) -> dict:
    """Wait for a child and return the JSON line it printed last."""
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child for {name} failed with exit code {proc.returncode}")
    return json.loads(stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Training throughput (chars/s) of charrnn's Trainer against a bare PyTorch loop, and peak memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"Comma-separated, from: {', '.join(CONFIGS)}.")
    parser.add_argument(
        "--steps", type=int, default=None, help="Timed steps per repetition [default: per config, 5-15 s on 2 cores]."
    )
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps at the start of every repetition (>= 1).")
    parser.add_argument(
        "--repeats", type=int, default=3, help="Repetitions of each loop, alternating; the median is reported."
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads for both loops [default: torch's choice]."
    )
    parser.add_argument("--corpus", default=None, help="Text to train on [default: the embedded Tiny Shakespeare].")
    parser.add_argument(
        "--val-frac",
        type=float,
        default=0.01,
        help="Held-out fraction; small, because run() evaluates it once at the end (untimed).",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N], for both loops.")
    parser.add_argument(
        "--dtype", choices=list(DTYPES), default="fp32", help="Autocast precision of both loops (bf16/fp16: CUDA only)."
    )
    parser.add_argument("--no-memory", action="store_true", help="Skip the peak-memory child processes.")
    parser.add_argument(
        "--progress-bar",
        action="store_true",
        help="Time charrnn with the tqdm bar on stderr, as `charrnn train` without -q.",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help=common.json_help())
    parser.add_argument("--quick", action="store_true", help=f"Smoke run in seconds: {QUICK}.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-memory", choices=["bare", "charrnn"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if key != "threads" or args.threads is None:
                setattr(args, key, ",".join(value) if isinstance(value, list) else value)
    if args.warmup < 1 or args.repeats < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--warmup, --repeats and --steps must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.dtype != "fp32" and not args.device.startswith("cuda"):
        parser.error(f"--dtype {args.dtype} needs --device cuda")
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    common.set_threads(args.threads)
    info = common.machine()
    print(common.describe(info), file=sys.stderr)
    results = []
    for name in args.configs.split(","):
        spec = CONFIGS[name]
        print(f"{name}: timing ...", file=sys.stderr, flush=True)
        timing = finish_child(start_child(args, name, None), name)
        memory = {}
        if not args.no_memory:
            # Side by side: peak RSS is per process, so running together does not change it.
            print(f"{name}: peak memory ...", file=sys.stderr, flush=True)
            procs = {loop: start_child(args, name, loop) for loop in ("bare", "charrnn")}
            memory = {loop: finish_child(proc, name) for loop, proc in procs.items()}
        row = {
            "config": name,
            **asdict(spec),
            "embedding_size": EMBEDDING_SIZE,
            "steps": timing["steps"],
            "warmup": args.warmup,
            "repeats": args.repeats,
            "params": timing["params"],
        }
        for loop in ("bare", "charrnn"):
            rates = timing["rates"][loop]
            row[loop] = {
                "chars_per_s": common.median(rates),
                "reps_chars_per_s": rates,
                "spread": common.spread(rates),
                "median_step_chars_per_s": common.median(timing["step_rates"][loop]),
                "peak_rss_mb": memory.get(loop, {}).get("peak_rss_mb"),
                "base_rss_mb": memory.get(loop, {}).get("base_rss_mb"),
                "peak_gpu_mb": memory.get(loop, {}).get("peak_gpu_mb"),
            }
        row["ratio"] = row["charrnn"]["chars_per_s"] / row["bare"]["chars_per_s"]
        row["ratio_median_step"] = row["charrnn"]["median_step_chars_per_s"] / row["bare"]["median_step_chars_per_s"]
        row["meets_target"] = row["ratio"] >= TARGET_RATIO
        results.append(row)

    columns = [
        "config",
        "B x T",
        "params",
        "bare ch/s",
        "charrnn ch/s",
        "ratio",
        f">={TARGET_RATIO}",
        "step ratio",
        "spread",
        "base MiB",
        "bare MiB",
        "charrnn MiB",
    ]
    rows = [
        [
            r["config"],
            f"{r['batch_size']}x{r['seq_len']}",
            common.fmt(r["params"]),
            common.fmt(r["bare"]["chars_per_s"]),
            common.fmt(r["charrnn"]["chars_per_s"]),
            f"{r['ratio']:.3f}",
            "yes" if r["meets_target"] else "NO",
            f"{r['ratio_median_step']:.3f}",
            f"{max(r['bare']['spread'], r['charrnn']['spread']):.0%}",
            common.fmt(r["bare"]["base_rss_mb"]),
            common.fmt(r["bare"]["peak_rss_mb"]),
            common.fmt(r["charrnn"]["peak_rss_mb"]),
        ]
        for r in results
    ]
    if args.device.startswith("cuda"):
        columns += ["bare GPU MiB", "charrnn GPU MiB"]
        for row, r in zip(rows, results):
            row += [common.fmt(r["bare"]["peak_gpu_mb"]), common.fmt(r["charrnn"]["peak_gpu_mb"])]
    where = f" on {args.device}" + (f", {args.dtype} autocast" if args.dtype != "fp32" else "")
    title = f"training throughput{where}, median of {args.repeats} alternating repetitions" + (
        " (QUICK: noisy smoke run)" if args.quick else ""
    )
    common.print_table(title, columns, rows)
    print(
        "ratio = charrnn / bare chars/s in the same process; step ratio = the same from each loop's median step time\n"
        "(robust to stalls from other processes); spread = (max - min) / median of the repetitions, the larger of\n"
        "the two loops (over ~5% means the machine was busy: rerun); MiB = peak RSS of a separate short run of\n"
        "each loop (read before charrnn's final eval/save); base = RSS after imports and loading the corpus;\n"
        "GPU MiB = torch.cuda.max_memory_allocated in that same run."
    )
    if args.json:
        options = {k: v for k, v in vars(args).items() if not k.startswith("child")}
        path = common.write_json(args.json, "train", info, options, results)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

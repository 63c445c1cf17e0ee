"""Quality per time: validation loss after fixed wall-clock budgets of `charrnn train`, per recipe.

Every (recipe, budget) pair is a separate `charrnn train CORPUS --max-time BUDGET --json -q` run
from scratch in its own process, exactly as a user would run it: the cosine schedule follows the
clock, so a 2-minute run is not the first 2 minutes of a 10-minute one. From each run we keep the
JSON summary it prints (best val loss, steps, elapsed and evaluation seconds), the training
characters it saw (from last.pt), its validation curve, wall time and the child's peak RSS.

    python benchmarks/bench_quality.py --budgets 2m,5m,10m \\
        --recipe default="" --recipe wide="--hidden-size 768 --batch-size 64"

Usage: python benchmarks/bench_quality.py --help
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from charrnn import checkpoint as ckpt_io
from charrnn.cli.common import Duration
from charrnn.corpus import default_corpus_path

LN2 = 0.6931471805599453
EVAL_FRACTION_TARGET = 0.10  # issue 3: evaluation at most 10% of the time at default settings
QUICK = {
    "budgets": "4s",
    "threads": 1,  # unless --threads says otherwise: a smoke run must not stall on a busy machine
    "recipes": [("tiny", "--num-layers 1 --hidden-size 64 --batch-size 16 --seq-len 50")],
}


def parse_recipe(text: str) -> tuple[str, str]:
    """'name=--flag value ...' -> (name, flags); a bare name means charrnn's defaults."""
    name, _, flags = text.partition("=")
    name = name.strip()
    if not name:
        raise argparse.ArgumentTypeError(f'recipe {text!r} needs a name: NAME="--flag value ..."')
    flags = flags.strip()
    if len(flags) >= 2 and flags[0] == flags[-1] and flags[0] in "'\"":
        flags = flags[1:-1]
    shlex.split(flags)  # fail now on unbalanced quotes
    return name, flags


def run_train(cmd: list[str], env: dict, log: Path) -> tuple[int, float, float | None, str]:
    """Run one training child; return (exit code, wall seconds, peak RSS MiB, stdout).

    os.wait4 gives this child's own resource usage, where RUSAGE_CHILDREN would give the peak
    over every child so far.
    """
    with tempfile.TemporaryFile("w+") as out, open(log, "w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen it is gone
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        out.seek(0)
        return proc.returncode, wall, usage.ru_maxrss * scale / 2**20, out.read()


def training_record(last_pt: Path) -> dict:
    """Characters trained on, batch layout and the validation curve, from the run's last.pt."""
    ckpt = ckpt_io.load(last_pt)
    return {
        "chars_seen": int(ckpt.progress.get("chars_seen", 0)),
        "batch_size": ckpt.train_config.get("batch_size"),
        "seq_len": ckpt.train_config.get("seq_len"),
        "model": ckpt.model_config.to_dict(),
        "history": {k: ckpt.history.get(k, []) for k in ("step", "elapsed", "train_loss", "val_loss")},
    }


def one_run(args, corpus: str, recipe: str, flags: str, budget: str, out_root: Path) -> dict:
    out_dir = out_root / f"{recipe}-{budget}"
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        corpus,
        "--max-time",
        budget,
        "--out-dir",
        str(out_dir),
        "--json",
        "-q",
        "--force",
        *shlex.split(args.train_args),
        *shlex.split(flags),
    ]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)  # torch reads it at start-up
    code, wall, peak_mb, stdout = run_train(cmd, env, out_dir / "stderr.log")
    row = {
        "recipe": recipe,
        "flags": flags,
        "budget": budget,
        "budget_s": Duration().convert(budget, None, None),
        "command": shlex.join(cmd[1:]),
        "exit_code": code,
        "wall_s": wall,
        "peak_rss_mb": peak_mb,
    }
    if code != 0:
        tail = (out_dir / "stderr.log").read_text().strip().splitlines()[-3:]
        row["error"] = " | ".join(tail)
        print(f"  {recipe} {budget}: exit code {code}: {row['error']}", file=sys.stderr)
        return row
    summary = json.loads(stdout)
    row.update(summary)
    elapsed, eval_s = summary["elapsed_s"], summary["eval_s"]
    row["eval_fraction"] = eval_s / elapsed if elapsed else None
    if (out_dir / "last.pt").exists():
        record = training_record(out_dir / "last.pt")
        train_s = elapsed - eval_s
        row.update(record)
        row["train_chars_per_s"] = record["chars_seen"] / train_s if train_s > 0 else None
    return row


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Best validation loss after fixed wall-clock budgets of `charrnn train`, for one or more recipes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--corpus", default=None, help="Text to train on [default: the embedded Tiny Shakespeare].")
    parser.add_argument("--budgets", default="2m,5m,10m", help="Comma-separated --max-time values, one run each.")
    parser.add_argument(
        "--recipe",
        dest="recipes",
        action="append",
        type=parse_recipe,
        default=None,
        metavar='NAME="FLAGS"',
        help='A named set of `charrnn train` flags, e.g. lstm512="--hidden-size 512 --batch-size 32"; '
        'repeat for a table [default: default=""].',
    )
    parser.add_argument("--train-args", default="", help="Flags added to every run, before the recipe's own.")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for the training processes [default: torch's choice].",
    )
    parser.add_argument(
        "--out-root",
        type=Path,
        default=None,
        help="Keep each run's checkpoints and stderr.log here [default: a temporary folder].",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help=common.json_help())
    parser.add_argument("--quick", action="store_true", help=f"Smoke run in seconds: {QUICK}.")
    args = parser.parse_args(argv)
    if args.quick:
        args.budgets, args.recipes = QUICK["budgets"], args.recipes or QUICK["recipes"]
        args.threads = args.threads or QUICK["threads"]
    args.recipes = args.recipes or [("default", "")]
    names = [name for name, _ in args.recipes]
    if len(set(names)) != len(names):
        parser.error(f"recipe names must differ, got {', '.join(names)}")
    args.budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    for budget in args.budgets:
        try:
            Duration().convert(budget, None, None)
        except Exception as exc:  # click.BadParameter; its message says what is wrong
            parser.error(f"--budgets: {getattr(exc, 'message', exc)}")
    try:
        shlex.split(args.train_args)
    except ValueError as exc:
        parser.error(f"--train-args: {exc}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    corpus = str(Path(args.corpus).resolve() if args.corpus else default_corpus_path())
    info = common.machine()
    if args.threads:
        info["torch_threads"] = args.threads
    print(common.describe(info), file=sys.stderr)
    total = sum(Duration().convert(b, None, None) for b in args.budgets) * len(args.recipes)
    print(
        f"{len(args.recipes)} recipe(s) x {len(args.budgets)} budget(s): at least {total / 60:.1f} minutes of training",
        file=sys.stderr,
    )

    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        out_root = args.out_root or Path(tmp)
        results = []
        for recipe, flags in args.recipes:
            for budget in args.budgets:
                print(f"{recipe} {budget} ...", file=sys.stderr, flush=True)
                results.append(one_run(args, corpus, recipe, flags, budget, out_root))

    columns = [
        "recipe",
        "budget",
        "val nats",
        "val bits",
        "steps",
        "epochs",
        "train ch/s",
        "elapsed",
        "wall",
        "eval",
        f"<={EVAL_FRACTION_TARGET:.0%}",
        "peak MiB",
    ]
    rows = []
    for r in results:
        if r["exit_code"] != 0:
            rows.append([r["recipe"], r["budget"], f"failed (exit {r['exit_code']})"] + ["-"] * (len(columns) - 3))
            continue
        frac = r.get("eval_fraction")
        rows.append(
            [
                r["recipe"],
                r["budget"],
                common.fmt(r["best_val_loss"], 4),
                common.fmt(r["best_val_bpc"], 4),
                common.fmt(r["steps"]),
                common.fmt(r["epochs"], 2),
                common.fmt(r.get("train_chars_per_s")),
                f"{r['elapsed_s']:.0f}s",
                f"{r['wall_s']:.0f}s",
                "-" if frac is None else f"{frac:.1%}",
                "-" if frac is None else ("yes" if frac <= EVAL_FRACTION_TARGET else "NO"),
                common.fmt(r["peak_rss_mb"]),
            ]
        )
    title = f"quality per time on {Path(corpus).name}" + (" (QUICK: noisy smoke run)" if args.quick else "")
    common.print_table(title, columns, rows)
    print(
        "val = best validation loss (nats and bits per character); train ch/s = training characters / (elapsed - eval);\n"
        "elapsed = the trainer's clock (the --max-time budget, evaluation included); wall = the whole process, start-up\n"
        "and the closing evaluation and save included; eval = evaluation seconds / elapsed (the closing evaluation falls\n"
        "outside elapsed, so this overstates by at most one evaluation); peak MiB = the process's peak RSS."
    )
    for name, flags in args.recipes:
        print(
            f"  {name}: charrnn train {' '.join(x for x in (shlex.quote(Path(corpus).name), args.train_args, flags) if x)}"
        )
    if args.json:
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        options["corpus"] = corpus
        path = common.write_json(args.json, "quality", info, options, results)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

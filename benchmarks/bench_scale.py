"""Corpora larger than memory: encoding throughput, peak memory, and the restart cost of a cached corpus.

On a generated corpus (``--size-mb``, default 500; a folder of ~4 MiB UTF-8 files made from the
embedded Tiny Shakespeare with non-ASCII lines sprinkled in, plus a few binary files to be skipped),
each phase runs in its own child process so that its peak RSS (VmHWM, read by the child itself from
/proc/self/status as it exits) is its own:

  encode    charrnn.corpus.load_corpus into an empty cache folder: both passes, the cache written.
            Throughput = bytes of the input files / wall time of load_corpus (CPU time reported too:
            on a shared machine it is the steadier number).
  baseline  `charrnn train` (the real CLI) on a 1 MB file of the same text, --no-cache: what a run
            costs whatever the corpus (torch, the model, the first step).
  train 1   `charrnn train FOLDER` for a few steps with an empty --cache-dir: encodes, then trains.
  train 2   the same again into another --out-dir: the cache is reused.
For every train run: peak RSS, and seconds from process start (the parent's clock just before it
starts the child) to the first Callback.on_step.

Targets (issue 5): encode >= 50 MB/s on 2 cores; peak RSS < 1 GB in encode and train; train 2 reaches
its first step in < 5 s. Usage: python benchmarks/bench_scale.py --help
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import common

FILE_BYTES = 4 << 20
NON_ASCII_LINES = [
    "Ça va très bien — “quoted” et déjà vu, naïve façade.\n",
    "Größe, Übermaß und Spaß: ein Fußgänger.\n",
    "Привет, мир! Как дела?\n",
    "日本語のテキストも少し。\n",
    "Emoji: 😀 🎭 📜 — astral plane.\n",
]


def generate(folder: Path, size_mb: float, seed: int = 0) -> dict:
    """A deterministic tree of UTF-8 files totalling ``size_mb`` MB, plus 3 binary files; quick to write."""
    from charrnn.corpus import default_corpus_path

    lines = default_corpus_path().read_bytes().decode("utf-8").splitlines(keepends=True)
    rng = random.Random(seed)
    blocks = []  # 16 variants of ~1 MiB: a rotated slice of Shakespeare, a non-ASCII line every ~40 lines
    for _ in range(16):
        start = rng.randrange(len(lines))
        rotated = lines[start:] + lines[:start]
        out, size = [], 0
        for i, line in enumerate(rotated):
            if i % 40 == 39:
                line = rng.choice(NON_ASCII_LINES)
            out.append(line)
            size += len(line.encode("utf-8"))
            if size >= 1 << 20:
                break
        blocks.append("".join(out).encode("utf-8"))
    target = int(size_mb * 1e6)
    written, index = 0, 0
    while written < target:
        sub = folder / f"part{index // 32:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        data = b"".join(rng.choice(blocks) for _ in range(FILE_BYTES >> 20))[: target - written]
        (sub / f"text{index:05d}.txt").write_bytes(data)
        written += len(data)
        index += 1
    for i in range(3):  # a tree has binaries: they must be skipped, and counted
        (folder / f"part000/blob{i}.bin").write_bytes(bytes(rng.randrange(256) for _ in range(4096)) + b"\x00")
    return {"text_files": index, "text_bytes": written, "binary_files": 3}


# The children: each prints one JSON line (prefixed) on stdout and its own VmHWM at exit.
_PEAK = textwrap.dedent(
    """
    import atexit, json, time
    def _peak():
        kb = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]
        print('BENCH ' + json.dumps({'peak_rss_mb': int(kb) / 1024}), flush=True)
    atexit.register(_peak)
    """
)
_ENCODE = _PEAK + textwrap.dedent(
    """
    import sys
    from charrnn.corpus import load_corpus
    import resource
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    r = load_corpus(sys.argv[1], cache_dir=sys.argv[2], chunk_size=int(sys.argv[3]))
    dt, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    print('BENCH ' + json.dumps({'seconds': dt, 'cpu_seconds': cpu, 'cache': r.cache, 'chars': len(r.corpus), 'files': r.n_files,
                                 'skipped': len(r.skipped), 'vocab': len(r.corpus.vocab),
                                 'dtype': str(r.corpus.ids.dtype)}), flush=True)
    """
)
_TRAIN = _PEAK + textwrap.dedent(
    """
    import sys
    from charrnn.cli import train as cli_train
    _on_step = cli_train.Progress.on_step
    def on_step(self, info):
        if not getattr(self, '_bench_first', False):
            self._bench_first = True
            print('BENCH ' + json.dumps({'first_step_at': time.time()}), flush=True)
        _on_step(self, info)
    cli_train.Progress.on_step = on_step
    from charrnn.cli import main
    sys.argv = ['charrnn', 'train', *sys.argv[1:]]
    main()
    """
)


def child(code: str, args: list[str], env: dict) -> tuple[dict, float, float]:
    """Run ``code`` in a fresh interpreter; (its BENCH fields merged, start time, wall seconds)."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    fields = {}
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            fields.update(json.loads(line[6:]))
    return fields, start, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=500.0, help="Size of the generated corpus in MB (1e6 bytes).")
    parser.add_argument("--steps", type=int, default=5, help="Training steps per train run.")
    parser.add_argument(
        "--train-args",
        default="--hidden-size 512 --num-layers 2 --batch-size 32 --seq-len 100",
        help="Model/batch options for the train runs.",
    )
    parser.add_argument(
        "--eval-chars", type=int, default=200_000, help="--eval-chars of the train runs (their closing evaluation)."
    )
    parser.add_argument("--chunk-mb", type=float, default=8.0, help="Read/encode chunk size in MiB.")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="Where to generate the corpus (default: a temp folder, removed after).",
    )
    parser.add_argument("--quick", action="store_true", help="Smoke run: 20 MB, 2 steps.")
    parser.add_argument("--json", dest="json_path", default=None, help=common.json_help())
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.steps = 20.0, 2

    info = common.machine()
    print(common.describe(info))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="charrnn-bench-scale-"))
    try:
        corpus_dir, cache_dir = work / "corpus", work / "cache"
        shutil.rmtree(cache_dir, ignore_errors=True)
        t0 = time.perf_counter()
        gen = generate(corpus_dir, args.size_mb) if not corpus_dir.exists() else {"reused": str(corpus_dir)}
        gen["seconds"] = round(time.perf_counter() - t0, 1)
        input_bytes = sum(p.stat().st_size for p in corpus_dir.rglob("*") if p.is_file())
        print(f"corpus: {input_bytes / 1e6:,.0f} MB in {corpus_dir} ({gen})", file=sys.stderr)

        enc, _, _ = child(_ENCODE, [str(corpus_dir), str(cache_dir), str(int(args.chunk_mb * (1 << 20)))], env)
        enc["mb_per_s"] = input_bytes / 1e6 / enc["seconds"]
        enc["mb_per_cpu_s"] = input_bytes / 1e6 / enc["cpu_seconds"]
        print(f"encode: {enc}", file=sys.stderr)

        small = work / "small.txt"
        small.write_bytes(next(corpus_dir.rglob("*.txt")).read_bytes()[: 1 << 20].decode("utf-8", "ignore").encode())
        common_args = [
            *args.train_args.split(),
            "--max-steps",
            str(args.steps),
            "--eval-every",
            str(10**9),
            "--eval-chars",
            str(args.eval_chars),
            "--sample-length",
            "0",
            "--device",
            "cpu",
            "-q",
            "--force",
        ]
        plan = [
            ("baseline", [str(small), *common_args, "--no-cache"]),
            ("train 1", [str(corpus_dir), *common_args, "--cache-dir", str(work / "cache-train")]),
            ("train 2", [str(corpus_dir), *common_args, "--cache-dir", str(work / "cache-train")]),
        ]
        runs = {}
        for i, (name, run_args) in enumerate(plan):
            fields, start, wall = child(_TRAIN, [*run_args, "--out-dir", str(work / f"run{i}")], env)
            fields["seconds_to_first_step"] = fields.pop("first_step_at") - start
            fields["wall_s"] = wall
            runs[name] = fields
            print(f"{name}: {fields}", file=sys.stderr)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    rows = [
        [
            "encode (both passes + cache write)",
            f"{enc['mb_per_s']:.1f} MB/s ({enc['mb_per_cpu_s']:.1f} per CPU-s)",
            common.fmt(enc["peak_rss_mb"]),
            "-",
        ],
        [
            "baseline: 1 MB file, no cache",
            "-",
            common.fmt(runs["baseline"]["peak_rss_mb"]),
            common.fmt(runs["baseline"]["seconds_to_first_step"], 2),
        ],
        [
            "train 1: encodes, then trains",
            "-",
            common.fmt(runs["train 1"]["peak_rss_mb"]),
            common.fmt(runs["train 1"]["seconds_to_first_step"], 2),
        ],
        [
            "train 2: cache reused",
            "-",
            common.fmt(runs["train 2"]["peak_rss_mb"]),
            common.fmt(runs["train 2"]["seconds_to_first_step"], 2),
        ],
    ]
    common.print_table(
        f"{input_bytes / 1e6:,.0f} MB corpus, {enc['files']} files ({enc['skipped']} skipped), {enc['chars']:,} chars, "
        f"vocab {enc['vocab']} ({enc['dtype']})",
        ["phase", "throughput", "peak RSS MiB", "s to 1st step"],
        rows,
    )
    targets = {
        "encode_mb_per_s >= 50": enc["mb_per_s"] >= 50,
        "peak_rss < 1 GB": max(enc["peak_rss_mb"], *(r["peak_rss_mb"] for r in runs.values())) < 1000,
        "second_run_first_step < 5 s": runs["train 2"]["seconds_to_first_step"] < 5,
    }
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()))
    if args.json_path:
        results = {"input_bytes": input_bytes, "generate": gen, "encode": enc, "train": runs, "targets": targets}
        path = common.write_json(
            args.json_path, "bench_scale", info, vars(args) | {"workdir": str(args.workdir)}, results
        )
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

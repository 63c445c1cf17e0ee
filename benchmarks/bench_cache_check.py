"""What it costs the corpus cache to decide that an entry is still good: stat against a content hash.

An entry must notice every edit of the files it was built from, including one that keeps their size
and modification time (``touch -r``). Two ways to see it: compare what stat reports and no tool can
set (the inode change time, ctime, besides inode, size and mtime in ns), or hash every file's content
at every start. On a generated folder corpus (``--size-mb`` in ``--files`` files, Tiny Shakespeare
text), each is timed ``--repeats`` times, the files in the page cache (a warm start, the best case
for hashing; a cold one reads the disk too):

  stat        charrnn.corpus_cache.stat_files over every file: what charrnn does
  lookup      charrnn.corpus.load_corpus on a built entry: the whole start-up check (resolve, stat,
              manifest, memory-map)
  sha256      hashlib.sha256 over every file's bytes, read in 8 MiB chunks
  blake2b     the same with hashlib.blake2b, the fastest hash in the standard library

Usage: python benchmarks/bench_cache_check.py --help
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import common

CHUNK = 8 << 20


def generate(folder: Path, size_mb: float, files: int) -> list[Path]:
    from charrnn.corpus import default_corpus_path

    text = default_corpus_path().read_bytes()
    per_file = max(1, int(size_mb * 1e6 / files))
    reps = per_file // len(text) + 1
    paths = []
    for i in range(files):
        path = folder / f"part{i:05d}.txt"
        path.write_bytes((text * reps)[:per_file])
        paths.append(path)
    return paths


def hash_files(paths: list[Path], algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def timed(fn, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=200.0, help="Corpus size in MB (default 200).")
    parser.add_argument("--files", type=int, default=100, help="Files it is split into (default 100).")
    parser.add_argument("--repeats", type=int, default=5, help="Timings per method (default 5; the median counts).")
    parser.add_argument("--quick", action="store_true", help="A smoke run: 4 MB in 10 files, 2 repeats.")
    parser.add_argument("--json", metavar="PATH", help=common.json_help())
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.files, args.repeats = 4.0, 10, 2

    from charrnn.corpus import load_corpus
    from charrnn.corpus_cache import stat_files

    info = common.machine()
    work = Path(tempfile.mkdtemp(prefix="bench-cache-check-"))
    try:
        print(f"writing {args.size_mb:g} MB in {args.files} files ...", file=sys.stderr)
        (work / "corpus").mkdir()
        paths = generate(work / "corpus", args.size_mb, args.files)
        total = sum(p.stat().st_size for p in paths)
        built = load_corpus(work / "corpus", cache_dir=work / "cache")
        assert built.cache == "built"
        hash_files(paths, "sha256")  # the files into the page cache: every method reads them warm
        methods = {
            "stat": lambda: stat_files(tuple(paths)),
            "lookup": lambda: load_corpus(work / "corpus", cache_dir=work / "cache"),
            "sha256": lambda: hash_files(paths, "sha256"),
            "blake2b": lambda: hash_files(paths, "blake2b"),
        }
        assert methods["lookup"]().cache == "hit"
        results = {}
        for name, fn in methods.items():
            seconds = timed(fn, args.repeats)
            results[name] = {"seconds": seconds, "median_s": common.median(seconds), "spread": common.spread(seconds)}
        base = results["stat"]["median_s"]
        for result in results.values():
            result["times_stat"] = result["median_s"] / base
            result["mb_per_s"] = total / 1e6 / result["median_s"]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(common.describe(info))
    common.print_table(
        f"deciding that a cached corpus of {total / 1e6:,.0f} MB in {len(paths)} files is unchanged (warm page cache)",
        ["method", "median ms", "spread", "x stat", "MB/s"],
        [
            [
                name,
                common.fmt(r["median_s"] * 1000, 2),
                f"{r['spread']:.0%}",
                common.fmt(r["times_stat"], 0),
                common.fmt(r["mb_per_s"], 0),
            ]
            for name, r in results.items()
        ],
    )
    if args.json:
        path = common.write_json(
            args.json, "cache_check", info, {**vars(args), "bytes": total, "command": " ".join(sys.argv)}, results
        )
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

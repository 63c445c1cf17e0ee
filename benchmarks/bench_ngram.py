"""Fitting and scoring the n-gram baseline: time and peak memory of an interpolated Kneser–Ney
20-gram on a novel-length text.

    python benchmarks/bench_ngram.py --text /path/to/input.txt [--size 3000000] [--order 20] [--json DIR]

The text (default: the embedded Tiny Shakespeare) is repeated until it is --size characters long.
A repeated text holds fewer distinct n-grams than a real novel of that length, so the run also
measures the worst case, --size characters drawn uniformly at random from the same vocabulary
(almost every n-gram of order 5 or more distinct). Each case: ``NGram.fit`` on the whole text, then
``log_probs`` on its last --score-chars characters (the size of a 10% validation split); the time
of each (best of --repeats; wall-clock, and CPU time, which a loaded machine inflates less) and the peak resident memory of the process above what it held before
(VmHWM, reset between phases), with the loss (in-sample: a timing run, not a quality figure).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import common
from charrnn.corpus import default_corpus_path, read_text
from charrnn.data import Vocab
from charrnn.ngram import NGram


def case(name: str, ids: np.ndarray, vocab_size: int, order: int, score_chars: int, repeats: int) -> dict:
    print(f"{name}: {len(ids):,} characters, order {order}", file=sys.stderr)
    fit_s, score_s, fit_cpu_s, score_cpu_s = [], [], [], []
    peak_fit = peak_score = 0.0
    loss = float("nan")
    n_grams: list[int] = []
    nbytes = 0
    for _ in range(repeats):
        common.reset_peak_rss()
        before = common.rss_mb() or 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        model = NGram.fit(ids, order, vocab_size)
        fit_s.append(time.perf_counter() - t0)
        fit_cpu_s.append(time.process_time() - c0)
        peak_fit = max(peak_fit, (common.peak_rss_mb() or 0.0) - before)
        common.reset_peak_rss()
        before = common.rss_mb() or 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        log_p = model.log_probs(ids[-score_chars:])
        score_s.append(time.perf_counter() - t0)
        score_cpu_s.append(time.process_time() - c0)
        peak_score = max(peak_score, (common.peak_rss_mb() or 0.0) - before)
        loss = float(-log_p[1:].mean())
        n_grams, nbytes = model.n_grams, model.nbytes
        del model, log_p
    return {
        "case": name,
        "n_chars": len(ids),
        "vocab_size": vocab_size,
        "order": order,
        "score_chars": score_chars,
        "fit_s": fit_s,
        "score_s": score_s,
        "fit_cpu_s": fit_cpu_s,
        "score_cpu_s": score_cpu_s,
        "fit_peak_rss_mb": round(peak_fit, 1),
        "score_peak_rss_mb": round(peak_score, 1),
        "table_mb": round(nbytes / 2**20, 1),
        "n_grams_per_order": n_grams,
        "in_sample_loss_nats": loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, default=None, help="The text to repeat (default: the embedded corpus).")
    parser.add_argument("--size", type=int, default=3_000_000, help="Characters to fit on.")
    parser.add_argument("--order", type=int, default=20)
    parser.add_argument("--score-chars", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-random", action="store_true", help="Skip the random-text worst case.")
    parser.add_argument("--quick", action="store_true", help="A smoke run: 100,000 characters, order 5, once.")
    parser.add_argument("--json", metavar="PATH", help=common.json_help())
    args = parser.parse_args()
    if args.quick:
        args.size, args.order, args.score_chars, args.repeats = 100_000, 5, 10_000, 1

    text = read_text(args.text if args.text is not None else default_corpus_path())
    text = (text * (args.size // len(text) + 1))[: args.size]
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text).astype(np.int64)
    info = common.machine()
    results = [
        case(f"{args.text or 'embedded corpus'} repeated", ids, len(vocab), args.order, args.score_chars, args.repeats)
    ]
    if not args.no_random:
        random_ids = np.random.default_rng(0).integers(0, len(vocab), args.size)
        results.append(case("uniform random", random_ids, len(vocab), args.order, args.score_chars, args.repeats))
    info["load_avg_after"] = common.machine()["load_avg_1_5_15"]

    print(common.describe(info))
    common.print_table(
        f"interpolated Kneser-Ney {args.order}-gram: fit on the text, score its last {args.score_chars:,} characters",
        [
            "text",
            "chars",
            "fit s (best)",
            "fit CPU s",
            "score s (best)",
            "score CPU s",
            "fit peak MB",
            "score peak MB",
            "tables MB",
            "loss (in-sample)",
        ],
        [
            [
                r["case"],
                common.fmt(r["n_chars"]),
                common.fmt(min(r["fit_s"]), 1),
                common.fmt(min(r["fit_cpu_s"]), 1),
                common.fmt(min(r["score_s"]), 2),
                common.fmt(min(r["score_cpu_s"]), 2),
                common.fmt(r["fit_peak_rss_mb"]),
                common.fmt(r["score_peak_rss_mb"]),
                common.fmt(r["table_mb"]),
                common.fmt(r["in_sample_loss_nats"], 3),
            ]
            for r in results
        ],
    )
    if args.json:
        path = common.write_json(args.json, "ngram", info, vars(args) | {"text": str(args.text)}, results)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

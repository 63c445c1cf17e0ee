"""The exported HTML page in headless Chromium, and what --half costs in loss.

  page     `charrnn export CKPT page.html [--half]` opened in headless Chromium (Playwright, with
           /usr/bin/chromium): the file's size, how long the page takes to start (navigation to
           ready: the page parsed, its weights decoded), and its characters per second, greedy and
           sampled (temperature 0.8), through the page's own Generate button
  api      `charrnn.load(CKPT).sample(...)` in this process, the same length: the ratio page/api is
           measured in the same run, so it says more than either number on a busy machine
  half     the validation loss (nats/char) of the model with float32 weights and with the float16
           matrices --half stores (charrnn.export.fused.halved), on the checkpoint's own split

The speed needs no training (an untrained LSTM 2x512 runs exactly as fast as a trained one); the
cost of --half does: without --checkpoint, the default model is trained for --train-time on the
embedded Tiny Shakespeare first.
Usage: python benchmarks/bench_export.py --help
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import charrnn
import common
from charrnn import checkpoint as ckpt_io
from charrnn.export import export
from charrnn.export.fused import halved

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def make_checkpoint(folder: Path, args) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    note(f"training the default model for {args.train_time} on Tiny Shakespeare ...")
    charrnn.train(None, out_dir=folder, max_time=args.train_time, sample_length=0, device="cpu", force=True)
    return folder / "best.pt"


def time_page(browser, path: Path, args) -> dict:
    """Start-up (ms) and characters per second, greedy and sampled, each a median of the repeats."""
    startups, greedy, sampled = [], [], []
    for _ in range(args.repeats):
        context = browser.new_context()
        page = context.new_page()
        page.goto(path.resolve().as_uri())
        page.wait_for_selector("body[data-state=ready]", timeout=300_000)
        startups.append(page.evaluate("window.charrnnPage.startup_ms"))
        for argmax, rates in ((True, greedy), (False, sampled)):
            page.fill("#prime", "ROMEO:\n")
            page.fill("#length", str(args.length))
            page.fill("#seed", "1")
            page.set_checked("#argmax", argmax)
            page.click("#generate")
            page.wait_for_selector("body[data-state=done]", timeout=600_000)
            rates.append(page.evaluate("window.charrnnPage.last.chars_per_s"))
        context.close()
    return {
        "startup_ms": common.median(startups),
        "startup_ms_all": startups,
        "greedy_chars_per_s": common.median(greedy),
        "greedy_chars_per_s_all": greedy,
        "greedy_spread": common.spread(greedy),
        "sampled_chars_per_s": common.median(sampled),
        "sampled_chars_per_s_all": sampled,
    }


def time_api(ckpt_path: Path, args) -> float:
    model = charrnn.load(ckpt_path, device="cpu")
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model.sample(args.length, prime="ROMEO:\n", argmax=True)
        rates.append(args.length / (time.perf_counter() - t0))
    return common.median(rates)


def half_cost(ckpt_path: Path, args) -> dict:
    ckpt = ckpt_io.load(ckpt_path)
    full = charrnn.evaluate(charrnn.Model(ckpt, "cpu"), batch_size=32, seq_len=256)
    rounded = {k: v.float() for k, v in halved(ckpt.weights).items()}
    half_ckpt = dataclasses.replace(ckpt, weights=rounded)
    half = charrnn.evaluate(charrnn.Model(half_ckpt, "cpu"), batch_size=32, seq_len=256)
    return {
        "text": full.text,
        "n_chars": full.n_chars,
        "float32_nats": full.nats,
        "float16_nats": half.nats,
        "cost_nats": half.nats - full.nats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="a trained checkpoint (default: train the default model first)")
    parser.add_argument("--train-time", default="3m", help="how long to train without --checkpoint (default 3m)")
    parser.add_argument("--length", type=int, default=2000, help="characters per timed generation (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="page loads and generations per variant (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training, eval and the api")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run: tiny model, tiny lengths")
    parser.add_argument("--json", help=common.json_help())
    args = parser.parse_args()
    if args.quick:
        args.length, args.repeats, args.train_time = 100, 1, "5s"
        if args.threads is None:
            args.threads = 1
    common.set_threads(args.threads)
    from playwright.sync_api import sync_playwright  # the test extra; only this benchmark needs it

    info = common.machine()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt_path = make_checkpoint(folder / "run", args)
        cfg = ckpt_io.load(ckpt_path).model_config
        results["model"] = cfg.to_dict()
        results["api_greedy_chars_per_s"] = time_api(ckpt_path, args)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for half in (False, True):
                page = folder / ("half.html" if half else "page.html")
                done = export(ckpt_path, page, half=half)
                note(f"timing {page.name} ({done.n_bytes / 1e6:.1f} MB) ...")
                row = {"n_bytes": done.n_bytes, **time_page(browser, page, args)}
                row["page_over_api"] = row["greedy_chars_per_s"] / results["api_greedy_chars_per_s"]
                results["half" if half else "float32"] = row
            browser.close()
        note("evaluating float32 and float16 weights ...")
        results["half_cost"] = half_cost(ckpt_path, args)
    info["load_avg_1_5_15_end"] = common.machine()["load_avg_1_5_15"]

    print(common.describe(info))
    c = results["model"]
    rows = []
    for name in ("float32", "half"):
        r = results[name]
        rows.append(
            [
                name,
                common.fmt(r["n_bytes"] / 1e6, 2),
                common.fmt(r["startup_ms"]),
                common.fmt(r["greedy_chars_per_s"]),
                common.fmt(r["sampled_chars_per_s"]),
                common.fmt(r["page_over_api"], 3),
                f"{r['greedy_spread']:.0%}",
            ]
        )
    common.print_table(
        f"page: {c['cell'].upper()} {c['num_layers']}x{c['hidden_size']}, vocab {c['vocab_size']}, "
        f"{args.length} characters; api greedy {results['api_greedy_chars_per_s']:,.0f} chars/s",
        ["weights", "MB", "start ms", "greedy c/s", "sampled c/s", "page/api", "spread"],
        rows,
    )
    h = results["half_cost"]
    common.print_table(
        f"--half: validation loss on the {h['text']} ({h['n_chars']:,} characters)",
        ["float32 nats", "float16 nats", "cost nats"],
        [[f"{h['float32_nats']:.6f}", f"{h['float16_nats']:.6f}", f"{h['cost_nats']:+.6f}"]],
    )
    if args.json:
        path = common.write_json(args.json, "export", info, vars(args), results)
        note(f"wrote {path}")


if __name__ == "__main__":
    main()

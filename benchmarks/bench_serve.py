"""`charrnn serve` under load: the real server in its own process, clients on loopback.

  alone     one client streams --length characters: chars/s from sending the request to receiving
            the last character, and the time to the first character (empty prime)
  sample    the same model's one-stream speed through `charrnn.load(...).sample` (what `charrnn
            sample` runs; benchmarks/bench_api.py ties the two), timed as the difference between a
            short and a long sample so start-up cancels out
  batched   --clients clients at once, each streaming --client-length characters: total chars/s, and
            the same for one such client alone, so the ratio is measured in the same run
  unserved  the same --clients streams through the server's scheduler in this process, with no HTTP,
            no event loop at work and no clients: what the batch makes when nothing shares its cores
  soak      --requests requests of mixed sizes (plain and streamed, 1-3 samples, some walking away),
            --soak-clients at a time: the server's RSS after warm-up and at the end, and the streams
            still in flight afterwards (should be 0)

The model is an LSTM --num-layers x --hidden-size with Tiny Shakespeare's vocabulary and untrained
weights: the speed of a step does not depend on what the weights learned.
Usage: python benchmarks/bench_serve.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

import charrnn
import common
from charrnn import checkpoint as ckpt_io
from charrnn.model import CharRNN, ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(folder: Path, args) -> Path:
    text = (ROOT / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    vocab = "".join(sorted(set(text)))
    cfg = ModelConfig(vocab_size=len(vocab), cell="lstm", num_layers=args.num_layers, hidden_size=args.hidden_size)
    torch.manual_seed(0)
    ckpt = ckpt_io.Checkpoint(path=None, model_config=cfg, vocab=vocab, weights=CharRNN(cfg).state_dict())
    return ckpt_io.save(ckpt, folder / "model.pt")


class Server:
    """`python -m charrnn serve CKPT --port 0` in a child process; its URL read from its stderr."""

    def __init__(self, ckpt: Path, args):
        cmd = [sys.executable, "-m", "charrnn", "serve", str(ckpt), "--port", "0", "-q", "--max-streams", "256"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stderr is not None
        self.url = None
        for line in self.proc.stderr:
            found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            if found:
                self.url = found.group(1)
                break
        if self.url is None:
            raise SystemExit("the server did not start")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep its pipe drained
        for _ in range(200):
            try:
                httpx.get(self.url + "/healthz", timeout=5)
                return
            except httpx.TransportError:
                time.sleep(0.05)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def stream(client: httpx.AsyncClient, body: dict, walk_away: bool = False) -> dict:
    """One streamed request: when it was sent, its first and last character, how many came."""
    sent = time.perf_counter()
    first = last = None
    n = 0
    async with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            return {"status": r.status_code}
        name = None
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name == "text":
                now = time.perf_counter()
                first = first or now
                last = now
                n += len(json.loads(line[6:])["text"])
                if walk_away:
                    break
    return {"status": 200, "sent": sent, "first": first, "last": last, "n_chars": n}


async def alone(url: str, length: int, repeats: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await stream(client, {"length": 50})  # warm-up
        runs = [await stream(client, {"length": length, "seed": i}) for i in range(repeats)]
    rates = [r["n_chars"] / (r["last"] - r["sent"]) for r in runs]  # request to last character: latency included
    first_ms = [(r["first"] - r["sent"]) * 1000 for r in runs]
    return {
        "chars_per_s": common.median(rates),
        "spread": common.spread(rates),
        "first_char_ms": common.median(first_ms),
        "first_char_ms_max": max(first_ms),
        "runs": runs,
    }


async def batched(url: str, clients: int, length: int, repeats: int) -> dict:
    out = {"alone_chars_per_s": [], "batched_chars_per_s": []}
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients + 8)) as client:
        await stream(client, {"length": 50})
        for i in range(repeats):  # take turns, so drift hits both alike
            t0 = time.perf_counter()
            one = await stream(client, {"length": length, "seed": i})
            out["alone_chars_per_s"].append(one["n_chars"] / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            runs = await asyncio.gather(
                *(stream(client, {"length": length, "seed": i * 1000 + k}) for k in range(clients))
            )
            total = sum(r["n_chars"] for r in runs)
            out["batched_chars_per_s"].append(total / (time.perf_counter() - t0))
    a, b = common.median(out["alone_chars_per_s"]), common.median(out["batched_chars_per_s"])
    return {**out, "alone": a, "batched": b, "ratio": b / a}


async def soak(server: Server, requests: int, concurrency: int, warmup: int) -> dict:
    rng = random.Random(0)
    done = 0
    rss: list[tuple[int, float]] = []
    statuses: dict[int, int] = {}

    async def one(client):
        nonlocal done
        kind = rng.random()
        body = {"length": rng.randint(1, 60), "num_samples": rng.choice([1, 1, 1, 2, 3])}
        if kind < 0.45:
            r = await client.post("/v1/generate", json=body)
            status = r.status_code
        elif kind < 0.9:
            status = (await stream(client, body))["status"]
        else:
            status = (await stream(client, {**body, "length": 2000}, walk_away=True))["status"]
        statuses[status] = statuses.get(status, 0) + 1
        done += 1
        if done % 500 == 0 or done == warmup:
            rss.append((done, server.rss_mb()))

    async def worker(client, n):
        for _ in range(n):
            await one(client)

    t0 = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=server.url, timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)
    ) as c:
        share = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
        await asyncio.gather(*(worker(c, n) for n in share))
        for _ in range(100):
            health = (await c.get("/healthz")).json()
            if health["active_streams"] == 0:
                break
            await asyncio.sleep(0.1)
    after_warmup = next(v for n, v in rss if n >= warmup)
    final = server.rss_mb()
    return {
        "requests": done,
        "elapsed_s": time.perf_counter() - t0,
        "statuses": statuses,
        "rss_mb": rss,
        "rss_after_warmup_mb": after_warmup,
        "rss_final_mb": final,
        "rss_growth": final / after_warmup - 1,
        "active_streams_after": health["active_streams"],
    }


def unserved_speed(ckpt: Path, clients: int, length: int, repeats: int) -> float:
    """Total chars/s of ``clients`` streams of ``length`` through the server's ``Scheduler``, without HTTP."""
    from charrnn.sample import Draw
    from charrnn.serve.scheduler import Scheduler, Stream, seed_generator

    model = charrnn.load(ckpt, device="cpu")
    scheduler = Scheduler("bench", model.module, model.vocab.chars)
    scheduler.start()
    loop = asyncio.new_event_loop()  # a stream wakes its loop; this one runs but has nothing to do
    threading.Thread(target=loop.run_forever, daemon=True).start()
    rates = []
    done = threading.Semaphore(0)  # released once per stream that ends
    try:
        for repeat in range(repeats + 1):  # the first is a warm-up
            streams = [
                Stream(
                    [0],
                    length=length,
                    num_samples=1,
                    draw=Draw(1, len(model.vocab), generator=seed_generator(repeat * 1000 + k, scheduler.device)),
                    stops=[],
                    surprisal=False,
                    units=[],
                    what="h",
                    deadline_s=600,
                    loop=loop,
                    on_finish=lambda stream: done.release(),
                )
                for k in range(clients)
            ]
            t0 = time.perf_counter()
            for stream in streams:
                scheduler.submit(stream)
            for _ in streams:
                done.acquire()
            elapsed = time.perf_counter() - t0
            if repeat:
                rates.append(sum(len(s.samples[0].chars) for s in streams) / elapsed)
    finally:
        scheduler.close()
        scheduler.join(30)
        loop.call_soon_threadsafe(loop.stop)
    return common.median(rates)


def sample_speed(ckpt: Path, short: int, long: int, repeats: int) -> float:
    model = charrnn.load(ckpt, device="cpu")
    model.sample(short, seed=1)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.sample(short, seed=1)
        t1 = time.perf_counter()
        model.sample(long, seed=1)
        t2 = time.perf_counter()
        rates.append((long - short) / ((t2 - t1) - (t1 - t0)))
    return common.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--length", type=int, default=3000, help="Characters of the lone client's stream.")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--client-length", type=int, default=500)
    parser.add_argument("--requests", type=int, default=10_000, help="Requests in the soak.")
    parser.add_argument("--soak-clients", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for the server and for the sample baseline (default: theirs).",
    )
    parser.add_argument("--quick", action="store_true", help="A smoke run: a small model, few requests.")
    parser.add_argument("--json", default=None, metavar="PATH", help=common.json_help())
    args = parser.parse_args()
    if args.quick:
        args.num_layers, args.hidden_size, args.length, args.clients = 1, 64, 300, 8
        args.client_length, args.requests, args.soak_clients, args.repeats = 100, 300, 8, 1
    common.set_threads(args.threads)
    info = common.machine()
    print(common.describe(info), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp), args)
        print("timing charrnn sample's one-stream speed...", file=sys.stderr)
        sampled = sample_speed(ckpt, 200, 200 + args.length, args.repeats)
        print(f"{args.clients} streams through the scheduler, no HTTP...", file=sys.stderr)
        unserved = unserved_speed(ckpt, args.clients, args.client_length, args.repeats)
        server = Server(ckpt, args)
        try:
            print("one client alone...", file=sys.stderr)
            lone = asyncio.run(alone(server.url, args.length, args.repeats))
            print(f"{args.clients} clients at once...", file=sys.stderr)
            many = asyncio.run(batched(server.url, args.clients, args.client_length, args.repeats))
            print(f"{args.requests} requests of mixed sizes...", file=sys.stderr)
            soaked = asyncio.run(soak(server, args.requests, args.soak_clients, warmup=min(1000, args.requests // 3)))
        finally:
            server.close()
    model = f"LSTM {args.num_layers}x{args.hidden_size}"
    rows = [
        ["charrnn sample, one stream (chars/s)", common.fmt(sampled)],
        ["one client alone (chars/s)", common.fmt(lone["chars_per_s"])],
        ["  / charrnn sample", f"{lone['chars_per_s'] / sampled:.2f}"],
        ["  first character (ms, median / max)", f"{lone['first_char_ms']:.1f} / {lone['first_char_ms_max']:.1f}"],
        [f"one client of {args.client_length} (chars/s)", common.fmt(many["alone"])],
        [f"{args.clients} clients of {args.client_length} (total chars/s)", common.fmt(many["batched"])],
        ["  / one client", f"{many['ratio']:.2f}"],
        ["  the same streams unserved (no HTTP; chars/s)", common.fmt(unserved)],
        ["  served / unserved", f"{many['batched'] / unserved:.2f}"],
        [f"soak: {soaked['requests']} requests (s)", f"{soaked['elapsed_s']:.1f}"],
        [
            "  server RSS after warm-up / end (MiB)",
            f"{soaked['rss_after_warmup_mb']:.1f} / {soaked['rss_final_mb']:.1f}",
        ],
        ["  RSS growth", f"{soaked['rss_growth']:+.1%}"],
        ["  streams in flight afterwards", str(soaked["active_streams_after"])],
        ["  statuses", " ".join(f"{k}:{v}" for k, v in sorted(soaked["statuses"].items()))],
    ]
    common.print_table(f"charrnn serve, {model} on the CPU, loopback (median of {args.repeats})", ["", "value"], rows)
    if args.json:
        for run in lone["runs"]:
            for key in ("sent", "first", "last"):
                run.pop(key, None)
        path = common.write_json(
            args.json,
            "serve",
            info,
            {**vars(args), "command": " ".join(sys.argv), "load_avg_at_end": list(os.getloadavg())},
            {
                "sample_chars_per_s": sampled,
                "unserved_chars_per_s": unserved,
                "alone": lone,
                "batched": many,
                "soak": soaked,
            },
        )
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

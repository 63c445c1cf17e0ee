"""The server under load and under SIGTERM: the real server on a loopback port, bounded in time."""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serve_util import Served, events, tiny_checkpoint, wait_idle

from charrnn.serve import Limits

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

LOAD_CLIENTS = 64
LOAD_BUDGET_S = 60  # the whole load test, at most


def _one_client(url: str, seed: int, stop_at: float, statuses: list, problems: list) -> None:
    """A few requests of every kind, in a random order: valid, streamed, invalid, and walking away."""
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(4):
            if time.monotonic() > stop_at:
                return
            kind = rng.choice(["plain", "stream", "invalid", "walk-away", "score"])
            try:
                if kind == "plain":
                    r = client.post(
                        "/v1/generate", json={"length": rng.randint(20, 300), "num_samples": rng.randint(1, 3)}
                    )
                    statuses.append(r.status_code)
                elif kind == "stream":
                    with client.stream(
                        "POST", "/v1/generate", json={"length": rng.randint(20, 300), "stream": True}
                    ) as r:
                        statuses.append(r.status_code)
                        got = events(r.iter_lines()) if r.status_code == 200 else []
                        if r.status_code == 200 and got[-1][0] != "end":
                            problems.append(f"stream ended without an end event: {got[-1:]}")
                elif kind == "invalid":
                    body = rng.choice([b"{", b'{"length": -1}', b'{"prime": "~~~"}', b'{"what": 1}', b'{"model": "x"}'])
                    r = client.post("/v1/generate", content=body)
                    statuses.append(r.status_code)
                    if r.status_code < 500 and "error" not in r.json():
                        problems.append(f"no error body for {body!r}")
                elif kind == "walk-away":
                    with client.stream("POST", "/v1/generate", json={"length": 5000, "stream": True}) as r:
                        statuses.append(r.status_code)
                        for line in r.iter_lines():
                            if line.startswith("event: text"):
                                break
                else:
                    r = client.post("/v1/score", json={"text": "the cat sees the mat. " * rng.randint(1, 20)})
                    statuses.append(r.status_code)
            except httpx.HTTPError as exc:
                problems.append(f"{kind}: {type(exc).__name__}: {exc}")


def test_64_clients_mixing_valid_invalid_and_walking_away(tmp_path):
    server = Served({"m": tiny_checkpoint(tmp_path / "m.pt")}, Limits(max_streams=48, max_length=5000))
    try:
        statuses: list[int] = []
        problems: list[str] = []
        stop_at = time.monotonic() + LOAD_BUDGET_S - 15
        clients = [
            threading.Thread(target=_one_client, args=(server.url, seed, stop_at, statuses, problems))
            for seed in range(LOAD_CLIENTS)
        ]
        for c in clients:
            c.start()
        for c in clients:
            c.join(max(1.0, stop_at + 10 - time.monotonic()))
        assert not any(c.is_alive() for c in clients), "a client hung"
        assert problems == []
        assert len(statuses) > LOAD_CLIENTS and all(s < 500 for s in statuses), sorted(set(statuses))
        assert 200 in statuses and 422 in statuses
        assert wait_idle(server) == 0 and server.state.capacity.in_use == 0
        after = server.client.post("/v1/generate", json={"length": 10, "seed": 1})
        assert after.status_code == 200 and len(after.json()["text"][0]) == 10
    finally:
        server.close()


def _read_lines(pipe, lines: queue.Queue) -> None:
    for line in iter(pipe.readline, ""):
        lines.put(line)
    lines.put(None)


def test_sigterm_cancels_the_streams_in_flight_and_exits_143(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "m.pt", hidden_size=64)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "serve", str(ckpt), "--port", "0", "--threads", "1", "--max-length", "50000"],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    stderr_lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stderr, stderr_lines), daemon=True).start()
    seen = []
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = stderr_lines.get(timeout=60)
            assert line is not None, "".join(seen)
            seen.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            url = found.group(1) if found else None
        assert url is not None, "".join(seen)
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(200):
                try:
                    client.get("/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            with client.stream("POST", "/v1/generate", json={"length": 50_000, "stream": True, "num_samples": 2}) as r:
                lines = r.iter_lines()
                text_events = 0
                collected = []
                for line in lines:
                    collected.append(line)
                    text_events += line.startswith("event: text")
                    if text_events == 3:
                        break
                signalled = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                collected.extend(lines)
            got = events(collected)
        ends = [d for name, d in got if name == "end"]
        assert sorted(d["sample"] for d in ends) == [0, 1]
        assert all(d["reason"] == "cancelled" and 0 < d["n_chars"] < 50_000 for d in ends)
        assert proc.wait(timeout=20) == 143
        assert time.monotonic() - signalled < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while (line := stderr_lines.get(timeout=10)) is not None:
        seen.append(line)
    log = "".join(seen)
    assert "Traceback" not in log and "Error" not in log, log

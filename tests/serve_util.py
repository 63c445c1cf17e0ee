"""Shared by the server's tests: a tiny checkpoint, and the real server (uvicorn) on a free loopback port."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn

from charrnn import checkpoint as ckpt_io
from charrnn.api import load
from charrnn.cli.serve import listen
from charrnn.model import CharRNN, ModelConfig
from charrnn.serve import Limits, create_app

VOCAB = "\n !\"'(),-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def tiny_checkpoint(path: Path, cell: str = "lstm", hidden_size: int = 32, seed: int = 0) -> Path:
    """An untrained two-layer model: enough for the server, which never looks at what the weights learned."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=len(VOCAB), cell=cell, num_layers=2, hidden_size=hidden_size, embedding_size=16)
    return ckpt_io.save(
        ckpt_io.Checkpoint(path=None, model_config=cfg, vocab=VOCAB, weights=CharRNN(cfg).state_dict()), path
    )


class Served:
    """``create_app`` under uvicorn in a thread, on 127.0.0.1 and a port the system picked."""

    def __init__(self, checkpoints: dict[str, Path], limits: Limits | None = None):
        app = create_app({name: load(path, device="cpu") for name, path in checkpoints.items()}, limits)
        self.state = app.state.server
        sock = listen("127.0.0.1", 0)  # the socket charrnn serve listens on
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the server did not stop"


def events(lines) -> list[tuple[str, dict]]:
    """Server-sent events from an iterator of lines: [(name, data), ...]."""
    out, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[len("data: ") :])))
    return out


def wait_idle(served: Served, timeout: float = 10.0) -> int:
    """Poll /healthz until no stream is in flight (or ``timeout``); the last count seen."""
    deadline = time.monotonic() + timeout
    while True:
        active = served.client.get("/healthz").json()["active_streams"]
        if active == 0 or time.monotonic() > deadline:
            return active
        time.sleep(0.05)

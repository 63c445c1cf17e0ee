"""The server's batch, driven step by step without HTTP: many requests with different options, joining
and leaving at different steps, each get the text ``charrnn.load(...).sample`` writes for them (which
tests/test_api.py ties to ``charrnn sample``); and the listening socket sends each event at once."""

from __future__ import annotations

import asyncio
import socket

import pytest
import torch
from serve_util import tiny_checkpoint

from charrnn.api import load
from charrnn.cli.serve import listen
from charrnn.sample import Draw
from charrnn.serve.scheduler import Scheduler, Stream, seed_generator

pytestmark = pytest.mark.usefixtures("one_thread")

# Requests with options alike and unalike: two pairs share their options (and are picked together),
# one stream has three samples that stop at different steps on a stop string.
REQUESTS = [
    {"prime": "ROMEO:", "length": 40, "seed": 1, "temperature": 1.0},
    {"prime": "a", "length": 25, "seed": 2, "temperature": 0.7},
    {"prime": "The ", "length": 33, "seed": 3, "temperature": 1.0, "top_k": 5},
    {"prime": "b", "length": 30, "seed": 4, "top_p": 0.9, "temperature": 1.3},
    {"prime": "Hark", "length": 20, "argmax": True},
    {"prime": "e", "length": 45, "seed": 5, "temperature": 1.0, "num_samples": 4, "stop_at": ["e", "o"]},
    {"prime": "x", "length": 28, "seed": 6, "temperature": 0.7},
    {"prime": "q", "length": 38, "seed": 7, "temperature": 1.0},
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load(tiny_checkpoint(tmp_path_factory.mktemp("batching") / "lstm.pt", hidden_size=24), device="cpu")


def make_stream(model, loop, request: dict) -> Stream:
    options = {k: request[k] for k in ("temperature", "top_k", "top_p", "argmax") if k in request}
    n = request.get("num_samples", 1)
    draw = Draw(n, len(model.vocab), generator=seed_generator(request.get("seed", 0), torch.device("cpu")), **options)
    return Stream(
        [model.vocab.chars.index(c) for c in request["prime"]],
        length=request["length"],
        num_samples=n,
        draw=draw,
        stops=request.get("stop_at", []),
        surprisal=False,
        units=[],
        what="h",
        deadline_s=600,
        loop=loop,
    )


def run(model, loop, requests: list[dict], join_at: list[int]) -> list[list[str]]:
    """Each request's samples' texts, the prime and a stop string they ended on included (as
    ``sample`` gives them), the requests joining the batch at the given steps."""
    scheduler = Scheduler("m", model.module, model.vocab.chars)
    streams = [make_stream(model, loop, request) for request in requests]
    step = 0
    while step == 0 or scheduler.rows or any(at >= step for at in join_at):
        for stream, at in zip(streams, join_at):
            if at == step:
                scheduler._admit(stream)
        if scheduler.rows:
            scheduler._step()
        step += 1
        assert step < 1000, "the batch never emptied"
    assert all(stream.finished for stream in streams)
    texts = []
    for request, stream in zip(requests, streams):
        texts.append([])
        for s in stream.samples:
            written = "".join(s.chars)  # the scheduler cuts a stop string off (s.end); sample keeps it
            stop = next(t for t in request["stop_at"] if written[s.end :].startswith(t)) if s.reason == "stop" else ""
            texts[-1].append(request["prime"] + written[: s.end] + stop)
    return texts


def reference(model, request: dict) -> list[str]:
    options = {k: v for k, v in request.items() if k != "num_samples"}
    n = request.get("num_samples", 1)
    text = model.sample(**options, num_samples=n)
    return [text] if n == 1 else text


def test_requests_batched_together_get_the_text_each_gets_alone(model):
    loop = asyncio.new_event_loop()  # never run: the wake-ups queue up on it unseen
    try:
        alone = [run(model, loop, [request], [0])[0] for request in REQUESTS]
        together = run(model, loop, REQUESTS, [0, 0, 3, 3, 3, 7, 12, 12])
    finally:
        loop.close()
    want = [reference(model, request) for request in REQUESTS]
    assert alone == want
    assert together == want
    stopped = want[5]
    assert len({len(text) for text in stopped}) == 4, "the samples should stop at different steps"
    assert want[1] != want[6], "different seeds, different text"


def test_the_listening_socket_sends_small_writes_at_once():
    """asyncio turns Nagle's algorithm off only on sockets made as TCP: else each event of a stream waits
    for the client's delayed acknowledgement of the one before (about 40 ms on Linux)."""

    async def nodelay_of_a_connection() -> int:
        sock = listen("127.0.0.1", 0)
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport):
                raw = transport.get_extra_info("socket")
                accepted.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Protocol, sock=sock)
        try:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(accepted, 10)
            writer.close()
            return value
        finally:
            server.close()

    assert asyncio.run(nodelay_of_a_connection()) != 0

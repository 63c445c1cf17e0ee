"""The HTTP side of ``charrnn serve``: a Starlette app over one ``Scheduler`` per model.

Routes (docs/serve.md documents their bodies):

    GET  /             the playground page
    GET  /healthz      status, models, samples in flight
    GET  /v1/models    per model, the facts ``charrnn inspect --json`` gives
    POST /v1/generate  text, or with "stream": true a text/event-stream of it
    POST /v1/score     nats/char, bits/char and per-character surprisal of a text (and unit traces)
    POST /v1/units     the units that track a feature best, ranked as ``visualize --find`` ranks them

Every refusal is a 4xx with ``{"error": {"message": ..., "field": ...}}``. With a token set, every
``/v1/`` request must carry it as ``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from charrnn import visualize as viz
from charrnn.api import Model
from charrnn.describe import describe
from charrnn.errors import CharRNNError, DataError
from charrnn.features import feature_values
from charrnn.sample import Draw
from charrnn.serve import page
from charrnn.serve.limits import Capacity, Limits, token_matches
from charrnn.serve.scheduler import Scheduler, ServerStopping, Stream, Update, seed_generator
from charrnn.serve.validate import (
    GenerateRequest,
    RequestError,
    ServedModel,
    generate_request,
    parse_json,
    score_request,
    units_request,
)

UNITS_SAMPLE_CHARS = 1500  # the model's own writing that /v1/units ranks on when given no text
UNITS_CACHE = 64  # rankings kept per server
RETRY_AFTER_S = 1


@dataclass
class Served:
    """One model the server serves: the loaded ``Model``, its scheduler, and a lock for whole-text work."""

    name: str
    model: Model
    scheduler: Scheduler
    info: dict
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def served(self) -> ServedModel:
        return ServedModel(self.name, self.model.config, self.model.vocab)


class ServerState:
    """Everything the routes share: the models, the limits, the samples in flight."""

    def __init__(self, models: dict[str, Model], limits: Limits):
        if not models:
            raise ValueError("serve at least one model")
        self.limits = limits
        self.capacity = Capacity(limits.max_streams)
        self.models = {
            name: Served(name, m, Scheduler(name, m.module, m.vocab.chars), {"name": name, **describe(m.checkpoint)})
            for name, m in models.items()
        }
        self.validation = {name: s.served for name, s in self.models.items()}
        self.stopping = False
        self.units_cache: dict[tuple, dict] = {}

    def start(self) -> None:
        for served in self.models.values():
            served.scheduler.start()

    def stop(self) -> None:
        """Stop taking streams and end those in flight with "cancelled" (returns at once)."""
        self.stopping = True
        for served in self.models.values():
            served.scheduler.close()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for served in self.models.values():
            served.scheduler.join(max(0.0, deadline - time.monotonic()))


def error(
    status: int, message: str, field: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "field": field}}, status_code=status, headers=headers)


def _finite(values) -> list:
    """Floats for JSON, with NaN (no prediction) as null."""
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]


async def read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object, refusing more than ``limit`` bytes (413) before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the body is {declared} bytes; this server takes at most {limit} (--max-body)", None, 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(
                f"the body is over {limit} bytes; this server takes at most {limit} (--max-body)", None, 413
            )
    return parse_json(bytes(body))


def authorised(request: Request, limits: Limits) -> bool:
    return limits.token is None or token_matches(request.headers.get("authorization"), limits.token)


def make_stream(state: ServerState, req: GenerateRequest) -> Stream:
    served = state.models[req.model]
    draw = Draw(
        req.num_samples,
        len(served.model.vocab),
        temperature=req.temperature,
        top_k=req.top_k,
        argmax=req.argmax,
        generator=seed_generator(req.seed, served.scheduler.device),
    )
    return Stream(
        req.ids,
        length=req.length,
        num_samples=req.num_samples,
        draw=draw,
        stops=req.stop,
        surprisal=req.surprisal,
        units=req.units,
        what=req.what,
        deadline_s=state.limits.deadline_s,
        loop=asyncio.get_running_loop(),
        on_finish=lambda stream: state.capacity.release(stream.num_samples),
    )


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _text_event(update: Update) -> dict:
    data: dict = {"sample": update.sample, "text": update.text}
    if update.surprisal_bits:
        data["surprisal_bits"] = update.surprisal_bits
        data["top"] = update.top
    if update.units:
        data["units"] = update.units
    return data


async def _watch_disconnect(request: Request, stream: Stream) -> None:
    """Mark ``stream`` cancelled when its client goes away; the scheduler frees its rows at the next step."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            stream.cancelled = True
            return


class EventStream(Response):
    """The ``text/event-stream`` of one generation: ``start``, ``text`` events as the characters come,
    one ``end`` event per sample. A client that goes away cancels the stream."""

    def __init__(self, request: Request, stream: Stream, start: dict):
        self.status_code, self.background = 200, None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # proxies: pass each event on at once
        ]
        self.request, self.stream, self.start = request, stream, start

    async def __call__(self, scope, receive, send) -> None:
        stream = self.stream
        watcher = asyncio.create_task(_watch_disconnect(self.request, stream))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": _event("start", self.start), "more_body": True})
            async for updates in stream.updates():
                chunk = b"".join(
                    (_event("text", _text_event(u)) if u.text else b"") + (_event("end", u.end) if u.end else b"")
                    for u in updates
                )
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the connection broke under us
            stream.cancelled = True
        finally:
            watcher.cancel()
            if not stream.finished:
                stream.cancelled = True


async def generate(request: Request) -> Response:
    state: ServerState = request.app.state.server
    req = generate_request(await read_json(request, state.limits.max_body_bytes), state.validation, state.limits)
    if state.stopping:
        return error(503, "the server is shutting down; try again once it is back", None)
    if not state.capacity.reserve(req.num_samples):
        return error(
            429,
            f"the server is busy: {state.capacity.in_use} of {state.limits.max_streams} streams are in flight "
            f"(--max-streams); retry after {RETRY_AFTER_S} s",
            "num_samples" if req.num_samples > 1 else None,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    stream = make_stream(state, req)
    try:
        state.models[req.model].scheduler.submit(stream)
    except ServerStopping:
        state.capacity.release(req.num_samples)
        return error(503, "the server is shutting down; try again once it is back", None)
    start = {"model": req.model, "prime": req.prime, "num_samples": req.num_samples, "length": req.length}
    if req.stream:
        return EventStream(request, stream, start)
    watcher = asyncio.create_task(_watch_disconnect(request, stream))
    texts = ["" for _ in range(req.num_samples)]
    ends: list[dict] = [{} for _ in range(req.num_samples)]
    try:
        async for updates in stream.updates():
            for u in updates:
                texts[u.sample] += u.text
                if u.end:
                    ends[u.sample] = u.end
    finally:
        watcher.cancel()
        if not stream.finished:
            stream.cancelled = True
    return JSONResponse({**start, "text": [req.prime + t for t in texts], "samples": ends})


def _trace(served: Served, text: str, units: list[tuple[int, int]], what: str) -> list[list[float]]:
    """Per character of ``text``, the value of each (layer, unit) after reading it (visualize's probes)."""
    by_layer: dict[int, list[int]] = {}
    for layer, unit in units:
        by_layer.setdefault(layer, []).append(unit)
    probes = {layer: viz.UnitProbe(layer, what, sorted(set(us))) for layer, us in by_layer.items()}
    ids = viz.encode_text(served.model.vocab, text, "text")
    viz.run(served.model.module, ids, probes.values())
    columns = [probes[layer].values[:, probes[layer].units.index(unit)] for layer, unit in units]
    return np.stack(columns, axis=1).tolist()


async def score(request: Request) -> Response:
    state: ServerState = request.app.state.server
    req = score_request(await read_json(request, state.limits.max_body_bytes), state.validation)
    served = state.models[req.model]

    def work() -> dict:
        with served.lock:
            result = served.model.score(req.text)
            out = {
                "model": req.model,
                "n_chars": result.n_chars,
                "nats": result.nats,
                "bits": result.bits,
                "perplexity": result.perplexity,
                "surprisal_bits": _finite(result.surprisal_bits.tolist()),
            }
            if req.units:
                out["what"] = req.what
                out["units"] = _trace(served, req.text, req.units, req.what)
            return out

    return JSONResponse(await run_in_threadpool(work))


async def units(request: Request) -> Response:
    state: ServerState = request.app.state.server
    req = units_request(await read_json(request, state.limits.max_body_bytes), state.validation)
    served = state.models[req.model]
    digest = hashlib.sha256((req.text or "").encode("utf-8")).hexdigest()
    key = (req.model, req.feature, digest, req.top, req.what)
    if key in state.units_cache:
        return JSONResponse(state.units_cache[key])

    def work() -> dict:
        with served.lock:
            text = req.text
            if text is None:  # the model's own writing, the same every time
                text = served.model.sample(UNITS_SAMPLE_CHARS, temperature=0.8, seed=0)
            values = feature_values(req.feature, text)
            layers = list(range(served.model.config.num_layers))
            probe = viz.CorrelationProbe(values, req.what, layers, served.model.config.hidden_size)
            viz.run(served.model.module, viz.encode_text(served.model.vocab, text, "text"), [probe])
            ranking = viz.rank_units(probe.r, layers, req.top)
        return {
            "model": req.model,
            "feature": req.feature,
            "what": req.what,
            "source": "text" if req.text is not None else "sample",
            "n_chars": len(text),
            "units": [{"layer": s.layer + 1, "unit": s.unit, "r": s.r} for s in ranking],
        }

    try:
        result = await run_in_threadpool(work)
    except DataError:  # the feature never changes over the text
        where = "the text" if req.text is not None else f"{UNITS_SAMPLE_CHARS} characters of the model's own writing"
        raise RequestError(
            f"the feature {req.feature!r} never changes over {where}, so no unit can track it; pick another feature "
            "or pass a text where it varies",
            "feature" if req.text is None else "text",
        ) from None
    except CharRNNError as exc:  # a regex:PATTERN that does not compile
        raise RequestError(str(exc), "feature") from None
    if len(state.units_cache) >= UNITS_CACHE:
        state.units_cache.pop(next(iter(state.units_cache)))
    state.units_cache[key] = result
    return JSONResponse(result)


async def list_models(request: Request) -> Response:
    state: ServerState = request.app.state.server
    return JSONResponse({"models": [s.info for s in state.models.values()]})


async def healthz(request: Request) -> Response:
    state: ServerState = request.app.state.server
    return JSONResponse(
        {
            "status": "stopping" if state.stopping else "ok",
            "models": list(state.models),
            "active_streams": state.capacity.in_use,  # the count a 429 is decided on
            "max_streams": state.limits.max_streams,
        }
    )


async def playground(request: Request) -> Response:
    state: ServerState = request.app.state.server
    return HTMLResponse(page.html(token_required=state.limits.token is not None))


class Guard:
    """ASGI middleware: the token rule for ``/v1/``, and every refusal (ours or Starlette's) as JSON."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            request = Request(scope, receive)
            if not authorised(request, self.state.limits):
                response = error(
                    401,
                    "this server needs its token: send the header 'Authorization: Bearer <token>'",
                    None,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError), "registered for RequestError"
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException), "registered for HTTPException"
    message = {404: f"no such endpoint: {request.url.path}; see docs/serve.md for the routes"}.get(
        exc.status_code, f"{exc.detail}: {request.method} {request.url.path}"
    )
    return error(exc.status_code, message, None, headers=exc.headers)


def create_app(models: dict[str, Model], limits: Limits | None = None) -> Starlette:
    """The ASGI app serving ``models`` (name -> Model; the first is the default) within ``limits``."""
    state = ServerState(models, limits or Limits())

    @contextlib.asynccontextmanager
    async def lifespan(app) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.stop()
            await run_in_threadpool(state.join, 5.0)

    app = Starlette(
        routes=[
            Route("/", playground, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/generate", generate, methods=["POST"]),
            Route("/v1/score", score, methods=["POST"]),
            Route("/v1/units", units, methods=["POST"]),
        ],
        exception_handlers={RequestError: _request_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.server = state
    app.add_middleware(Guard, state=state)
    return app

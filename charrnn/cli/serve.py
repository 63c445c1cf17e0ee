"""``charrnn serve``: serve checkpoints over HTTP, with the playground page at ``/``."""

from __future__ import annotations

import contextlib
import contextvars
import re
import signal
import socket
from pathlib import Path

import click

from charrnn.cli.common import DEFAULT_OUT_DIR, DEVICE_HELP, THREADS_HELP, Duration, stderr_console
from charrnn.threads import set_threads

DEFAULT_CHECKPOINT = str(Path(DEFAULT_OUT_DIR) / "best.pt")
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
GRACE_S = 10  # how long the server waits for streams to end after SIGTERM before closing them
EXIT_BY_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def parse_models(specs: tuple[str, ...]) -> dict[str, str]:
    """``[NAME=]CHECKPOINT`` arguments -> {name: path}; a checkpoint without a name is named by its path."""
    out: dict[str, str] = {}
    for spec in specs or (DEFAULT_CHECKPOINT,):
        name, sep, path = spec.partition("=")
        if not (sep and NAME.match(name) and path):
            name, path = spec, spec
        if name in out:
            raise click.BadParameter(
                f"two models are named {name!r}; name them NAME=CHECKPOINT", param_hint="CHECKPOINT"
            )
        out[name] = path
    return out


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, so that a taken port is a one-line error before anything loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise click.UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or --host"
        ) from None
    sock.set_inheritable(True)
    return sock


@click.command()
@click.argument("checkpoints", nargs=-1, metavar="[NAME=]CHECKPOINT...")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on; any but loopback needs a token."
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free one).")
@click.option(
    "--token",
    envvar="CHARRNN_TOKEN",
    default=None,
    help="Bearer token every /v1/ request must carry (default: $CHARRNN_TOKEN).",
)
@click.option(
    "--max-streams",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Samples in flight at once, all models together; more get 429.",
)
@click.option(
    "--max-length", type=click.IntRange(min=1), default=10_000, show_default=True, help="Most characters per sample."
)
@click.option(
    "--max-body",
    type=click.IntRange(min=1024),
    default=256 * 1024,
    show_default=True,
    help="Most bytes in a request body (so in a prime or a text to score).",
)
@click.option("--deadline", type=Duration(), default="5m", show_default=True, help="Longest life of one request.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--threads", type=click.IntRange(min=1), default=None, help=THREADS_HELP)
@click.option("--quiet", "-q", is_flag=True, help="No line per request on stderr.")
@click.pass_context
def serve(ctx, checkpoints, host, port, token, max_streams, max_length, max_body, deadline, device, threads, quiet):
    """Serve CHECKPOINTs (default: out/best.pt) over HTTP: a JSON API and a playground page at /.

    Name a model with NAME=CHECKPOINT, else it is named by its path. Every stream in flight on a
    model advances through one batched step per character. SIGTERM or Ctrl-C end the streams in
    flight with a "cancelled" event, then the server exits with 143 or 130. docs/serve.md has the API.
    """
    import uvicorn

    from charrnn.api import load
    from charrnn.serve import Limits, create_app
    from charrnn.serve.limits import is_loopback

    if token is not None and not token.strip():
        raise click.BadParameter("the token is empty; pass a long random string", param_hint="--token")
    if not is_loopback(host) and token is None:
        raise click.UsageError(
            f"--host {host} would let other machines in; set a token with --token or CHARRNN_TOKEN "
            "(every /v1/ request must then send 'Authorization: Bearer <token>')"
        )
    specs = parse_models(checkpoints)
    sock = listen(host, port)
    set_threads(threads)
    models = {name: load(path, device=device) for name, path in specs.items()}
    limits = Limits(max_streams, max_length, max_body, deadline, token)
    app = create_app(models, limits)
    config = uvicorn.Config(
        app,
        log_config=log_config(),
        access_log=not quiet,
        timeout_graceful_shutdown=GRACE_S,
        lifespan="on",
    )
    server = make_server(config, app.state.server)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    console = stderr_console()
    for name, model in models.items():
        console.print(f"model [bold]{name}[/]: {model!r}")
    console.print(f"charrnn serve: http://{shown}:{bound_port}/ (playground at /, API at /v1/); Ctrl-C to stop")
    # A fresh context: library messages inside requests name fields as the JSON does (top_k), not as
    # this command's flags (--top-k), which the surrounding CLI context would make them.
    contextvars.Context().run(server.run, sockets=[sock])
    if server.stopped_by is not None:
        ctx.exit(EXIT_BY_SIGNAL.get(server.stopped_by, 143))


def log_config() -> dict:
    """uvicorn's logging, with the line per request on stderr too: stdout is for a command's product.
    The scheduler's own logger ("charrnn.serve") writes there in the same format."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    config["loggers"]["charrnn.serve"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def make_server(config, state):
    """uvicorn's server, but a signal first ends the streams in flight with a "cancelled" event, and is
    not raised again once the server is down (the command exits with its documented code instead)."""
    import uvicorn

    class Server(uvicorn.Server):
        stopped_by: int | None = None

        @contextlib.contextmanager
        def capture_signals(self):
            handlers = {sig: signal.signal(sig, self.handle_exit) for sig in EXIT_BY_SIGNAL}
            try:
                yield
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig, frame):
            if self.stopped_by is None:
                self.stopped_by = sig
            state.stop()
            super().handle_exit(sig, frame)

    return Server(config)

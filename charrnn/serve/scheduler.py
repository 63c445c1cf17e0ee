"""Continuous batching: every stream in flight on one model advances through one fused step per character.

One ``Scheduler`` per served model owns a thread and the batch: the hidden state of every sample in
flight, (layers, B, H), and the logits each will draw its next character from, (B, V). A request
(``Stream``, one or more samples) is handed over with ``submit``; between two steps the thread reads
its prime as ``charrnn sample`` does (``charrnn.sample.run_prime``: as one sequence, in chunks with
the state carried; a prime of a few characters through the step) and appends its rows to the batch.
Each step then:

1. ends the rows whose client went away, whose deadline passed, or all of them if the server stops;
2. draws each request's next characters from its own rows of the logits, with its own temperature,
   top-k and seeded generator (``charrnn.sample.Draw``, the draw ``charrnn sample`` makes);
3. runs every row through one ``StepModel.step`` (the fused multi-stream step of ``--num-samples``);
4. hands each request its new characters, with their surprisal and the unit values it asked for;
5. drops the rows that finished (length or stop string) from the batch.

A request served alone gets the text ``charrnn sample`` prints for the same options and seed: the
same prime pass, the same step on the same thread count (``charrnn.threads.sampling_threads``) and
the same draw. The thread never blocks on a client: it appends to a ``Stream`` under its lock and
wakes the client's event loop, which sends whatever has piled up since its last send.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import torch

from charrnn.inference import LayerInternals, StepModel
from charrnn.loss import LN2
from charrnn.model import CharRNN
from charrnn.sample import Draw, run_prime
from charrnn.serve.stops import StopScanner
from charrnn.threads import sampling_threads
from charrnn.visualize import Chunk

log = logging.getLogger("charrnn.serve")

PRIME_CHUNK = 4096  # characters per forward pass of a prime: bounded memory for any prime
TOP_GUESSES = 5  # the model's top guesses sent with each character when surprisal is asked for
# The clients in a batch are told of their news together, at most this often (at once of a first
# character, and of the end): each wake-up is a call into the event loop's thread, and a send and a
# JSON encoding there, which share the cores and the GIL with the steps; benchmarks/bench_serve.py
# measures what batching gains with it.
WAKE_EVERY_S = 0.05


class ServerStopping(Exception):
    """The scheduler takes no new streams: the server is shutting down."""


@dataclass
class Sample:
    """One sample of a request: the characters it generated and how many of them were sent."""

    index: int
    chars: list[str] = field(default_factory=list)
    surprisal_nats: list[float] = field(default_factory=list)  # of each character, at temperature 1
    top: list[list[tuple[str, float]]] = field(default_factory=list)  # the model's top guesses, per character
    units: list[list[float]] = field(default_factory=list)  # per character, one value per asked unit
    sent: int = 0  # characters handed to the client
    end: int | None = None  # the answer's length once it ended (a stop string is cut off)
    reason: str | None = None  # "length", "stop", "deadline", "cancelled" or "error"
    end_sent: bool = False
    ended_at: float = 0.0


@dataclass
class Update:
    """What a client has not yet been sent of one sample: new characters, and the end if it came."""

    sample: int
    text: str
    surprisal_bits: list[float]
    top: list[list[tuple[str, float]]]
    units: list[list[float]]
    end: dict | None


class Stream:
    """One generation request in flight: ``num_samples`` rows of the batch and what they wrote.

    The scheduler's thread appends to it; the client's event loop reads it through ``updates``. The
    ``event`` is set (on the loop, through ``call_soon_threadsafe``) whenever there is something new.
    """

    def __init__(
        self,
        ids: list[int],
        *,
        length: int,
        num_samples: int,
        draw: Draw,
        stops: list[str],
        surprisal: bool,
        units: list[tuple[int, int]],
        what: str,
        deadline_s: float,
        loop: asyncio.AbstractEventLoop,
        on_finish=None,
    ):
        self.ids, self.length, self.num_samples, self.draw = ids, length, num_samples, draw
        self.scanner = StopScanner(stops)
        self.surprisal, self.units, self.what = surprisal, units, what
        self.samples = [Sample(i) for i in range(num_samples)]
        self.created = time.monotonic()
        self.deadline = self.created + deadline_s
        self.first_char_at: float | None = None
        self.cancelled = False  # set by the client's side when it goes away
        self.finished = False  # every sample ended and the scheduler let go of its rows
        self.lock = threading.Lock()
        self.loop = loop
        self.event = asyncio.Event()
        self._wake_pending = False
        self._on_finish = on_finish

    # -- the scheduler's side ------------------------------------------------------------------

    def wake(self) -> None:
        """Tell the client's loop there is news (at most one wake-up queued at a time)."""
        wake_all([self])

    def _set(self) -> None:
        self._wake_pending = False
        self.event.set()

    def end_sample(self, sample: Sample, reason: str, end: int | None = None) -> None:
        """Call with ``self.lock`` held."""
        if sample.reason is None:
            sample.reason, sample.ended_at = reason, time.monotonic()
            sample.end = len(sample.chars) if end is None else end

    def finish(self, reason: str = "cancelled") -> None:
        """The scheduler has let go of every row of this stream; samples still going end with ``reason``."""
        with self.lock:
            for sample in self.samples:
                self.end_sample(sample, reason)
            self.finished = True
        if self._on_finish is not None:
            self._on_finish(self)
            self._on_finish = None
        self.wake()

    # -- the client's side ---------------------------------------------------------------------

    def take(self) -> tuple[list[Update], bool]:
        """The updates not yet taken, and whether the stream is over (every end has been taken)."""
        updates = []
        with self.lock:
            for s in self.samples:
                if s.end_sent:
                    continue
                if s.reason is not None:
                    upto = s.end if s.end is not None else len(s.chars)
                elif self.scanner.stops:  # hold back a tail that may become a stop string
                    upto = s.sent + self.scanner.safe("".join(s.chars[s.sent :]))
                else:
                    upto = len(s.chars)
                new = slice(s.sent, max(s.sent, upto))
                end = self.statistics(s) if s.reason is not None else None
                if new.stop > new.start or end is not None:
                    bits = [n / LN2 for n in s.surprisal_nats[new]] if self.surprisal else []
                    top = s.top[new] if self.surprisal else []
                    units = s.units[new] if self.units else []
                    updates.append(Update(s.index, "".join(s.chars[new]), bits, top, units, end))
                s.sent, s.end_sent = new.stop, end is not None
            over = self.finished and all(s.end_sent for s in self.samples)
        return updates, over

    def statistics(self, sample: Sample) -> dict:
        """How a sample ended and what it was like: the ``end`` event's body."""
        n = sample.end if sample.end is not None else len(sample.chars)
        elapsed = sample.ended_at - self.created if sample.ended_at else time.monotonic() - self.created
        nats = sum(sample.surprisal_nats[:n]) / n if n else None
        first = None if self.first_char_at is None else self.first_char_at - self.created
        return {
            "sample": sample.index,
            "reason": sample.reason,
            "n_chars": n,
            "nats": nats,
            "bits": None if nats is None else nats / LN2,
            "elapsed_s": elapsed,
            "first_char_s": first,
            "chars_per_s": n / elapsed if elapsed > 0 else None,
        }

    async def updates(self):
        """The updates as they come, until the stream is over."""
        while True:
            await self.event.wait()
            self.event.clear()
            updates, over = self.take()
            if updates:
                yield updates
            if over:
                return


def wake_all(streams: list[Stream]) -> None:
    """Tell the streams' loops there is news: one call into each loop's thread, not one per stream."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Stream]] = {}
    for stream in streams:
        if not stream._wake_pending:
            stream._wake_pending = True
            by_loop.setdefault(stream.loop, []).append(stream)
    for loop, woken in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, woken)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


def _set_all(streams: list[Stream]) -> None:
    for stream in streams:
        stream._set()


class Row:
    """One row of the batch: a sample of a stream."""

    __slots__ = ("stream", "sample", "done")

    def __init__(self, stream: Stream, sample: Sample):
        self.stream, self.sample, self.done = stream, sample, False


class Scheduler:
    """The batch of one model and the thread that steps it. ``submit`` a ``Stream``; ``close`` to stop."""

    def __init__(self, name: str, module: CharRNN, chars: str):
        self.name, self.module, self.chars = name, module, chars
        module.eval()
        self.stepper = StepModel(module)
        self.device = self.stepper.device
        # Torch's threads for one row and for several, as charrnn sample picks them; worked out once,
        # since asking numpy's BLAS how many threads it has takes milliseconds.
        self.threads = torch.get_num_threads()
        self.threads_one = sampling_threads(1, self.device) or self.threads
        self.rows: list[Row] = []
        self.logits = torch.zeros(0, len(chars), device=self.device)  # (B, V)
        self.state = self.stepper.init_state(0)  # each (L, B, H)
        self._joining: list[Stream] = []
        self._closing = False
        self._cond = threading.Condition(threading.RLock())  # reentrant: close() may run in a signal handler
        self._thread = threading.Thread(target=self._run, name=f"charrnn-serve-{name}", daemon=True)
        self._threads_now = 0
        self._last_wake = 0.0  # when the clients in the batch were last told of their news
        self.steps = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, stream: Stream) -> None:
        """Queue ``stream`` to join the batch at the next step; ServerStopping once ``close`` was called."""
        with self._cond:
            if self._closing:
                raise ServerStopping()
            self._joining.append(stream)
            self._cond.notify()

    def close(self) -> None:
        """End every stream with a "cancelled" event at the next step, take no new ones, and let the thread end."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._joining and not self.rows and not self._closing:
                    self._cond.wait()
                joining, self._joining = self._joining, []
                closing = self._closing
            if closing:
                for stream in joining:
                    stream.finish()
                for row in self.rows:
                    row.done = True
                self._drop_done()
                return
            try:
                for stream in joining:
                    self._admit(stream)
                if self.rows:
                    self._step()
            except Exception:  # a bug: end every stream rather than leave clients hanging
                log.exception("the %s scheduler failed; ending its streams", self.name)
                for row in self.rows:
                    with row.stream.lock:
                        row.stream.end_sample(row.sample, "error")
                    row.done = True
                self._drop_done()
                for stream in joining:
                    if not stream.finished:
                        stream.finish("error")

    def _use_threads(self, rows: int) -> None:
        threads = self.threads_one if rows == 1 else self.threads
        if threads != self._threads_now:
            torch.set_num_threads(threads)
            self._threads_now = threads

    @torch.no_grad()
    def _admit(self, stream: Stream) -> None:
        """Read the prime as ``charrnn sample`` does (``run_prime``) and add the stream's rows to the batch."""
        if stream.cancelled:
            stream.finish()
            return
        n = stream.num_samples
        self._use_threads(len(self.rows) + n)
        logits, state = run_prime(self.module, stream.ids, 1, stepper=self.stepper, chunk=PRIME_CHUNK)
        last = logits.expand(n, -1)  # (n, V)
        self.logits = torch.cat([self.logits, last])
        self.state = tuple(torch.cat([old, new.expand(-1, n, -1)], dim=1) for old, new in zip(self.state, state))
        self.rows.extend(Row(stream, sample) for sample in stream.samples)

    def _draw(self, groups: list[tuple[Stream, int, int]]) -> torch.Tensor:
        """Each stream's next characters, (B,), as its own ``Draw`` would pick them from its rows.

        Streams with the same options are picked together: their noise rows (each from its own
        generator) side by side, then one ``Draw.pick`` over their rows, since a step that costs an op
        per stream costs the whole batch that op's hand-over of the GIL to the event loop.
        """
        by_options: dict[tuple, list[tuple[Stream, int, int]]] = {}
        for group in groups:
            by_options.setdefault(group[0].draw.options, []).append(group)
        ids = None if len(by_options) == 1 else torch.empty(len(self.rows), dtype=torch.long, device=self.device)
        for members in by_options.values():
            draw = members[0][0].draw
            noise = []
            for stream, first, count in members:
                rows = stream.draw.next_noise(self.device, self.logits.dtype)
                if rows is None:  # argmax: no noise
                    continue
                if count < stream.num_samples:
                    # Some samples stopped early: their noise is still drawn, so the others stay as they were.
                    rows = rows[[row.sample.index for row in self.rows[first : first + count]]]
                noise.append(rows)
            together = None if not noise else noise[0] if len(noise) == 1 else torch.cat(noise)
            if ids is None:  # every stream alike: the whole batch at once
                return draw.pick(self.logits, together)
            index = torch.tensor(
                [i for _, first, count in members for i in range(first, first + count)], device=self.device
            )
            ids[index] = draw.pick(self.logits[index], together)
        assert ids is not None, "a batch has at least one stream"
        return ids

    def _groups(self) -> list[tuple[Stream, int, int]]:
        """(stream, first row, number of rows) for each stream in the batch; a stream's rows are adjacent."""
        groups: list[tuple[Stream, int, int]] = []
        for i, row in enumerate(self.rows):
            if groups and groups[-1][0] is row.stream:
                stream, first, count = groups[-1]
                groups[-1] = (stream, first, count + 1)
            else:
                groups.append((row.stream, i, 1))
        return groups

    @torch.no_grad()
    def _step(self) -> None:
        # 1. Rows whose client left, whose deadline passed, end now.
        now = time.monotonic()
        for row in self.rows:
            stream = row.stream
            if stream.cancelled or now > stream.deadline:
                with stream.lock:
                    stream.end_sample(row.sample, "cancelled" if stream.cancelled else "deadline")
                row.done = True
        if self._drop_done():
            return
        self._use_threads(len(self.rows))

        # 2. Each stream draws its characters from its own rows, with its own options and generator.
        groups = self._groups()
        ids = self._draw(groups)  # (B,)
        # Surprisal at temperature 1, the model's own, in one op: every step pays for it (the end event's
        # mean), and each op is a hand-over of the GIL.
        nats = torch.nn.functional.cross_entropy(self.logits, ids, reduction="none").tolist()
        top = None
        if any(stream.surprisal for stream, _, _ in groups):
            logp = torch.log_softmax(self.logits, dim=1)  # (B, V)
            top = torch.topk(logp, min(TOP_GUESSES, logp.shape[1]), dim=1)

        # 3. One fused step for every row (with the layers' internals if a stream traces units).
        internals: list[LayerInternals] | None = [] if any(s.units for s, _, _ in groups) else None
        self.logits, self.state = self.stepper.step(ids, self.state, internals)
        self.steps += 1

        # 4. Each stream gets its characters.
        chunk = Chunk(0, ids.cpu().numpy(), self.logits, [internals]) if internals is not None else None
        chars = [self.chars[i] for i in ids.tolist()]
        top_ids = top.indices.tolist() if top is not None else None
        top_p = top.values.exp().tolist() if top is not None else None
        now = time.monotonic()
        first_news = []  # streams whose first characters came in this step
        for stream, first, count in groups:
            values = None
            if stream.units and chunk is not None:
                cols = [chunk.quantity(layer, stream.what)[first : first + count, unit] for layer, unit in stream.units]
                values = torch.stack(cols, dim=1).tolist()  # (count, units)
            with stream.lock:
                if stream.first_char_at is None:
                    stream.first_char_at = now
                    first_news.append(stream)
                for j in range(count):
                    i = first + j
                    row = self.rows[i]
                    sample = row.sample
                    sample.chars.append(chars[i])
                    sample.surprisal_nats.append(nats[i])
                    if stream.surprisal:
                        assert top_ids is not None and top_p is not None, "top guesses are made for surprisal"
                        sample.top.append([(self.chars[k], p) for k, p in zip(top_ids[i], top_p[i])])
                    if values is not None:
                        sample.units.append(values[j])
                    if stream.scanner.stops:
                        tail = "".join(sample.chars[-stream.scanner.longest :])
                        cut = stream.scanner.stopped(tail)
                        if cut is not None:
                            stream.end_sample(sample, "stop", len(sample.chars) - len(tail) + cut)
                            row.done = True
                            continue
                    if len(sample.chars) >= stream.length:
                        stream.end_sample(sample, "length")
                        row.done = True
        if now - self._last_wake >= WAKE_EVERY_S:
            self._last_wake = now
            wake_all([stream for stream, _, _ in groups])
        elif first_news:
            wake_all(first_news)

        # 5. Rows that ended leave the batch.
        self._drop_done()

    def _drop_done(self) -> bool:
        """Remove finished rows (and finish streams with none left); True if the batch is now empty."""
        if any(row.done for row in self.rows):
            keep = [i for i, row in enumerate(self.rows) if not row.done]
            leaving = {id(row.stream): row.stream for row in self.rows if row.done}
            staying = {id(self.rows[i].stream) for i in keep}
            for key, stream in leaving.items():
                if key not in staying:
                    stream.finish()
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            self.logits = self.logits.index_select(0, index)
            self.state = tuple(s.index_select(1, index) for s in self.state)
            self.rows = [self.rows[i] for i in keep]
        return not self.rows


def seed_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """The generator a request draws from: seeded as ``charrnn sample --seed`` seeds it, or at random."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return generator

"""What a training run is: where it starts from, where it writes, which text it reads, how it stops.

``Run`` applies the rules every caller gets, the CLI and Python alike:

1. a run starts fresh, from a checkpoint's weights (``init_from``, fine-tuning) or continues one
   (``resume``), never both; on resume the saved options are kept unless given again, and a given
   architecture option that contradicts the checkpoint is an error;
2. ``out_dir`` must be writable and is held by one run at a time (an OS lock, released however the
   run ends; what a killed run left there is cleared at the next start); another run's checkpoints
   there are never overwritten without ``force``, nor a ``last.pt`` further on than the checkpoint
   resumed from; a resumed run continues in its checkpoint's folder unless told otherwise;
3. the text is read through the corpus cache (``out_dir/cache`` unless ``cache_dir`` or ``no_cache``);
   with no text, a resumed run finds its own again (``checkpoint_corpus``) and a new one takes the
   embedded Tiny Shakespeare; on resume the text must be the one the checkpoint was trained on;
4. the first SIGINT (and, where asked, SIGTERM) stops the run after the current step and saves
   ``last.pt``; a second one stops at once (saves are atomic).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charrnn import checkpoint as ckpt_io
from charrnn import distributed, memory
from charrnn.corpus import LoadedCorpus, load_corpus
from charrnn.data import Corpus, Vocab, split
from charrnn.devices import resolve_device
from charrnn.errors import CharRNNError, CheckpointError, ConfigError, OutputError, UnknownCharsError, option
from charrnn.fsio import check_writable, remove_leftovers
from charrnn.lock import FileLock, Locked
from charrnn.model import ModelConfig
from charrnn.options import (
    ARCHITECTURE,
    MODEL_OPTIONS,
    RUN_DEFAULTS,
    RUN_OPTIONS,
    TRAIN_OPTIONS,
    check_option_names,
    parse_duration,
)
from charrnn.threads import set_threads
from charrnn.trainer import Callback, TrainConfig, Trainer, TrainResult
from charrnn.vocab_extend import PROBE_CHARS, extend

SAMPLE_TEMPERATURE = 0.8  # of the closing sample
CHECKPOINT_NAMES = ("last.pt", "best.pt")
OUT_DIR_LOCK = ".charrnn.lock"  # held by the run writing to the folder (charrnn.lock)


def checkpoint_corpus(
    ckpt: ckpt_io.Checkpoint,
    *,
    text: str | Path | None = None,
    encoding: str = "utf-8",
    separator: str | None = None,
    cache_dir: Path | None = None,
    exclude: tuple[Path, ...] = (),
) -> tuple[Corpus, LoadedCorpus | None]:
    """The text ``ckpt`` was trained on, read again and checked against its SHA-256.

    ``text`` None: the path the checkpoint recorded (a file, folder or glob), or the embedded corpus
    for a run that had none. ConfigError if what is read now is not the same text.
    """
    recorded = ckpt.corpus.get("path")
    source = text if text is not None else recorded
    if separator is None:
        separator = ckpt.corpus.get("separator") or "\n"
    corpus, loaded = read_corpus(
        source, encoding=encoding, separator=separator, vocab=ckpt.vocab, cache_dir=cache_dir, exclude=exclude
    )
    if corpus.sha256 != ckpt.corpus.get("sha256"):
        if text is None:
            raise ConfigError(
                f"{recorded or 'the embedded corpus'} changed since {ckpt.path} was trained on it; pass the text to use"
            )
        raise ConfigError(
            f"the text differs from the one {ckpt.path} was trained on; pass the same text to resume, "
            f"or use {option('init_from')} to fine-tune on new text"
        )
    return corpus, loaded


def checkpoint_split(ckpt: ckpt_io.Checkpoint, *, encoding: str = "utf-8") -> tuple[Corpus, Any, Any]:
    """The text ``ckpt`` was trained on (``checkpoint_corpus``, through the corpus cache its run left
    beside it, if any) and its (training, validation) ids, split as the run split them."""
    cache = Path(ckpt.path).parent / "cache" if ckpt.path is not None else None
    corpus, _ = checkpoint_corpus(
        ckpt, encoding=encoding, cache_dir=cache if cache is not None and cache.is_dir() else None
    )
    train_ids, val_ids = split(corpus.ids, float(ckpt.corpus.get("val_frac", 0.1)))
    return corpus, train_ids, val_ids


def read_corpus(text, *, encoding="utf-8", separator="\n", vocab=None, cache_dir=None, exclude=()):
    """``text`` (a file, folder, glob, or None for the embedded corpus) encoded, and how it was read."""
    loaded = load_corpus(
        text, encoding=encoding, separator=separator, vocab=vocab, cache_dir=cache_dir, exclude=exclude
    )
    return loaded.corpus, (loaded if text is not None else None)


class StopOnSignal:
    """While entered: the first of ``signals`` asks the trainer to stop after this step (calling
    ``on_signal(name)``); a second raises KeyboardInterrupt at once. The previous handlers come back
    on exit. Outside the main thread (where Python allows no handlers) it does nothing."""

    def __init__(
        self, signals=(signal.SIGINT,), on_signal: Callable[[str], None] = lambda name: None, coalesce_s: float = 0.0
    ):
        self.signals, self.on_signal = tuple(signals), on_signal
        self.received: str | None = None
        self._previous: dict = {}
        # Under torchrun a Ctrl-C reaches every process twice, from the terminal and forwarded by the
        # launcher: a repeat this soon is the same signal, not a second one.
        self.coalesce_s, self._at = coalesce_s, 0.0

    def __call__(self) -> str | None:
        return self.received

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None:
            if time.monotonic() - self._at < self.coalesce_s:
                return
            raise KeyboardInterrupt  # the second signal: leave now; saves are atomic
        self.received, self._at = name, time.monotonic()
        self.on_signal(name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


@dataclass
class _Plan:
    """A run's settings after the rules: what ``Run`` builds the trainer from."""

    model_values: dict
    train_values: dict
    run_values: dict
    given: set


class Run:
    """One training run, prepared: rules applied, text read, trainer built. ``execute()`` trains.

    ``options`` are ``charrnn train``'s flags with underscores (``hidden_size=256``, ``max_time="10m"``);
    only those given count as given: on resume the others keep the checkpoint's values.
    """

    def __init__(
        self,
        text: str | Path | None = None,
        *,
        out_dir: str | Path | None = None,
        resume: str | Path | None = None,
        init_from: str | Path | None = None,
        extend_vocab: bool = False,
        force: bool = False,
        callback: Callback | None = None,
        should_stop: Callable[[], Any] | None = None,
        **options: Any,
    ):
        check_option_names(options)
        if extend_vocab and init_from is None:
            raise ConfigError(
                f"{option('extend_vocab', True)} adds characters to the vocabulary of {option('init_from')}'s "
                f"checkpoint; pass {option('init_from')} too"
            )
        self.extend_vocab = bool(extend_vocab)
        if resume is not None and init_from is not None:
            raise ConfigError(
                f"{option('resume')} and {option('init_from')} cannot be combined; {option('resume')} continues "
                f"a run, {option('init_from')} starts a new one"
            )
        if "max_time" in options and options["max_time"] is not None:
            options["max_time"] = parse_duration(options["max_time"])
        plan = _Plan(
            model_values={k: options[k] for k in MODEL_OPTIONS if k in options},
            train_values={k: options[k] for k in TRAIN_OPTIONS if k in options},
            run_values={**RUN_DEFAULTS, **{k: options[k] for k in RUN_OPTIONS if k in options}},
            given=set(options),
        )
        self.callback = callback or Callback()
        self.user_should_stop = should_stop
        self._out_lock: FileLock | None = None
        set_threads(plan.run_values["threads"])
        self.session = distributed.init(resolve_device(plan.run_values["device"]))
        try:
            self._prepare(text, out_dir, resume, init_from, force, plan)
            self.session.settle()  # every process got here: from now on they train together
        except BaseException:
            self.release()
            self.session.close()  # tells the other processes, which would otherwise wait for this one
            raise

    def _prepare(self, text, out_dir, resume, init_from, force, plan: _Plan) -> None:
        session, run_values = self.session, plan.run_values
        # 1. Where we start from: a fresh model, a checkpoint's weights, or a whole run to continue.
        source = None
        if resume is not None:
            source = ckpt_io.load(resume)
            if source.resume is None:
                raise ConfigError(
                    f"{resume} holds no training state to resume; use {option('init_from')} to start from its weights"
                )
            self._check_architecture(source, plan, "resume")
            unknown = TrainConfig.unknown_keys(source.train_config)
            if unknown:  # options this charrnn does not know: the run cannot go on as it was
                raise CheckpointError(
                    f"{resume}: unknown train config key(s): {', '.join(unknown)} (written by a newer charrnn?); "
                    f"upgrade charrnn (pip install -U charrnn) to resume it, "
                    f"or use {option('init_from')} to start a new run from its weights"
                )
            saved = TrainConfig.from_dict(source.train_config).to_dict()
            plan.train_values = {**{k: v for k, v in saved.items() if k in TRAIN_OPTIONS}, **plan.train_values}
        elif init_from is not None:
            source = ckpt_io.load(init_from)
            self._check_architecture(source, plan, "fine-tune")
        # 2. Before any real work: the out dir must be writable, and another run's checkpoints are never
        #    overwritten by accident. A resumed run continues in the checkpoint's folder unless told otherwise.
        if out_dir is None:
            out_dir = Path(resume).parent if resume is not None else Path("out")
        out_dir = Path(out_dir)
        if session.is_main:  # the one process that writes: it holds the out dir for the whole run
            self._lock_out_dir(out_dir)
            check_writable(out_dir)
            remove_leftovers(out_dir, CHECKPOINT_NAMES)  # of a run that was killed; none is running now
        existing = [p for p in (out_dir / name for name in CHECKPOINT_NAMES) if p.exists()]
        continuing = resume is not None and Path(resume).resolve().parent == out_dir.resolve()
        if existing and not force and not continuing:
            raise ConfigError(
                f"{out_dir} already holds checkpoints of another run ({existing[0].name}); continue it with "
                f"{option('resume', str(existing[0]))}, pick another {option('out_dir')}, or pass "
                f"{option('force', True)} to overwrite them"
            )
        if continuing and not force and source is not None:
            self._check_not_behind(source, out_dir / "last.pt")
        # 3. The text, read once into a memory-mapped cache (or from it); on resume, the same text again.
        cache_dir = None if run_values["no_cache"] else Path(run_values["cache_dir"] or out_dir / "cache")
        exclude = (out_dir, cache_dir or out_dir)
        continued = source if resume is not None else None

        def read():
            if continued is not None:
                return checkpoint_corpus(
                    continued,
                    text=text,
                    encoding=run_values["encoding"],
                    # the checkpoint's own separator unless one is given again
                    separator=run_values["separator"] if "separator" in plan.given else None,
                    cache_dir=cache_dir,
                    exclude=exclude,
                )
            vocab = source.vocab if source is not None else None

            def with_vocab(vocab):
                return read_corpus(
                    text,
                    encoding=run_values["encoding"],
                    separator=run_values["separator"],
                    vocab=vocab,
                    cache_dir=cache_dir,
                    exclude=exclude,
                )

            if source is None:
                return with_vocab(None)
            try:
                return with_vocab(vocab)
            except UnknownCharsError as exc:
                if not self.extend_vocab:
                    raise UnknownCharsError(
                        f"{exc}, or pass {option('extend_vocab', True)} to add them to the vocabulary of {init_from}",
                        exc.chars,
                    ) from None
                # The text's new characters join the vocabulary: encode it again with all of them.
                return with_vocab(Vocab("".join(sorted(set(source.vocab.chars) | set(exc.chars)))))

        # Local rank 0 encodes (or checks) the cache first; the other processes on its machine then find it.
        corpus, self.loaded = distributed.local_main_first(session, read)
        session.check_same(corpus.sha256, f"the text of {corpus.name}")
        if init_from is not None and source is not None and corpus.vocab != source.vocab:
            # --extend-vocab: new rows for the characters the text added (vocab_extend); the old model is
            # probed on the start of the text to set their bias.
            source = extend(source, corpus.vocab.chars, corpus.vocab.decode(corpus.ids[:PROBE_CHARS]))
        # 4. The model and the trainer.
        if source is not None:
            dropout = plan.model_values.get("dropout", source.model_config.dropout)
            model_config = dataclasses.replace(source.model_config, dropout=dropout)
        else:
            model_config = ModelConfig(vocab_size=len(corpus.vocab), **plan.model_values)
        self.train_config = TrainConfig(**plan.train_values)
        self.sample_length = int(run_values["sample_length"])
        self._check_memory(model_config, session.device)
        self.resumed = resume is not None
        self._stop = StopOnSignal(on_signal=self.callback_on_signal, coalesce_s=2.0 if session.active else 0.0)
        self.trainer = Trainer(
            model_config,
            self.train_config,
            corpus,
            out_dir,
            device=session.device,
            init_from=source if init_from is not None else None,
            resume=source if resume is not None else None,
            callback=self.callback if session.is_main else Callback(),
            should_stop=self._should_stop,
            session=session,
        )

    def _lock_out_dir(self, out_dir: Path) -> None:
        """Hold ``out_dir`` for this run: a second run into it is refused, naming this one's PID."""
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._out_lock = FileLock(out_dir / OUT_DIR_LOCK).acquire()
        except Locked as busy:
            who = f"process {busy.pid}" if busy.pid else "another process"
            raise ConfigError(
                f"{out_dir} is in use by another training run ({who}); wait for it to end, stop it, "
                f"or pick another {option('out_dir')}"
            ) from None
        except OSError as exc:
            raise OutputError(
                f"cannot write to {option('out_dir')} {out_dir} ({exc.strerror or exc}); choose a writable folder"
            ) from None

    def _check_not_behind(self, source: ckpt_io.Checkpoint, last: Path) -> None:
        """Resuming from an earlier checkpoint (``best.pt``) of a folder whose ``last.pt`` is further on
        would overwrite that ``last.pt``: only with ``force``."""
        if source.path is None or not last.exists() or last.resolve() == Path(source.path).resolve():
            return
        step = source.progress.get("step")
        try:
            last_step = ckpt_io.load(last).progress.get("step")
        except CharRNNError:
            last_step = None  # unreadable: still not to be overwritten without asking
        if isinstance(step, int) and isinstance(last_step, int) and last_step <= step:
            return
        at = f" (step {last_step})" if isinstance(last_step, int) else ""
        raise ConfigError(
            f"resuming from {source.path} (step {step}) would overwrite {last}{at}, which is further on; "
            f"resume from {last}, pass {option('force', True)} to overwrite it, or write to a new "
            f"{option('out_dir')}"
        )

    def release(self) -> None:
        """Give back the out dir (``execute`` does it when the run ends)."""
        if self._out_lock is not None:
            self._out_lock.release()

    def callback_on_signal(self, name: str) -> None:
        if self.session.is_main:
            self.callback.on_signal(name)

    def _check_memory(self, cfg: ModelConfig, device) -> None:
        """Refuse a model, batch or closing sample that cannot fit, before any of it is allocated."""
        tc = self.train_config
        need = max(
            memory.training_bytes(cfg, tc.batch_size, tc.seq_len, 4 if tc.dtype == "fp32" else 2),
            memory.evaluation_bytes(cfg, tc.eval_batch_size, tc.eval_seq_len),
        )
        memory.check_fits(
            need,
            device,
            "training this model",
            ("hidden_size", "num_layers", "embedding_size", "batch_size", "seq_len"),
        )
        if self.sample_length:
            need = memory.sampling_bytes(cfg, 1, self.sample_length)
            memory.check_fits(
                need, device, f"a closing sample of {self.sample_length:,} characters", ("sample_length",)
            )

    def _check_architecture(self, source: ckpt_io.Checkpoint, plan: _Plan, purpose: str) -> None:
        """An architecture option given must agree with the checkpoint we continue from."""
        saved = source.model_config
        for name in ARCHITECTURE:
            if name in plan.model_values and plan.model_values[name] != getattr(saved, name):
                raise ConfigError(
                    f"{option(name, plan.model_values[name])} conflicts with {source.path}, which was trained with "
                    f"{option(name, getattr(saved, name))}; drop it to {purpose}"
                )

    def _should_stop(self) -> str | None:
        if self._stop.received is not None:
            return self._stop.received
        if self.user_should_stop is not None and self.user_should_stop():
            return "should_stop"
        return None

    @property
    def corpus(self) -> Corpus:
        return self.trainer.corpus

    def execute(self, signals=(signal.SIGINT,)) -> TrainResult:
        """Train until the budget is spent or a stop is asked for; then, unless interrupted, sample
        ``sample_length`` characters from the best checkpoint into ``TrainResult.sample``."""
        self._stop.signals = tuple(signals)
        try:
            with self._stop:
                result = self.trainer.run()
        finally:
            self.release()
            self.session.close()
        if (
            self.sample_length
            and self.session.is_main
            and result.best_path is not None
            and not result.stopped_by.startswith("interrupt")
        ):
            from charrnn.api import load  # the API builds on this module, not the other way round

            model = load(result.best_path, device=self.trainer.device)
            pieces = model.generate(self.sample_length, temperature=SAMPLE_TEMPERATURE, seed=self.train_config.seed)
            text = "".join(pieces)
            result = dataclasses.replace(result, sample=text)
        return result


def train(
    text: str | Path | None = None,
    *,
    out_dir: str | Path | None = None,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
    extend_vocab: bool = False,
    force: bool = False,
    callback: Callback | None = None,
    should_stop: Callable[[], Any] | None = None,
    **options: Any,
) -> TrainResult:
    """Train a character model on ``text`` (a file, folder or glob; None: the embedded Tiny Shakespeare,
    or on resume the checkpoint's own text) with the rules of ``charrnn train``.

    ``out_dir`` defaults to "out", or with ``resume`` to the checkpoint's folder. ``extend_vocab`` (with
    ``init_from``) adds the text's characters that the checkpoint lacks to its vocabulary
    (``charrnn.vocab_extend``); without it they are an error that lists them. ``options`` are the
    flags of ``charrnn train`` with underscores: ``hidden_size=256``, ``max_time="10m"`` (or seconds),
    ``max_steps=2000``, ``device="cpu"``, ... An unknown one is a ConfigError naming the nearest.
    In the main thread a Ctrl-C (SIGINT) stops after the current step, saves ``last.pt`` and then
    raises KeyboardInterrupt; elsewhere pass ``should_stop``, a callable that returns True to stop
    (the run then saves ``last.pt`` and returns with ``stopped_by == "interrupt:should_stop"``).
    """
    run = Run(
        text,
        out_dir=out_dir,
        resume=resume,
        init_from=init_from,
        extend_vocab=extend_vocab,
        force=force,
        callback=callback,
        should_stop=should_stop,
        **options,
    )
    result = run.execute(signals=(signal.SIGINT,))
    if result.stopped_by == "interrupt:SIGINT":
        raise KeyboardInterrupt(f"training stopped by SIGINT; {result.last_path} saved, resume from it")
    return result

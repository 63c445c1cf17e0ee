"""``charrnn train``: flags, the progress bar, evaluation lines, the closing summary and exit codes.

What a run *is* (resume and fine-tuning rules, the out-dir guard, finding the text, signals) lives in
``charrnn.run``; this module turns flags into its options and renders what it reports.
"""

from __future__ import annotations

import signal
from pathlib import Path

import click
from click.core import ParameterSource
from rich.panel import Panel
from rich.table import Table

from charrnn import distributed
from charrnn.cli.common import (
    COUNT_MAX,
    DEFAULT_OUT_DIR,
    DEVICE_HELP,
    SEED,
    THREADS,
    THREADS_HELP,
    Duration,
    Finite,
    UserError,
    echo_json,
    format_duration,
    stderr_console,
)
from charrnn.cli.launch import SIGNAL_EXIT, Separator, launch
from charrnn.cli.progress import Progress
from charrnn.corpus import describe_skipped
from charrnn.devices import resolve_device
from charrnn.loss import DEFAULT_EVAL_CHARS, DEFAULT_EVAL_CHARS_CPU, LN2
from charrnn.model import CELLS, ModelConfig
from charrnn.options import RUN_DEFAULTS
from charrnn.run import SAMPLE_TEMPERATURE, Run
from charrnn.trainer import DEFAULT_MAX_STEPS, DTYPES, SCHEDULES, TrainConfig

MODEL_DEFAULTS = ModelConfig(vocab_size=1)
TRAIN_DEFAULTS = TrainConfig(max_steps=DEFAULT_MAX_STEPS)
CLI_ONLY = ("text", "out_dir", "resume", "init_from", "extend_vocab", "force", "nproc", "quiet", "as_json")


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)


@click.command()
@click.argument("text", required=False, type=click.Path(dir_okay=True, path_type=str))
@click.option(
    "--cell", type=click.Choice(list(CELLS)), default=MODEL_DEFAULTS.cell, show_default=True, help="Recurrent cell."
)
@click.option("--num-layers", type=click.IntRange(min=1), default=MODEL_DEFAULTS.num_layers, show_default=True)
@click.option(
    "--hidden-size",
    "--rnn-size",
    "hidden_size",
    type=click.IntRange(min=1),
    default=MODEL_DEFAULTS.hidden_size,
    show_default=True,
    help="Units per layer (char-rnn: --rnn-size).",
)
@click.option(
    "--embedding-size",
    type=click.IntRange(min=1),
    default=MODEL_DEFAULTS.embedding_size,
    show_default=True,
    help="Size of the learned character embedding.",
)
@click.option(
    "--dropout",
    type=Finite(0, 1, max_open=True),
    default=MODEL_DEFAULTS.dropout,
    show_default=True,
    help="Dropout between layers and before the output layer.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=TRAIN_DEFAULTS.batch_size,
    show_default=True,
    help="Parallel streams per step (per process).",
)
@click.option(
    "--seq-len",
    "--seq-length",
    "seq_len",
    type=click.IntRange(min=1),
    default=TRAIN_DEFAULTS.seq_len,
    show_default=True,
    help="Characters per stream per step (BPTT length).",
)
@click.option(
    "--lr",
    "--learning-rate",
    "lr",
    type=Finite(min=0, min_open=True),
    default=TRAIN_DEFAULTS.lr,
    show_default=True,
    help="Adam learning rate.",
)
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default=TRAIN_DEFAULTS.schedule,
    show_default=True,
    help="cosine: to lr*min-lr-frac over the budget; wsd: constant, then linear to lr*min-lr-frac over the last 20%; step: char-rnn's per-epoch decay; constant.",
)
@click.option(
    "--warmup-steps", type=click.IntRange(min=0, max=COUNT_MAX), default=TRAIN_DEFAULTS.warmup_steps, show_default=True
)
@click.option(
    "--min-lr-frac",
    type=Finite(0, 1),
    default=TRAIN_DEFAULTS.min_lr_frac,
    show_default=True,
    help="cosine: final lr as a fraction of --lr.",
)
@click.option(
    "--lr-decay",
    type=Finite(0, 1, min_open=True),
    default=TRAIN_DEFAULTS.lr_decay,
    show_default=True,
    help="step: lr multiplier per epoch ...",
)
@click.option(
    "--lr-decay-after",
    type=click.IntRange(min=0, max=COUNT_MAX),
    default=TRAIN_DEFAULTS.lr_decay_after,
    show_default=True,
    help="step: ... after this many epochs.",
)
@click.option(
    "--grad-clip",
    type=Finite(min=0, min_open=True),
    default=TRAIN_DEFAULTS.grad_clip,
    show_default=True,
    help="Clip the global gradient norm to this.",
)
@click.option("--weight-decay", type=Finite(min=0), default=TRAIN_DEFAULTS.weight_decay, show_default=True)
@click.option(
    "--max-epochs",
    type=click.IntRange(min=1, max=COUNT_MAX),
    default=None,
    help="Stop after this many passes over the training split.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1, max=COUNT_MAX),
    default=None,
    help=f"Stop at this step, counted from the start of the run [default: {DEFAULT_MAX_STEPS} when no other budget is given].",
)
@click.option(
    "--max-time",
    type=Duration(),
    default=None,
    help="Wall-clock budget, e.g. 10m or 1h30m; the cosine and wsd schedules then follow the clock.",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=1, max=COUNT_MAX),
    default=TRAIN_DEFAULTS.eval_every,
    show_default=True,
    help="Steps between validation passes and checkpoints.",
)
@click.option(
    "--val-frac",
    type=Finite(0, 1, min_open=True, max_open=True),
    default=TRAIN_DEFAULTS.val_frac,
    show_default=True,
    help="Last fraction of the text held out for validation.",
)
@click.option("--seed", type=SEED, default=TRAIN_DEFAULTS.seed, show_default=True)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--threads", type=THREADS, default=None, help=THREADS_HELP)
@click.option(
    "--dtype",
    type=click.Choice(list(DTYPES)),
    default="fp32",
    show_default=True,
    help="Autocast precision for training (bf16/fp16 on CUDA).",
)
@click.option(
    "--compile/--no-compile",
    "compile_",
    default=False,
    show_default=True,
    help="torch.compile the model (checkpoints stay uncompiled).",
)
@click.option(
    "--on-nan",
    type=click.Choice(["stop", "skip"]),
    default="stop",
    show_default=True,
    help="stop: end training on a NaN/inf; skip: drop the batch and halve the lr.",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT_DIR,
    show_default=True,
    help="Where last.pt and best.pt go.",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    default=None,
    help="Continue the run saved in this checkpoint (weights, optimizer, schedule, data position).",
)
@click.option(
    "--init-from",
    type=click.Path(path_type=Path),
    default=None,
    help="Start a new run from this checkpoint's weights and vocabulary (fine-tuning).",
)
@click.option(
    "--extend-vocab",
    is_flag=True,
    help="With --init-from: add TEXT's characters the checkpoint lacks to its vocabulary (new rows; the old "
    "ones kept exactly), e.g. charrnn train new.txt --init-from old.pt --extend-vocab",
)
@click.option("--force", is_flag=True, help="Overwrite checkpoints of an earlier run in --out-dir.")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of TEXT, e.g. latin-1.")
@click.option(
    "--separator",
    type=Separator(),
    default="\n",
    show_default="\\n",
    help="Put between the files of a folder or glob (\\n, \\t, \\0 understood).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the encoded corpus is kept for the next run [default: OUT_DIR/cache].",
)
@click.option("--no-cache", is_flag=True, help="Encode TEXT in memory at every start instead of caching it.")
@click.option(
    "--eval-chars",
    type=click.IntRange(min=2, max=COUNT_MAX),
    default=None,
    help=f"Validation characters scored per evaluation: the whole split up to this many, else seeded windows of this many in all [default: {DEFAULT_EVAL_CHARS:,} on a GPU, {DEFAULT_EVAL_CHARS_CPU:,} elsewhere].",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=None,
    help="Train data-parallel in this many processes on this machine (one per GPU; gloo on CPU), started through torch.distributed.run. The global batch is --batch-size x NPROC. For several machines use torchrun.",
)
@click.option(
    "--sample-length",
    type=click.IntRange(min=0, max=COUNT_MAX),
    default=RUN_DEFAULTS["sample_length"],
    show_default=True,
    help="Characters to sample from the best model at the end (0: none).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or evaluation lines.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout at the end.")
@click.pass_context
def train(
    ctx: click.Context, text, out_dir: Path, resume, init_from, extend_vocab, force, nproc, quiet, as_json, **flags
):
    """Train a character model on TEXT (default: the embedded Tiny Shakespeare corpus).

    Checkpoints go to OUT_DIR (with --resume: the checkpoint's folder): last.pt at every evaluation
    and at the end, best.pt whenever the validation loss improves. Ctrl-C stops after the current step and saves last.pt; continue
    with --resume OUT_DIR/last.pt.

    TEXT may be a file, a folder (every file below it) or a quoted glob such as 'linux/**/*.[ch]':
    the files are joined in sorted path order with --separator between them, and binary or
    undecodable files are skipped (and counted). It is encoded once into --cache-dir and memory-mapped,
    so a corpus larger than memory trains, and the next run on unchanged files starts at once.

    Several processes (data-parallel): `torchrun --nproc-per-node N -m charrnn train ...`, or --nproc N
    on one machine. Each process trains --batch-size streams of its own, so the global batch is
    --batch-size x N; rank 0 alone writes checkpoints and output. A run resumes on any number of
    processes (exactly, bit for bit, on the same number).
    """
    console = stderr_console()
    if nproc is not None and distributed.launched():
        raise UserError("--nproc starts processes itself; drop it when running under torchrun")
    if nproc is not None and nproc > 1:
        return launch(ctx, nproc, resolve_device(flags["device"]))
    # Only the flags given count as given: on --resume the others keep the checkpoint's values.
    options = {name: value for name, value in flags.items() if _given(ctx, name)}
    if quiet:
        options["sample_length"] = 0
    progress = Progress(quiet)
    run = Run(
        text,
        out_dir=out_dir if _given(ctx, "out_dir") else None,
        resume=resume,
        init_from=init_from,
        extend_vocab=extend_vocab,
        force=force,
        callback=progress,
        **options,
    )
    trainer, session = run.trainer, run.session
    if not session.is_main:  # rank 0 speaks for the job
        quiet, as_json = True, False
    corpus, loaded = run.corpus, run.loaded
    if loaded is not None and loaded.skipped and session.is_main:
        console.print(f"[yellow]{corpus.name}: {describe_skipped(loaded.skipped)}")
    params = trainer.model.num_parameters()
    if not quiet:
        cfg = trainer.model_config
        console.print(
            f"[bold]charrnn train[/] {corpus.name}: {len(corpus):,} chars, vocab {len(corpus.vocab)}, "
            f"{cfg.cell.upper()} {cfg.num_layers}x{cfg.hidden_size} "
            f"({params:,} parameters) on {trainer.device}; {len(trainer.batches)} steps/epoch"
            + (f"; resuming at step {trainer.state.step}" if run.resumed else "")
            + (
                f"; {session.world_size} processes, global batch {run.train_config.batch_size * session.world_size}"
                if session.active
                else ""
            )
        )
        if loaded is not None:
            cached = {
                "hit": f"cached corpus reused from {loaded.cache_file}",
                "built": f"corpus encoded into {loaded.cache_file}",
                "off": "not cached",
            }
            console.print(f"[dim]{loaded.n_files:,} file(s), {cached[loaded.cache]}")
    try:
        result = run.execute(signals=(signal.SIGINT, signal.SIGTERM))
    finally:
        progress.close()

    interrupted = result.stopped_by.startswith("interrupt")
    signal_name = result.stopped_by.split(":", 1)[1] if interrupted else None
    summary = _summary(result, params)
    if not quiet:
        _print_summary(console, summary)
    if interrupted and session.is_main:
        console.print(f"Stopped by {signal_name}; continue with: charrnn train --resume {result.last_path}")
    elif result.sample is not None and not quiet:
        console.print(
            Panel(
                result.sample, title=f"sample from {result.best_path} (temperature {SAMPLE_TEMPERATURE})", expand=False
            )
        )
    if as_json:
        echo_json(summary)
    if interrupted:
        ctx.exit(SIGNAL_EXIT.get(signal_name or "", 130))


def _summary(result, params: int) -> dict:
    """``--json``'s summary (docs/json.md), with the 1.0 names of three keys kept for a release."""
    bits = lambda nats: nats / LN2 if nats is not None else None  # noqa: E731
    summary = {
        "steps": result.steps,
        "epochs": round(result.epochs, 3),
        "elapsed_s": round(result.elapsed, 1),
        "eval_s": round(result.eval_seconds, 1),
        "best_val_nats": result.best_val_loss,
        "best_val_bits": bits(result.best_val_loss),
        "last_val_nats": result.last_val_loss,
        "last_val_bits": bits(result.last_val_loss),
        "stopped_by": result.stopped_by,
        "last": str(result.last_path),
        "best": str(result.best_path) if result.best_path else None,
        "parameters": params,
        "sample": result.sample,
    }
    # Deprecated spellings (charrnn 1.0), to be removed in 1.2.
    summary.update(
        best_val_loss=summary["best_val_nats"],
        best_val_bpc=summary["best_val_bits"],
        last_val_loss=summary["last_val_nats"],
    )
    return summary


def _print_summary(console, s: dict) -> None:
    table = Table(title="training finished", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    if s["best_val_nats"] is not None:
        table.add_row("best val loss", f"{s['best_val_nats']:.4f} nats/char = {s['best_val_bits']:.4f} bits/char")
    table.add_row("steps / epochs", f"{s['steps']} / {s['epochs']:.2f}")
    table.add_row("time", f"{format_duration(s['elapsed_s'])} (evaluation {format_duration(s['eval_s'])})")
    table.add_row("stopped by", s["stopped_by"])
    table.add_row("last checkpoint", s["last"])
    if s["best"]:
        table.add_row("best checkpoint", s["best"])
    console.print(table)

"""``charrnn eval``: the loss of a checkpoint on a text, in nats/char, bits/char and perplexity."""

from __future__ import annotations

from pathlib import Path

import click

from charrnn import checkpoint as ckpt_io
from charrnn.cli.common import DEVICE_HELP, echo_json, stderr_console
from charrnn.corpus_files import load_corpus
from charrnn.data import Corpus, default_corpus_path, read_text, split
from charrnn.errors import ConfigError
from charrnn.loss import evaluate
from charrnn.devices import resolve_device


@click.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("text", required=False, type=click.Path(path_type=Path))
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Parallel streams.")
@click.option("--seq-len", type=click.IntRange(min=1), default=256, show_default=True, help="Characters per chunk; the state carries across chunks.")
@click.option("--encoding", default="utf-8", show_default=True)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def eval_cmd(checkpoint: Path, text: Path | None, batch_size, seq_len, encoding, device, as_json):
    """Loss of CHECKPOINT on TEXT, or on the checkpoint's own validation split when TEXT is omitted.

    TEXT may be a file, a folder or a quoted glob, as for `charrnn train`. Every character is scored
    (no --eval-chars subset here). Without TEXT, the training run's corpus cache next to CHECKPOINT
    is reused when it is still valid.
    """
    ckpt = ckpt_io.load(checkpoint)
    vocab = ckpt.vocab
    if text is None:
        corpus_path = ckpt.corpus.get("path") or str(default_corpus_path())
        if ckpt.corpus.get("path"):
            cache = checkpoint.parent / "cache"
            corpus = load_corpus(
                corpus_path, encoding=encoding, separator=ckpt.corpus.get("separator") or "\n", vocab=vocab,
                cache_dir=cache if cache.is_dir() else None,
            ).corpus
        else:
            raw = read_text(corpus_path)
            corpus = Corpus.from_text(raw, ckpt.corpus.get("name", corpus_path), vocab)
        if corpus.sha256 != ckpt.corpus.get("sha256"):
            raise ConfigError(f"{corpus_path} changed since {checkpoint} was trained; pass the TEXT to evaluate on")
        _, ids = split(corpus.ids, float(ckpt.corpus.get("val_frac", 0.1)))
        what = f"validation split of {corpus.name}"
    else:
        corpus = load_corpus(text, encoding=encoding, vocab=vocab).corpus
        ids, what = corpus.ids, str(text)
    torch_device = resolve_device(device)
    model = ckpt.build_model(torch_device)
    loss = evaluate(model, ids, batch_size=batch_size, seq_len=seq_len, device=torch_device)
    result = {
        "checkpoint": str(checkpoint), "text": what, "chars": loss.chars,
        "nats_per_char": loss.nats, "bits_per_char": loss.bits, "perplexity": loss.perplexity,
    }
    if as_json:
        echo_json(result)
    else:
        stderr_console().print(f"[dim]{what}: {loss.chars:,} characters scored")
        click.echo(f"{loss.nats:.4f} nats/char  {loss.bits:.4f} bits/char  perplexity {loss.perplexity:.3f}")

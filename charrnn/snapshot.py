"""A training run as a checkpoint and back: what an exact resume needs, captured and restored.

``snapshot`` turns the parts of a run (weights, optimizer, grad scaler, progress, every process's
RNG and carried hidden state) into a Checkpoint; ``restore`` puts a Checkpoint back into freshly
built parts, so that the run continues bit for bit where it stopped when it resumes on as many
processes, and cleanly (at the start of the next epoch) on another number. Both are plain
functions of their arguments: the trainer calls them, and tests call them without a trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from charrnn.checkpoint import Checkpoint
from charrnn.data import Corpus
from charrnn.errors import CheckpointError
from charrnn.model import ModelConfig, State
from charrnn.train_config import TrainConfig
from charrnn.train_state import TrainState


def rank_record(carried: State, device: torch.device) -> dict:
    """This process's part of an exact resume: its RNG state and carried hidden state (on the CPU).

    rng: "torch" (the CPU generator) and, on CUDA, "cuda" (``device``'s generator);
    state: the hidden state tensors, each (num_layers, batch_size, hidden_size).
    """
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {"rng": rng, "state": [s.detach().cpu() for s in carried]}


def snapshot(
    *,
    model_config: ModelConfig,
    train_config: TrainConfig,
    corpus: Corpus,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    ranks: list[dict],
    device: torch.device,
    vocab_history: list[dict] | None = None,
) -> Checkpoint:
    """The run as a Checkpoint (``path`` None; ``checkpoint.save`` writes it).

    ``model`` is the uncompiled, unwrapped module. ``ranks`` holds every process's ``rank_record``
    in rank order, this process's (rank 0's) first; with more than one it goes into resume.ranks,
    so that a resume on as many processes gives each its own again. ``vocab_history`` is how the
    vocabulary grew (None: it is the original one, as of now).
    """
    options = {**train_config.to_dict(), "device": str(device), "world_size": len(ranks)}
    resume = {
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": ranks[0]["rng"],
        "state": ranks[0]["state"],
        "world_size": len(ranks),
    }
    if len(ranks) > 1:
        resume["ranks"] = ranks
    corpus_record = {
        "name": corpus.name,
        "path": corpus.path,
        "chars": len(corpus),
        "sha256": corpus.sha256,
        "val_frac": train_config.val_frac,
        "separator": corpus.separator,
    }
    return Checkpoint(
        path=None,
        model_config=model_config,
        vocab=corpus.vocab,
        weights=model.state_dict(),
        train_config=options,
        corpus=corpus_record,
        resume=resume,
        vocab_history=list(vocab_history or []),
        **state.to_dict(),
    )


@dataclass
class Restored:
    """What ``restore`` gives back: the run's progress, and the hidden state to carry on from
    (None: start every stream from a zero state)."""

    state: TrainState
    carried: State | None


def restore(
    ckpt: Checkpoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    train_config: TrainConfig,
    steps_per_epoch: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> Restored:
    """Load ``ckpt``'s run into ``model``, ``optimizer`` and ``scaler`` and set this process's RNG;
    CheckpointError if it holds no usable progress record.

    The optimizer keeps the kernel choice (fused/foreach) it was built with: the saved groups carry
    the saving machine's. Resumed on the number of processes that saved it, every process gets its
    own RNG and carried state back (bitwise continuation); on another number, each process reseeds
    from the seed, rank and step, and the run continues at the start of the next epoch.
    """
    try:
        state = TrainState.from_dict(
            {
                "progress": ckpt.progress,
                "history": ckpt.history,
                "best_val_loss": ckpt.best_val_loss,
                "last_train_loss": ckpt.last_train_loss,
            }
        )
    except ValueError as exc:
        where = f"{ckpt.path}: " if ckpt.path is not None else ""
        raise CheckpointError(
            f"{where}cannot resume: {exc}; resume from a last.pt written by `charrnn train`"
        ) from None
    model.load_state_dict(ckpt.weights)
    resume = ckpt.resume or {}
    try:  # checkpoint.load validated these; torch's own checks are the second line of defence
        if "optimizer" in resume:
            optimizer.load_state_dict(resume["optimizer"])
            for group in optimizer.param_groups:
                # The saved groups carry the saving machine's kernel choice; this device decides.
                group["fused"], group["foreach"] = optimizer.defaults["fused"], optimizer.defaults["foreach"]
        if resume.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(resume["scaler"])
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        where = f"{ckpt.path}: " if ckpt.path is not None else ""
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:150]
        raise CheckpointError(f"{where}cannot resume: its optimizer state does not fit the model ({detail})") from None

    # 1. RNG: this process's own when the process count is the same, else a fresh stream per process.
    ranks = resume.get("ranks")
    per_rank = ranks if isinstance(ranks, list) and len(ranks) == world_size else None
    exact = per_rank is not None
    rng = per_rank[rank]["rng"] if per_rank is not None else resume.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and device.type == "cuda":
        try:
            torch.cuda.set_rng_state(rng["cuda"], device)
        except RuntimeError:
            where = f"{ckpt.path}: " if ckpt.path is not None else ""
            raise CheckpointError(f"{where}cannot resume: its CUDA generator state is not one torch accepts") from None
    if world_size > 1 and not exact:
        torch.manual_seed(train_config.seed + rank + 7919 * state.step)

    # 2. Carried state and data position: kept if the layout is the one that saved them.
    saved = per_rank[rank]["state"] if per_rank is not None else resume.get("state")
    same_layout = resume.get("world_size", 1) == world_size
    carried = None
    if saved and same_layout and saved[0].shape[1] == train_config.batch_size:
        # float32, as a fresh state is: a bf16 or fp16 run saves its autocast dtype, which casts back exactly
        carried = tuple(s.to(device=device, dtype=torch.float32) for s in saved)
    if state.batch >= steps_per_epoch or not same_layout:
        # The end of an epoch, or another data layout (another process count): start the next epoch cleanly.
        state.epoch += 1 if state.batch else 0
        state.batch = 0
        carried = None
    return Restored(state, carried)

"""A run as a checkpoint and back, without a trainer: TrainState's record, snapshot and restore."""

import pytest
import torch
import torch.nn.functional as F

from charrnn import checkpoint as ckpt_io
from charrnn.data import Batches, Corpus
from charrnn.errors import CheckpointError
from charrnn.model import CharRNN, ModelConfig, detach_state
from charrnn.snapshot import rank_record, restore, snapshot
from charrnn.train_config import TrainConfig
from charrnn.train_state import TrainState
from conftest import make_text

CORPUS = Corpus.from_text(make_text(100), "t.txt")
MODEL = ModelConfig(vocab_size=len(CORPUS.vocab), num_layers=2, hidden_size=16, embedding_size=8, dropout=0.3)
CONFIG = TrainConfig(batch_size=3, seq_len=12, max_steps=100)
CPU = torch.device("cpu")


def test_train_state_round_trips_through_its_checkpoint_record():
    state = TrainState(step=7, epoch=1, batch=2, elapsed=3.5, chars_seen=700, lr_scale=0.5, last_train_loss=1.25)
    assert state.record_eval(train_loss=1.3, val_loss=1.4, lr=1e-3) is True
    state.step = 9
    assert state.record_eval(train_loss=1.2, val_loss=1.5, lr=1e-3) is False
    record = state.to_dict()
    assert set(record) == {"progress", "history", "best_val_loss", "last_train_loss"}
    assert record["progress"]["chars_seen"] == 700 and record["history"]["step"] == [7, 9]
    again = TrainState.from_dict(record)
    assert again == state and again.best_val_loss == 1.4 and again.last_val_loss == 1.5


def test_train_state_reads_a_record_without_lr_scale_and_names_what_is_missing():
    record = TrainState(step=3).to_dict()
    del record["progress"]["lr_scale"]
    assert TrainState.from_dict(record).lr_scale == 1.0
    del record["progress"]["batch"], record["history"]["lr"]
    with pytest.raises(ValueError, match="lacks batch, history.lr"):
        TrainState.from_dict(record)


def _parts(seed: int):
    torch.manual_seed(seed)
    model = CharRNN(MODEL)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    return model, optimizer, torch.amp.GradScaler("cpu", enabled=False)


def _train(model, optimizer, batches, state, carried, steps):
    """A bare loop over ``batches`` from ``state``'s position: the losses, and the state carried on."""
    model.train()
    losses = []
    for _ in range(steps):
        x, y = (torch.from_numpy(a) for a in batches[state.batch])
        logits, carried = model(x, carried)
        loss = F.cross_entropy(logits.view(-1, MODEL.vocab_size), y.view(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        carried = detach_state(carried)
        state.step, state.batch = state.step + 1, state.batch + 1
        losses.append(loss.item())
    return losses, carried


def _snapshot(model, optimizer, scaler, state, ranks):
    return snapshot(
        model_config=MODEL,
        train_config=CONFIG,
        corpus=CORPUS,
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        state=state,
        ranks=ranks,
        device=CPU,
    )


def test_snapshot_then_restore_continues_identically(tmp_path):
    batches = Batches(CORPUS.ids, CONFIG.batch_size, CONFIG.seq_len)
    model, optimizer, scaler = _parts(seed=0)
    state = TrainState()
    _, carried = _train(model, optimizer, batches, state, model.init_state(3), 4)
    path = ckpt_io.save(_snapshot(model, optimizer, scaler, state, [rank_record(carried, CPU)]), tmp_path / "s.pt")
    expected, _ = _train(model, optimizer, batches, state, carried, 4)  # the run, continued

    fresh, fresh_optimizer, fresh_scaler = _parts(seed=1)  # other weights, other RNG: restore must set all
    restored = restore(
        ckpt_io.load(path),
        fresh,
        fresh_optimizer,
        fresh_scaler,
        train_config=CONFIG,
        steps_per_epoch=len(batches),
        device=CPU,
    )
    assert restored.state.step == 4 and restored.state.batch == 4 and restored.carried is not None
    got, _ = _train(fresh, fresh_optimizer, batches, restored.state, restored.carried, 4)
    assert got == expected
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name


def test_each_process_gets_its_own_rng_and_state_back_and_another_count_starts_a_clean_epoch():
    model, optimizer, scaler = _parts(seed=0)
    state = TrainState(step=5, batch=5)
    records = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        records.append(rank_record(tuple(torch.full_like(s, rank + 1.0) for s in model.init_state(3)), CPU))
    ckpt = ckpt_io.from_dict(_snapshot(model, optimizer, scaler, state, records).to_dict())
    assert ckpt.resume["world_size"] == 2 and len(ckpt.resume["ranks"]) == 2

    same = restore(ckpt, *_parts(seed=1), train_config=CONFIG, steps_per_epoch=50, device=CPU, rank=1, world_size=2)
    assert torch.equal(torch.get_rng_state(), records[1]["rng"]["torch"])
    assert all(bool((s == 2.0).all()) for s in same.carried) and same.state.batch == 5

    other = restore(ckpt, *_parts(seed=1), train_config=CONFIG, steps_per_epoch=50, device=CPU)
    assert other.carried is None and (other.state.epoch, other.state.batch) == (1, 0)


def test_one_process_writes_no_rank_list_and_restoring_a_broken_record_is_a_checkpoint_error():
    model, optimizer, scaler = _parts(seed=0)
    ckpt = _snapshot(model, optimizer, scaler, TrainState(), [rank_record(model.init_state(3), CPU)])
    assert "ranks" not in ckpt.resume and ckpt.train_config["world_size"] == 1
    del ckpt.progress["chars_seen"]
    with pytest.raises(CheckpointError, match="cannot resume: progress record lacks chars_seen"):
        restore(ckpt, *_parts(seed=1), train_config=CONFIG, steps_per_epoch=50, device=CPU)

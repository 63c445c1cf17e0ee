import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from charrnn import checkpoint as ckpt_io
from charrnn.data import Corpus, Vocab
from charrnn.errors import CheckpointError, OutputError
from charrnn.model import CharRNN, ModelConfig
from charrnn.snapshot import rank_record, snapshot
from charrnn.train_config import TrainConfig
from charrnn.train_state import TrainState

FORMAT_DOC = Path(__file__).resolve().parent.parent / "docs" / "checkpoint-format.md"


def make_ckpt(cell="lstm") -> ckpt_io.Checkpoint:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=4, cell=cell, num_layers=2, hidden_size=8, embedding_size=4)
    model = CharRNN(cfg)
    return ckpt_io.Checkpoint(
        path=None,
        model_config=cfg,
        vocab=Vocab("\nabc"),
        weights=model.state_dict(),
        progress={"step": 3},
        history={"val_loss": [1.5, 1.2]},
        best_val_loss=1.2,
    )


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_round_trip_gives_identical_outputs(tmp_path, cell):
    ckpt = make_ckpt(cell)
    path = ckpt_io.save(ckpt, tmp_path / "m.pt")
    loaded = ckpt_io.load(path)
    assert loaded.model_config == ckpt.model_config and loaded.vocab == Vocab("\nabc")
    assert loaded.best_val_loss == 1.2 and loaded.history["val_loss"] == [1.5, 1.2]
    idx = torch.tensor([[0, 1, 2, 3, 1]])
    original = CharRNN(ckpt.model_config)
    original.load_state_dict(ckpt.weights)
    expected, _ = original.eval()(idx)
    got, _ = loaded.build_model()(idx)
    assert torch.equal(expected, got)


def test_saved_file_is_plain_data_loadable_with_weights_only(tmp_path):
    path = ckpt_io.save(make_ckpt(), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    assert raw[ckpt_io.FORMAT_KEY] == ckpt_io.FORMAT_MARKER and raw[ckpt_io.VERSION_KEY] == ckpt_io.FORMAT_VERSION
    assert not [p for p in tmp_path.iterdir() if p.name != "m.pt"], "no temporary file may be left behind"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    data = make_ckpt().to_dict()
    data["evil"] = _Payload(str(marker))
    path = tmp_path / "evil.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="not a valid charrnn checkpoint.*pickled"):
        ckpt_io.load(path)
    assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError, match="not a valid charrnn checkpoint"):
        ckpt_io.load(path)
    assert not marker.exists()


def test_truncated_file_is_one_line_error(tmp_path):
    path = ckpt_io.save(make_ckpt(), tmp_path / "m.pt")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="not a valid charrnn checkpoint") as info:
        ckpt_io.load(path)
    assert "\n" not in str(info.value)


def test_foreign_torch_file_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="no charrnn format marker"):
        ckpt_io.load(path)


def test_text_file_and_missing_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a valid charrnn checkpoint"):
        ckpt_io.load(path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ckpt_io.load(tmp_path / "missing.pt")


def _save_raw(tmp_path, mutate):
    data = make_ckpt().to_dict()
    mutate(data)
    path = tmp_path / "m.pt"
    torch.save(data, path)
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(version=ckpt_io.FORMAT_VERSION + 1), "newer than this charrnn"),
        (lambda d: d["model"].pop("head.bias"), "missing weights: head.bias"),
        (lambda d: d["model"].update({"head.weight": torch.zeros(3, 3)}), "head.weight.*shape"),
        (lambda d: d.update(vocab="\nab"), "vocab: has 3 characters but the model expects 4"),
        (lambda d: d.update(vocab="cba\n"), "not a sorted set"),
        (lambda d: d["model"].update(extra=torch.zeros(1)), "unexpected weights: extra"),
        (lambda d: d["model_config"].update(cell="lstmx"), "unknown cell"),
        (lambda d: d.pop("vocab"), "'vocab'"),
        (lambda d: d["model"]["head.bias"].fill_(float("nan")), "NaN"),
    ],
)
def test_inconsistent_checkpoint_names_the_mismatch(tmp_path, mutate, message):
    path = _save_raw(tmp_path, mutate)
    with pytest.raises(CheckpointError, match=message):
        ckpt_io.load(path)


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = ckpt_io.save(make_ckpt(), tmp_path / "last.pt")
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputError, match="No space left on device"):
        ckpt_io.save(make_ckpt("gru"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "the temporary file is cleaned up"
    ckpt_io.load(path)


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
def test_a_saved_file_gets_the_umasks_mode_and_a_replaced_one_keeps_its_own(tmp_path):
    # The temp file a save starts as is owner-only; a checkpoint meant to be shared (charrnn serve under
    # another user, a group folder) must not end up that way.
    old = os.umask(0o027)
    try:
        path = ckpt_io.save(make_ckpt(), tmp_path / "last.pt")
        assert path.stat().st_mode & 0o777 == 0o640
        path.chmod(0o604)
        ckpt_io.save(make_ckpt("gru"), path)
        assert path.stat().st_mode & 0o777 == 0o604
    finally:
        os.umask(old)


def test_a_file_system_that_refuses_modes_does_not_fail_the_save(tmp_path, monkeypatch):
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refuse, raising=False)
    path = ckpt_io.save(make_ckpt(), tmp_path / "last.pt")
    assert ckpt_io.load(path).progress == {"step": 3}


def _documented_keys() -> set[str]:
    """The first column of every row of docs/checkpoint-format.md's key table."""
    rows = re.findall(r"^\| `([^`]+)` \|", FORMAT_DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert rows, "no key table found"
    return set(rows)


def test_the_format_doc_lists_every_key_save_writes_and_no_other(tmp_path):
    corpus = Corpus.from_text("to be or not to be\n" * 20, "t.txt")
    cfg = ModelConfig(vocab_size=len(corpus.vocab), num_layers=1, hidden_size=8, embedding_size=4)
    model = CharRNN(cfg)
    optimizer = torch.optim.Adam(model.parameters())
    carried = model.init_state(2)
    ranks = [rank_record(carried, torch.device("cpu"))] * 2  # two processes: resume.ranks is written too
    ckpt = snapshot(
        model_config=cfg,
        train_config=TrainConfig(),
        corpus=corpus,
        model=model,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        state=TrainState(),
        ranks=ranks,
        device=torch.device("cpu"),
    )
    raw = torch.load(ckpt_io.save(ckpt, tmp_path / "c.pt"), weights_only=True)
    written = set(raw)
    for key, value in raw.items():
        if isinstance(value, dict) and key != "model":  # the weights' names depend on the model
            written |= {f"{key}.{sub}" for sub in value}
    documented = _documented_keys()
    assert sorted(written - documented) == [], "written by save but not in docs/checkpoint-format.md"
    assert sorted(documented - written) == [], "in docs/checkpoint-format.md but not written by save"

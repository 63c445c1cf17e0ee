"""Hostile checkpoints (docs/guarantees.md): a crafted file costs time and memory in proportion to its
size, and every field is validated before use, so each command ends in exit 0 or a one-line error."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import pickle
import pickletools
import resource
import struct
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn import checkpoint as ckpt_io
from charrnn import checkpoint_archive
from charrnn.cli import cli
from charrnn.cli.inspect import describe
from charrnn.errors import CheckpointError
from charrnn.model import CharRNN, ModelConfig
from conftest import make_text, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = ModelConfig(vocab_size=5, num_layers=1, hidden_size=4, embedding_size=2)


def base_dict() -> dict:
    torch.manual_seed(0)
    ckpt = ckpt_io.Checkpoint(path=None, model_config=CFG, vocab="abcde", weights=CharRNN(CFG).state_dict())
    return ckpt.to_dict()


def save_raw(data: dict, path: Path) -> Path:
    torch.save(data, path)
    return path


def archive_records(data: dict) -> dict[str, bytes]:
    """The records torch.save writes for ``data``, by name."""
    buffer = io.BytesIO()
    torch.save(data, buffer)
    with zipfile.ZipFile(buffer) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def write_zip(path: Path, records: dict[str, bytes], compress: set[str] = frozenset()) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in records.items():
            kind = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            archive.writestr(zipfile.ZipInfo(name), payload, compress_type=kind)
    return path


def _central_directory(raw: bytes) -> tuple[int, int, int]:
    """(offset of the end record, offset of the central directory, its size)."""
    end = raw.rindex(b"PK\x05\x06")
    size, offset = struct.unpack("<LL", raw[end + 12 : end + 20])
    return end, offset, size


def duplicate_central_records(raw: bytes, copies: int) -> bytes:
    """The archive with its whole central directory listed ``copies`` times."""
    end, offset, size = _central_directory(raw)
    entries = raw[offset : offset + size]
    count = struct.unpack("<H", raw[end + 10 : end + 12])[0]
    tail = bytearray(raw[end:])
    struct.pack_into("<HHLL", tail, 8, count * copies, count * copies, size * copies, offset)
    return raw[:offset] + entries * copies + bytes(tail)


def inflate_declared_size(raw: bytes, record_suffix: bytes, declared: int) -> bytes:
    """The archive with the central entry of the record ending in ``record_suffix`` declaring ``declared`` bytes."""
    _, offset, size = _central_directory(raw)
    out = bytearray(raw)
    at = offset
    while at < offset + size:
        name_len, extra_len, comment_len = struct.unpack("<HHH", out[at + 28 : at + 34])
        name = bytes(out[at + 46 : at + 46 + name_len])
        if name.endswith(record_suffix):
            struct.pack_into("<LL", out, at + 20, declared, declared)
        at += 46 + name_len + extra_len + comment_len
    return bytes(out)


def refused_within_bounds(path: Path, pattern: str) -> None:
    """load(path) is the one-line CheckpointError matching ``pattern``, within seconds and without
    growing the process's peak memory by more than 300 MB (the crafted files imply gigabytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=pattern) as info:
        ckpt_io.load(path)
    seconds = time.perf_counter() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert "\n" not in str(info.value)
    assert seconds < 15, f"took {seconds:.1f} s"
    assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB"


# -- 1. bounded cost: crafted archives -------------------------------------------------------------


def test_stride_zero_weights_are_refused_before_they_are_materialised(tmp_path):
    data = base_dict()
    big = ModelConfig(vocab_size=5, num_layers=2, hidden_size=8192, embedding_size=2)  # 2.1 GB of float32
    data["model_config"] = big.to_dict()
    data["model"] = {name: torch.zeros(1).expand(shape) for name, shape in _shapes(big).items()}
    path = save_raw(data, tmp_path / "expanded.pt")
    assert path.stat().st_size < 100_000
    refused_within_bounds(path, r"not a dense tensor whose storage holds exactly its elements")


def _shapes(config: ModelConfig) -> dict:
    from charrnn.model import parameter_shapes

    return parameter_shapes(config)


@pytest.mark.parametrize("num_layers", [10**8, 2**31 - 1])
def test_a_huge_num_layers_is_refused_before_any_shape_table(tmp_path, num_layers):
    data = base_dict()
    data["model_config"]["num_layers"] = num_layers
    refused_within_bounds(save_raw(data, tmp_path / "deep.pt"), r"implies [\d,]+ parameters but the file stores only")


def test_weights_sharing_one_storage_are_refused(tmp_path):
    data = base_dict()
    weight = data["model"]["rnn.weight_hh_l0"]
    data["model"]["rnn.weight_ih_l0"] = weight.view(16, 4)[:, :2].contiguous()  # its own storage: fine
    data["model"]["rnn.bias_ih_l0"] = data["model"]["rnn.bias_hh_l0"].view(-1)  # another view of one storage
    refused_within_bounds(save_raw(data, tmp_path / "shared.pt"), r"shares its storage with another tensor")


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: torch.sparse_coo_tensor(torch.zeros(2, 1, dtype=torch.long), torch.ones(1), (5, 2)), "dense CPU"),
        (lambda: torch.empty(5, 2, device="meta"), "dense CPU tensor"),
        (lambda: torch.zeros(5, 2, dtype=torch.int64), "dtype torch.int64"),
        (lambda: torch.zeros(2, 5).t(), "not a dense tensor"),
        (lambda: torch.zeros(20)[5:15].view(5, 2), "not a dense tensor"),
    ],
    ids=["sparse", "meta", "int64", "transposed", "offset view"],
)
def test_weights_that_are_not_dense_float_tensors_are_refused(tmp_path, make, pattern):
    data = base_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note that sparse invariant checks are off
        data["model"]["embedding.weight"] = make()
    with pytest.raises(CheckpointError, match=f"model.embedding.weight: .*{pattern}"):
        ckpt_io.load(save_raw(data, tmp_path / "odd.pt"))


def test_duplicate_central_directory_records_are_refused_without_reading_them_again(tmp_path):
    data = base_dict()
    data["extra_weights_for_size"] = None
    raw = (save_raw(data, tmp_path / "ok.pt")).read_bytes()
    path = tmp_path / "dup.pt"
    path.write_bytes(duplicate_central_records(raw, 500))
    refused_within_bounds(path, r"listed more than once")


def test_records_torch_never_writes_are_refused(tmp_path):
    records = archive_records(base_dict())
    prefix = next(iter(records)).split("/")[0]
    records[f"{prefix}/payload.bin"] = b"\0" * 1000
    refused_within_bounds(write_zip(tmp_path / "extra.pt", records), r"unexpected record .*payload\.bin")


@pytest.mark.slow  # compresses 50 MB
def test_a_deflated_pickle_bomb_is_refused_without_inflating_it(tmp_path):
    records = archive_records(base_dict())
    pickled = next(name for name in records if name.endswith("/data.pkl"))
    # 50 MB of one string, deflated to about 50 KB.
    records[pickled] = b"\x80\x02X" + struct.pack("<L", 50_000_000) + b"a" * 50_000_000 + b"."
    path = write_zip(tmp_path / "bomb.pt", records, compress={pickled})
    del records
    assert path.stat().st_size < 1_000_000
    refused_within_bounds(path, r"record .*data\.pkl is compressed")


def test_declared_sizes_beyond_the_file_are_refused(tmp_path):
    raw = save_raw(base_dict(), tmp_path / "ok.pt").read_bytes()
    path = tmp_path / "liar.pt"
    path.write_bytes(inflate_declared_size(raw, b"/data/0", 2**31))
    refused_within_bounds(path, r"record .*/data/0 declares 2147483648 bytes, more than the file holds")


@pytest.mark.slow  # scans a million operations
def test_a_pickle_that_would_build_too_much_is_refused_before_unpickling(tmp_path):
    records = archive_records(base_dict())
    pickled = next(name for name in records if name.endswith("/data.pkl"))
    # Three million empty dicts in a list: 3 MB stored, a gigabyte and minutes to unpickle.
    records[pickled] = b"\x80\x02](" + b"}" * 3_000_000 + b"e."
    refused_within_bounds(write_zip(tmp_path / "dicts.pt", records), r"too large to unpickle")


@pytest.mark.slow  # unpickles half a million numbers
def test_a_normal_checkpoints_pickle_is_far_below_the_caps(tmp_path):
    """The caps leave room: a history of 100,000 evaluations loads."""
    data = base_dict()
    n = 100_000
    data["history"] = {
        "step": list(range(n)),
        "train_loss": [1.5] * n,
        "val_loss": [1.4] * n,
        "lr": [1e-3] * n,
        "elapsed": [float(i) for i in range(n)],
    }
    loaded = ckpt_io.load(save_raw(data, tmp_path / "long.pt"))
    assert len(loaded.history["val_loss"]) == n


_PICKLABLE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300) | st.binary(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=40) | st.dictionaries(st.text(max_size=5), inner, max_size=8) | st.tuples(inner)
    ),
    max_leaves=40,
)


@pytest.mark.slow  # 30 generated values
@settings(max_examples=30, deadline=None, derandomize=True)
@given(value=_PICKLABLE, protocol=st.sampled_from([2, 4]))
def test_the_pickle_scan_counts_what_pickletools_counts(value, protocol):
    """The scan that caps the pickle steps over the same operations pickletools.genops reads."""
    data = pickle.dumps(value, protocol=protocol)
    ops = sum(1 for _ in pickletools.genops(data)) - 1  # STOP is not counted
    cap = checkpoint_archive.MAX_PICKLE_OPS
    try:
        checkpoint_archive.MAX_PICKLE_OPS = ops
        checkpoint_archive.check_pickle(data, Path("p.pt"))
        checkpoint_archive.MAX_PICKLE_OPS = ops - 1
        with pytest.raises(CheckpointError, match="too large to unpickle"):
            checkpoint_archive.check_pickle(data, Path("p.pt"))
    finally:
        checkpoint_archive.MAX_PICKLE_OPS = cap


def test_huge_integers_are_named_not_printed(tmp_path):
    data = base_dict()
    data["version"] = 10**600
    with pytest.raises(CheckpointError, match="version an integer of 601 digits is newer than this charrnn"):
        ckpt_io.load(save_raw(data, tmp_path / "v.pt"))


# -- 6. which file, and what is in it --------------------------------------------------------------


def test_a_fifo_is_not_a_regular_file_and_does_not_block(runner, tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    for args in (["inspect", str(fifo)], ["sample", str(fifo)], ["eval", str(fifo)]):
        one_line_error(runner.invoke(cli, args), 3, r"pipe\.pt: not a regular file")


def test_a_folder_and_a_path_through_a_file(runner, tmp_path):
    one_line_error(runner.invoke(cli, ["inspect", str(tmp_path)]), 3, r"is a directory")
    (tmp_path / "f").write_text("x")
    one_line_error(runner.invoke(cli, ["inspect", str(tmp_path / "f" / "x.pt")]), 3, r"no such checkpoint")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_checkpoint_exits_three(runner, tmp_path):
    path = save_raw(base_dict(), tmp_path / "locked.pt")
    path.chmod(0)
    one_line_error(runner.invoke(cli, ["inspect", str(path)]), 3, r"cannot read the checkpoint \(permission denied\)")


def test_a_checkpoint_the_os_refuses_to_open_exits_three(runner, tmp_path, monkeypatch):
    """The same path as a file without read permission, also where the tests run as root."""
    path = save_raw(base_dict(), tmp_path / "locked.pt")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint_archive.os, "open", refuse)
    one_line_error(runner.invoke(cli, ["inspect", str(path)]), 3, r"cannot read the checkpoint \(permission denied\)")


class _System:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickled_os_system_payload_gets_the_pickled_objects_message(runner, tmp_path):
    data = base_dict()
    data["progress"] = {"step": _System()}
    path = save_raw(data, tmp_path / "system.pt")
    result = runner.invoke(cli, ["inspect", str(path)])
    one_line_error(result, 3, r"holds pickled Python objects, which charrnn refuses to load: .*system")
    assert "weights_only" not in result.stderr


# -- 2. every field validated ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """A tiny run with a resume state, its text and its raw checkpoint dict."""
    from click.testing import CliRunner

    folder = tmp_path_factory.mktemp("hostile")
    text = folder / "text.txt"
    text.write_text(make_text(60), encoding="utf-8")
    out = folder / "run"
    args = ["train", str(text), "--num-layers", "1", "--hidden-size", "8", "--embedding-size", "4"]
    args += ["--batch-size", "2", "--seq-len", "16", "--max-steps", "4", "--eval-every", "2", "--eval-chars", "64"]
    args += ["--out-dir", str(out), "-q", "--sample-length", "0", "--device", "cpu", "--no-cache"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr
    raw = torch.load(out / "last.pt", weights_only=True)
    for name, (command, _) in COMMANDS.items():  # the unmutated checkpoint passes every command
        result = CliRunner().invoke(cli, command(out / "last.pt", text))
        assert result.exit_code == 0, (name, result.stderr)
    return text, raw


def field_paths(data, prefix=()) -> list[tuple]:
    """Every key path of the checkpoint dict, down to list items (the first and last) and tensors."""
    paths = []
    items = data.items() if isinstance(data, dict) else []
    if isinstance(data, (list, tuple)) and data:
        items = [(0, data[0])] + ([(len(data) - 1, data[-1])] if len(data) > 1 else [])
    for key, value in items:
        path = (*prefix, key)
        paths.append(path)
        if isinstance(value, (dict, list, tuple)):
            paths.extend(field_paths(value, path))
    return paths


def _is_float_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


MUTATIONS = {
    "none": lambda old: None,
    "true": lambda old: True,
    "string": lambda old: "x",
    "surrogate": lambda old: "a\ud800",
    "negative": lambda old: -1,
    "zero": lambda old: 0,
    "googol^4": lambda old: 10**400,
    "2^64": lambda old: 2**64,
    "nan": lambda old: math.nan,
    "inf": lambda old: math.inf,
    "tiny": lambda old: -1e300,
    "empty list": lambda old: [],
    "list": lambda old: [1.0, "a"],
    "dict": lambda old: {"a": 1},
    "non-str key": lambda old: {1: 2, (3,): 4},
    "tensor": lambda old: torch.zeros(3),
    "expanded": lambda old: torch.zeros(1).expand(1000, 1000),
    "nan tensor": lambda old: torch.full_like(old, math.nan) if _is_float_tensor(old) else math.nan,
    "self": lambda old: old,  # replaced below by a container holding itself
    "delete": None,
    "longer": None,  # one more item in a list
}


def mutate(data: dict, path: tuple, how: str) -> dict:
    data = copy.deepcopy(data)
    *parents, key = path
    holder = data
    for part in parents:
        holder = holder[part]
    if isinstance(holder, tuple):
        return data  # tuples (Adam's betas) are rebuilt whole by their parent's mutation
    if how == "delete":
        if isinstance(holder, dict):
            del holder[key]
        else:
            holder.pop(key)
    elif how == "longer":
        if isinstance(holder[key], list):
            holder[key].append(holder[key][-1] if holder[key] else 0)
        else:
            holder[key] = [holder[key]] * 3
    elif how == "self":
        loop: list = []
        loop.append(loop)
        holder[key] = loop
    else:
        holder[key] = MUTATIONS[how](holder[key])
    return data


def _check_loaded_or_refused(data: dict) -> ckpt_io.Checkpoint | None:
    try:
        ckpt = ckpt_io.from_dict(data, Path("m.pt"))
    except CheckpointError as exc:
        message = str(exc)
        assert "\n" not in message and "not a valid charrnn checkpoint" in message or "newer than" in message
        return None
    json.dumps(describe(ckpt), allow_nan=True)  # what inspect --json shows can be written
    return ckpt


@pytest.mark.slow  # about two thousand mutated checkpoints
def test_every_field_mutated_every_way_loads_cleanly_or_is_named(resumable):
    """Each field of a resumable checkpoint, replaced by values of other types and ranges, deleted or
    lengthened: from_dict gives a Checkpoint that inspect can describe, or the one-line error."""
    _, raw = resumable
    paths = field_paths(raw)
    assert len(paths) > 80, "the walk reaches the nested fields"
    refused = 0
    for path in paths:
        for how in MUTATIONS:
            refused += _check_loaded_or_refused(mutate(raw, path, how)) is None
    assert refused > len(paths) * 10, "most mutations break the schema"


@pytest.mark.parametrize("key", ["lr", "betas", "eps", "weight_decay"])
def test_an_optimizer_group_without_a_key_adam_reads_is_refused(resumable, key):
    _, raw = resumable
    data = copy.deepcopy(raw)
    del data["resume"]["optimizer"]["param_groups"][0][key]
    with pytest.raises(CheckpointError, match=rf"param_groups\[0\]\.{key}: is missing"):
        ckpt_io.from_dict(data, Path("m.pt"))


@pytest.mark.parametrize(
    "path, value, pattern",
    [
        (("progress", "elapsed"), math.nan, r"progress\.elapsed: must be a finite number"),
        (("progress", "step"), "12", r"progress\.step: must be an integer, got str '12'"),
        (("history", "val_loss"), [1.0], r"history: lists have different lengths"),
        (("history", "val_loss", 0), math.inf, r"history\.val_loss\[0\]: must be a finite number"),
        (("corpus", "name"), "a\ud800", r"corpus\.name: is not valid Unicode"),
        (("corpus", "sha256"), "xyz", r"corpus\.sha256: must be 64 lowercase hex digits"),
        (("train_config", "batch_size"), 10**400, r"train_config\.batch_size: must be from 1 to .*401 digits"),
        (("train_config",), {1: 2}, r"train_config: has a key that is not a string: 1"),
        (
            ("resume", "rng", "torch"),
            torch.zeros(5056, dtype=torch.uint8),
            r"resume\.rng\.torch: is not a CPU generator",
        ),
        (("resume", "optimizer", "state", 0, "exp_avg"), torch.zeros(3), r"state\.0\.exp_avg: has shape \(3,\)"),
        (("resume", "optimizer", "param_groups", 0, "amsgrad"), True, r"amsgrad: must be false"),
        (("resume", "state", 0), torch.zeros(1, 2, 9), r"resume\.state\[0\]: has shape \(1, 2, 9\)"),
        (("best_val_loss",), -1.0, r"best_val_loss: must be a finite number from 0"),
        (("unknown_key",), {"a": torch.zeros(1)}, r"unknown_key\.a: holds Tensor"),
        (("vocab_history",), [{"chars": "", "step": 0, "date": "d"}], r"vocab_history\[0\]\.chars: must not be empty"),
        (("vocab_history",), [{"chars": "ab", "step": -3, "date": "d"}], r"vocab_history\[0\]\.step: must be from 0"),
    ],
)
def test_a_malformed_field_is_named(resumable, path, value, pattern):
    _, raw = resumable
    data = copy.deepcopy(raw)
    holder = data
    for part in path[:-1]:
        holder = holder[part]
    holder[path[-1]] = value
    with pytest.raises(CheckpointError, match=pattern):
        ckpt_io.from_dict(data, Path("m.pt"))


def test_unknown_keys_of_plain_data_and_a_valid_vocab_history_are_accepted(resumable):
    _, raw = resumable
    data = copy.deepcopy(raw)
    first, last = data["vocab"][:-2], data["vocab"][-2:]
    data["vocab_history"] = [
        {"chars": first, "step": 0, "date": "2026-12-05T10:00:00+00:00"},
        {"chars": last, "step": 40, "date": "2026-12-05T11:00:00+00:00"},
    ]
    data["added_in_1_1"] = {"notes": ["plain", 1, 2.5, None, True]}
    data["progress"]["new_counter"] = 7
    ckpt = ckpt_io.from_dict(data, Path("m.pt"))
    assert ckpt.progress["new_counter"] == 7 and [e["chars"] for e in ckpt.vocab_history] == [first, last]
    data["vocab_history"] = [{"chars": first, "step": 0, "date": "2026-12-05T10:00:00+00:00"}]  # short of vocab
    with pytest.raises(CheckpointError, match="vocab_history: does not add up to the vocabulary"):
        ckpt_io.from_dict(data, Path("m.pt"))


def test_a_carried_state_in_bf16_resumes_an_fp32_run(runner, tmp_path, resumable):
    """A bf16 run saves its autocast dtype's state; resumed as fp32 (or crafted so) it must still train."""
    text, raw = resumable
    data = copy.deepcopy(raw)
    data["resume"]["state"] = [s.to(torch.bfloat16) for s in data["resume"]["state"]]
    path = save_raw(data, tmp_path / "last.pt")
    result = runner.invoke(cli, COMMANDS["train --resume"][0](path, text))
    assert result.exit_code == 0, result.stderr
    assert ckpt_io.load(path).progress["step"] == 5


# The commands each mutated file goes through. Exit 1 is the text's own error: a checkpoint whose
# corpus record passes the schema but no longer matches (another path, another SHA-256, a batch
# layout the text is too short for) gets the one-line error of a changed text, as a real one would.
COMMANDS = {
    "inspect": (lambda ck, text: ["inspect", str(ck)], {0, 3}),
    "inspect --json": (lambda ck, text: ["inspect", str(ck), "--json"], {0, 3}),
    "sample": (lambda ck, text: ["sample", str(ck), "--length", "20", "--seed", "1", "--device", "cpu"], {0, 3}),
    "eval": (lambda ck, text: ["eval", str(ck), "--device", "cpu", "--batch-size", "2", "--seq-len", "16"], {0, 1, 3}),
    "train --resume": (
        lambda ck, text: ["train", "--resume", str(ck), "--max-steps", "5", "-q", "--sample-length", "0", "--no-cache"],
        {0, 1, 3},
    ),
}


@pytest.mark.slow  # 100 cases of five commands each
@settings(
    max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_checkpoints_through_every_command_exit_cleanly(runner, tmp_path, resumable, data):
    text, raw = resumable
    paths = field_paths(raw)
    path = data.draw(st.sampled_from(paths), label="field")
    how = data.draw(st.sampled_from(sorted(MUTATIONS)), label="mutation")
    folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    ck = save_raw(mutate(raw, path, how), folder / "last.pt")
    for name, (args, codes) in COMMANDS.items():
        result = runner.invoke(cli, args(ck, text))
        assert result.exit_code in codes, (name, path, how, result.exit_code, result.stderr[-2000:])
        assert result.exception is None or isinstance(result.exception, SystemExit), (name, path, how)
        assert "Traceback" not in result.stderr
        if result.exit_code:
            assert len(result.stderr.strip().splitlines()) == 1, (name, path, how, result.stderr)


def test_the_archive_caps_are_documented():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "checkpoint-format.md").read_text(encoding="utf-8")
    for cap in (checkpoint_archive.MAX_PICKLE_OPS, checkpoint_archive.MAX_PICKLE_MEMORY // 2**20):
        assert f"{cap:,}" in doc

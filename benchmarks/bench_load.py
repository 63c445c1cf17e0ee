"""What loading a checkpoint costs against the file's size: real checkpoints and crafted hostile ones.

    python benchmarks/bench_load.py [--quick] [--repeats 3] [--json benchmarks/results/]

Each file is loaded (or refused) by `charrnn.checkpoint.load` in a fresh child process, which reports
the wall time of the call and its peak resident memory above what the process held just before
(Linux: /proc/self/status, the peak reset first). The real checkpoints are LSTMs of growing size with
a resume state (Adam's moments triple the weights); the hostile files are the classes of
docs/checkpoint-format.md's load checks: stride-0 weights implying gigabytes, a num_layers of 10^8,
the central directory listed many times, a deflated pickle bomb, a stored pickle of millions of
empty dicts, a history of a million evaluations. The target (issue #13): any file of S bytes is
loaded or refused within about 2 s + O(S), with memory about S above the baseline; the table's
ratio columns (seconds per MB, peak memory over file size) show how close each file comes.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

import common
from charrnn import checkpoint as ckpt_io
from charrnn.model import CharRNN, ModelConfig, parameter_shapes


def real_checkpoint(path: Path, hidden_size: int, num_layers: int = 2) -> Path:
    """An LSTM checkpoint with Adam's state, as a training run writes it."""
    cfg = ModelConfig(vocab_size=65, num_layers=num_layers, hidden_size=hidden_size, embedding_size=64)
    model = CharRNN(cfg)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long))[0].sum().backward()
    optimizer.step()
    vocab = "".join(chr(32 + i) for i in range(65))
    ckpt = ckpt_io.Checkpoint(path=None, model_config=cfg, vocab=vocab, weights=model.state_dict())
    data = ckpt.to_dict()
    data["resume"] = {"optimizer": optimizer.state_dict(), "scaler": {}, "rng": {"torch": torch.get_rng_state()}}
    torch.save(data, path)
    return path


def _base() -> dict:
    cfg = ModelConfig(vocab_size=5, num_layers=1, hidden_size=4, embedding_size=2)
    return ckpt_io.Checkpoint(path=None, model_config=cfg, vocab="abcde", weights=CharRNN(cfg).state_dict()).to_dict()


def _records(data: dict) -> dict[str, bytes]:
    buffer = io.BytesIO()
    torch.save(data, buffer)
    with zipfile.ZipFile(buffer) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _zip(path: Path, records: dict[str, bytes], deflate: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in records.items():
            kind = zipfile.ZIP_DEFLATED if name == deflate else zipfile.ZIP_STORED
            archive.writestr(zipfile.ZipInfo(name), payload, compress_type=kind)
    return path


def hostile_files(folder: Path, scale: int) -> dict[str, Path]:
    files = {}
    data = _base()
    big = ModelConfig(vocab_size=5, num_layers=2, hidden_size=8192, embedding_size=2)
    data["model_config"] = big.to_dict()
    data["model"] = {name: torch.zeros(1).expand(shape) for name, shape in parameter_shapes(big).items()}
    torch.save(data, files.setdefault("stride-0 weights (2 GB implied)", folder / "expanded.pt"))

    data = _base()
    data["model_config"]["num_layers"] = 10**8
    torch.save(data, files.setdefault("num_layers 10^8", folder / "deep.pt"))

    real = real_checkpoint(folder / "dup-source.pt", hidden_size=256)
    raw = real.read_bytes()
    end = raw.rindex(b"PK\x05\x06")
    count = struct.unpack("<H", raw[end + 10 : end + 12])[0]
    size, offset = struct.unpack("<LL", raw[end + 12 : end + 20])
    copies = max(2, min(60_000 // max(count, 1), 200 * scale))
    tail = bytearray(raw[end:])
    struct.pack_into("<HHLL", tail, 8, count * copies, count * copies, size * copies, offset)
    path = folder / "duplicated.pt"
    path.write_bytes(raw[:offset] + raw[offset : offset + size] * copies + bytes(tail))
    files[f"central directory x{copies}"] = path

    records = _records(_base())
    pickled = next(name for name in records if name.endswith("/data.pkl"))
    n = 50_000_000 * scale
    bomb = dict(records)
    bomb[pickled] = b"\x80\x02X" + struct.pack("<L", n) + b"a" * n + b"."
    files[f"deflated pickle ({n // 10**6} MB inflated)"] = _zip(folder / "bomb.pt", bomb, deflate=pickled)

    dicts = dict(records)
    dicts[pickled] = b"\x80\x02](" + b"}" * (3_000_000 * scale) + b"e."
    files[f"{3 * scale}M empty dicts in the pickle"] = _zip(folder / "dicts.pt", dicts)

    data = _base()
    k = 300_000 * scale
    data["history"] = {"step": list(range(k)), "train_loss": [1.5] * k, "val_loss": [1.4] * k, "lr": [1e-3] * k}
    data["history"]["elapsed"] = [float(i) for i in range(k)]
    torch.save(data, files.setdefault(f"history of {k:,} evaluations (valid)", folder / "history.pt"))
    return files


CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[2])
import common
from charrnn import checkpoint
from charrnn.errors import CheckpointError
common.reset_peak_rss()
before = common.rss_mb()
start = time.perf_counter()
try:
    checkpoint.load(sys.argv[1]); outcome = "loaded"
except CheckpointError as exc:
    outcome = "refused: " + str(exc).split("(", 1)[-1][:70]
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_above_mb": common.peak_rss_mb() - before, "outcome": outcome}))
"""


def measure(path: Path, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), str(Path(__file__).parent)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if out.returncode:
            raise SystemExit(f"child failed on {path}:\n{out.stderr}")
        runs.append(json.loads(out.stdout))
    size_mb = path.stat().st_size / 2**20
    seconds = common.median([r["seconds"] for r in runs])
    peak = common.median([r["peak_above_mb"] for r in runs])
    return {
        "file_mb": round(size_mb, 3),
        "seconds": round(seconds, 4),
        "seconds_spread": round(common.spread([r["seconds"] for r in runs]), 3),
        "peak_above_mb": round(peak, 1),
        "peak_over_file": round(peak / size_mb, 2) if size_mb >= 1 else None,
        "outcome": runs[0]["outcome"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small files, one repeat: checks the plumbing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help=common.json_help())
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    info = common.machine()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sizes = (64, 128) if args.quick else (128, 512, 1024)
        files = {}
        for hidden in sizes:
            files[f"LSTM 2x{hidden} with Adam state (valid)"] = real_checkpoint(folder / f"real{hidden}.pt", hidden)
        files.update(hostile_files(folder, scale=1))
        for name, path in files.items():
            print(f"  {name} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            results[name] = measure(path, repeats)
            print(f"    {time.perf_counter() - started:.1f} s", file=sys.stderr)
    rows = [
        [
            name,
            common.fmt(r["file_mb"], 2),
            common.fmt(r["seconds"], 3),
            common.fmt(r["peak_above_mb"], 1),
            common.fmt(r["peak_over_file"], 2),
            r["outcome"],
        ]
        for name, r in results.items()
    ]
    columns = ["file", "MB", "load s", "peak MB above", "peak / size", "outcome"]
    common.print_table(common.describe(info), columns, rows)
    if args.json:
        path = common.write_json(args.json, "load", info, vars(args), results)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

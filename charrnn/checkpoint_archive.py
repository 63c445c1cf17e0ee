"""The zip archive under a checkpoint, checked before torch reads it, so that any file costs time and
memory in proportion to its size.

``torch.save`` writes a zip archive of uncompressed ("stored") records: ``<name>/data.pkl`` (the
pickled dict), ``<name>/data/<n>`` (one per tensor storage) and a few small markers. ``open_checked``
opens the file once and accepts only that: a regular file; only the records torch.save writes, each
once, uncompressed, lying inside the file without overlapping another, with a matching CRC-32 (torch
does not check them, so a flipped bit in a tensor would otherwise load silently); and a pickle whose
size, number of operations and estimated unpickled memory are capped. The caller then hands the same
open file to ``torch.load(weights_only=True)``. docs/checkpoint-format.md lists the checks;
``benchmarks/bench_load.py`` measures the cost of loading against the file's size.
"""

from __future__ import annotations

import errno
import os
import pickletools
import re
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from charrnn.errors import CheckpointError

# The records torch.save writes, below the archive's one top-level folder.
RECORDS = frozenset(
    {
        "data.pkl",
        "byteorder",
        "version",
        ".format_version",
        ".storage_alignment",
        ".data/serialization_id",
        ".data/version",
    }
)
STORAGE_RECORD = re.compile(r"data/[0-9]{1,12}")

# The pickled dict: weights are separate records, so what is pickled is the configuration, the
# progress and history (five numbers per evaluation) and the optimizer's structure. A history of a
# few hundred thousand evaluations fits these caps; the operation cap bounds the time torch's
# pure-Python weights_only unpickler takes, the memory cap what it builds.
MAX_PICKLE_BYTES = 64 * 2**20
MAX_PICKLE_OPS = 2_000_000
MAX_PICKLE_MEMORY = 256 * 2**20

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip's local file header: 30 bytes
_CHUNK = 2**20


def not_valid(path: Path, detail: str) -> CheckpointError:
    """The one error for a damaged or foreign file (one line, whatever ``detail`` quotes)."""
    return CheckpointError(f"{path}: not a valid charrnn checkpoint ({' '.join(detail.split())})")


def open_checked(path: Path) -> BinaryIO:
    """``path`` opened for reading, its archive checked and the file rewound; CheckpointError otherwise.

    The caller closes the file. Checking and loading one open file means the file checked is the
    file loaded, and a FIFO or device is refused without blocking on it.
    """
    file = _open_regular(path)
    try:
        _check_archive(file, path)
        file.seek(0)
    except CheckpointError:
        file.close()
        raise
    except Exception as exc:  # zipfile raises odd errors (struct.error, UnicodeDecodeError, ...) on garbage
        file.close()
        raise not_valid(path, f"damaged archive: {type(exc).__name__}: {str(exc)[:150]}") from None
    return file


def _open_regular(path: Path) -> BinaryIO:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint; train one with `charrnn train` or pass its path") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory; pass a checkpoint file such as {path / 'best.pt'}") from None
    except PermissionError:
        raise CheckpointError(
            f"{path}: cannot read the checkpoint (permission denied); check its permissions"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise CheckpointError(
                f"{path}: no such checkpoint (a part of the path is a file); check the path"
            ) from None
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc}); check the path") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        os.close(fd)
        raise CheckpointError(f"{path}: is a directory; pass a checkpoint file such as {path / 'best.pt'}")
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CheckpointError(f"{path}: not a regular file (a pipe, socket or device); pass a checkpoint file")
    return os.fdopen(fd, "rb")


def _check_archive(file: BinaryIO, path: Path) -> None:
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise not_valid(path, f"not a torch archive: {str(exc)[:150] or type(exc).__name__}") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc}); check the file") from None
    infos = archive.infolist()
    _check_names(infos, path)
    spans = []
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise not_valid(path, f"record {info.filename} is compressed, which torch.save never does")
        if info.flag_bits & 0x1:
            raise not_valid(path, f"record {info.filename} is encrypted")
        spans.append((_data_start(file, info, path), info))
    spans.sort(key=lambda span: span[0])
    end_of_data = archive.start_dir
    for i, (start, info) in enumerate(spans):
        limit = spans[i + 1][1].header_offset if i + 1 < len(spans) else end_of_data
        if start + info.file_size > limit:
            raise not_valid(path, f"record {info.filename} declares {info.file_size} bytes, more than the file holds")
    for start, info in spans:
        _check_crc(file, start, info, path)
    pickled = next(info for info in infos if info.filename.endswith("/data.pkl"))
    if pickled.file_size > MAX_PICKLE_BYTES:
        raise not_valid(path, f"its pickled metadata is {pickled.file_size:,} bytes, over the {MAX_PICKLE_BYTES:,} cap")
    start = next(start for start, info in spans if info is pickled)
    file.seek(start)
    check_pickle(file.read(pickled.file_size), path)


def _check_names(infos: list[zipfile.ZipInfo], path: Path) -> None:
    """One top-level folder; only the records torch.save writes, each once; a data.pkl."""
    names = [info.filename for info in infos]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise not_valid(path, f"record {name[:100]!r} is listed more than once")
        seen.add(name)
    prefixes = {name.split("/", 1)[0] for name in names}
    if len(prefixes) != 1 or any("/" not in name for name in names):
        raise not_valid(path, "not a torch archive: its records are not in one folder")
    for name in names:
        record = name.split("/", 1)[1]
        if record not in RECORDS and not STORAGE_RECORD.fullmatch(record):
            raise not_valid(path, f"unexpected record {name[:100]!r}, which torch.save never writes")
    if not any(name.endswith("/data.pkl") for name in names):
        raise not_valid(path, "not a torch archive: no data.pkl record")


def _data_start(file: BinaryIO, info: zipfile.ZipInfo, path: Path) -> int:
    """Where the record's bytes begin: after its local header, which must name the same record."""
    file.seek(info.header_offset)
    header = file.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size:
        raise not_valid(path, f"record {info.filename} lies beyond the end of the file")
    fields = _LOCAL_HEADER.unpack(header)
    name_length, extra_length = fields[-2], fields[-1]
    if fields[0] != b"PK\x03\x04" or file.read(name_length) != info.orig_filename.encode("utf-8"):
        raise not_valid(path, f"record {info.filename} has a damaged header")
    return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length


def _check_crc(file: BinaryIO, start: int, info: zipfile.ZipInfo, path: Path) -> None:
    file.seek(start)
    crc, left = 0, info.file_size
    while left:
        chunk = file.read(min(left, _CHUNK))
        if not chunk:
            raise not_valid(path, f"record {info.filename} lies beyond the end of the file")
        crc, left = zlib.crc32(chunk, crc), left - len(chunk)
    if crc != info.CRC:
        raise not_valid(path, f"record {info.filename} is damaged: checksum mismatch")


# Bytes of memory an unpickled operation costs, roughly (CPython, 64-bit): every operation leaves a
# reference (8) somewhere, a container or a memo entry costs more; a string or number its bytes too.
_DEFAULT_COST = 16
_OP_COST = {
    "EMPTY_DICT": 240,
    "DICT": 240,
    "EMPTY_LIST": 64,
    "LIST": 64,
    "EMPTY_SET": 240,
    "FROZENSET": 240,
    "TUPLE": 64,
    "TUPLE1": 64,
    "TUPLE2": 72,
    "TUPLE3": 80,
    "BINPUT": 112,
    "LONG_BINPUT": 112,
    "PUT": 112,
    "MEMOIZE": 112,
    "BINFLOAT": 32,
    "FLOAT": 32,
    "BININT": 32,
    "INT": 32,
    "MARK": 16,
    "REDUCE": 128,
    "BINPERSID": 128,
}
_PREFIX = {-2: 1, -3: 4, -4: 4, -5: 8}  # pickletools' codes for a length prefix of 1, 4 or 8 bytes


def _op_table() -> list[tuple[int, int, int, int] | None]:
    """Per opcode byte: (fixed argument bytes, length-prefix bytes, lines, memory cost), or None."""
    table: list[tuple[int, int, int, int] | None] = [None] * 256
    for op in pickletools.opcodes:
        fixed, prefix, lines = 0, 0, 0
        if op.arg is not None:
            if op.arg.n >= 0:
                fixed = op.arg.n
            elif op.arg.n == pickletools.UP_TO_NEWLINE:
                lines = 2 if op.arg.name.endswith("_pair") else 1
            else:
                prefix = _PREFIX[op.arg.n]
        table[ord(op.code)] = (fixed, prefix, lines, _OP_COST.get(op.name, _DEFAULT_COST))
    return table


_OPS = _op_table()
_STOP = ord(".")
# Runs of one fixed-size number operation (a history's floats, its steps) are stepped over by one
# regular-expression match instead of an operation at a time.
_RUNS = {
    ord(code): (re.compile(rb"(?:%s[\s\S]{%d})+" % (re.escape(code.encode()), n)), n + 1)
    for code, n in (("G", 8), ("J", 4), ("K", 1), ("M", 2))
}


def check_pickle(data: bytes, path: Path) -> None:
    """Refuse a pickle that would take too long to unpickle or build too much: at most MAX_PICKLE_OPS
    operations and an estimated MAX_PICKLE_MEMORY bytes of objects. Nothing is unpickled here: the
    scan only steps over each operation and its argument (a few times faster than pickletools)."""
    ops = memory = i = 0
    end = len(data)
    while i < end:
        entry = _OPS[data[i]]
        if entry is None:
            raise not_valid(path, f"damaged pickle: unknown operation {data[i]:#x} at byte {i}")
        fixed, prefix, lines, cost = entry
        if data[i] == _STOP:
            return
        run = _RUNS.get(data[i])
        if run is not None:
            match = run[0].match(data, i)
            count = (match.end() - i) // run[1] if match else 1
            i = match.end() if match else end
            ops, memory = ops + count, memory + count * cost
            if ops > MAX_PICKLE_OPS or memory > MAX_PICKLE_MEMORY:
                raise _too_large(path)
            continue
        i += 1 + fixed
        if prefix:
            size = int.from_bytes(data[i : i + prefix], "little")
            i += prefix + size
            cost += size
        for _ in range(lines):
            newline = data.find(b"\n", i)
            cost += (newline if newline >= 0 else end) - i
            i = newline + 1 if newline >= 0 else end
        ops += 1
        memory += cost
        if ops > MAX_PICKLE_OPS or memory > MAX_PICKLE_MEMORY:
            raise _too_large(path)
    raise not_valid(path, "damaged pickle: it ends without a STOP operation")


def _too_large(path: Path) -> CheckpointError:
    return not_valid(
        path,
        f"its pickled metadata is too large to unpickle (over {MAX_PICKLE_OPS:,} operations or "
        f"{MAX_PICKLE_MEMORY // 2**20} MiB of objects)",
    )

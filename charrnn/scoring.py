"""Scoring texts record by record (each line, or each file), streaming: what ``charrnn eval --per-line``
and ``--per-file`` print, one record at a time, with flat memory whatever the size of the files.

The characters are read through the streaming reader (``charrnn.reader``) and scored in chunks of
``SCORE_CHUNK`` characters, a chunk crossing record boundaries, with the model's state carried from
chunk to chunk, record to record and file to file, unless ``reset_each`` starts every record afresh.
A stream (or, with ``reset_each``, every record) starts as if after a line break: the model first
reads a newline, so the first character is predicted too. (A vocabulary without a newline has
nothing to start from: there the first character of a stream is read but not scored.) A line is
its characters up to and including its newline, so the scores of the lines of a text add up to
the score of the text.
"""

from __future__ import annotations

import contextlib
import heapq
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.corpus import resolve_inputs
from charrnn.data import Vocab, describe_chars
from charrnn.errors import ConfigError, DataError, option
from charrnn.loss import LN2
from charrnn.model import CharRNN, State
from charrnn.reader import Reader, Unusable, usable_files

SCORE_CHUNK = 4096  # characters per forward pass
PIECE_CHARS = 65_536  # characters cut at line ends at a time
READ_BYTES = 1 << 20  # bytes read at a time: scoring is bound by the model, so small reads cost nothing

Per = Literal["line", "file"]
Unknown = Literal["error", "skip"]


@dataclass(frozen=True)
class Surprise:
    """One character the model did not expect: where in its record, which, and its surprisal."""

    position: int  # characters from the start of the record (the line or the file), from 0
    char: str
    bits: float  # -log2 p(char | everything before it)


@dataclass(frozen=True)
class RecordScore:
    """The score of one record: a line (``line`` from 1) or a whole file (``line`` None).

    ``n_chars`` characters were scored for ``total_nats`` in all; ``n_unknown`` characters outside the
    vocabulary were left out (``unknown="skip"``). ``top_surprises`` holds the most surprising
    characters, most surprising first.
    """

    file: str
    line: int | None
    n_chars: int
    total_nats: float
    n_unknown: int = 0
    top_surprises: tuple[Surprise, ...] = ()

    @property
    def nats(self) -> float | None:
        """Nats per character (None for a record with no scored character)."""
        return self.total_nats / self.n_chars if self.n_chars else None

    @property
    def bits(self) -> float | None:
        return None if self.nats is None else self.nats / LN2

    @property
    def perplexity(self) -> float | None:
        nats = self.nats
        return None if nats is None else (math.exp(nats) if nats < 700 else math.inf)


@dataclass
class _Record:
    """A record being scored: its running sums and its top ``k`` surprises (a min-heap)."""

    file: str
    line: int | None
    k: int
    n_chars: int = 0
    total_nats: float = 0.0
    n_unknown: int = 0
    heap: list = field(default_factory=list)  # (bits, -position, char): the least surprising on top

    def add(self, nats: np.ndarray, positions: np.ndarray, chars: list[str]) -> None:
        scored = ~np.isnan(nats)
        self.n_chars += int(scored.sum())
        self.total_nats += float(nats[scored].sum())
        if not self.k:
            return
        bits = np.where(scored, nats / LN2, -np.inf)
        for i in np.argsort(-bits, kind="stable")[: self.k]:
            if bits[i] == -np.inf:
                break
            item = (float(bits[i]), -int(positions[i]), chars[i])
            if len(self.heap) < self.k:
                heapq.heappush(self.heap, item)
            elif item > self.heap[0]:
                heapq.heapreplace(self.heap, item)

    def result(self) -> RecordScore:
        top = sorted(self.heap, key=lambda item: (-item[0], -item[1]))
        return RecordScore(
            file=self.file,
            line=self.line,
            n_chars=self.n_chars,
            total_nats=self.total_nats,
            n_unknown=self.n_unknown,
            top_surprises=tuple(Surprise(position=-p, char=c, bits=b) for b, p, c in top),
        )


class _Scorer:
    """Feeds characters (as ids) through the model with the state carried; the surprisal of each.

    The state lags one character behind: ``prev``, the last character given, is read as the first
    input of the next call, where it predicts that call's first character.
    """

    def __init__(self, module: CharRNN, vocab: Vocab, device: torch.device):
        self.module, self.device = module, device
        self.start = vocab.chars.index("\n") if "\n" in vocab.chars else None
        self.reset()

    def reset(self) -> None:
        self.state: State | None = None
        self.prev: int | None = self.start

    @torch.no_grad()
    def nats(self, ids: np.ndarray) -> np.ndarray:
        """(T,) ids -> (T,) float64 nats of each given all before it (NaN where nothing came before)."""
        out = np.full(len(ids), np.nan)
        first = 1 if self.prev is None else 0
        inputs = ids[:-1] if self.prev is None else np.concatenate([[self.prev], ids[:-1]])
        self.prev = int(ids[-1])
        if len(inputs):
            x = torch.as_tensor(inputs[None], dtype=torch.long, device=self.device)
            y = torch.as_tensor(ids[first:], dtype=torch.long, device=self.device)
            logits, self.state = self.module(x, self.state)
            out[first:] = F.cross_entropy(logits[0].float(), y, reduction="none").double().cpu().numpy()
        return out


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")


class _Encoder:
    """Text -> ids and a mask of the characters in the vocabulary."""

    def __init__(self, vocab: Vocab):
        self.table = _code_points(vocab.chars)

    def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        codes = _code_points(text)
        idx = np.minimum(np.searchsorted(self.table, codes), len(self.table) - 1)
        return idx.astype(np.int64), self.table[idx] == codes


def _files(texts: Iterable[str | Path], reader: Reader) -> Iterator[tuple[str, Iterator[str]]]:
    """(name, its text in pieces) for every usable file the TEXT arguments name, in order."""
    for text in texts:
        sources = resolve_inputs(text)
        # Each file's head is checked first (empty, binary, ...): the one file named is an error, a
        # folder's or glob's unusable files are left out, as everywhere else.
        for path, _ in usable_files(sources, reader, _check_head(reader), []):
            yield (str(text) if sources.single else str(path)), _pieces(reader, path)


def _check_head(reader: Reader):
    def check(path: Path, name: str) -> None:
        with contextlib.closing(reader.pieces(path, name)) as stream:
            next(stream, None)

    return check


def _pieces(reader: Reader, path: Path) -> Iterator[str]:
    try:
        with contextlib.closing(reader.pieces(path, str(path))) as stream:
            for raw, text in stream:
                if text is None:
                    assert raw is not None, "Reader.pieces gives the bytes of every piece it does not decode"
                    text = raw.decode("ascii")
                for at in range(0, len(text), PIECE_CHARS):  # small pieces: bounded working memory
                    yield text[at : at + PIECE_CHARS]
    except Unusable as problem:
        raise DataError(problem.message) from None


def check_known(vocab: Vocab, texts: Iterable[str | Path], encoding: str = "utf-8") -> None:
    """DataError naming the characters of ``texts`` outside ``vocab``, before anything is scored."""
    reader = Reader(encoding, READ_BYTES)
    known = set(vocab.chars)
    for name, pieces in _files(texts, reader):
        unknown: set[str] = set()
        for piece in pieces:
            unknown |= set(piece) - known
        if unknown:
            raise DataError(
                f"{name}: {len(unknown)} character(s) are not in the model's vocabulary: "
                f"{describe_chars(sorted(unknown))}; pass {option('unknown', 'skip')} to score only the known ones, "
                "or remove them"
            )


def check_options(per: str, top_surprises: int, unknown: str) -> None:
    if per not in ("line", "file"):
        raise ConfigError(f"{option('per')} must be 'line' or 'file', got {per!r}")
    if unknown not in ("error", "skip"):
        raise ConfigError(f"{option('unknown')} must be 'error' or 'skip', got {unknown!r}")
    if not isinstance(top_surprises, int) or isinstance(top_surprises, bool) or top_surprises < 0:
        raise ConfigError(f"{option('top_surprises')} must be a whole number of at least 0, got {top_surprises!r}")


def score_each(
    module: CharRNN,
    vocab: Vocab,
    texts: Iterable[str | Path],
    *,
    per: Per = "line",
    top_surprises: int = 0,
    reset_each: bool = False,
    unknown: Unknown = "error",
    encoding: str = "utf-8",
    device: torch.device | str = "cpu",
) -> Iterator[RecordScore]:
    """The score of every line (``per="line"``) or file (``per="file"``) of ``texts`` (files, folders
    or globs, in order), each as soon as it is done.

    ``unknown="error"``: a first pass over the files raises DataError naming any character outside
    the vocabulary, before anything is scored; ``"skip"``: such characters are left out (not read,
    not scored) and counted in ``n_unknown``. Options are checked before the first record.
    """
    texts = list(texts)
    check_options(per, top_surprises, unknown)
    if unknown == "error":
        check_known(vocab, texts, encoding)
    return _score_each(module, vocab, texts, per, top_surprises, reset_each, encoding, torch.device(device))


def _score_each(module, vocab, texts, per, k, reset_each, encoding, device) -> Iterator[RecordScore]:
    was_training = module.training
    module.eval()
    scorer, encode = _Scorer(module, vocab, device), _Encoder(vocab)
    # Characters waiting for a forward pass: per record piece, (record, ids, positions, chars).
    pending: list[tuple[_Record, np.ndarray, np.ndarray, list[str]]] = []
    done: list[_Record] = []  # records complete but for their pending characters
    n_pending = 0

    def flush() -> Iterator[RecordScore]:
        nonlocal n_pending
        if pending:
            nats = scorer.nats(np.concatenate([p[1] for p in pending]))
            at = 0
            for record, ids, positions, chars in pending:
                record.add(nats[at : at + len(ids)], positions, chars)
                at += len(ids)
            pending.clear()
            n_pending = 0
        for record in done:
            yield record.result()
        done.clear()

    try:
        for name, pieces in _files(texts, Reader(encoding, READ_BYTES)):
            line = 1
            record = _Record(name, line if per == "line" else None, k)
            position = 0  # of the next character in its record
            for piece in pieces:
                # Cut the piece at the ends of lines (per line), and into chunks.
                bounds = [0]
                if per == "line":
                    bounds += [i + 1 for i, ch in enumerate(piece) if ch == "\n"] if "\n" in piece else []
                if bounds[-1] != len(piece):
                    bounds.append(len(piece))
                for start, end in zip(bounds, bounds[1:]):
                    segment = piece[start:end]
                    for at in range(0, len(segment), SCORE_CHUNK):
                        part = segment[at : at + SCORE_CHUNK]
                        ids, known = encode(part)
                        positions = np.arange(position, position + len(part))
                        position += len(part)
                        if not known.all():
                            record.n_unknown += int((~known).sum())
                            ids, positions = ids[known], positions[known]
                            part = "".join(ch for ch, ok in zip(part, known) if ok)
                        if len(ids):
                            pending.append((record, ids, positions, list(part) if k else []))
                            n_pending += len(ids)
                        if n_pending >= SCORE_CHUNK:
                            yield from flush()
                    if per == "line" and segment.endswith("\n"):
                        done.append(record)
                        if reset_each:
                            yield from flush()
                            scorer.reset()
                        line += 1
                        record, position = _Record(name, line, k), 0
            if position or per == "file":  # a last line without a newline; every file
                done.append(record)
            if reset_each:
                yield from flush()
                scorer.reset()
        yield from flush()
    finally:
        module.train(was_training)

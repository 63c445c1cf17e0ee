"""Reading text from disk: what TEXT names (a file, a folder, a glob, or None for the embedded Tiny
Shakespeare), read through the one streaming reader, encoded and cached (``load_corpus``) or returned
as a string (``read_text``).

However a text is read, its characters and SHA-256 are the same. docs/corpus.md gives the two passes
and the cache contract.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.corpus_cache import CACHEDIR_TAG, Cache, discard, stat_files
from charrnn.corpus_encode import encode, survey
from charrnn.data import Corpus, Vocab, index_dtype
from charrnn.errors import DataError
from charrnn.reader import CHUNK_BYTES, Reader, Skipped, Sources, describe_skipped, read_joined

__all__ = [
    "CHUNK_BYTES",
    "EMBEDDED_NAME",
    "LoadedCorpus",
    "Skipped",
    "Sources",
    "default_corpus_path",
    "describe_skipped",
    "is_glob",
    "load_corpus",
    "read_text",
    "resolve_inputs",
]

EMBEDDED_NAME = "tinyshakespeare (embedded)"
_GLOB_MAGIC = "*?["


@dataclass(frozen=True)
class LoadedCorpus:
    """A corpus read from disk, and how: files joined, files skipped, what the cache did."""

    corpus: Corpus
    n_files: int
    skipped: tuple[Skipped, ...]
    cache: str  # "hit" (reused), "built" (encoded and stored) or "off" (encoded in memory)
    cache_file: Path | None


def default_corpus_path() -> Path:
    """The embedded Tiny Shakespeare corpus, from an installed package or from a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (
        here / "_corpus" / "input.txt",  # installed: setup.cfg maps data/tinyshakespeare here
        here.parent / "data" / "tinyshakespeare" / "input.txt",  # source checkout / editable install
    ):
        if candidate.is_file():
            return candidate
    raise DataError(
        "the embedded corpus data/tinyshakespeare/input.txt is missing from this installation; "
        "reinstall charrnn or pass a text file"
    )


def is_glob(text: str) -> bool:
    return any(ch in text for ch in _GLOB_MAGIC)


def resolve_inputs(inputs: str | Path | None, exclude: tuple[Path, ...] = ()) -> Sources:
    """A file, a folder (every file below it), a glob (``**`` spans folders), or None (the embedded
    corpus) -> sorted files.

    Names starting with "." (``.git``, editor swap files) are left out of folders and globs, and so
    are cache folders (tagged with CACHEDIR.TAG) and anything under a folder of ``exclude`` that lies
    inside the folder searched (the run's own checkpoints would otherwise change the corpus at every
    start). DataError if nothing matches.
    """
    if inputs is None:  # its name and path (None) are what checkpoints record for it
        return Sources(EMBEDDED_NAME, None, (default_corpus_path(),), single=True)
    text = str(inputs)
    path = Path(text).expanduser()
    if path.is_file():
        return Sources(path.name, str(path.resolve()), (path,), single=True)
    if path.is_dir():
        root = path.resolve()
        excluded = _inside(root, exclude)
        found = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = [
                d
                for d in dirs
                if not d.startswith(".")
                and not _under(Path(folder, d), excluded)
                and not Path(folder, d, CACHEDIR_TAG).exists()
            ]
            found += [Path(folder, n) for n in names if not n.startswith(".") and Path(folder, n).is_file()]
        files = _sorted_files(found, excluded)
        if not files:
            raise DataError(f"{text}: the folder holds no files; pass a folder with text files in it")
        return Sources(text.rstrip("/\\") + "/", str(root), files, single=False)
    if is_glob(text):
        pattern = os.path.abspath(os.path.expanduser(text))
        fixed = Path(pattern.split("*")[0].split("?")[0].split("[")[0])  # the part before any wildcard
        excluded = _inside(fixed if fixed.is_dir() else fixed.parent, exclude)
        tagged: dict[Path, bool] = {}
        matches = [Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        files = _sorted_files([p for p in matches if not _in_cache_folder(p, tagged)], excluded)
        if not files:
            raise DataError(
                f"{text}: the pattern matches no files; check it, and quote it so that the shell "
                "passes it to charrnn unexpanded"
            )
        return Sources(text, pattern, files, single=False)
    raise DataError(f"{text}: no such file or folder; pass a text file, a folder or a quoted glob such as 'src/**/*.c'")


def _in_cache_folder(path: Path, tagged: dict[Path, bool]) -> bool:
    """Whether a folder above ``path`` holds a CACHEDIR.TAG (memoised per folder in ``tagged``)."""
    for folder in path.parents:
        if folder not in tagged:
            tagged[folder] = (folder / CACHEDIR_TAG).exists()
        if tagged[folder]:
            return True
    return False


def _inside(root: Path, exclude: tuple[Path, ...]) -> tuple[Path, ...]:
    """The folders of ``exclude`` strictly inside ``root`` (excluding the root itself would leave nothing)."""
    root = root.resolve()
    resolved = (Path(p).resolve() for p in exclude)
    return tuple(p for p in resolved if root in p.parents)


def _under(path: Path, excluded: tuple[Path, ...]) -> bool:
    if not excluded:
        return False
    resolved = path.resolve()
    return any(resolved == ex or ex in resolved.parents for ex in excluded)


def _sorted_files(paths: list[Path], excluded: tuple[Path, ...]) -> tuple[Path, ...]:
    """Absolute, without duplicates or excluded files, sorted by path string (stable everywhere)."""
    unique = {str(p.absolute()): p.absolute() for p in paths if not _under(p, excluded)}
    return tuple(unique[k] for k in sorted(unique))


def read_text(
    inputs: str | Path | None, *, encoding: str = "utf-8", separator: str = "\n", max_chars: int | None = None
) -> str:
    """The text ``inputs`` names (see ``resolve_inputs``; None: the embedded corpus, always UTF-8),
    exactly as written (no newline translation, BOMs dropped), several files joined by ``separator``.

    The same reader and rules as ``load_corpus``: one file named is an error if empty, binary,
    undecodable or unreadable (DataError, ConfigError for an unknown encoding); in a folder or glob
    such files are left out. With ``max_chars``, reading stops after that many characters.
    """
    if inputs is None:
        encoding = "utf-8"
    reader = Reader(encoding)
    return read_joined(resolve_inputs(inputs), reader, separator, max_chars)


def load_corpus(
    inputs: str | Path | None,
    *,
    encoding: str = "utf-8",
    separator: str = "\n",
    vocab: Vocab | None = None,
    cache_dir: str | Path | None = None,
    exclude: tuple[Path, ...] = (),
    chunk_size: int = CHUNK_BYTES,
) -> LoadedCorpus:
    """Read, encode and (with ``cache_dir``) cache the text ``inputs`` names (see ``resolve_inputs``).

    ``vocab`` (fine-tuning, resuming, evaluating) fixes the vocabulary: every character must be in it
    (``Vocab.check``). Without ``cache_dir`` the ids are built in memory (N x 1, 2 or 4 bytes). The
    embedded corpus (``inputs`` None) is UTF-8 and small, and never cached. One explicitly named file
    is an error if empty, binary or undecodable; in a folder or glob such files are skipped and listed
    in the result. DataError/ConfigError/OutputError for what the user can fix.
    """
    if inputs is None:
        encoding, cache_dir = "utf-8", None
    reader = Reader(encoding, chunk_size)
    sources = resolve_inputs(inputs, exclude)
    stats = stat_files(sources.files)
    if cache_dir is None:
        return _build(sources, stats, reader, separator, vocab, None)
    identity = {"inputs": sources.path, "encoding": encoding, "separator": separator}
    cache = Cache(Path(cache_dir), sources.name, identity)
    with cache.locked():
        hit = cache.lookup(stats, vocab)
        if hit is not None:
            corpus = _corpus(sources, hit.ids, hit.vocab, hit.sha256, separator)
            skipped = tuple(Skipped(path, reason) for path, reason in hit.skipped)
            return LoadedCorpus(corpus, hit.n_files, skipped, "hit", hit.data_file)
        return _build(sources, stats, reader, separator, vocab, cache)


def _corpus(sources: Sources, ids: np.ndarray, vocab: Vocab, sha256: str, separator: str) -> Corpus:
    return Corpus(
        name=sources.name,
        ids=ids,
        vocab=vocab,
        sha256=sha256,
        path=sources.path,
        separator=None if sources.single else separator,
    )


def _build(
    sources: Sources, stats: list, reader: Reader, separator: str, vocab: Vocab | None, cache: Cache | None
) -> LoadedCorpus:
    """Both passes; into ``cache`` (then memory-mapped) or into memory."""
    found = survey(sources, reader, separator)
    if vocab is None:
        vocab = Vocab(found.chars)
    else:
        vocab.check(found.chars, sources.name)
    dtype = index_dtype(len(vocab))
    data_file = None
    if cache is None:
        ids = np.empty(found.n_chars, dtype=dtype)
        pos = 0

        def write(chunk: np.ndarray) -> None:
            nonlocal pos
            ids[pos : pos + len(chunk)] = chunk
            pos += len(chunk)

        digest = encode(found, reader, separator, vocab, write)
        assert pos == found.n_chars, "pass 2 wrote another length than pass 1 counted"
    else:
        data_file, digest = cache.store(found.n_chars, dtype, lambda w: encode(found, reader, separator, vocab, w))
    if stat_files(sources.files) != stats:
        if data_file is not None:
            discard(data_file)
        raise DataError(f"{sources.name}: files changed while the corpus was being encoded; run again")
    if cache is not None:
        assert data_file is not None, "cache.store wrote the ids to a file"
        cache.commit(
            stats,
            n_files=len(found.files),
            skipped=[(s.path, s.reason) for s in found.skipped],
            n_chars=found.n_chars,
            text_chars=found.chars,
            vocab=vocab,
            sha256=digest,
            data_file=data_file,
        )
        ids = np.load(data_file, mmap_mode="r")
    corpus = _corpus(sources, ids, vocab, digest, separator)
    return LoadedCorpus(corpus, len(found.files), tuple(found.skipped), "off" if cache is None else "built", data_file)

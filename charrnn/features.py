"""Text features for ``visualize --find``: each maps a text of N characters to (N,) float64, its value after
reading ``text[t]``.

Karpathy, Johnson & Fei-Fei (2015) found cells that track these: whether the text is inside quotes, the
position in the line, how deeply brackets are nested. ``feature_values`` looks a feature up by name (one of
``FEATURES``, or ``regex:PATTERN``) and refuses one that is constant over the text, since nothing can
correlate with a constant. No I/O and no printing here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

from charrnn.errors import ConfigError, DataError, option


def quote_feature(text: str) -> np.ndarray:
    """1 inside "...": from the opening quote up to (not including) the closing one. A plain toggle."""
    is_quote = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4") == ord('"')
    return (np.cumsum(is_quote) % 2).astype(np.float64)


def line_position_feature(text: str) -> np.ndarray:
    """Characters of the current line read so far: 1 for the first, 2 for the second; 0 after a newline."""
    out = np.zeros(len(text))
    column = 0
    for i, ch in enumerate(text):
        column = 0 if ch == "\n" else column + 1
        out[i] = column
    return out


def bracket_depth_feature(text: str) -> np.ndarray:
    """Nesting depth of (), [] and {} after each character (never below 0 on unbalanced text)."""
    out = np.zeros(len(text))
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        out[i] = depth
    return out


def indent_feature(text: str) -> np.ndarray:
    """Leading spaces and tabs of the current line (each counts 1), as far as read; 0 after a newline."""
    out = np.zeros(len(text))
    indent, leading = 0, True
    for i, ch in enumerate(text):
        if ch == "\n":
            indent, leading = 0, True
        elif leading and ch in " \t":
            indent += 1
        else:
            leading = False
        out[i] = indent
    return out


_LATEX_MARKER = re.compile(r"\\(?:documentclass|begin\{)")


def comment_feature(text: str) -> np.ndarray:
    """1 inside comments. LaTeX ``%`` comments if the text has ``\\documentclass`` or ``\\begin{``;
    otherwise C ``/* ... */`` and ``// ...`` (ignoring those inside "strings" and 'c' literals).

    An opening delimiter counts from its last character (``/*``: the ``*``), a closing one is inside.
    """
    if _LATEX_MARKER.search(text):
        return _latex_comments(text)
    return _c_comments(text)


def _latex_comments(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    inside, prev = False, ""
    for i, ch in enumerate(text):
        if inside and ch == "\n":
            inside = False
        elif not inside and ch == "%" and prev != "\\":
            inside = True
        out[i] = inside
        prev = ch
    return out


def _c_comments(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    state, prev, opened_at = "code", "", -1  # state: code | string | char | line | block
    for i, ch in enumerate(text):
        mark = False
        if state == "code":
            if ch == '"':
                state = "string"
            elif ch == "'":
                state = "char"
            elif prev == "/" and ch == "/":
                state, mark = "line", True
            elif prev == "/" and ch == "*":
                state, mark, opened_at = "block", True, i
        elif state in ("string", "char"):
            if ch == "\\" and prev == "\\":
                ch = ""  # an escaped backslash escapes nothing after it
            elif ch == ('"' if state == "string" else "'") and prev != "\\":
                state = "code"
            elif ch == "\n":
                state = "code"  # an unterminated literal ends with its line
        elif state == "line":
            if ch == "\n":
                state = "code"
            else:
                mark = True
        else:  # block
            mark = True
            if prev == "*" and ch == "/" and i - opened_at >= 2:
                state, ch = "code", ""  # "*/" then "/" must not open a line comment
        out[i] = mark
        prev = ch
    return out


def word_position_feature(text: str) -> np.ndarray:
    """Position in the current word (letters, digits, _): 1 for its first character; 0 between words."""
    out = np.zeros(len(text))
    position = 0
    for i, ch in enumerate(text):
        position = position + 1 if (ch.isalnum() or ch == "_") else 0
        out[i] = position
    return out


def regex_feature(text: str, pattern: str) -> np.ndarray:
    """1 on every character inside a match of ``pattern`` (non-overlapping, as ``re.finditer``)."""
    if not pattern:
        raise ConfigError(
            f"{option('find', 'regex:')} needs a pattern after the colon, e.g. {option('find', 'regex:[0-9]+')}"
        )
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(
            f"{option('find', 'regex:' + pattern)}: not a valid regular expression ({exc}); fix the pattern"
        ) from None
    out = np.zeros(len(text))
    for match in compiled.finditer(text):
        out[match.start() : match.end()] = 1.0
    return out


FEATURES: dict[str, Callable[[str], np.ndarray]] = {
    "quote": quote_feature,
    "line-position": line_position_feature,
    "bracket-depth": bracket_depth_feature,
    "indent": indent_feature,
    "comment": comment_feature,
    "word-position": word_position_feature,
}


def feature_values(name: str, text: str) -> np.ndarray:
    """The feature ``name`` (one of FEATURES, or ``regex:PATTERN``) over ``text``: (N,) float64.

    ConfigError for an unknown name or bad pattern; DataError if the feature is constant over the
    text (no correlation is defined then).
    """
    if name.startswith("regex:"):
        values = regex_feature(text, name[len("regex:") :])
    elif name in FEATURES:
        values = FEATURES[name](text)
    else:
        raise ConfigError(
            f"unknown {option('find')} feature {name!r}; choose one of {', '.join(FEATURES)}, or regex:PATTERN"
        )
    if len(values) and math.isclose(float(values.min()), float(values.max())):
        raise DataError(
            f"{option('find', name)}: the feature is {values[0]:g} at every character of this text, so nothing can "
            "correlate with it; pass a text where it varies (e.g. one with quotes for 'quote')"
        )
    return values


def feature_window(values: np.ndarray, width: int) -> tuple[int, int]:
    """A ``width``-character window that starts a little before the feature first changes."""
    n = len(values)
    changes = np.flatnonzero(values != values[0]) if n else np.array([], dtype=int)
    start = max(0, int(changes[0]) - width // 4) if len(changes) else 0
    start = max(0, min(start, n - width))
    return start, min(n, start + width)

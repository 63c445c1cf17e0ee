"""The colour scales ``charrnn visualize`` paints with, shared by the terminal view and the HTML page.

Two scales, each a list of (position, (r, g, b)) anchors with linear interpolation between them:

- ``diverging`` (-1 blue .. 0 white .. +1 red), for activations and gates;
- ``sequential`` (0 white .. 1 red), for surprisal and for features.

A value is first put on a scale with ``scale_values`` (its range [lo, hi] onto the scale's positions),
then ``colour`` gives its background and ``text_colour`` a foreground that stays readable on it. The
page's script interpolates the same anchors, which it receives from ``MAPS``.
"""

from __future__ import annotations

import numpy as np

Anchors = tuple[tuple[float, tuple[int, int, int]], ...]

DIVERGING: Anchors = (
    (-1.0, (33, 102, 172)),
    (-0.5, (103, 169, 207)),
    (0.0, (247, 247, 247)),
    (0.5, (239, 138, 98)),
    (1.0, (178, 24, 43)),
)
SEQUENTIAL: Anchors = ((0.0, (247, 247, 247)), (0.5, (244, 165, 130)), (1.0, (178, 24, 43)))
MAPS: dict[str, Anchors] = {"diverging": DIVERGING, "sequential": SEQUENTIAL}
SURPRISAL_MAX_BITS = 8.0  # the top of the surprisal scale: 8 bits or more is the darkest red


def colour(kind: str, s: float) -> tuple[int, int, int]:
    """Position ``s`` on the scale ``kind`` (diverging: -1..1, sequential: 0..1; clipped) -> (r, g, b)."""
    anchors = MAPS[kind]
    s = min(max(float(s), anchors[0][0]), anchors[-1][0])
    for (x0, c0), (x1, c1) in zip(anchors, anchors[1:]):
        if s <= x1:
            w = (s - x0) / (x1 - x0)
            red, green, blue = (int(round(a + (b - a) * w)) for a, b in zip(c0, c1))
            return red, green, blue
    return anchors[-1][1]


def text_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (by perceived luminance)."""
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def scale_values(values: np.ndarray, lo: float, hi: float, kind: str = "diverging") -> np.ndarray:
    """Raw values (N,) in [lo, hi] -> (N,) float64 positions on the ``kind`` scale; NaN stays NaN."""
    s = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo)
    return s * 2.0 - 1.0 if kind == "diverging" else s


def surprisal_positions(bits: np.ndarray) -> np.ndarray:
    """Surprisal in bits (N,) -> positions on the sequential scale (NaN where there is no prediction)."""
    return np.asarray(bits, dtype=np.float64) / SURPRISAL_MAX_BITS

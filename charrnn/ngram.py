"""An interpolated Kneser–Ney character n-gram: the baseline a character RNN is measured against
(Karpathy, Johnson & Fei-Fei 2015 compare an LSTM with a 20-gram).

Counting is vectorised: no Python dict per n-gram. The k-grams of a text get dense ids one order at
a time, each from the (k-1)-gram it extends::

    key_k[i] = id_{k-1}[i-1] * V + x[i]          the k-gram ending at i = its first k-1 characters + x[i]
    keys_k, id_k = np.unique(key_k, return_inverse=True)

so ``keys_k`` (sorted) is the order-k table and a k-gram's id is its row in it. The context of a
k-gram is ``key // V`` (a (k-1)-gram id), its last character ``key % V``. A new text is looked up the
same way with ``np.searchsorted``, order by order; an n-gram never seen gets id -1, and so does
every longer one ending at the same place.

The probability is interpolated modified Kneser–Ney (Chen & Goodman 1998), recursively down to the
uniform distribution over the vocabulary, so every character of the vocabulary gets a probability
above zero and they sum to 1 in every context::

    p_k(w | h) = max(c_k(hw) - D_k(c_k(hw)), 0) / c_k(h.) + gamma_k(h) p_{k-1}(w | h')
    gamma_k(h) = (D_k1 N1(h.) + D_k2 N2(h.) + D_k3 N3+(h.)) / c_k(h.)
    p_0(w) = 1 / V

where h' is h without its first character, c_N are raw counts, c_k (k < N) are continuation counts
(how many distinct characters precede the k-gram), and a context with c_k(h.) = 0 (never seen, or
seen only at the end of the text) hands the whole mass to p_{k-1}. The discounts come from each
order's counts of counts, D_kc = c - (c + 1) Y n_{c+1} / n_c with Y = n_1 / (n_1 + 2 n_2).

Memory: per order, one key (4 or 8 bytes) and one count (4 bytes) per distinct k-gram, and a total
and a gamma (4 + 8 bytes) per distinct (k-1)-gram; each order's table is built as soon as its
counts are known, so counting holds the finished tables plus a few arrays of the text's length. ``benchmarks/bench_ngram.py`` measures the time
and peak memory of fitting and scoring a 20-gram (docs/performance.md). No I/O and no printing here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from charrnn.errors import ConfigError, DataError

MAX_ORDER = 20


def check_order(order: int) -> int:
    """``order`` if it is a whole number from 1 to MAX_ORDER, else ConfigError."""
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= MAX_ORDER:
        raise ConfigError(f"an n-gram's order must be a whole number from 1 to {MAX_ORDER}, got {order!r}")
    return int(order)


def parse_baseline(spec: str) -> int:
    """'ngram:N' -> N; ConfigError naming the form for anything else."""
    kind, _, number = str(spec).partition(":")
    if kind.strip().lower() != "ngram" or not number.strip().isdigit():
        raise ConfigError(f"{spec!r}: use ngram:N with N from 1 to {MAX_ORDER}, e.g. ngram:5")
    order = int(number)
    if not 1 <= order <= MAX_ORDER:
        raise ConfigError(f"{spec!r}: the n-gram's order N must be from 1 to {MAX_ORDER}")
    return order


@dataclass
class _Order:
    """The order-k table: sorted ``keys`` (context id * V + character), their ``counts``, and per
    context (a (k-1)-gram id) the ``total`` count and the back-off weight ``gamma``; ``discounts``
    (D1, D2, D3+) for counts 1, 2 and 3 or more."""

    keys: np.ndarray
    counts: np.ndarray
    total: np.ndarray
    gamma: np.ndarray
    discounts: np.ndarray

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.counts, self.total, self.gamma))


def _discounts(counts: np.ndarray) -> np.ndarray:
    """Modified Kneser–Ney's (D1, D2, D3+) from the counts of counts; sensible values where a count
    of counts is zero (tiny texts), kept within (0, c) so every seen context leaves some mass."""
    n = np.bincount(np.minimum(counts, 5), minlength=6).astype(np.float64)  # n[c]: k-grams seen c times
    fallback = np.array([0.5, 1.0, 1.5])
    if n[1] == 0 or n[2] == 0:
        return fallback
    y = n[1] / (n[1] + 2 * n[2])
    d = np.empty(3)
    for c in (1, 2, 3):
        d[c - 1] = c - (c + 1) * y * n[c + 1] / n[c] if n[c] > 0 else fallback[c - 1]
    return np.clip(d, 0.05, np.array([0.95, 1.95, 2.95]))


def _key_dtype(n_contexts: int, vocab_size: int) -> type:
    return np.int32 if n_contexts * vocab_size < 2**31 else np.int64


class NGram:
    """An interpolated Kneser–Ney character n-gram of ``order`` over a vocabulary of ``vocab_size``.

    ``NGram.fit(ids, order, vocab_size)`` counts a text given as (L,) integer ids in [0, vocab_size);
    ``log_probs(ids)`` then gives the natural log of p(ids[t] | ids[:t]) at every position, and
    ``distribution(context)`` the whole next-character distribution.
    """

    def __init__(self, order: int, vocab_size: int, orders: list[_Order], n_chars: int):
        self.order, self.vocab_size, self._orders, self.n_chars = order, vocab_size, orders, n_chars

    @property
    def nbytes(self) -> int:
        """Bytes of numpy arrays the fitted tables hold."""
        return sum(o.nbytes for o in self._orders)

    @property
    def n_grams(self) -> list[int]:
        """How many distinct k-grams the text holds, for k = 1 .. order."""
        return [len(o.keys) for o in self._orders]

    @classmethod
    def fit(cls, ids: np.ndarray, order: int, vocab_size: int) -> NGram:
        """Count ``ids`` (L,) for every order up to ``order``. DataError for an empty text; ValueError
        for ids outside [0, vocab_size) (callers encode with the model's vocabulary first)."""
        order = check_order(order)
        x = np.asarray(ids, dtype=np.int64)
        if x.ndim != 1 or len(x) == 0:
            raise DataError("the n-gram needs a non-empty text to count")
        if x.min() < 0 or x.max() >= vocab_size:
            raise ValueError(f"ids must lie in [0, {vocab_size})")
        v = vocab_size
        prev = np.zeros(len(x), dtype=np.int64)  # id of the (k-1)-gram ending at each position; -1: none
        n_prev = 1  # distinct (k-1)-grams (one empty 0-gram)
        orders: list[_Order] = []
        waiting: tuple[np.ndarray, int] | None = None  # order k-1's keys and contexts, until its counts are known
        for k in range(1, order + 1):
            start = k - 1  # the first position a k-gram ends at
            if start >= len(x):
                keys, first, inverse = (np.zeros(0, dtype=np.int64),) * 3
            else:
                context = prev[start - 1 : -1] if k > 1 else prev[start:]
                keys, first, inverse = np.unique(context * v + x[start:], return_index=True, return_inverse=True)
                del context
            if waiting is not None:
                # Order k-1's continuation counts: each distinct k-gram adds one left extension to its
                # last k-1 characters, the (k-1)-gram ending where it ends. Its table is then complete,
                # so it is built now and only the finished tables stay in memory.
                continuation = np.bincount(prev[start + first], minlength=n_prev).astype(np.int32)
                orders.append(cls._table(waiting[0], continuation, waiting[1], v))
            del first
            waiting = keys.astype(_key_dtype(n_prev, v)), n_prev
            if k == order:  # the top order keeps raw counts
                orders.append(
                    cls._table(waiting[0], np.bincount(inverse, minlength=len(keys)).astype(np.int32), n_prev, v)
                )
                break
            prev = np.full(len(x), -1, dtype=np.int64)
            prev[start:] = inverse
            n_prev = len(keys)
            del inverse, keys
        return cls(order, v, orders, len(x))

    @staticmethod
    def _table(keys: np.ndarray, counts: np.ndarray, n_contexts: int, vocab_size: int) -> _Order:
        positive = counts[counts > 0]
        discounts = _discounts(positive) if len(positive) else np.array([0.5, 1.0, 1.5])
        context = keys.astype(np.int64) // vocab_size
        total = np.bincount(context, weights=counts, minlength=n_contexts)
        kept = np.zeros(len(counts))
        for c, d in ((1, discounts[0]), (2, discounts[1])):
            kept += (counts == c) * d
        kept += (counts >= 3) * discounts[2]
        mass = np.bincount(context, weights=kept, minlength=n_contexts)
        gamma = np.divide(mass, total, out=np.zeros(n_contexts), where=total > 0)
        return _Order(keys, counts, total.astype(np.int32), gamma, discounts)

    def log_probs(self, ids: np.ndarray) -> np.ndarray:
        """ln p(ids[..., t] | ids[..., :t]) for ids (T,) or (R, T): each row is a text of its own,
        read from its start (position 0 has no context and gets the order-1 probability)."""
        y = np.asarray(ids, dtype=np.int64)
        flat = y.ndim == 1
        y = np.atleast_2d(y)
        if y.size and (y.min() < 0 or y.max() >= self.vocab_size):
            raise ValueError(f"ids must lie in [0, {self.vocab_size})")
        v = self.vocab_size
        p = np.full(y.shape, 1.0 / v)
        prev = np.zeros(y.shape, dtype=np.int64)  # the (k-1)-gram id ending at each position
        for k, table in enumerate(self._orders, 1):
            if not len(table.keys):  # the fitted text was shorter than k characters
                break
            # The context of the k-gram ending at t is the (k-1)-gram ending at t - 1.
            context = prev if k == 1 else np.pad(prev[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
            known = context >= 0
            keys = np.where(known, context, 0) * v + y
            row = np.minimum(np.searchsorted(table.keys, keys), max(len(table.keys) - 1, 0))
            found = known & (table.keys[row] == keys)
            count = np.where(found, table.counts[row], 0)
            h = np.where(known, context, 0)
            total = np.where(known, table.total[h], 0)
            discount = np.select([count == 0, count == 1, count == 2], [0.0, *table.discounts[:2]], table.discounts[2])
            seen = total > 0
            higher = np.maximum(count - discount, 0.0) / np.where(seen, total, 1) + table.gamma[h] * p
            p = np.where(seen, higher, p)
            prev = np.where(found, row, -1)
        out = np.log(p)
        return out[0] if flat else out

    def distribution(self, context: np.ndarray) -> np.ndarray:
        """(vocab_size,) probabilities of the next character after ``context`` (ids, may be empty)."""
        context = np.asarray(context, dtype=np.int64)
        context = context[max(0, len(context) - (self.order - 1)) :] if self.order > 1 else context[:0]
        rows = np.concatenate([np.tile(context, (self.vocab_size, 1)), np.arange(self.vocab_size)[:, None]], axis=1)
        return np.exp(self.log_probs(rows)[:, -1])

"""Binomial acceptance bounds for the endpoint split of N probes."""

from __future__ import annotations

import math


def _log_pmf(n: int, k: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    # math.comb is exact; its log avoids the float overflow of comb(n, k) itself.
    return math.log(math.comb(n, k)) + k * math.log(p) + (n - k) * math.log1p(-p)


def binomial_bounds(n: int, p: float, confidence: float = 0.999) -> tuple[int, int]:
    """The central interval [lo, hi] of Binomial(n, p) holding at least ``confidence``:
    each tail outside it has probability at most (1 - confidence) / 2 (exact sums)."""
    if n <= 0:
        return 0, 0
    tail = (1.0 - confidence) / 2.0
    pmf = [math.exp(_log_pmf(n, k, p)) for k in range(n + 1)]
    lo, acc = 0, 0.0
    while lo < n and acc + pmf[lo] <= tail:
        acc += pmf[lo]
        lo += 1
    hi, acc = n, 0.0
    while hi > 0 and acc + pmf[hi] <= tail:
        acc += pmf[hi]
        hi -= 1
    return lo, hi

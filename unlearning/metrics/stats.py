"""Small statistics for the score tables: Wilson intervals for rates, PUL, t-intervals over seeds.

All intervals are 95 %. The interval maths comes from scipy; only PUL's one line is written here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

from ..errors import InputError

CONFIDENCE = 0.95  # level of every interval this module returns


@dataclass(frozen=True)
class Rate:
    """A proportion k / n with its 95 % Wilson score interval."""

    value: float  # k / n
    low: float  # lower end of the 95 % Wilson interval
    high: float  # upper end of the 95 % Wilson interval
    n: int  # number of samples behind the rate

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def rate_with_interval(k: int, n: int) -> Rate:
    """``k`` successes out of ``n`` samples as a :class:`Rate` with a 95 % Wilson score interval.

    Wilson (not the normal approximation) stays inside [0, 1] and is not degenerate at k = 0 or
    k = n: for k = 0 the interval is [0, z^2 / (n + z^2)] with z = 1.96.
    """
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise InputError(f"a rate needs integer counts, got k={k!r}, n={n!r}.")
    k, n = int(k), int(n)
    if n < 1:
        raise InputError(f"a rate needs at least one sample, got n={n}.")
    if not 0 <= k <= n:
        raise InputError(f"a rate needs 0 <= k <= n, got k={k}, n={n}.")
    interval = stats.binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return Rate(value=k / n, low=max(0.0, float(interval.low)), high=min(1.0, float(interval.high)), n=n)


def pul(before: float, after: float) -> float | None:
    """Percentage of unlearning (VDU): ``100 * (before - after) / before``; None when ``before`` is 0.

    ``before`` and ``after`` are forget rates of the original and the unlearned model, measured
    with the same evaluator, prompts and seeds. 100 means fully forgotten; negative means worse.
    """
    if before == 0:
        return None
    return 100.0 * (before - after) / before


def mean_interval(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean of ``values`` (e.g. one metric over seeds) with a 95 % Student-t interval.

    Returns ``(mean, low, high)``; ``low`` and ``high`` are None when there are fewer than 3
    values (too few for a meaningful interval). When all values are equal the interval is the
    point itself.
    """
    values = [float(v) for v in values]
    if not values:
        raise InputError("mean_interval needs at least one value.")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"mean_interval got a non-finite value: {values}.")
    mean = math.fsum(values) / len(values)
    if len(values) < 3:
        return mean, None, None
    sem = float(stats.sem(values))  # sample std (ddof=1) / sqrt(n)
    if sem == 0.0:
        return mean, mean, mean
    low, high = stats.t.interval(CONFIDENCE, df=len(values) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)

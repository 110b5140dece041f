"""Statistics over seeds for sweep comparisons: intervals, tests, multiple-comparison correction.

A sweep setting is trained once per seed, so every comparison here is over
seeds (independent runs), never over the queries of one evaluation:

- `bootstrap_ci`: the seed mean's percentile bootstrap interval (resampling
  seeds with replacement; a fixed generator seed, so a table recomputes
  exactly);
- `standard_error`: the standard error of one evaluation's mean over its
  queries (sample std / sqrt(n)), the noise a single seed's number carries;
- `welch`: Welch's unequal-variance t test of two seed samples (two-sided);
- `one_sample_t`: Student's t test of one seed sample's mean against a fixed
  value (two-sided), e.g. a preference share against 0.5, or per-seed paired
  differences against 0;
- `permutation`: the exact two-sided permutation test of the difference of
  means (every split of the pooled seeds when there are at most
  `max_exact` of them, else that many random splits);
- `holm`: Holm's step-down adjustment of a family of p-values (controls the
  family-wise error rate; adjusted p-values, monotone, capped at 1).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats as scipy_stats

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
TESTS = ("welch", "permutation")


class Interval(NamedTuple):
    mean: float
    lo: float
    hi: float
    n: int


def _sample(xs: Sequence[float], what: str) -> np.ndarray:
    x = np.asarray(xs, np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"{what}: expected a non-empty 1-D list of values, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: non-finite values {x.tolist()}")
    return x


def bootstrap_ci(xs: Sequence[float], level: float = 0.95, *,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Interval:
    """The mean of `xs` and its percentile bootstrap interval at `level`.

    One value gives a zero-width interval (there is nothing to resample).
    With few seeds the percentile interval is too narrow (it cannot reach
    beyond the sample's range); it is reported with n so a reader can weigh it.
    """
    x = _sample(xs, "bootstrap_ci")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
    mean = float(x.mean())
    if len(x) == 1:
        return Interval(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    idx_RxN = rng.integers(0, len(x), size=(resamples, len(x)))
    means_R = x[idx_RxN].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means_R, [tail, 1 - tail])
    return Interval(mean, float(lo), float(hi), len(x))


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean of one evaluation's per-query values: std (ddof 1) / sqrt(n)."""
    x = _sample(values, "standard_error")
    if len(x) < 2:
        raise ValueError("standard_error: needs at least 2 values")
    return float(x.std(ddof=1) / math.sqrt(len(x)))


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(t, two-sided p) of Welch's t test of mean(a) - mean(b); needs >= 2 values each.

    Two samples with no spread at all give p = 0 if their means differ, else 1.
    """
    x, y = _sample(a, "welch a"), _sample(b, "welch b")
    if min(len(x), len(y)) < 2:
        raise ValueError(f"welch: needs >= 2 seeds on each side, got {len(x)} and {len(y)}")
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    diff = float(x.mean() - y.mean())
    if vx + vy == 0:
        return (math.copysign(math.inf, diff) if diff else 0.0), (0.0 if diff else 1.0)
    t = diff / math.sqrt(vx + vy)
    dof = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    return t, float(2 * scipy_stats.t.sf(abs(t), dof))


def one_sample_t(xs: Sequence[float], mu: float = 0.0) -> tuple[float, float]:
    """(t, two-sided p) of Student's t test of mean(xs) = mu; needs >= 2 values.

    A sample with no spread gives p = 0 if its mean differs from mu, else 1.
    """
    x = _sample(xs, "one_sample_t")
    if len(x) < 2:
        raise ValueError(f"one_sample_t: needs >= 2 seeds, got {len(x)}")
    diff = float(x.mean() - mu)
    se = float(x.std(ddof=1) / math.sqrt(len(x)))
    if se == 0:
        return (math.copysign(math.inf, diff) if diff else 0.0), (0.0 if diff else 1.0)
    t = diff / se
    return t, float(2 * scipy_stats.t.sf(abs(t), len(x) - 1))


def permutation(a: Sequence[float], b: Sequence[float], *, max_exact: int = 20_000,
                seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided permutation p-value of |mean(a) - mean(b)|: the share of
    relabellings of the pooled values whose |difference| is at least the
    observed one (the observed labelling counts, so p > 0).

    Exact (every choice of which len(a) values are "a") when there are at most
    `max_exact` choices; else `max_exact` random relabellings plus the observed.
    The smallest p it can give is 1 / C(n_a + n_b, n_a): 0.1 for 3 vs 3 seeds,
    0.0079 for 5 vs 5.
    """
    x, y = _sample(a, "permutation a"), _sample(b, "permutation b")
    pooled = np.concatenate([x, y])
    n, k = len(pooled), len(x)
    observed = abs(x.mean() - y.mean())
    total = pooled.sum()
    tol = 1e-12 * max(1.0, float(np.abs(pooled).max()))

    def diff(sum_a):
        return abs(sum_a / k - (total - sum_a) / (n - k))

    if math.comb(n, k) <= max_exact:
        sums = np.array([pooled[list(c)].sum() for c in itertools.combinations(range(n), k)])
        return float(np.mean(diff(sums) >= observed - tol))
    rng = np.random.default_rng(seed)
    sums = np.array([pooled[rng.permutation(n)[:k]].sum() for _ in range(max_exact)])
    return float((np.sum(diff(sums) >= observed - tol) + 1) / (max_exact + 1))


def p_value(a: Sequence[float], b: Sequence[float], name: str = "welch") -> float:
    """The two-sided p-value of test `name` (`TESTS`)."""
    if name == "welch":
        return welch(a, b)[1]
    if name == "permutation":
        return permutation(a, b)
    raise ValueError(f"test {name!r}: expected one of {TESTS}")


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (0-based) of m becomes
    max over j <= i of min(1, (m - j) p_(j)); reject where adjusted <= alpha.
    NaN entries (comparisons that could not be tested) stay NaN and do not
    count towards m.
    """
    p = np.asarray(pvalues, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()

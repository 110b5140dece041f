"""Gold score against KL as a per-seed frontier, read at fixed KL budgets.

Methods reach different KL from the initial policy, and the gold score
depends on KL as much as on the method; two methods are therefore compared
at the same KL. Each seed of a method contributes a frontier: its points
(KL, gold) from every evaluation the sweep made of it (snapshots along a
PPO run, one point per setting of a ladder: DPO's beta, best-of-N's N,
unlikelihood's alpha). The frontier is read at a budget by linear
interpolation in d = sqrt(KL):

- Gao et al.'s forms are functions of d, and the gold gain is close to
  linear in d near the initial policy (R(d) = a d + O(d^2)), so straight
  segments in d follow the curve better than in KL;
- d, unlike log KL, is finite at KL 0, so the initial policy (KL 0, its
  gold on the same seed's evaluation) anchors every frontier: all methods
  start from it.

A budget outside a seed's measured KL range gives NaN: a frontier is never
extrapolated, and a method that did not reach a budget is not compared there.
Points are sorted by KL; where a run's KL goes back and forth (snapshots of
a noisy run), the segments join the points in KL order.
"""

from __future__ import annotations

import csv
import dataclasses
from typing import Sequence

import numpy as np

BUDGETS = (0.5, 1.0, 2.5, 5.0, 10.0)  # nats


@dataclasses.dataclass(frozen=True)
class Frontier:
    """One seed's points of one method, sorted by KL."""

    kl_P: np.ndarray
    y_P: np.ndarray

    @staticmethod
    def of(kl: Sequence[float], y: Sequence[float]) -> "Frontier":
        kl_P, y_P = np.asarray(kl, np.float64), np.asarray(y, np.float64)
        if kl_P.shape != y_P.shape or kl_P.ndim != 1 or len(kl_P) == 0:
            raise ValueError(f"frontier: kl {kl_P.shape} and y {y_P.shape} must be 1-D of one "
                             "non-zero length")
        # Sampled KL estimates can dip just below 0 at the initial policy.
        kl_P = np.maximum(kl_P, 0.0)
        order = np.argsort(kl_P, kind="stable")
        return Frontier(kl_P[order], y_P[order])

    def at(self, budget: float) -> float:
        """The gold at KL `budget`, linear in sqrt(KL) between neighbours; NaN outside."""
        if budget < 0:
            raise ValueError(f"KL budget must be >= 0, got {budget}")
        d_P, b = np.sqrt(self.kl_P), np.sqrt(budget)
        if b < d_P[0] or b > d_P[-1]:
            return float("nan")
        # Several points at the same d (a ladder's settings at one KL): their mean.
        d_U, inverse = np.unique(d_P, return_inverse=True)
        y_U = np.bincount(inverse, weights=self.y_P) / np.bincount(inverse)
        return float(np.interp(b, d_U, y_U))


def seed_frontiers(points: Sequence[tuple[Sequence[float], Sequence[float]]],
                   anchor: Sequence[float] | None = None) -> list[Frontier]:
    """Per seed, the frontier through every point of a method.

    `points`: per point, (KL per seed, gold per seed), seeds in one order;
    `anchor`: per seed, the initial policy's gold, added at KL 0.
    """
    if not points:
        raise ValueError("seed_frontiers: no points")
    seeds = {len(x) for x, _ in points} | {len(y) for _, y in points}
    if anchor is not None:
        seeds.add(len(anchor))
    if len(seeds) != 1:
        raise ValueError(f"seed_frontiers: points have different seed counts {sorted(seeds)}")
    out = []
    for z in range(seeds.pop()):
        kl = [x[z] for x, _ in points]
        y = [ys[z] for _, ys in points]
        if anchor is not None:
            kl, y = [0.0] + kl, [anchor[z]] + y
        out.append(Frontier.of(kl, y))
    return out


def at_budget(frontiers: Sequence[Frontier], budget: float) -> np.ndarray:
    """[seeds] each frontier read at `budget` (NaN where a seed did not reach it)."""
    return np.asarray([f.at(budget) for f in frontiers], np.float64)


def read_curves(path: str, panel: str) -> dict[str, list[tuple[list[float], list[float]]]]:
    """{curve: [(x per seed, y per seed)] per point} of one panel of a sweep CSV."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("panel") == panel]
    if not rows:
        raise ValueError(f"{path}: no rows of panel {panel!r}")
    out: dict[str, list] = {}
    for r in rows:
        x = [float(v) for v in r["x_seeds"].split(";") if v]
        y = [float(v) for v in r["y_seeds"].split(";") if v]
        out.setdefault(r["curve"], []).append((x, y))
    return out

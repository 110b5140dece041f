"""The study's tables from its CSV: each method's points, and which parts mattered at equal KL.

    python -m rlhf_jax.experiments.study_table results/study/study.csv [--test permutation]
    python -m rlhf_jax.experiments.study_table CSV --panel PANEL --against CURVE   # any sweep

Reads the sweep CSV that `configs/sweeps/study.py` writes (one row per
point: x = KL, y = gold score or judge win rate, with every seed's value)
and prints two markdown tables:

- every method's points: its setting, KL, the gold score's seed mean with
  its 95% bootstrap interval over seeds (`stats.bootstrap_ci`), the number
  of seeds, the evaluation's own standard error over queries (the mean of
  the seeds' standard errors, where the CSV has them) and the held-out
  judge's win rate against the initial policy;
- `PARTS`: each part of the pipeline against a method without it, at the
  same KL: each seed's points form a frontier of gold against KL, read at
  each budget of `frontier.BUDGETS` (`frontier`: linear in sqrt(KL), the
  initial policy at KL 0, no extrapolation). Per row: the budget, each
  side's mean, interval and seeds, the difference, the test's two-sided
  p-value (Welch's t by default) and its Holm-adjusted value over every
  row of the table. A difference is called only where the adjusted p is
  below `ALPHA`.

`--panel P --against C` reads any sweep CSV's panel P (x = KL, y = gold)
and compares every other curve with the curve whose label starts with C
the same way (e.g. Ziegler Fig. 2: gold-reward PPO against the RM runs).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import re

import numpy as np

from rlhf_jax.experiments import frontier, stats

GOLD_PANEL = "gold score vs KL"
JUDGE_PANEL = "held-out judge: win rate against the initial policy"
INITIAL = "initial policy"
ALPHA = 0.05

# (what the part is, a method with it, one without it): curve labels matched by prefix.
PARTS = (
    ("RL on a reward model vs learning from the labels directly", "PPO, shared value", "DPO"),
    ("RL vs reranking the initial policy's samples", "PPO, shared value", "best-of-N (RM"),
    ("RL vs fine-tuning on best-of-N samples", "PPO, shared value", "best-of-N then SFT"),
    ("a value model (PPO vs RLOO)", "PPO, shared value", "RLOO"),
    ("a value model (PPO vs REINFORCE)", "PPO, shared value", "REINFORCE"),
    ("a value model (PPO vs GRPO)", "PPO, shared value", "GRPO"),
    ("a separate value model vs a shared one", "PPO, separate value", "PPO, shared value"),
    ("online labels vs the same count offline", "PPO, online labels", "PPO, shared value"),
    ("a token-level RM on span marks vs a sequence RM", "token-level RM + PPO",
     "PPO, shared value"),
    ("span marks without RL (likelihood + unlikelihood) vs DPO",
     "likelihood + unlikelihood", "DPO"),
    ("RLHF at all: PPO vs the initial policy", "PPO, shared value", INITIAL),
)


@dataclasses.dataclass(frozen=True)
class Point:
    curve: str
    setting: str
    kl: float
    gold: tuple[float, ...]  # one per seed
    judge: tuple[float, ...] | None
    kl_seeds: tuple[float, ...] = ()
    gold_se: tuple[float, ...] | None = None  # per seed: the eval's standard error over queries


def read_floats(cell: str | None) -> tuple[float, ...]:
    """The values of a sweep CSV's `;`-joined per-seed cell (empty: none)."""
    return tuple(float(v) for v in (cell or "").split(";") if v != "")


PER_SEED = ("seeds", "runs", "x_seeds", "y_seeds", "y_se_seeds")  # `;`-joined, one per seed


def keep_seeds(row: dict, seeds) -> dict:
    """A sweep CSV row with its per-seed cells cut to `seeds` (None: all), in the
    row's order. ValueError when the row lacks one of them: a replication reads
    exactly the seeds it names."""
    if seeds is None:
        return row
    if not row.get("seeds"):
        raise ValueError(f"point {row.get('curve')!r} #{row.get('point')}: no 'seeds' column "
                         f"to choose seeds from")
    have = [int(v) for v in row["seeds"].split(";")]
    missing = sorted(set(seeds) - set(have))
    if missing:
        raise ValueError(f"point {row['curve']!r} #{row['point']}: no seed {missing} "
                         f"(seeds: {have})")
    keep = set(seeds)
    idx = [i for i, v in enumerate(have) if v in keep]
    out = dict(row)
    for col in PER_SEED:
        if row.get(col):
            vals = row[col].split(";")
            out[col] = ";".join(vals[i] for i in idx)
    out["num_seeds"] = str(len(idx))
    for axis in ("x", "y"):  # the row's summary columns, of the kept seeds
        v = np.asarray(read_floats(out.get(f"{axis}_seeds")), np.float64)
        if v.size:
            out.update({f"{axis}_mean": repr(float(v.mean())), f"{axis}_min": repr(float(v.min())),
                        f"{axis}_max": repr(float(v.max()))})
            if axis == "y":
                out["y_std"] = repr(float(v.std()))
    return out


def _setting(runs: str) -> str:
    return re.sub(r"-s\d+$", "", runs.split(";")[0])


def read_points(path: str, panel: str = GOLD_PANEL, seeds=None) -> list[Point]:
    """Every point of the gold panel, with the judge panel's value at the same point
    (`seeds`: only these seeds' values, e.g. a replication's; None: all)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "y_seeds" not in rows[0]:
        raise ValueError(f"{path}: not a sweep CSV (expected a y_seeds column)")
    rows = [keep_seeds(r, seeds) for r in rows]
    judge = {(r["curve"], r["point"]): read_floats(r["y_seeds"]) for r in rows
             if r["panel"] == JUDGE_PANEL}
    gold = [r for r in rows if r["panel"] == panel]
    stems = [(r["curve"], r.get("setting") or _setting(r["runs"])) for r in gold]
    out = []
    for r, (_, stem) in zip(gold, stems):
        # Points of one curve with one setting (snapshots of one run): numbered.
        name = stem if stems.count((r["curve"], stem)) == 1 else f"{stem} #{r['point']}"
        out.append(Point(r["curve"], name, float(r["x_mean"]), read_floats(r["y_seeds"]),
                         judge.get((r["curve"], r["point"])), read_floats(r["x_seeds"]),
                         read_floats(r.get("y_se_seeds")) or None))
    if not out:
        raise ValueError(f"{path}: no rows of panel {panel!r}; is it the study's CSV?")
    return out


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def _band(xs, digits: int = 3) -> str:
    """mean [min, max]."""
    if xs is None:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{_mean(xs):.{digits}f} [{min(xs):.{digits}f}, {max(xs):.{digits}f}]"


def _ci(xs, digits: int = 3) -> str:
    """mean [95% bootstrap interval]."""
    ci = stats.bootstrap_ci(xs)
    return f"{ci.mean:.{digits}f} [{ci.lo:.{digits}f}, {ci.hi:.{digits}f}]"


def curve_of(points: list[Point], prefix: str) -> list[Point]:
    """The points of the first curve whose label starts with `prefix`."""
    curves = [p.curve for p in points if p.curve.startswith(prefix)]
    if not curves:
        raise ValueError(f"no curve starts with {prefix!r}")
    return [p for p in points if p.curve == curves[0]]


def frontiers(points: list[Point], prefix: str) -> list[frontier.Frontier]:
    """Per seed, the curve's frontier, anchored at the initial policy's gold (KL 0)."""
    mine = curve_of(points, prefix)
    initial = [p for p in points if p.curve == INITIAL]
    anchor = initial[0].gold if initial and len(initial[0].gold) == len(mine[0].gold) else None
    return frontier.seed_frontiers([(p.kl_seeds or (p.kl,) * len(p.gold), p.gold)
                                    for p in mine], anchor)


def _at(points: list[Point], prefix: str, budget: float) -> np.ndarray:
    if prefix == INITIAL:  # KL 0 only: the gain of the other side at this budget
        return np.asarray(curve_of(points, INITIAL)[0].gold, np.float64)
    return frontier.at_budget(frontiers(points, prefix), budget)


def compare(points: list[Point], with_part: str, without: str,
            budgets=frontier.BUDGETS, test: str = "welch") -> list[dict]:
    """Per KL budget: each side's per-seed gold (its frontier read there), the
    difference of means and the test's p-value (NaN where a side did not reach
    the budget on every seed, or has fewer than 2 seeds)."""
    out = []
    for b in budgets:
        a, o = _at(points, with_part, b), _at(points, without, b)
        row = {"budget": b, "with": a, "without": o, "diff": float("nan"), "p": float("nan")}
        if np.all(np.isfinite(a)) and np.all(np.isfinite(o)):
            row["diff"] = float(a.mean() - o.mean())
            if min(len(a), len(o)) >= 2:
                row["p"] = stats.p_value(a, o, test)
        out.append(row)
    return out


def methods_table(points: list[Point]) -> str:
    lines = ["| method | setting | KL | gold mean [95% CI] | n seeds | eval s.e. | "
             "judge win rate mean [min, max] |", "|---|---|---|---|---|---|---|"]
    for p in points:
        se = "-" if p.gold_se is None else f"{_mean(p.gold_se):.3f}"
        lines.append(f"| {p.curve} | {p.setting} | {p.kl:.2f} | {_ci(p.gold)} | {len(p.gold)} | "
                     f"{se} | {_band(p.judge, 2)} |")
    return "\n".join(lines)


def parts_rows(points: list[Point], parts=PARTS, budgets=frontier.BUDGETS,
               test: str = "welch") -> list[dict]:
    """Every (part, budget) comparison with its Holm-adjusted p over all of them."""
    rows = []
    for what, with_part, without in parts:
        try:
            cmp = compare(points, with_part, without, budgets, test)
        except ValueError as e:  # a partial sweep: say which curve is missing
            rows.append({"part": what, "error": str(e)})
            continue
        rows.extend({"part": what, "with_name": with_part, "without_name": without, **c}
                    for c in cmp)
    tested = [r for r in rows if "error" not in r]
    for r, adj in zip(tested, stats.holm([r["p"] for r in tested])):
        r["p_holm"] = adj
    return rows


def _verdict(r: dict) -> str:
    if math.isnan(r["diff"]):
        return "not compared: a side did not reach this KL on every seed"
    if math.isnan(r["p"]):
        return "not tested: fewer than 2 seeds"
    if r["p_holm"] < ALPHA:
        return "higher" if r["diff"] > 0 else "lower"
    return f"no difference shown (adjusted p >= {ALPHA:g})"


def parts_table(points: list[Point], parts=PARTS, budgets=frontier.BUDGETS,
                test: str = "welch") -> str:
    lines = [f"| part | KL | with it: mean [95% CI] (n) | without it: mean [95% CI] (n) | "
             f"difference | {test} p | Holm p | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in parts_rows(points, parts, budgets, test):
        if "error" in r:
            lines.append(f"| {r['part']} | - | - | - | - | - | - | {r['error']} |")
            continue

        def side(v):
            return (f"{_ci(v)} ({len(v)})" if np.all(np.isfinite(v))
                    else f"not reached ({int(np.sum(np.isfinite(v)))} of {len(v)} seeds)")

        p = "-" if math.isnan(r["p"]) else f"{r['p']:.3g}"
        ph = "-" if math.isnan(r.get("p_holm", float("nan"))) else f"{r['p_holm']:.3g}"
        diff = "-" if math.isnan(r["diff"]) else f"{r['diff']:+.3f}"
        lines.append(f"| {r['part']} | {r['budget']:g} | {side(r['with'])} | "
                     f"{side(r['without'])} | {diff} | {p} | {ph} | {_verdict(r)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", help="the study's CSV (results/study/study.csv)")
    parser.add_argument("--test", default="welch", choices=stats.TESTS,
                        help="the two-sided test of each comparison (Holm-corrected)")
    parser.add_argument("--panel", default=GOLD_PANEL, help="the panel of gold against KL")
    parser.add_argument("--against", default=None,
                        help="compare every curve of the panel with the one whose label starts "
                             "with this (default: the study's PARTS)")
    parser.add_argument("--budgets", default=",".join(f"{b:g}" for b in frontier.BUDGETS),
                        help="KL budgets in nats, comma-separated")
    parser.add_argument("--seeds", default=None,
                        help="only these seeds, comma-separated (e.g. a replication's)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.csv):
        parser.error(f"{args.csv}: no such file")
    try:
        budgets = tuple(float(b) for b in args.budgets.split(","))
        seeds = None if args.seeds is None else [int(v) for v in args.seeds.split(",")]
        points = read_points(args.csv, args.panel, seeds)
        parts = PARTS if args.against is None else against(points, args.against)
    except ValueError as e:
        parser.error(str(e))
    print(methods_table(points))
    print()
    print(parts_table(points, parts, budgets, test=args.test))


def against(points: list[Point], prefix: str) -> tuple:
    """PARTS-like rows: every curve but the initial policy against curve `prefix`."""
    base = curve_of(points, prefix)[0].curve
    curves = list(dict.fromkeys(p.curve for p in points))
    return tuple((f"{c} vs {base}", c, base) for c in curves if c not in (base, INITIAL))


if __name__ == "__main__":
    main()

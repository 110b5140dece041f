"""The study's tables from its CSV: each method's points, and which parts mattered.

    python -m rlhf_jax.experiments.study_table results/study/study.csv

Reads the sweep CSV that `configs/sweeps/study.py` writes (one row per
point: x = KL, y = gold score or judge win rate, with every seed's value)
and prints two markdown tables:

- every method's points: its setting (the run name without the seed),
  KL, gold score and the held-out judge's win rate against the initial
  policy, each as mean [min, max] over seeds;
- `PARTS`: each part of the pipeline against a method without it, each
  side at its best setting by mean gold. "Beyond seed range" means every
  seed of one side scored above every seed of the other; with 3 seeds this
  is the only claim the study makes about a difference.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import re

GOLD_PANEL = "gold score vs KL"
JUDGE_PANEL = "held-out judge: win rate against the initial policy"

# (what the part is, a method with it, one without it): curve labels matched by prefix.
PARTS = (
    ("RL on a reward model vs learning from the labels directly", "PPO, shared value", "DPO"),
    ("RL vs reranking the initial policy's samples", "PPO, shared value", "best-of-N (RM"),
    ("RL vs fine-tuning on best-of-N samples", "PPO, shared value", "best-of-N then SFT"),
    ("a value model (PPO vs RLOO)", "PPO, shared value", "RLOO"),
    ("a value model (PPO vs REINFORCE)", "PPO, shared value", "REINFORCE"),
    ("a separate value model vs a shared one", "PPO, separate value", "PPO, shared value"),
    ("online labels vs the same count offline", "PPO, online labels", "PPO, shared value"),
    ("a token-level RM on span marks vs a sequence RM", "token-level RM + PPO",
     "PPO, shared value"),
    ("span marks without RL (likelihood + unlikelihood) vs DPO",
     "likelihood + unlikelihood", "DPO"),
    ("RLHF at all: PPO vs the initial policy", "PPO, shared value", "initial policy"),
)


@dataclasses.dataclass(frozen=True)
class Point:
    curve: str
    setting: str
    kl: float
    gold: tuple[float, ...]  # one per seed
    judge: tuple[float, ...] | None


def _floats(cell: str) -> tuple[float, ...]:
    return tuple(float(v) for v in cell.split(";") if v != "")


def _setting(runs: str) -> str:
    return re.sub(r"-s\d+$", "", runs.split(";")[0])


def read_points(path: str) -> list[Point]:
    """Every point of the gold panel, with the judge panel's value at the same point."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "y_seeds" not in rows[0]:
        raise ValueError(f"{path}: not a sweep CSV (expected a y_seeds column)")
    judge = {(r["curve"], r["point"]): _floats(r["y_seeds"]) for r in rows
             if r["panel"] == JUDGE_PANEL}
    gold = [r for r in rows if r["panel"] == GOLD_PANEL]
    stems = [(r["curve"], _setting(r["runs"])) for r in gold]
    # Points of one curve from the same runs (best-of-N's N): numbered.
    out = [Point(r["curve"], stem if stems.count((r["curve"], stem)) == 1
                 else f"{stem} #{r['point']}", float(r["x_mean"]), _floats(r["y_seeds"]),
                 judge.get((r["curve"], r["point"]))) for r, (_, stem) in zip(gold, stems)]
    if not out:
        raise ValueError(f"{path}: no rows of panel {GOLD_PANEL!r}; is it the study's CSV?")
    return out


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def _band(xs, digits: int = 3) -> str:
    if xs is None:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{_mean(xs):.{digits}f} [{min(xs):.{digits}f}, {max(xs):.{digits}f}]"


def best(points: list[Point], prefix: str) -> Point:
    """The point of the first curve whose label starts with `prefix` with the highest mean gold."""
    curves = [p.curve for p in points if p.curve.startswith(prefix)]
    if not curves:
        raise ValueError(f"no curve starts with {prefix!r}")
    mine = [p for p in points if p.curve == curves[0]]
    return max(mine, key=lambda p: _mean(p.gold))


def compare(points: list[Point], with_part: str, without: str) -> dict:
    """Best setting of each side: the gold difference of means and whether the seeds separate."""
    a, b = best(points, with_part), best(points, without)
    if min(len(a.gold), len(b.gold)) < 2:
        verdict = "one seed: no range"
    elif min(a.gold) > max(b.gold):
        verdict = "higher, beyond seed range"
    elif max(a.gold) < min(b.gold):
        verdict = "lower, beyond seed range"
    else:
        verdict = "within seed range"
    return {"with": a, "without": b, "diff": _mean(a.gold) - _mean(b.gold), "verdict": verdict}


def methods_table(points: list[Point]) -> str:
    lines = ["| method | setting | KL | gold mean [min, max] | judge win rate |",
             "|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p.curve} | {p.setting} | {p.kl:.2f} | {_band(p.gold)} | "
                     f"{_band(p.judge, 2)} |")
    return "\n".join(lines)


def parts_table(points: list[Point], parts=PARTS) -> str:
    lines = ["| part | with it (best setting) | without it (best setting) | gold difference |",
             "|---|---|---|---|"]
    for what, with_part, without in parts:
        try:
            c = compare(points, with_part, without)
        except ValueError as e:  # a partial sweep: say which curve is missing
            lines.append(f"| {what} | - | - | {e} |")
            continue
        a, b = c["with"], c["without"]
        lines.append(f"| {what} | {a.setting}: {_band(a.gold)} at KL {a.kl:.2f} | "
                     f"{b.setting}: {_band(b.gold)} at KL {b.kl:.2f} | "
                     f"{c['diff']:+.3f}, {c['verdict']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", help="the study's CSV (results/study/study.csv)")
    args = parser.parse_args(argv)
    points = read_points(args.csv)
    print(methods_table(points))
    print()
    print(parts_table(points))


if __name__ == "__main__":
    main()

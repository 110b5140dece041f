"""Gao et al. 2022's functional forms for gold reward against KL, fitted to a sweep CSV.

"Scaling Laws for Reward Model Overoptimization" writes the gold reward
gained over the initial policy, as a function of d = sqrt(KL(policy ||
initial)), as

    best-of-N:  R(d) = d (a - b d)
    RL:         R(d) = d (a - b log d)

Both are linear in (a, b), so `fit` solves them by least squares through the
origin (no gain at KL 0) and reports R^2 of the gain. `python -m rlhf_jax.experiments.gao
CSV` fits every best-of-N and PPO curve of a sweep CSV's gold panel (the
`bon_ppo_dpo` sweep's format: figure, panel, curve, point, x_mean, ...,
x_seeds, y_seeds, runs), using every seed's point, and writes `gao_fits.json`
beside the CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from typing import NamedTuple, Sequence

import numpy as np

from rlhf_jax.experiments.sweep import git_commit

FORMS = ("bon", "rl")


class Fit(NamedTuple):
    a: float
    b: float
    r2: float
    num_points: int


def fit(kl: Sequence[float], gain: Sequence[float], form: str) -> Fit:
    """Fits `gain = d (a - b d)` ("bon") or `d (a - b log d)` ("rl"), d = sqrt(KL)."""
    if form not in FORMS:
        raise ValueError(f"form={form!r}: expected one of {FORMS}")
    kl = np.asarray(kl, np.float64)
    y = np.asarray(gain, np.float64)
    if kl.shape != y.shape or kl.ndim != 1:
        raise ValueError(f"kl {kl.shape} and gain {y.shape} must be 1-D of one length")
    if np.any(kl < 0):
        raise ValueError("KL values must be >= 0")
    d = np.sqrt(kl)
    with np.errstate(divide="ignore", invalid="ignore"):
        second = d * d if form == "bon" else np.where(d > 0, d * np.log(d), 0.0)
    x = np.stack([d, -second], axis=1)
    if np.linalg.matrix_rank(x) < 2:
        raise ValueError(f"{form} fit needs points at >= 2 distinct non-zero KL values")
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ np.array([a, b])
    total = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - float(np.sum(residual ** 2) / total) if total > 0 else float("nan")
    return Fit(float(a), float(b), r2, int(len(y)))


def _floats(field: str) -> list[float]:
    return [float(v) for v in field.split(";") if v != ""]


def fits_from_csv(path: str, panel: str = "gold score vs KL") -> dict[str, dict]:
    """Fits per curve of `panel`: best-of-N curves ("best-of-N" in the name) with
    the bon form, PPO curves ("PPO") with the rl form. The gain is measured from
    the best-of-N curve's point at KL 0 (N = 1: the initial policy), per seed."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["panel"] == panel]
    if not rows:
        raise ValueError(f"{path}: no rows of panel {panel!r}")
    curves: dict[str, list[dict]] = {}
    for r in rows:
        curves.setdefault(r["curve"], []).append(r)
    bon_name = next((c for c in curves if "best-of-N" in c), None)
    if bon_name is None:
        raise ValueError(f"{path}: panel {panel!r} has no best-of-N curve (needed for the "
                         "initial policy's gold at KL 0)")
    zero = [r for r in curves[bon_name] if float(r["x_mean"]) == 0.0]
    if not zero:
        raise ValueError(f"{path}: the best-of-N curve has no point at KL 0 (N = 1)")
    base = float(np.mean(_floats(zero[0]["y_seeds"])))
    out = {}
    for name, pts in curves.items():
        form = "bon" if "best-of-N" in name else "rl" if "PPO" in name else None
        if form is None:
            continue
        kl = [x for r in pts for x in _floats(r["x_seeds"])]
        gain = [y - base for r in pts for y in _floats(r["y_seeds"])]
        out[name] = {"form": form, **fit(np.maximum(kl, 0.0), gain, form)._asdict(),
                     "initial_gold": base}
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m rlhf_jax.experiments.gao",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="a sweep CSV with a gold-vs-KL panel (bon_ppo_dpo.csv)")
    parser.add_argument("--panel", default="gold score vs KL")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.csv):
        parser.error(f"{args.csv}: no such file")
    try:
        fits = fits_from_csv(args.csv, args.panel)
    except ValueError as e:
        parser.error(str(e))
    for name, f in fits.items():
        print(f"{name}: {f['form']} a={f['a']:.4f} b={f['b']:.4f} R^2={f['r2']:.3f} "
              f"({f['num_points']} points)")
    out = os.path.join(os.path.dirname(os.path.abspath(args.csv)), "gao_fits.json")
    # The fits by curve, and (under "provenance") the code's commit and the command;
    # the CSV's own summary.json names the commit that produced the runs.
    record = {**fits, "provenance": {**git_commit(),
                                     "command": "python -m rlhf_jax.experiments.gao "
                                                f"{args.csv} --panel {args.panel!r}"}}
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    print(out)
    return fits


if __name__ == "__main__":
    main()

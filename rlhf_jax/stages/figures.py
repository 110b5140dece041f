"""Figures from a workdir's metrics.jsonl, as PNGs in `workdir/figures/`.

    python -m rlhf_jax.stages.figures WORKDIR [--reference NAME]

writes whichever of these the logged metrics allow (a figure whose metrics
are absent is skipped and the skip logged, so a partial workdir works):

    ppo_curves.png      `objective/score`, `objective/gold_score`,
                        `objective/kl`, `objective/kl_coef` against PPO
                        episodes (`ppo/episodes`) or, without it, step
    reward_vs_kl.png    RM score and gold score (one panel each) against KL
                        to the reference policy during PPO, dots coloured by
                        time: the trade-off of Ziegler et al. figures 2-4
    reward_model.png    `reward/accuracy`, `reward/val_accuracy` (and
                        `reward/loss` when logged) against step
    reference_NAME.png  with `--reference NAME`: the run's PPO curves
                        against published targets, by PPO update
                        (`rlhf_jax/experiments/references/NAME.csv`, or a CSV path)

Curves are grouped by the row's `stage`; a stage's repeated step (a resumed
run that was not truncated) keeps the last row. Plots use matplotlib's Agg
canvas directly, so importing this module leaves pyplot's backend alone.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlhf_jax.infra.metrics import METRICS_FILE, read_metrics

FIGURES_DIR = "figures"
EPISODES = "ppo/episodes"
# Published targets (data files beside the experiments that use them).
REFERENCES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "experiments", "references")

# (metric, axis label) for the PPO curve panels, in panel order.
PPO_CURVES = (
    ("objective/score", "reward model score"),
    ("objective/gold_score", "gold score"),
    ("objective/kl", "KL(policy || reference) [nats]"),
    ("objective/kl_coef", "KL coefficient (beta)"),
)
REWARD_VS_KL = (("objective/score", "reward model score"),
                ("objective/gold_score", "gold score"))
RM_ACCURACY = (("reward/accuracy", "train accuracy"),
               ("reward/val_accuracy", "validation accuracy"))
RM_LOSS = "reward/loss"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _series(rows: list[dict], name: str, x_key: str) -> dict[str, tuple[list, list]]:
    """stage -> (xs, ys) for rows holding `name` and `x_key`, sorted by x.

    A stage's repeated step keeps its last row (file order).
    """
    by_stage: dict[str, dict] = {}
    for row in rows:
        if _is_number(row.get(name)) and _is_number(row.get(x_key)):
            by_stage.setdefault(row.get("stage", "?"), {})[row.get("step")] = row
    out = {}
    for stage, by_step in by_stage.items():
        pairs = sorted((r[x_key], r[name]) for r in by_step.values())
        out[stage] = ([p[0] for p in pairs], [p[1] for p in pairs])
    return out


def _has(rows: list[dict], name: str) -> bool:
    return any(_is_number(r.get(name)) for r in rows)


def _x_axis(rows: list[dict], names: Sequence[str]) -> tuple[str, str]:
    """(row key, label) for the x axis: episodes if every plotted row has them."""
    plotted = [r for r in rows if any(_is_number(r.get(n)) for n in names)]
    if plotted and all(_is_number(r.get(EPISODES)) for r in plotted):
        return EPISODES, "episodes"
    return "step", "step"


def _plot(ax, series: dict[str, tuple[list, list]], label: str) -> None:
    many = len(series) > 1
    for stage, (xs, ys) in sorted(series.items()):
        # Markers keep one-point series (a final evaluation) visible.
        ax.plot(xs, ys, marker="o", markersize=3 if len(xs) > 1 else 6,
                label=f"{label} ({stage})" if many else label)


def _save(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _ppo_curves(rows: list[dict], path: str, title: str) -> str | None:
    panels = [(n, label) for n, label in PPO_CURVES if _has(rows, n)]
    if not panels:
        return None
    x_key, x_label = _x_axis(rows, [n for n, _ in panels])
    cols = min(2, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.5 * cols, 3.6 * nrows))
    for i, (name, label) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        _plot(ax, _series(rows, name, x_key), label)
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:  # the axis label already names one curve
            ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"PPO: {title}")
    return _save(fig, path)


def _smooth(xs: list, ys: list, window: int) -> tuple[list, list]:
    """Block means of `window` consecutive points (time order kept)."""
    if window <= 1 or len(xs) < 2 * window:
        return xs, ys
    n = len(xs) // window * window
    bx = [sum(xs[i:i + window]) / window for i in range(0, n, window)]
    by = [sum(ys[i:i + window]) / window for i in range(0, n, window)]
    return bx, by


def _trajectory(rows: list[dict], name: str) -> tuple[list, list, list]:
    """(kl, value, episodes-or-step) of the PPO stage's rows, in time order."""
    kl = "objective/kl"
    by_step = {}
    for r in rows:
        if r.get("stage") == "ppo" and _is_number(r.get(name)) and _is_number(r.get(kl)):
            by_step[r["step"]] = r
    ordered = [by_step[k] for k in sorted(by_step)]
    t = [r.get(EPISODES, r["step"]) for r in ordered]
    return [r[kl] for r in ordered], [r[name] for r in ordered], t


def _reward_vs_kl(rows: list[dict], path: str, title: str) -> str | None:
    """One panel per reward (RM score, gold): each update a dot coloured by
    training time, and the trajectory's block means joined in time order, so
    the trade-off reads left to right even where KL goes back and forth."""
    present = [(n, label) for n, label in REWARD_VS_KL if _trajectory(rows, n)[0]]
    if not present:
        return None
    fig = Figure(figsize=(5.5 * len(present), 4.2))
    for i, (name, label) in enumerate(present):
        ax = fig.add_subplot(1, len(present), i + 1)
        kl, y, t = _trajectory(rows, name)
        dots = ax.scatter(kl, y, c=t, cmap="viridis", s=12, alpha=0.6)
        bx, by = _smooth(kl, y, max(1, len(kl) // 15))
        ax.plot(bx, by, color="black", lw=1.5, marker="o", markersize=3,
                label="mean of consecutive updates")
        ax.set_xlabel("KL(policy || reference) [nats]")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs KL")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        fig.colorbar(dots, ax=ax).set_label(
            "episodes" if all(_is_number(r.get(EPISODES)) for r in rows
                              if r.get("stage") == "ppo" and name in r) else "step")
    fig.suptitle(f"Reward vs KL during PPO: {title}")
    return _save(fig, path)


def _reward_model(rows: list[dict], path: str, title: str) -> str | None:
    """Train accuracy (raw, faint, and a moving average), validation accuracy
    as points (it is measured only a few times), the loss beside."""
    accuracy = [(n, label) for n, label in RM_ACCURACY if _has(rows, n)]
    with_loss = _has(rows, RM_LOSS)
    if not accuracy and not with_loss:
        return None
    panels = int(bool(accuracy)) + int(with_loss)
    fig = Figure(figsize=(5.5 * panels, 3.8))
    i = 1
    if accuracy:
        ax = fig.add_subplot(1, panels, i)
        for name, label in accuracy:
            for stage, (xs, ys) in sorted(_series(rows, name, "step").items()):
                if len(xs) <= 3:  # validation: a few measurements, not a curve
                    ax.plot(xs, ys, ls="none", marker="D", markersize=7, label=label)
                    continue
                ax.plot(xs, ys, alpha=0.25, lw=1)
                sx, sy = _smooth(xs, ys, max(1, len(xs) // 20))
                ax.plot(sx, sy, lw=2, label=f"{label} (mean of consecutive logs)")
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.set_title("reward model accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        i += 1
    if with_loss:
        ax = fig.add_subplot(1, panels, i)
        _plot(ax, _series(rows, RM_LOSS, "step"), "train loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(RM_LOSS)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"Reward model: {title}")
    return _save(fig, path)


def load_reference(name: str) -> tuple[str, list[dict], list[str]]:
    """`(name, rows, source lines)` of a reference CSV: `rlhf_jax/experiments/references/NAME.csv`
    or a path. Rows: `metric`, `update` (a PPO update index), `value`, `note`."""
    path = name if os.path.isfile(name) else os.path.join(REFERENCES_DIR, f"{name}.csv")
    if not os.path.isfile(path):
        known = sorted(f[:-4] for f in os.listdir(REFERENCES_DIR) if f.endswith(".csv"))
        raise ValueError(f"--reference {name!r}: no such file, nor one of {known}")
    with open(path) as f:
        lines = f.read().splitlines()
    source = [line.lstrip("# ").rstrip() for line in lines if line.startswith("#")]
    rows = []
    for i, row in enumerate(csv.DictReader(line for line in lines if not line.startswith("#"))):
        try:
            rows.append({"metric": row["metric"], "update": float(row["update"]),
                         "value": float(row["value"]), "note": row.get("note") or ""})
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: data row {i + 1}: needs metric, update and value "
                             f"numbers, got {row}") from None
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return os.path.splitext(os.path.basename(path))[0], rows, source


def _reference_figure(rows: list[dict], reference: tuple, path: str, title: str) -> str | None:
    """The run's PPO curves (by update) with the reference's points on the same panels."""
    name, ref_rows, _ = reference
    metrics = [m for m, _ in PPO_CURVES if any(r["metric"] == m for r in ref_rows)]
    if not metrics:
        return None
    fig = Figure(figsize=(5.5 * len(metrics), 3.8))
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        run = _series([r for r in rows if r.get("stage") == "ppo"], metric, "step").get("ppo")
        if run is not None:
            ax.plot(run[0], run[1], marker="o", markersize=2, label="this run")
        pts = sorted((r["update"], r["value"]) for r in ref_rows if r["metric"] == metric)
        # A few summary targets are markers only: a line between them would draw a
        # curve the source never gave.
        sparse = len(pts) < 20
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="none" if sparse else "-",
                marker="D" if sparse else None, color="black", label=f"{name} (reference)")
        ax.set_xlabel("PPO update")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"{title} vs {name}")
    return _save(fig, path)


def make_figures(workdir: str, reference: str | None = None) -> list[str]:
    """Writes the figures the workdir's metrics allow; returns their paths.

    A missing or empty metrics.jsonl gives no figures (logged), as does any
    figure whose metrics were not logged. `reference` (a name in
    `rlhf_jax/experiments/references/` or a CSV path) adds `reference_NAME.png`.
    """
    ref = load_reference(reference) if reference else None  # a bad name fails first
    rows = read_metrics(workdir)
    if not rows:
        logging.warning("figures: no metrics in %s; no figures written",
                        os.path.join(workdir, METRICS_FILE))
        return []
    out_dir = os.path.join(workdir, FIGURES_DIR)
    os.makedirs(out_dir, exist_ok=True)
    title = os.path.basename(os.path.normpath(workdir))
    makers = (
        ("ppo_curves.png", _ppo_curves, "objective/score, gold_score, kl, kl_coef"),
        ("reward_vs_kl.png", _reward_vs_kl, "objective/kl with objective/score or gold_score"),
        ("reward_model.png", _reward_model, "reward/accuracy, val_accuracy, loss"),
    )
    paths = []
    for filename, maker, needs in makers:
        path = maker(rows, os.path.join(out_dir, filename), title)
        if path is None:
            logging.info("figures: skipping %s: none of %s logged", filename, needs)
        else:
            paths.append(path)
    if ref is not None:
        path = _reference_figure(rows, ref, os.path.join(out_dir, f"reference_{ref[0]}.png"),
                                 title)
        if path is None:
            logging.info("figures: the reference %s has none of the PPO metrics", ref[0])
        else:
            paths.append(path)
            for line in ref[2]:
                logging.info("reference: %s", line)
    return paths


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Command line: `python -m rlhf_jax.stages.figures WORKDIR`."""
    parser = argparse.ArgumentParser(
        prog="python -m rlhf_jax.stages.figures",
        description="Plot a run's metrics.jsonl into WORKDIR/figures/*.png.")
    parser.add_argument("workdir", help="a run's workdir (holds metrics.jsonl)")
    parser.add_argument("--reference", default=None,
                        help="published targets to draw the PPO curves against: a name in "
                             "rlhf_jax/experiments/references/ (lhp_sentiment, "
                             "lhp_descriptiveness) or a CSV path (metric,update,value)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not os.path.isdir(args.workdir):
        parser.error(f"workdir {args.workdir} is not a directory")
    try:
        paths = make_figures(args.workdir, reference=args.reference)
    except ValueError as e:
        parser.error(str(e))
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()

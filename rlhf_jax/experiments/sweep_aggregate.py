"""Sweep aggregation: each figure's curves as seed mean and min-max band (PNG and
CSV with every plotted number) and the top-samples texts. See `sweep`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

import numpy as np

from rlhf_jax.experiments.sweep import Curve, Figure, Panel, Points, RUNS_DIR, Sweep, TopSamples

# --------------------------------------------------------------------------
# Aggregation.


@dataclasses.dataclass
class CurveData:
    """One aggregated curve: per point the seed mean, min and max of x and y."""

    label: str
    line: bool
    x_XxZ: np.ndarray  # points x seeds
    y_XxZ: np.ndarray
    runs_XxZ: list[tuple[str, ...]]


def _aggregate_points(pts: Points, runs_dir: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in pts.runs:
        x, y = pts.fn(os.path.join(runs_dir, r))
        xs.append(np.asarray(x, np.float64))
        ys.append(np.asarray(y, np.float64))
    n = min(len(x) for x in xs)  # a seed that logged fewer points bounds the curve
    return (np.stack([x[:n] for x in xs], 1), np.stack([y[:n] for y in ys], 1))


def curve_data(curve: Curve, runs_dir: str) -> CurveData:
    xs, ys, runs = [], [], []
    for pts in curve.points:
        x_XxZ, y_XxZ = _aggregate_points(pts, runs_dir)
        xs.append(x_XxZ)
        ys.append(y_XxZ)
        runs.extend([pts.runs] * len(x_XxZ))
    seeds = {x.shape[1] for x in xs}
    if len(seeds) != 1:
        raise ValueError(f"curve {curve.label!r}: its points have different seed counts {seeds}")
    return CurveData(curve.label, curve.line, np.concatenate(xs), np.concatenate(ys), runs)


CSV_FIELDS = ("figure", "panel", "curve", "point", "x_mean", "x_min", "x_max", "y_mean",
              "y_min", "y_max", "y_std", "num_seeds", "x_seeds", "y_seeds", "runs")


def _csv_rows(fig: Figure, panel: Panel, data: CurveData) -> list[dict]:
    rows = []
    for p in range(len(data.x_XxZ)):
        x, y = data.x_XxZ[p], data.y_XxZ[p]
        rows.append({
            "figure": fig.name, "panel": panel.title, "curve": data.label, "point": p,
            "x_mean": _g(x.mean()), "x_min": _g(x.min()), "x_max": _g(x.max()),
            "y_mean": _g(y.mean()), "y_min": _g(y.min()), "y_max": _g(y.max()),
            "y_std": _g(y.std()), "num_seeds": len(y),
            "x_seeds": ";".join(_g(v) for v in x), "y_seeds": ";".join(_g(v) for v in y),
            "runs": ";".join(data.runs_XxZ[p])})
    return rows


def _g(v) -> str:
    return f"{float(v):.6g}"


def draw_figure(fig: Figure, runs_dir: str, out_dir: str) -> list[str]:
    """Writes `<name>.png` and `<name>.csv` into `out_dir`; returns both paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    cols = min(len(fig.panels), 3)
    nrows = math.ceil(len(fig.panels) / cols)
    mfig = MplFigure(figsize=(5.2 * cols, 3.9 * nrows))
    rows = []
    for i, panel in enumerate(fig.panels):
        ax = mfig.add_subplot(nrows, cols, i + 1)
        xs_seen = set()
        for j, curve in enumerate(panel.curves):
            data = curve_data(curve, runs_dir)
            rows.extend(_csv_rows(fig, panel, data))
            x, y = data.x_XxZ.mean(1), data.y_XxZ.mean(1)
            xs_seen.update(float(v) for v in x)
            lo, hi = data.y_XxZ.min(1), data.y_XxZ.max(1)
            color = f"C{j % 10}"
            label = f"{data.label} (n={data.y_XxZ.shape[1]})"
            if data.line:
                # Points from several settings join in x order; one run group's
                # points (a training trajectory) keep their logged order.
                order = (np.argsort(x, kind="stable") if len(curve.points) > 1
                         else np.arange(len(x)))
                x, y, lo, hi = x[order], y[order], lo[order], hi[order]
                ax.plot(x, y, "-o", color=color, markersize=3, label=label)
                if np.all(np.diff(x) >= 0):
                    ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
                else:  # x turns back (KL along training): a band would fold over
                    ax.errorbar(x, y, yerr=np.stack([y - lo, hi - y]), fmt="none",
                                color=color, alpha=0.35)
            else:
                ax.errorbar(x, y, yerr=np.stack([y - lo, hi - y]), fmt="o", color=color,
                            capsize=3, label=label)
        ax.set_title(panel.title, fontsize="medium")
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.set_xscale(panel.xscale)
        if panel.xscale == "log":  # the grid's own values as plain tick labels
            ticks = sorted(xs_seen)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="x-small")
    mfig.suptitle(f"{fig.title}\n(mean over seeds; band / bars: min-max across seeds)",
                  fontsize="medium")
    FigureCanvasAgg(mfig)
    mfig.tight_layout()
    png = os.path.join(out_dir, f"{fig.name}.png")
    mfig.savefig(png, dpi=100)
    path = os.path.join(out_dir, f"{fig.name}.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return [png, path]


def write_top_samples(text: TopSamples, runs_dir: str, out_dir: str) -> str:
    """`<name>.txt`: the `k` highest-`key` samples across `text.runs`, with their scores."""
    found = []
    for r in text.runs:
        path = os.path.join(runs_dir, r, "samples.jsonl")
        if not os.path.exists(path):
            raise ValueError(f"{path}: no samples to read for text {text.name!r}")
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                row = json.loads(line)
                if row.get("stage") != text.stage or text.key not in row:
                    continue
                if text.policy is not None and row.get("policy") != text.policy:
                    continue
                found.append((r, row))
    found.sort(key=lambda t: -float(t[1][text.key]))
    lines = [text.title or f"Top {text.k} {text.stage} samples by {text.key}", ""]
    for r, row in found[:text.k]:
        nums = " | ".join(f"{k} {float(row[k]):.3f}" for k in ("score", "gold_score", "kl")
                          if k in row)
        lines.append(f"[{r} step {row.get('step')}] {nums}")
        lines.append(f"  query:    {row.get('query', '')!r}")
        lines.append(f"  response: {row.get('response', '')!r}")
        lines.append("")
    out = os.path.join(out_dir, f"{text.name}.txt")
    with open(out, "w") as f:
        f.write("\n".join(lines))
    return out


def aggregate(sweep: Sweep, workdir: str) -> list[str]:
    """Every figure (PNG + CSV) and text of `sweep` into `workdir/<sweep>/`; their paths."""
    runs_dir = os.path.join(workdir, RUNS_DIR)
    out_dir = os.path.join(workdir, sweep.name)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for fig in sweep.figures:
        paths.extend(draw_figure(fig, runs_dir, out_dir))
    for text in sweep.texts:
        paths.append(write_top_samples(text, runs_dir, out_dir))
    return paths

"""Sweep aggregation: each figure's curves as seed mean and min-max band (PNG and
CSV with every plotted number) and the top-samples texts. See `sweep`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import textwrap

import numpy as np

from rlhf_jax.experiments import gao
from rlhf_jax.experiments.sweep import (REPO, RUN_RECORD, RUNS_DIR, Curve, Figure, Panel, Points,
                                        Sweep, TopSamples, git_commit)

# The code that turns runs into CSVs and tables: its hash is in every provenance record.
AGGREGATION_CODE = ("sweep.py", "sweep_aggregate.py", "gao.py", "stats.py", "frontier.py",
                    "summary_table.py")

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
    se_XxZ: np.ndarray | None = None  # y's evaluation standard error (NaN: not measured)
    settings_X: list[str] = dataclasses.field(default_factory=list)
    sources_X: list[str] = dataclasses.field(default_factory=list)
    group_X: np.ndarray | None = None  # which of the curve's `Points` each point came from


def _aggregate_points(pts: Points, runs_dir: str):
    xs, ys, ses = [], [], []
    for r in pts.runs:
        out = pts.fn(os.path.join(runs_dir, r))
        x, y = (np.asarray(v, np.float64) for v in out[:2])
        xs.append(x)
        ys.append(y)
        ses.append(np.asarray(out[2], np.float64) if len(out) > 2 else np.full(len(y), np.nan))
    n = min(len(x) for x in xs)  # a seed that logged fewer points bounds the curve
    return tuple(np.stack([v[:n] for v in vs], 1) for vs in (xs, ys, ses))


def curve_data(curve: Curve, runs_dir: str) -> CurveData:
    xs, ys, ses, runs, settings, sources, groups = [], [], [], [], [], [], []
    for g, pts in enumerate(curve.points):
        x_XxZ, y_XxZ, se_XxZ = _aggregate_points(pts, runs_dir)
        groups.extend([g] * len(x_XxZ))
        xs.append(x_XxZ)
        ys.append(y_XxZ)
        ses.append(se_XxZ)
        runs.extend([pts.runs] * len(x_XxZ))
        settings.extend([pts.setting] * len(x_XxZ))
        sources.extend([getattr(pts.fn, "source", "")] * len(x_XxZ))
    seeds = {x.shape[1] for x in xs}
    if len(seeds) != 1:
        raise ValueError(f"curve {curve.label!r}: its points have different seed counts {seeds}")
    return CurveData(curve.label, curve.line, np.concatenate(xs), np.concatenate(ys), runs,
                     np.concatenate(ses), settings, sources, np.asarray(groups))


# Fixed columns; then one `set:<field>` column per config override that
# differs between the figure's runs (the settings, from each run's
# sweep_run.json), seeds excluded: they have their own column.
CSV_FIELDS = ("figure", "panel", "curve", "point", "setting", "x_mean", "x_min", "x_max",
              "y_mean", "y_min", "y_max", "y_std", "num_seeds", "seeds", "x_seeds", "y_seeds",
              "y_se_seeds", "runs", "source")
SETTING_PREFIX = "set:"


def run_overrides(runs_dir: str, name: str) -> dict:
    """The overrides run `name` was started with (its sweep_run.json), {} if none."""
    path = os.path.join(runs_dir, name, RUN_RECORD)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f).get("overrides", {})


def _cell(v) -> str:
    if isinstance(v, dict) and "ref" in v:  # a Ref: the run and path it names
        return "/".join(x for x in v["ref"] if x)
    if isinstance(v, (list, tuple)):
        return " ".join(_cell(x) for x in v)
    return str(v)


def _csv_rows(fig: Figure, panel: Panel, data: CurveData, overrides: dict) -> list[dict]:
    rows = []
    for p in range(len(data.x_XxZ)):
        x, y, se = data.x_XxZ[p], data.y_XxZ[p], data.se_XxZ[p]
        runs = data.runs_XxZ[p]
        row = {
            "figure": fig.name, "panel": panel.title, "curve": data.label, "point": p,
            "setting": data.settings_X[p],
            "x_mean": _g(x.mean()), "x_min": _g(x.min()), "x_max": _g(x.max()),
            "y_mean": _g(y.mean()), "y_min": _g(y.min()), "y_max": _g(y.max()),
            "y_std": _g(y.std()), "num_seeds": len(y),
            "seeds": ";".join(_cell(overrides.get(r, {}).get("seed", "")) for r in runs),
            "x_seeds": ";".join(_g(v) for v in x), "y_seeds": ";".join(_g(v) for v in y),
            "y_se_seeds": "" if np.all(np.isnan(se)) else ";".join(_g(v) for v in se),
            "runs": ";".join(runs), "source": data.sources_X[p]}
        fields = sorted({k for r in runs for k in overrides.get(r, {})} - {"seed"})
        for k in fields:
            values = [_cell(overrides.get(r, {}).get(k, "")) for r in runs]
            row[SETTING_PREFIX + k] = values[0] if len(set(values)) == 1 else ";".join(values)
        rows.append(row)
    return rows


def _varying(rows: list[dict]) -> list[str]:
    """The `set:` columns whose value is not the same on every row."""
    keys = sorted({k for r in rows for k in r if k.startswith(SETTING_PREFIX)})
    return [k for k in keys if len({r.get(k, "") for r in rows}) > 1]


def _g(v) -> str:
    return f"{float(v):.6g}"


SQRT_TICKS = (0, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


def _sqrt_scale(ax, xmin: float, xmax: float) -> None:
    """An x axis linear in sqrt(x) (signed: a KL estimate can dip below 0), ticked at
    the KL budgets (and finer or coarser values), at least 1/7 of the axis apart."""
    ax.set_xscale("function", functions=(lambda v: np.sign(v) * np.sqrt(np.abs(v)),
                                         lambda v: np.sign(v) * v * v))
    span = math.sqrt(max(xmax, 1e-6))
    ticks = [0.0]
    for t in SQRT_TICKS[1:]:
        if t <= xmax * 1.1 and math.sqrt(t) - math.sqrt(ticks[-1]) >= span / 7:
            ticks.append(t)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    # A margin in sqrt space on both sides, so no point sits on the frame.
    lo = -(math.sqrt(max(-xmin, 0.0)) + 0.04 * span) ** 2
    ax.set_xlim(lo, (1.05 * span) ** 2)


def _draw_fit(ax, curve: Curve, data: CurveData, base: float | None, color: str) -> str | None:
    """Gao et al.'s `curve.fit` form through every seed's points, drawn dashed; its label."""
    if curve.fit is None or base is None:
        return None
    kl, y = np.maximum(data.x_XxZ.ravel(), 0.0), data.y_XxZ.ravel() - base
    try:
        f = gao.fit(kl, y, curve.fit)
    except ValueError:  # too few distinct KL values to fit two parameters
        return None
    d = np.linspace(0.0, np.sqrt(kl.max()), 100)
    second = d * d if curve.fit == "bon" else np.where(d > 0, d * np.log(np.maximum(d, 1e-12)),
                                                       0.0)
    ax.plot(d * d, base + f.a * d - f.b * second, "--", color=color, lw=1.2, alpha=0.8)
    return (f"Gao fit d(a - b {'d' if curve.fit == 'bon' else 'log d'}): a={f.a:.2f}, "
            f"b={f.b:.2f}, R^2={f.r2:.2f}")


def _join_settings(texts: list[str]) -> str:
    """["beta=0.5", "beta=0.2"] -> "beta=0.5, 0.2"; other mixes joined with " / "."""
    names = {t.split("=", 1)[0] for t in texts}
    if len(names) == 1 and all("=" in t for t in texts):
        return f"{names.pop()}=" + ", ".join(t.split("=", 1)[1] for t in texts)
    return " / ".join(texts)


def _place_settings(ax, notes, dpi: float) -> None:
    """Labels each point with its setting without covering another label: one
    curve's points that land within 10 px share one label ("beta=0.5, 0.2"), and a
    label that would overlap one already placed moves below or above its point.
    `notes`: (x, y, setting, color) in data coordinates; the axes' limits and
    layout must be final (called after tight_layout)."""
    ax.get_xlim(), ax.get_ylim()  # settle the autoscaled limits
    merged: list[list] = []  # [x, y, texts, color, display xy]
    for x, y, text, color in notes:
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        at = ax.transData.transform((x, y))
        near = next((m for m in merged if m[3] == color and np.hypot(*(m[4] - at)) < 10),
                    None)
        if near is not None:
            near[2].append(text)
        else:
            merged.append([x, y, [text], color, at])
    px = dpi / 72.0  # points to pixels
    placed: list[tuple[float, float, float, float]] = []
    for x, y, texts, color, at in merged:
        text = _join_settings(texts)
        w, h = 3.9 * len(text) * px, 8.0 * px  # x-small text, roughly
        for dy in (4, -12, 14, -22, 24, -32, 34):
            box = (at[0] + 4 * px, at[1] + dy * px, w, h)
            if not any(box[0] < b[0] + b[2] and b[0] < box[0] + box[2] and
                       box[1] < b[1] + b[3] and b[1] < box[1] + box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, dy),
                    fontsize="x-small", color=color)


def draw_figure(fig: Figure, runs_dir: str, out_dir: str) -> list[str]:
    """Writes `<name>.png` and `<name>.csv` into `out_dir`; returns both paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    cols = min(len(fig.panels), 2)
    nrows = math.ceil(len(fig.panels) / cols)
    # Each panel's legend sits to its right, outside the data.
    mfig = MplFigure(figsize=(8.4 * cols, 4.3 * nrows + 1.2))
    names = {r for panel in fig.panels for c in panel.curves for pts in c.points for r in pts.runs}
    overrides = {r: run_overrides(runs_dir, r) for r in names}
    rows, sources, seeds = [], set(), set()
    notes = []  # (ax, x, y, setting, color): placed once the layout is final
    for i, panel in enumerate(fig.panels):
        ax = mfig.add_subplot(nrows, cols, i + 1)
        datas = [curve_data(curve, runs_dir) for curve in panel.curves]
        base = next((float(d.y_XxZ.mean()) for d in datas if d.label == panel.fit_base), None)
        xs_seen, xs_all = set(), [0.0]
        for j, (curve, data) in enumerate(zip(panel.curves, datas)):
            rows.extend(_csv_rows(fig, panel, data, overrides))
            sources.update(getattr(pts.fn, "smoothing", "") for pts in curve.points)
            seeds.add(data.y_XxZ.shape[1])
            x, y = data.x_XxZ.mean(1), data.y_XxZ.mean(1)
            xs_seen.update(float(v) for v in x)
            xs_all.extend(float(v) for v in data.x_XxZ.ravel() if np.isfinite(v))
            lo, hi = data.y_XxZ.min(1), data.y_XxZ.max(1)
            # Ten colours: the eleventh curve on reuses the first's with square
            # markers and dash-dot lines, so no two curves look alike.
            color, mk, ls = f"C{j % 10}", "os^"[j // 10 % 3], ("-", "-.", ":")[j // 10 % 3]
            label = f"{data.label} (n={data.y_XxZ.shape[1]})"
            # Points from several settings join in x order; one run group's
            # points (a training trajectory) keep their logged order.
            order = (np.argsort(x, kind="stable") if len(curve.points) > 1
                     else np.arange(len(x)))
            if curve.per_seed:
                for z in range(data.y_XxZ.shape[1]):
                    ax.plot(data.x_XxZ[order, z], data.y_XxZ[order, z], ls, color=color,
                            lw=1, alpha=0.7, label=f"{data.label}, each seed" if z == 0 else None)
            elif curve.trajectories:
                for g in np.unique(data.group_X):
                    i = np.flatnonzero(data.group_X == g)
                    ax.plot(x[i], y[i], ls, marker=mk, color=color, markersize=3, lw=1,
                            label=label if g == 0 else None)
                    ax.errorbar(x[i], y[i], yerr=np.stack([y[i] - lo[i], hi[i] - y[i]]),
                                fmt="none", color=color, alpha=0.5, capsize=2)
            elif data.line:
                x, y, lo, hi = x[order], y[order], lo[order], hi[order]
                ax.plot(x, y, ls, marker=mk, color=color, markersize=3, label=label)
                if len(x) >= 3 and np.all(np.diff(x) >= 0):
                    ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
                else:  # few points, or x turns back (KL along training): bars, not a band
                    ax.errorbar(x, y, yerr=np.stack([y - lo, hi - y]), fmt="none",
                                color=color, alpha=0.5, capsize=2)
            else:
                ax.errorbar(x, y, yerr=np.stack([y - lo, hi - y]), fmt=mk, color=color,
                            capsize=3, label=label)
            notes.extend((ax, float(data.x_XxZ[p].mean()), float(data.y_XxZ[p].mean()),
                          setting, color) for p, setting in enumerate(data.settings_X) if setting)
            fit = _draw_fit(ax, curve, data, base, color)
            if fit:
                ax.plot([], [], "--", color=color, label=fit)
        if panel.hline is not None:
            ax.axhline(panel.hline[0], color="0.4", ls=":", lw=1, label=panel.hline[1])
        ax.set_title(panel.title, fontsize="medium")
        ax.set_xlabel(panel.xlabel + (" (sqrt scale)" if panel.xscale == "sqrt" else ""))
        ax.set_ylabel(panel.ylabel)
        if panel.xscale == "sqrt":
            _sqrt_scale(ax, min(xs_all), max(xs_all))
        else:
            ax.set_xscale(panel.xscale)
        if panel.xticks:
            ax.set_xticks([x for x, _ in panel.xticks], [t for _, t in panel.xticks])
            ax.set_xlim(min(x for x, _ in panel.xticks) - 0.5,
                        max(x for x, _ in panel.xticks) + 0.5)
        elif panel.xscale == "log":  # the grid's own values as plain tick labels
            ticks = sorted(xs_seen)
            ax.set_xticks(ticks, [f"{t / 1e6:.2g}M" if t >= 1e4 else f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="x-small",
                  borderaxespad=0.0)
    smoothing = "; ".join(sorted(s for s in sources if s))
    n_seeds = '/'.join(str(n) for n in sorted(seeds))
    if all(c.per_seed for panel in fig.panels for c in panel.curves):
        caption = f"One line per seed ({n_seeds} seeds)."
    else:
        caption = (f"Mean over {n_seeds} seeds (n per curve in the legend); band or bars: "
                   f"min-max across seeds.")
    caption += f" Points: {smoothing}." if smoothing else ""
    if fig.caption:
        caption = fig.caption + " " + caption
    mfig.suptitle(fig.title, fontsize="medium")
    mfig.text(0.01, 0.01, _wrap(caption, 40 * cols + 60), fontsize="x-small", va="bottom")
    FigureCanvasAgg(mfig)
    # Room for the title above and the caption below the panels.
    mfig.tight_layout(rect=(0, 0.12 / nrows, 1, 1 - 0.05 / nrows))
    for ax in {id(n[0]): n[0] for n in notes}.values():
        _place_settings(ax, [n[1:] for n in notes if n[0] is ax], dpi=100)
    png = os.path.join(out_dir, f"{fig.name}.png")
    mfig.savefig(png, dpi=100)
    path = os.path.join(out_dir, f"{fig.name}.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS + tuple(_varying(rows)),
                           extrasaction="ignore", restval="")
        w.writeheader()
        w.writerows(rows)
    return [png, path]


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width * 2))


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


def aggregation_code_hash() -> str:
    """sha256 over the aggregation modules' sources (`AGGREGATION_CODE`), first 16 hex."""
    h = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in AGGREGATION_CODE:
        with open(os.path.join(here, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


def provenance(sweep: Sweep, workdir: str, command: str | None) -> dict:
    """What produced a sweep's outputs: commit, command, seeds, smoothing, code."""
    runs_dir = os.path.join(workdir, RUNS_DIR)
    seeds = sorted({run.overrides["seed"] for run in sweep.runs if "seed" in run.overrides})
    smoothing = {}
    for fig in sweep.figures:
        smoothing[fig.name] = sorted({
            f"{getattr(pts.fn, 'source', '?')} (window {getattr(pts.fn, 'window', 1)})"
            for panel in fig.panels for c in panel.curves for pts in c.points})
    return {"sweep": sweep.name, "runlocal": sweep.runlocal, **git_commit(),
            "command": command, "seeds": seeds, "smoothing": smoothing,
            "aggregation_code": aggregation_code_hash(),
            "runs": {run.name: run_overrides(runs_dir, run.name) for run in sweep.runs}}


def aggregate(sweep: Sweep, workdir: str, command: str | None = None) -> list[str]:
    """Every figure (PNG + CSV + `<name>.csv.json`, the provenance record) and text of
    `sweep` into `workdir/<sweep>/`; their paths."""
    runs_dir = os.path.join(workdir, RUNS_DIR)
    out_dir = os.path.join(workdir, sweep.name)
    os.makedirs(out_dir, exist_ok=True)
    record = provenance(sweep, workdir, command)
    paths = []
    for fig in sweep.figures:
        png, path = draw_figure(fig, runs_dir, out_dir)
        side = path + ".json"
        with open(side, "w") as f:
            json.dump({"csv": os.path.basename(path), **record}, f, indent=1, sort_keys=True)
        paths.extend([png, path, side])
    for text in sweep.texts:
        paths.append(write_top_samples(text, runs_dir, out_dir))
    for table in sweep.tables:
        paths.extend(table(out_dir))
    return paths

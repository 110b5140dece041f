"""Seeded sweeps: many pipeline runs, each in its own workdir, then one aggregation.

    python launch.py --sweep=configs/sweeps/NAME.py[:runlocal] --workdir=DIR

A sweep file defines `get_sweep(arg) -> Sweep`. A `Sweep` names its runs
(config file + switches + field overrides; seeds are runs that differ in
`seed`) and its figures. Runs live in `DIR/runs/<run name>` and are shared by
every sweep launched on the same DIR, so a run that several sweeps need (the
pretrained model, a reward model) is trained once. A run may depend on
another through a `Ref` (a path inside that run's workdir) in an override or
in `copies` (files copied into its own workdir before it starts, e.g. a
trained reward model); dependencies run first.

A run whose stages all left their markers (`stages/<stage>.json`) is skipped;
an unfinished one is resumed by `pipeline.run` from its checkpoints. Every
run's config is validated before the first one starts, and a run directory
whose recorded overrides differ from the sweep's is an error (a clear one-line
ValueError), so two different experiments never share a directory. Two
launches on one DIR share the work: a run is locked (`.lock`, the owner's
pid) while it runs, and a launch moves on to runs nobody holds.

Aggregation: every figure is panels of curves; a curve is a list of `Points`,
each computed on the runs of all seeds. Points are aligned by index across
seeds; the plot shows the seed mean with a min-max band (or error bars where a
curve is markers only), and `DIR/<sweep>/<figure>.csv` holds every plotted
number (means, band edges and the per-seed values). Texts (`TopSamples`) dump
selected logged samples. The PNGs, CSVs, texts and `summary.json` (run times)
are copied to `results/<sweep>/` unless the sweep is a runlocal one.

Modules: this one holds the spec a sweep file builds (`Sweep`, `Run`, `Ref`,
`grid`, the figure classes and the extractors); `sweep_run` validates and runs
the members; `sweep_aggregate` draws the figures and texts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from rlhf_jax.infra.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS_DIR = "runs"
RUN_RECORD = "sweep_run.json"
LOCK_FILE = ".lock"
LOCK_POLL_S = 10.0


# --------------------------------------------------------------------------
# The spec.


@dataclasses.dataclass(frozen=True)
class Ref:
    """`path` inside run `run`'s workdir; makes `run` a prerequisite."""

    run: str
    path: str = ""


@dataclasses.dataclass(frozen=True)
class Run:
    """One pipeline run: `config` (repo-relative file[:switches]) plus `overrides`.

    `overrides` maps dotted config fields to values (a `Ref` becomes an
    absolute path); `copies` maps paths inside this run's workdir to `Ref`s
    copied there before the run starts (files or directories).
    """

    name: str
    config: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    copies: Mapping[str, Ref] = dataclasses.field(default_factory=dict)

    def needs(self) -> list[str]:
        refs = [v for v in self.overrides.values() if isinstance(v, Ref)]
        return sorted({r.run for r in refs + list(self.copies.values())})


# An extractor: run workdir -> (x_X, y_X) or (x_X, y_X, y_se_X), the points one
# seed contributes (y_se: the evaluation's standard error over its queries).
# The extractors below carry a `source` attribute: what they read, and how it
# is smoothed; the CSV records it per point.
Extractor = Callable[[str], tuple[np.ndarray, ...]]


@dataclasses.dataclass(frozen=True)
class Points:
    """Points from one group of runs (one per seed), aggregated index by index.

    `setting`: the setting these points stand for ("beta=0.3", "N=16"), in
    the CSV and written beside the points in the figure; "" for none.
    """

    runs: tuple[str, ...]
    fn: Extractor
    setting: str = ""


@dataclasses.dataclass(frozen=True)
class Curve:
    label: str
    points: tuple[Points, ...]
    # True: a line with a min-max band (points of several `Points` joined in
    # x order, one `Points`' in logged order); False: markers with min-max
    # error bars (settings with no order between them).
    line: bool = True
    # Gao et al.'s form fitted to every seed's points and drawn: "bon" or "rl"
    # (`rlhf_jax.experiments.gao`), the gain over the panel's `fit_base` curve.
    fit: str | None = None
    # Each seed's own line instead of the seed mean (numbers whose scale
    # differs by seed, e.g. each seed's own reward model's score).
    per_seed: bool = False
    # Each `Points`' points joined in logged order, one line per `Points` (the
    # snapshots of runs at several settings), with min-max bars.
    trajectories: bool = False


@dataclasses.dataclass(frozen=True)
class Panel:
    title: str
    xlabel: str
    ylabel: str
    curves: tuple[Curve, ...]
    # "linear", "log" (ticks at the plotted values) or "sqrt" (KL spanning decades:
    # sqrt(KL) is the axis of Gao et al.'s forms, and keeps KL 0).
    xscale: str = "linear"
    fit_base: str = "initial policy"  # the curve whose mean y is the fits' zero gain
    # Named x positions ((x, label), ...) for categories on the x axis.
    xticks: tuple[tuple[float, str], ...] = ()
    # A labelled horizontal line ((y, label)), e.g. 0.5: as good as the references.
    hline: tuple[float, str] | None = None


@dataclasses.dataclass(frozen=True)
class Figure:
    name: str  # file stem of the PNG and CSV
    title: str
    panels: tuple[Panel, ...]
    # Printed under the figure: what its numbers are (e.g. what "gold score"
    # means). The aggregation adds the seeds, the band and the smoothing.
    caption: str = ""


@dataclasses.dataclass(frozen=True)
class TopSamples:
    """The `k` logged samples of `runs` with the highest `key`, as text.

    Samples come from each run's samples.jsonl rows of `stage` (PPO logs a
    few per log step; eval logs a few per policy); `policy` filters eval rows.
    """

    name: str
    runs: tuple[str, ...]
    stage: str = "ppo"
    key: str = "score"
    k: int = 12
    policy: str | None = None
    title: str = ""


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What a sweep file's `get_sweep(arg)` returns. `runs` lists every run the
    figures need, prerequisites included (a run named twice must be equal)."""

    name: str  # the output folder: DIR/<name>, results/<name>
    runs: tuple[Run, ...]
    figures: tuple[Figure, ...]
    texts: tuple[TopSamples, ...] = ()
    runlocal: bool = False  # a CI-scale variant: never copied to results/
    # Called with the output folder once the figures' CSVs are written (e.g. the
    # tests over seeds, `summary_table.fig1_verdicts`); each returns the paths it wrote.
    tables: tuple[Callable[[str], list[str]], ...] = ()


def seeds_of(name: str, seeds: Sequence[int]) -> tuple[str, ...]:
    """The run names `grid` gives one setting across `seeds`."""
    return tuple(f"{name}-s{s}" for s in seeds)


def grid(name: str, config: str, seeds: Sequence[int], overrides: Mapping[str, Any] = None,
         copies: Callable[[int], Mapping[str, Ref]] | Mapping[str, Ref] | None = None
         ) -> list[Run]:
    """One `Run` per seed: `name-s<seed>`, `seed=<seed>` plus `overrides`.

    `copies(seed)` (or a fixed mapping) gives the copied artifacts, e.g. the
    reward model of the same seed.
    """
    out = []
    for s in seeds:
        ov = {**(overrides or {}), "seed": s}
        cp = copies(s) if callable(copies) else (copies or {})
        out.append(Run(name=f"{name}-s{s}", config=config, overrides=ov, copies=cp))
    return out


# --------------------------------------------------------------------------
# Extractors (used by sweep files).


def _read_rows(workdir: str, stage: str) -> list[dict]:
    by_step: dict[int, dict] = {}
    for row in read_metrics(workdir, stage):
        by_step.setdefault(row["step"], {}).update(row)  # a step's rows merge; last wins
    return [by_step[s] for s in sorted(by_step)]


def metric(stage: str, x: str, y: str, first: int | None = None, window: int = 1) -> Extractor:
    """Logged rows of `stage` holding both `x` and `y`, by step.

    `first` keeps the first rows only; `window` > 1 averages consecutive,
    non-overlapping blocks of that many rows (a per-update batch mean of 32
    episodes is noisy), dropping a last partial block.
    """

    def fn(workdir):
        rows = [r for r in _read_rows(workdir, stage) if x in r and y in r]
        rows = rows[:first] if first else rows
        if len(rows) < window or not rows:
            raise ValueError(f"{workdir}: fewer than {max(window, 1)} {stage} rows with both "
                             f"{x!r} and {y!r}")
        x_N = np.asarray([r[x] for r in rows], np.float64)
        y_N = np.asarray([r[y] for r in rows], np.float64)
        n = len(rows) // window * window
        return (x_N[:n].reshape(-1, window).mean(1), y_N[:n].reshape(-1, window).mean(1))

    fn.source = (f"{stage} log: {x} vs {y}, " + ("each logged row" if window <= 1 else
                 f"means of blocks of {window} consecutive logged rows"))
    fn.smoothing = (f"training log ({stage}), " + ("each logged update" if window <= 1 else
                    f"means of blocks of {window} consecutive logged updates"))
    fn.window = window
    return fn


def last_metric(stage: str, y: str, x: float) -> Extractor:
    """One point: (`x`, the last logged `y` of `stage`)."""

    def fn(workdir):
        rows = [r for r in _read_rows(workdir, stage) if y in r]
        if not rows:
            raise ValueError(f"{workdir}: no {stage} row with {y!r}")
        return np.asarray([x], np.float64), np.asarray([rows[-1][y]], np.float64)

    fn.source = f"{stage} log: last {y}"
    fn.smoothing = f"the last {stage} log row"
    fn.window = 1
    return fn


def _eval_json(workdir: str) -> tuple[str, dict]:
    path = os.path.join(workdir, "eval.json")
    with open(path) as f:
        return path, json.load(f)


def _eval_rows(path: str, res: dict, policies: Sequence[str], x: str, y: str):
    for p in policies:
        if p not in res or x not in res[p] or y not in res[p]:
            raise ValueError(f"{path}: no {p!r} row with {x!r} and {y!r}")
    se = [res[p].get(f"{y}_se", float("nan")) for p in policies]
    return (np.asarray([res[p][x] for p in policies], np.float64),
            np.asarray([res[p][y] for p in policies], np.float64), np.asarray(se, np.float64))


def eval_point(policy: str, x: str, y: str) -> Extractor:
    """One point from eval.json: (`x`, `y`, y's standard error over queries) of
    `policy` (initial, ppo, dpo, best_of_N)."""

    def fn(workdir):
        return _eval_rows(*_eval_json(workdir), [policy], x, y)

    fn.source = f"eval.json: {policy} {x} vs {y}"
    fn.smoothing = "held-out evaluation, no smoothing"
    fn.window = 1
    return fn


def snapshot_updates(res: dict, prefix: str = "ppo") -> list[int]:
    """The PPO updates eval.json holds snapshots of (`ppo@<update>`), ascending."""
    return sorted(int(k.split("@", 1)[1]) for k in res if k.startswith(prefix + "@"))


def eval_trajectory(x: str, y: str, prefix: str = "ppo") -> Extractor:
    """One point per evaluated PPO snapshot (`ppo@<update>`, `eval.ppo_snapshots`)
    in update order, then the final policy (`ppo`): the run's held-out frontier."""

    def fn(workdir):
        path, res = _eval_json(workdir)
        names = [f"{prefix}@{u}" for u in snapshot_updates(res, prefix)] + [prefix]
        return _eval_rows(path, res, names, x, y)

    fn.source = f"eval.json: {prefix}@<update> snapshots then {prefix}, {x} vs {y}"
    fn.smoothing = "held-out evaluation of saved policies, no smoothing"
    fn.window = 1
    return fn


def git_commit() -> dict:
    """{"commit": HEAD or None, "dirty": uncommitted changes outside results/}."""
    def git(*args):
        out = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}

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
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rlhf_jax import compile_cache
from rlhf_jax.files import write_json_atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


# An extractor: run workdir -> (x_X, y_X), the points one seed contributes.
Extractor = Callable[[str], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Points:
    """Points from one group of runs (one per seed), aggregated index by index."""

    runs: tuple[str, ...]
    fn: Extractor


@dataclasses.dataclass(frozen=True)
class Curve:
    label: str
    points: tuple[Points, ...]
    # True: a line with a min-max band (points of several `Points` joined in
    # x order, one `Points`' in logged order); False: markers with min-max
    # error bars (settings with no order between them).
    line: bool = True


@dataclasses.dataclass(frozen=True)
class Panel:
    title: str
    xlabel: str
    ylabel: str
    curves: tuple[Curve, ...]
    xscale: str = "linear"


@dataclasses.dataclass(frozen=True)
class Figure:
    name: str  # file stem of the PNG and CSV
    title: str
    panels: tuple[Panel, ...]


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
    from rlhf_jax.metrics import read_metrics

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

    return fn


def last_metric(stage: str, y: str, x: float) -> Extractor:
    """One point: (`x`, the last logged `y` of `stage`)."""

    def fn(workdir):
        rows = [r for r in _read_rows(workdir, stage) if y in r]
        if not rows:
            raise ValueError(f"{workdir}: no {stage} row with {y!r}")
        return np.asarray([x], np.float64), np.asarray([rows[-1][y]], np.float64)

    return fn


def eval_point(policy: str, x: str, y: str) -> Extractor:
    """One point from eval.json: (`x`, `y`) of `policy` (initial, ppo, dpo, best_of_N)."""

    def fn(workdir):
        path = os.path.join(workdir, "eval.json")
        with open(path) as f:
            res = json.load(f)
        if policy not in res or x not in res[policy] or y not in res[policy]:
            raise ValueError(f"{path}: no {policy!r} row with {x!r} and {y!r}")
        return (np.asarray([res[policy][x]], np.float64),
                np.asarray([res[policy][y]], np.float64))

    return fn


# --------------------------------------------------------------------------
# Loading and validation.


def load_sweep(spec: str) -> Sweep:
    """`path/to/sweep.py[:arg]` -> the file's `get_sweep(arg)`; ValueError naming the file."""
    path, _, arg = spec.partition(":")
    full = path if os.path.isabs(path) else os.path.join(REPO, path)
    if not os.path.isfile(full):
        raise ValueError(f"--sweep={spec}: no such file {full}")
    if REPO not in sys.path:  # sweep files import configs.sweeps.* helpers
        sys.path.insert(0, REPO)
    mod_name = "sweep_" + os.path.splitext(os.path.basename(full))[0]
    module_spec = importlib.util.spec_from_file_location(mod_name, full)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{full}: defines no get_sweep(arg); not a sweep file")
    sweep = module.get_sweep(arg or None)
    if not isinstance(sweep, Sweep):
        raise ValueError(f"{full}: get_sweep returned {type(sweep).__name__}, not a Sweep")
    return sweep


def _load_config(config: str):
    path, _, arg = config.partition(":")
    full = path if os.path.isabs(path) else os.path.join(REPO, path)
    if not os.path.isfile(full):
        raise ValueError(f"config file {full} does not exist")
    module_spec = importlib.util.spec_from_file_location(
        "config_" + os.path.splitext(os.path.basename(full))[0], full)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _resolved_overrides(run: Run, runs_dir: str) -> dict[str, Any]:
    out = {}
    for field, value in run.overrides.items():
        if isinstance(value, Ref):
            value = os.path.abspath(os.path.join(runs_dir, value.run, value.path))
        out[field] = value
    return out


def build_config(run: Run, runs_dir: str):
    """The run's locked ConfigDict; ValueError naming the run and field on a bad override."""
    try:
        cfg = _load_config(run.config)
    except ValueError as e:
        raise ValueError(f"run {run.name!r}: {e}") from None
    cfg.lock()
    for field, value in _resolved_overrides(run, runs_dir).items():
        *groups, leaf = field.split(".")
        node = cfg
        try:
            for g in groups:
                node = node[g]
            if leaf not in node:
                raise KeyError(leaf)
            if isinstance(value, list):
                value = tuple(value)
            with node.ignore_type():  # None <-> int fields (e.g. task.pad_token)
                node[leaf] = value
        except (KeyError, AttributeError, TypeError):
            raise ValueError(f"run {run.name!r}: override {field}={value!r}: the config "
                             f"{run.config!r} has no such field") from None
    return cfg


def _order(sweep: Sweep) -> list[Run]:
    """Runs with every dependency before its dependants; ValueError on a bad reference."""
    by_name: dict[str, Run] = {}
    for run in sweep.runs:
        if run.name in by_name and by_name[run.name] != run:
            raise ValueError(f"sweep {sweep.name!r}: two different runs are named {run.name!r}")
        by_name[run.name] = run
    order, state = [], {}

    def visit(name, chain):
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            raise ValueError(f"sweep {sweep.name!r}: circular dependency {' -> '.join(chain)}")
        if name not in by_name:
            raise ValueError(f"sweep {sweep.name!r}: run {chain[-2]!r} refers to run "
                             f"{name!r}, which the sweep does not define")
        state[name] = "active"
        for dep in by_name[name].needs():
            visit(dep, chain + [dep])
        state[name] = "done"
        order.append(by_name[name])

    for name in by_name:
        visit(name, [name])
    for fig in sweep.figures:
        for panel in fig.panels:
            for curve in panel.curves:
                for pts in curve.points:
                    for r in pts.runs:
                        if r not in by_name:
                            raise ValueError(f"sweep {sweep.name!r}: figure {fig.name!r} "
                                             f"plots run {r!r}, which the sweep does not define")
    for text in sweep.texts:
        for r in text.runs:
            if r not in by_name:
                raise ValueError(f"sweep {sweep.name!r}: text {text.name!r} reads run {r!r}, "
                                 "which the sweep does not define")
    return order


def _record(run: Run) -> dict:
    """What identifies a run's experiment: config, switches, overrides, copies.

    A `Ref` is kept as `{"ref": [run, path]}`, not as a path, so a workdir
    that moves (or is reached through a link) still matches its records.
    """
    ov = {k: ({"ref": [v.run, v.path]} if isinstance(v, Ref)
              else list(v) if isinstance(v, tuple) else v) for k, v in run.overrides.items()}
    return {"config": run.config, "overrides": ov,
            "copies": {k: [v.run, v.path] for k, v in sorted(run.copies.items())}}


def _check_record(run: Run, runs_dir: str) -> None:
    path = os.path.join(runs_dir, run.name, RUN_RECORD)
    if not os.path.exists(path):
        return
    with open(path) as f:
        stored = json.load(f)
    want = json.loads(json.dumps(_record(run)))
    if stored != want:
        diff = sorted(k for k in set(stored.get("overrides", {})) | set(want["overrides"])
                      if stored.get("overrides", {}).get(k) != want["overrides"].get(k))
        what = f"overrides {diff}" if diff else "config or copies"
        raise ValueError(f"{path}: run {run.name!r} was started with different {what} than "
                         "this sweep asks for; use another --workdir or remove that run")


def is_finished(run_dir: str, cfg) -> bool:
    from rlhf_jax import config_lib

    return all(os.path.exists(os.path.join(run_dir, "stages", f"{s}.json"))
               for s in config_lib.stage_list(cfg))


def validate(sweep: Sweep, workdir: str, num_devices: int) -> list[tuple[Run, Any]]:
    """Every run's config built and resolved, in dependency order, before any work."""
    from rlhf_jax import config_lib

    runs_dir = os.path.join(workdir, RUNS_DIR)
    out = []
    for run in _order(sweep):
        cfg = build_config(run, runs_dir)
        try:
            config_lib.resolve(cfg, cfg.parallel.num_devices or num_devices)
        except ValueError as e:
            raise ValueError(f"run {run.name!r}: {e}") from None
        _check_record(run, runs_dir)
        out.append((run, cfg))
    return out


# --------------------------------------------------------------------------
# Running.


def _copy_inputs(run: Run, runs_dir: str, run_dir: str) -> None:
    for dest, ref in run.copies.items():
        target = os.path.join(run_dir, dest)
        if os.path.exists(target):
            continue
        src = os.path.join(runs_dir, ref.run, ref.path)
        if not os.path.exists(src):
            raise ValueError(f"run {run.name!r}: copies {dest!r} from {src}, which run "
                             f"{ref.run!r} did not produce")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # Copy to a temporary name, then rename: a kill never leaves half a model.
        tmp = target + ".copying"
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
        if os.path.isdir(src):
            shutil.copytree(src, tmp)
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, target)


def run_sweep(sweep: Sweep, workdir: str, *, results_dir: str | None = None,
              dry_run: bool = False, members: bool = True,
              log: Callable[[str], None] = print) -> dict | None:
    """Runs (or resumes) every run of `sweep` under `workdir`, then aggregates.

    `members`: runs whose configs differ only in the seed or numeric PPO/KL
    hyperparameters (`rlhf_jax.members.MEMBER_FIELDS`) train their PPO stage
    together, as one vmapped program; the results equal separate runs to float
    tolerance. False runs every run alone.

    Returns the summary written to `workdir/<sweep>/summary.json`: per run
    whether it was skipped and its seconds. Outputs are copied to
    `results_dir/<sweep>/` when given and the sweep is not a runlocal one.
    `dry_run` validates every run and prints the plan (order, finished or not).
    """
    import jax

    from rlhf_jax import config_lib, members as members_lib, pipeline

    t0 = time.time()
    runs_dir = os.path.join(workdir, RUNS_DIR)
    plan = validate(sweep, workdir, jax.device_count())
    if dry_run:
        for run, cfg in plan:
            done = is_finished(os.path.join(runs_dir, run.name), cfg)
            log(f"{run.name:<28} {'finished' if done else 'to run':<9} {run.config} "
                f"stages={cfg.stages} " + " ".join(
                    f"{k}={v}" for k, v in _resolved_overrides(run, runs_dir).items()
                    if not isinstance(run.overrides[k], Ref)))
        log(f"{len(plan)} runs; {len(sweep.figures)} figures")
        return None
    compile_cache.enable()  # unless the launch configured it: runs share compiled programs
    os.makedirs(runs_dir, exist_ok=True)
    cfgs = {run.name: cfg for run, cfg in plan}
    pending = list(plan)
    summary_runs = {}
    while pending:
        # The first pending run whose dependencies are finished and that no
        # other launch on this workdir holds (two launches share the work).
        for run, cfg in pending:
            run_dir = os.path.join(runs_dir, run.name)
            prefix = f"[sweep {sweep.name} {len(summary_runs) + 1}/{len(plan)}] {run.name}"
            if is_finished(run_dir, cfg):
                log(f"{prefix}: finished; skipping")
                summary_runs[run.name] = {"skipped": True, "seconds": _run_seconds(run_dir)}
                break
            if not _ready(run, cfgs, runs_dir):
                continue
            lock = _try_lock(run_dir)
            if lock is None:
                continue
            if is_finished(run_dir, cfg):  # another launch finished it just now
                os.remove(lock)
                continue
            group = [(run, cfg, lock)]
            if members and members_lib.groupable(cfg):
                group += _lock_members(run, cfg, pending, cfgs, runs_dir)
            names = ", ".join(r.name for r, _, _ in group)
            try:
                for r, _, _ in group:
                    r_dir = os.path.join(runs_dir, r.name)
                    with open(os.path.join(r_dir, RUN_RECORD), "w") as f:
                        json.dump(_record(r), f, indent=2)
                    _copy_inputs(r, runs_dir, r_dir)
                ts = time.time()
                if len(group) > 1:
                    # The stages before PPO run by run, PPO for all members in one
                    # program (rlhf_jax.members), the rest run by run again.
                    log(f"{prefix}: running in {run_dir}; PPO as one program with "
                        + ", ".join(r.name for r, _, _ in group[1:]))
                    dirs = [os.path.join(runs_dir, r.name) for r, _, _ in group]
                    for (_, c, _), d in zip(group, dirs):
                        pipeline.run(c, d, until="ppo")
                    members_lib.run_ppo_members([c for _, c, _ in group], dirs)
                else:
                    log(f"{prefix}: running in {run_dir}")
                for r, c, _ in group:
                    pipeline.run(c, os.path.join(runs_dir, r.name))  # resumes from checkpoints
                jax.clear_caches()  # runs compile fresh closures; the disk cache serves them
            finally:
                for _, _, lk in group:
                    os.remove(lk)
            for r, _, _ in group:
                summary_runs[r.name] = {"skipped": False,
                                        "seconds": _run_seconds(os.path.join(runs_dir, r.name))}
            log(f"{prefix}: done in {time.time() - ts:.0f}s" + (f" ({names})" if len(group) > 1
                                                                 else ""))
            break
        else:
            log(f"[sweep {sweep.name}] waiting for runs another launch holds: "
                + ", ".join(r.name for r, _ in pending[:4]))
            time.sleep(LOCK_POLL_S)
            continue
        pending = [(r, c) for r, c in pending if r.name not in summary_runs]
    out_dir = os.path.join(workdir, sweep.name)
    outputs = aggregate(sweep, workdir)
    summary = {"sweep": sweep.name, "runlocal": sweep.runlocal,
               "wall_seconds_this_launch": round(time.time() - t0, 1),
               "run_seconds_total": round(sum(r["seconds"] or 0 for r in summary_runs.values()), 1),
               "runs": summary_runs, "outputs": [os.path.basename(p) for p in outputs]}
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    if results_dir and not sweep.runlocal:
        dest = os.path.join(results_dir, sweep.name)
        os.makedirs(dest, exist_ok=True)
        for p in outputs + [os.path.join(out_dir, "summary.json")]:
            shutil.copyfile(p, os.path.join(dest, os.path.basename(p)))
        log(f"[sweep {sweep.name}] copied {len(outputs) + 1} files to {dest}")
    log(f"[sweep {sweep.name}] done in {time.time() - t0:.0f}s; outputs in {out_dir}")
    return summary


def _ready(run: Run, cfgs: dict, runs_dir: str) -> bool:
    return all(is_finished(os.path.join(runs_dir, d), cfgs[d]) for d in run.needs())


def _lock_members(run: Run, cfg, pending, cfgs: dict, runs_dir: str) -> list:
    """Other ready, unfinished runs whose configs differ from `run`'s only in
    member fields (`rlhf_jax.members`), locked: `[(run, cfg, lock)]`."""
    from rlhf_jax import members as members_lib

    key = members_lib.shared_config_key(cfg)
    out = []
    for other, other_cfg in pending:
        other_dir = os.path.join(runs_dir, other.name)
        if (other is run or members_lib.shared_config_key(other_cfg) != key
                or is_finished(other_dir, other_cfg) or not _ready(other, cfgs, runs_dir)):
            continue
        lock = _try_lock(other_dir)
        if lock is not None:
            out.append((other, other_cfg, lock))
    return out


def _try_lock(run_dir: str) -> str | None:
    """Creates `run_dir/.lock` holding this pid; None if a live process holds it.

    A lock left by a dead process (a killed launch) is taken over.
    """
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                return None  # being written by its owner right now
            if pid == os.getpid() or _alive(pid):
                return None
            os.remove(path)  # stale
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return path
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def _run_seconds(run_dir: str) -> float | None:
    """The run's stage seconds summed from its markers (what it cost when it ran)."""
    stages = os.path.join(run_dir, "stages")
    total = 0.0
    for name in os.listdir(stages):
        with open(os.path.join(stages, name)) as f:
            total += float(json.load(f).get("seconds", 0.0))
    return round(total, 1)


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

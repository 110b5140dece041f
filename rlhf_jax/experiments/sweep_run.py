"""Sweep members: load a sweep file, validate every member's config, run them in
dependency order (skipping finished runs, resuming unfinished ones, a lock per
run so two launches share the work), then aggregate. See `sweep`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import sys
import time
from typing import Any, Callable

from rlhf_jax import config_check, config_lib, members as members_lib, pipeline
from rlhf_jax.experiments.sweep import (LOCK_FILE, LOCK_POLL_S, Ref, REPO, Run, RUN_RECORD,
                                        RUNS_DIR, Sweep)
from rlhf_jax.experiments.sweep import git_commit
from rlhf_jax.experiments.sweep_aggregate import aggregate, provenance
from rlhf_jax.infra import compile_cache
from rlhf_jax.infra.files import write_json_atomic

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


def is_finished(run_dir: str, cfg, until: str | None = None) -> bool:
    """Whether every stage of the run (before stage `until`, when given) left its marker."""
    stages = config_lib.stage_list(cfg)
    if until is not None:
        stages = stages[:stages.index(until)]
    return all(os.path.exists(os.path.join(run_dir, "stages", f"{s}.json")) for s in stages)


def validate(sweep: Sweep, workdir: str, num_devices: int) -> list[tuple[Run, Any]]:
    """Every run's config built and resolved, in dependency order, before any work."""
    runs_dir = os.path.join(workdir, RUNS_DIR)
    out = []
    for run in _order(sweep):
        cfg = build_config(run, runs_dir)
        try:
            config_check.resolve(cfg, cfg.parallel.num_devices or num_devices)
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


START_RECORD = "starts.jsonl"


def _record_start(run_dir: str) -> None:
    """Appends the commit (and whether the tree was dirty) a run (re)starts at."""
    rec = {**git_commit(), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(os.path.join(run_dir, START_RECORD), "a") as f:
        f.write(json.dumps(rec) + "\n")


def run_commits(run_dir: str) -> list[str]:
    """The commits a run started or resumed at (`+dirty` when the tree had
    uncommitted changes); ["unknown"] for a run trained before they were recorded."""
    path = os.path.join(run_dir, START_RECORD)
    if not os.path.exists(path):
        return ["unknown"]
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return sorted({f"{r['commit']}{'+dirty' if r.get('dirty') else ''}" for r in recs}) or [
        "unknown"]


def run_sweep(sweep: Sweep, workdir: str, *, results_dir: str | None = None,
              dry_run: bool = False, members: bool = True,
              log: Callable[[str], None] = print) -> dict | None:
    """Runs (or resumes) every run of `sweep` under `workdir`, then aggregates.

    `members`: runs whose configs differ only in the seed or numeric PPO/KL/reward
    hyperparameters (`rlhf_jax.members.MEMBER_FIELDS`) train their reward-model
    and PPO stages together, each as one vmapped program; the results equal
    separate runs to float tolerance. False runs every run alone.

    Returns the summary written to `workdir/<sweep>/summary.json`: per run
    whether it was skipped and its seconds. Outputs are copied to
    `results_dir/<sweep>/` when given and the sweep is not a runlocal one.
    `dry_run` validates every run and prints the plan (order, finished or not).
    """
    import jax

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
                    _record_start(r_dir)
                    _copy_inputs(r, runs_dir, r_dir)
                ts = time.time()
                if len(group) > 1:
                    # The other stages run by run; the reward and PPO stages for all
                    # members in one program each (rlhf_jax.members).
                    shared = members_lib.group_stages(cfg)
                    log(f"{prefix}: running in {run_dir}; {' and '.join(shared)} as one "
                        "program with " + ", ".join(r.name for r, _, _ in group[1:]))
                    dirs = [os.path.join(runs_dir, r.name) for r, _, _ in group]
                    for stage in shared:
                        for (_, c, _), d in zip(group, dirs):
                            # Opening a run costs seconds: only when a stage is left to run.
                            if not is_finished(d, c, until=stage):
                                pipeline.run(c, d, until=stage)
                        members_lib.run_members(stage, [c for _, c, _ in group], dirs)
                else:
                    log(f"{prefix}: running in {run_dir}")
                for r, c, _ in group:
                    r_dir = os.path.join(runs_dir, r.name)
                    if not is_finished(r_dir, c):  # a member may have no stage left
                        pipeline.run(c, r_dir)  # resumes from checkpoints
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
    for name, r in summary_runs.items():
        r["commits"] = run_commits(os.path.join(runs_dir, name))
    out_dir = os.path.join(workdir, sweep.name)
    command = " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv)
    outputs = aggregate(sweep, workdir, command)
    prov = provenance(sweep, workdir, command)
    summary = {"sweep": sweep.name, "runlocal": sweep.runlocal,
               **{k: prov[k] for k in ("commit", "dirty", "command", "seeds", "smoothing",
                                       "aggregation_code")},
               # The code each run trained at (a resumed run may list several).
               "run_commits": sorted({c for r in summary_runs.values() for c in r["commits"]}),
               "wall_seconds_this_launch": round(time.time() - t0, 1),
               "run_seconds_total": round(sum(r["seconds"] or 0 for r in summary_runs.values()), 1),
               "runs": {name: {**r, "overrides": prov["runs"].get(name, {})}
                        for name, r in summary_runs.items()},
               "outputs": [os.path.basename(p) for p in outputs]}
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

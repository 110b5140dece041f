"""Resume under random kills: `kill -9` a run at N moments over every stage, then compare.

    python scripts/kill_campaign.py --kills 20 --seed 0 --workdir runs/kill_campaign
    python scripts/kill_campaign.py --plan pretrain:early,reward:save,ppo:export \
        --reference runs/ref --set ppo.log_every=1 ...   # the CI test (tests/test_pipeline.py)

It runs `python launch.py --config=CONFIG [--config.KEY=VALUE ...]` once
uninterrupted (`WORKDIR/reference`, or `--reference DIR`), then again in
`WORKDIR/killed`, killing it with SIGKILL at N moments and relaunching the same
command after each, and finally lets it finish. Each moment is one of
(stage, kind), spread over every stage of the config:

    time     a uniformly random moment of the stage: for a stage that logs
             `<stage> step k/n`, once k/n passes a uniform fraction (at its first
             step line if a resume starts past it); for the others, a uniform
             fraction of its duration in the reference run (less compilation),
             counted from `[stage] starting`; the moment its done marker appears
             if the stage ends first
    early    right after the stage logs its first row (`<stage> step ...`), before
             its first checkpoint is committed: the relaunch starts it over
    save     while an Orbax checkpoint save is in flight (a
             `*.orbax-checkpoint-tmp*` directory in `checkpoints/<stage>/`)
    export   while the stage exports its model (`models/<name>/` exists, the
             stage's done marker does not yet)
    write    while the stage writes its outputs before its done marker (label
             files; eval's metrics row, samples and eval.json; figures/)

With N below the number of (stage, kind) pairs, N of them are drawn at random
(`--seed`); above it, the rest are `time` moments drawn with the stages'
durations as weights. A moment whose event never comes (the stage finished
first) is reported as missed and the run goes on to the next one.

The killed run must end with exit code 0 and with `metrics.jsonl` and
`samples.jsonl` equal to the reference's row for row (same order, no row twice;
wall-clock fields aside) and `eval.json` equal, values within --atol. Prints
one line per kill and a summary with the wall time and the load average;
exit code 0 when everything matches, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("early", "time", "save", "export", "write")
# The model directory each stage exports; the files that a stage writes last.
EXPORTS = {"pretrain": "pretrained", "sft": "sft", "reward": "reward", "ppo": "policy",
           "dpo": "dpo"}
WRITES = {"labels": "labels", "eval": "eval.json", "figures": "figures"}
CHECKPOINTED = ("pretrain", "sft", "reward", "ppo", "dpo")
TIMING = re.compile(r"(^elapsed/|/steps_per_s$|seconds)")
POLL_S = 0.002


def kinds_of(stage: str) -> list[str]:
    """The stage's kinds in the order they are tried. A stage without checkpoints
    starts over when killed: its `write` first, then its `time` moments, the last of
    which may end it."""
    if stage not in CHECKPOINTED:
        return (["write"] if stage in WRITES else []) + ["time"]
    return ["early", "time", "save"] + (["export"] if stage in EXPORTS else [])


def make_plan(stages: list[str], durations: dict[str, float], n: int,
              rng: random.Random) -> list[tuple[str, str]]:
    """N (stage, kind) moments in pipeline order (see the module doc)."""
    pairs = [(s, k) for s in stages for k in kinds_of(s)]
    if n <= len(pairs):
        chosen = rng.sample(pairs, n)
    else:  # more `time` moments, by duration, in stages long enough to hold them
        long = [s for s in stages if durations.get(s, 0.0) >= 5.0] or stages
        weights = [durations.get(s, 1.0) for s in long]
        chosen = pairs + [(s, "time") for s in rng.choices(long, weights, k=n - len(pairs))]
    order = {s: i for i, s in enumerate(stages)}
    return sorted(chosen, key=lambda p: (order[p[0]], kinds_of(p[0]).index(p[1])))


class Launch:
    """`python launch.py ...` with its merged output collected by a thread."""

    def __init__(self, args: list[str], env: dict, log_path: str):
        self.log = open(log_path, "w")
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "launch.py", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.log.write(line)
        self.log.flush()

    def started(self, stage: str) -> bool:
        return f"[{stage}] starting" in self.lines

    def current_stage(self) -> str:
        for line in reversed(list(self.lines)):
            m = re.match(r"\[(\w+)\] (starting|done)", line)
            if m:
                return m.group(1) if m.group(2) == "starting" else f"after {m.group(1)}"
        return "startup"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.reader.join(10)
        self.log.close()

    def finish(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -1
        self.reader.join(10)
        self.log.close()
        return self.proc.returncode


def _committed(workdir: str, stage: str) -> bool:
    d = os.path.join(workdir, "checkpoints", stage)
    return os.path.isdir(d) and any(e.isdigit() for e in os.listdir(d))


def _saves_in_flight(workdir: str, stage: str) -> set[str]:
    try:
        return {e for e in os.listdir(os.path.join(workdir, "checkpoints", stage))
                if ".orbax-checkpoint-tmp" in e}
    except FileNotFoundError:
        return set()


def _last_row_stage(workdir: str) -> str | None:
    try:
        with open(os.path.join(workdir, "metrics.jsonl"), "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 4096, 0))
            tail = f.read().decode(errors="replace").strip().splitlines()
        return json.loads(tail[-1]).get("stage") if tail else None
    except (OSError, ValueError):
        return None


def _event(run: Launch, workdir: str, stage: str, kind: str, stale: set[str]) -> bool:
    """Whether `stage` is in the middle of `kind` (early/save/export/write). `stale`:
    saves cut short earlier, still there until the stage's checkpointer clears them."""
    marker = os.path.join(workdir, "stages", f"{stage}.json")
    if kind == "early":
        return any(line.startswith(f"{stage} step ") for line in list(run.lines))
    if kind == "save":
        return bool(_saves_in_flight(workdir, stage) - stale)
    if kind == "write" and stage == "eval":
        # Its metrics row is written first, then samples, eval.json, the marker.
        return _last_row_stage(workdir) == "eval" and not os.path.exists(marker)
    if kind == "export":
        path = os.path.join(workdir, "models", EXPORTS[stage])
    elif stage == "labels":
        d = os.path.join(workdir, "labels")
        return (os.path.isdir(d) and bool(os.listdir(d)) and not os.path.exists(marker))
    else:
        path = os.path.join(workdir, WRITES[stage])
    return os.path.exists(path) and not os.path.exists(marker)


def wait_and_kill(run: Launch, workdir: str, stage: str, kind: str, duration: float,
                  rng: random.Random, timeout: float) -> tuple[str, float | None]:
    """Waits for the (stage, kind) moment and kills; ('killed'|'missed'|'ended', seconds
    after the stage started)."""
    marker = os.path.join(workdir, "stages", f"{stage}.json")
    deadline = time.monotonic() + timeout
    start = None
    at = None
    fraction = rng.random()
    step_line = re.compile(rf"^{stage} step (\d+)/(\d+) ")
    seen = 0
    passed = False  # a `time` moment of a stage that logs steps: k/n >= fraction
    stale: set[str] = set()
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            return "ended", None
        if start is None and run.started(stage):
            if os.path.exists(marker):
                return "missed", None  # it ran and ended in this launch, before this moment
            start = time.monotonic()
            at = start + fraction * duration
            seen = run.lines.index(f"[{stage}] starting")
            stale = _saves_in_flight(workdir, stage)
        if start is not None and kind == "time" and stage in CHECKPOINTED:
            lines = run.lines[seen:]
            seen += len(lines)
            for line in lines:
                m = step_line.match(line)
                passed = passed or bool(m and int(m.group(1)) >= fraction * int(m.group(2)))
            at = math.inf  # progress, not the clock, decides
        done = os.path.exists(marker)
        if done and (start is None or kind != "time"):
            return "missed", None  # the stage is done (or was done before this launch)
        if kind == "early" and start is not None and _committed(workdir, stage):
            return "missed", None  # a checkpoint came first
        if start is not None:
            # A `time` moment past the stage's end here (a faster launch) is its end.
            if (kind == "time" and (passed or time.monotonic() >= at or done)) or (
                    kind != "time" and _event(run, workdir, stage, kind, stale)):
                run.kill()
                return "killed", time.monotonic() - start
        time.sleep(POLL_S)
    run.kill()
    return "timeout", None


def read_rows(path: str) -> list[dict]:
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    rows.append({k: v for k, v in json.loads(line).items()
                                 if not TIMING.search(k)})
    return rows


def _diff(a, b, where: str, atol: float, out: list[str]) -> float:
    """Max abs difference of matching numbers; mismatches appended to `out`."""
    if isinstance(a, dict) and isinstance(b, dict):
        if sorted(a) != sorted(b):
            out.append(f"{where}: keys {sorted(set(a) ^ set(b))} differ")
            return math.inf
        return max([_diff(a[k], b[k], f"{where}.{k}", atol, out) for k in a] or [0.0])
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and \
            not isinstance(a, bool) and not isinstance(b, bool):
        d = abs(float(a) - float(b))
        if not d <= atol:
            out.append(f"{where}: {b} vs {a} in the reference")
        return d
    if a != b:
        out.append(f"{where}: {b!r} vs {a!r} in the reference")
        return math.inf
    return 0.0


def compare(reference: str, killed: str, atol: float) -> tuple[list[str], dict]:
    """Mismatches between the two workdirs' results, and what was compared."""
    problems: list[str] = []
    stats = {}
    worst = 0.0
    for name in ("metrics.jsonl", "samples.jsonl"):
        want, got = read_rows(os.path.join(reference, name)), read_rows(os.path.join(killed, name))
        stats[name] = len(got)
        if len(want) != len(got):
            seen: dict = {}
            for r in got:
                key = (r.get("stage"), r.get("step"), r.get("policy"), tuple(sorted(r)))
                seen[key] = seen.get(key, 0) + 1
            twice = sum(1 for v in seen.values() if v > 1)
            problems.append(f"{name}: {len(got)} rows, the reference has {len(want)} "
                            f"({twice} row keys appear more than once)")
        for i, (a, b) in enumerate(zip(want, got)):
            worst = max(worst, _diff(a, b, f"{name} row {i + 1} ({a.get('stage')} step "
                                           f"{a.get('step')})", atol, problems))
    with open(os.path.join(reference, "eval.json")) as f:
        want_eval = json.load(f)
    try:
        with open(os.path.join(killed, "eval.json")) as f:
            got_eval = json.load(f)
    except (OSError, ValueError) as e:
        problems.append(f"eval.json: {e}")
        got_eval = None
    if got_eval is not None:
        worst = max(worst, _diff(want_eval, got_eval, "eval.json", atol, problems))
    for name in ("config.json",):
        with open(os.path.join(reference, name)) as f, open(os.path.join(killed, name)) as g:
            if json.load(f) != json.load(g):
                problems.append(f"{name} differs: the reference ran another config")
    stats["max_abs_diff"] = worst
    return problems, stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="number of kill -9 moments (N)")
    p.add_argument("--workdir", default=os.path.join("runs", "kill_campaign"),
                   help="reference/ and killed/ go here (killed/ is started afresh)")
    p.add_argument("--config", default="configs/mock_sentiment.py:runlocal")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a --config.KEY=VALUE override for every launch (repeatable)")
    p.add_argument("--reference", default=None,
                   help="an uninterrupted run of the same command to compare with "
                        "(default: run one into WORKDIR/reference)")
    p.add_argument("--plan", default=None,
                   help="explicit moments STAGE:KIND,... instead of drawing --kills of them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--timeout", type=float, default=1800,
                   help="seconds one launch may take")
    args = p.parse_args(argv)

    t0 = time.monotonic()
    os.makedirs(args.workdir, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": ROOT}
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(
        os.path.join(args.workdir, "jit_cache")))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    flags = [f"--config={args.config}", *(f"--config.{s}" for s in args.set)]

    reference = args.reference
    if reference is None:
        reference = os.path.join(args.workdir, "reference")
        if not os.path.exists(os.path.join(reference, "eval.json")):
            print(f"reference run -> {reference}", flush=True)
            run = Launch([*flags, f"--workdir={reference}"], env,
                         os.path.join(args.workdir, "reference.log"))
            code = run.finish(args.timeout)
            if code != 0:
                print(f"the reference run failed (exit {code}); see reference.log")
                return 1
    with open(os.path.join(reference, "config.json")) as f:
        named = json.load(f)["stages"].split(",")
    stages = [s for s in ("pretrain", "sft", "labels", "reward", "ppo", "dpo", "eval",
                          "figures") if s in named]
    durations = {}  # without compilation: relaunches load the compiled programs
    for s in stages:
        with open(os.path.join(reference, "stages", f"{s}.json")) as f:
            marker = json.load(f)
        durations[s] = max(float(marker["seconds"]) - float(marker.get("compile_seconds", 0)),
                           0.5)
    rng = random.Random(args.seed)
    if args.plan:
        plan = [tuple(item.split(":")) for item in args.plan.split(",")]
        bad = [f"{s}:{k}" for s, k in plan if s not in stages or k not in kinds_of(s)]
        if bad:
            print(f"error: --plan {bad}: not a (stage, kind) of this config; stages {stages}, "
                  f"kinds {list(KINDS)}")
            return 2
    else:
        plan = make_plan(stages, durations, args.kills, rng)

    killed_dir = os.path.join(args.workdir, "killed")
    if os.path.exists(killed_dir):
        subprocess.run(["rm", "-rf", killed_dir], check=True)
    launch_args = [*flags, f"--workdir={killed_dir}"]
    outcomes = []
    run = None
    for i, (stage, kind) in enumerate(plan):
        if run is None:
            run = Launch(launch_args, env, os.path.join(args.workdir, f"killed.{i:02d}.log"))
        outcome, after = wait_and_kill(run, killed_dir, stage, kind, durations[stage], rng,
                                       args.timeout)
        where = run.current_stage()
        outcomes.append((stage, kind, outcome))
        print(f"kill {i + 1:2d}/{len(plan)}: {stage:>8} {kind:<6} {outcome}"
              + (f" {after:.2f}s into the stage (in {where})" if after is not None else ""),
              flush=True)
        if outcome in ("killed", "timeout"):
            run = None
        elif outcome == "ended":
            break  # the run finished before this moment: nothing left to kill
    if run is None:
        run = Launch(launch_args, env, os.path.join(args.workdir, "killed.final.log"))
    code = run.finish(args.timeout)
    problems, stats = compare(reference, killed_dir, args.atol) if code == 0 else (
        [f"the last launch exited with {code}: see {run.log.name}"], {})
    n_killed = sum(1 for *_, o in outcomes if o == "killed")
    by_stage: dict = {}
    for s, _, o in outcomes:
        if o == "killed":
            by_stage[s] = by_stage.get(s, 0) + 1
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"kill campaign: {n_killed} kills of {len(plan)} planned "
          f"({', '.join(f'{s} {n}' for s, n in by_stage.items())}), "
          f"{sum(1 for *_, o in outcomes if o == 'missed')} missed; "
          f"wall {time.monotonic() - t0:.0f}s; load average {load}", flush=True)
    if problems:
        print(f"MISMATCH: {len(problems)} problem(s); first: " + " | ".join(problems[:5]))
        return 1
    print(f"equal: metrics.jsonl {stats['metrics.jsonl']} rows, samples.jsonl "
          f"{stats['samples.jsonl']} rows and eval.json match the uninterrupted run "
          f"(max abs diff {stats['max_abs_diff']:.2g})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

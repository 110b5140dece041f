"""Members in one program vs one run: the offline default's PPO (or reward) stage, M seeds.

Needs a workdir where `configs/mock_sentiment.py` has finished the stages
before PPO (pretrain, labels, reward), e.g.

    python launch.py --workdir=runs/mock --config.stages=pretrain,labels,reward
    python benchmarks/members.py --prepared=runs/mock --members 3 --updates 30

Copies it to fresh directories, then times (a) one PPO stage (seed 0, the
ordinary `PPOTrainer` path) and (b) the PPO stage of seeds 0..M-1 as one
vmapped program (`rlhf_jax.members`), each in its own process with compilation
included (no persistent cache), and prints the wall-time ratio b/a beside the
load average. `--updates` shortens the stage (150 updates by default).
`--stage reward` does the same for the reward-model stage (each seed its
own labels' order, head and normalisation samples; the copies share the
prepared workdir's labels). `--switches` applies config switches to both
sides (`runlocal`: the smaller variant, for a smoke run on the prepared
runlocal workdir); `--json PATH` writes the numbers, with the ratio also
without compilation (the steady state of a longer stage).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "mock_sentiment.py")


def _config(seed: int, updates: int | None, stage: str, switches: str = ""):
    sys.path.insert(0, ROOT)
    import importlib.util

    spec = importlib.util.spec_from_file_location("mock_sentiment", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(switches or None)
    cfg.seed = seed
    cfg.stages = "pretrain,labels,reward" + (",ppo" if stage == "ppo" else "")
    if updates:
        cfg.ppo.total_episodes = cfg.ppo.batch_size * updates
    return cfg


def child(dirs: list[str], updates: int | None, stage: str, switches: str = "") -> None:
    """Runs `stage` of `dirs` (seed i in dirs[i]): alone if one, else as members."""
    from rlhf_jax import members, pipeline
    from rlhf_jax.infra import compile_cache

    compile_cache.enable(off=True)
    cfgs = [_config(i, updates, stage, switches) for i in range(len(dirs))]
    t0 = time.perf_counter()
    # The copies' earlier stages ran with seed 0 (shared, as in the sweeps).
    if len(dirs) == 1:
        pipeline.run(cfgs[0], dirs[0], allow_config_change=True)
    else:
        members.run_members(stage, cfgs, dirs, allow_config_change=True)
    wall = time.perf_counter() - t0
    with open(os.path.join(dirs[0], "stages", f"{stage}.json")) as f:
        marker = json.load(f)
    print(json.dumps({"wall": wall, "compile": marker["compile_seconds"]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", required=True, help="workdir with pretrain/labels/reward done")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--updates", type=int, default=None, help="PPO updates (default: 150)")
    parser.add_argument("--stage", choices=("ppo", "reward"), default="ppo")
    parser.add_argument("--switches", default="", help="config switches for both sides "
                        "(e.g. runlocal, matching a workdir prepared with them)")
    parser.add_argument("--json", default="", help="write the measured numbers to this file")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child, args.updates, args.stage, args.switches)
    for stage in ("pretrain", "labels", "reward"):
        if not os.path.exists(os.path.join(args.prepared, "stages", f"{stage}.json")):
            raise SystemExit(f"error: {args.prepared} has not finished the {stage} stage")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, m in (("one run", 1), (f"{args.members} members", args.members)):
            dirs = []
            for i in range(m):
                d = os.path.join(tmp, f"{label.replace(' ', '_')}_s{i}")
                drop = ("ppo.json", "ppo", "policy", "eval.json", "figures")
                if args.stage == "reward":
                    drop += ("reward.json", "reward")
                shutil.copytree(args.prepared, d, ignore=shutil.ignore_patterns(*drop))
                dirs.append(d)
            load0 = os.getloadavg()[0]
            cmd = [sys.executable, os.path.abspath(__file__), f"--prepared={args.prepared}",
                   f"--stage={args.stage}", f"--switches={args.switches}", "--child", *dirs] + (
                       [f"--updates={args.updates}"] if args.updates else [])
            path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
            out = subprocess.run(cmd, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": path})
            if out.returncode:
                raise SystemExit(out.stdout[-2000:] + out.stderr[-2000:])
            results[label] = {**json.loads(out.stdout.strip().splitlines()[-1]),
                              "load": (load0, os.getloadavg()[0])}
            r = results[label]
            print(f"{label:>10}: {args.stage} stage {r['wall']:.0f} s wall (compile {r['compile']:.0f} s), "
                  f"load average {r['load'][0]:.2f} -> {r['load'][1]:.2f}", flush=True)
    one, many = results["one run"], results[f"{args.members} members"]
    m = args.members
    per_hour = m * one["wall"] / many["wall"]
    steady = m * (one["wall"] - one["compile"]) / max(many["wall"] - many["compile"], 1e-9)
    print(f"{m} members / one run: {many['wall'] / one['wall']:.2f}x wall "
          f"(target <= 1.5x); {per_hour:.2f}x members per hour; without compilation "
          f"{steady:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            # "updates": None is the config's own count.
            json.dump({"stage": args.stage, "members": m, "updates": args.updates,
                       "switches": args.switches, "one_run": one, "group": many,
                       "wall_ratio": many["wall"] / one["wall"], "members_per_hour_ratio": per_hour,
                       "members_per_hour_ratio_without_compile": steady}, f, indent=1)


if __name__ == "__main__":
    main()

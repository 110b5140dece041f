"""Every accelerator measurement in one run, each ratio beside its baseline from that run.

`benchmarks/gpu.sh` calls this (after making sure TRL 1.12 is installed).
Steps, most important first, each its own process with its log in `--out`:

  mfu_774m        PPO update MFU, GPT-2 774M bf16, batch 512 x (64 + 24), 4 x 4 (mfu.py)
  mfu_774m_xla    the same with XLA's attention, here only if mfu_774m failed (say, a
                  cuDNN constraint), else last (what cuDNN's fused kernel gains)
  members_prepare the offline default's stages before PPO, shortened (launch.py)
  members         its PPO stage: 8 seeds as members vs one run (members.py)
  ppo_vs_trl      one PPO iteration vs TRL 1.12's PPOTrainer, both with a separate
                  value network, GPT-2 124M, batch 64, float32/TF32 (ppo.py)
  sampler         KV-cache sampler vs transformers generate, GPT-2 124M (sampling.py)
  mfu_124m        PPO update MFU, GPT-2 124M bf16, the same shape (mfu.py)
  mfu_774m_chunk  774M with the LM head and log-softmax in chunks of 8 positions

The steps up to mfu_124m are the measurement; mfu_774m_chunk and (after a
successful mfu_774m) mfu_774m_xla run only while the time budget
(`--budget_s`, counted from `--started_at`) leaves room for them.
Each step runs at most until its cap or the budget's end; a step that fails
or runs out of time is recorded as such and the rest go on (rerun it alone
with `--only NAME`). Prints a summary and writes `--out/summary.json`.

`--small`: each step's smoke-run form on the CPU (tiny models, two members,
two updates, one sampler round, the hand-written PyTorch baseline when TRL is
absent), for CI; the numbers mean nothing there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def _bench(name: str) -> str:
    return os.path.join(ROOT, "benchmarks", name)


def steps(out: str, small: bool) -> list[dict]:
    """The steps: name, command, the JSON it writes, a time cap, whether optional."""

    def js(name):
        return os.path.join(out, f"{name}.json")

    prepared = os.path.join(out, "members_prepared")
    config = os.path.join(ROOT, "configs", "mock_sentiment.py") + (":runlocal" if small else "")
    launch = [PY, os.path.join(ROOT, "launch.py"), f"--config={config}", f"--workdir={prepared}",
              "--nocompile_cache", "--config.stages=pretrain,labels,reward"]
    if small:
        launch += ["--config.pretrain.num_docs=300", "--config.pretrain.epochs=1",
                   "--config.labels.num_train=32", "--config.labels.num_val=16",
                   "--config.labels.batch_size=16", "--config.reward.batch_size=8",
                   "--config.reward.normalize_samples=16", "--config.reward.rollout_batch_size=16"]
        return [
            dict(name="mfu_small", cmd=[PY, _bench("mfu.py"), "--small", "--json", js("mfu_small")],
                 json=js("mfu_small"), cap=300),
            dict(name="members_prepare", cmd=launch, json=None, cap=300),
            dict(name="members", cmd=[PY, _bench("members.py"), f"--prepared={prepared}",
                                      "--members=2", "--updates=2", "--switches=runlocal",
                                      "--json", js("members")], json=js("members"), cap=300),
            dict(name="ppo_vs_trl", cmd=[PY, _bench("ppo.py"), "--small", "--value=separate",
                                         "--json", js("ppo_vs_trl")],
                 json=js("ppo_vs_trl"), cap=300),
            dict(name="sampler", cmd=[PY, _bench("sampling.py"), "--small", "--rounds=1",
                                      "--json", js("sampler")], json=js("sampler"), cap=300),
        ]
    # The default's model and shapes; fewer pretraining steps and labels than the
    # default (the PPO stage's speed depends on its shapes, not on how good the
    # pretrained model and the reward model are).
    launch += ["--config.pretrain.num_docs=20000", "--config.pretrain.epochs=1",
               "--config.labels.num_train=256",
               "--config.labels.num_val=64", "--config.reward.epochs=1"]
    mfu = [PY, _bench("mfu.py")]
    return [
        dict(name="mfu_774m", cmd=mfu + ["--model=gpt2-large", "--json", js("mfu_774m")],
             json=js("mfu_774m"), cap=240),
        # XLA's attention: at once if the default (cuDNN's kernel) failed, else as an
        # optional comparison after the rest (what the fused kernel gains).
        dict(name="mfu_774m_xla", cmd=mfu + ["--model=gpt2-large", "--attention_impl=xla",
                                             "--json", js("mfu_774m_xla")],
             json=js("mfu_774m_xla"), cap=200, if_failed="mfu_774m"),
        dict(name="members_prepare", cmd=launch, json=None, cap=150),
        # 50 updates (the default stage has 150): compilation counts three times as
        # much as in a whole stage, so the ratio without compilation is recorded beside it.
        dict(name="members", cmd=[PY, _bench("members.py"), f"--prepared={prepared}",
                                  "--members=8", "--updates=50", "--json", js("members")],
             json=js("members"), cap=200),
        dict(name="ppo_vs_trl", cmd=[PY, _bench("ppo.py"), "--value=separate", "--iters=2",
                                     "--json", js("ppo_vs_trl")], json=js("ppo_vs_trl"), cap=200,
             # The parent process must not hold the GPU's memory while each side runs in its own.
             env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}),
        dict(name="sampler", cmd=[PY, _bench("sampling.py"), "--json", js("sampler")],
             json=js("sampler"), cap=120),
        dict(name="mfu_124m", cmd=mfu + ["--model=gpt2", "--json", js("mfu_124m")],
             json=js("mfu_124m"), cap=120),
        dict(name="mfu_774m_chunk", cmd=mfu + ["--model=gpt2-large", "--logits_chunk=8",
                                               "--json", js("mfu_774m_chunk")],
             json=js("mfu_774m_chunk"), cap=200, optional=True),
    ]


def run_step(step: dict, out: str, timeout: float, env: dict) -> dict:
    log = os.path.join(out, f"{step['name']}.log")
    print(f"== {step['name']}: {' '.join(step['cmd'][1:])} (at most {timeout:.0f} s)", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(step["cmd"], cwd=ROOT, env={**env, **step.get("env", {})},
                                stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    with open(log) as f:
        lines = f.read().splitlines()
    print("\n".join(lines[-25:]), flush=True)
    result = {"status": status, "wall_s": round(wall, 1), "cmd": step["cmd"][1:], "log": log}
    if step["json"] and status == "ok":
        with open(step["json"]) as f:
            result["result"] = json.load(f)
    print(f"== {step['name']}: {status} in {wall:.0f} s", flush=True)
    return result


def run_steps(todo: list[dict], budget_s: float, start: float, small: bool, runner) -> dict:
    """`{name: result}` of running `todo` in order with `runner(step, timeout)`.

    A step with `if_failed=NAME` runs in its place only if NAME did not succeed,
    else it moves to the end as an optional one; an optional step runs only if
    its cap fits in what is left of `budget_s` (counted from `start`); in the
    full run no step starts in the budget's last 5 seconds.
    """
    todo, results = list(todo), {}
    while todo:
        step = todo.pop(0)
        if step.get("if_failed") and results.get(step["if_failed"], {}).get("status") == "ok":
            todo.append({**step, "if_failed": None, "optional": True})
            continue
        left = budget_s - (time.time() - start)
        if step.get("optional") and left < step["cap"]:
            results[step["name"]] = {"status": f"skipped ({left:.0f} s of budget left)",
                                     "cmd": step["cmd"][1:], "log": None}
            continue
        if left <= 5 and not small:
            results[step["name"]] = {"status": "skipped (budget spent)",
                                     "cmd": step["cmd"][1:], "log": None}
            continue
        results[step["name"]] = runner(step, step["cap"] if small else min(step["cap"], left))
    return results


def _pct(x):
    return "n/a" if x is None else f"{x:.1%}"


def summary_lines(results: dict) -> list[str]:
    """One line per measurement, the ratio beside its baseline (from `results`)."""
    lines = []
    for name, label in (("mfu_774m", "GPT-2 774M"), ("mfu_124m", "GPT-2 124M"),
                        ("mfu_774m_chunk", "GPT-2 774M, logits in chunks of 8"),
                        ("mfu_774m_xla", "GPT-2 774M, XLA attention"), ("mfu_small", "tiny")):
        r = results.get(name, {}).get("result")
        if r:
            peak = r["datasheet_peak_flops"]
            sheet = (f"{peak / 1e12:.0f} TFLOP/s datasheet peak" if peak
                     else "datasheet peak (unknown)")
            lines.append(
                f"update MFU, {label} bf16: {_pct(r['mfu'])} of the {sheet}"
                f"{' (target 50%)' if name == 'mfu_774m' else ''}; update "
                f"{r['achieved_flops'] / 1e12:.2f} TFLOP/s = {_pct(r['update_vs_matmul_peak'])} of "
                f"the bf16 matmul peak measured in the same run "
                f"({r['matmul_peak_flops'] / 1e12:.2f} TFLOP/s); update {r['update_s']:.3f} s, "
                f"rollout {r['rollout_s']:.3f} s")
    r = results.get("members", {}).get("result")
    if r:
        lines.append(
            f"members: {r['members']} seeds {r['members_per_hour_ratio']:.2f}x the members per "
            f"hour of one run (target 5x); one run {r['one_run']['wall']:.0f} s (compile "
            f"{r['one_run']['compile']:.0f} s), {r['members']} members {r['group']['wall']:.0f} s "
            f"(compile {r['group']['compile']:.0f} s); without compilation "
            f"{r['members_per_hour_ratio_without_compile']:.2f}x")
    r = results.get("ppo_vs_trl", {}).get("result")
    if r:
        lines.append(
            f"PPO iteration: {r['ratio']:.2f}x {r['baseline_name']} (ours "
            f"{r['ours_episodes_per_s']:.2f} episodes/s, {r['ours_s']:.2f} s; baseline "
            f"{r['baseline_episodes_per_s']:.2f} episodes/s, {r['baseline_s']:.2f} s)"
            + ("" if r["torch_cuda"] or r["platform"] == "cpu" else
               "; NOT like for like: torch has no CUDA here, the baseline ran on the CPU"))
    r = results.get("sampler", {}).get("result")
    if r:
        lines.append(
            f"sampler: {r['ratio']:.2f}x transformers generate (ours "
            f"{r['ours_tokens_per_s']:.0f} new tokens/s, generate "
            f"{r['generate_tokens_per_s']:.0f}; torch on {r['torch_device']})"
            + ("" if r["headline"] else " [no headline: see the sampler's log]"))
    for name, res in results.items():
        if res["status"] != "ok":
            lines.append(f"{name}: {res['status']} (log: {res['log']})")
    return lines


def environment() -> dict:
    env = {"python": platform.python_version(), "host": platform.node()}
    for mod in ("jax", "jaxlib", "flax", "torch", "transformers", "trl"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as e:  # absent or broken: recorded, not fatal
            env[mod] = f"unavailable ({type(e).__name__})"
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except Exception:
        env["commit"] = None
    return env


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="CPU smoke run of every step (CI)")
    parser.add_argument("--out", required=True, help="directory for logs, JSONs and summary.json")
    parser.add_argument("--budget_s", type=float, default=560.0,
                        help="seconds for all steps, counted from --started_at")
    parser.add_argument("--started_at", type=float, default=None,
                        help="Unix time the run started (gpu.sh passes its own start)")
    parser.add_argument("--only", default="", help="comma list of step names to run")
    args = parser.parse_args()
    start = args.started_at or time.time()
    os.makedirs(args.out, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p), "PYTHONUNBUFFERED": "1"}
    if args.small:
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    todo = steps(args.out, args.small)
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {s["name"] for s in todo})
        if unknown:
            raise SystemExit(f"error: --only names unknown steps {unknown}")
        todo = [s for s in todo if s["name"] in names]
    summary = {"small": args.small, "started_at": start, "budget_s": args.budget_s,
               "environment": environment()}
    summary["steps"] = run_steps(todo, args.budget_s, start, args.small,
                                 lambda step, timeout: run_step(step, args.out, timeout, env))
    summary["total_s"] = round(time.time() - start, 1)
    summary["lines"] = summary_lines(summary["steps"])
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\n== summary ({summary['total_s']:.0f} s; {os.path.join(args.out, 'summary.json')})")
    print("\n".join(summary["lines"]), flush=True)
    failed = [n for n, r in summary["steps"].items()
              if not r["status"].startswith(("ok", "skipped"))]
    if failed:
        raise SystemExit(f"error: steps {failed} did not finish; see their logs in {args.out}")


if __name__ == "__main__":
    main()

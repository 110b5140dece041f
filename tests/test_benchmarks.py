"""The benchmarks: the accelerator script's CPU smoke run (`gpu.sh --small`), its
summary lines, the MFU FLOP count and the trace summary."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import mfu  # noqa: E402
from rlhf_jax.models import GPT2Config  # noqa: E402


def test_update_flops_formula_by_hand():
    # d=2, L=1, V=3, B=1, Q=1, R=1 (T=2), 1 epoch:
    # dense 1*2*2*12*1*4 = 192, attention 1*1*4*4*2 = 32, LM head 1*1*2*2*3 = 12 -> x3 = 708.
    cfg = GPT2Config(vocab_size=3, n_positions=4, n_embd=2, n_layer=1, n_head=1)
    assert mfu.update_model_flops(cfg, batch=1, query=1, response=1, noptepochs=1) == 708
    assert mfu.update_model_flops(cfg, batch=2, query=1, response=1, noptepochs=4) == 8 * 708


def test_datasheet_peaks():
    assert mfu.datasheet_peak("NVIDIA H200") == 989e12
    assert mfu.datasheet_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert mfu.datasheet_peak("NVIDIA H100 PCIe") == 756e12
    assert mfu.datasheet_peak("cpu") is None


def test_gpu_script_small_runs_every_step_and_writes_the_summary(tmp_path):
    # benchmarks/gpu.sh --small: every step of the accelerator run in its CPU
    # smoke form (tiny models; two members, two updates), in one call.
    out = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "GPU_BENCH_OUT")}
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), "--small",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["small"] and list(summary["steps"]) == [
        "mfu_small", "members_prepare", "members", "ppo_vs_trl", "sampler"]
    assert all(r["status"] == "ok" for r in summary["steps"].values()), summary["steps"]
    steps = {k: v.get("result") for k, v in summary["steps"].items()}
    assert steps["mfu_small"]["update_model_flops"] == mfu.update_model_flops(
        GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=1, n_head=4),
        batch=16, query=8, response=4, noptepochs=2)
    assert steps["members"]["members"] == 2 and steps["members"]["group"]["wall"] > 0
    assert steps["ppo_vs_trl"]["ratio"] == pytest.approx(
        steps["ppo_vs_trl"]["baseline_s"] / steps["ppo_vs_trl"]["ours_s"])
    assert steps["sampler"]["generate_tokens_per_s"] > 0
    text = proc.stdout
    for pattern in (r"^rollout: [\d.]+ s", r"^update: +[\d.]+ s", r"^iteration: .* rollout \d+% "
                    r"\+ update \d+%", r"^update model FLOPs: [\d.]+ [TGM]FLOP",
                    r"^achieved: [\d.]+ [TGM]FLOP/s", r"^measured matmul peak .* of it$",
                    r"^datasheet peak: unknown for 'cpu'",
                    r"^members: 2 seeds [\d.]+x the members per hour of one run",
                    r"^PPO iteration: [\d.]+x ", r"^sampler: [\d.]+x transformers generate"):
        assert re.search(pattern, text, re.M), (pattern, text[-4000:])


def test_gpu_summary_lines_put_each_ratio_beside_its_baseline():
    from benchmarks import gpu_suite

    mfu_774m = {"mfu": 0.392, "datasheet_peak_flops": 989e12, "achieved_flops": 388e12,
                "update_vs_matmul_peak": 0.594, "matmul_peak_flops": 653e12, "update_s": 2.044,
                "rollout_s": 0.713}
    members = {"members": 8, "members_per_hour_ratio": 2.66, "one_run": {"wall": 49, "compile": 17},
               "group": {"wall": 147, "compile": 26}, "members_per_hour_ratio_without_compile": 2.9}
    ppo = {"ratio": 2.62, "baseline_name": "TRL 1.12.0 PPOTrainer", "ours_episodes_per_s": 10.0,
           "ours_s": 6.4, "baseline_episodes_per_s": 3.8, "baseline_s": 16.8, "torch_cuda": False,
           "platform": "gpu"}
    steps = {"mfu_774m": {"status": "ok", "result": mfu_774m},
             "members": {"status": "ok", "result": members},
             "ppo_vs_trl": {"status": "ok", "result": ppo},
             "sampler": {"status": "timed out after 40 s", "log": "/x/sampler.log"}}
    lines = gpu_suite.summary_lines(steps)
    assert lines[0].startswith("update MFU, GPT-2 774M bf16: 39.2% of the 989 TFLOP/s datasheet "
                               "peak (target 50%); update 388.00 TFLOP/s = 59.4% of the bf16 "
                               "matmul peak measured in the same run (653.00 TFLOP/s)")
    assert lines[1].startswith("members: 8 seeds 2.66x the members per hour of one run (target "
                               "5x); one run 49 s (compile 17 s), 8 members 147 s")
    assert lines[2].startswith("PPO iteration: 2.62x TRL 1.12.0 PPOTrainer (ours 10.00 episodes/s")
    assert lines[2].endswith("NOT like for like: torch has no CUDA here, the baseline ran on the CPU")
    assert lines[3] == "sampler: timed out after 40 s (log: /x/sampler.log)"
    # The full run's steps: the measurement first, the optional variants last.
    full = gpu_suite.steps("/tmp/x", small=False)
    assert [s["name"] for s in full] == ["mfu_774m", "mfu_774m_xla", "members_prepare", "members",
                                         "ppo_vs_trl", "sampler", "mfu_124m", "mfu_774m_chunk"]
    assert full[1]["if_failed"] == "mfu_774m" and full[-1]["optional"]


def test_gpu_steps_fall_back_and_keep_to_the_budget():
    import time

    from benchmarks import gpu_suite

    def step(name, cap=10, **kw):
        return dict(name=name, cmd=["python", name], json=None, cap=cap, **kw)

    todo = [step("a"), step("a_xla", if_failed="a"), step("b"), step("c", cap=100, optional=True)]
    ran = []

    def runner(outcome):
        def run(s, timeout):
            ran.append((s["name"], timeout))
            return {"status": outcome.get(s["name"], "ok")}
        return run

    # The default failed: its fallback runs at once; the optional step does not fit.
    got = gpu_suite.run_steps(todo, 50, time.time(), False, runner({"a": "failed (exit 1)"}))
    assert [n for n, _ in ran] == ["a", "a_xla", "b"] and ran[0][1] == 10
    assert got["c"]["status"].startswith("skipped (")
    # The default succeeded: the fallback moves to the end, optional, and runs if it fits.
    ran.clear()
    got = gpu_suite.run_steps(todo, 500, time.time(), False, runner({}))
    assert [n for n, _ in ran] == ["a", "b", "c", "a_xla"]
    ran.clear()
    got = gpu_suite.run_steps(todo, 9, time.time(), False, runner({}))
    # Each step's timeout is what is left of the budget; optional ones that do not fit wait.
    assert [n for n, _ in ran] == ["a", "b"] and 8 < ran[1][1] <= 9
    assert got["a_xla"]["status"].startswith("skipped (")


def test_trace_summary_adds_device_kernels_by_name_and_kind():
    from benchmarks import trace_summary

    trace = {"traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 1, "name": "nvjet_sm90_tst_128x128", "dur": 300.0},
        {"ph": "X", "pid": 1, "name": "nvjet_sm90_tst_128x128", "dur": 200.0},
        {"ph": "X", "pid": 1, "name": "gemm_fusion_dot_1", "dur": 100.0},
        {"ph": "X", "pid": 1, "name": "input_add_reduce_fusion_7", "dur": 250.0},
        {"ph": "X", "pid": 1, "name": "wrapped_transpose_3", "dur": 50.0},
        {"ph": "X", "pid": 1, "name": "mystery_kernel", "dur": 100.0},
        {"ph": "X", "pid": 2, "name": "PjitFunction(update)", "dur": 5000.0},  # host: left out
        {"ph": "i", "pid": 1, "name": "instant"},  # not a complete event
    ]}
    s = trace_summary.summarize(trace_summary.device_events(trace), top=2)
    assert s["total_us"] == 1000.0
    assert s["by_kind"] == {"matmul": 600.0, "fusion": 250.0, "copy": 50.0, "other": 100.0}
    assert s["top"] == [("nvjet_sm90_tst_128x128", 500.0, 2), ("input_add_reduce_fusion_7", 250.0, 1)]
    text = trace_summary.report(s, wall_s=0.002)
    assert "device kernel time 1.0 ms over 2.0 ms wall (50% busy" in text
    assert "matmul" in text.splitlines()[1]  # kinds largest first

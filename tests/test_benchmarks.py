"""The MFU benchmark's smoke run (`--small`, CPU) and its FLOP count."""

import os
import re
import subprocess
import sys

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


def test_small_run_prints_the_breakdown_and_utilisation():
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "mfu.py"), "--small"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for pattern in (r"^rollout: [\d.]+ s", r"^update: +[\d.]+ s", r"^iteration: .* rollout \d+% "
                    r"\+ update \d+%", r"^update model FLOPs: [\d.]+ [TGM]FLOP",
                    r"^achieved: [\d.]+ [TGM]FLOP/s", r"^measured matmul peak .* of it$",
                    r"^datasheet peak: unknown for 'cpu'"):
        assert re.search(pattern, text, re.M), (pattern, text)


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

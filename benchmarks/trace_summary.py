"""Where a compiled step's device time goes, from a `jax.profiler` trace.

`jax.profiler.trace(dir, create_perfetto_trace=True)` writes a Chrome/Perfetto
trace (`*.trace.json.gz`). On a GPU each kernel is a complete event ("ph": "X")
on a stream of a device process ("/device:GPU:0 ..."). `summarize` adds their
durations by kernel name and by kind (matmul, attention, fused elementwise and
reductions, copies, other), so a benchmark can say which part of a step is off
the matmul peak.

    python benchmarks/trace_summary.py DIR      # the newest trace under DIR
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import sys

# Kernel-name fragments, first match wins (cuBLAS/cuDNN/CUTLASS/Triton names, XLA fusion names).
KINDS = (
    # nvjet_*: cuBLAS's Hopper GEMM kernels; gemm_fusion_*: XLA's Triton GEMMs with fused epilogues.
    ("matmul", ("nvjet", "gemm", "xmma", "cutlass", "cublas", "matmul", "dot")),
    ("attention", ("flash", "fmha", "attention", "softmax")),
    ("copy", ("memcpy", "memset", "copy", "transpose")),
    ("fusion", ("fusion", "reduce", "loop_", "input_", "convert", "multiply", "add", "select")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, fragments in KINDS:
        if any(f in low for f in fragments):
            return kind
    return "other"


def newest_trace(log_dir: str) -> str:
    paths = glob.glob(os.path.join(log_dir, "**", "*.trace.json.gz"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"{log_dir}: no *.trace.json.gz (was the trace written?)")
    return max(paths, key=os.path.getmtime)


def device_events(trace: dict, device: str = "/device:") -> list[dict]:
    """The complete events of the processes whose name contains `device`."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    pids = {e["pid"] for e in events
            if e.get("ph") == "M" and e.get("name") == "process_name"
            and device in str(e.get("args", {}).get("name", ""))}
    return [e for e in events if e.get("ph") == "X" and e.get("pid") in pids and "dur" in e]


def summarize(events: list[dict], top: int = 15) -> dict:
    """{"total_us", "by_kind": {kind: us}, "top": [(name, us, calls)]}, durations in microseconds."""
    by_name: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        row = by_name[e["name"]]
        row[0] += float(e["dur"])
        row[1] += 1
    by_kind: dict[str, float] = collections.Counter()
    for name, (us, _) in by_name.items():
        by_kind[kind_of(name)] += us
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    return {"total_us": sum(v[0] for v in by_name.values()), "by_kind": dict(by_kind),
            "top": [(name, us, int(calls)) for name, (us, calls) in ranked]}


def load(path: str) -> dict:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def report(summary: dict, wall_s: float | None = None) -> str:
    total = summary["total_us"]
    lines = [f"device kernel time {total / 1e3:.1f} ms"
             + (f" over {wall_s * 1e3:.1f} ms wall ({total / 1e6 / wall_s:.0%} busy, streams summed)"
                if wall_s else "")]
    for kind, us in sorted(summary["by_kind"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {kind:<10} {us / 1e3:9.1f} ms  {us / max(total, 1e-9):6.1%}")
    lines.append("  top kernels (ms, calls):")
    for name, us, calls in summary["top"]:
        lines.append(f"    {us / 1e3:9.2f} {calls:6d}  {name[:110]}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(summarize(device_events(load(newest_trace(sys.argv[1]))))))

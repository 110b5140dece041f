"""The README's `:runlocal` command gives one of the pinned trajectories.

Runs `python launch.py --config=configs/mock_sentiment.py:runlocal` exactly as
the README does (one CPU device) and compares its eval.json with the
trajectories in `tests/pinned/mock_sentiment_runlocal.json`, recorded with the
versions in constraints.txt. XLA's CPU kernels are picked by the CPU they run
on, so sums round differently from one CPU family to another, and a sampled
token that nearly ties can flip; from there PPO follows another trajectory
(README, "Reproducibility"). The file therefore holds one trajectory per CPU
family CI has run on, and the run must match one of them in every number.
Any change of behaviour (sampling, a loss, the data, the gold) moves the
numbers far beyond the tolerance from all of them; float noise does not.

RLHF_JAX_UPDATE_PINS=1 replaces every trajectory with this machine's: only
when a change of behaviour is intended, and say so in the commit (the other
CPUs' trajectories are then re-recorded on those CPUs). RLHF_JAX_ADD_PINS=<key>
adds this machine's run as the trajectory of a new CPU family, after checking
that the code is unchanged.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINS = os.path.join(ROOT, "tests", "pinned", "mock_sentiment_runlocal.json")
TOLERANCE = 5e-3


def _cpu() -> str:
    """The CPU's model and the vector extensions that decide XLA's kernels."""
    with open("/proc/cpuinfo") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("flags", "").split()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags]
    return f"{fields.get('model name', 'unknown CPU')} ({', '.join(isa)})"


def _mismatches(got: dict, pinned: dict) -> list[str]:
    """The numbers of `got` that differ from `pinned` by more than the tolerance."""
    if sorted(got) != sorted(pinned):
        return [f"policies {sorted(got)} != {sorted(pinned)}"]
    out = []
    for name, values in pinned.items():
        if sorted(got[name]) != sorted(values):
            out.append(f"{name}: keys {sorted(got[name])} != {sorted(values)}")
            continue
        out += [f"{name}.{key}: {got[name][key]!r} vs {value!r}" for key, value in values.items()
                if abs(got[name][key] - value) > TOLERANCE]
    return out


def test_mismatches_reports_each_number_beyond_the_tolerance():
    pinned = {"ppo": {"gold_score": -1.375, "kl": 0.46}}
    assert _mismatches({"ppo": {"gold_score": -1.3770, "kl": 0.46}}, pinned) == []
    assert _mismatches({"ppo": {"gold_score": -1.359375, "kl": 0.46}}, pinned) == [
        "ppo.gold_score: -1.359375 vs -1.375"]
    assert _mismatches({"ppo": {"gold_score": -1.375}}, pinned) == [
        "ppo: keys ['gold_score'] != ['gold_score', 'kl']"]


def test_runlocal_eval_matches_pinned_numbers(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "launch.py", "--config=configs/mock_sentiment.py:runlocal",
         f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(workdir / "eval.json") as f:
        got = json.load(f)
    with open(PINS) as f:
        trajectories = json.load(f)["trajectories"]
    update, add = os.environ.get("RLHF_JAX_UPDATE_PINS"), os.environ.get("RLHF_JAX_ADD_PINS")
    if update == "1" or add:
        record = {"cpu": _cpu(), "eval": got}
        trajectories = trajectories | {add: record} if add else {"this": record}
        with open(PINS, "w") as f:
            json.dump({"trajectories": trajectories}, f, indent=1, sort_keys=True)
            f.write("\n")
    diffs = {key: _mismatches(got, t["eval"]) for key, t in trajectories.items()}
    assert any(not d for d in diffs.values()), (
        f"matches none of the pinned trajectories on {_cpu()}:\n"
        + "\n".join(f"  {key} ({trajectories[key]['cpu']}): {'; '.join(d)}"
                    for key, d in diffs.items()))

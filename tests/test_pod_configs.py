"""The TPU pod configs validate with `launch.py --dry_run`, shapes only.

`configs/stiennon_tldr_{1b3,6b7}_pod.py` resolve on their slices' chip counts
and print the per-chip memory report without materialising a model: the
dry-run process stays small although one 6.7B model in float32 is 27 GB.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(config, *overrides):
    """`launch.py --dry_run` in a subprocess; returns (stdout, its peak RSS in MiB)."""
    # VmHWM, the peak RSS of this process's own address space: getrusage's
    # ru_maxrss would carry over the forking parent's (pytest's) peak, since
    # Linux keeps the pre-exec high-water mark.
    code = ("import atexit, re, runpy, sys; atexit.register(lambda: print('MAXRSS_KB', "
            "re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))); "
            "sys.argv = ['launch.py'] + sys.argv[1:]; runpy.run_path('launch.py', "
            "run_name='__main__')")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", code, f"--config=configs/{config}.py",
         "--config.labels.path=tests/fixtures/sff_comparisons.jsonl", *overrides, "--dry_run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rss_kb = int(re.search(r"MAXRSS_KB (\d+)", out.stdout).group(1))
    return out.stdout, rss_kb / 1024


def peak_gib(stdout: str) -> float:
    return float(re.search(r"peak\s+([\d.]+) GiB", stdout).group(1))


@pytest.mark.parametrize("config,mesh,params_range,chip_gib", [
    ("stiennon_tldr_1b3_pod", "data=2 x fsdp=8", (1.2e9, 1.4e9), 32),
    ("stiennon_tldr_6b7_pod", "data=1 x fsdp=32", (6.5e9, 6.8e9), 32),
])
def test_pod_configs_validate_with_dry_run_without_allocating(config, mesh, params_range,
                                                              chip_gib):
    stdout, rss_mib = dry_run(config)
    assert f"memory per device, PPO stage, mesh {mesh}" in stdout
    counts = [int(n.replace(",", "")) for n in re.findall(r"^  (?:policy|value|reference|reward "
                                                          r"model)\s.*?([\d,]{9,})$", stdout,
                                                          re.M)]
    assert len(counts) == 4  # policy, value, reference, reward model
    assert all(params_range[0] < n < params_range[1] for n in counts), counts
    # Fits a v4 chip's 32 GiB with room for XLA's own buffers, in every stage.
    assert peak_gib(stdout) < 0.75 * chip_gib
    stages = dict(re.findall(r"^  (sft|reward|ppo|eval)\s+([\d.]+) GiB", stdout, re.M))
    assert sorted(stages) == ["eval", "ppo", "reward", "sft"], stdout
    largest = float(re.search(r"all stages\s+([\d.]+) GiB", stdout).group(1))
    assert largest == max(map(float, stages.values())) < 0.75 * chip_gib
    # Four models of 1.3B / 6.7B params in float32 are 21 / 107 GB: the dry run
    # never materialised one (shapes only), it stayed a small process.
    assert rss_mib < 1500, rss_mib


def test_pod_dry_run_follows_the_mesh_override():
    # v5e-64: 64 chips of 16 GiB, fsdp over all of them.
    stdout, _ = dry_run("stiennon_tldr_6b7_pod", "--config.parallel.num_devices=64",
                        "--config.parallel.fsdp=64")
    assert "mesh data=1 x fsdp=64" in stdout
    assert peak_gib(stdout) < 16
    assert '"mesh": {\n    "data": 1,\n    "fsdp": 64\n  }' in stdout

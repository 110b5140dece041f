"""The README's `:runlocal` command gives the pinned numbers.

Runs `python launch.py --config=configs/mock_sentiment.py:runlocal` exactly as
the README does (one CPU device) and compares its eval.json with
`tests/pinned/mock_sentiment_runlocal.json`, recorded with the versions in
constraints.txt. Any change of behaviour (sampling, a loss, the data, the
gold) moves these numbers far beyond the tolerance; float noise does not.
With other jax/XLA versions or another CPU the numbers can differ (README,
"Reproducibility"): regenerate with RLHF_JAX_UPDATE_PINS=1 only when a change
of behaviour is intended, and say so in the commit.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINS = os.path.join(ROOT, "tests", "pinned", "mock_sentiment_runlocal.json")
TOLERANCE = 5e-3


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
    if os.environ.get("RLHF_JAX_UPDATE_PINS") == "1":
        with open(PINS, "w") as f:
            json.dump(got, f, indent=1, sort_keys=True)
            f.write("\n")
    with open(PINS) as f:
        pinned = json.load(f)
    assert sorted(got) == sorted(pinned)
    for name, values in pinned.items():
        assert sorted(got[name]) == sorted(values), name
        for key, value in values.items():
            assert got[name][key] == pytest.approx(value, abs=TOLERANCE), (name, key)

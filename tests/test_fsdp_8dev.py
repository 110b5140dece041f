"""FSDP on 8 simulated CPU devices: the PPO update on 4 x 2 and 1 x 8 meshes equals the
one-device update of the whole batch (which pmap equals: tests/test_fsdp.py).

conftest pins 4 devices for this process, so `tests/fsdp_8dev_worker.py` runs
in a subprocess with its own `XLA_FLAGS`.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ppo_update_on_eight_devices_equals_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "tests.fsdp_8dev_worker"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    assert out["moved"] > 1e-3  # the update changed the params: the comparison has teeth
    for f, mesh in ((2, {"data": 4, "fsdp": 2}), (8, {"data": 1, "fsdp": 8})):
        got = out[f"fsdp{f}"]
        assert got["mesh"] == mesh
        assert got["params"] < 2e-6, got
        assert got["stats"] < 1e-5, got
        # c_fc's [16, 64] kernel, split along its 64 columns into f slices.
        assert got["kernel"] == [16, 64]
        assert got["kernel_shards"] == [repr([16, 64 // f])]

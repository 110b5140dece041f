"""Multi-host: two processes (gloo CPU collectives, 2 devices each) match one process with 4.

`tests/multihost_worker.py` runs a few PPO updates of a tiny model on a
synthetic token reward with `DataParallel("mesh")` over every global device.
Two copies of it join through `parallel.initialize_distributed()` on
127.0.0.1, each placing its half of every global batch; the test process
runs the same function on its own 4 simulated devices. Final params and every
logged metric agree within 1e-5.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import multihost_worker  # noqa: E402

WORKER_TIMEOUT_S = 600  # cold compiles on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(out_path, log_dir, num_processes=2):
    port = free_port()
    procs = []
    for i in range(num_processes):
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
               "JAX_NUM_PROCESSES": str(num_processes), "JAX_PROCESS_ID": str(i)}
        log = open(os.path.join(log_dir, f"worker{i}.log"), "w")
        procs.append((subprocess.Popen(
            [sys.executable, os.path.join(HERE, "multihost_worker.py"), str(out_path)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return procs


def read_logs(log_dir, n=2) -> str:
    out = []
    for i in range(n):
        with open(os.path.join(log_dir, f"worker{i}.log"), errors="replace") as f:
            out.append(f"--- worker {i} ---\n" + f.read()[-3000:])
    return "\n".join(out)


def test_two_processes_match_one_process(tmp_path):
    out_path = tmp_path / "process0.npz"
    procs = start_workers(out_path, tmp_path)
    try:
        # The single-process run, on this process' 4 devices, while the workers run.
        single = multihost_worker.run_ppo()
        for proc, _ in procs:
            try:
                proc.wait(WORKER_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail("multi-host worker timed out:\n" + read_logs(tmp_path))
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            log.close()
    logs = read_logs(tmp_path)
    assert [p.returncode for p, _ in procs] == [0, 0], logs
    # Really one 4-device job: each process saw 2 local of 4 global devices.
    for i in range(2):
        assert f"process {i}/2: 2 local of 4 devices" in logs, logs

    multi = dict(np.load(out_path))
    assert sorted(multi) == sorted(single)
    np.testing.assert_array_equal(multi["metric/step"], [1, 2, 3])
    for key in sorted(single):
        if key == "metric/elapsed/fps":  # wall clock
            continue
        np.testing.assert_allclose(multi[key], single[key], rtol=0, atol=1e-5, err_msg=key)
    # Not vacuous: the reward varied and the policy moved away from the reference.
    assert single["metric/objective/score"].std() > 0
    assert abs(single["metric/objective/kl"][-1]) > 1e-3

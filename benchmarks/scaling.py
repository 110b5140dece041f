"""PPO update weak scaling over 1, 2, 4 and 8 simulated CPU devices (FSDP mesh).

The PPO update step (`ppo.make_update_step`, Stiennon's separate value
network, 2 epochs x 2 minibatches) with a fixed batch per device, so the
global batch grows with the device count. Each device count runs in its own
process with `XLA_FLAGS=--xla_force_host_platform_device_count=N` on a
`DataParallel("mesh", N, fsdp=...)`: `--layout fsdp` (default) splits the
params and Adam state over every device (a 1 x N mesh), `--layout data`
replicates them (N x 1), `--layout both` runs the two. The step is compiled
and run once before timing; then `--updates` updates are timed.

Printed: per device count, the mesh, episodes per second, and the ratio to
the 1-device run (ideal weak scaling: the device count), with wall and
process CPU seconds and episodes per CPU second. Simulated devices share the
host's cores, so on a CPU the ratio shows that the pattern runs and what its
collectives and splitting cost (episodes per CPU second), not the speedup of
real chips.

    python benchmarks/scaling.py                  # GPT-2 shape d=256, 4 layers: a few minutes
    python benchmarks/scaling.py --small          # d=64, 2 layers: about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args) -> dict:
    """One device count: compile, warm up, time `args.updates` updates. Runs in its own process."""
    import jax
    import ml_collections
    import numpy as np

    sys.path.insert(0, ROOT)
    from rlhf_jax.algorithms.ppo import Rollout, make_update_step
    from rlhf_jax.infra import parallel
    from rlhf_jax.models import GPT2Config, GPT2LMHeadModel
    from rlhf_jax.models.heads import ValueModel
    from rlhf_jax.stages.rollout import PPOModels
    from rlhf_jax.stages.train_ppo import hparams, init_state, make_optimizer

    n = jax.device_count()
    batch = args.per_device * n
    q, r, vocab = args.query, args.response, args.vocab
    cfg = ml_collections.ConfigDict(dict(
        seed=0, task=dict(temperature=0.7),
        ppo=dict(batch_size=batch, nminibatches=2, noptepochs=2, lr=1e-5, adam="tf",
                 adam_eps=1e-5, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0,
                 lam=0.95, whiten_rewards=True, whiten_scope="global",
                 total_episodes=batch * 1000),
        kl=dict(coef=0.05, adaptive=False, target=6.0, horizon=10000)))
    config = GPT2Config(vocab_size=vocab, n_positions=q + r, n_embd=args.d, n_layer=args.layers,
                        n_head=args.d // 64)
    lm, value = GPT2LMHeadModel(config), ValueModel(config)
    models = PPOModels(policy=lm, reference=lm, value=value)
    dp = parallel.DataParallel("mesh", n, fsdp=n if args.layout == "fsdp" else 1)
    optimizer = make_optimizer(cfg.ppo)
    step = dp.compile(make_update_step(models.apply_policy_value, optimizer, hparams(cfg),
                                       dp.batch_axes),
                      (parallel.REP, parallel.SHARD), (parallel.REP, parallel.REP),
                      donate_argnums=(0,))
    ids = np.zeros((1, 2), np.int32)

    def init(key):
        k1, k2 = jax.random.split(key)
        params = {"policy": lm.init(k1, ids)["params"], "value": value.init(k2, ids)["params"]}
        return init_state(params, optimizer, cfg)

    state = dp.init(init, jax.random.key(0))
    rng = np.random.default_rng(0)
    ro = dp.shard(Rollout(
        query_BxQ=rng.integers(0, vocab, (batch, q)).astype(np.int32),
        query_mask_BxQ=np.ones((batch, q), np.int32),
        response_BxR=rng.integers(0, vocab, (batch, r)).astype(np.int32),
        response_mask_BxR=np.ones((batch, r), np.int32),
        logprobs_BxR=-rng.uniform(1, 5, (batch, r)).astype(np.float32),
        ref_logprobs_BxR=-rng.uniform(1, 5, (batch, r)).astype(np.float32),
        values_BxR=rng.normal(0, 1, (batch, r)).astype(np.float32),
        scores_B=rng.normal(0, 1, batch).astype(np.float32),
        score_index_B=np.full((batch,), r - 1, np.int32)))
    t0 = time.perf_counter()
    state, stats = step(state, ro)  # compile + first run
    jax.block_until_ready(stats)
    compile_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.updates):
        state, stats = step(state, ro)
    jax.block_until_ready((state, stats))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"devices": n, "mesh": dict(dp.mesh.shape), "batch": batch,
            "episodes_per_s": batch * args.updates / wall, "wall_s": wall, "cpu_s": cpu,
            "compile_s": compile_s, "loss": float(stats["ppo/loss/total"])}


def run_in_subprocess(args, devices: int, layout: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    argv = [sys.executable, os.path.abspath(__file__), "--worker", "--layout", layout,
            "--per_device", str(args.per_device), "--updates", str(args.updates),
            "--d", str(args.d), "--layers", str(args.layers), "--vocab", str(args.vocab),
            "--query", str(args.query), "--response", str(args.response)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{devices} devices ({layout}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,2,4,8", help="comma list of device counts")
    parser.add_argument("--layout", default="fsdp", choices=("fsdp", "data", "both"))
    parser.add_argument("--per_device", type=int, default=8, help="episodes per device")
    parser.add_argument("--updates", type=int, default=5, help="timed updates")
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--query", type=int, default=64)
    parser.add_argument("--response", type=int, default=24)
    parser.add_argument("--small", action="store_true", help="d=64, 2 layers, vocab 512")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.small:
        args.d, args.layers, args.vocab = 64, 2, 512
    if args.worker:
        print(json.dumps(worker(args)))
        return
    layouts = ("fsdp", "data") if args.layout == "both" else (args.layout,)
    print(f"PPO update, separate value net, GPT-2 d={args.d} x {args.layers} layers, vocab "
          f"{args.vocab}, query {args.query} + response {args.response}, {args.per_device} "
          f"episodes per device, 2 epochs x 2 minibatches, {args.updates} timed updates; "
          f"host: {os.cpu_count()} CPU cores shared by the simulated devices")
    print(f"{'layout':<7}{'devices':>8}{'mesh (data x fsdp)':>20}{'batch':>7}{'episodes/s':>12}"
          f"{'vs 1 device':>13}{'ideal':>7}{'wall s':>8}{'CPU s':>8}{'episodes/CPU s':>16}"
          f"{'compile s':>11}")
    for layout in layouts:
        base = None
        for n in (int(x) for x in args.devices.split(",")):
            res = run_in_subprocess(args, n, layout)
            base = base or res["episodes_per_s"]
            mesh = f"{res['mesh']['data']} x {res['mesh']['fsdp']}"
            print(f"{layout:<7}{n:>8}{mesh:>20}{res['batch']:>7}{res['episodes_per_s']:>12.1f}"
                  f"{res['episodes_per_s'] / base:>12.2f}x{n:>6}x{res['wall_s']:>8.1f}"
                  f"{res['cpu_s']:>8.1f}{res['batch'] * args.updates / res['cpu_s']:>16.1f}"
                  f"{res['compile_s']:>11.1f}", flush=True)


if __name__ == "__main__":
    main()

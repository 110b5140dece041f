"""Worker for `tests/test_fsdp_8dev.py`: the PPO update on 8 simulated CPU devices.

Run as `python -m tests.fsdp_8dev_worker` with
`XLA_FLAGS=--xla_force_host_platform_device_count=8` (conftest pins 4 in the
test process). The update of `tests/test_fsdp.py` runs on one device over the
whole batch (no mapped axis: the ground truth `pmap` matches in
`tests/test_fsdp.py`) and on the mesh with fsdp 2 (a 4 x 2 mesh) and 8
(1 x 8); prints one JSON line: per layout, the largest deviation from the
one-device update in params and stats, and the shapes of one split kernel's
shards.
"""

import json

import jax
import numpy as np

from rlhf_jax.algorithms.ppo import make_update_step
from rlhf_jax.infra import parallel
from rlhf_jax.models import GPT2LMHeadModel
from rlhf_jax.models.heads import ValueModel
from rlhf_jax.stages.rollout import PPOModels
from rlhf_jax.stages.train_ppo import hparams, init_state, make_optimizer
from tests.test_fsdp import ppo_config, synthetic_rollout
from tests.test_rollout import CONFIG, random_params


def main():
    assert jax.device_count() == 8, jax.devices()
    lm, value = GPT2LMHeadModel(CONFIG), ValueModel(CONFIG)
    models = PPOModels(policy=lm, reference=lm, value=value)
    params = {"policy": random_params(lm, seed=1), "value": random_params(value, seed=2, std=0.05)}
    cfg = ppo_config()
    optimizer = make_optimizer(cfg.ppo)
    ro = synthetic_rollout()

    def run(dp):
        step = dp.compile(make_update_step(models.apply_policy_value, optimizer, hparams(cfg),
                                           dp.batch_axes),
                          (parallel.REP, parallel.SHARD), (parallel.REP, parallel.REP),
                          donate_argnums=(0,))
        state = dp.init(lambda p: init_state(p, optimizer, cfg), dp.replicate(params))
        state, stats = step(state, dp.shard(ro))
        return state.params, stats

    whole = jax.jit(make_update_step(models.apply_policy_value, optimizer, hparams(cfg), None))
    ref_state, ref_stats = whole(init_state(params, optimizer, cfg), ro)
    ref_params, ref_stats = jax.device_get((ref_state.params, ref_stats))
    out = {}
    for f in (2, 8):
        params_f, stats_f = run(parallel.DataParallel("mesh", 8, fsdp=f))
        kernel = params_f["policy"]["transformer"]["h_0"]["mlp"]["c_fc"]["kernel"]
        host_params, host_stats = jax.device_get((params_f, stats_f))
        out[f"fsdp{f}"] = {
            "params": max(float(np.abs(a - b).max()) for a, b in zip(
                jax.tree.leaves(host_params), jax.tree.leaves(ref_params))),
            "stats": max(abs(float(host_stats[k]) - float(ref_stats[k])) for k in ref_stats),
            "kernel": list(kernel.shape),
            "kernel_shards": sorted({list(s.data.shape).__repr__()
                                     for s in kernel.addressable_shards}),
            "mesh": dict(parallel.DataParallel("mesh", 8, fsdp=f).mesh.shape),
        }
    out["moved"] = max(float(np.abs(a - np.asarray(b)).max()) for a, b in zip(
        jax.tree.leaves(ref_params), jax.tree.leaves(params)))
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()

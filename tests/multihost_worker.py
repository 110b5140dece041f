"""A few PPO updates on a tiny model, data-parallel over a mesh; single- or multi-process.

`tests/test_multihost.py` runs this file as two processes on 127.0.0.1 (gloo
CPU collectives, 2 simulated devices each) and compares process 0's result
with `run_ppo()` called in the test process itself (one process, 4 devices).
Both see the same 4-device mesh: process 0 owns the first half of every
global batch, process 1 the second.

    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \
        XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python tests/multihost_worker.py OUT.npz

Only process 0 writes OUT.npz: the final params (flattened, keyed by path)
and every logged PPO metric as `metric/<name>` arrays over updates.
"""

from __future__ import annotations

import os
import sys

# Runnable as a script from any directory: the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VOCAB, QUERY_LEN, RESPONSE_LEN, TARGET_TOKEN = 16, 4, 6, 3
BATCH, UPDATES = 16, 3


def ppo_config():
    """A tiny, complete PPO config (the groups `PPOTrainer` reads)."""
    import ml_collections

    return ml_collections.ConfigDict(dict(
        seed=0,
        task=dict(response_length=RESPONSE_LEN, temperature=1.0, pad_token=VOCAB,
                  truncate_token=None, truncate_after=0, penalty_reward_value=None,
                  eos_token=None, stop_at_eos=False),
        ppo=dict(batch_size=BATCH, nminibatches=2, noptepochs=2, lr=3e-3, adam="tf",
                 adam_eps=1e-5, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0,
                 lam=0.95, whiten_rewards=True, whiten_scope="global",
                 total_episodes=BATCH * UPDATES, reward_source="gold", log_every=1,
                 checkpoint_every=100, num_logged_samples=2, algo="ppo",
                 token_reward_coef=0.0),
        kl=dict(coef=0.05, adaptive=True, target=2.0, horizon=100)))


class SyntheticQueries:
    """Query batch `i` is a pure function of `i` (the same on every process)."""

    def batch(self, index, batch_size):
        import numpy as np

        rng = np.random.default_rng(index)
        q_BxQ = rng.integers(0, VOCAB, (batch_size, QUERY_LEN)).astype(np.int32)
        return q_BxQ, np.ones_like(q_BxQ)


def token_reward(query_BxQ, query_mask_BxQ, response_BxR):
    """The synthetic gold reward: the fraction of response tokens equal to TARGET_TOKEN."""
    import numpy as np

    del query_BxQ, query_mask_BxQ
    return (np.asarray(response_BxR) == TARGET_TOKEN).mean(1)


def run_ppo() -> dict:
    """Runs UPDATES PPO updates in mesh mode over every (global) device.

    Returns host numpy arrays: `param/<path>` for each final parameter and
    `metric/<name>` for each logged metric, stacked over updates.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rlhf_jax.infra import parallel
    from rlhf_jax.models import GPT2Config, GPT2LMHeadModel
    from rlhf_jax.models.heads import PolicyWithValueHead
    from rlhf_jax.stages.rollout import PPOModels
    from rlhf_jax.stages.train_ppo import PPOTrainer

    gpt2 = GPT2Config(vocab_size=VOCAB, n_positions=QUERY_LEN + RESPONSE_LEN, n_embd=16,
                      n_layer=1, n_head=2)
    ids = jnp.zeros((1, 4), jnp.int32)
    # Jitted inits: one compile each instead of hundreds of eager dispatches.
    lm = GPT2LMHeadModel(gpt2)
    lm_params = jax.jit(lm.init)(jax.random.key(0), ids)["params"]
    policy = PolicyWithValueHead(gpt2)
    pv_params = jax.jit(policy.init)(jax.random.key(1), ids)["params"]
    pv_params = {**pv_params, "transformer": lm_params["transformer"]}
    dp = parallel.DataParallel("mesh")
    trainer = PPOTrainer(ppo_config(), PPOModels(policy=policy, reference=lm), dp)
    params, summary = trainer.train(params={"policy": pv_params}, ref_params=lm_params,
                                    rm_params=None, queries=SyntheticQueries(), workdir=None,
                                    gold_fn=token_reward)
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        out["param/" + jax.tree_util.keystr(path)] = np.asarray(leaf)
    history = summary["history"]
    for name in history[0]:
        out["metric/" + name] = np.asarray([row[name] for row in history], np.float64)
    return out


def main(argv) -> None:
    if len(argv) != 2:
        raise SystemExit(f"usage: {argv[0]} OUT.npz")
    import jax

    # CPU collectives across processes (the default CPU backend has none).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from rlhf_jax.infra import parallel

    parallel.initialize_distributed()
    print(f"process {jax.process_index()}/{jax.process_count()}: "
          f"{jax.local_device_count()} local of {jax.device_count()} devices", flush=True)
    out = run_ppo()
    if jax.process_index() == 0:
        import numpy as np

        tmp = argv[1] + ".tmp.npz"
        np.savez(tmp, **out)
        os.replace(tmp, argv[1])
    print(f"process {jax.process_index()}: done", flush=True)


if __name__ == "__main__":
    main(sys.argv)

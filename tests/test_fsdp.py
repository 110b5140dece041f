"""FSDP over a ("data", "fsdp") mesh (`rlhf_jax.infra.fsdp`, `DataParallel(mode="mesh", fsdp=F)`).

The PPO update on 4 simulated devices: `pmap` (params replicated) against the
mesh with the params and Adam state split 2 and 4 ways. One synthetic
Stiennon-style rollout (separate value network, EOS masks that give the
shards unequal token counts, two epochs of two minibatches) goes through
each; the results agree to float noise, and the state really is split.
`tests/test_fsdp_reward.py` does the same for the reward-model step,
`tests/test_fsdp_8dev.py` on 8 devices.
"""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rlhf_jax import config_check, config_lib
from rlhf_jax.algorithms.ppo import Rollout, make_update_step
from rlhf_jax.infra import fsdp, parallel
from rlhf_jax.models import GPT2LMHeadModel
from rlhf_jax.models.heads import ValueModel
from rlhf_jax.stages.rollout import PPOModels
from rlhf_jax.stages.train_ppo import hparams, init_state, make_optimizer
from tests.test_rollout import CONFIG, Q, R, V, random_params

B = 16
REP, SHARD = parallel.REP, parallel.SHARD


def ppo_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        seed=0, task=dict(temperature=0.7),
        ppo=dict(batch_size=B, nminibatches=2, noptepochs=2, lr=3e-3, adam="tf", adam_eps=1e-5,
                 cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95,
                 whiten_rewards=True, whiten_scope="global", total_episodes=B * 4,
                 algo="ppo"),
        kl=dict(coef=0.05, adaptive=True, target=2.0, horizon=640)))


def synthetic_rollout(seed: int = 0) -> Rollout:
    """Host arrays: left-padded queries, responses stopped at a random EOS (masked after)."""
    rng = np.random.default_rng(seed)
    qlen_B = rng.integers(1, Q + 1, B)
    query_mask = (np.arange(Q)[None] >= Q - qlen_B[:, None]).astype(np.int32)
    rlen_B = rng.integers(1, R + 1, B)
    resp_mask = (np.arange(R)[None] < rlen_B[:, None]).astype(np.int32)
    logp = -rng.uniform(0.5, 3.0, (B, R)).astype(np.float32)
    return Rollout(
        query_BxQ=rng.integers(0, V, (B, Q)).astype(np.int32) * query_mask,
        query_mask_BxQ=query_mask, response_BxR=rng.integers(0, V, (B, R)).astype(np.int32),
        response_mask_BxR=resp_mask, logprobs_BxR=logp * resp_mask,
        ref_logprobs_BxR=(logp + rng.normal(0, 0.3, (B, R)).astype(np.float32)) * resp_mask,
        values_BxR=rng.normal(0, 1, (B, R)).astype(np.float32),
        scores_B=rng.normal(0, 1, B).astype(np.float32),
        score_index_B=(rlen_B - 1).astype(np.int32))


@pytest.fixture(scope="module")
def problem():
    lm, value = GPT2LMHeadModel(CONFIG), ValueModel(CONFIG)
    models = PPOModels(policy=lm, reference=lm, value=value)
    params = {"policy": random_params(lm, seed=1), "value": random_params(value, seed=2, std=0.05)}
    cfg = ppo_config()
    optimizer = make_optimizer(cfg.ppo)
    return models, params, cfg, optimizer, synthetic_rollout()


def compiled_update(dp, problem):
    models, _, cfg, optimizer, _ = problem
    step = make_update_step(models.apply_policy_value, optimizer, hparams(cfg), dp.batch_axes)
    return dp.compile(step, (REP, SHARD), (REP, REP), donate_argnums=(0,))


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def pmap_result(problem):
    _, params, cfg, optimizer, ro = problem
    dp = parallel.DataParallel("pmap", 4)
    state, stats = compiled_update(dp, problem)(dp.replicate(init_state(params, optimizer, cfg)),
                                                dp.shard(ro))
    state = dp.unreplicate(state)
    return host((state.params, state.opt_state, state.kl)), host(dp.unreplicate(stats))


@pytest.mark.parametrize("f", [2, 4])
def test_ppo_update_with_fsdp_equals_pmap(problem, pmap_result, f):
    _, params, cfg, optimizer, ro = problem
    dp = parallel.DataParallel("mesh", 4, fsdp=f)
    assert dict(dp.mesh.shape) == {"data": 4 // f, "fsdp": f}
    # Params placed split, the optimizer state created split (jit with out_shardings).
    state = dp.init(lambda p: init_state(p, optimizer, cfg), dp.replicate(params))
    given = jax.tree.leaves(state.params)
    new_state, stats = compiled_update(dp, problem)(state, dp.shard(ro))

    (ref_params, ref_opt_state, ref_kl), ref_stats = pmap_result
    chex.assert_trees_all_close(host(new_state.params), ref_params, atol=2e-6, rtol=0)
    chex.assert_trees_all_close(host(new_state.opt_state), ref_opt_state, atol=2e-6, rtol=0)
    assert stats.keys() == ref_stats.keys()
    for k in stats:
        np.testing.assert_allclose(np.asarray(stats[k]), ref_stats[k], atol=1e-5, rtol=0,
                                   err_msg=k)
    assert float(new_state.kl.coef) == pytest.approx(float(ref_kl.coef), rel=1e-6)
    # The update moved the params (the comparison has teeth).
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), host(new_state.params), host(params))
    assert max(jax.tree.leaves(moved)) > 1e-3

    # The state stays split: the params and both Adam moments (every non-scalar
    # leaf of the optimizer state; its step count is replicated), as they came in.
    moments = [x for x in jax.tree.leaves(new_state.opt_state) if x.ndim]
    assert len(moments) == 2 * len(given)
    for tree in (new_state.params, moments):
        split = 0
        for x in jax.tree.leaves(tree):
            d = fsdp.shard_dim(x.shape, x.dtype, f)
            shard_shape = list(x.shape)
            if d is None:  # the value head's [1] bias: nothing to split
                assert x.sharding.spec == P() and x.size == 1
            else:
                assert x.sharding.spec == P(*([None] * d), "fsdp")
                shard_shape[d] //= f
                split += 1
            assert {s.data.shape for s in x.addressable_shards} == {tuple(shard_shape)}
        copies = len(jax.tree.leaves(tree)) // len(given)  # params 1, moments 2
        assert split == copies * (len(given) - 1)
    # The state was donated: the step reused its buffers.
    assert all(x.is_deleted() for x in given)


def test_placement_splits_the_largest_divisible_dimension():
    dp = parallel.DataParallel("mesh", 4, fsdp=4)
    tree = {"kernel": np.arange(8 * 12, dtype=np.float32).reshape(8, 12),
            "odd": np.ones((5, 3), np.float32),  # nothing divides by 4: replicated
            "bias": np.ones((4,), np.float32), "scalar": np.float32(2.0),
            "count": np.zeros((8,), np.int32), "key": jax.random.key(0)}
    placed = dp.replicate(tree)
    assert placed["kernel"].sharding.spec == P(None, "fsdp")  # 12 > 8
    assert [s.data.shape for s in placed["kernel"].addressable_shards] == [(8, 3)] * 4
    # The four devices hold the four column blocks of the kernel, in order.
    by_device = {s.device: np.asarray(s.data) for s in placed["kernel"].addressable_shards}
    blocks = [by_device[d] for d in dp.mesh.devices.flat]
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), tree["kernel"])
    assert placed["bias"].sharding.spec == P("fsdp")
    for name in ("odd", "scalar", "count", "key"):  # replicated, whole on every device
        assert placed[name].sharding.spec == P(), name
    assert fsdp.shard_dim((50257, 768), jnp.float32, 4) == 1  # GPT-2's vocabulary: split its width
    assert fsdp.shard_dim((1024, 768), jnp.float32, 4) == 0
    assert fsdp.shard_dim((768, 768), jnp.bfloat16, 4) == 0  # ties: the first
    assert fsdp.shard_dim((768, 3072), jnp.float32, 1) is None  # fsdp=1: nothing split


def test_model_init_is_created_split():
    dp = parallel.DataParallel("mesh", 4, fsdp=2)
    model = GPT2LMHeadModel(CONFIG)

    def init(key):
        return model.init(key, jnp.zeros((1, 2), jnp.int32))["params"]

    params = dp.init(init, jax.random.key(3))
    wte = params["transformer"]["wte"]["embedding"]  # [16, 16]: split along dim 0
    assert wte.sharding.spec == P("fsdp")
    assert {s.data.shape for s in wte.addressable_shards} == {(8, 16)}
    chex.assert_trees_all_close(host(params), host(jax.jit(init)(jax.random.key(3))), atol=1e-7)


@pytest.mark.parametrize("mode,f", [("pmap", 1), ("mesh", 2)])
def test_host_and_step_layouts_without_asking_the_mode(mode, f):
    # What a trainer does in either backend: init in the host layout, hand it to
    # the steps (no copy on a mesh), read it back, lower against step shapes.
    dp = parallel.DataParallel(mode, 4, fsdp=f)
    w = np.arange(16.0, dtype=np.float32).reshape(4, 4)
    state = dp.init(lambda p: {"w": p * 2.0, "n": jnp.zeros((), jnp.int32)}, w)
    step_state = dp.replicate(state, reuse=True)
    if mode == "mesh":  # handed over: the very buffers, split along fsdp
        assert step_state["w"] is state["w"] and step_state["w"].sharding.spec == P("fsdp")
        assert dp.replicate(state)["w"] is not state["w"]  # the default copies
        assert dp.placed_shapes(state)["w"].sharding == state["w"].sharding
    else:  # a leading device axis; the host layout has no placement to restore into
        assert step_state["w"].shape == (4, 4, 4)
        assert dp.placed_shapes(state) is state
    np.testing.assert_array_equal(np.asarray(dp.unreplicate(step_state)["w"]), 2 * w)

    def total(st, rows_Bx2):
        return st, parallel.psum(jnp.sum(rows_Bx2))

    step = dp.compile(total, (REP, SHARD), (REP, REP))
    rows = np.ones((8, 2), np.float32)
    shapes = (dp.step_shapes(jax.eval_shape(lambda: state), REP),
              dp.step_shapes(jax.ShapeDtypeStruct((8, 2), jnp.float32), SHARD))
    assert step.lower(*shapes) is not None
    _, out = step(step_state, dp.shard(rows))
    assert float(np.asarray(dp.unreplicate(out))) == 16.0
    with pytest.raises(ValueError, match=r"parallel\.mode='other' but the DataParallel given "
                                         f"runs in mode '{mode}'"):
        dp.check_config(ml_collections.ConfigDict({"parallel": {"mode": "other"}}))


def test_batch_rows_follow_the_step_axis_index():
    # Row i of the global batch lives on the device whose row-major index over
    # ("data", "fsdp") is i // rows-per-device: what the steps' global row offsets assume.
    dp = parallel.DataParallel("mesh", 4, fsdp=2)

    def offsets(rows_Bx1):
        return rows_Bx1 - parallel.global_row_offset(rows_Bx1.shape[0])

    step = dp.compile(offsets, (SHARD,), SHARD)
    rows = np.arange(8, dtype=np.int32)[:, None]
    np.testing.assert_array_equal(np.asarray(step(dp.shard(rows)))[:, 0], [0, 1] * 4)


@pytest.mark.parametrize("mode,devices,f,message", [
    ("pmap", 4, 2, r"parallel\.fsdp=2 shards params over a mesh: it needs parallel\.mode='mesh'"),
    ("mesh", 4, 3, r"parallel\.fsdp=3 does not divide the device count 4"),
    ("mesh", 4, 0, r"parallel\.fsdp=0 must be an int >= 1"),
])
def test_data_parallel_refuses_an_impossible_mesh(mode, devices, f, message):
    with pytest.raises(ValueError, match=message):
        parallel.DataParallel(mode, devices, fsdp=f)


@pytest.mark.parametrize("overrides,message", [
    ({"parallel.fsdp": 2}, r"parallel\.fsdp=2 shards params over a mesh"),
    ({"parallel.mode": "mesh", "parallel.fsdp": 3}, r"parallel\.fsdp=3 does not divide"),
    ({"model.kv_cache_dtype": "float16"}, r"model\.kv_cache_dtype='float16'"),
    ({"model.param_dtype": "int8"}, r"model\.param_dtype='int8'"),
])
def test_resolve_names_the_parallel_and_precision_fields(overrides, message):
    c = config_lib.base_config()
    c.stages = "ppo"
    for dotted, value in overrides.items():
        group, name = dotted.split(".")
        c[group][name] = value
    with pytest.raises(ValueError, match=message):
        config_check.resolve(c, 4)
    c.parallel.mode, c.parallel.fsdp = "mesh", 2
    c.model.kv_cache_dtype, c.model.param_dtype = "bfloat16", "float32"
    assert config_check.resolve(c, 4)["mesh"] == {"data": 2, "fsdp": 2}

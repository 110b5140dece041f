"""Precision options: a bfloat16 KV cache, and bfloat16 compute over float32 master weights.

- `GPT2Config.kv_cache_dtype` (config `model.kv_cache_dtype`) stores the
  sampler's keys and values in bfloat16 under float32 compute: half the
  cache, and samples and logprobs that match the float32 cache to bf16
  rounding.
- `model.dtype="bfloat16"` with `model.param_dtype="float32"`: the PPO update
  keeps float32 params and Adam moments and moves them the way the float32
  update does.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import config_lib
from rlhf_jax.algorithms.ppo import make_update_step
from rlhf_jax.algorithms.sampling import sample
from rlhf_jax.models import GPT2LMHeadModel, init_cache, loading
from rlhf_jax.models.heads import ValueModel
from rlhf_jax.stages.rollout import PPOModels
from rlhf_jax.stages.train_ppo import hparams, init_state, make_optimizer
from tests.test_fsdp import ppo_config, synthetic_rollout
from tests.test_rollout import CONFIG, Q, R, V, random_params, random_queries


def test_cache_dtype_follows_the_config():
    cache = init_cache(CONFIG.replace(kv_cache_dtype=jnp.bfloat16), 4, Q + R)
    assert {x.dtype for x in jax.tree.leaves(cache)} == {jnp.dtype(jnp.bfloat16)}
    f32 = init_cache(CONFIG, 4, Q + R)
    assert {x.dtype for x in jax.tree.leaves(f32)} == {jnp.dtype(jnp.float32)}
    nbytes = lambda c: sum(x.nbytes for x in jax.tree.leaves(c))  # noqa: E731
    assert 2 * nbytes(cache) == nbytes(f32)
    # An explicit dtype wins over the config's.
    assert init_cache(CONFIG.replace(kv_cache_dtype=jnp.bfloat16), 1, 2,
                      jnp.float32)["h_0"]["k"].dtype == jnp.float32
    # The pipeline builds its models with `model.kv_cache_dtype`.
    c = config_lib.base_config()
    c.model.kv_cache_dtype = "bfloat16"
    assert loading.model_config(c, 16).kv_cache_dtype == jnp.bfloat16
    c.model.kv_cache_dtype = ""
    assert loading.model_config(c, 16).kv_cache_dtype is None


def test_bf16_kv_cache_samples_like_the_f32_cache():
    params = random_params(GPT2LMHeadModel(CONFIG), seed=0, std=0.3)
    query_BxQ, mask_BxQ = random_queries(0, 64)
    out = {}
    for name, config in (("f32", CONFIG), ("bf16", CONFIG.replace(kv_cache_dtype=jnp.bfloat16))):
        out[name] = sample(GPT2LMHeadModel(config), params, query_BxQ, mask_BxQ,
                           jax.random.key(1), response_length=R, temperature=0.7)
    tokens_f32, tokens_bf16 = np.asarray(out["f32"].tokens), np.asarray(out["bf16"].tokens)
    # The same keys draw the same tokens unless rounding moves a draw across a
    # category boundary; a row's logprobs then differ by bf16 rounding only.
    assert (tokens_f32 == tokens_bf16).mean() > 0.95
    same_row = (tokens_f32 == tokens_bf16).all(axis=1)
    assert same_row.sum() >= 48
    diff = np.abs(np.asarray(out["f32"].logprobs) - np.asarray(out["bf16"].logprobs))[same_row]
    assert 0 < diff.max() < 0.05  # rounded (not identical), but only to bf16 precision
    assert np.all(tokens_bf16 < V)


@pytest.fixture(scope="module")
def updates():
    """One PPO update (one device, whole batch) with float32 and with bfloat16 compute."""
    cfg = ppo_config()
    optimizer = make_optimizer(cfg.ppo)
    params = {"policy": random_params(GPT2LMHeadModel(CONFIG), seed=1),
              "value": random_params(ValueModel(CONFIG), seed=2, std=0.05)}
    ro = jax.tree.map(jnp.asarray, synthetic_rollout())
    out = {}
    for name, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
        config = CONFIG.replace(dtype=dtype, param_dtype=jnp.float32)
        lm, value = GPT2LMHeadModel(config), ValueModel(config)
        models = PPOModels(policy=lm, reference=lm, value=value)
        step = jax.jit(make_update_step(models.apply_policy_value, optimizer, hparams(cfg), None))
        out[name] = step(init_state(params, optimizer, cfg), ro)[0]
    return params, out


def test_bf16_compute_keeps_float32_master_weights(updates):
    params, out = updates
    for state in out.values():
        assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
        moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
        assert {x.dtype for x in moments} == {jnp.dtype(jnp.float32)}
    # Both moved the params the same way (bf16 rounding perturbs the gradients,
    # and Adam rescales each coordinate, so compare directions).
    flat = lambda tree: np.concatenate(  # noqa: E731
        [np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])
    delta_f32 = flat(out["f32"].params) - flat(params)
    delta_bf16 = flat(out["bf16"].params) - flat(params)
    cos = delta_f32 @ delta_bf16 / np.linalg.norm(delta_f32) / np.linalg.norm(delta_bf16)
    assert np.linalg.norm(delta_f32) > 1e-2
    assert cos > 0.9, cos
    assert not np.array_equal(delta_f32, delta_bf16)  # bf16 compute did run

"""Scalar heads: reward model, shared policy+value, value network from the reward model.

Trunks reuse `tiny_pair`'s transformer params, whose logits `test_gpt2.py`
pins to transformers', so a head's output can be worked out here from the
trunk's hidden states by hand.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import GPT2Config
from rlhf_jax.models.heads import PolicyWithValueHead, RewardModel, ValueModel, value_params_from_reward
from tests.hf_fixtures import left_padded_batch, tiny_pair

V = 97
GAIN, BIAS, HEAD_BIAS = 2.5, -0.75, 0.3


def _batch():
    ids, mask = left_padded_batch(V, [9, 6, 9, 4], 9, seed=7)
    return jnp.asarray(ids), jnp.asarray(mask)


def _reward_head_only(rm, h_BxD):
    return rm.reward_head(h_BxD)


def _scalar_mix_only(rm, hidden_states):
    return rm.scalar_mix(hidden_states)


def _value_head_only(policy, h_BxD):
    return policy.value_head(h_BxD)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_part(module, method, seed, *args):
    """The module's own init of what `method` touches (a head), without the trunk's.

    Initialising a whole GPT-2 compiles its random initialisers, which costs
    several seconds on CPU; a full init's layout is checked with eval_shape.
    """
    return module.init(jax.random.key(seed), *args, method=method)["params"]


def _init_layout(module, ids):
    return jax.tree.map(jnp.shape, jax.eval_shape(module.init, jax.random.key(0), ids)["params"])


@functools.partial(jax.jit, static_argnums=0)
def _apply(module, params, *args):
    return module.apply({"params": params}, *args)


@functools.partial(jax.jit, static_argnums=0)
def _rm_outputs(rm, params, ids, mask, index_B):
    """(reward at index_B, raw reward at index_B, reward at the default index): one compile."""
    apply = functools.partial(rm.apply, {"params": params})
    return apply(ids, mask, index_B), apply(ids, mask, index_B, method="raw_rewards"), apply(ids, mask)


def _hidden_states(ids, mask):
    _, lm, params = tiny_pair()
    return [np.asarray(h) for h in _apply(lm, params, ids, mask).hidden_states]


def _reward_model(head="linear"):
    """A RewardModel on tiny_pair's trunk with a random head and non-trivial biases and gain.

    Params are assembled by hand (init is checked on its own below) and
    checked against the module's own layout.
    """
    _, lm, lm_params = tiny_pair()
    rm = RewardModel(lm.config, head=head)
    d = lm.config.n_embd
    kernel = np.random.default_rng(0).normal(size=(d, 1)) / np.sqrt(d + 1)
    params = {
        "transformer": lm_params["transformer"],
        "reward_head": {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.full((1,), HEAD_BIAS)},
        "reward_gain": jnp.asarray(GAIN, jnp.float32),
        "reward_bias": jnp.asarray(BIAS, jnp.float32),
    }
    if head == "scalar_mix":  # a mix that is not just the last layer
        params["scalar_mix"] = {"weights": jnp.array([0.3, -0.2, 0.5, 0.1]), "scale": jnp.asarray(1.3)}
    assert jax.tree.map(jnp.shape, params) == _init_layout(rm, _batch()[0])
    return rm, params


def _head_input(hidden_states, params):
    """What the head reads, by hand: the last state, or the softmax-weighted mix of all."""
    if "scalar_mix" not in params:
        return hidden_states[-1]
    w = np.asarray(jax.nn.softmax(params["scalar_mix"]["weights"]))
    return float(params["scalar_mix"]["scale"]) * sum(wi * h for wi, h in zip(w, hidden_states))


# ------------------------------------------------------------------ reward model


def test_reward_head_init_follows_ziegler():
    # A wide trunk, so the sample std of the head's d weights says something.
    d = 256
    cfg = GPT2Config(vocab_size=16, n_positions=8, n_embd=d, n_layer=1, n_head=4)
    rm = RewardModel(cfg)
    layout = _init_layout(rm, jnp.zeros((1, 4), jnp.int32))
    assert set(layout) == {"transformer", "reward_head", "reward_gain", "reward_bias"}
    kernels = []
    for seed in range(4):
        params = _init_part(rm, _reward_head_only, seed, jnp.zeros((1, d)))
        assert jax.tree.map(jnp.shape, params) == {k: layout[k] for k in params}
        assert params["reward_head"]["kernel"].shape == (d, 1)
        np.testing.assert_array_equal(np.asarray(params["reward_head"]["bias"]), [0.0])
        assert params["reward_gain"].shape == () and float(params["reward_gain"]) == 1.0
        assert params["reward_bias"].shape == () and float(params["reward_bias"]) == 0.0
        kernels.append(np.asarray(params["reward_head"]["kernel"]).ravel())
    w = np.concatenate(kernels)  # 1024 draws: the sample std's relative error is ~2.2%
    want_std = 1 / np.sqrt(d + 1)  # 0.0623, not GPT-2's 0.02
    assert abs(w.std() / want_std - 1) < 0.10
    assert abs(w.mean()) < 5 * want_std / np.sqrt(w.size)


@pytest.mark.parametrize("head", ["linear", "scalar_mix"])
def test_reward_is_gain_times_raw_plus_bias_read_at_the_index(head):
    rm, params = _reward_model(head)
    ids, mask = _batch()
    index_B = jnp.array([8, 5, 3, 8], jnp.int32)
    h_BxTxD = _head_input(_hidden_states(ids, mask), params)
    kernel_D = np.asarray(params["reward_head"]["kernel"])[:, 0]
    raw_B = h_BxTxD[np.arange(4), np.asarray(index_B)] @ kernel_D + HEAD_BIAS
    got, got_raw, got_default = _rm_outputs(rm, params, ids, mask, index_B)
    np.testing.assert_allclose(np.asarray(got_raw), raw_B, atol=1e-5)
    assert got.shape == (4,) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), GAIN * raw_B + BIAS, atol=1e-5)
    # Without an index the reward is read at the last token (Ziegler): rows 0 and 3 here.
    np.testing.assert_allclose(np.asarray(got_default)[[0, 3]], np.asarray(got)[[0, 3]], atol=1e-6)
    raw_last_B = h_BxTxD[:, -1] @ kernel_D + HEAD_BIAS
    np.testing.assert_allclose(np.asarray(got_default), GAIN * raw_last_B + BIAS, atol=1e-5)


def test_tokens_after_the_index_do_not_change_the_reward():
    rm, params = _reward_model()
    ids, mask = _batch()
    index_B = jnp.array([4, 5, 3, 6], jnp.int32)
    after_BxT = jnp.arange(9)[None, :] > index_B[:, None]
    changed_ids = jnp.where(after_BxT, (ids + 11) % V, ids)
    assert (changed_ids != ids).sum() >= 12
    base = np.asarray(_rm_outputs(rm, params, ids, mask, index_B)[0])
    changed = np.asarray(_rm_outputs(rm, params, changed_ids, mask, index_B)[0])
    np.testing.assert_allclose(changed, base, atol=1e-6)
    # ... while the token at the index does matter, in every row.
    at_BxT = jnp.arange(9)[None, :] == index_B[:, None]
    changed_at_ids = jnp.where(at_BxT, (ids + 11) % V, ids)
    changed_at = np.asarray(_rm_outputs(rm, params, changed_at_ids, mask, index_B)[0])
    assert (np.abs(changed_at - base) > 1e-4).all()


def test_scalar_mix_at_init_equals_linear():
    rm_lin, params_lin = _reward_model("linear")
    rm_mix = RewardModel(rm_lin.config, head="scalar_mix")
    ids, mask = _batch()
    hidden_states = [jnp.zeros((1, 2, rm_lin.config.n_embd))] * (rm_lin.config.n_layer + 1)
    mix = _init_part(rm_mix, _scalar_mix_only, 1, hidden_states)["scalar_mix"]
    assert mix["weights"].shape == (rm_lin.config.n_layer + 1,) and float(mix["scale"]) == 1.0
    params_mix = {**params_lin, "scalar_mix": mix}  # same trunk, head, gain and bias
    assert jax.tree.map(jnp.shape, params_mix) == _init_layout(rm_mix, ids)
    index_B = jnp.array([8, 5, 3, 8], jnp.int32)
    want = np.asarray(_rm_outputs(rm_lin, params_lin, ids, mask, index_B)[0])
    got = np.asarray(_rm_outputs(rm_mix, params_mix, ids, mask, index_B)[0])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The mix is live: equal weights over the layers give a different reward.
    uniform = {**params_mix, "scalar_mix": {**mix, "weights": jnp.zeros_like(mix["weights"])}}
    assert np.abs(np.asarray(_rm_outputs(rm_mix, uniform, ids, mask, index_B)[0]) - want).min() > 1e-3


@pytest.mark.parametrize("module_cls,heads", [
    (RewardModel, r"\('linear', 'scalar_mix', 'selector'\)"),
    (ValueModel, r"\('linear', 'scalar_mix'\)")])
def test_unknown_head_names_the_config_field(module_cls, heads):
    cfg = tiny_pair()[1].config
    with pytest.raises(ValueError, match=r"reward.head='mlp': expected one of " + heads):
        module_cls(cfg, head="mlp").init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))


# ------------------------------------------------------------- policy and value


def test_policy_with_value_head_init():
    _, lm, lm_params = tiny_pair()
    policy = PolicyWithValueHead(lm.config)
    ids, mask = _batch()
    head = _init_part(policy, _value_head_only, 0, jnp.zeros((1, lm.config.n_embd)))["value_head"]
    np.testing.assert_array_equal(np.asarray(head["kernel"]), 0.0)
    np.testing.assert_array_equal(np.asarray(head["bias"]), 0.0)
    params = {"transformer": lm_params["transformer"], "value_head": head}
    assert jax.tree.map(jnp.shape, params) == _init_layout(policy, ids)
    out, values_BxT = _apply(policy, params, ids, mask)
    assert len(out.hidden_states) == lm.config.n_layer + 1
    assert values_BxT.shape == (4, 9) and values_BxT.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(values_BxT), 0.0)
    # Logits are the plain LM's: the same trunk and the tied head.
    want = _apply(lm, lm_params, ids, mask)
    assert out.logits.shape == (4, 9, V)
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(want.logits), atol=1e-6)
    # Once trained, values are the head applied to the last hidden state.
    kernel = jax.random.normal(jax.random.key(3), (lm.config.n_embd, 1))
    params["value_head"] = {"kernel": kernel, "bias": jnp.array([0.5])}
    _, values_BxT = _apply(policy, params, ids, mask)
    want_values = _hidden_states(ids, mask)[-1] @ np.asarray(kernel)[:, 0] + 0.5
    np.testing.assert_allclose(np.asarray(values_BxT), want_values, atol=1e-5)


@pytest.mark.parametrize("head", ["linear", "scalar_mix"])
def test_value_model_from_reward_model_values_are_rewards(head):
    rm, rm_params = _reward_model(head)
    ids, mask = _batch()
    value_model = ValueModel(rm.config, head=head)
    v_params = value_params_from_reward(rm_params)
    assert jax.tree.map(jnp.shape, v_params) == _init_layout(value_model, ids)
    values_BxT = np.asarray(_apply(value_model, v_params, ids, mask))
    assert values_BxT.shape == (4, 9)
    # The value at the last position is the reward, gain and bias included ...
    index_B = jnp.full((4,), 8, jnp.int32)
    rewards_B, raw_B, _ = (np.asarray(x) for x in _rm_outputs(rm, rm_params, ids, mask, index_B))
    np.testing.assert_allclose(values_BxT[:, -1], rewards_B, atol=1e-5)
    assert np.abs(rewards_B - raw_B).min() > 0.1  # and they mattered
    # ... and at every position, the reward the RM would give if read there.
    h_BxTxD = _head_input(_hidden_states(ids, mask), rm_params)
    raw_BxT = h_BxTxD @ np.asarray(rm_params["reward_head"]["kernel"])[:, 0] + HEAD_BIAS
    np.testing.assert_allclose(values_BxT, GAIN * raw_BxT + BIAS, atol=1e-5)
    # The RM's params are left as they were.
    assert float(rm_params["reward_gain"]) == GAIN and float(rm_params["reward_bias"]) == BIAS


# ------------------------------------------------------------- selector head


def _selector_rm(layers=()):
    _, lm, lm_params = tiny_pair()
    rm = RewardModel(lm.config, head="selector", selector_layers=layers)
    ids, mask = _batch()
    fresh = jax.jit(rm.init)(jax.random.key(3), ids)["params"]
    return rm, {**fresh, "transformer": lm_params["transformer"]}, ids, mask


def test_selector_reads_only_the_chosen_layers_of_a_frozen_trunk():
    rm, params, ids, mask = _selector_rm()
    n = rm.config.n_layer
    assert rm.selector_layers == () and set(params["selector"]) == {"weights", "h_0", "ln_f"}
    index_B = jnp.asarray([8, 8, 5, 8])

    def reward(p):
        return _rm_outputs(rm, p, ids, mask, index_B)[0]

    base = np.asarray(reward(params))
    # Default: the middle hidden state (index n_layer // 2); blocks above it and
    # the trunk's final layer norm do not reach the reward ...
    above = {**params, "transformer": {**params["transformer"],
                                       "ln_f": jax.tree.map(lambda x: x + 1.0,
                                                            params["transformer"]["ln_f"])}}
    for i in range(n // 2, n):
        above["transformer"][f"h_{i}"] = jax.tree.map(lambda x: x * 1.5,
                                                      params["transformer"][f"h_{i}"])
    np.testing.assert_allclose(reward(above), base, atol=1e-6)
    # ... the blocks below it do.
    below = {**params, "transformer": {**params["transformer"], "h_0": jax.tree.map(
        lambda x: x * 1.5, params["transformer"]["h_0"])}}
    assert np.abs(np.asarray(reward(below)) - base).max() > 1e-4
    # The trunk is frozen: no gradient reaches it; the fresh block and the head learn.
    grads = jax.jit(jax.grad(lambda p: jnp.sum(reward(p))))(params)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["transformer"]))
    assert float(jnp.abs(grads["selector"]["h_0"]["attn"]["c_attn"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["reward_head"]["kernel"]).max()) > 0


def test_selector_mixes_several_chosen_layers():
    rm, params, ids, mask = _selector_rm(layers=(0, 1))
    assert params["selector"]["weights"].shape == (2,)
    index_B = jnp.asarray([8, 8, 5, 8])
    base = np.asarray(_rm_outputs(rm, params, ids, mask, index_B)[0])
    # Weight on layer 0 only: the reward no longer depends on block h_0.
    only0 = {**params, "selector": {**params["selector"], "weights": jnp.asarray([30.0, -30.0])}}
    changed = {**only0, "transformer": {**only0["transformer"], "h_0": jax.tree.map(
        lambda x: x * 1.5, only0["transformer"]["h_0"])}}
    np.testing.assert_allclose(_rm_outputs(rm, changed, ids, mask, index_B)[0],
                               _rm_outputs(rm, only0, ids, mask, index_B)[0], atol=1e-5)
    assert np.abs(np.asarray(_rm_outputs(rm, only0, ids, mask, index_B)[0]) - base).max() > 1e-4

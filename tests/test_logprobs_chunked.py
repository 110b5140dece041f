"""The LM head and log-softmax over chunks of positions equal them in one piece."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.logprobs import logprobs_and_entropy, logprobs_and_entropy_from_head
from rlhf_jax.algorithms.ppo import forward_policy_value
from rlhf_jax.models import GPT2Config
from rlhf_jax.models.gpt2 import tied_lm_logits
from rlhf_jax.models.heads import PolicyWithValueHead
from rlhf_jax.stages.rollout import PPOModels


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def _loss(fn, h, wte, targets, w):
    logp, ent = fn(h, wte, targets)
    return jnp.sum(logp * w) + 0.3 * jnp.sum(ent * w[::-1])


@pytest.mark.parametrize("chunk", [2, 3])  # 5 positions: a ragged last chunk, padded
def test_values_and_gradients_equal_one_piece(chunk):
    b, l, d, v = 3, 5, 8, 40
    ks = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(ks[0], (b, l, d))
    wte = jax.random.normal(ks[1], (v, d))
    targets = jax.random.randint(ks[2], (b, l), 0, v).at[0, 1].set(v + 3)  # a pad id
    w = jnp.linspace(-1.0, 1.0, b * l).reshape(b, l)
    head = functools.partial(tied_lm_logits, dtype=jnp.float32)

    def whole(h, wte, t):
        return logprobs_and_entropy(head(h, wte), t, 0.7)

    def chunked(h, wte, t):
        return logprobs_and_entropy_from_head(h, lambda x: head(x, wte), t, 0.7, chunk)

    for got, want in zip(jax.jit(chunked)(h, wte, targets), jax.jit(whole)(h, wte, targets)):
        assert got.shape == (b, l)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=1e-6)
    grad = functools.partial(jax.grad(_loss, argnums=(1, 2)))
    g_chunked = jax.jit(lambda *a: grad(chunked, *a))(h, wte, targets, w)
    g_whole = jax.jit(lambda *a: grad(whole, *a))(h, wte, targets, w)
    for a, b_ in zip(g_chunked, g_whole):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), atol=1e-5, rtol=1e-5)


def test_chunked_update_keeps_no_whole_logits():
    # The gradient program's temporaries: with chunks of 4 of 64 positions the
    # [B, L, V] float32 logits (and their log-softmax) are never all alive at once.
    b, l, d, v = 4, 64, 16, 4096
    h = jnp.ones((b, l, d))
    wte = jnp.ones((v, d))
    t = jnp.zeros((b, l), jnp.int32)

    def temp_bytes(chunk):
        def loss(h, wte):
            logp, ent = logprobs_and_entropy_from_head(
                h, lambda x: tied_lm_logits(x, wte, jnp.float32), t, 1.0, chunk)
            return jnp.sum(logp) + jnp.sum(ent)
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(h, wte).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    logits_bytes = b * l * v * 4
    assert temp_bytes(0) >= logits_bytes
    assert temp_bytes(4) < logits_bytes / 2


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_policy_value_with_logits_chunk(dtype):
    cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, dtype=dtype)
    policy = PolicyWithValueHead(cfg)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = {"policy": policy.init(jax.random.key(1), ids)["params"]}
    params["policy"]["value_head"]["kernel"] = jnp.full((16, 1), 0.1)
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.integers(0, 64, (3, 4)), jnp.int32)
    qm = jnp.asarray([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]], jnp.int32)
    r = jnp.asarray(rng.integers(0, 64, (3, 5)), jnp.int32)
    rm = jnp.asarray([[1] * 5, [1, 1, 1, 0, 0], [1] * 5], jnp.int32)

    def run(chunk):
        models = PPOModels(policy=PolicyWithValueHead(cfg.replace(logits_chunk=chunk)),
                           reference=policy)

        def loss(p):
            logp, ent, val = forward_policy_value(models.apply_policy_value, p, q, qm, r, rm, 0.7)
            return jnp.sum(logp) + jnp.sum(ent) + jnp.sum(val), (logp, ent, val)

        return jax.jit(jax.grad(loss, has_aux=True))(params)

    g0, out0 = run(0)
    g2, out2 = run(2)
    # The same products position by position: equal forwards in bfloat16 too.
    for a, b_ in zip(out2, out0):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), atol=1e-6, rtol=1e-6)
    for path, a in jax.tree_util.tree_leaves_with_path(g2):
        a, b_ = np.asarray(a), np.asarray(_at(g0, path))
        if dtype == jnp.float32 or "wte" not in jax.tree_util.keystr(path):
            np.testing.assert_allclose(a, b_, atol=1e-5, rtol=1e-4)
        else:
            # In bfloat16 the tied embedding's gradient from the head is rounded to
            # bfloat16 once per chunk rather than once: equal within that rounding.
            assert not np.array_equal(a, b_)
            np.testing.assert_allclose(a, b_, atol=2 ** -6 * np.abs(b_).max())
    with pytest.raises(ValueError, match="logits_chunk=-1"):
        cfg.replace(logits_chunk=-1)

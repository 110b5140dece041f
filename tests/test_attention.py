"""The shared attention (models/attention.py) against attention written out by hand.

The reference is the multi-head attention GPT-2 ran before the shared function
(scores in float32 divided by sqrt(d), `where` masking, float32 softmax,
probabilities rounded to the compute dtype); grouped-query attention is
checked against it with each key/value head repeated for its query heads.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import GPT2Config
from rlhf_jax.models import attention


def reference(q_BxTxHxd, k_BxSxFxd, v_BxSxFxd, allowed_BxTxS):
    h, f = q_BxTxHxd.shape[2], k_BxSxFxd.shape[2]
    k = jnp.repeat(k_BxSxFxd, h // f, axis=2)
    v = jnp.repeat(v_BxSxFxd, h // f, axis=2)
    dtype = q_BxTxHxd.dtype
    scores = jnp.einsum("bqhd,bkhd->bhqk", q_BxTxHxd, k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(q_BxTxHxd.shape[-1])
    scores = jnp.where(allowed_BxTxS[:, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32).astype(dtype)


def left_padded(b, t, pads, seed, h=4, f=4, d=8, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (b, t, h, d), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (b, t, f, d), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (b, t, f, d), jnp.float32).astype(dtype)
    key_mask_BxS = np.arange(t)[None, :] >= np.asarray(pads)[:, None]
    allowed = np.tril(np.ones((t, t), bool))[None] & key_mask_BxS[:, None, :]
    return q, k, v, jnp.asarray(allowed), key_mask_BxS


def jax_xla(q, k, v, allowed):
    # `jax.nn.dot_product_attention`'s XLA path: what "xla" runs on GPUs and TPUs.
    return attention._jax_attention(q, k, v, allowed, causal=True, impl="xla")


@pytest.mark.parametrize("f", [4, 2, 1])  # multi-head, grouped-query, multi-query
def test_float32_equals_reference_on_a_left_padded_batch(f):
    q, k, v, allowed, _ = left_padded(3, 7, [0, 3, 6], seed=f, f=f)
    want = np.asarray(reference(q, k, v, allowed))
    for got in (attention.dot_product_attention(q, k, v, allowed, causal=True),
                jax_xla(q, k, v, allowed)):
        assert got.shape == q.shape and got.dtype == jnp.float32
        # Pad query rows too: every key masked, a uniform average, finite in both.
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, rtol=1e-6)


def test_float32_gradients_equal_reference():
    q, k, v, allowed, key_mask = left_padded(2, 6, [0, 2], seed=5, f=2)
    w = jax.random.normal(jax.random.key(9), q.shape)
    real = jnp.asarray(key_mask)[:, :, None, None]

    def loss(fn, q, k, v):
        return jnp.sum(jnp.where(real, fn(q, k, v) * w, 0.0))

    def grads(fn):
        return jax.jit(jax.grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2)))(q, k, v)

    theirs = grads(lambda q, k, v: reference(q, k, v, allowed))
    for fn in (lambda q, k, v: attention.dot_product_attention(q, k, v, allowed, causal=True),
               lambda q, k, v: jax_xla(q, k, v, allowed)):
        for a, b in zip(grads(fn), theirs):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.parametrize("f", [4, 2])
def test_bfloat16(f):
    q, k, v, allowed, key_mask = left_padded(2, 8, [0, 5], seed=7, f=f, d=16, dtype=jnp.bfloat16)
    want = np.asarray(reference(q, k, v, allowed), np.float32)
    # On a CPU (float32 dot results rounded once): the reference's arithmetic exactly.
    got_cpu = attention.dot_product_attention(q, k, v, allowed, causal=True,
                                              dot_dtype=jnp.float32)
    assert got_cpu.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got_cpu, np.float32), want)
    # `jax.nn.dot_product_attention`'s XLA path (what GPUs and TPUs run without cuDNN):
    # bfloat16 dot results, within a bfloat16 rounding of the reference.
    got = np.asarray(jax_xla(q, k, v, allowed), np.float32)
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("f", [4, 2])
def test_decode_step_against_a_cache(dtype, atol, f):
    # A cache of 9 slots: row 0 holds 6 tokens (3 of them left pads), row 1 all 9 real;
    # the query is the token just written at slot 5 (row 0) -- slots after it are empty.
    b, s, h, d = 2, 9, 4, 8
    keys = jax.random.split(jax.random.key(f), 3)
    q = jax.random.normal(keys[0], (b, 1, h, d)).astype(dtype)
    k = jax.random.normal(keys[1], (b, s, f, d)).astype(dtype)
    v = jax.random.normal(keys[2], (b, s, f, d)).astype(dtype)
    valid = np.zeros((b, s), bool)
    valid[0, 3:6] = True
    valid[1, :] = True
    allowed = jnp.asarray(valid[:, None, :])
    want = np.asarray(reference(q, k, v, allowed), np.float32)
    for got in (attention.dot_product_attention(q, k, v, allowed, decode=True),
                # The library call a forced implementation makes for a decode step.
                attention._jax_attention(q, k, v, allowed, causal=False, impl="xla")):
        assert got.shape == q.shape and got.dtype == dtype
        np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=atol, rtol=atol)
    # Empty slots hold anything: changing them changes nothing.
    k2 = k.at[0, 6:].set(100)
    got2 = attention.dot_product_attention(q, k2, v.at[0, 6:].set(-7), allowed, decode=True)
    np.testing.assert_array_equal(np.asarray(got2, np.float32)[0],
                                  np.asarray(attention.dot_product_attention(
                                      q, k, v, allowed, decode=True), np.float32)[0])


def test_implementation_choice():
    bf16, f32 = jnp.bfloat16, jnp.float32
    assert attention.cudnn_applies(bf16, 64, 88, 88, False, backend="gpu")
    assert attention.cudnn_applies(jnp.float16, 128, 88, 88, False, backend="gpu")
    assert not attention.cudnn_applies(f32, 64, 88, 88, False, backend="gpu")  # half only
    assert not attention.cudnn_applies(bf16, 64, 88, 88, False, backend="cpu")
    assert not attention.cudnn_applies(bf16, 64, 88, 88, True, backend="gpu")  # decode step
    assert not attention.cudnn_applies(bf16, 60, 88, 88, False, backend="gpu")  # d % 8
    assert not attention.cudnn_applies(bf16, 64, 87, 87, False, backend="gpu")  # odd length
    assert jax.default_backend() == "cpu"
    assert attention.resolve_impl(None, bf16, 64, 88, 88, False) == "xla"
    assert attention.resolve_impl(None, bf16, 64, 1, 88, True) == "reduce"
    assert attention.resolve_impl("xla", bf16, 64, 1, 88, True) == "reduce"
    assert attention.resolve_impl("cudnn", bf16, 64, 1, 88, True) == "cudnn"  # as asked
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        GPT2Config(attention_impl="flash")
    q, k, v, allowed, _ = left_padded(1, 4, [0], seed=0, h=4, f=3, d=8)
    with pytest.raises(ValueError, match="4 query heads"):
        attention.dot_product_attention(q, k, v, allowed)


@pytest.mark.parametrize("field,value,match", [
    ("attention_impl", "flash", r"model.attention_impl='flash': expected '' \(auto\), xla or cudnn"),
    ("logits_chunk", -2, r"model.logits_chunk=-2 must be an int >= 0"),
])
def test_config_fields_checked_up_front(field, value, match):
    from rlhf_jax import config_check, config_lib

    c = config_lib.base_config()
    c.model[field] = value
    with pytest.raises(ValueError, match=match):
        config_check.resolve(c, 1)


def test_loading_passes_the_fields_to_the_model_config():
    from rlhf_jax import config_lib
    from rlhf_jax.models import loading

    c = config_lib.base_config()
    c.model.update(dict(n_embd=16, n_layer=1, n_head=2, attention_impl="xla", logits_chunk=8))
    cfg = loading.model_config(c, 32)
    assert (cfg.attention_impl, cfg.logits_chunk) == ("xla", 8)
    c.model.attention_impl = ""
    assert loading.model_config(c, 32).attention_impl is None

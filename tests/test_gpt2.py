"""Flax GPT-2 against transformers' PyTorch GPT2LMHeadModel (parity), and the KV cache."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import GPT2Config, init_cache, init_params
from tests.hf_fixtures import hf_logits, left_padded_batch, tiny_pair


def test_logits_match_transformers_on_left_padded_batch():
    hf_model, model, params = tiny_pair()
    ids, mask = left_padded_batch(97, [11, 7, 3, 11], 11)
    out = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    ref_logits, ref_hidden = hf_logits(hf_model, ids, mask)
    real = mask == 1
    assert out.logits.shape == (4, 11, 97)
    np.testing.assert_allclose(np.asarray(out.logits)[real], ref_logits[real], atol=1e-4)
    assert len(out.hidden_states) == len(ref_hidden) == 4  # embeddings + 3 layers
    for ours, theirs in zip(out.hidden_states, ref_hidden):
        np.testing.assert_allclose(np.asarray(ours)[real], theirs[real], atol=1e-4)


def test_left_padding_does_not_change_real_tokens():
    _, model, params = tiny_pair()
    ids, mask = left_padded_batch(97, [5], 5, seed=3)
    padded_ids = np.concatenate([np.full((1, 6), 97, np.int32), ids], 1)
    padded_mask = np.concatenate([np.zeros((1, 6), np.int32), mask], 1)
    a = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits
    b = model.apply(
        {"params": params}, jnp.asarray(padded_ids), attention_mask=jnp.asarray(padded_mask)
    ).logits
    np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[0, 6:], atol=1e-5)
    assert np.isfinite(np.asarray(b)).all()  # fully masked pad rows give no NaN


def test_kv_cached_decoding_equals_full_forward():
    _, model, params = tiny_pair()
    ids, mask = left_padded_batch(97, [9, 4, 6], 9, seed=1)
    cont = np.random.default_rng(2).integers(0, 97, (3, 5)).astype(np.int32)
    full_ids = np.concatenate([ids, cont], 1)
    full_mask = np.concatenate([mask, np.ones((3, 5), np.int32)], 1)
    want = model.apply({"params": params}, jnp.asarray(full_ids), attention_mask=jnp.asarray(full_mask)).logits

    s = full_ids.shape[1]
    cache = init_cache(model.config, 3, s)
    buf_mask = np.concatenate([mask, np.zeros((3, 5), np.int32)], 1)
    out = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(buf_mask), cache=cache, cache_index=0)
    got = [out.logits]
    cache = out.cache
    for t in range(5):
        buf_mask[:, 9 + t] = 1
        out = model.apply(
            {"params": params},
            jnp.asarray(cont[:, t : t + 1]),
            attention_mask=jnp.asarray(buf_mask),
            cache=cache,
            cache_index=9 + t,
        )
        cache = out.cache
        got.append(out.logits)
    got = np.concatenate([np.asarray(g) for g in got], 1)
    real = full_mask == 1
    np.testing.assert_allclose(got[real], np.asarray(want)[real], atol=1e-4)


def test_bfloat16_compute_with_float32_master_weights():
    cfg = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    model32, params = init_params(cfg, jax.random.key(0))
    model16 = type(model32)(cfg.replace(dtype=jnp.bfloat16))
    ids = jnp.arange(12).reshape(2, 6) % 50
    l32 = model32.apply({"params": params}, ids).logits
    l16 = model16.apply({"params": params}, ids).logits
    chex.assert_trees_all_equal_dtypes(params, jax.tree.map(lambda x: x.astype(jnp.float32), params))
    assert l16.dtype == jnp.float32  # logits are always float32
    np.testing.assert_allclose(np.asarray(l16), np.asarray(l32), atol=0.1)
    assert not np.allclose(np.asarray(l16), np.asarray(l32), atol=1e-6)  # really bf16


def test_bfloat16_dots_write_float32_on_cpu_and_round_once():
    """On XLA:CPU every bfloat16 dot of the model (dense layers, attention, LM
    head) has a float32 result, the form its fast kernels run; the dense and
    attention outputs are still rounded to bfloat16, so activations stay bf16."""
    import re

    from rlhf_jax.models import gpt2

    assert jax.default_backend() == "cpu"
    cfg = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4, dtype=jnp.bfloat16)
    model, params = init_params(cfg, jax.random.key(0))
    ids = jnp.arange(12).reshape(2, 6) % 50
    text = jax.jit(model.apply).lower({"params": params}, ids).as_text()
    dots = re.findall(r"stablehlo.dot_general.*?-> (tensor<[^>]*>)", text)
    assert len(dots) == cfg.n_layer * 6 + 1  # c_attn, scores, probs@v, c_proj, c_fc, mlp c_proj; head
    assert all(t.endswith("xf32>") for t in dots), dots
    out = model.apply({"params": params}, ids)
    assert out.hidden_states[1].dtype == jnp.bfloat16 and out.logits.dtype == jnp.float32
    # A dense layer equals its float32-accumulated product rounded once to bf16, plus the bias.
    x = jax.random.normal(jax.random.key(1), (4, 32), jnp.bfloat16)
    layer = gpt2._dense(cfg, 8, "d", 0.02)
    p = layer.init(jax.random.key(2), x)
    p = jax.tree.map(lambda a: a + 0.1, p)  # a nonzero bias
    want = (jnp.dot(x, p["params"]["kernel"].astype(jnp.bfloat16), preferred_element_type=jnp.float32)
            .astype(jnp.bfloat16) + p["params"]["bias"].astype(jnp.bfloat16))
    np.testing.assert_array_equal(np.asarray(layer.apply(p, x), np.float32), np.asarray(want, np.float32))
    # Float32 models are untouched: plain float32 dots, no conversions added.
    model32, _ = init_params(cfg.replace(dtype=jnp.float32), jax.random.key(0))
    assert gpt2._dot_dtype(model32.config) is None


def test_remat_gives_identical_gradients():
    cfg = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    model, params = init_params(cfg, jax.random.key(0))
    model_r = type(model)(cfg.replace(remat=True))
    ids = jnp.arange(12).reshape(2, 6) % 50

    def loss(p, m):
        return jnp.mean(m.apply({"params": p}, ids).logits ** 2)

    g1 = jax.grad(loss)(params, model)
    g2 = jax.grad(loss)(params, model_r)
    chex.assert_trees_all_close(g1, g2, atol=1e-6)


def test_config_sizes_and_validation():
    assert GPT2Config.from_name("gpt2").num_params() == pytest.approx(124.4e6, rel=0.01)
    assert GPT2Config.from_name("gpt2-medium").num_params() == pytest.approx(354.8e6, rel=0.01)
    with pytest.raises(ValueError, match="n_embd=30 is not divisible by n_head=4"):
        GPT2Config(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="unknown GPT-2 size"):
        GPT2Config.from_name("gpt5")

"""The KV-cache sampler against transformers, against a full forward pass, and in law.

Two models keep compilation cheap: a 3-layer GPT-2 of odd shape shared with
transformers (parity, logprobs, filtering), and a 1-layer model with a
vocabulary of 8 (the sampling law, EOS handling, determinism, recompiles).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel as HFModel

from rlhf_jax.algorithms import sampling
from rlhf_jax.algorithms.sampling import sample
from rlhf_jax.models import GPT2Config, GPT2LMHeadModel
from rlhf_jax.models.heads import PolicyWithValueHead
from rlhf_jax.models.hf import config_from_hf, state_dict_to_params
from tests.hf_fixtures import ODD, left_padded_batch

V = ODD["vocab_size"]
EOS = ODD["eos_token_id"]
LENGTHS = (7, 3, 5, 1)  # left-padded query lengths, width Q
Q, R = 7, 6


@functools.lru_cache(maxsize=None)
def varied_pair():
    """(hf_model, model, params): like `tiny_pair` but with initializer_range 0.3.

    At GPT-2's 0.02 a random model's next-token distribution is nearly uniform
    and greedy decoding repeats one token; 0.3 gives peaked, varied
    distributions, so parity and filtering tests have something to check.
    """
    torch.manual_seed(0)
    hf_model = HFModel(HFConfig(**ODD, initializer_range=0.3)).eval()
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    cfg = config_from_hf(hf_model.config.to_dict())
    params = jax.tree.map(jnp.asarray, state_dict_to_params(sd, cfg, source="varied"))
    return hf_model, GPT2LMHeadModel(cfg), params


@functools.lru_cache(maxsize=None)
def vocab8_model():
    """1 layer, 8 tokens, weights large enough for a far-from-uniform distribution."""
    # n_positions = 4 + R: the rollouts below fill the context window exactly.
    cfg = GPT2Config(vocab_size=8, n_positions=10, n_embd=16, n_layer=1, n_head=2, initializer_range=0.5)
    model = GPT2LMHeadModel(cfg)
    # Jitted: eager init dispatches op by op, which is slower on CPU.
    return model, jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]


def _queries():
    ids, mask = left_padded_batch(V, LENGTHS, Q, seed=4)
    return jnp.asarray(ids), jnp.asarray(mask)


def _queries8():
    ids, mask = left_padded_batch(8, (4, 2, 3, 1, 4, 2), 4, seed=2)
    return jnp.asarray(ids), jnp.asarray(mask)


@functools.partial(jax.jit, static_argnums=0)
def _full_forward_logits(model, params, query_BxQ, qmask_BxQ, tokens_BxR):
    """Logits predicting each response token, from one pass over query + response."""
    ids_BxS = jnp.concatenate([query_BxQ, tokens_BxR], axis=1)
    mask_BxS = jnp.concatenate([qmask_BxQ, jnp.ones_like(tokens_BxR)], axis=1)
    logits_BxSxV = model.apply({"params": params}, ids_BxS, attention_mask=mask_BxS).logits
    q = query_BxQ.shape[1]
    return logits_BxSxV[:, q - 1 : -1]  # position q-1+t predicts token t


def _logp_of(logits_BxRxV, tokens_BxR, temperature):
    logp_BxRxV = np.asarray(jax.nn.log_softmax(logits_BxRxV / temperature, axis=-1))
    return np.take_along_axis(logp_BxRxV, np.asarray(tokens_BxR)[..., None], -1)[..., 0]


def _rollout8(key=0, temperature=1.0, **kw):
    model, params = vocab8_model()
    ids, mask = _queries8()
    return sample(
        model, params, ids, mask, jax.random.key(key), response_length=R, temperature=temperature, **kw
    )


# ------------------------------------------------------------- parity


def test_greedy_equals_transformers_generate_per_row():
    hf_model, model, params = varied_pair()
    ids, mask = _queries()
    out = sample(model, params, ids, mask, jax.random.key(0), response_length=R, greedy=True)
    ours = np.asarray(out.tokens)
    assert ours.shape == (len(LENGTHS), R) and ours.dtype == np.int32
    # min_new_tokens keeps transformers from stopping at EOS by masking EOS out,
    # which would also change the argmax: the comparison holds only if EOS is
    # never the greedy choice, so check that first.
    assert EOS not in ours
    ids_np = np.asarray(ids)
    for row, n in enumerate(LENGTHS):
        q = torch.tensor(ids_np[row : row + 1, Q - n :], dtype=torch.long)
        with torch.no_grad():
            gen = hf_model.generate(
                q,
                attention_mask=torch.ones_like(q),
                do_sample=False,
                max_new_tokens=R,
                min_new_tokens=R,
                pad_token_id=0,
            )
        np.testing.assert_array_equal(ours[row], gen[0, n:].numpy(), err_msg=f"row {row}")
    assert len(np.unique(ours)) > 4  # the sequences are not one repeated token
    # Greedy logprobs are still those of the tempered distribution.
    logits = _full_forward_logits(model, params, ids, mask, out.tokens)
    np.testing.assert_allclose(np.asarray(out.logprobs), _logp_of(logits, ours, 1.0), atol=1e-5)


def test_logprobs_equal_full_forward_log_softmax_at_temperature():
    _, model, params = varied_pair()
    ids, mask = _queries()
    t = 0.7
    out = sample(model, params, ids, mask, jax.random.key(3), response_length=R, temperature=t)
    logits_BxRxV = _full_forward_logits(model, params, ids, mask, out.tokens)
    want_BxR = _logp_of(logits_BxRxV, out.tokens, t)
    np.testing.assert_allclose(np.asarray(out.logprobs), want_BxR, atol=1e-5)
    # The temperature matters: the untempered logprobs are measurably different.
    assert np.abs(_logp_of(logits_BxRxV, out.tokens, 1.0) - want_BxR).max() > 0.05
    np.testing.assert_array_equal(np.asarray(out.mask), 1)
    assert np.asarray(out.tokens).max() < V


def test_policy_with_value_head_samples_like_the_lm():
    # Ziegler's shared model samples through the same trunk and tied LM head.
    _, model, params = varied_pair()
    ids, mask = _queries()
    policy = PolicyWithValueHead(model.config)
    d = model.config.n_embd
    pv_params = {
        "transformer": params["transformer"],
        "value_head": {"kernel": jnp.ones((d, 1)), "bias": jnp.ones((1,))},
    }
    a = sample(model, params, ids, mask, jax.random.key(3), response_length=R, temperature=0.7)
    b = sample(policy, pv_params, ids, mask, jax.random.key(3), response_length=R, temperature=0.7)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-6)


# -------------------------------------------------------------- the law


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_token_frequencies_match_softmax_of_tempered_logits(temperature):
    model, params = vocab8_model()
    n = 4096
    query_1xQ = jnp.array([[3, 1, 4]], jnp.int32)
    query_NxQ = jnp.tile(query_1xQ, (n, 1))
    out = sample(
        model, params, query_NxQ, jnp.ones_like(query_NxQ), jax.random.key(11),
        response_length=1, temperature=temperature,
    )
    tokens_N = np.asarray(out.tokens[:, 0])
    assert tokens_N.min() >= 0 and tokens_N.max() < 8
    # The logits after the whole query (the appended token is not looked at).
    ones_1xQ = jnp.ones_like(query_1xQ)
    logits_1x1xV = _full_forward_logits(model, params, query_1xQ, ones_1xQ, query_1xQ[:, :1])
    logits_V = np.asarray(logits_1x1xV[0, 0], np.float64)
    p_V = np.exp(logits_V / temperature - np.logaddexp.reduce(logits_V / temperature))
    # The test has power only if the distribution is far from uniform.
    assert p_V.max() > 0.3 and p_V.min() < 0.05
    freq_V = np.bincount(tokens_N, minlength=8) / n
    # Binomial standard error per token; 5 sigma (any of 8 failing by chance: ~5e-6).
    sigma_V = np.sqrt(p_V * (1 - p_V) / n)
    np.testing.assert_array_less(np.abs(freq_V - p_V), 5 * sigma_V + 1e-12)
    # Each draw's logprob is its token's log-probability under that same law.
    np.testing.assert_allclose(np.asarray(out.logprobs[:, 0]), np.log(p_V)[tokens_N], atol=1e-5)


def test_inverse_cdf_hand_worked_across_blocks():
    # V=100: blocks of 16 (ceil(sqrt(100)) rounded up to 8), block 1 holds no mass.
    w_V = np.zeros(100, np.float32)
    w_V[[3, 40, 99]] = [1.0, 2.0, 1.0]  # CDF steps at 1/4 and 3/4
    u_B = jnp.array([0.0, 0.2499, 0.25, 0.7, 0.75, 1 - 2**-24], jnp.float32)
    got = sampling._inverse_cdf(u_B, jnp.tile(jnp.asarray(w_V), (6, 1)))
    np.testing.assert_array_equal(np.asarray(got), [3, 3, 40, 40, 99, 99])


def test_draw_frequencies_on_a_large_vocabulary():
    # 1000 tokens (32 blocks of 32): the two-level draw against softmax(logits / T).
    logits_V = 3.0 * jax.random.normal(jax.random.key(5), (1000,))
    n, t = 20000, 0.7
    keys_N = jax.random.split(jax.random.key(6), n)
    tok_N, logp_N = jax.jit(
        lambda k, l: sampling._draw(k, l, t, False, 0, 1.0)
    )(keys_N, jnp.broadcast_to(logits_V, (n, 1000)))
    p_V = np.asarray(jax.nn.softmax(np.asarray(logits_V, np.float64) / t))
    assert p_V.max() > 0.1  # far from uniform
    freq_V = np.bincount(np.asarray(tok_N), minlength=1000) / n
    # Per token where 20+ draws are expected (normal approximation); the rest pooled.
    big_V = n * p_V >= 20
    assert big_V.sum() > 20 and p_V[~big_V].sum() > 0.01
    f_K = np.append(freq_V[big_V], freq_V[~big_V].sum())
    p_K = np.append(p_V[big_V], p_V[~big_V].sum())
    np.testing.assert_array_less(np.abs(f_K - p_K), 5 * np.sqrt(p_K * (1 - p_K) / n))
    np.testing.assert_allclose(np.asarray(logp_N), np.log(p_V)[np.asarray(tok_N)], atol=1e-5)


def _rank_and_mass_above(logits_BxRxV, tokens_BxR, temperature):
    """Per sampled token: how many tokens are strictly likelier, and their total mass."""
    p_BxRxV = np.asarray(jax.nn.softmax(logits_BxRxV / temperature, axis=-1), np.float64)
    p_tok = np.take_along_axis(p_BxRxV, np.asarray(tokens_BxR)[..., None], -1)
    above = p_BxRxV > p_tok * (1 + 1e-5)
    return above.sum(-1), np.where(above, p_BxRxV, 0.0).sum(-1)


def _tiled_queries(copies=8):
    ids, mask = _queries()
    return jnp.tile(ids, (copies, 1)), jnp.tile(mask, (copies, 1))


def test_top_k_never_leaves_the_top_k():
    _, model, params = varied_pair()
    ids, mask = _tiled_queries()
    out = sample(model, params, ids, mask, jax.random.key(2), response_length=R, top_k=3)
    logits = _full_forward_logits(model, params, ids, mask, out.tokens)
    rank, _ = _rank_and_mass_above(logits, out.tokens, 1.0)
    assert rank.max() <= 2
    assert (rank == 2).any()  # not greedy: the third-best token does get drawn
    # Scoring is unfiltered: the logprobs are the full distribution's.
    np.testing.assert_allclose(np.asarray(out.logprobs), _logp_of(logits, out.tokens, 1.0), atol=1e-5)


def test_top_p_never_leaves_the_nucleus():
    _, model, params = varied_pair()
    ids, mask = _tiled_queries()
    top_p, t = 0.5, 0.8
    out = sample(model, params, ids, mask, jax.random.key(2), response_length=R, top_p=top_p, temperature=t)
    logits = _full_forward_logits(model, params, ids, mask, out.tokens)
    rank, mass_above = _rank_and_mass_above(logits, out.tokens, t)
    # In the nucleus iff the tokens likelier than it hold less than top_p.
    assert mass_above.max() < top_p
    assert rank.max() >= 2  # more than the argmax is drawn
    np.testing.assert_allclose(np.asarray(out.logprobs), _logp_of(logits, out.tokens, t), atol=1e-5)


def test_greedy_ignores_temperature():
    _, model, params = varied_pair()
    ids, mask = _queries()
    outs = [
        sample(model, params, ids, mask, jax.random.key(k), response_length=R, temperature=t, greedy=True)
        for k, t in ((0, 1.0), (7, 0.3), (8, 3.0))
    ]
    for out in outs[1:]:
        np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(outs[0].tokens))
    # ... which only changes the reported (tempered) logprobs.
    assert not np.allclose(np.asarray(outs[1].logprobs), np.asarray(outs[2].logprobs))


# ----------------------------------------------------------- EOS handling


def _eos_splitting_rows(tokens_BxR):
    """A token that some rows draw and others never do, preferring one drawn first.

    A row whose very first token is EOS exercises the step before the scan.
    """
    candidates = list(np.unique(tokens_BxR[:, 0])) + list(np.unique(tokens_BxR))
    for tok in candidates:
        rows = (tokens_BxR == tok).any(1)
        if 0 < rows.sum() < len(rows):
            return int(tok)
    raise AssertionError("no token splits the rows; change the key")


def test_stiennon_mode_pads_after_first_eos_and_ziegler_mode_does_not_stop():
    key = 6
    free = _rollout8(key)
    eos = _eos_splitting_rows(np.asarray(free.tokens))
    # Ziegler: EOS is an ordinary token; every response is response_length long.
    z = _rollout8(key, eos_token_id=eos)
    z_tokens, z_logp = np.asarray(z.tokens), np.asarray(z.logprobs)
    np.testing.assert_array_equal(z_tokens, np.asarray(free.tokens))
    np.testing.assert_array_equal(np.asarray(z.mask), 1)
    assert (z_tokens < 8).all()
    # Stiennon: stop after the first EOS; the default pad is vocab_size.
    s = _rollout8(key, stop_at_eos=True, eos_token_id=eos)
    s_tokens, s_logp, s_mask = np.asarray(s.tokens), np.asarray(s.logprobs), np.asarray(s.mask)
    stopped = 0
    ends = []
    for row in range(len(z_tokens)):
        hits = np.flatnonzero(z_tokens[row] == eos)
        end = hits[0] + 1 if hits.size else R  # through the first EOS
        stopped += end < R
        ends.append(end)
        # Same key, same prefix: identical draws up to and including EOS.
        np.testing.assert_array_equal(s_tokens[row, :end], z_tokens[row, :end])
        np.testing.assert_allclose(s_logp[row, :end], z_logp[row, :end], atol=1e-6)
        np.testing.assert_array_equal(s_mask[row, :end], 1)
        np.testing.assert_array_equal(s_tokens[row, end:], 8)  # never sampled
        np.testing.assert_array_equal(s_logp[row, end:], 0.0)
        np.testing.assert_array_equal(s_mask[row, end:], 0)
    assert stopped >= 1 and (s_mask == 1).all(1).any()  # both kinds of row occur
    assert 1 in ends  # some row stops at its very first token
    assert (z_tokens[s_mask == 0] != 8).all()  # Ziegler emitted real tokens there


# ------------------------------------------------- determinism, compilation


def test_deterministic_for_a_key():
    a, b, c = _rollout8(1), _rollout8(1), _rollout8(2)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.logprobs), np.asarray(b.logprobs))
    assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()


def test_compiled_once_per_shape_and_rows_independent_of_the_batch():
    model, params = vocab8_model()
    ids, mask = _queries8()

    def run(ids, mask, key, temperature, row_offset=0):
        out = sample(
            model, params, ids, mask, jax.random.key(key),
            response_length=R, temperature=temperature, row_offset=row_offset,
        )
        return np.asarray(out.tokens)

    full = run(ids, mask, 0, 1.0)
    n = sampling._sample_jit._cache_size()
    run(ids, mask, 1, 0.7)  # new key, new temperature: traced, no recompile
    run(ids, mask, 2, 0.5)
    assert sampling._sample_jit._cache_size() == n
    # A new batch shape compiles once more; a row's draws depend only on the
    # key and its global index (row_offset), not on the batch it is in.
    part = run(ids[2:4], mask[2:4], 0, 1.0, row_offset=2)
    assert sampling._sample_jit._cache_size() == n + 1
    np.testing.assert_array_equal(part, full[2:4])
    run(ids[2:4], mask[2:4], 3, 2.0, row_offset=4)
    assert sampling._sample_jit._cache_size() == n + 1


# --------------------------------------------------------------------- errors


def test_too_long_for_the_context_window():
    # Exactly filling the window (4 + R = n_positions) is fine: see the rollouts above.
    model, params = vocab8_model()
    ids, mask = _queries8()
    want = r"query length 4 \+ response_length 7 exceeds the model's n_positions=10"
    with pytest.raises(ValueError, match=want):
        sample(model, params, ids, mask, jax.random.key(0), response_length=R + 1)


def test_bad_options():
    model, params = vocab8_model()
    ids, mask = _queries8()
    with pytest.raises(ValueError, match="stop_at_eos=True needs eos_token_id"):
        sample(model, params, ids, mask, jax.random.key(0), response_length=R, stop_at_eos=True)
    with pytest.raises(ValueError, match="response_length must be >= 1, got 0"):
        sample(model, params, ids, mask, jax.random.key(0), response_length=0)

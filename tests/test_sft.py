"""SFT and LM pretraining: target masks, log-probs, learning, device-count invariance."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlhf_jax.infra.metrics import read_metrics
from rlhf_jax.infra.parallel import DataParallel
from rlhf_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel
from rlhf_jax.stages import sft

V, PAD, Q, R = 32, 32, 4, 4
CONFIG = GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=2)
# Jitted: eager model calls compile every op separately, which is slow.
token_nll = jax.jit(sft.token_nll, static_argnums=(0, 6))
response_logprobs = jax.jit(sft.response_logprobs, static_argnums=(0,))


@pytest.fixture(scope="module")
def lm_init():
    model = GPT2LMHeadModel(CONFIG)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, Q + R), jnp.int32))["params"]
    return model, params


def make_sft_data(n, seed):
    """Left-padded queries of 2-4 tokens; the reference continues the last query
    token by counting up (2-4 tokens, right-padded)."""
    rng = np.random.default_rng(seed)
    q_len, r_len = rng.integers(2, Q + 1, n), rng.integers(2, R + 1, n)
    query = np.full((n, Q), PAD)
    response = np.full((n, R), PAD)
    for i in range(n):
        q = rng.integers(8, V, q_len[i])
        query[i, Q - q_len[i]:] = q
        response[i, :r_len[i]] = 8 + (q[-1] - 8 + 1 + np.arange(r_len[i])) % (V - 8)
    return sft.SFTData(query, query != PAD, response, response != PAD)


def make_cfg(stage, *, batch_size=32, epochs=3, lr=3e-3, mode="pmap", loss_on="response"):
    cfg = ml_collections.ConfigDict()
    cfg[stage] = dict(batch_size=batch_size, epochs=epochs, lr=lr, schedule="cosine", warmup_frac=0.0,
                      adam="tf",
                      adam_eps=1e-5, log_every=4, eval_every=8, checkpoint_every=100)
    if stage == "sft":
        cfg.sft.loss_on = loss_on
    cfg.parallel = dict(mode=mode)
    return cfg


def test_target_mask_hand_worked():
    qm, rm = jnp.array([[0, 1, 1]]), jnp.array([[1, 1, 0]])
    # Sequence mask [0 1 1 1 1 0]; position t predicts token t+1.
    np.testing.assert_array_equal(sft.target_mask(qm, rm, "response"), [[0, 0, 1, 1, 0]])
    # "all": every real token after the first real one.
    np.testing.assert_array_equal(sft.target_mask(qm, rm, "all"), [[0, 1, 1, 1, 0]])
    with pytest.raises(ValueError, match="loss_on"):
        sft.target_mask(qm, rm, "query")


def test_nll_and_response_logprobs_match_a_direct_computation(lm_init):
    model, params = lm_init
    q = jnp.array([[PAD, 9, 10], [11, 12, 13]])
    qm = (q != PAD).astype(jnp.int32)
    r = jnp.array([[14, 15], [16, PAD]])
    rm = (r != PAD).astype(jnp.int32)
    ids, mask = jnp.concatenate([q, r], 1), jnp.concatenate([qm, rm], 1)
    logits = jax.jit(model.apply)({"params": params}, ids, attention_mask=mask).logits
    logp = np.asarray(jax.nn.log_softmax(logits))
    # Row 0: response tokens at 3, 4 predicted from positions 2, 3. Row 1: token 4 only.
    want_0 = logp[0, 2, 14] + logp[0, 3, 15]
    want_1 = logp[1, 2, 16]
    got = response_logprobs(model, params, q, qm, r, rm)
    np.testing.assert_allclose(got, [want_0, want_1], rtol=1e-5)
    # Tempered: logits / 2.
    logp_t = np.asarray(jax.nn.log_softmax(logits / 2.0))
    np.testing.assert_allclose(response_logprobs(model, params, q, qm, r, rm, 2.0)[1],
                               logp_t[1, 2, 16], rtol=1e-5)
    nll, count = token_nll(model, params, q, qm, r, rm, "response")
    np.testing.assert_allclose(nll, [-want_0, -want_1], rtol=1e-5)
    np.testing.assert_array_equal(count, [2, 1])
    # "all" adds the query's own next-token terms: row 0 token 2 from position 1.
    nll_all, count_all = token_nll(model, params, q, qm, r, rm, "all")
    np.testing.assert_allclose(nll_all[0], -(want_0 + logp[0, 1, 10]), rtol=1e-5)
    np.testing.assert_array_equal(count_all, [3, 3])


def test_sft_lowers_held_out_reference_loss(lm_init, tmp_path):
    model, params = lm_init
    train, val = make_sft_data(256, 1), make_sft_data(100, 2)
    trained, summary = sft.train_sft(make_cfg("sft"), model=model, params=params, train=train,
                                     val=val, dp=DataParallel("pmap"), rng=jax.random.key(1),
                                     workdir=str(tmp_path))
    before, after = summary["initial_val"]["val_loss"], summary["final_val"]["val_loss"]
    print(f"SFT held-out reference loss {before:.3f} -> {after:.3f}")
    assert before > 3.0  # about log(32) for an untrained model
    assert after < before - 1.0
    # The held-out loss is the token mean over the 100 pairs (the last batch padded).
    nll, count = token_nll(model, trained, val.query_NxQ, val.query_mask_NxQ,
                               val.response_NxR, val.response_mask_NxR, "response")
    assert float(nll.sum() / count.sum()) == pytest.approx(after, rel=1e-4)
    rows = read_metrics(str(tmp_path), "sft")
    assert [r["step"] for r in rows if "sft/val_loss" in r] == [0, 8, 16, 24]
    lrs = [r["sft/lr"] for r in rows if "sft/lr" in r]
    assert lrs[0] < 3e-3 and lrs == sorted(lrs, reverse=True)  # cosine decay
    assert lrs[-1] == pytest.approx(3e-3 * 0.5 * (1 + np.cos(np.pi * 23 / 24)), rel=1e-5)


def test_lm_pretraining_is_device_count_invariant(lm_init, tmp_path):
    """Token-weighted loss: rows of different lengths on different devices
    still give the global token mean, so 4 devices match 1."""
    model, params = lm_init
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, Q + R + 1, 64)
    tokens = rng.integers(8, V, (64, Q + R))
    mask = (np.arange(Q + R)[None] < lengths[:, None]).astype(np.int32)  # right-padded
    tokens = np.where(mask == 1, tokens, PAD)
    out = {}
    for mode, n in (("mesh", 4), ("mesh", 1)):
        out[n], summary = sft.train_lm(
            make_cfg("pretrain", batch_size=16, epochs=1, mode=mode), model=model, params=params,
            tokens_NxT=tokens, mask_NxT=mask, dp=DataParallel(mode, num_devices=n),
            rng=jax.random.key(3), workdir=str(tmp_path / str(n)))
    for x, y in zip(jax.tree.leaves(out[4]), jax.tree.leaves(out[1])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=0)
    assert summary["train"]["loss"] < np.log(V)
    assert {"pretrain/loss", "pretrain/lr"} <= set().union(*read_metrics(str(tmp_path / "1")))


def test_sft_config_errors(lm_init):
    model, params = lm_init
    data = make_sft_data(64, 0)
    kw = dict(model=model, params=params, train=data, val=None, dp=DataParallel("pmap"),
              rng=jax.random.key(0))
    with pytest.raises(ValueError, match="sft.loss_on='prompt'"):
        sft.train_sft(make_cfg("sft", loss_on="prompt"), **kw)
    with pytest.raises(ValueError, match="sft.batch_size=6 is not divisible by the device"):
        sft.train_sft(make_cfg("sft", batch_size=6), **kw)
    with pytest.raises(ValueError, match="parallel.mode='mesh'"):
        sft.train_sft(make_cfg("sft", mode="mesh"), **kw)
    with pytest.raises(ValueError, match="no response tokens"):
        sft.train_sft(make_cfg("sft"), **{**kw, "train": sft.SFTData.from_sequences(
            data.query_NxQ, data.query_mask_NxQ)})

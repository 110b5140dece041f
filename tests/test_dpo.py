"""DPO: pairs from labels, log-probs, and learning the preference on held-out pairs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlhf_jax.algorithms import losses
from rlhf_jax.data.labels import Labels
from rlhf_jax.infra.metrics import read_metrics
from rlhf_jax.infra.parallel import DataParallel
from rlhf_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel
from rlhf_jax.stages import dpo

V, PAD, Q, R = 32, 32, 3, 6
GOLD_TOKEN = 7
CONFIG = GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=2)


@pytest.fixture(scope="module")
def lm_init():
    model = GPT2LMHeadModel(CONFIG)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, Q + R), jnp.int32))["params"]
    return model, params


def make_pairs(n, seed):
    """Pairwise labels preferring the response with more of token 7."""
    rng = np.random.default_rng(seed)
    queries, responses, best = [], [], []
    while len(queries) < n:
        p7_2 = rng.uniform(0.0, 0.8, size=2)
        resp_2xR = np.where(rng.uniform(size=(2, R)) < p7_2[:, None], GOLD_TOKEN,
                            rng.integers(8, V, size=(2, R)))
        count_2 = (resp_2xR == GOLD_TOKEN).sum(1)
        if count_2[0] == count_2[1]:
            continue
        queries.append(rng.integers(8, V, size=Q))
        responses.append(resp_2xR)
        best.append(int(count_2.argmax()))
    return Labels(label_type="pairwise", query_NxQ=np.array(queries),
                  query_mask_NxQ=np.ones((n, Q), np.int32), responses_NxKxR=np.array(responses),
                  response_mask_NxKxR=np.ones((n, 2, R), np.int32), pad_token=PAD,
                  best_N=np.array(best))


def make_cfg(num_train, num_val, *, beta=0.5, batch_size=32, label_type="pairwise"):
    cfg = ml_collections.ConfigDict()
    cfg.dpo = dict(beta=beta, batch_size=batch_size, epochs=3, lr=2e-3, schedule="linear",
                   warmup_frac=0.0, adam="tf", adam_eps=1e-5, log_every=6, eval_every=0,
                   checkpoint_every=100)
    cfg.labels = dict(type=label_type, num_train=num_train, num_val=num_val)
    cfg.parallel = dict(mode="pmap")
    return cfg


def test_preference_pairs_from_each_label_type():
    q = np.array([[5], [6]])
    common = dict(query_NxQ=q, query_mask_NxQ=np.ones((2, 1), np.int32), pad_token=PAD)
    resp = np.array([[[10], [11], [12]], [[20], [21], [22]]])
    best_of_3 = Labels(label_type="best_of_n", responses_NxKxR=resp,
                       response_mask_NxKxR=np.ones((2, 3, 1), np.int32),
                       best_N=np.array([2, 0]), **common)
    pairs = dpo.preference_pairs(best_of_3)
    # Record 0 prefers 12 over 10 and 11; record 1 prefers 20 over 21 and 22.
    np.testing.assert_array_equal(pairs.query_PxQ[:, 0], [5, 5, 6, 6])
    np.testing.assert_array_equal(pairs.chosen_PxR[:, 0], [12, 12, 20, 20])
    np.testing.assert_array_equal(pairs.rejected_PxR[:, 0], [10, 11, 21, 22])
    compare = Labels(label_type="scalar_compare", responses_NxKxR=resp[:, :2],
                     response_mask_NxKxR=np.ones((2, 2, 1), np.int32),
                     difference_N=np.array([-0.5, 0.0]), **common)
    pairs = dpo.preference_pairs(compare)  # the tie is dropped; -0.5 prefers sample0
    assert len(pairs) == 1
    assert (pairs.chosen_PxR[0, 0], pairs.rejected_PxR[0, 0]) == (10, 11)
    rating = Labels(label_type="scalar_rating", responses_NxKxR=resp[:, :1],
                    response_mask_NxKxR=np.ones((2, 1, 1), np.int32),
                    score_N=np.array([1.0, 2.0]), **common)
    with pytest.raises(ValueError, match="scalar_rating"):
        dpo.preference_pairs(rating)


def test_pair_logprobs_and_loss_at_the_reference(lm_init):
    model, params = lm_init
    labels = make_pairs(4, 0)
    pairs = dpo.preference_pairs(labels)
    chosen_B, rejected_B = jax.jit(dpo.pair_logprobs, static_argnums=(0,))(
        model, params, pairs.query_PxQ, pairs.query_mask_PxQ, pairs.chosen_PxR,
        pairs.chosen_mask_PxR, pairs.rejected_PxR, pairs.rejected_mask_PxR)
    # Summed log-probs of 6 tokens under a near-uniform untrained model: about 6 log(1/32).
    np.testing.assert_allclose(chosen_B, 6 * np.log(1 / V), rtol=0.1)
    assert np.all(np.asarray(chosen_B) != np.asarray(rejected_B))
    # At the reference the loss is log 2 and the margin 0.
    m = losses.dpo_metrics(chosen_B, rejected_B, chosen_B, rejected_B, 0.5)
    assert float(m["loss"]) == pytest.approx(np.log(2.0)) and float(m["margin"]) == 0.0


def test_dpo_raises_held_out_margin_and_accuracy(lm_init, tmp_path):
    model, params = lm_init
    train, val = make_pairs(192, 1), make_pairs(100, 2)
    trained, summary = dpo.train_dpo(make_cfg(192, 100), model=model, params=params,
                                     ref_params=params, train=train, val=val,
                                     dp=DataParallel("pmap"), rng=jax.random.key(1),
                                     workdir=str(tmp_path))
    before, after = summary["initial_val"], summary["final_val"]
    print(f"DPO held-out: margin {before['val_margin']:.3f} -> {after['val_margin']:.3f}, "
          f"accuracy {before['val_accuracy']:.3f} -> {after['val_accuracy']:.3f}")
    # Policy == reference at the start: every implicit reward is 0.
    assert before["val_margin"] == pytest.approx(0.0, abs=1e-6)
    assert before["val_loss"] == pytest.approx(np.log(2.0), abs=1e-6)
    assert after["val_margin"] > 0.5
    assert after["val_accuracy"] > 0.75
    assert after["val_loss"] < np.log(2.0) - 0.1
    names = set().union(*read_metrics(str(tmp_path), "dpo"))
    assert {"dpo/loss", "dpo/accuracy", "dpo/margin", "dpo/lr", "dpo/val_margin",
            "dpo/val_accuracy"} <= names
    # The frozen reference is untouched; the policy moved.
    assert not np.allclose(trained["transformer"]["wte"]["embedding"],
                           params["transformer"]["wte"]["embedding"])


def test_dpo_config_errors(lm_init):
    model, params = lm_init
    labels = make_pairs(40, 0)
    kw = dict(model=model, params=params, ref_params=params, train=labels, val=None,
              dp=DataParallel("pmap"), rng=jax.random.key(0))
    with pytest.raises(ValueError, match=r"dpo.beta=0.0 must be a number > 0"):
        dpo.train_dpo(make_cfg(40, 0, beta=0.0), **kw)
    with pytest.raises(ValueError, match=r"dpo.batch_size=6 is not divisible by the device"):
        dpo.train_dpo(make_cfg(40, 0, batch_size=6), **kw)
    with pytest.raises(ValueError, match=r"labels.num_val=8 but no held-out labels"):
        dpo.train_dpo(make_cfg(40, 8), **kw)
    with pytest.raises(ValueError, match=r"labels.type='best_of_4'"):
        dpo.train_dpo(make_cfg(40, 0, label_type="best_of_4"), **kw)

"""Reward-model trainer: scoring positions, normalisation, accuracy, data parallelism, resume."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlhf_jax.data.labels import Labels
from rlhf_jax.infra.metrics import MetricsWriter, read_metrics
from rlhf_jax.infra.parallel import DataParallel
from rlhf_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel
from rlhf_jax.models.heads import RewardModel
from rlhf_jax.stages import reward, reward_train

V, PAD, Q, R = 32, 32, 3, 6  # vocab, pad (outside the vocabulary), query / response length
GOLD_TOKEN = 7
CONFIG = GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=2)


def make_labels(n, k, seed, kind):
    """Synthetic comparisons whose true preference is the count of token 7.

    Each response draws token 7 with its own probability, so counts differ
    widely; records whose best count is tied are redrawn.
    """
    rng = np.random.default_rng(seed)
    queries, responses, best = [], [], []
    while len(queries) < n:
        p7_K = rng.uniform(0.0, 0.8, size=k)
        resp_KxR = np.where(rng.uniform(size=(k, R)) < p7_K[:, None], GOLD_TOKEN,
                            rng.integers(8, V, size=(k, R)))
        count_K = (resp_KxR == GOLD_TOKEN).sum(1)
        if (count_K == count_K.max()).sum() != 1:
            continue
        queries.append(rng.integers(8, V, size=Q))
        responses.append(resp_KxR)
        best.append(int(count_K.argmax()))
    return Labels(label_type=kind, query_NxQ=np.array(queries),
                  query_mask_NxQ=np.ones((n, Q), np.int32), responses_NxKxR=np.array(responses),
                  response_mask_NxKxR=np.ones((n, k, R), np.int32), pad_token=PAD,
                  best_N=np.array(best))


def make_cfg(label_type, num_train, num_val, *, batch_size=32, epochs=1, lr=1e-3, mode="pmap",
             normalize=False, normalize_samples=0):
    cfg = ml_collections.ConfigDict()
    cfg.reward = dict(
        batch_size=batch_size, epochs=epochs, lr=lr, schedule="linear", warmup_frac=0.0, adam="tf",
        adam_eps=1e-5, log_every=4, eval_every=0, checkpoint_every=2,
        normalize_before=normalize, normalize_after=normalize,
        normalize_samples=normalize_samples, normalize_mode="gain_bias", head="linear",
        reward_at="last", rollout_batch_size=1000, token_head=False, span_coef=1.0)
    cfg.labels = dict(type=label_type, num_train=num_train, num_val=num_val)
    cfg.parallel = dict(mode=mode)
    cfg.task = dict(temperature=0.7, response_length=R)
    return cfg


@pytest.fixture(scope="module")
def rm_init():
    model = RewardModel(CONFIG)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, Q + R), jnp.int32))["params"]
    return model, params


def assert_trees_close(a, b, atol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


# --------------------------------------------------------------------------
# Pure pieces, hand-worked numbers.


def test_reward_index_last_and_eos():
    response_BxR = jnp.array([[5, 9, 4, PAD], [9, 9, 9, 9], [3, 4, 9, 9]])
    mask_BxR = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    # Q=5: last real token = 5 + len - 1.
    np.testing.assert_array_equal(
        reward.reward_index(5, response_BxR, mask_BxR, reward_at="last"), [7, 8, 8])
    # EOS 4: row 0 at response index 2, row 1 has none (last token), row 2 at index 1.
    np.testing.assert_array_equal(
        reward.reward_index(5, response_BxR, mask_BxR, reward_at="eos", eos_token=4), [7, 8, 6])
    # An EOS id inside the padding does not count.
    np.testing.assert_array_equal(
        reward.reward_index(2, jnp.array([[1, 2, 4]]), jnp.array([[1, 1, 0]]), reward_at="eos",
                            eos_token=4), [3])
    with pytest.raises(ValueError, match="reward.reward_at"):
        reward.reward_index(5, response_BxR, mask_BxR, reward_at="first")
    with pytest.raises(ValueError, match="task.eos_token"):
        reward.reward_index(5, response_BxR, mask_BxR, reward_at="eos")


def test_padded_response_scores_at_its_last_real_token(rm_init):
    """Trailing pads change nothing: the reward is read where LHP reads it."""
    model, params = rm_init
    q_2xQ, qm_2xQ = np.array([[PAD, 9, 10]] * 2), np.array([[0, 1, 1]] * 2)
    response_2xR = np.array([[11, 12, PAD, PAD], [11, 12, 13, 14]])
    mask_2xR = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    padded_2 = reward.score(model, params, q_2xQ, qm_2xQ, response_2xR, mask_2xR,
                            reward_at="last")
    # Row 1 cut to its first two tokens is row 0 without the pads.
    short_2 = reward.score(model, params, q_2xQ, qm_2xQ, response_2xR[:, :2], mask_2xR[:, :2],
                           reward_at="last")
    np.testing.assert_allclose(padded_2[0], short_2[1], atol=1e-6)
    assert abs(padded_2[1] - padded_2[0]) > 1e-4  # the extra tokens do count
    # Output = gain * raw + bias.
    raw_2 = reward.score(model, params, q_2xQ, qm_2xQ, response_2xR, mask_2xR,
                         reward_at="last", raw=True)
    scaled = {**params, "reward_gain": jnp.float32(3.0), "reward_bias": jnp.float32(-1.0)}
    np.testing.assert_allclose(
        reward.score(model, scaled, q_2xQ, qm_2xQ, response_2xR, mask_2xR, reward_at="last"),
        3.0 * raw_2 - 1.0, atol=1e-5)


def test_set_reward_norm_hand_worked():
    params = {"reward_gain": jnp.float32(1.0), "reward_bias": jnp.float32(0.0), "w": 1}
    # raw ~ (2, 4) -> target (1, 2): gain = 2/4, bias = 1 - 0.5 * 2 = 0.
    out = reward.set_reward_norm(params, mean=2.0, std=4.0, target_mean=1.0, target_std=2.0,
                                 mode="gain_bias")
    assert float(out["reward_gain"]) == 0.5 and float(out["reward_bias"]) == 0.0
    assert out["w"] == 1 and float(params["reward_gain"]) == 1.0  # input untouched
    # Stiennon: keep the gain (3), bias = 0 - 3 * 2.
    out = reward.set_reward_norm({**params, "reward_gain": jnp.float32(3.0)}, mean=2.0, std=4.0,
                                 target_mean=0.0, target_std=1.0, mode="bias_only")
    assert float(out["reward_gain"]) == 3.0 and float(out["reward_bias"]) == -6.0
    with pytest.raises(ValueError, match="std 0"):
        reward.set_reward_norm(params, mean=1.0, std=0.0, target_mean=0.0, target_std=1.0,
                               mode="gain_bias")
    with pytest.raises(ValueError, match="reward.normalize_mode"):
        reward.set_reward_norm(params, mean=1.0, std=1.0, target_mean=0.0, target_std=1.0,
                               mode="gain")


def test_label_target_moments_follow_lhp():
    common = dict(query_NxQ=np.full((4, 1), 3), query_mask_NxQ=np.ones((4, 1), np.int32),
                  pad_token=PAD)
    compare = Labels(label_type="scalar_compare", responses_NxKxR=np.full((4, 2, 1), 3),
                     response_mask_NxKxR=np.ones((4, 2, 1), np.int32),
                     difference_N=np.array([2.0, -2.0, 6.0, 2.0]), **common)
    # difference / 2 = [1, -1, 3, 1]: mean 1, population std sqrt(2).
    mean, std = reward.label_target_moments(compare)
    assert mean == pytest.approx(1.0) and std == pytest.approx(np.sqrt(2.0))
    rating = Labels(label_type="scalar_rating", responses_NxKxR=np.full((4, 1, 1), 3),
                    response_mask_NxKxR=np.ones((4, 1, 1), np.int32),
                    score_N=np.array([1.0, 3.0, 1.0, 3.0]), **common)
    assert reward.label_target_moments(rating) == pytest.approx((2.0, 1.0))
    assert reward.label_target_moments(make_labels(4, 4, 0, "best_of_n")) == (0.0, 1.0)


def test_label_metrics_by_type():
    r_BxK = jnp.array([[0.0, 2.0], [1.0, -1.0]])
    pair = reward_train.label_metrics("pairwise", r_BxK, jnp.array([1, 1]))
    # chosen - rejected = [2, -2]: loss mean(log(1+e^-2), log(1+e^2)).
    want = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(2.0))])
    assert float(pair["loss"]) == pytest.approx(want, rel=1e-6)
    assert float(pair["accuracy"]) == 0.5 and float(pair["margin"]) == 0.0
    comp = reward_train.label_metrics("scalar_compare", r_BxK, jnp.array([1.0, -3.0]))
    # r1 - r0 = [2, -2] vs [1, -3]: squared errors 1, 1.
    assert float(comp["loss"]) == pytest.approx(1.0) and float(comp["accuracy"]) == 1.0


# --------------------------------------------------------------------------
# Training.


# The accuracy tests' training setup; later tests reuse it (and so its
# compiled step) where they can.
NUM_TRAIN, EPOCHS, LR = 192, 3, 2e-3


@pytest.mark.parametrize("label_type,k", [("best_of_4", 4), ("pairwise", 2)])
def test_rm_learns_token_count_preference(rm_init, label_type, k, tmp_path):
    model, params = rm_init
    kind = "best_of_n" if k == 4 else "pairwise"
    train, val = make_labels(NUM_TRAIN, k, 1, kind), make_labels(120, k, 2, kind)
    cfg = make_cfg(label_type, NUM_TRAIN, 120, epochs=EPOCHS, lr=LR)
    trained, summary = reward_train.train_reward_model(
        cfg, rm_model=model, rm_params=params, train=train, val=val, dp=DataParallel("pmap"),
        rng=jax.random.key(1), workdir=str(tmp_path))
    print(f"{label_type}: held-out accuracy {summary['initial_val']['val_accuracy']:.3f} -> "
          f"{summary['final_val']['val_accuracy']:.3f}")
    assert summary["final_val"]["val_accuracy"] >= 0.9
    assert summary["initial_val"]["val_accuracy"] < 0.8
    # The held-out accuracy (120 labels: the last batch is padded) agrees with
    # scoring the val set directly.
    b, kk, r = val.responses_NxKxR.shape
    scores_BxK = reward.score(
        model, trained, np.repeat(val.query_NxQ, kk, 0), np.repeat(val.query_mask_NxQ, kk, 0),
        val.responses_NxKxR.reshape(b * kk, r), reward_at="last").reshape(b, kk)
    assert np.mean(scores_BxK.argmax(1) == val.best_N) == pytest.approx(
        summary["final_val"]["val_accuracy"], abs=1e-6)
    rows = read_metrics(str(tmp_path), "reward")
    names = set().union(*rows)
    for name in ("reward/loss", "reward/accuracy", "reward/lr", "reward/val_accuracy"):
        assert name in names
    # Linear decay to zero per batch (Ziegler): update s uses lr * (1 - (s-1)/total).
    lr_rows = {row["step"]: row["reward/lr"] for row in rows if "reward/lr" in row}
    assert lr_rows[4] == pytest.approx(2e-3 * (1 - 3 / 18))


def test_normalisation_gives_n01_on_fresh_reference_samples(rm_init):
    model, params = rm_init
    # The LM shares the RM's trunk layout; a perturbed copy makes a different policy.
    policy = GPT2LMHeadModel(CONFIG)
    policy_params = {"transformer": jax.tree.map(lambda x: 1.5 * x, params["transformer"])}
    queries = np.random.default_rng(0).integers(8, V, size=(64, Q)).astype(np.int32)
    cfg = make_cfg("best_of_4", 64, 0, lr=1e-4, normalize=True, normalize_samples=2000)
    sampler = reward.make_reference_sampler(cfg, policy_model=policy, policy_params=policy_params,
                                            query_NxQ=queries, query_mask_NxQ=np.ones_like(queries))
    trained, summary = reward_train.train_reward_model(
        cfg, rm_model=model, rm_params=params, train=make_labels(64, 4, 1, "best_of_n"), val=None,
        dp=DataParallel("pmap"), rng=jax.random.key(1), normalizer=sampler)
    before, after = summary["init"], summary["finalize"]
    assert (before["target_mean"], before["target_std"]) == (0.0, 1.0)
    assert before["num_samples"] == after["num_samples"] == 2000
    assert float(trained["reward_gain"]) == pytest.approx(1.0 / after["raw_std"], rel=1e-5)
    fresh = sampler(2000, jax.random.key(123))
    assert fresh.response_MxR.shape == (2000, R) and fresh.response_mask_MxR.all()
    scores = reward.score(model, trained, fresh.query_MxQ, fresh.query_mask_MxQ,
                          fresh.response_MxR, reward_at="last", batch_size=1000)
    print(f"fresh reference samples after normalisation: {scores.mean():.3f} +- {scores.std():.3f}")
    assert abs(scores.mean()) < 0.1 and abs(scores.std() - 1.0) < 0.1


def test_normalisation_samples_whole_rollout_batches_policy_formatted_rm_raw(rm_init):
    model, params = rm_init
    policy = GPT2LMHeadModel(CONFIG)
    policy_params = {"transformer": jax.tree.map(lambda x: 1.5 * x, params["transformer"])}
    raw = np.random.default_rng(4).integers(8, V, (40, Q)).astype(np.int32)
    formatted = np.concatenate([np.full((40, 1), 5, np.int32), raw], 1)  # a one-token prefix
    ones = np.ones_like
    cfg = make_cfg("best_of_4", 64, 0, normalize=True, normalize_samples=10)
    cfg.reward.rollout_batch_size = 8
    samples = {}
    for n in (1, 4):
        sampler = reward.make_reference_sampler(
            cfg, policy_model=policy, policy_params=policy_params, query_NxQ=formatted,
            query_mask_NxQ=ones(formatted), rm_query_NxQ=raw, rm_query_mask_NxQ=ones(raw),
            dp=DataParallel("pmap", n))
        samples[n] = sampler(10, jax.random.key(5))
    s = samples[1]
    # LHP `train_reward.py` lines 197-199: ceil(10 / 8) = 2 whole batches, 16 samples.
    assert s.response_MxR.shape == (16, R)
    np.testing.assert_array_equal(s.query_MxQ, raw[s.query_index_M])  # what the RM reads
    np.testing.assert_array_equal(samples[4].response_MxR, s.response_MxR)  # any device count
    kw = dict(num_samples=10, response_length=R, temperature=0.7, batch_size=8)
    after_formatted = reward.sample_for_normalization(policy, policy_params, formatted,
                                                      ones(formatted), jax.random.key(5), **kw)
    np.testing.assert_array_equal(after_formatted.response_MxR, s.response_MxR)
    after_raw = reward.sample_for_normalization(policy, policy_params, raw, ones(raw),
                                                jax.random.key(5), **kw)
    assert (after_raw.response_MxR != s.response_MxR).any()  # the policy read the prefix
    # Scoring split over a mesh (params split along fsdp) equals one device.
    one = reward.score(model, params, s.query_MxQ, s.query_mask_MxQ, s.response_MxR,
                       reward_at="last", batch_size=8)
    mesh = reward.score(model, params, s.query_MxQ, s.query_mask_MxQ, s.response_MxR,
                        reward_at="last", batch_size=8, dp=DataParallel("mesh", 4, fsdp=2))
    np.testing.assert_allclose(mesh, one, atol=1e-5)


def test_bias_only_normalisation_centres_reference_pairs(rm_init):
    model, params = rm_init
    rng = np.random.default_rng(3)
    query, response = rng.integers(8, V, (40, Q)), rng.integers(8, V, (40, R))
    mask = np.ones((40, R), np.int32)
    mask[:, 4:] = 0  # right-padded reference summaries
    response = np.where(mask == 1, response, PAD)
    scaled = {**params, "reward_gain": jnp.float32(2.5)}
    out = reward.normalize_reward(model, scaled, query, np.ones_like(query), response,
                                  response_mask_BxR=mask, mode="bias_only")
    assert float(out["reward_gain"]) == 2.5
    scores = reward.score(model, out, query, np.ones_like(query), response, mask, reward_at="last")
    assert abs(scores.mean()) < 1e-5


def test_four_devices_match_one(rm_init):
    """pmap over 4 devices and jit over a 4-device mesh both equal one device."""
    model, params = rm_init
    train = make_labels(NUM_TRAIN, 4, 1, "best_of_n")
    out = {}
    for mode, n in (("pmap", 1), ("pmap", 4), ("mesh", 4)):
        out[mode, n], _ = reward_train.train_reward_model(
            make_cfg("best_of_4", NUM_TRAIN, 0, epochs=EPOCHS, lr=LR, mode=mode), rm_model=model,
            rm_params=params, train=train, val=None, dp=DataParallel(mode, num_devices=n),
            rng=jax.random.key(2))
    assert_trees_close(out["pmap", 4], out["pmap", 1], atol=1e-5)
    assert_trees_close(out["mesh", 4], out["pmap", 1], atol=1e-5)
    # The params did move, so the comparison is not vacuous.
    assert float(jnp.max(jnp.abs(out["pmap", 1]["reward_head"]["kernel"]
                                 - params["reward_head"]["kernel"]))) > 1e-4


def test_exact_resume_after_interruption(rm_init, tmp_path):
    model, params = rm_init
    train = make_labels(NUM_TRAIN, 2, 1, "pairwise")
    cfg = make_cfg("pairwise", NUM_TRAIN, 0, epochs=EPOCHS, lr=LR)  # 18 steps
    kw = dict(rm_model=model, rm_params=params, train=train, val=None, dp=DataParallel("pmap"),
              rng=jax.random.key(4))
    train = reward_train.train_reward_model
    full, full_summary = train(cfg, workdir=str(tmp_path / "a"), **kw)
    part, summary = train(cfg, workdir=str(tmp_path / "b"), stop_after=7, **kw)
    assert summary["stopped_early"] and summary["steps"] == 7
    assert os.path.isdir(tmp_path / "b" / "checkpoints" / "reward" / "7")
    resumed, resumed_summary = train(cfg, workdir=str(tmp_path / "b"), **kw)
    assert not resumed_summary["stopped_early"]
    assert_trees_close(resumed, full, atol=1e-6)
    assert resumed_summary["train"] == pytest.approx(full_summary["train"], abs=1e-6, rel=1e-6)
    # Each step is logged once, as in the uninterrupted run.
    steps_a = [r["step"] for r in read_metrics(str(tmp_path / "a"), "reward")]
    steps_b = [r["step"] for r in read_metrics(str(tmp_path / "b"), "reward")]
    assert steps_b == steps_a
    # SIGTERM (here sent while step 8's metrics are written) saves and returns;
    # the relaunch ends where the uninterrupted run did.
    class KillAtStep8(MetricsWriter):
        def write(self, step, stage, metrics):
            super().write(step, stage, metrics)
            if step == 8 and "reward/loss" in metrics:
                os.kill(os.getpid(), signal.SIGTERM)

    with KillAtStep8(str(tmp_path / "c")) as writer:
        _, summary = reward_train.train_reward_model(cfg, workdir=str(tmp_path / "c"),
                                                     writer=writer, **kw)
    assert summary["stopped_early"] and summary["steps"] == 9  # stopped at its next check
    resumed_c, _ = reward_train.train_reward_model(cfg, workdir=str(tmp_path / "c"), **kw)
    assert_trees_close(resumed_c, full, atol=1e-6)
    # A finished stage does no new work on relaunch.
    again, again_summary = reward_train.train_reward_model(cfg, workdir=str(tmp_path / "b"), **kw)
    assert_trees_close(again, full, atol=1e-6)
    assert json.dumps(again_summary, sort_keys=True) == json.dumps(resumed_summary, sort_keys=True)


def test_config_errors_name_the_field(rm_init):
    model, params = rm_init
    train = make_labels(40, 4, 1, "best_of_n")
    kw = dict(rm_model=model, rm_params=params, train=train, val=None, dp=DataParallel("pmap"),
              rng=jax.random.key(0))
    with pytest.raises(ValueError, match=r"labels.num_train=40 is not divisible by "
                                         r"reward.batch_size=16"):
        reward_train.train_reward_model(make_cfg("best_of_4", 40, 0, batch_size=16), **kw)
    with pytest.raises(ValueError, match=r"reward.batch_size=10 is not divisible by the device"):
        reward_train.train_reward_model(make_cfg("best_of_4", 40, 0, batch_size=10), **kw)
    with pytest.raises(ValueError, match=r"labels.num_train=48 but only 40"):
        reward_train.train_reward_model(make_cfg("best_of_4", 48, 0, batch_size=16), **kw)
    with pytest.raises(ValueError, match=r"labels.type='pairwise'"):
        reward_train.train_reward_model(make_cfg("pairwise", 40, 0, batch_size=8), **kw)
    with pytest.raises(ValueError, match="normalizer"):
        reward_train.train_reward_model(
            make_cfg("best_of_4", 40, 0, batch_size=8, normalize=True, normalize_samples=8), **kw)
    cfg = make_cfg("best_of_4", 40, 0, batch_size=8)
    del cfg.reward["reward_at"]
    with pytest.raises(AttributeError, match="reward_at"):
        reward_train.train_reward_model(cfg, **kw)


def test_mesh_runs_keep_the_reward_model_off_the_default_device(rm_init, tmp_path, monkeypatch):
    # A saved reward model loads as host arrays, to be placed on the config's mesh
    # (split along fsdp there), never whole on the default device first.
    from rlhf_jax.models import loading

    model, params = rm_init
    loading.save_reward_model(str(tmp_path / "rm"), model, params)
    cfg = ml_collections.ConfigDict({"model": dict(dtype="float32", param_dtype="float32",
                                                   remat=False, kv_cache_dtype="")})
    loaded_model, loaded = loading.load_reward_model(cfg, str(tmp_path / "rm"))
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(loaded))
    dp = DataParallel("mesh", 4, fsdp=4)
    wte = dp.replicate(loaded)["transformer"]["wte"]["embedding"]
    assert {s.data.shape for s in wte.addressable_shards} == {(V // 4, CONFIG.n_embd)}
    # Normalisation scores on the mesh too: the single-device scorer is never called.
    def single_device(*args, **kwargs):
        raise AssertionError("scored on one device")

    monkeypatch.setattr(reward, "_get_rewards_jit", single_device)
    policy = GPT2LMHeadModel(CONFIG)
    queries = np.random.default_rng(0).integers(8, V, size=(16, Q)).astype(np.int32)
    # 5 samples asked for in batches of 4: LHP draws 2 whole batches, 8 samples.
    cfg = make_cfg("best_of_4", 16, 0, normalize=True, normalize_samples=5, mode="mesh")
    cfg.reward.rollout_batch_size = 4
    sampler = reward.make_reference_sampler(
        cfg, policy_model=policy, policy_params={"transformer": params["transformer"]},
        query_NxQ=queries, query_mask_NxQ=np.ones_like(queries), dp=dp)
    cfg.reward.batch_size = 16
    out, summary = reward_train.train_reward_model(
        cfg, rm_model=loaded_model, rm_params=loaded, train=make_labels(16, 4, 1, "best_of_n"),
        val=None, dp=dp, rng=jax.random.key(1), normalizer=sampler)
    assert summary["init"]["num_samples"] == summary["finalize"]["num_samples"] == 8

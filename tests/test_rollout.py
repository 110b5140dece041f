"""Rollouts and the best-of-N baseline (`rlhf_jax.stages.rollout`).

A 1-layer GPT-2 over 16 tokens plays policy and reference, and a hand-set
1-layer `RewardModel` scores "the fraction of target tokens" exactly enough to
check scores by hand (`target_fraction_rm`). `tests/test_ppo_train.py` trains
PPO against the same reward model. Rollouts run through `DataParallel` (the
per-row sampling keys need the mapped axis), so the sampler's own output and
the rollout's recomputed tensors can be compared row by row.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.sampling import sample
from rlhf_jax.data import tasks
from rlhf_jax.infra import parallel
from rlhf_jax.models import GPT2Config, GPT2LMHeadModel
from rlhf_jax.models.heads import PolicyWithValueHead, RewardModel
from rlhf_jax.stages.rollout import (PPOModels, TaskSpec, best_of_n_kl, make_best_of_n,
                                     make_rollout, rm_scores, score_index)

V, Q, R = 16, 4, 8
PAD = V  # outside the vocabulary: never sampled (docs/implementation_details.md item 2)
TARGET, EOS, TRUNC = 3, 5, 2
CONFIG = GPT2Config(vocab_size=V, n_positions=Q + R, n_embd=16, n_layer=1, n_head=2)
REP, SHARD = parallel.REP, parallel.SHARD


# ---------------------------------------------------------------- shared helpers


def random_params(module, seed: int, std: float = 0.02) -> dict:
    """Random params for any of our Flax models without compiling its `init`.

    `eval_shape` gives the tree; weights ~ N(0, std), biases 0, layer-norm
    scales 1, value heads 0 (as `PolicyWithValueHead`'s own init).
    """
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        names = [getattr(k, "key", str(k)) for k in path]
        if names[-1] == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        if names[-1] == "bias" or "value_head" in names:
            return jnp.zeros(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def target_fraction_rm(config: GPT2Config, target: int):
    """A 1-layer `RewardModel` that scores the fraction of `target` tokens, by construction.

    Read at index i, its reward is the fraction of `target` among the unmasked
    tokens at positions <= i, within 0.7% (relative):

    - embeddings: `target` -> e0 - e1, every other token -> 0; no positions;
    - attention: zero query/key weights, so every position attends uniformly
      to the unmasked positions up to it; the value is 1 for `target`, else 0,
      so attention outputs the fraction f; `c_proj` writes it as f * (e2 - e3)
      on top of a constant 10 * (e4 - e5); the MLP is zero;
    - `ln_f` then divides by sqrt((200 + 2 f^2 [+ 2]) / D), nearly constant,
      and the head reads (e2 - e3) scaled so that the reward is ~f.
    """
    if config.n_layer != 1 or config.n_embd < 6:
        raise ValueError("target_fraction_rm needs n_layer == 1 and n_embd >= 6")
    d = config.n_embd
    rm = RewardModel(config)
    p = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), jax.eval_shape(
        rm.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"])
    t, blk = p["transformer"], p["transformer"]["h_0"]
    for ln in (blk["ln_1"], blk["ln_2"], t["ln_f"]):
        ln["scale"][:] = 1.0
    t["wte"]["embedding"][target, :2] = (1.0, -1.0)
    # ln_1 maps e0 - e1 to sqrt(D/2) (e0 - e1) (eps aside); the value reads dim 0.
    blk["attn"]["c_attn"]["kernel"][0, 2 * d] = 1.0 / math.sqrt(d / 2)
    blk["attn"]["c_proj"]["kernel"][0, 2:4] = (1.0, -1.0)
    blk["attn"]["c_proj"]["bias"][4:6] = (10.0, -10.0)
    p["reward_head"]["kernel"][2:4, 0] = (0.5 * math.sqrt(200 / d),) * 2
    p["reward_head"]["kernel"][3, 0] *= -1
    p["reward_gain"] = np.float32(1.0)
    return rm, jax.tree.map(jnp.asarray, p)


def random_queries(index: int, batch: int):
    """A deterministic batch of left-padded queries: row i has 4 - (i % 2) real tokens."""
    rng = np.random.default_rng(index)
    ids_BxQ = rng.integers(0, V, (batch, Q)).astype(np.int32)
    mask_BxQ = np.ones((batch, Q), np.int32)
    mask_BxQ[1::2, 0] = 0
    ids_BxQ[mask_BxQ == 0] = PAD
    return ids_BxQ, mask_BxQ


def target_fraction(query_BxQ, query_mask_BxQ, response_BxR, index_B):
    """The fraction of TARGET among unmasked tokens of query + response[:index + 1] (numpy)."""
    out = []
    for q, qm, r, i in zip(query_BxQ, query_mask_BxQ, response_BxR, index_B):
        toks = np.concatenate([q[qm > 0], r[: i + 1][r[: i + 1] != PAD]])
        out.append(np.mean(toks == TARGET))
    return np.asarray(out)


@functools.lru_cache(maxsize=None)
def models_and_params():
    policy = PolicyWithValueHead(CONFIG)
    # std 0.3: far from uniform, so logprob comparisons are not trivially equal.
    policy_params = random_params(policy, seed=0, std=0.3)
    ref_params = {"transformer": policy_params["transformer"]}
    rm, rm_params = target_fraction_rm(CONFIG, TARGET)
    models = PPOModels(policy=policy, reference=GPT2LMHeadModel(CONFIG), reward=rm)
    return models, {"policy": policy_params}, ref_params, rm_params


def run_rollout(task: TaskSpec, batch: int, seed: int):
    """One rollout through `DataParallel` (pmap, 1 device): host copies of (Rollout, processed)."""
    models, params, ref_params, rm_params = models_and_params()
    dp = parallel.DataParallel("pmap", 1)
    fn = dp.compile(make_rollout(models, task, use_rm=True), (REP,) * 3 + (SHARD, SHARD, REP),
                    (SHARD, SHARD))
    q_BxQ, qm_BxQ = random_queries(seed, batch)
    rng = jax.random.key(seed)
    ro, processed = fn(dp.replicate(params), dp.replicate(ref_params), dp.replicate(rm_params),
                       dp.shard(q_BxQ), dp.shard(qm_BxQ), dp.replicate(rng))
    return jax.tree.map(np.asarray, dp.unshard((ro, processed))), rng


ZIEGLER = TaskSpec(response_length=R, temperature=0.7, pad_token=PAD, truncate_token=TRUNC,
                   truncate_after=2, penalty_reward_value=-1.0)
STIENNON = TaskSpec(response_length=R, temperature=0.7, pad_token=PAD, eos_token=EOS,
                    stop_at_eos=True)


@pytest.fixture(scope="module")
def ziegler_rollout():
    return run_rollout(ZIEGLER, batch=32, seed=1)


# ---------------------------------------------------------------- the reward model itself


@functools.partial(jax.jit, static_argnums=(0, 1))
def _rm_scores_jit(reward_model, task, rm_params, q_BxQ, qm_BxQ, processed_BxR):
    return rm_scores(reward_model, rm_params, q_BxQ, qm_BxQ, processed_BxR, task)


def _rm_scores(task, q_BxQ, qm_BxQ, processed_BxR):
    models, _, _, rm_params = models_and_params()
    return _rm_scores_jit(models.reward, task, rm_params, q_BxQ, qm_BxQ, processed_BxR)


def test_score_index_last_or_first_eos():
    resp_BxR = jnp.array([[1, EOS, 2, EOS, 0, 0, 0, 0], [1, 2, 3, 4, 6, 7, 8, 9]])
    np.testing.assert_array_equal(score_index(resp_BxR, ZIEGLER), [7, 7])
    # Stiennon: the first EOS; a row without EOS is scored at its last token.
    np.testing.assert_array_equal(score_index(resp_BxR, STIENNON), [1, 7])


def test_rm_scores_at_last_token_or_eos():
    # Query: 4 non-target tokens. Response: T T EOS T T T T T.
    # At EOS (Stiennon): tokens 0..6, 2 of 7 are TARGET -> 2/7.
    # At the last token (Ziegler, no truncation): 7 of 12 -> 7/12.
    q = jnp.array([[0, 1, 2, 4]], jnp.int32)
    qm = jnp.ones_like(q)
    resp = jnp.array([[TARGET, TARGET, EOS] + [TARGET] * 5], jnp.int32)
    last = TaskSpec(response_length=R, temperature=1.0, pad_token=PAD)
    np.testing.assert_allclose(_rm_scores(STIENNON, q, qm, resp), [2 / 7], rtol=7e-3)
    np.testing.assert_allclose(_rm_scores(last, q, qm, resp), [7 / 12], rtol=7e-3)
    # Pads (a truncated response) and query padding are masked out of the score:
    # 1 TARGET among 3 real query tokens + 3 real response tokens -> 1/6.
    q_pad = jnp.array([[PAD, 0, 1, 2]], jnp.int32)
    resp_pad = jnp.array([[TARGET, 4, TRUNC] + [PAD] * 5], jnp.int32)
    np.testing.assert_allclose(
        _rm_scores(last, q_pad, (q_pad != PAD).astype(jnp.int32), resp_pad), [1 / 6], rtol=7e-3)


# ---------------------------------------------------------------- rollout


def test_rollout_logprobs_match_the_sampler_and_reference_at_init(ziegler_rollout):
    (ro, processed), rng = ziegler_rollout
    # The reference holds the policy's initial trunk, so sampling it with the
    # same per-row keys draws the same tokens; the rollout's recomputed full
    # forward gives the sampler's temperature-scaled logprobs.
    s, _, _ = sample_and_score(ro.query_BxQ, ro.query_mask_BxQ, rng, 0)
    np.testing.assert_array_equal(ro.response_BxR, s.tokens)
    np.testing.assert_allclose(ro.logprobs_BxR, s.logprobs, atol=1e-4)
    assert np.ptp(ro.logprobs_BxR) > 1.0  # a peaked policy: the check has teeth
    # The reference is the initial policy: KL is exactly 0 at step 0.
    np.testing.assert_allclose(ro.ref_logprobs_BxR, ro.logprobs_BxR, atol=1e-6)
    # Zero-initialised value head; Ziegler trains on all R tokens, scored at R-1.
    np.testing.assert_array_equal(ro.values_BxR, 0.0)
    np.testing.assert_array_equal(ro.response_mask_BxR, 1)
    np.testing.assert_array_equal(ro.score_index_B, R - 1)


def test_policy_reads_the_formatted_query_and_the_reward_model_the_raw_one():
    # LHP: `Policy(embed_queries=query_formatter)` samples and scores the policy on
    # prefix + query + suffix; `score_fn(queries, responses)` reads the raw query
    # (`train_policy.py` lines 285-291). Prefix and suffix hold TARGET tokens, so an
    # RM shown them would score a much larger fraction of TARGET.
    prefix, suffix = (TARGET,), (TARGET, 6)
    config = dataclasses.replace(CONFIG, n_positions=Q + 3 + R)
    policy = PolicyWithValueHead(config)
    params = {"policy": random_params(policy, seed=0, std=0.3)}
    ref_params = {"transformer": params["policy"]["transformer"]}
    rm, rm_params = target_fraction_rm(config, TARGET)
    models = PPOModels(policy=policy, reference=GPT2LMHeadModel(config), reward=rm)
    task = dataclasses.replace(ZIEGLER, penalty_reward_value=None, query_prefix=prefix,
                               query_suffix=suffix)
    dp = parallel.DataParallel("pmap", 1)
    fn = dp.compile(make_rollout(models, task, use_rm=True), (REP,) * 3 + (SHARD, SHARD, REP),
                    (SHARD, SHARD))
    q_BxQ, qm_BxQ = random_queries(7, 16)
    rng = jax.random.key(7)
    ro, processed = jax.tree.map(np.asarray, dp.unshard(fn(
        dp.replicate(params), dp.replicate(ref_params), dp.replicate(rm_params),
        dp.shard(q_BxQ), dp.shard(qm_BxQ), dp.replicate(rng))))
    fq_BxW, fm_BxW = tasks.format_queries(q_BxQ, qm_BxQ, prefix, suffix, PAD)
    np.testing.assert_array_equal(ro.query_BxQ, fq_BxW)  # PPO trains on what the policy read
    s = sample(models.reference, ref_params, jnp.asarray(fq_BxW), jnp.asarray(fm_BxW), rng,
               response_length=R, temperature=task.temperature, pad_token_id=PAD)
    np.testing.assert_array_equal(ro.response_BxR, s.tokens)
    last_B = np.full(16, R - 1)
    raw_B = target_fraction(q_BxQ, qm_BxQ, processed, last_B)
    formatted_B = target_fraction(fq_BxW, fm_BxW, processed, last_B)
    np.testing.assert_allclose(ro.scores_B, raw_B, rtol=7e-3, atol=1e-3)
    assert np.min(formatted_B - raw_B) > 0.05


@pytest.mark.parametrize("shared", [True, False])
def test_forward_policy_value_equals_the_full_forward(shared):
    # The LM head runs only at the response positions; the result must be the
    # full forward's logprobs, entropies and values at those positions.
    from rlhf_jax.algorithms.ppo import forward_policy_value
    from rlhf_jax.models.heads import ValueModel

    policy = PolicyWithValueHead(CONFIG) if shared else GPT2LMHeadModel(CONFIG)
    value = None if shared else ValueModel(CONFIG)
    params = {"policy": random_params(policy, 3, std=0.5)}
    if not shared:
        params["value"] = random_params(value, 4, std=0.5)
        params["value"]["value_head"]["kernel"] = jnp.asarray(
            np.random.default_rng(5).normal(size=(CONFIG.n_embd, 1)), jnp.float32)
    models = PPOModels(policy=policy, reference=policy, value=value)
    rng = np.random.default_rng(0)
    q_BxQ = jnp.asarray(rng.integers(0, V, (3, Q)), jnp.int32)
    qm_BxQ = jnp.asarray([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]], jnp.int32)
    r_BxR = jnp.asarray(rng.integers(0, V, (3, R)), jnp.int32)
    rm_BxR = jnp.ones_like(r_BxR)
    temp = 0.7
    logp, ent, val = jax.jit(forward_policy_value, static_argnums=0)(
        models.apply_policy_value, params, q_BxQ, qm_BxQ, r_BxR, rm_BxR, temp)

    ids = jnp.concatenate([q_BxQ, r_BxR], 1)
    mask = jnp.concatenate([qm_BxQ, rm_BxR], 1)
    if shared:
        out, full_values = policy.apply({"params": params["policy"]}, ids, mask)
    else:
        out = policy.apply({"params": params["policy"]}, ids, mask)
        full_values = value.apply({"params": params["value"]}, ids, mask)
    logp_all = jax.nn.log_softmax(out.logits[:, Q - 1:-1] / temp)
    np.testing.assert_allclose(
        logp, np.take_along_axis(logp_all, r_BxR[..., None], -1)[..., 0], atol=1e-5)
    np.testing.assert_allclose(ent, -(jnp.exp(logp_all) * logp_all).sum(-1), atol=1e-5)
    np.testing.assert_allclose(val, full_values[:, Q - 1:-1], atol=1e-5)
    if not shared:
        assert np.ptp(np.asarray(val)) > 0.1  # a non-trivial value net


def test_postprocessing_and_penalty_touch_only_the_score(ziegler_rollout):
    (ro, processed), _ = ziegler_rollout
    raw = ro.response_BxR
    hit = (raw == TRUNC) & (np.arange(R) >= ZIEGLER.truncate_after)
    ends_B = hit.any(axis=1)
    # The seed gives both kinds of rows, and some truncated ones with tokens cut.
    assert 0 < ends_B.sum() < len(ends_B)
    first_B = np.where(ends_B, hit.argmax(axis=1), R - 1)
    cut = np.arange(R)[None, :] > first_B[:, None]
    assert cut.any()
    # Item 8: tokens after the first TRUNC at index >= 2 become pad, TRUNC stays.
    np.testing.assert_array_equal(processed, np.where(cut, PAD, raw))
    # Item 10: PPO's tensors keep the raw response (no pads in it).
    assert not (raw == PAD).any()
    # Item 9: no TRUNC in responses[:, 2:] -> score -1; else the RM on the
    # processed response: the TARGET fraction of query + kept tokens.
    expected = target_fraction(ro.query_BxQ, ro.query_mask_BxQ, processed, np.full(len(raw), R - 1))
    np.testing.assert_allclose(ro.scores_B[ends_B], expected[ends_B], rtol=7e-3, atol=1e-6)
    np.testing.assert_array_equal(ro.scores_B[~ends_B], -1.0)
    assert len(set(np.round(ro.scores_B[ends_B], 4))) > 1


def test_stiennon_rollout_masks_after_eos_and_scores_at_eos():
    (ro, processed), _ = run_rollout(STIENNON, batch=16, seed=3)
    is_eos = ro.response_BxR == EOS
    has_eos_B = is_eos.any(axis=1)
    eos_B = np.where(has_eos_B, is_eos.argmax(axis=1), R - 1)
    # The seed gives rows that stop early and rows that never emit EOS.
    assert (eos_B < R - 1).any() and (~has_eos_B).any()
    after = np.arange(R)[None, :] > eos_B[:, None]
    np.testing.assert_array_equal(ro.response_mask_BxR, (~after).astype(np.int32))
    np.testing.assert_array_equal(ro.response_BxR[after], PAD)
    np.testing.assert_array_equal(ro.score_index_B, eos_B)
    np.testing.assert_array_equal(processed, ro.response_BxR)  # no truncate_token here
    expected = target_fraction(ro.query_BxQ, ro.query_mask_BxQ, processed, eos_B)
    np.testing.assert_allclose(ro.scores_B, expected, rtol=7e-3, atol=1e-6)


# ---------------------------------------------------------------- best-of-N


def run_best_of_n(n: int, num_devices: int, batch: int = 32, seed: int = 5):
    models, _, ref_params, rm_params = models_and_params()
    dp = parallel.DataParallel("pmap", num_devices)
    fn = dp.compile(make_best_of_n(models, ZIEGLER, n), (REP, REP, SHARD, SHARD, REP),
                    (SHARD, SHARD, SHARD))
    q_BxQ, qm_BxQ = random_queries(seed, batch)
    out = fn(dp.replicate(ref_params), dp.replicate(rm_params), dp.shard(q_BxQ),
             dp.shard(qm_BxQ), dp.replicate(jax.random.key(seed)))
    return jax.tree.map(np.asarray, dp.unshard(out)), (q_BxQ, qm_BxQ, jax.random.key(seed))


@pytest.fixture(scope="module")
def best_of_4():
    return run_best_of_n(4, num_devices=1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _postprocess_and_score(reward_model, task, rm_params, q_BxQ, qm_BxQ, response_BxR):
    processed_BxR = tasks.postprocess_responses(response_BxR, task.truncate_token,
                                                task.truncate_after, task.pad_token)
    score_B = tasks.penalize_scores(
        rm_scores(reward_model, rm_params, q_BxQ, qm_BxQ, processed_BxR, task), response_BxR,
        task.truncate_token, task.truncate_after, task.penalty_reward_value)
    return processed_BxR, score_B


def sample_and_score(q_BxQ, qm_BxQ, rng, row_offset):
    """Ziegler-task sampling from the reference (= the initial policy), outside any rollout.

    Returns host copies of (SampleOutput, processed_BxR, penalised RM score_B).
    Candidate j of best-of-N draws with key index j * 2^20 + row.
    """
    models, _, ref_params, rm_params = models_and_params()
    q_BxQ, qm_BxQ = jnp.asarray(q_BxQ), jnp.asarray(qm_BxQ)
    s = sample(models.reference, ref_params, q_BxQ, qm_BxQ, rng, response_length=R,
               temperature=ZIEGLER.temperature, pad_token_id=PAD, row_offset=row_offset)
    processed_BxR, score_B = _postprocess_and_score(models.reward, ZIEGLER, rm_params, q_BxQ,
                                                    qm_BxQ, s.tokens)
    return jax.tree.map(np.asarray, (s, processed_BxR, score_B))


def test_best_of_n_returns_the_argmax_rm_candidate(best_of_4):
    (best_BxR, best_B, all_BxN), (q, qm, rng) = best_of_4
    cands = [sample_and_score(q, qm, rng, j * (1 << 20)) for j in range(4)]
    cand_NxBxR = np.stack([c[1] for c in cands])
    np.testing.assert_allclose(all_BxN, np.stack([c[2] for c in cands], axis=1), atol=1e-5)
    assert (np.ptp(all_BxN, axis=1) > 0).any()  # candidates differ: the argmax matters
    pick_B = all_BxN.argmax(axis=1)
    np.testing.assert_array_equal(best_B, all_BxN.max(axis=1))
    np.testing.assert_array_equal(best_BxR, cand_NxBxR[pick_B, np.arange(len(pick_B))])


def test_best_of_1_is_plain_sampling(ziegler_rollout):
    # The same queries and key as `ziegler_rollout`, whose policy is the reference at init.
    (best_BxR, best_B, all_BxN), (q, qm, rng) = run_best_of_n(1, num_devices=1, seed=1)
    _, processed, score = sample_and_score(q, qm, rng, 0)
    np.testing.assert_array_equal(best_BxR, processed)
    np.testing.assert_allclose(best_B, score, atol=1e-6)
    (ro, ro_processed), _ = ziegler_rollout
    np.testing.assert_array_equal(best_BxR, ro_processed)
    np.testing.assert_allclose(best_B, ro.scores_B, atol=1e-6)
    np.testing.assert_array_equal(all_BxN[:, 0], best_B)


def test_best_of_n_does_not_depend_on_the_device_count(best_of_4):
    (best1, score1, all1), _ = best_of_4
    (best4, score4, all4), _ = run_best_of_n(4, num_devices=4)
    np.testing.assert_array_equal(best4, best1)
    np.testing.assert_allclose(score4, score1, atol=1e-6)
    np.testing.assert_allclose(all4, all1, atol=1e-6)


def test_best_of_n_fed_in_batches_matches_one_call(best_of_4):
    # The eval stage feeds a long query list in batches, passing each shard's
    # first row index in the list: the samples then match one call over all rows.
    (best1, score1, all1), (q, qm, rng) = best_of_4
    models, _, ref_params, rm_params = models_and_params()
    dp = parallel.DataParallel("pmap", 2)
    run = make_best_of_n(models, ZIEGLER, 4)
    fn = dp.compile(lambda *args: run(*args[:5], row_offset=args[5][0]),
                    (REP, REP, SHARD, SHARD, REP, SHARD), (SHARD, SHARD, SHARD))
    rows = np.arange(len(q), dtype=np.int32)
    outs = [dp.unshard(fn(dp.replicate(ref_params), dp.replicate(rm_params), dp.shard(q[s:s + 8]),
                          dp.shard(qm[s:s + 8]), dp.replicate(rng), dp.shard(rows[s:s + 8])))
            for s in range(0, len(q), 8)]
    best, score, all_ = (np.concatenate([np.asarray(o[i]) for o in outs]) for i in range(3))
    np.testing.assert_array_equal(best, best1)
    np.testing.assert_allclose(score, score1, atol=1e-6)
    np.testing.assert_allclose(all_, all1, atol=1e-6)


def test_best_of_n_kl_hand_numbers():
    assert best_of_n_kl(1) == 0.0
    np.testing.assert_allclose(best_of_n_kl(4), math.log(4) - 0.75, rtol=1e-12)
    np.testing.assert_allclose(best_of_n_kl(4), 0.6362943611198906, rtol=1e-12)
    np.testing.assert_allclose(best_of_n_kl(2), math.log(2) - 0.5, rtol=1e-12)


@pytest.mark.parametrize("n", [2, 4, 16])
def test_best_of_n_kl_matches_the_exact_discrete_kl(n):
    # Base: uniform over M distinct rewards; best-of-n picks rank k with
    # p_k = (k/M)^n - ((k-1)/M)^n. Its KL to uniform tends to log n - (n-1)/n.
    m = 200_000
    k = np.arange(1, m + 1, dtype=np.float64)
    p = (k / m) ** n - ((k - 1) / m) ** n
    kl = np.sum(np.where(p > 0, p * np.log(p * m), 0.0))
    np.testing.assert_allclose(kl, best_of_n_kl(n), atol=1e-3)

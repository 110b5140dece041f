"""Reward-model training and reward normalisation (docs/implementation_details.md items 11-14).

The reward model (`models.heads.RewardModel`) scores `concat(query, response)`
with mask `concat(query_mask, response_mask)` (item 4: the LHP RM reads the
raw query, without the policy's prefix / suffix) and reads its scalar at

- `reward_at="last"` (Ziegler): the last real token, i.e. position
  `Q + len(response) - 1` with the query left-padded and the response
  right-padded. LHP reads position -1 and, for a padded position, uses the
  last real token's output, which is the same thing;
- `reward_at="eos"` (Stiennon): `Q + ` the first EOS in the response, or the
  last real token when the response has none.

Its output is `gain * r + bias` with `gain`, `bias` trainable params
(`reward_gain`, `reward_bias`), so the normalisation below lives in the params
and travels with checkpoints and exports.

Normalisation (LHP `train_reward.py` / `rewards.py`), before and after
training: sample responses from the reference policy at temperature T,
untruncated, in whole rollout batches (`ceil(reward.normalize_samples /
reward.rollout_batch_size)` batches, LHP `train_reward.py` lines 197-199: 512
samples for sentiment's 256), the policy reading the formatted query and the
RM the raw one; take the population mean and std of the raw rewards (the head's output with gain 1 and bias 0); set
`gain = target_std / std`, `bias = target_mean - gain * mean`. Targets: after
training N(0, 1), so the KL coefficient always means the same thing; before
training the label scale (`label_target_moments`): N(0, 1) for comparisons,
the moments of `score` for `scalar_rating`, of `difference / 2` for
`scalar_compare` ("the same variance as the trained reward model output").
Stiennon's `bias_only` mode keeps the gain and sets the bias so that given
reference (query, summary) pairs score `target_mean` on average.

Training (item 13): one epoch (`reward.epochs`) over `labels.num_train`
labels, which must divide by `reward.batch_size`; the loss by label type
(item 12): K-way softmax cross-entropy (`best_of_n`), Bradley-Terry
(`pairwise`), MSE to the score (`scalar_rating`), MSE of `r1 - r0` to the
difference (`scalar_compare`); the loop (`rlhf_jax.supervised`) gives the lr
schedule, TF-style Adam, data parallelism, validation and exact resume.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import losses, parallel, supervised
from rlhf_jax.data.labels import Labels, parse_label_type
from rlhf_jax.sampling import sample

REWARD_AT = ("last", "eos")
NORMALIZE_MODES = ("gain_bias", "bias_only")


# --------------------------------------------------------------------------
# Scoring: pure and jit-safe.


def rm_inputs(query_BxQ, query_mask_BxQ, response_BxR, response_mask_BxR):
    """`(ids_BxT, mask_BxT)` = `concat(query, response)` and its mask, T = Q + R."""
    ids_BxT = jnp.concatenate([query_BxQ, response_BxR.astype(query_BxQ.dtype)], axis=1)
    mask_BxT = jnp.concatenate(
        [query_mask_BxQ.astype(jnp.int32), response_mask_BxR.astype(jnp.int32)], axis=1)
    return ids_BxT, mask_BxT


def reward_index(query_length: int, response_BxR, response_mask_BxR, *, reward_at: str,
                 eos_token: int | None = None):
    """[B] int32 position in `concat(query, response)` the reward is read at.

    Args:
      query_length: Q (static).
      response_BxR: right-padded response ids.
      response_mask_BxR: 1 on response tokens, 0 on right padding.
      reward_at: "last" (the last real token) or "eos" (the first EOS among
        the real tokens, else the last real token).
      eos_token: the EOS id, required for "eos".
    """
    _check_reward_at(reward_at, eos_token)
    mask_BxR = response_mask_BxR.astype(jnp.int32)
    last_B = query_length + jnp.sum(mask_BxR, axis=1) - 1
    if reward_at == "last":
        return last_B.astype(jnp.int32)
    is_eos_BxR = (response_BxR == eos_token) & (mask_BxR != 0)
    first_B = query_length + jnp.argmax(is_eos_BxR, axis=1)
    return jnp.where(jnp.any(is_eos_BxR, axis=1), first_B, last_B).astype(jnp.int32)


def get_rewards(rm_model, rm_params, query_BxQ, query_mask_BxQ, response_BxR,
                response_mask_BxR=None, *, reward_at: str, eos_token: int | None = None,
                reward_index_B=None, raw: bool = False):
    """[B] float32 rewards of (query, response) pairs.

    Args:
      rm_model, rm_params: a `RewardModel` and its params.
      query_BxQ, query_mask_BxQ: left-padded queries (raw, as the RM reads them).
      response_BxR: responses; `response_mask_BxR` 1 on tokens, 0 on right
        padding (None: all tokens, e.g. untruncated samples).
      reward_at, eos_token: where to read the reward (`reward_index`).
      reward_index_B: explicit positions in `concat(query, response)`,
        overriding `reward_at`.
      raw: return the head's output before gain and bias.
    """
    if response_mask_BxR is None:
        response_mask_BxR = jnp.ones(response_BxR.shape, jnp.int32)
    ids_BxT, mask_BxT = rm_inputs(query_BxQ, query_mask_BxQ, response_BxR, response_mask_BxR)
    if reward_index_B is None:
        reward_index_B = reward_index(query_BxQ.shape[1], response_BxR, response_mask_BxR,
                                      reward_at=reward_at, eos_token=eos_token)
    method = "raw_rewards" if raw else "__call__"
    return rm_model.apply({"params": rm_params}, ids_BxT, mask_BxT, reward_index_B,
                          method=method)


def get_rewards_and_token_logits(rm_model, rm_params, query_BxQ, query_mask_BxQ, response_BxR,
                                 response_mask_BxR, *, reward_at: str,
                                 eos_token: int | None = None):
    """`(rewards_B, token_logits_BxR)` of a token-level reward model in one pass:
    the rewards as `get_rewards`, and the span head's logit for each response
    token (read at the token itself)."""
    ids_BxT, mask_BxT = rm_inputs(query_BxQ, query_mask_BxQ, response_BxR, response_mask_BxR)
    index_B = reward_index(query_BxQ.shape[1], response_BxR, response_mask_BxR,
                           reward_at=reward_at, eos_token=eos_token)
    rewards_B, logits_BxT = rm_model.apply({"params": rm_params}, ids_BxT, mask_BxT, index_B,
                                           method="rewards_and_token_logits")
    return rewards_B, logits_BxT[:, query_BxQ.shape[1]:]


@functools.partial(jax.jit, static_argnames=("rm_model", "reward_at", "eos_token", "raw"))
def _get_rewards_jit(rm_model, rm_params, query_BxQ, query_mask_BxQ, response_BxR,
                     response_mask_BxR, reward_index_B, *, reward_at, eos_token, raw):
    return get_rewards(rm_model, rm_params, query_BxQ, query_mask_BxQ, response_BxR,
                       response_mask_BxR, reward_at=reward_at, eos_token=eos_token,
                       reward_index_B=reward_index_B, raw=raw)


def _score_shard(params, batch, *, rm_model, reward_at, eos_token, raw):
    return {"reward": get_rewards(rm_model, params, batch["q"], batch["qm"], batch["r"],
                                  batch["rm"], reward_at=reward_at, eos_token=eos_token,
                                  reward_index_B=batch.get("idx"), raw=raw)}


def score(rm_model, rm_params, query_NxQ, query_mask_NxQ, response_NxR,
          response_mask_NxR=None, *, reward_at: str, eos_token: int | None = None,
          reward_index_N=None, raw: bool = False, batch_size: int | None = None,
          dp=None, placed: bool = False) -> np.ndarray:
    """`get_rewards` over N rows in jit-compiled batches; host float32 [N].

    `batch_size=None` scores everything in one batch; otherwise the last batch
    is padded (one compilation) and the padding cut. With `dp` (a
    `parallel.DataParallel`) each batch is split over its devices and the
    params placed as `dp.replicate` places them (split along fsdp on a mesh);
    `placed=True` says `rm_params` already are. Without, one device.
    """
    n = query_NxQ.shape[0]
    data = {"q": np.asarray(query_NxQ), "qm": np.asarray(query_mask_NxQ),
            "r": np.asarray(response_NxR),
            "rm": (np.ones(np.shape(response_NxR), np.int32) if response_mask_NxR is None
                   else np.asarray(response_mask_NxR))}
    if reward_index_N is not None:
        data["idx"] = np.asarray(reward_index_N, np.int32)
    bs = n if batch_size is None else batch_size
    if dp is not None:
        fn = functools.partial(_score_shard, rm_model=rm_model, reward_at=reward_at,
                               eos_token=eos_token, raw=raw)
        out = supervised.map_batches(
            dp, fn, rm_params if placed else dp.replicate(rm_params), data, bs,
            cache_key=("score", rm_model, reward_at, eos_token, raw, "idx" in data))
        return out["reward"].astype(np.float32)
    padded = supervised.pad_rows(data, bs)
    out = []
    for s in range(0, padded["q"].shape[0], bs):
        b = supervised.take_rows(padded, np.arange(s, s + bs))
        out.append(_get_rewards_jit(rm_model, rm_params, b["q"], b["qm"], b["r"], b["rm"],
                                    b.get("idx"), reward_at=reward_at, eos_token=eos_token,
                                    raw=raw))
    return np.concatenate(jax.device_get(out))[:n].astype(np.float32)


# --------------------------------------------------------------------------
# Normalisation.


class ReferenceSamples(NamedTuple):
    """M (query, response) pairs to normalise on; arrays on host.

    `query_index_M` says which of the given queries each row used, so a caller
    can pair responses sampled from formatted policy queries with the raw
    queries the RM reads.
    """

    query_index_M: np.ndarray
    query_MxQ: np.ndarray
    query_mask_MxQ: np.ndarray
    response_MxR: np.ndarray
    response_mask_MxR: np.ndarray


def normalization_sample_count(reward_cfg) -> int:
    """Samples per normalisation: whole rollout batches, `ceil(normalize_samples /
    rollout_batch_size) * rollout_batch_size` (LHP `train_reward.py` lines 197-199)."""
    b = reward_cfg.rollout_batch_size
    return -(-reward_cfg.normalize_samples // b) * b


def sample_for_normalization(policy_model, policy_params, query_NxQ, query_mask_NxQ, rng, *,
                             num_samples: int, response_length: int, temperature: float,
                             batch_size: int, dp=None) -> ReferenceSamples:
    """Samples untruncated responses from the reference policy, in whole batches.

    `ceil(num_samples / batch_size)` batches of `batch_size` (LHP draws whole
    rollout batches, so sentiment normalises on 512 samples, not 256). Queries
    are drawn without replacement from a permutation of the N given ones (a
    fresh permutation per pass when more are needed); responses are
    `response_length` tokens at `temperature` (Ziegler: EOS does not stop, no
    post-processing, docs/implementation_details.md item 14). Row i is drawn with key
    `fold_in(rng', i)`, so the samples depend neither on the batch size nor,
    with `dp` (batches split over its devices), on the device count.
    """
    from rlhf_jax import parallel

    n = query_NxQ.shape[0]
    if num_samples < 1:
        raise ValueError(f"reward.normalize_samples={num_samples} must be >= 1")
    if batch_size < 1:
        raise ValueError(f"reward.rollout_batch_size={batch_size} must be >= 1")
    if n < 1:
        raise ValueError("sample_for_normalization: no queries given")
    total = -(-num_samples // batch_size) * batch_size
    perm_rng, sample_rng = jax.random.split(rng)
    passes = -(-total // n)
    index_M = np.concatenate([
        np.asarray(jax.random.permutation(jax.random.fold_in(perm_rng, p), n))
        for p in range(passes)])[:total]
    query_MxQ = np.asarray(query_NxQ)[index_M]
    query_mask_MxQ = np.asarray(query_mask_NxQ)[index_M]

    def draw(params, q_BxQ, m_BxQ, key, start):
        # Row keys follow the row's index in the M samples (`row_offset`).
        offset = start + (parallel.global_row_offset(q_BxQ.shape[0]) if dp is not None else 0)
        return sample(policy_model, params, q_BxQ, m_BxQ, key, response_length=response_length,
                      temperature=temperature, row_offset=offset).tokens

    if dp is not None:
        dp.check_divisible(batch_size, "reward.rollout_batch_size")
        R, S = parallel.REP, parallel.SHARD
        fn, params = dp.compile(draw, (R, S, S, R, R), S), dp.replicate(policy_params)
        place = lambda key, start: (dp.replicate(key), dp.replicate(jnp.int32(start)))  # noqa: E731
        shard, unshard = dp.shard, dp.unshard
    else:
        fn, params = draw, policy_params
        place = lambda key, start: (key, start)  # noqa: E731
        shard = unshard = lambda x: x  # noqa: E731
    responses = []
    for s in range(0, total, batch_size):
        key, start = place(sample_rng, s)
        responses.append(unshard(fn(params, shard(query_MxQ[s:s + batch_size]),
                                    shard(query_mask_MxQ[s:s + batch_size]), key, start)))
    response_MxR = np.concatenate(jax.device_get(responses))
    return ReferenceSamples(index_M, query_MxQ, query_mask_MxQ, response_MxR,
                            np.ones_like(response_MxR, dtype=np.int32))


def make_reference_sampler(cfg, *, policy_model, policy_params, query_NxQ, query_mask_NxQ,
                           rm_query_NxQ=None, rm_query_mask_NxQ=None, dp=None
                           ) -> Callable[[int, jax.Array], ReferenceSamples]:
    """The `normalizer` for `train_reward_model`: samples from the reference policy.

    Reads `cfg.task.response_length`, `cfg.task.temperature` and
    `cfg.reward.rollout_batch_size`. The policy samples after `query_NxQ`
    (formatted with the task's prefix / suffix); the RM scores the same rows
    of `rm_query_NxQ` (raw queries, docs/implementation_details.md item 4), default the same.
    `dp` splits the sampling over its devices.
    """
    response_length = cfg.task.response_length
    temperature = cfg.task.temperature
    batch_size = cfg.reward.rollout_batch_size
    if rm_query_NxQ is None:
        rm_query_NxQ, rm_query_mask_NxQ = query_NxQ, query_mask_NxQ
    if (rm_query_mask_NxQ is None or np.shape(rm_query_NxQ)[0] != np.shape(query_NxQ)[0]):
        raise ValueError("make_reference_sampler: rm_query_NxQ and rm_query_mask_NxQ must "
                         "both be given, with one row per policy query")

    def sampler(num_samples: int, rng) -> ReferenceSamples:
        out = sample_for_normalization(
            policy_model, policy_params, query_NxQ, query_mask_NxQ, rng,
            num_samples=num_samples, response_length=response_length,
            temperature=temperature, batch_size=batch_size, dp=dp)
        idx = out.query_index_M
        return out._replace(query_MxQ=np.asarray(rm_query_NxQ)[idx],
                            query_mask_MxQ=np.asarray(rm_query_mask_NxQ)[idx])

    return sampler


def fixed_reference_sampler(query_NxQ, query_mask_NxQ, response_NxR, response_mask_NxR
                            ) -> Callable[[int, jax.Array], ReferenceSamples]:
    """A `normalizer` over given (query, reference response) pairs (Stiennon).

    Returns the first `num_samples` pairs; ValueError if there are fewer.
    """
    n = np.shape(query_NxQ)[0]

    def sampler(num_samples: int, rng) -> ReferenceSamples:
        del rng
        if num_samples > n:
            raise ValueError(f"reward.normalize_samples={num_samples} exceeds the {n} "
                             "reference pairs given")
        idx = np.arange(num_samples)
        return ReferenceSamples(idx, np.asarray(query_NxQ)[idx],
                                np.asarray(query_mask_NxQ)[idx],
                                np.asarray(response_NxR)[idx],
                                np.asarray(response_mask_NxR)[idx])

    return sampler


def reference_normalizer(ctx, policy_model, policy_params
                         ) -> Callable[[int, jax.Array], ReferenceSamples]:
    """The `normalizer` the reward stage (and each online retrain) normalises on.

    `reward.normalize_mode="bias_only"` (Stiennon): the dataset's reference
    responses; otherwise samples of the policy on training queries. `ctx` is
    the pipeline's `Context` (its config and `queries`).
    """
    cfg = ctx.cfg
    if cfg.reward.normalize_mode == "bias_only":
        ref = ctx.queries("train", limit=cfg.reward.normalize_samples)
        if ref.reference_NxR is None:
            raise ValueError("reward.normalize_mode='bias_only' needs reference responses "
                             f"(task.query_dataset={cfg.task.query_dataset!r} has none)")
        return fixed_reference_sampler(ref.query_NxQ, ref.query_mask_NxQ, ref.reference_NxR,
                                       ref.reference_mask_NxR)
    qs = ctx.queries("train")
    rows = qs.indices(1 << 16, max(2 * normalization_sample_count(cfg.reward), 1))
    raw_q, raw_m = qs.query_NxQ[rows], qs.query_mask_NxQ[rows]
    policy_q, policy_m = ctx.policy_queries(raw_q, raw_m)
    # The reference policy samples after the formatted query; the RM scores the
    # raw one (LHP `train_reward.py` lines 191-199 with `rewards.py` lines 105-107).
    return make_reference_sampler(cfg, policy_model=policy_model, policy_params=policy_params,
                                  query_NxQ=policy_q, query_mask_NxQ=policy_m,
                                  rm_query_NxQ=raw_q, rm_query_mask_NxQ=raw_m, dp=ctx.dp)


def label_target_moments(labels: Labels) -> tuple[float, float]:
    """LHP's `target_scales` moments for normalising before training.

    `scalar_rating`: population mean and std of `score`; `scalar_compare`:
    of `difference / 2` (the difference of two N(0, s) rewards has std
    s * sqrt(2); LHP halves it); comparisons carry no scale: (0, 1).
    """
    if labels.label_type == "scalar_rating":
        x = labels.score_N.astype(np.float64)
    elif labels.label_type == "scalar_compare":
        x = labels.difference_N.astype(np.float64) / 2
    else:
        return 0.0, 1.0
    return float(np.mean(x)), float(np.std(x))


def set_reward_norm(rm_params, *, mean: float, std: float, target_mean: float,
                    target_std: float, mode: str):
    """New params whose rewards have moments (target_mean, target_std).

    `mean`, `std` are the moments of the raw rewards (gain 1, bias 0).
    "gain_bias": `gain = target_std / std`, `bias = target_mean - gain * mean`
    (LHP `set_reward_norm`). "bias_only": the gain is kept and
    `bias = target_mean - gain * mean`.
    """
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"reward.normalize_mode={mode!r}: expected one of {NORMALIZE_MODES}")
    if not (np.isfinite(mean) and np.isfinite(std)):
        raise ValueError(f"reward normalisation: raw reward moments are not finite "
                         f"(mean {mean}, std {std})")
    dtype = jnp.asarray(rm_params["reward_gain"]).dtype
    if mode == "gain_bias":
        if not std > 0:
            raise ValueError(f"reward normalisation: raw rewards have std {std}; cannot set "
                             "a gain (every sample scored the same)")
        gain = target_std / std
    else:
        gain = float(rm_params["reward_gain"])
    bias = target_mean - gain * mean
    return {**rm_params, "reward_gain": jnp.asarray(gain, dtype),
            "reward_bias": jnp.asarray(bias, dtype)}


def _normalize(rm_model, rm_params, samples: ReferenceSamples, *, target_mean, target_std,
               mode, reward_at, eos_token, batch_size, reward_index_M=None, dp=None):
    """`(params, info)`: `set_reward_norm` from the raw rewards of `samples`."""
    raw_M = score(rm_model, rm_params, samples.query_MxQ, samples.query_mask_MxQ,
                  samples.response_MxR, samples.response_mask_MxR, reward_at=reward_at,
                  eos_token=eos_token, reward_index_N=reward_index_M, raw=True,
                  batch_size=batch_size, dp=dp).astype(np.float64)
    mean, std = float(np.mean(raw_M)), float(np.std(raw_M))  # population std, as LHP
    params = set_reward_norm(rm_params, mean=mean, std=std, target_mean=target_mean,
                             target_std=target_std, mode=mode)
    info = {"raw_mean": mean, "raw_std": std, "target_mean": float(target_mean),
            "target_std": float(target_std), "gain": float(params["reward_gain"]),
            "bias": float(params["reward_bias"]), "num_samples": int(raw_M.shape[0])}
    return params, info


def normalize_reward(rm_model, rm_params, query_BxQ, query_mask_BxQ, response_BxR, *,
                     response_mask_BxR=None, target_mean: float = 0.0,
                     target_std: float = 1.0, mode: str = "gain_bias",
                     reward_at: str = "last", eos_token: int | None = None,
                     reward_index_B=None, batch_size: int | None = None):
    """Sets the RM's gain and bias from reference samples; returns new params.

    Args:
      rm_model, rm_params: the reward model and its params.
      query_BxQ, query_mask_BxQ, response_BxR: reference (query, response)
        pairs: untruncated reference-policy samples (Ziegler) or reference
        summaries (Stiennon); `response_mask_BxR` None means all tokens.
      target_mean, target_std: the moments to reach (`label_target_moments`
        before training, N(0, 1) after).
      mode: "gain_bias" (Ziegler) or "bias_only" (Stiennon; target_std unused).
      reward_at, eos_token, reward_index_B: where the reward is read.
      batch_size: scoring batch (None: one batch).
    """
    n = query_BxQ.shape[0]
    samples = ReferenceSamples(
        np.arange(n), query_BxQ, query_mask_BxQ, response_BxR,
        np.ones(np.shape(response_BxR), np.int32) if response_mask_BxR is None
        else response_mask_BxR)
    params, _ = _normalize(rm_model, rm_params, samples, target_mean=target_mean,
                           target_std=target_std, mode=mode, reward_at=reward_at,
                           eos_token=eos_token, batch_size=batch_size,
                           reward_index_M=reward_index_B)
    return params


# --------------------------------------------------------------------------
# Losses on label batches (per shard).


def label_metrics(label_type: str, r_BxK, target_B) -> dict:
    """The loss and diagnostics of one label type on rewards [B, K].

    `target_B` is `best_N` (best_of_n, pairwise), `score_N` (scalar_rating)
    or `difference_N` (scalar_compare). Returns a dict with "loss" and
    "accuracy" (except scalar_rating: "abs_error"), pairwise also "margin".
    """
    if label_type == "best_of_n":
        return losses.best_of_n_metrics(r_BxK, target_B)
    if label_type == "pairwise":
        best_B = target_B.astype(jnp.int32)
        chosen_B = jnp.take_along_axis(r_BxK, best_B[:, None], axis=1)[:, 0]
        rejected_B = jnp.take_along_axis(r_BxK, 1 - best_B[:, None], axis=1)[:, 0]
        return losses.bradley_terry_metrics(chosen_B, rejected_B)
    if label_type == "scalar_rating":
        return losses.scalar_rating_metrics(r_BxK[:, 0], target_B)
    if label_type == "scalar_compare":
        return losses.scalar_compare_metrics(r_BxK[:, 0], r_BxK[:, 1], target_B)
    raise ValueError(f"label type {label_type!r} is not one of best_of_n, pairwise, "
                     "scalar_rating, scalar_compare")


def _rewards_BxK(rm_model, params, batch, reward_at, eos_token):
    """Rewards of every (query, response_k) in a label batch, one forward pass, and
    with span marks in the batch the span head's logits [B*K, R] (else None)."""
    b, k, r = batch["responses"].shape
    # Row-major flattening: row b*K + j is (query b, response j).
    args = (params, jnp.repeat(batch["query"], k, axis=0),
            jnp.repeat(batch["query_mask"], k, axis=0), batch["responses"].reshape(b * k, r),
            batch["response_mask"].reshape(b * k, r))
    kw = dict(reward_at=reward_at, eos_token=eos_token)
    if "span_mask" in batch:
        r_BK, logits_BKxR = get_rewards_and_token_logits(rm_model, *args, **kw)
        return r_BK.reshape(b, k), logits_BKxR
    return get_rewards(rm_model, *args, **kw).reshape(b, k), None


def _span_sums(batch, logits_BKxR, weight_B=None):
    b, k, r = batch["responses"].shape
    mask_BxKxR = batch["response_mask"].astype(jnp.float32)
    if weight_B is not None:
        mask_BxKxR = mask_BxKxR * weight_B[:, None, None]
    return losses.span_token_sums(logits_BKxR, batch["span_mask"].reshape(b * k, r),
                                  mask_BxKxR.reshape(b * k, r))


def _loss_fn(params, batch, rng, *, rm_model, label_type, reward_at, eos_token, span_coef):
    del rng  # no dropout (docs/implementation_details.md item 15)
    r_BxK, logits_BKxR = _rewards_BxK(rm_model, params, batch, reward_at, eos_token)
    metrics = label_metrics(label_type, r_BxK, batch["target"])
    loss = metrics.pop("loss")
    if logits_BKxR is not None:
        # The span loss is a mean over the global batch's response tokens: this
        # shard's sum times devices / global count, so the loop's mean over
        # shards is that mean whatever the shards' token counts.
        sums = _span_sums(batch, logits_BKxR)
        g = parallel.psum(sums)
        count = jnp.maximum(g["count"], 1.0)
        metrics.update(label_loss=loss, span_loss=g["loss"] / count,
                       span_accuracy=g["correct"] / count,
                       span_recall=g["found"] / jnp.maximum(g["marked"], 1.0))
        loss = loss + span_coef * sums["loss"] * parallel.psum(1) / count
    return loss, metrics


def _eval_fn(params, batch, *, rm_model, label_type, reward_at, eos_token, span_coef):
    del span_coef
    r_BxK, logits_BKxR = _rewards_BxK(rm_model, params, batch, reward_at, eos_token)
    # Per-record metrics: the batch functions on one record at a time.
    per_B = jax.vmap(lambda r_K, t: label_metrics(label_type, r_K[None], t[None]))(
        r_BxK, batch["target"])
    w_B = batch["weight"]
    out = {k: (jnp.sum(w_B * v_B), jnp.sum(w_B)) for k, v_B in per_B.items()}
    if logits_BKxR is not None:
        sums = _span_sums(batch, logits_BKxR, w_B)
        out.update(span_loss=(sums["loss"], sums["count"]),
                   span_accuracy=(sums["correct"], sums["count"]),
                   span_recall=(sums["found"], sums["marked"]))
    return out


def labels_to_data(labels: Labels, spans: bool = False) -> dict[str, np.ndarray]:
    """The host arrays the RM loop consumes (one row per labelled query); with
    `spans`, the span marks too (the token-level RM's targets)."""
    target = {"best_of_n": labels.best_N, "pairwise": labels.best_N,
              "scalar_rating": labels.score_N,
              "scalar_compare": labels.difference_N}[labels.label_type]
    data = {"query": labels.query_NxQ, "query_mask": labels.query_mask_NxQ,
            "responses": labels.responses_NxKxR, "response_mask": labels.response_mask_NxKxR,
            "target": target}
    if spans:
        data["span_mask"] = labels.span_mask_NxKxR
    return data


def _check_reward_at(reward_at, eos_token):
    if reward_at not in REWARD_AT:
        raise ValueError(f"reward.reward_at={reward_at!r}: expected one of {REWARD_AT}")
    if reward_at == "eos" and eos_token is None:
        raise ValueError("reward.reward_at='eos' needs task.eos_token")


def check_labels(labels: Labels, *, label_type: str, count: int, count_field: str,
                 what: str) -> Labels:
    """The first `count` records of `labels`, after checking them against the config.

    ValueError naming `labels.type` when the kind or K differs, and
    `count_field` when there are fewer than `count` records.
    """
    kind, k = parse_label_type(label_type)
    if labels.label_type != kind:
        raise ValueError(f"labels.type={label_type!r} but the {what} labels are "
                         f"{labels.label_type!r}")
    if k is not None and labels.num_responses != k:
        raise ValueError(f"labels.type={label_type!r} needs K={k} responses per query, the "
                         f"{what} labels have K={labels.num_responses}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"{count_field}={count!r} must be a non-negative int")
    if len(labels) < count:
        raise ValueError(f"{count_field}={count} but only {len(labels)} {what} labels were given")
    return labels.subset(np.arange(count))


def training_labels(cfg, train: Labels, val: Labels | None) -> tuple[Labels, Labels | None]:
    """`(train, val)` cut to `labels.num_train` / `labels.num_val` after checking them
    against `labels.type` (`check_labels`); val is None when `num_val` is 0, and a
    missing held-out set with `num_val > 0` is an error naming the field."""
    train = check_labels(train, label_type=cfg.labels.type, count=cfg.labels.num_train,
                         count_field="labels.num_train", what="training")
    num_val = cfg.labels.num_val
    if num_val and val is None:
        raise ValueError(f"labels.num_val={num_val} but no held-out labels were given")
    if not num_val:
        return train, None
    return train, check_labels(val, label_type=cfg.labels.type, count=num_val,
                               count_field="labels.num_val", what="held-out")


# --------------------------------------------------------------------------
# The trainer.


def train_reward_model(cfg, *, rm_model, rm_params, train: Labels, val: Labels | None, dp,
                       rng, workdir: str | None = None, writer=None,
                       normalizer: Callable[[int, jax.Array], ReferenceSamples] | None = None,
                       stop_after: int | None = None) -> tuple[Any, dict]:
    """Trains a reward model on labels; normalises before / after; resumable.

    Config fields read (a missing one raises):
      reward.batch_size: labels per step, all devices (LHP: 32 sentiment,
        16 cnndm/tldr); divides `labels.num_train` and the device count.
      reward.epochs: passes over the labels (the papers: 1).
      reward.lr, reward.schedule ("linear" Ziegler | "cosine" Stiennon |
        "constant"), reward.adam ("tf" | "torch"), reward.adam_eps (1e-5).
      reward.log_every, reward.eval_every (0: before and after training only),
        reward.checkpoint_every: in steps.
      reward.normalize_before, reward.normalize_after: bools (LHP: both).
      reward.normalize_samples: reference samples per normalisation (LHP 256),
        rounded up to whole `reward.rollout_batch_size` batches by the sampler.
      reward.normalize_mode: "gain_bias" (Ziegler) | "bias_only" (Stiennon).
      reward.head: "linear" | "scalar_mix" | "selector"; must match `rm_model.head`.
      reward.token_head, reward.span_coef: with a token head (must match
        `rm_model.token_head`) the loss adds `span_coef` times the mean
        per-token cross-entropy against the labels' span marks
        (`losses.span_token_loss`); metrics `reward/span_loss`,
        `reward/span_accuracy`, `reward/span_recall` (and `val_` ones).
      reward.reward_at: "last" (Ziegler) | "eos" (Stiennon).
      labels.type: `best_of_4`, `pairwise`, `scalar_rating`, `scalar_compare`.
      labels.num_train: training labels used (the first ones of `train`).
      labels.num_val: held-out labels used (the first ones of `val`); 0 or
        `val=None` skips validation.
      parallel.mode: must match `dp.mode`.
      task.eos_token: only when `reward.reward_at == "eos"`.
      (`make_reference_sampler` reads task.temperature, task.response_length
      and reward.rollout_batch_size.)

    Args:
      cfg: the experiment's ConfigDict.
      rm_model, rm_params: a `RewardModel` and its initial params (host).
      train, val: labelled comparisons (`rlhf_jax.data.labels.Labels`).
      dp: `DataParallel`.
      rng: the base key (data order; normalisation samples).
      workdir: metrics and `checkpoints/reward`; None for neither.
      writer: a `MetricsWriter`; default one on `workdir`.
      normalizer: `(num_samples, rng) -> ReferenceSamples`
        (`make_reference_sampler` or `fixed_reference_sampler`); required
        when normalising.
      stop_after: stop and checkpoint after this many steps (tests).

    Returns:
      `(rm_params, summary)`; metrics `reward/loss`, `reward/accuracy`,
      `reward/lr`, `reward/val_loss`, `reward/val_accuracy` (pairwise also
      `margin`, scalar_rating `abs_error` in place of accuracy); the summary
      holds the normalisation stats under `init` (before) and `finalize`
      (after).
    """
    r = cfg.reward
    loop = supervised.LoopConfig.from_config(cfg, "reward")
    dp.check_config(cfg)
    if r.head != rm_model.head:
        raise ValueError(f"reward.head={r.head!r} but the reward model has head "
                         f"{rm_model.head!r}")
    if bool(r.token_head) != rm_model.token_head:
        raise ValueError(f"reward.token_head={r.token_head} but the reward model "
                         f"{'has' if rm_model.token_head else 'has no'} token head")
    reward_at = r.reward_at
    eos_token = cfg.task.eos_token if reward_at == "eos" else None
    _check_reward_at(reward_at, eos_token)
    mode = r.normalize_mode
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"reward.normalize_mode={mode!r}: expected one of {NORMALIZE_MODES}")
    normalize_before, normalize_after = bool(r.normalize_before), bool(r.normalize_after)
    num_samples = r.normalize_samples
    if normalize_before or normalize_after:
        if normalizer is None:
            raise ValueError("reward.normalize_before/normalize_after is set but no "
                             "normalizer (reference sampler) was given")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(f"reward.normalize_samples={num_samples!r} must be an int >= 2 "
                             "when normalising")
    train, val = training_labels(cfg, train, val)

    spans = rm_model.token_head
    for what, labels in (("training", train), ("held-out", val)):
        if spans and labels is not None and labels.span_mask_NxKxR is None:
            raise ValueError(f"reward.token_head trains on span marks, but the {what} labels "
                             "carry none: set labels.spans.enabled (the mock span labeller) "
                             "or use a label file with marks")
    kw = dict(rm_model=rm_model, label_type=train.label_type, reward_at=reward_at,
              eos_token=eos_token, span_coef=float(r.span_coef))
    target_mean, target_std = label_target_moments(train)

    def normalize(params, rng, target_mean, target_std, when):
        samples = normalizer(num_samples, rng)
        params, info = _normalize(rm_model, params, samples, target_mean=target_mean,
                                  target_std=target_std, mode=mode, reward_at=reward_at,
                                  eos_token=eos_token, batch_size=loop.batch_size, dp=dp)
        supervised.log_line(
            f"reward: normalised {when} training on {info['num_samples']} samples: raw "
            f"{info['raw_mean']:.4g} +- {info['raw_std']:.4g} -> target {target_mean:.4g} "
            f"+- {target_std:.4g} (gain {info['gain']:.4g}, bias {info['bias']:.4g})")
        return params, info

    init_fn = finalize_fn = None
    if normalize_before:
        init_fn = lambda p, k: normalize(p, k, target_mean, target_std, "before")  # noqa: E731
    if normalize_after:
        finalize_fn = lambda p, k: normalize(p, k, 0.0, 1.0, "after")  # noqa: E731

    return supervised.run(
        loop,
        loss_fn=functools.partial(_loss_fn, **kw),
        eval_fn=functools.partial(_eval_fn, **kw),
        params=rm_params,
        train_data=labels_to_data(train, spans),
        val_data=None if val is None else labels_to_data(val, spans),
        dp=dp,
        rng=rng,
        num_train_field="labels.num_train",
        workdir=workdir,
        writer=writer,
        init_fn=init_fn,
        finalize_fn=finalize_fn,
        stop_after=stop_after,
        cache_key=("reward", rm_model, train.label_type, reward_at, eos_token,
                   float(r.span_coef)),
    )

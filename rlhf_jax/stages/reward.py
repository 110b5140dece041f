"""The reward model as a function: scoring and normalisation (implementation details 11, 14).

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

Training on labels: `reward_train`.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms.sampling import sample
from rlhf_jax.data.labels import Labels
from rlhf_jax.infra import parallel
from rlhf_jax.stages import supervised

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
    check_reward_at(reward_at, eos_token)
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


def normalize_params(rm_model, rm_params, samples: ReferenceSamples, *, target_mean, target_std,
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
    params, _ = normalize_params(rm_model, rm_params, samples, target_mean=target_mean,
                           target_std=target_std, mode=mode, reward_at=reward_at,
                           eos_token=eos_token, batch_size=batch_size,
                           reward_index_M=reward_index_B)
    return params


def check_reward_at(reward_at, eos_token):
    if reward_at not in REWARD_AT:
        raise ValueError(f"reward.reward_at={reward_at!r}: expected one of {REWARD_AT}")
    if reward_at == "eos" and eos_token is None:
        raise ValueError("reward.reward_at='eos' needs task.eos_token")

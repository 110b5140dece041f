"""PPO for language models: the pure numeric pieces.

Everything here is a pure, jit-safe function of arrays, matching the original
code (openai/lm-human-preferences, `train_policy.py` and `utils/core.py`):
whitening with population variance and eps 1e-8, GAE with next value 0 after
the last step, per-token KL-penalty rewards with the score added at one index,
and the clipped policy and value losses with their statistics
(docs/implementation_details.md items 19-23).

Masks (`mask_BxT`) are 0/1 arrays: 1 marks a real response token, 0 a token
after the end of the response (Stiennon: after EOS). Every mean below is over
the masked-in entries only; with `mask=None` all entries count, which is the
Ziegler setting (PPO on all `response_length` tokens, item 10).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from rlhf_jax.algorithms.kl import KLState, update_kl_state
from rlhf_jax.algorithms.logprobs import (HeadLogits, logprobs_and_entropy,
                                           logprobs_and_entropy_from_head)
from rlhf_jax.infra import fsdp

Array = jax.Array

# Variance epsilon of the original `whiten` (LHP utils/core.py).
WHITEN_EPS = 1e-8


def _mask_like(x: Array, mask: Optional[Array]) -> Array:
    """The mask broadcast to `x`'s shape in `x`'s dtype (ones when None)."""
    if mask is None:
        return jnp.ones_like(x)
    return jnp.broadcast_to(mask, x.shape).astype(x.dtype)


def _safe_div(num: Array, den: Array) -> Array:
    # An all-masked slice has sum 0 and count 0: report 0 rather than NaN, and
    # keep gradients finite (no division by a traced zero).
    return num / jnp.where(den > 0, den, 1)


def masked_sum(x: Array, mask: Optional[Array] = None, axis=None) -> Array:
    """Sum of `x` over the entries where `mask` is 1 (all entries when None)."""
    return jnp.sum(x * _mask_like(x, mask), axis=axis)


def masked_mean(x: Array, mask: Optional[Array] = None, axis=None) -> Array:
    """Mean of `x` over the entries where `mask` is 1; 0 where none are."""
    m = _mask_like(x, mask)
    return _safe_div(jnp.sum(x * m, axis=axis), jnp.sum(m, axis=axis))


def masked_var(x: Array, mask: Optional[Array] = None, axis=None) -> Array:
    """Population variance (ddof=0) of `x` over the entries where `mask` is 1."""
    mean = masked_mean(x, mask, axis=axis)
    if axis is not None:
        mean = jnp.expand_dims(mean, axis)
    return masked_mean(jnp.square(x - mean), mask, axis=axis)


def _global_moments(
    x: Array, mask: Optional[Array], axis_name: Optional[str]
) -> tuple[Array, Array]:
    """Population mean and variance over all entries of `x` (masked-in only).

    With `axis_name` the sums and counts are `psum`-ed over that mapped axis, so
    the moments are those of the global batch whatever the device count. Two
    passes (mean, then squared deviations) for numerical stability.
    """
    m = _mask_like(x, mask)
    total, count = jnp.sum(x * m), jnp.sum(m)
    if axis_name is not None:
        total, count = jax.lax.psum((total, count), axis_name)
    mean = _safe_div(total, count)
    sq_dev = jnp.sum(jnp.square(x - mean) * m)
    if axis_name is not None:
        sq_dev = jax.lax.psum(sq_dev, axis_name)
    return mean, _safe_div(sq_dev, count)


def whiten(
    x: Array,
    shift_mean: bool = True,
    mask: Optional[Array] = None,
    axis_name: Optional[str] = None,
) -> Array:
    """Normalise `x` to unit variance over all its entries: `(x - mean) / sqrt(var + 1e-8)`.

    As LHP `utils.whiten`: population variance, eps 1e-8, moments over every
    axis. With `shift_mean=False` the mean is added back (reward whitening,
    docs/implementation_details.md item 20); with True the result has mean 0 (advantages, item 21).

    Args:
        x: any shape.
        shift_mean: remove the mean (True) or keep it (False).
        mask: 0/1, broadcastable to `x`. Moments use masked-in entries only, and
            masked-out entries are returned as 0 (so they add nothing downstream).
        axis_name: a mapped axis (`pmap` / `shard_map`); moments are then over the
            global batch across that axis via `psum` of sums and counts.
    Returns:
        An array of `x`'s shape and dtype.
    """
    x = jnp.asarray(x)
    # Moments in float32 even for bf16 inputs: a bf16 variance is too coarse.
    x32 = x.astype(jnp.float32)
    mean, var = _global_moments(x32, mask, axis_name)
    out = (x32 - mean) * jax.lax.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        out = out + mean
    if mask is not None:
        out = out * _mask_like(out, mask)
    return out.astype(x.dtype)


def gae(
    rewards_BxT: Array,
    values_BxT: Array,
    gamma,
    lam,
    mask_BxT: Optional[Array] = None,
) -> tuple[Array, Array]:
    """Generalised advantage estimation, scanning backwards over time.

    `delta_t = r_t + gamma * V_{t+1} - V_t`, `A_t = delta_t + gamma * lam *
    A_{t+1}`, with `V_T = A_T = 0` after the last step (LHP `PPOTrainer.loss`).
    With a mask, a position whose mask is 0 gets advantage 0 and is treated as
    past the end: the last valid step does not bootstrap from the value or
    advantage of a padded step after it.

    Advantages are returned raw; the caller whitens them (item 21).

    Args:
        rewards_BxT, values_BxT: per-token rewards and value predictions.
        gamma, lam: discount and GAE lambda (floats or scalar arrays).
        mask_BxT: optional 0/1 mask of valid response tokens.
    Returns:
        `(advantages_BxT, returns_BxT)` with `returns = advantages + values`.
    """
    rewards_BxT = jnp.asarray(rewards_BxT, jnp.float32)
    values_BxT = jnp.asarray(values_BxT, jnp.float32)
    m_BxT = _mask_like(rewards_BxT, mask_BxT)

    def step(carry, xs):
        next_value_B, next_adv_B = carry
        r_B, v_B, m_B = xs
        delta_B = r_B + gamma * next_value_B - v_B
        adv_B = (delta_B + gamma * lam * next_adv_B) * m_B
        # A padded step passes zeros back, so the step before it sees the end.
        return (v_B * m_B, adv_B), adv_B

    batch = rewards_BxT.shape[0]
    init = (jnp.zeros((batch,), jnp.float32), jnp.zeros((batch,), jnp.float32))
    xs = (rewards_BxT.T, values_BxT.T, m_BxT.T)  # scan over the leading T axis
    _, adv_TxB = jax.lax.scan(step, init, xs, reverse=True)
    advantages_BxT = adv_TxB.T
    return advantages_BxT, advantages_BxT + values_BxT


def last_valid_index(mask_BxT: Array) -> Array:
    """Index of the last position whose mask is 1, per row (T-1 if none are)."""
    t = mask_BxT.shape[1]
    return t - 1 - jnp.argmax(mask_BxT[:, ::-1] > 0, axis=1)


def kl_penalty_rewards(
    score_B: Array,
    logp_BxT: Array,
    ref_logp_BxT: Array,
    kl_coef,
    mask_BxT: Optional[Array] = None,
    score_index_B: Optional[Array] = None,
    token_rewards_BxT: Optional[Array] = None,
) -> tuple[Array, Array, Array]:
    """Per-token rewards: `-kl_coef * (logp - ref_logp)`, plus the score at one index.

    docs/implementation_details.md item 19 / LHP `compute_rewards`: the KL penalty is paid at
    every token, the reward-model score once. Higher score -> higher reward;
    higher `logp - ref_logp` -> lower reward. Dense rewards of a token-level
    reward model (Wu et al. 2023) add at their own tokens.

    Args:
        score_B: the (penalised) reward-model score per sample.
        logp_BxT, ref_logp_BxT: temperature-scaled logprobs of the sampled tokens
            under the policy and the frozen reference.
        kl_coef: the KL coefficient beta (float or scalar array).
        mask_BxT: optional 0/1 mask; `kl` and the penalty are 0 where it is 0.
        score_index_B: where the score is added. Default: the last index T-1
            (Ziegler), or with a mask the last masked-in index. Stiennon passes the
            EOS index (`data.tasks.first_eos_index`).
        token_rewards_BxT: optional per-token rewards, added where the mask is 1
            (they count in neither `non_score_reward` nor `kl`).
    Returns:
        `(rewards_BxT, non_score_reward_BxT, kl_BxT)`.
    """
    kl_BxT = (logp_BxT - ref_logp_BxT).astype(jnp.float32)
    if mask_BxT is not None:
        kl_BxT = kl_BxT * _mask_like(kl_BxT, mask_BxT)
    non_score_reward_BxT = -kl_coef * kl_BxT
    t = kl_BxT.shape[1]
    if score_index_B is None:
        if mask_BxT is None:
            score_index_B = jnp.full(kl_BxT.shape[:1], t - 1, jnp.int32)
        else:
            score_index_B = last_valid_index(mask_BxT)
    at_score_BxT = jax.nn.one_hot(score_index_B, t, dtype=jnp.float32)
    rewards_BxT = non_score_reward_BxT + at_score_BxT * jnp.asarray(score_B, jnp.float32)[:, None]
    if token_rewards_BxT is not None:
        tok_BxT = jnp.asarray(token_rewards_BxT, jnp.float32)
        rewards_BxT = rewards_BxT + (tok_BxT if mask_BxT is None else tok_BxT * _mask_like(
            tok_BxT, mask_BxT))
    return rewards_BxT, non_score_reward_BxT, kl_BxT


def token_level_rewards(p_bad_BxT: Array, mask_BxT: Array, coef, clean, mode: str = "hard"
                        ) -> Array:
    """Dense rewards of a token-level reward model (Wu et al. 2023).

    Each real token earns `coef * clean` if the model calls it clean and
    `-coef` if it calls it wrong: `mode="hard"` takes the model's decision
    (`p_bad > 0.5`, as Wu et al.'s classifiers), `"prob"` its expectation
    `coef * ((1 - p_bad) * clean - p_bad)`. Masked-out tokens earn 0.

    Args:
        p_bad_BxT: the model's probability that each token is marked wrong.
        mask_BxT: 0/1, the tokens that earn a reward.
        coef: the weight of the dense rewards beside the sequence score.
        clean: the reward of a clean token (Wu et al.: +1; 0 rewards only errors).
        mode: "hard" | "prob".
    """
    p_BxT = jnp.asarray(p_bad_BxT, jnp.float32)
    if mode == "hard":
        p_BxT = (p_BxT > 0.5).astype(jnp.float32)
    elif mode != "prob":
        raise ValueError(f"ppo.token_reward_mode={mode!r}: expected 'hard' or 'prob'")
    return coef * ((1.0 - p_BxT) * clean - p_BxT) * _mask_like(p_BxT, mask_BxT)




LOSS_NORMS = ("token", "sequence", "constant")


def normalise_loss(loss_BxT: Array, mask_BxT: Optional[Array] = None, norm: str = "token"):
    """A per-token loss reduced to a scalar.

    "token": the mean over real tokens (longer responses weigh more).
    "sequence": each row's mean over its real tokens, then the mean over rows
    (GRPO: every response weighs the same, its tokens less the longer it is).
    "constant": the sum over real tokens divided by rows x T (Dr. GRPO: no
    length-dependent factor; T is the fixed response length).
    """
    if norm == "token":
        return masked_mean(loss_BxT, mask_BxT)
    if norm == "sequence":
        return jnp.mean(masked_mean(loss_BxT, mask_BxT, axis=1))
    if norm == "constant":
        return masked_sum(loss_BxT, mask_BxT) / (loss_BxT.shape[0] * loss_BxT.shape[1])
    raise ValueError(f"loss norm {norm!r}: expected one of {LOSS_NORMS}")


def kl_k3(logp_BxT: Array, ref_logp_BxT: Array) -> Array:
    """Per-token `exp(ref - logp) - (ref - logp) - 1`: GRPO's unbiased, non-negative
    estimate of KL(policy || reference) for tokens sampled from the policy."""
    d_BxT = ref_logp_BxT - logp_BxT
    return jnp.exp(d_BxT) - d_BxT - 1.0


def policy_loss(
    logp_new_BxT: Array,
    logp_old_BxT: Array,
    adv_BxT: Array,
    cliprange,
    mask_BxT: Optional[Array] = None,
    norm: str = "token",
) -> tuple[Array, dict[str, Array]]:
    """PPO clipped surrogate: `mean(max(-A * ratio, -A * clip(ratio, 1-c, 1+c)))`.

    The mean is `normalise_loss`'s `norm` (a token mean by default). Returns
    `(loss, stats)`; `stats["clipfrac"]` is the fraction of tokens where
    the clipped term is the larger (active), `stats["approxkl"]` is
    `0.5 * mean((logp_new - logp_old)^2)` as LHP.
    """
    log_ratio_BxT = logp_new_BxT - logp_old_BxT
    ratio_BxT = jnp.exp(log_ratio_BxT)
    pg_losses_BxT = -adv_BxT * ratio_BxT
    pg_losses_clipped_BxT = -adv_BxT * jnp.clip(ratio_BxT, 1.0 - cliprange, 1.0 + cliprange)
    loss = normalise_loss(jnp.maximum(pg_losses_BxT, pg_losses_clipped_BxT), mask_BxT, norm)
    stats = {
            "clipfrac": masked_mean(
                    (pg_losses_clipped_BxT > pg_losses_BxT).astype(jnp.float32), mask_BxT),
            "approxkl": 0.5 * masked_mean(jnp.square(log_ratio_BxT), mask_BxT),
    }
    return loss, stats


def value_loss(
    v_new_BxT: Array,
    v_old_BxT: Array,
    returns_BxT: Array,
    cliprange_value,
    mask_BxT: Optional[Array] = None,
) -> tuple[Array, dict[str, Array]]:
    """Clipped value loss: `0.5 * mean(max((v - R)^2, (clip(v, v_old-c, v_old+c) - R)^2))`.

    Returns `(loss, stats)` with `clipfrac` (fraction where the clipped error is
    the larger), `vpred` (mean new prediction) and `error` (mean `(v - R)^2`,
    LHP's `ppo/val/error`).
    """
    v_clipped_BxT = jnp.clip(v_new_BxT, v_old_BxT - cliprange_value, v_old_BxT + cliprange_value)
    vf_losses_BxT = jnp.square(v_new_BxT - returns_BxT)
    vf_losses_clipped_BxT = jnp.square(v_clipped_BxT - returns_BxT)
    loss = 0.5 * masked_mean(jnp.maximum(vf_losses_BxT, vf_losses_clipped_BxT), mask_BxT)
    stats = {
            "clipfrac": masked_mean(
                    (vf_losses_clipped_BxT > vf_losses_BxT).astype(jnp.float32), mask_BxT),
            "vpred": masked_mean(v_new_BxT, mask_BxT),
            "error": masked_mean(vf_losses_BxT, mask_BxT),
    }
    return loss, stats


def var_explained(
    values_BxT: Array, returns_BxT: Array, mask: Optional[Array] = None
) -> Array:
    """`1 - var(returns - values) / var(returns)`, population variances.

    1 is a perfect value function, 0 no better than a constant; undefined (inf
    or NaN) when the returns are constant.
    """
    return 1.0 - masked_var(returns_BxT - values_BxT, mask) / masked_var(returns_BxT, mask)


# --------------------------------------------------------------------------
# The PPO update: one rollout batch -> advantages -> epochs x minibatches.


@flax.struct.dataclass
class PPOState:
    """Everything a PPO run needs to continue exactly (checkpointed whole).

    `params` is `{"policy": ...}` for Ziegler's shared policy+value model, or
    `{"policy": ..., "value": ...}` with a separate value network (Stiennon);
    one optimizer updates both with the joint loss `pg + vf_coef * vf`.
    """

    step: Array  # PPO updates done (int32)
    params: dict
    opt_state: optax.OptState
    kl: KLState
    rng: Array  # base key; the update's key is fold_in(rng, step)


@flax.struct.dataclass
class Rollout:
    """One batch of experience, all [B, ...] (per device under data parallelism)."""

    query_BxQ: Array
    query_mask_BxQ: Array
    response_BxR: Array  # raw sampled tokens (PPO trains on these, item 10)
    response_mask_BxR: Array  # 1 through EOS (Stiennon) / all ones (Ziegler)
    logprobs_BxR: Array  # policy, temperature-scaled, at rollout time
    ref_logprobs_BxR: Array
    values_BxR: Array
    scores_B: Array  # post-processed, penalised score
    score_index_B: Array  # where the score is paid (last index or EOS)
    token_rewards_BxR: Optional[Array] = None  # dense rewards of a token-level RM, or None


@dataclasses.dataclass(frozen=True)
class PPOHParams:
    """Static PPO hyperparameters (hashable: bound into the compiled step)."""

    nminibatches: int
    noptepochs: int
    cliprange: float
    cliprange_value: float
    vf_coef: float
    gamma: float
    lam: float
    whiten_rewards: bool
    # "global": rewards and advantages whitened once per update over the global
    # batch (device-count independent). "minibatch": LHP's scheme
    # (`train_policy.py` `PPOTrainer.loss`, lines 324-338): whitened and GAE
    # recomputed inside the loss, per minibatch and per device, no all-reduce.
    whiten_scope: str
    temperature: float
    kl_adaptive: bool
    kl_target: float
    kl_horizon: float
    batch_size: int  # global rollout batch (episodes per update), for the KL controller
    # How the per-token surrogate is averaged (`normalise_loss`): "token" (the
    # minibatch's token mean, the default), "sequence" (GRPO: each response's
    # token mean, then the mean over responses), "constant" (Dr. GRPO: the token
    # sum over rows x response_length).
    loss_norm: str = "token"
    # GRPO's KL: the k3 estimate of KL(policy || reference) per token, times the
    # KL coefficient, added to the loss (normalised as the surrogate) instead of
    # paid as a per-token reward penalty.
    kl_in_loss: bool = False


def forward_policy_value(apply_policy_value, params, query_BxQ, query_mask_BxQ, response_BxR,
                         response_mask_BxR, temperature):
    """Temperature-scaled logprobs, full-distribution entropy and values of response tokens.

    `apply_policy_value(params, ids_BxT, mask_BxT, logits_at) -> (logits, values_BxT)`
    over query + response, with logits only at the positions `logits_at` (a
    slice): those at Q-1+t predict response token t, and the value for token
    t is read at the same position (item 17). `logits` is a [B, L, V] array or
    a `HeadLogits` (the head applied chunk by chunk, `logprobs_and_entropy_from_head`).
    """
    q = query_BxQ.shape[1]
    r = response_BxR.shape[1]
    ids_BxT = jnp.concatenate([query_BxQ, response_BxR], axis=1)
    mask_BxT = jnp.concatenate([query_mask_BxQ, response_mask_BxR], axis=1)
    logits_BxRxV, values_BxT = apply_policy_value(params, ids_BxT, mask_BxT, slice(q - 1, q + r - 1))
    # Masked positions are read at id 0, whatever token they hold (their value is unused).
    safe_BxR = jnp.where(response_mask_BxR > 0, response_BxR, 0)
    if isinstance(logits_BxRxV, HeadLogits):
        logp_BxR, entropy_BxR = logprobs_and_entropy_from_head(
            logits_BxRxV.h_BxLxD, logits_BxRxV.head, safe_BxR, temperature, logits_BxRxV.chunk)
    else:
        logp_BxR, entropy_BxR = logprobs_and_entropy(logits_BxRxV, safe_BxR, temperature)
    return logp_BxR, entropy_BxR, values_BxT[:, q - 1 : q + r - 1]


WHITEN_SCOPES = ("global", "minibatch")


def advantages_and_returns(rewards_BxT, values_BxT, mask_BxT, hp: "PPOHParams",
                           axis_name=None) -> tuple[Array, Array]:
    """LHP's `PPOTrainer.loss` prologue: whiten the rewards (mean kept) when
    `hp.whiten_rewards`, GAE, `returns = adv + values`, whiten the advantages.

    Moments are over the given rows, or over every shard of `axis_name`.
    """
    if hp.whiten_rewards:
        rewards_BxT = whiten(rewards_BxT, shift_mean=False, mask=mask_BxT, axis_name=axis_name)
    adv_BxT, returns_BxT = gae(rewards_BxT, values_BxT, hp.gamma, hp.lam, mask_BxT)
    return whiten(adv_BxT, mask=mask_BxT, axis_name=axis_name), returns_BxT


def make_update_step(apply_policy_value, optimizer: optax.GradientTransformation,
                     hp: PPOHParams, axis_name: str | None, advantages=None):
    """Returns `update(state, rollout) -> (state, metrics)`: one PPO update, pure.

    Written for one device's shard; with `axis_name` (a name or a tuple of mesh
    axes) the gradients (`fsdp.mean_grads`, FSDP-aware) and metrics are
    averaged over shards and the minibatches are cut from one global
    permutation of the all-gathered batch. Whitening (`hp.whiten_scope`):
    "global" whitens once over the global batch, so the result does not depend
    on the device count; "minibatch" is LHP's arithmetic, per minibatch and
    per device (LHP: per MPI rank), advantages recomputed in every minibatch.

    `advantages(state, rollout, rewards_BxR, mask_BxR) -> (state, adv_BxR,
    returns_BxR, stats)` replaces reward whitening and GAE (whatever the
    scope), and then no value model is trained (`rlhf_jax.algorithms.pg`: RLOO,
    REINFORCE with a baseline).
    """
    if hp.whiten_scope not in WHITEN_SCOPES:
        raise ValueError(f"ppo.whiten_scope={hp.whiten_scope!r}: expected one of {WHITEN_SCOPES}")
    if hp.loss_norm not in LOSS_NORMS:
        raise ValueError(f"loss norm {hp.loss_norm!r}: expected one of {LOSS_NORMS}")
    per_minibatch = hp.whiten_scope == "minibatch" and advantages is None

    def pmean(x):
        return jax.lax.pmean(x, axis_name) if axis_name else x

    def update(state: PPOState, ro: Rollout):
        mask_BxR = ro.response_mask_BxR.astype(jnp.float32)
        kl_coef = state.kl.coef
        # With the KL in the loss the rewards carry no KL penalty.
        rewards_BxR, non_score_BxR, kl_BxR = kl_penalty_rewards(
            ro.scores_B, ro.logprobs_BxR, ro.ref_logprobs_BxR,
            0.0 if hp.kl_in_loss else kl_coef, mask_BxR, ro.score_index_B, ro.token_rewards_BxR)
        train = dict(query=ro.query_BxQ, query_mask=ro.query_mask_BxQ, response=ro.response_BxR,
                     mask=mask_BxR, logp=ro.logprobs_BxR, values=ro.values_BxR)
        if hp.kl_in_loss:
            train["ref_logp"] = ro.ref_logprobs_BxR
        extra_stats = {}
        if advantages is not None:
            state, train["adv"], train["returns"], extra_stats = advantages(
                state, ro, rewards_BxR, mask_BxR)
        elif per_minibatch:
            train["rewards"] = rewards_BxR
        else:
            train["adv"], train["returns"] = advantages_and_returns(
                rewards_BxR, ro.values_BxR, mask_BxR, hp, axis_name)
        local_b = ro.query_BxQ.shape[0]
        if axis_name:
            train = jax.tree.map(lambda x: jax.lax.all_gather(x, axis_name, tiled=True), train)
            device = jax.lax.axis_index(axis_name)
        else:
            device = 0
        global_b = train["query"].shape[0]
        mb_global = global_b // hp.nminibatches
        mb_local = local_b // hp.nminibatches

        def loss_fn(params, mb, weight):
            stats = {}
            if per_minibatch:
                # This device's rows of the minibatch alone (no axis_name): LHP
                # ran `loss` on each rank's minibatch, with no all-reduce.
                adv_BxR, returns_BxR = advantages_and_returns(
                    mb["rewards"], mb["values"], mb["mask"], hp)
                stats.update({
                    "ppo/returns/mean": masked_mean(returns_BxR, mb["mask"]),
                    "ppo/returns/var": masked_var(returns_BxR, mb["mask"]),
                    "ppo/val/mean": masked_mean(mb["values"], mb["mask"]),
                    "ppo/val/var": masked_var(mb["values"], mb["mask"]),
                    "ppo/advantages/mean": masked_mean(adv_BxR, mb["mask"]),
                })
            else:
                adv_BxR, returns_BxR = mb["adv"], mb["returns"]
            logp_BxR, entropy_BxR, v_BxR = forward_policy_value(
                apply_policy_value, params, mb["query"], mb["query_mask"], mb["response"],
                mb["mask"].astype(jnp.int32), hp.temperature)
            pg_loss, pg_stats = policy_loss(logp_BxR, mb["logp"], adv_BxR, hp.cliprange,
                                            mb["mask"], hp.loss_norm)
            stats.update({
                "ppo/loss/policy": pg_loss,
                "ppo/policy/entropy": masked_mean(entropy_BxR, mb["mask"]),
                "ppo/policy/approxkl": pg_stats["approxkl"],
                "ppo/policy/clipfrac": pg_stats["clipfrac"],
            })
            if hp.kl_in_loss:
                kl_loss = normalise_loss(kl_k3(logp_BxR, mb["ref_logp"]), mb["mask"],
                                         hp.loss_norm)
                stats["ppo/loss/kl"] = kl_loss
                pg_loss = pg_loss + kl_coef * kl_loss  # the total below includes it
            if advantages is not None:  # no value model
                return weight * pg_loss, {**stats, "ppo/loss/total": pg_loss}
            vf_loss, vf_stats = value_loss(v_BxR, mb["values"], returns_BxR, hp.cliprange_value,
                                           mb["mask"])
            stats.update({
                "ppo/loss/value": vf_loss,
                "ppo/loss/total": pg_loss + hp.vf_coef * vf_loss,
                "ppo/val/vpred": vf_stats["vpred"],
                "ppo/val/error": vf_stats["error"],
                "ppo/val/clipfrac": vf_stats["clipfrac"],
            })
            return weight * (pg_loss + hp.vf_coef * vf_loss), stats

        grad_fn = jax.grad(loss_fn, has_aux=True)

        def minibatch(carry, rows_B):
            params, opt_state = carry
            mb = jax.tree.map(lambda x: x[rows_B], train)
            # Loss and stats are masked means over this shard's tokens. With EOS
            # masks shards hold different token counts, so weight each by its
            # share: the mean over shards is then the mean over the global
            # minibatch's tokens (device-count independent). All-ones masks give
            # weight exactly 1. The weight scales the loss, not the gradient
            # afterwards: under FSDP a split leaf's gradient is summed over its
            # fsdp group inside the backward pass (`fsdp.mean_grads`).
            count = jnp.sum(mb["mask"])
            token_weight = _safe_div(count, pmean(count))
            # GRPO's losses are means over rows, and every shard holds as many.
            weight = (token_weight if hp.loss_norm == "token" else
                      jnp.ones((), jnp.float32))
            grads, stats = grad_fn(params, mb, weight)
            grads = fsdp.mean_grads(grads, axis_name) if axis_name else grads
            stats = pmean({k: v * (weight if k.startswith("ppo/loss/") else token_weight)
                           for k, v in stats.items()})
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), stats

        def epoch(carry, key):
            # One global permutation (identical on every device); this device
            # takes its slice of each minibatch.
            perm_UxG = jax.random.permutation(key, global_b).reshape(hp.nminibatches, mb_global)
            rows_UxB = jax.lax.dynamic_slice_in_dim(perm_UxG, device * mb_local, mb_local, axis=1)
            return jax.lax.scan(minibatch, carry, rows_UxB)

        key = jax.random.fold_in(state.rng, state.step)
        epoch_keys = jax.random.split(key, hp.noptepochs)
        (params, opt_state), stats_ExU = jax.lax.scan(
            epoch, (state.params, state.opt_state), epoch_keys)
        stats = jax.tree.map(jnp.mean, stats_ExU)

        # Rollout statistics (LHP names), over the global batch.
        kl_sum_B = jnp.sum(kl_BxR, axis=1)
        mean_kl = pmean(jnp.mean(kl_sum_B))
        stats.update(pmean({
            "objective/kl": jnp.mean(kl_sum_B),
            "objective/kl_coef": kl_coef,
            "objective/entropy": jnp.mean(jnp.sum(-ro.logprobs_BxR * mask_BxR, axis=1)),
            "objective/score": jnp.mean(ro.scores_B),
            "objective/score_total": jnp.mean(ro.scores_B + jnp.sum(non_score_BxR, axis=1)),
            "ppo/response_length": jnp.mean(jnp.sum(mask_BxR, axis=1)),
        }))
        if ro.token_rewards_BxR is not None:
            stats["objective/token_reward"] = pmean(jnp.mean(jnp.sum(
                ro.token_rewards_BxR * mask_BxR, axis=1)))
        stats.update(extra_stats)
        if advantages is not None:
            g_mask = train["mask"]
            stats["ppo/returns/mean"] = masked_mean(train["returns"], g_mask)
            stats["ppo/returns/var"] = masked_var(train["returns"], g_mask)
            stats["ppo/advantages/mean"] = masked_mean(train["adv"], g_mask)
        elif per_minibatch:
            # LHP `record_step_stats` (line 241): from the minibatch averages.
            stats["ppo/val/var_explained"] = 1.0 - _safe_div(stats["ppo/val/error"],
                                                             stats["ppo/returns/var"])
        else:
            # Token means and variances over the global batch, from gathered arrays
            # (a pmean of per-shard masked means would depend on the device count).
            g_mask, g_ret, g_val = train["mask"], train["returns"], train["values"]
            stats["ppo/returns/mean"] = masked_mean(g_ret, g_mask)
            stats["ppo/val/mean"] = masked_mean(g_val, g_mask)
            stats["ppo/advantages/mean"] = masked_mean(train["adv"], g_mask)
            stats["ppo/returns/var"] = masked_var(g_ret, g_mask)
            stats["ppo/val/var"] = masked_var(g_val, g_mask)
            stats["ppo/val/var_explained"] = var_explained(g_val, g_ret, g_mask)

        kl_state = update_kl_state(state.kl, mean_kl, hp.batch_size, adaptive=hp.kl_adaptive,
                                   target=hp.kl_target, horizon=hp.kl_horizon)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  kl=kl_state)
        return new_state, stats

    return update

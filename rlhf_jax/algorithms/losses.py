"""Reward-model, SFT and DPO losses: pure, jit-safe functions.

Reward losses follow the original code (docs/implementation_details.md items 12, 28):

- `best_of_n_loss`: Ziegler's N-way softmax cross-entropy over the rewards of
  N samples for one query, target the labeller's `best` (N=4 in LHP).
- `bradley_terry_loss`: Stiennon's pairwise `-log sigmoid(r_chosen -
  r_rejected)`; identical to `best_of_n_loss` at N=2.
- `scalar_rating_loss`, `scalar_compare_loss`: LHP's MSE label types.
- `dpo_loss`: Rafailov et al. 2023, which is Bradley-Terry on the implicit
  rewards `beta * (log pi - log ref)`.
- `span_token_loss`: a token-level reward model's per-token binary
  cross-entropy against span marks (Wu et al. 2023).
- `likelihood_unlikelihood_loss`: likelihood of a preferred response's
  unmarked tokens plus unlikelihood (Welleck et al. 2019) of marked tokens.

Every loss returns a scalar mean over the batch, computed in at least float32
(bf16 inputs are upcast) and stays finite, with finite gradients, at reward
gaps of 1e4. Each `*_metrics` companion calls its loss and adds accuracy-style
diagnostics, so there is one implementation per loss. Shape errors raise a
one-line ValueError naming the argument; they are static, so the checks cost
nothing under jit.

Means here are per call (per device under `pmap`); the trainer `pmean`s them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.algorithms.logprobs import masked_token_logprobs

Array = jax.Array


# --------------------------------------------------------------------------
# Helpers (private).
# --------------------------------------------------------------------------


def _float(x) -> Array:
    """`x` as an array of at least float32 (bf16/f16 upcast; f64 kept)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_rank(name: str, x: Array, rank: int, what: str) -> None:
    if x.ndim != rank:
        raise ValueError(f"{name} must have shape {what}, got shape {tuple(x.shape)}")


def _check_same_shape(names: tuple[str, ...], *xs: Array) -> None:
    shapes = [tuple(x.shape) for x in xs]
    if any(s != shapes[0] for s in shapes[1:]):
        pairs = ", ".join(f"{n}={s}" for n, s in zip(names, shapes))
        raise ValueError(f"shapes must match: {pairs}")


def _pairwise_accuracy(gap_B: Array) -> Array:
    """Mean of 1[gap > 0], with exact ties (gap == 0) counting 0.5."""
    return jnp.mean(jnp.where(gap_B > 0, 1.0, jnp.where(gap_B == 0, 0.5, 0.0)))


# --------------------------------------------------------------------------
# Reward-model losses.
# --------------------------------------------------------------------------


def bradley_terry_loss(r_chosen_B: Array, r_rejected_B: Array) -> Array:
    """Pairwise preference loss `mean(-log sigmoid(r_chosen - r_rejected))`.

    Args:
      r_chosen_B: [B] rewards of the preferred responses.
      r_rejected_B: [B] rewards of the other responses.

    Returns:
      Scalar loss. `log_sigmoid` keeps it finite at any gap (at gap -1e4 it
      is 1e4, with gradient -1, not inf).
    """
    r_chosen_B, r_rejected_B = _float(r_chosen_B), _float(r_rejected_B)
    _check_rank("r_chosen_B", r_chosen_B, 1, "[B]")
    _check_same_shape(("r_chosen_B", "r_rejected_B"), r_chosen_B, r_rejected_B)
    return jnp.mean(-jax.nn.log_sigmoid(r_chosen_B - r_rejected_B))


def bradley_terry_metrics(r_chosen_B: Array, r_rejected_B: Array) -> dict[str, Array]:
    """`bradley_terry_loss` plus accuracy and the mean reward gap.

    Args:
      r_chosen_B: [B] rewards of the preferred responses.
      r_rejected_B: [B] rewards of the other responses.

    Returns:
      {"loss", "accuracy" (mean 1[chosen > rejected], ties count 0.5),
       "margin" (mean chosen - rejected)}, all scalars.
    """
    loss = bradley_terry_loss(r_chosen_B, r_rejected_B)
    gap_B = _float(r_chosen_B) - _float(r_rejected_B)
    return {
        "loss": loss,
        "accuracy": _pairwise_accuracy(gap_B),
        "margin": jnp.mean(gap_B),
    }


def best_of_n_loss(r_BxK: Array, best_B: Array) -> Array:
    """Ziegler's K-way softmax cross-entropy, target the labelled best sample.

    Args:
      r_BxK: [B, K] rewards of the K samples shown for each query (any K >= 2;
        K=4 in LHP's `best_of_4`).
      best_B: [B] integer index in [0, K) of the sample the labeller chose.

    Returns:
      Scalar `mean_b -log softmax(r_b)[best_b]`. At K=2 with `best=0` this is
      `bradley_terry_loss(r[:, 0], r[:, 1])`.
    """
    r_BxK = _float(r_BxK)
    best_B = jnp.asarray(best_B)
    _check_rank("r_BxK", r_BxK, 2, "[B, K]")
    if best_B.shape != r_BxK.shape[:1]:
        raise ValueError(
            f"best_B must have shape [B]={r_BxK.shape[:1]} to match r_BxK "
            f"{tuple(r_BxK.shape)}, got {tuple(best_B.shape)}"
        )
    if not jnp.issubdtype(best_B.dtype, jnp.integer):
        raise ValueError(f"best_B must be integer indices, got dtype {best_B.dtype}")
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(r_BxK, best_B))


def best_of_n_metrics(r_BxK: Array, best_B: Array) -> dict[str, Array]:
    """`best_of_n_loss` plus accuracy (the highest reward is the labelled best).

    Args:
      r_BxK: [B, K] rewards of the K samples per query.
      best_B: [B] integer index of the labelled best sample.

    Returns:
      {"loss", "accuracy"}. Ties share credit: if m samples tie for the maximum
      and `best` is one of them the record scores 1/m (so K=2 agrees with
      `bradley_terry_metrics`, and an untrained model with all rewards equal
      scores 1/K rather than the fraction of records with best == 0).
    """
    loss = best_of_n_loss(r_BxK, best_B)
    r_BxK = _float(r_BxK)
    is_max_BxK = r_BxK == jnp.max(r_BxK, axis=-1, keepdims=True)
    best_is_max_B = jnp.take_along_axis(is_max_BxK, jnp.asarray(best_B)[:, None], axis=-1)[:, 0]
    n_max_B = jnp.sum(is_max_BxK, axis=-1)
    return {"loss": loss, "accuracy": jnp.mean(best_is_max_B / n_max_B)}


def scalar_rating_loss(pred_B: Array, score_B: Array) -> Array:
    """LHP `scalar_rating`: mean squared error of the reward to the rated score.

    Args:
      pred_B: [B] predicted rewards.
      score_B: [B] labelled scores.

    Returns:
      Scalar `mean((pred - score)^2)`.
    """
    pred_B, score_B = _float(pred_B), _float(score_B)
    _check_rank("pred_B", pred_B, 1, "[B]")
    _check_same_shape(("pred_B", "score_B"), pred_B, score_B)
    return jnp.mean(jnp.square(pred_B - score_B))


def scalar_rating_metrics(pred_B: Array, score_B: Array) -> dict[str, Array]:
    """`scalar_rating_loss` plus the mean absolute error.

    Args:
      pred_B: [B] predicted rewards.
      score_B: [B] labelled scores.

    Returns:
      {"loss", "abs_error"}.
    """
    loss = scalar_rating_loss(pred_B, score_B)
    return {"loss": loss, "abs_error": jnp.mean(jnp.abs(_float(pred_B) - _float(score_B)))}


def scalar_compare_loss(r0_B: Array, r1_B: Array, difference_B: Array) -> Array:
    """LHP `scalar_compare`: MSE of the reward difference `r1 - r0` to the label.

    Args:
      r0_B: [B] rewards of `sample0`.
      r1_B: [B] rewards of `sample1`.
      difference_B: [B] labelled `difference` (how much better sample1 is).

    Returns:
      Scalar `mean(((r1 - r0) - difference)^2)`.
    """
    r0_B, r1_B, difference_B = _float(r0_B), _float(r1_B), _float(difference_B)
    _check_rank("r0_B", r0_B, 1, "[B]")
    _check_same_shape(("r0_B", "r1_B", "difference_B"), r0_B, r1_B, difference_B)
    return jnp.mean(jnp.square((r1_B - r0_B) - difference_B))


def scalar_compare_metrics(r0_B: Array, r1_B: Array, difference_B: Array) -> dict[str, Array]:
    """`scalar_compare_loss` plus sign accuracy.

    Args:
      r0_B: [B] rewards of `sample0`.
      r1_B: [B] rewards of `sample1`.
      difference_B: [B] labelled `difference`.

    Returns:
      {"loss", "accuracy"}: accuracy is the fraction of records with a nonzero
      label whose predicted `r1 - r0` has the label's sign (a predicted tie
      counts 0.5); records labelled 0 carry no preference and are left out.
      0 when every label is 0.
    """
    loss = scalar_compare_loss(r0_B, r1_B, difference_B)
    difference_B = _float(difference_B)
    # Orient each record so that a positive gap means the model agrees.
    gap_B = (_float(r1_B) - _float(r0_B)) * jnp.sign(difference_B)
    credit_B = jnp.where(gap_B > 0, 1.0, jnp.where(gap_B == 0, 0.5, 0.0))
    labelled_B = (difference_B != 0).astype(credit_B.dtype)
    accuracy = jnp.sum(credit_B * labelled_B) / jnp.maximum(jnp.sum(labelled_B), 1.0)
    return {"loss": loss, "accuracy": accuracy}


def span_token_sums(logits_BxT: Array, marks_BxT: Array, mask_BxT: Array) -> dict[str, Array]:
    """Sums over the tokens where `mask` is nonzero (weighted by it) of a span head's
    per-token binary cross-entropy and its confusion counts.

    Args:
      logits_BxT: [B, T] logits of "token t is marked wrong".
      marks_BxT: [B, T] 0/1 span marks.
      mask_BxT: [B, T] weights: 1 on the response tokens to count, 0 elsewhere.

    Returns:
      {"loss": sum of -log p(mark), "count": tokens, "correct": tokens whose
       decision (logit > 0) equals the mark, "marked": marked tokens, "found":
       marked tokens decided marked}, float32 scalars. Means are ratios of
       these (global means: ratios of their sums over devices).
    """
    logits_BxT, marks_BxT, mask_BxT = _float(logits_BxT), _float(marks_BxT), _float(mask_BxT)
    _check_rank("logits_BxT", logits_BxT, 2, "[B, T]")
    _check_same_shape(("logits_BxT", "marks_BxT", "mask_BxT"), logits_BxT, marks_BxT, mask_BxT)
    bce_BxT = optax.sigmoid_binary_cross_entropy(logits_BxT, marks_BxT)
    decided_BxT = (logits_BxT > 0).astype(logits_BxT.dtype)
    return {"loss": jnp.sum(bce_BxT * mask_BxT), "count": jnp.sum(mask_BxT),
            "correct": jnp.sum((decided_BxT == marks_BxT) * mask_BxT),
            "marked": jnp.sum(marks_BxT * mask_BxT),
            "found": jnp.sum(decided_BxT * marks_BxT * mask_BxT)}


def span_token_loss(logits_BxT: Array, marks_BxT: Array, mask_BxT: Array) -> Array:
    """Mean per-token binary cross-entropy of a span head over the masked-in
    tokens (0 when there are none); see `span_token_sums`."""
    sums = span_token_sums(logits_BxT, marks_BxT, mask_BxT)
    return sums["loss"] / jnp.maximum(sums["count"], 1.0)


def log1m_exp(logp: Array) -> Array:
    """`log(1 - exp(logp))` for `logp <= 0`, accurate near 0 and near -inf, and
    finite (about log 1e-6) where `exp(logp)` rounds to 1."""
    logp = jnp.minimum(_float(logp), jnp.log1p(-1e-6))
    return jnp.where(logp > -0.6931, jnp.log(-jnp.expm1(logp)), jnp.log1p(-jnp.exp(logp)))


def likelihood_unlikelihood_sums(logp_BxT: Array, like_mask_BxT: Array,
                                 unlike_mask_BxT: Array) -> dict[str, Array]:
    """Sums of the likelihood and unlikelihood terms over their tokens.

    Args:
      logp_BxT: [B, T] log-probs of the response tokens under the policy.
      like_mask_BxT: [B, T] 1 on tokens to raise (a preferred response's
        unmarked tokens).
      unlike_mask_BxT: [B, T] 1 on tokens to lower (span-marked tokens).

    Returns:
      {"like": sum of -log p over like tokens, "like_count", "unlike": sum of
       -log(1 - p) over unlike tokens (Welleck et al. 2019), "unlike_count",
       "unlike_prob": sum of p over unlike tokens}, float32 scalars.
    """
    logp_BxT = _float(logp_BxT)
    like, unlike = _float(like_mask_BxT), _float(unlike_mask_BxT)
    _check_rank("logp_BxT", logp_BxT, 2, "[B, T]")
    _check_same_shape(("logp_BxT", "like_mask_BxT", "unlike_mask_BxT"), logp_BxT, like, unlike)
    # `where`, not multiply: tokens outside a mask add no value and no gradient.
    return {"like": -jnp.sum(jnp.where(like != 0, logp_BxT, 0.0)), "like_count": jnp.sum(like),
            "unlike": -jnp.sum(jnp.where(unlike != 0, log1m_exp(logp_BxT), 0.0)),
            "unlike_count": jnp.sum(unlike),
            "unlike_prob": jnp.sum(jnp.where(unlike != 0, jnp.exp(logp_BxT), 0.0))}


def likelihood_unlikelihood_loss(logp_BxT: Array, like_mask_BxT: Array, unlike_mask_BxT: Array,
                                 alpha) -> Array:
    """`mean_like(-log p) + alpha * mean_unlike(-log(1 - p))`, each term a mean over
    its own tokens (0 when it has none); see `likelihood_unlikelihood_sums`."""
    s = likelihood_unlikelihood_sums(logp_BxT, like_mask_BxT, unlike_mask_BxT)
    return (s["like"] / jnp.maximum(s["like_count"], 1.0)
            + alpha * s["unlike"] / jnp.maximum(s["unlike_count"], 1.0))


# --------------------------------------------------------------------------
# DPO.
# --------------------------------------------------------------------------


def _dpo_implicit_rewards(pi_chosen_B, pi_rejected_B, ref_chosen_B, ref_rejected_B, beta):
    """[B] implicit rewards `beta * (log pi - log ref)` of chosen and rejected."""
    names = ("pi_chosen_B", "pi_rejected_B", "ref_chosen_B", "ref_rejected_B")
    xs = [_float(x) for x in (pi_chosen_B, pi_rejected_B, ref_chosen_B, ref_rejected_B)]
    _check_rank(names[0], xs[0], 1, "[B]")
    _check_same_shape(names, *xs)
    if isinstance(beta, (int, float)) and not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    pi_c, pi_r, ref_c, ref_r = xs
    return beta * (pi_c - ref_c), beta * (pi_r - ref_r)


def dpo_loss(
    pi_chosen_B: Array,
    pi_rejected_B: Array,
    ref_chosen_B: Array,
    ref_rejected_B: Array,
    beta: float,
) -> Array:
    """Direct Preference Optimisation loss (Rafailov et al. 2023).

    `mean(-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))))`, i.e.
    `bradley_terry_loss` on the implicit rewards `beta * (log pi - log ref)`.

    Args:
      pi_chosen_B: [B] summed log-probs of the chosen responses under the
        policy (see `logprobs.sequence_logprobs`).
      pi_rejected_B: [B] same for the rejected responses.
      ref_chosen_B: [B] summed log-probs of the chosen responses under the
        frozen reference.
      ref_rejected_B: [B] same for the rejected responses.
      beta: KL strength (> 0); a float or a traced scalar.

    Returns:
      Scalar loss; `log 2` when the policy equals the reference.
    """
    chosen_B, rejected_B = _dpo_implicit_rewards(
        pi_chosen_B, pi_rejected_B, ref_chosen_B, ref_rejected_B, beta
    )
    return bradley_terry_loss(chosen_B, rejected_B)


def dpo_metrics(
    pi_chosen_B: Array,
    pi_rejected_B: Array,
    ref_chosen_B: Array,
    ref_rejected_B: Array,
    beta: float,
) -> dict[str, Array]:
    """`dpo_loss` plus the implicit-reward diagnostics.

    Args: as `dpo_loss`.

    Returns:
      {"loss", "accuracy" (mean 1[chosen reward > rejected reward], ties 0.5),
       "margin" (mean chosen - rejected implicit reward),
       "chosen_reward", "rejected_reward" (means of `beta*(pi - ref)`)}.
    """
    chosen_B, rejected_B = _dpo_implicit_rewards(
        pi_chosen_B, pi_rejected_B, ref_chosen_B, ref_rejected_B, beta
    )
    metrics = bradley_terry_metrics(chosen_B, rejected_B)
    metrics["chosen_reward"] = jnp.mean(chosen_B)
    metrics["rejected_reward"] = jnp.mean(rejected_B)
    return metrics


# --------------------------------------------------------------------------
# SFT.
# --------------------------------------------------------------------------


def sft_loss(logits_BxTxV: Array, targets_BxT: Array, mask_BxT: Array) -> Array:
    """Token cross-entropy averaged over the positions where mask is 1.

    The mask selects response (reference summary) tokens only, so the query is
    not trained on. The mean is over all unmasked tokens in the batch, not per
    sequence.

    Args:
      logits_BxTxV: [B, T, V] logits, `logits[:, t]` predicting `targets[:, t]`.
      targets_BxT: [B, T] integer token ids.
      mask_BxT: [B, T] 1 (or True) where the token is trained on.

    Returns:
      Scalar loss; 0 (with zero gradient) when the mask is all zero.
    """
    logp_BxT, mask_BxT = masked_token_logprobs(logits_BxTxV, targets_BxT, mask_BxT, 1.0)
    return -jnp.sum(logp_BxT) / jnp.maximum(jnp.sum(mask_BxT), 1.0)

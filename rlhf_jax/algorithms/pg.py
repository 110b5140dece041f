"""Policy gradient without PPO's value model: RLOO, GRPO and REINFORCE with a baseline.

Which parts of PPO does RLHF need? These two keep the rollout, the reward
(RM score paid once, per-token KL penalty, optional dense token rewards) and
the KL controller of the PPO stage, and drop the value model, GAE and reward
whitening. A response's advantage is its return (the sum of its per-token
rewards, gamma = 1) minus a baseline, the same at every token:

- `rloo` (Ahmadian et al. 2024, "Back to Basics"): each query is sampled
  `ppo.rloo_k` times; the baseline of a sample is the mean return of the
  query's other k - 1 samples (leave-one-out), so
  `A_i = R_i - (sum_j R_j - R_i) / (k - 1)`.
- `grpo` (Shao et al. 2024, DeepSeekMath): each query is sampled `ppo.rloo_k`
  times; `A_i = (R_i - mean_j R_j) / (std_j R_j + 1e-4)` over the query's
  samples (std with Bessel's correction, as torch's), and the surrogate is
  averaged per response, then over responses (`ppo.normalise_loss`
  "sequence"). The Dr. GRPO variant (Liu et al. 2025, `ppo.grpo_variant =
  "dr_grpo"`) drops the division by the group's std and sums the surrogate
  over tokens, divided by a constant (rows x response length), so neither
  easy groups nor short responses weigh more. Either way the KL can be the
  papers' per-token reward penalty or GRPO's k3 term in the loss
  (`ppo.kl_in`; `ppo.kl_k3`).
- `reinforce`: the baseline is a moving average of past batches' mean return,
  `b <- decay * b + (1 - decay) * mean(R)` after each update, starting at 0
  (carried in `PGState.baseline`, checkpointed).

The update is the PPO step's (`ppo.make_update_step` with these advantages):
the clipped surrogate over `ppo.noptepochs` x `ppo.nminibatches`. With one
epoch of one minibatch the ratio is 1 and the gradient is exactly
REINFORCE's (scaled by 1 / tokens, as the surrogate is a token mean).
Everything is pure and runs per shard: the RLOO groups and the batch mean are
taken over the gathered global batch, so results do not depend on the
device count.
"""

from __future__ import annotations

from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms.ppo import PPOState, masked_sum

ALGOS = ("ppo", "rloo", "grpo", "reinforce")
GRPO_VARIANTS = ("grpo", "dr_grpo")
GRPO_STD_EPS = 1e-4


@flax.struct.dataclass
class PGState(PPOState):
    """`PPOState` plus REINFORCE's moving-average baseline (float32 scalar)."""

    baseline: jax.Array = None


def sequence_returns(rewards_BxR, mask_BxR):
    """[B] sum of each response's per-token rewards over its real tokens (gamma = 1)."""
    return masked_sum(jnp.asarray(rewards_BxR, jnp.float32), mask_BxR, axis=1)


def rloo_advantages(returns_B, k: int):
    """[B] leave-one-out advantages; rows are groups of `k` samples of one query."""
    r_GxK = jnp.asarray(returns_B, jnp.float32).reshape(-1, k)
    others_GxK = (jnp.sum(r_GxK, axis=1, keepdims=True) - r_GxK) / (k - 1)
    return (r_GxK - others_GxK).reshape(-1)


def grpo_advantages(returns_B, k: int, scale_by_std: bool = True):
    """[B] group-normalised advantages; rows are groups of `k` samples of one query.

    `R - group mean`, divided by `group std + 1e-4` (unbiased std) unless
    `scale_by_std` is False (Dr. GRPO). A group of equal returns gets 0.
    """
    r_GxK = jnp.asarray(returns_B, jnp.float32).reshape(-1, k)
    adv_GxK = r_GxK - jnp.mean(r_GxK, axis=1, keepdims=True)
    if scale_by_std:
        adv_GxK = adv_GxK / (jnp.std(r_GxK, axis=1, keepdims=True, ddof=1) + GRPO_STD_EPS)
    return adv_GxK.reshape(-1)


def loss_norm(algo: str, grpo_variant: str = "grpo") -> str:
    """How the update averages the surrogate (`ppo.normalise_loss`) for `algo`."""
    if algo != "grpo":
        return "token"
    return {"grpo": "sequence", "dr_grpo": "constant"}[grpo_variant]


def update_baseline(baseline, mean_return, decay: float):
    """REINFORCE's moving average: `decay * baseline + (1 - decay) * mean_return`."""
    return decay * baseline + (1.0 - decay) * mean_return


def make_advantages(algo: str, *, k: int, decay: float, axis_name,
                    grpo_variant: str = "grpo") -> Callable | None:
    """`advantages(state, rollout, rewards_BxR, mask_BxR) -> (state, adv_BxR,
    returns_BxR, stats)` for `ppo.make_update_step`; None for PPO itself."""
    if algo == "ppo":
        return None
    if algo not in ALGOS:
        raise ValueError(f"ppo.algo={algo!r}: expected one of {ALGOS}")
    if grpo_variant not in GRPO_VARIANTS:
        raise ValueError(f"ppo.grpo_variant={grpo_variant!r}: expected one of {GRPO_VARIANTS}")

    def advantages(state, ro, rewards_BxR, mask_BxR):
        del ro
        ret_B = sequence_returns(rewards_BxR, mask_BxR)
        b = ret_B.shape[0]
        if axis_name:
            ret_G = jax.lax.all_gather(ret_B, axis_name, tiled=True)
            first = jax.lax.axis_index(axis_name) * b
        else:
            ret_G, first = ret_B, 0
        stats = {"pg/return_mean": jnp.mean(ret_G)}
        if algo in ("rloo", "grpo"):
            adv_G = (rloo_advantages(ret_G, k) if algo == "rloo" else
                     grpo_advantages(ret_G, k, scale_by_std=grpo_variant == "grpo"))
            adv_B = jax.lax.dynamic_slice_in_dim(adv_G, first, b)
        else:
            adv_B = ret_B - state.baseline
            stats["pg/baseline"] = state.baseline
            state = state.replace(baseline=update_baseline(state.baseline, jnp.mean(ret_G),
                                                           decay))
        stats["pg/advantage_std"] = jnp.std(adv_B if not axis_name else
                                            jax.lax.all_gather(adv_B, axis_name, tiled=True))
        m_BxR = jnp.asarray(mask_BxR, jnp.float32)
        return state, adv_B[:, None] * m_BxR, ret_B[:, None] * m_BxR, stats

    return advantages


def repeat_queries(query_BxQ: np.ndarray, query_mask_BxQ: np.ndarray, k: int):
    """Each query `k` times in a row (RLOO's and GRPO's groups): rows i*k .. i*k+k-1 are
    query i."""
    return np.repeat(query_BxQ, k, axis=0), np.repeat(query_mask_BxQ, k, axis=0)

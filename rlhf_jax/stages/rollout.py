"""Rollouts: sample from the policy, score, and compute what PPO needs (device side).

`PPOModels` binds the Flax modules; `make_rollout` returns a per-shard function
(run under `DataParallel.compile`) that, for a batch of left-padded raw
queries: formats them for the policy (`task.query_prefix + query +
task.query_suffix`, LHP `query_formatter`), samples responses at temperature
T, recomputes policy logprobs and values and the reference's logprobs on the
formatted query with the temperature-scaled logits (item 7), post-processes
the responses (truncation, item 8), scores them with the reward model on the
RAW `concat(query, response)` (item 4; LHP `train_policy.py` line 291 and
`rewards.py` lines 177-179) at the last token (Ziegler) or at EOS (Stiennon),
and applies the no-truncation penalty (item 9). PPO then trains on the
formatted queries and the raw, untruncated responses (item 10). Items are
those of docs/implementation_details.md.

`best_of_n` is the baseline: N samples per query, the best by the RM; its KL
from the policy it samples is analytic, `log N - (N-1)/N`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax.algorithms.logprobs import HeadLogits
from rlhf_jax.algorithms.ppo import Rollout, forward_policy_value, token_level_rewards
from rlhf_jax.algorithms.sampling import sample
from rlhf_jax.data import tasks
from rlhf_jax.infra import parallel
from rlhf_jax.stages import reward


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """The task fields the rollout needs (from config group `task`)."""

    response_length: int
    temperature: float
    pad_token: int
    truncate_token: int | None = None  # Ziegler post-processing (None: off)
    truncate_after: int = 0
    penalty_reward_value: float | None = None  # None: no penalty
    eos_token: int | None = None
    stop_at_eos: bool = False  # Stiennon: stop, mask and score at EOS
    # `task.query_prefix` / `query_suffix` as token ids: the policy's formatting.
    query_prefix: tuple[int, ...] = ()
    query_suffix: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, task, *, query_prefix=(), query_suffix=()) -> "TaskSpec":
        """From config group `task`; the prefix and suffix come encoded (the
        tokenizer's ids), and are required when the config sets them."""
        for field, ids in (("query_prefix", query_prefix), ("query_suffix", query_suffix)):
            if task.get(field) and not ids:
                raise ValueError(f"task.{field}={task[field]!r} is set: pass its token ids "
                                 f"(TaskSpec.from_config({field}=...))")
        return cls(
            response_length=task.response_length,
            temperature=task.temperature,
            pad_token=task.pad_token,
            truncate_token=task.truncate_token,
            truncate_after=task.truncate_after,
            penalty_reward_value=task.penalty_reward_value,
            eos_token=task.eos_token,
            stop_at_eos=task.stop_at_eos,
            query_prefix=tuple(int(t) for t in query_prefix),
            query_suffix=tuple(int(t) for t in query_suffix),
        )

    def policy_queries(self, query_BxQ, query_mask_BxQ):
        """The policy's view of raw queries (`tasks.format_queries`)."""
        return tasks.format_queries(query_BxQ, query_mask_BxQ, self.query_prefix,
                                    self.query_suffix, self.pad_token)


@dataclasses.dataclass(frozen=True)
class TokenRewards:
    """Dense rewards from a token-level RM (`ppo.token_level_rewards`'s settings)."""

    coef: float
    clean: float
    mode: str

    @classmethod
    def from_config(cls, ppo) -> "TokenRewards | None":
        """`ppo.token_reward_{coef,clean,mode}`; None when the coefficient is 0."""
        if not ppo.token_reward_coef:
            return None
        return cls(float(ppo.token_reward_coef), float(ppo.token_reward_clean),
                   ppo.token_reward_mode)


@dataclasses.dataclass(frozen=True)
class PPOModels:
    """The Flax modules of a PPO run (params live elsewhere).

    `policy` is a `PolicyWithValueHead` when `value` is None (shared, Ziegler)
    or an LM (`models.causal_lm`) beside a `ValueModel` (separate, Stiennon).
    """

    policy: nn.Module
    reference: nn.Module
    value: nn.Module | None = None
    reward: nn.Module | None = None
    no_value: bool = False  # a plain LM policy, no value model (RLOO, REINFORCE)

    @property
    def shared_value(self) -> bool:
        return self.value is None and not self.no_value

    def apply_policy_value(self, params, ids_BxT, mask_BxT, logits_at: slice = slice(None)):
        """(logits_BxLxV at positions `logits_at`, values_BxT) of the trained model(s).

        The LM head runs only where logits are needed (PPO: the R response
        positions, not all Q+R): at GPT-2's 50k vocabulary it is a third of
        the forward pass and the largest activation.
        """
        variables = {"params": params["policy"]}
        h_BxTxD = self.policy.apply(variables, ids_BxT, mask_BxT, method=_final_hidden)
        logits_BxLxV = _logits(self.policy, variables, h_BxTxD[:, logits_at])
        if self.no_value:
            values_BxT = jnp.zeros(ids_BxT.shape, jnp.float32)
        elif self.value is None:
            values_BxT = self.policy.apply(variables, h_BxTxD, method=_value_head)
        else:
            values_BxT = self.value.apply({"params": params["value"]}, ids_BxT, mask_BxT)
        return logits_BxLxV, values_BxT

    def reference_logprobs(self, ref_params, query_BxQ, query_mask_BxQ, response_BxR,
                           response_mask_BxR, temperature):
        logp_BxR, _, _ = forward_policy_value(lm_apply(self.reference), ref_params, query_BxQ, query_mask_BxQ,
                                              response_BxR, response_mask_BxR, temperature)
        return logp_BxR


def lm_apply(model: nn.Module) -> Callable:
    """`apply(params, ids_BxT, mask_BxT, logits_at) -> (logits, zero values)` of a plain LM,
    the `apply_policy_value` form `forward_policy_value` takes."""

    def apply(params, ids_BxT, mask_BxT, logits_at=slice(None)):
        variables = {"params": params}
        h_BxTxD = model.apply(variables, ids_BxT, mask_BxT, method=_final_hidden)
        logits = _logits(model, variables, h_BxTxD[:, logits_at])
        return logits, jnp.zeros(ids_BxT.shape, jnp.float32)

    return apply


# Pieces of the LM / shared policy+value module, applied separately so the LM
# head sees only the positions whose logits are used.
def _final_hidden(module, ids_BxT, mask_BxT):
    return module.transformer(ids_BxT, mask_BxT).hidden_states[-1]


def _lm_logits(module, h_BxLxD):
    return module.lm_logits(h_BxLxD)


def _logits(model, variables, h_BxLxD):
    """The LM head's logits at `h`'s positions, or with the model config's
    `logits_chunk` set, the head itself (`HeadLogits`: `forward_policy_value`
    then applies it chunk by chunk beside the log-softmax)."""
    chunk = getattr(model.config, "logits_chunk", 0)
    if chunk:
        return HeadLogits(h_BxLxD, lambda h: model.apply(variables, h, method=_lm_logits), chunk)
    return model.apply(variables, h_BxLxD, method=_lm_logits)


def _value_head(module, h_BxTxD):
    return module.value_head(h_BxTxD.astype(jnp.float32))[..., 0]


def score_index(processed_BxR, task: TaskSpec):
    """Where the score is read and paid: EOS (Stiennon) or the last token (Ziegler)."""
    b, r = processed_BxR.shape
    if task.stop_at_eos:
        return tasks.first_eos_index(processed_BxR, task.eos_token)
    return jnp.full((b,), r - 1, jnp.int32)


def rm_scores(reward_model, rm_params, query_BxQ, query_mask_BxQ, processed_BxR, task: TaskSpec):
    """RM score of raw concat(query, post-processed response), pads masked.

    Read exactly as the reward model was trained (`reward.get_rewards`): at
    the last real token (Ziegler) or at the first EOS (Stiennon).
    """
    resp_mask_BxR = (processed_BxR != task.pad_token).astype(jnp.int32)
    return reward.get_rewards(
        reward_model, rm_params, query_BxQ, query_mask_BxQ, processed_BxR, resp_mask_BxR,
        reward_at="eos" if task.stop_at_eos else "last",
        eos_token=task.eos_token if task.stop_at_eos else None)


def rm_scores_and_token_rewards(reward_model, rm_params, query_BxQ, query_mask_BxQ,
                                processed_BxR, task: TaskSpec, token: TokenRewards):
    """`(scores_B, token_rewards_BxR)` of a token-level RM: the score as `rm_scores`,
    and per response token the dense reward of its span head's decision."""
    resp_mask_BxR = (processed_BxR != task.pad_token).astype(jnp.int32)
    scores_B, logits_BxR = reward.get_rewards_and_token_logits(
        reward_model, rm_params, query_BxQ, query_mask_BxQ, processed_BxR, resp_mask_BxR,
        reward_at="eos" if task.stop_at_eos else "last",
        eos_token=task.eos_token if task.stop_at_eos else None)
    return scores_B, token_level_rewards(jax.nn.sigmoid(logits_BxR), resp_mask_BxR, token.coef,
                                         token.clean, token.mode)


def make_rollout(models: PPOModels, task: TaskSpec, *, use_rm: bool,
                 token_rewards: TokenRewards | None = None) -> Callable:
    """Per-shard `rollout(params, ref_params, rm_params, query, query_mask, rng) -> (Rollout, processed)`.

    `query` is raw (what the RM reads); the Rollout holds the policy's
    formatted query, on which PPO trains. With `use_rm=False` the scores are zeros, to be filled on the host by a
    gold scorer (RL directly on the mock reward, Ziegler Fig. 2); the penalty
    is then applied there with `penalize`. With `token_rewards` the RM is a
    token-level one and the rollout carries its dense rewards for the
    post-processed response's tokens (0 after truncation).
    """

    def rollout(params, ref_params, rm_params, raw_query_BxQ, raw_query_mask_BxQ, rng):
        query_BxQ, query_mask_BxQ = task.policy_queries(raw_query_BxQ, raw_query_mask_BxQ)
        s = sample(
            models.policy, params["policy"], query_BxQ, query_mask_BxQ, rng,
            response_length=task.response_length, temperature=task.temperature,
            stop_at_eos=task.stop_at_eos, eos_token_id=task.eos_token, pad_token_id=task.pad_token,
            row_offset=parallel.global_row_offset(query_BxQ.shape[0]),
        )
        response_BxR, mask_BxR = s.tokens, s.mask
        logp_BxR, _, values_BxR = forward_policy_value(
            models.apply_policy_value, params, query_BxQ, query_mask_BxQ, response_BxR, mask_BxR,
            task.temperature)
        ref_logp_BxR = models.reference_logprobs(ref_params, query_BxQ, query_mask_BxQ,
                                                 response_BxR, mask_BxR, task.temperature)
        processed_BxR = tasks.postprocess_responses(
            response_BxR, task.truncate_token, task.truncate_after, task.pad_token)
        idx_B = score_index(processed_BxR, task)
        token_BxR = None
        if use_rm and token_rewards is not None:
            scores_B, token_BxR = rm_scores_and_token_rewards(
                models.reward, rm_params, raw_query_BxQ, raw_query_mask_BxQ, processed_BxR, task,
                token_rewards)
            scores_B = penalize(scores_B, response_BxR, task)
        elif use_rm:
            scores_B = rm_scores(models.reward, rm_params, raw_query_BxQ, raw_query_mask_BxQ,
                                 processed_BxR, task)
            scores_B = penalize(scores_B, response_BxR, task)
        else:
            scores_B = jnp.zeros(response_BxR.shape[:1], jnp.float32)
        ro = Rollout(
            query_BxQ=query_BxQ, query_mask_BxQ=query_mask_BxQ, response_BxR=response_BxR,
            response_mask_BxR=mask_BxR, logprobs_BxR=logp_BxR, ref_logprobs_BxR=ref_logp_BxR,
            values_BxR=values_BxR, scores_B=scores_B.astype(jnp.float32), score_index_B=idx_B,
            token_rewards_BxR=token_BxR,
        )
        return ro, processed_BxR

    return rollout


def penalize(scores_B, response_BxR, task: TaskSpec):
    if task.penalty_reward_value is None:
        return scores_B
    return tasks.penalize_scores(scores_B, response_BxR, task.truncate_token, task.truncate_after,
                                 task.penalty_reward_value)


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) for a continuous reward: log n - (n-1)/n."""
    return math.log(n) - (n - 1) / n


def make_best_of_n(models: PPOModels, task: TaskSpec, n: int) -> Callable:
    """Per-shard `best_of_n(ref_params, rm_params, query, mask, rng, row_offset=None) -> (best_BxR, best_score_B, all_scores_BxN)`.

    Samples n responses per (raw) query from `models.reference` (the initial
    policy, reading the formatted query) and keeps the one the RM, reading the
    raw query, scores highest (after the penalty). Row i of the shard is
    global row `row_offset + i`: by default its place in the global batch; a
    caller that feeds a long list in batches passes the index of the shard's
    first row in that list, so the samples do not depend on the batch size
    either.
    """

    def run(ref_params, rm_params, raw_query_BxQ, raw_query_mask_BxQ, rng, row_offset=None):
        query_BxQ, query_mask_BxQ = task.policy_queries(raw_query_BxQ, raw_query_mask_BxQ)
        b = query_BxQ.shape[0]
        offset = parallel.global_row_offset(b) if row_offset is None else row_offset

        def one_candidate(j):
            # Candidate j of global query i draws with key index j * 2^20 + i:
            # independent of the device count.
            s = sample(
                models.reference, ref_params, query_BxQ, query_mask_BxQ, rng,
                response_length=task.response_length, temperature=task.temperature,
                stop_at_eos=task.stop_at_eos, eos_token_id=task.eos_token,
                pad_token_id=task.pad_token, row_offset=j * (1 << 20) + offset,
            )
            processed_BxR = tasks.postprocess_responses(
                s.tokens, task.truncate_token, task.truncate_after, task.pad_token)
            scores_B = rm_scores(models.reward, rm_params, raw_query_BxQ, raw_query_mask_BxQ,
                                 processed_BxR, task)
            return processed_BxR, penalize(scores_B, s.tokens, task)

        # One candidate at a time: memory of one sampled batch whatever n is.
        processed_NxBxR, scores_NxB = jax.lax.map(one_candidate, jnp.arange(n))
        scores_BxN = scores_NxB.T
        best_B = jnp.argmax(scores_BxN, axis=1)
        processed_BxNxR = processed_NxBxR.transpose(1, 0, 2)
        best_BxR = jnp.take_along_axis(processed_BxNxR, best_B[:, None, None], axis=1)[:, 0]
        return best_BxR, jnp.max(scores_BxN, axis=1), scores_BxN

    return run

"""Device-parallel sampling over host arrays, in fixed-size batches, for the stages.

The labels stage, the online rounds and the evaluation sample N responses for
N queries held on the host. `sample_responses` pads N up to whole batches (one
compilation), runs the sampler sharded across devices, and returns host arrays;
`postprocess` truncates them as labellers and the reward model see them;
`gold_function` scores them with the gold reward on the host; `best_of_n`
keeps the best of n samples per query by the reward model (eval, expert
iteration).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import functools

from rlhf_jax.algorithms.sampling import sample
from rlhf_jax.data import tasks
from rlhf_jax.infra import parallel
from rlhf_jax.labelling.labelers import GOLDS, make_gold
from rlhf_jax.stages import reward, rollout, supervised
from rlhf_jax.stages.context import Context, stage_key


def _sampler(ctx: Context, model, greedy: bool = False) -> Callable:
    t = ctx.cfg.task
    R, S = parallel.REP, parallel.SHARD

    def fn(params, q_BxQ, m_BxQ, rng):
        out = sample(model, params, q_BxQ, m_BxQ, rng, response_length=t.response_length,
                     temperature=t.temperature, greedy=greedy, stop_at_eos=t.stop_at_eos,
                     eos_token_id=t.eos_token, pad_token_id=t.pad_token,
                     row_offset=parallel.global_row_offset(q_BxQ.shape[0]))
        return out.tokens, out.mask

    return ctx.dp.compile(fn, (R, S, S, R), (S, S))


def pad_to_batches(batch_size: int, *arrays_NxD):
    """Each array with its last row repeated up to a multiple of `batch_size` rows."""
    n = len(arrays_NxD[0])
    extra = -(-n // batch_size) * batch_size - n
    return [np.concatenate([a, np.repeat(a[-1:], extra, 0)]) for a in arrays_NxD]


def sample_responses(ctx: Context, model, params, q_NxQ, m_NxQ, rng, batch_size: int,
                     greedy: bool = False):
    """Samples for N stored (raw) queries in device-parallel batches; host arrays [N,R].

    The policy reads the queries formatted (`Context.policy_queries`). Batch i
    samples with `fold_in(rng, i)`. `greedy`: the argmax token at each step
    (temperature 0, as Stiennon's evaluation samples).
    """
    q_NxQ, m_NxQ = ctx.policy_queries(np.asarray(q_NxQ), np.asarray(m_NxQ))
    dp = ctx.dp
    fn = _sampler(ctx, model, greedy)
    params_r = dp.replicate(params)
    toks, masks = [], []
    n = len(q_NxQ)
    q, m = pad_to_batches(batch_size, q_NxQ, m_NxQ)
    for i in range(0, len(q), batch_size):
        key = jax.random.fold_in(rng, i // batch_size)
        tk, mk = fn(params_r, dp.shard(q[i:i + batch_size]), dp.shard(m[i:i + batch_size]),
                    dp.replicate(key))
        toks.append(np.asarray(dp.unshard(tk)))
        masks.append(np.asarray(dp.unshard(mk)))
    return np.concatenate(toks)[:n], np.concatenate(masks)[:n]


def postprocess(ctx: Context, responses_NxR: np.ndarray):
    """Truncated responses and their masks (what labellers and the RM see)."""
    t = ctx.cfg.task
    processed = np.asarray(tasks.postprocess_responses(
        jnp.asarray(responses_NxR), t.truncate_token, t.truncate_after, t.pad_token))
    return processed, (processed != t.pad_token).astype(np.int32)


def gold_function(ctx: Context) -> Callable | None:
    """`gold(query, query_mask, processed) -> [B]` on the host, or None without a gold reward."""
    if ctx.cfg.labels.gold not in GOLDS:
        return None
    judge = make_gold(ctx.cfg.labels.gold,
                      ungrammatical_penalty=ctx.cfg.labels.ungrammatical_penalty)
    pad = ctx.cfg.task.pad_token

    def gold(q_BxQ, m_BxQ, processed_BxR):
        texts = [ctx.decode(r[r != pad]) for r in np.asarray(processed_BxR)]
        if getattr(judge, "reads_query", False):  # summary judges read the story too
            return judge.score_texts([ctx.decode(q[mq > 0]) for q, mq in
                                      zip(np.asarray(q_BxQ), np.asarray(m_BxQ))], texts)
        return judge(texts)

    return gold


# Fold-in offset of the gold normalisation's samples in the ppo stage's key.
_GOLD_NORM_STREAM = 1 << 21


def ppo_gold_function(ctx: Context, policy_model, policy_params) -> Callable | None:
    """`gold_function(ctx)` for the PPO stage. With `ppo.reward_source="gold"` and
    `ppo.gold_normalize`, it carries `reward_gain_bias`: the gain and bias that
    give the gold N(0, 1) moments on the initial policy's samples, found as the
    reward model's are (`reward.reference_normalizer`: `reward.normalize_samples`
    untruncated samples of `policy_params` on training queries, population
    moments). PPO's reward is then `gain * gold + bias`, so a KL coefficient
    weighs the same against it as against a normalised RM; the logged
    `objective/gold_score` stays the raw gold."""
    gold = gold_function(ctx)
    cfg = ctx.cfg
    if gold is None or cfg.ppo.reward_source != "gold" or not cfg.ppo.gold_normalize:
        return gold
    sampler = reward.reference_normalizer(ctx, policy_model, policy_params)
    out = sampler(reward.normalization_sample_count(cfg.reward),
                  jax.random.fold_in(stage_key(cfg, "ppo"), _GOLD_NORM_STREAM))
    g = np.asarray(gold(out.query_MxQ, out.query_mask_MxQ, out.response_MxR), np.float64)
    std = float(g.std())
    if not std > 0:
        raise ValueError(f"ppo.gold_normalize: the gold of {len(g)} initial-policy samples has "
                         "no spread; it cannot be normalised")
    gain = 1.0 / std
    gold.reward_gain_bias = (gain, -gain * float(g.mean()))
    print(f"[ppo] gold reward normalised on {len(g)} initial-policy samples: mean "
          f"{g.mean():.4f}, std {std:.4f} -> gain {gain:.4f}, bias {-gain * g.mean():.4f}",
          flush=True)
    return gold


def gold_reward(gold_fn: Callable, gold_B: np.ndarray) -> np.ndarray:
    """PPO's reward from the gold scores: `gain * gold + bias` when `gold_fn`
    carries `reward_gain_bias` (`ppo_gold_function`), else the gold itself."""
    gain, bias = getattr(gold_fn, "reward_gain_bias", (1.0, 0.0))
    return (gain * np.asarray(gold_B, np.float64) + bias).astype(np.float32)


def _best_of_n_fn(rep, b, *, run):
    best, score, _ = run(rep[0], rep[1], b["q"], b["m"], rep[2], row_offset=b["row"][0])
    return {"best": best, "score": score}


def best_of_n(dp, models: rollout.PPOModels, task: rollout.TaskSpec, n: int, params, rm_params,
              q_NxQ, m_NxQ, key, batch_size: int):
    """Host `(best_NxR, score_N)`: per query, of n responses sampled from
    `models.reference` with `params`, the post-processed one the RM scores highest
    and its penalised score (`rollout.make_best_of_n`, device-parallel batches).
    Query i's candidates draw with its index in the list, whatever the batch size."""
    data = {"q": q_NxQ, "m": m_NxQ, "row": np.arange(len(q_NxQ), dtype=np.int32)}
    out = supervised.map_batches(
        dp, functools.partial(_best_of_n_fn, run=rollout.make_best_of_n(models, task, n)),
        dp.replicate((params, rm_params, key)), data, batch_size,
        cache_key=("best_of_n", models, task, n))
    return out["best"], out["score"]

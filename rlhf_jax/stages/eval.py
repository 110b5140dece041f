"""The eval stage: held-out queries, every trained policy and the best-of-N baseline.

For each policy the run produced (the initial one, PPO's `models/policy`,
DPO's `models/dpo`, `models/bon_sft`, `models/ul`) it samples one response per test query at the task
temperature and reports the mean reward-model score (with the no-truncation
penalty), the mean gold score when the task has a gold reward, and the mean
sequence KL from the initial policy, sum_t log pi(y_t) - log rho(y_t) of the
temperature-scaled distributions. Best-of-N samples N responses from the
initial policy (`rollout.make_best_of_n`), keeps the one the RM scores highest
and reports its RM and gold score; its KL is analytic, log N - (N-1)/N.
Every mean comes with its standard error over the queries (`<name>_se`:
std / sqrt(num_queries)), the noise of one evaluation.

With `eval.ppo_snapshots` it also evaluates the policy of every PPO
checkpoint the run kept (`ppo.keep_checkpoints`) before the last, as
`ppo@<update>`: points along the run's trajectory for a gold-vs-KL frontier.

With `eval.judge.enabled` a held-out mock labeller (`spans.judge_for_config`)
compares every policy's responses (and best-of-N's) with the initial policy's
and adds `judge_winrate` and `judge_score`.

Writes `eval.json`, one `eval` metrics row and the first
`eval.num_samples_logged` samples of each policy.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import config_check
from rlhf_jax.algorithms.ppo import forward_policy_value
from rlhf_jax.data import tasks
from rlhf_jax.infra import parallel
from rlhf_jax.labelling import spans
from rlhf_jax.infra.checkpoint import Checkpointer
from rlhf_jax.models import loading
from rlhf_jax.stages import reward, rollout, supervised
from rlhf_jax.stages.batched import best_of_n, gold_function, postprocess, sample_responses
from rlhf_jax.stages.context import Context, stage_key

# Fold-in offset of the best-of-N keys (policy i samples with fold_in(key, i)).
_BEST_OF_N_STREAM = 1000


def _test_queries(ctx: Context):
    e = ctx.cfg.eval
    qs = ctx.queries("test", limit=e.num_queries)
    if len(qs) < e.num_queries:
        qs = ctx.queries("test")
        rows = qs.indices(0, e.num_queries)
        qs = dataclasses.replace(qs, query_NxQ=qs.query_NxQ[rows],
                                 query_mask_NxQ=qs.query_mask_NxQ[rows])
    return qs.query_NxQ, qs.query_mask_NxQ


def _kl_fn(params, b, *, model, temperature):
    apply = rollout.lm_apply(model)
    logp, _, _ = forward_policy_value(apply, params[0], b["q"], b["m"], b["r"], b["rm"],
                                      temperature)
    ref, _, _ = forward_policy_value(apply, params[1], b["q"], b["m"], b["r"], b["rm"],
                                     temperature)
    return {"kl": jnp.sum((logp - ref) * b["rm"], axis=1)}


def _sequence_kl(ctx: Context, model, params, ref_params, q_NxQ, m_NxQ, raw_NxR, rmask_NxR):
    """[N] KL(policy || ref) of given responses: sum_t logp - ref_logp (temperature-scaled)."""
    t = ctx.cfg.task
    data = {"q": q_NxQ, "m": m_NxQ, "r": raw_NxR, "rm": rmask_NxR}
    return supervised.map_batches(
        ctx.dp, functools.partial(_kl_fn, model=model, temperature=t.temperature),
        ctx.dp.replicate((params, ref_params)), data, ctx.cfg.eval.batch_size,
        cache_key=("eval_kl", model, t.temperature))["kl"]


def _mean_se(v) -> dict:
    v = np.asarray(v, np.float64)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "se": se}


def _with_se(values: dict) -> dict:
    """{name: mean, name_se: its standard error over queries} of per-query arrays."""
    out = {}
    for k, v in values.items():
        ms = _mean_se(v)
        out[k], out[f"{k}_se"] = ms["mean"], ms["se"]
    return out


def ppo_snapshots(ctx: Context) -> dict:
    """{"ppo@<update>": policy params} of the kept PPO checkpoints at multiples of
    `ppo.checkpoint_every` before the last update (that one is `models/policy`),
    oldest first. Saves made at other updates (a preemption, an online-label
    round) are left out, so every seed of a setting has the same snapshots."""
    path = ctx.path("checkpoints", "ppo")
    if not os.path.isdir(path):
        return {}
    ckpt = Checkpointer(path, max_to_keep=ctx.cfg.ppo.keep_checkpoints)
    try:
        every = ctx.cfg.ppo.checkpoint_every
        last = config_check.num_updates(ctx.cfg.ppo)
        out = {}
        for step in [s for s in ckpt.all_steps() if s % every == 0 and s < last]:
            state, _ = ckpt.read(step)
            out[f"ppo@{step}"] = {"transformer": state["params"]["policy"]["transformer"]}
        return out
    finally:
        ckpt.close()


def evaluate(ctx: Context) -> dict:
    """Held-out comparison: initial policy, PPO (or RLOO / REINFORCE), DPO, best-of-N SFT,
    likelihood/unlikelihood, best-of-N; RM score, gold score, KL, and with
    `eval.judge` the held-out labeller's win rate against the initial policy."""
    cfg = ctx.cfg
    e, t = cfg.eval, cfg.task
    q, m = _test_queries(ctx)
    ref_model, ref_params = ctx.initial_policy()
    rm = ctx.reward_model()
    gold = gold_function(ctx)
    key = stage_key(cfg, "eval")
    rm_placed = None if rm is None else ctx.dp.replicate(rm[1])  # once, on the config's mesh
    policy_q, policy_m = ctx.policy_queries(q, m)  # the RM reads q, m raw

    def score_all(processed, pmask):
        out = {}
        if rm is not None:
            s = reward.score(rm[0], rm_placed, q, m, processed, pmask,
                             reward_at=cfg.reward.reward_at, eos_token=t.eos_token,
                             batch_size=e.batch_size, dp=ctx.dp, placed=True)
            out["score"] = np.asarray(tasks.penalize_scores(
                jnp.asarray(s), jnp.asarray(processed), t.truncate_token, t.truncate_after,
                t.penalty_reward_value) if t.penalty_reward_value is not None else s)
        if gold is not None:
            out["gold_score"] = np.asarray(gold(q, m, processed))
        return out

    results, samples, judged = {}, [], {}
    policies = {"initial": ref_params}
    for name, label in (("policy", "ppo"), ("dpo", "dpo"), ("bon_sft", "bon_sft"), ("ul", "ul")):
        if os.path.exists(ctx.path("models", name, "model.safetensors")):
            policies[label] = loading.load_lm(cfg, ctx.path("models", name))[1]
    if e.ppo_snapshots:
        policies.update(ppo_snapshots(ctx))
    for i, (name, params) in enumerate(policies.items()):
        raw, rmask = sample_responses(ctx, ref_model, params, q, m, jax.random.fold_in(key, i),
                                      e.batch_size)
        processed, pmask = postprocess(ctx, raw)
        judged[name] = (processed, pmask)
        scores = score_all(processed, pmask)
        kl = _sequence_kl(ctx, ref_model, params, ref_params, policy_q, policy_m, raw, rmask)
        results[name] = _with_se({**scores, "kl": kl})
        for j in range(min(e.num_samples_logged, len(q))):
            samples.append({"policy": name, "query": ctx.decode(q[j][m[j] > 0]),
                            "response": ctx.decode(processed[j][pmask[j] > 0]),
                            **{k: float(v[j]) for k, v in scores.items()}, "kl": float(kl[j])})
    if rm is not None:
        models = rollout.PPOModels(policy=ref_model, reference=ref_model, reward=rm[0])
        for n in e.best_of_n:
            best, score = best_of_n(ctx.dp, models, ctx.task_spec(), n, ref_params, rm[1], q, m,
                                    jax.random.fold_in(key, _BEST_OF_N_STREAM + n), e.batch_size)
            judged[f"best_of_{n}"] = (best, (best != t.pad_token).astype(np.int32))
            res = {**_with_se({"score": score}), "kl": rollout.best_of_n_kl(n)}
            if gold is not None:
                res.update(_with_se({"gold_score": gold(q, m, best)}))
            results[f"best_of_{n}"] = res
    if e.judge.enabled:  # a held-out labeller: each policy's responses vs the initial's

        for name, r in spans.judge_winrates(spans.judge_for_config(cfg), ctx.decode, q, m,
                                            judged["initial"], judged, t.pad_token).items():
            results[name].update(r)
    flat = {f"eval/{name}/{k}": v for name, r in results.items() for k, v in r.items()}
    ctx.writer.write(0, "eval", flat)
    ctx.writer.write_samples(0, "eval", samples)
    if parallel.process_is_main():
        with open(ctx.path("eval.json"), "w") as f:
            json.dump(results, f, indent=2)
    for name, r in results.items():
        print(f"eval | {name:>12} | " + " | ".join(f"{k} {v:.3f}" for k, v in r.items()
                                                   if not k.endswith("_se")),
              flush=True)
    return results

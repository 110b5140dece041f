"""The PPO stage: rollout -> score -> update, repeated, resumable, logged.

One update (docs/implementation_details.md item 24): a rollout of `ppo.batch_size` episodes,
then `ppo.noptepochs` passes of `ppo.nminibatches` minibatches (scans inside
one compiled step), then the KL controller. The lr anneals linearly to zero
over updates, constant within one (item 25, LHP `lrnow`).

Config fields read (groups `ppo`, `kl`, `task`, `parallel`, `seed`):
`ppo.batch_size`, `ppo.nminibatches`, `ppo.noptepochs`, `ppo.lr`, `ppo.adam`
("tf" | "torch"), `ppo.adam_eps`, `ppo.cliprange`, `ppo.cliprange_value`,
`ppo.vf_coef`, `ppo.gamma`, `ppo.lam`, `ppo.whiten_rewards`, `ppo.algo`,
`ppo.rloo_k`, `ppo.grpo_variant`, `ppo.kl_in`, `ppo.baseline_decay`
(`rlhf_jax.algorithms.pg`),
`ppo.whiten_scope` ("global" | "minibatch"), `ppo.total_episodes`,
`ppo.reward_source` ("rm" | "gold"), `ppo.log_every`, `ppo.checkpoint_every`,
`ppo.num_logged_samples`; `kl.coef`, `kl.adaptive`, `kl.target`,
`kl.horizon`; the `task` fields of `rollout.TaskSpec`; `seed`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax import config_check
from rlhf_jax.algorithms import optim, pg
from rlhf_jax.algorithms.kl import init_kl_state
from rlhf_jax.algorithms.ppo import PPOHParams, PPOState, make_update_step
from rlhf_jax.infra import metrics as metrics_lib, parallel
from rlhf_jax.infra.checkpoint import Checkpointer, PreemptionHandler, mark_finished
from rlhf_jax.models.heads import PolicyWithValueHead, ValueModel, value_params_from_reward
from rlhf_jax.stages.context import Context, stage_key
from rlhf_jax.stages.batched import gold_reward
from rlhf_jax.stages.rollout import PPOModels, TaskSpec, TokenRewards, make_rollout, penalize
from rlhf_jax.stages.run import raise_if_preempted

STAGE = "ppo"
LOG_KEYS = (
    ("score", "objective/score"),
    ("gold", "objective/gold_score"),
    ("kl", "objective/kl"),
    ("kl_coef", "objective/kl_coef"),
    ("approxkl", "ppo/policy/approxkl"),
    ("fps", "elapsed/fps"),
)


class QuerySource(Protocol):
    """Deterministic query batches: `batch(i, n)` depends only on (i, n) (exact resume)."""

    def batch(self, index: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]: ...


def hparams(cfg) -> PPOHParams:
    p, kl = cfg.ppo, cfg.kl
    return PPOHParams(
        nminibatches=p.nminibatches, noptepochs=p.noptepochs, cliprange=p.cliprange,
        cliprange_value=p.cliprange_value, vf_coef=p.vf_coef, gamma=p.gamma, lam=p.lam,
        whiten_rewards=p.whiten_rewards, whiten_scope=p.whiten_scope,
        temperature=cfg.task.temperature, kl_adaptive=kl.adaptive, kl_target=kl.target,
        kl_horizon=kl.horizon, batch_size=p.batch_size,
        loss_norm=pg.loss_norm(p.algo, p.get("grpo_variant", "grpo")),
        kl_in_loss=p.get("kl_in", "reward") == "loss",
    )


def lr_schedule(ppo_cfg, lr=None):
    """The lr of each optimizer step (item 25): linear to zero over updates, constant
    within one; `lr` overrides `ppo_cfg.lr` and may be traced (a vmapped member's).
    Logging reads the lr of update u as `lr_schedule(cfg)(u * steps_per_update(cfg))`."""
    return optim.per_update_linear(ppo_cfg.lr if lr is None else lr,
                                   config_check.num_updates(ppo_cfg), steps_per_update(ppo_cfg))


def steps_per_update(ppo_cfg) -> int:
    """Optimizer steps in one PPO update: every minibatch of every epoch."""
    return ppo_cfg.noptepochs * ppo_cfg.nminibatches


def update_lr(ppo_cfg, update: int) -> float:
    """The lr update `update` (0-based) applied, as the optimizer computes it."""
    return float(lr_schedule(ppo_cfg)(update * steps_per_update(ppo_cfg)))


def make_optimizer(ppo_cfg, lr=None) -> optax.GradientTransformation:
    """Adam (TF-style by default, item 26) on `lr_schedule`."""
    return optim.adam_optimizer(lr_schedule(ppo_cfg, lr), ppo_cfg.adam, eps=ppo_cfg.adam_eps)


def init_state(params, optimizer, cfg) -> PPOState:
    fields = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                  kl=init_kl_state(cfg.kl.coef), rng=jax.random.key(cfg.seed))
    if cfg.ppo.algo == "ppo":
        return PPOState(**fields)
    return pg.PGState(**fields, baseline=jnp.zeros((), jnp.float32))


def keep_checkpoints(cfg) -> int:
    """`ppo.keep_checkpoints`; 2 for a hand-built config without the field."""
    return cfg.ppo.get("keep_checkpoints", 2)


def query_batch(cfg, queries: QuerySource, update: int):
    """The queries of one update: `ppo.batch_size` of them, or for RLOO and GRPO
    `batch_size / rloo_k` queries each repeated `rloo_k` times."""
    if cfg.ppo.algo in ("rloo", "grpo"):
        k = cfg.ppo.rloo_k
        return pg.repeat_queries(*queries.batch(update, cfg.ppo.batch_size // k), k)
    return queries.batch(update, cfg.ppo.batch_size)


# Fold-in constant of the rollouts' keys: update u samples with
# `fold_in(fold_in(state.rng, _ROLLOUT_STREAM), u)`.
_ROLLOUT_STREAM = 1 << 20


def rollout_key(rng: jax.Array, step) -> jax.Array:
    """The sampling key of the rollout before update `step` (a run's or a member's)."""
    return jax.random.fold_in(jax.random.fold_in(rng, _ROLLOUT_STREAM), step)


def gold_scores(task: TaskSpec, gold_fn: Callable, query_BxQ, query_mask_BxQ, processed_BxR,
                response_BxR=None):
    """`(gold_B, scores_B)` on the host: each episode's gold score, and the penalised
    gold to train on when `response_BxR` (the raw responses) is given, PPO on the
    gold reward (`ppo.reward_source='gold'`); else `scores_B` is None."""
    gold_B = np.asarray(gold_fn(query_BxQ, query_mask_BxQ, processed_BxR), np.float32)
    if response_BxR is None:
        return gold_B, None
    reward_B = gold_reward(gold_fn, gold_B)  # normalised as an RM's with `ppo.gold_normalize`
    return gold_B, np.asarray(penalize(jnp.asarray(reward_B), jnp.asarray(response_BxR), task))


def update_extras(ppo_cfg, update: int, seconds: float, episodes: int, gold_B=None) -> dict:
    """The host-side statistics of update `update` (1-based) that took `seconds` for
    `episodes` episodes (every member's): speed, episodes so far, its lr, gold."""
    out = {"elapsed/fps": episodes / max(seconds, 1e-9),
           "ppo/episodes": update * ppo_cfg.batch_size,
           "ppo/lr": update_lr(ppo_cfg, update - 1)}
    if gold_B is not None:
        out["objective/gold_score"] = float(np.mean(gold_B))
    return out


def write_row(writer, stage: str, label: str, step: int, total: int, row: dict, history: list,
              eta_s: float | None) -> None:
    """One PPO log row of a run (or a member, `label` naming it): NaN check, its
    history, its metrics file and one console line (process 0)."""
    metrics_lib.check_finite(row, step, label)
    history.append({"step": step, **row})
    if writer is not None:
        writer.write(step, stage, row)
    if parallel.process_is_main():
        print(metrics_lib.format_log_line(step, total, row, LOG_KEYS, stage=label, eta_s=eta_s),
              flush=True)


class PPOTrainer:
    """Compiled rollout and update for one config; the loop is `train`."""

    def __init__(self, cfg, models: PPOModels, dp: parallel.DataParallel, *,
                 task: TaskSpec | None = None):
        """`task`: the rollout's task fields, with the query prefix / suffix as token
        ids (`TaskSpec.from_config`); default from `cfg.task`, which then must not
        set a prefix or suffix."""
        self.cfg, self.models, self.dp = cfg, models, dp
        self.task = TaskSpec.from_config(cfg.task) if task is None else task
        self.use_rm = cfg.ppo.reward_source == "rm"
        if self.use_rm and models.reward is None:
            raise ValueError("ppo.reward_source='rm' but no reward model was given")
        self.optimizer = make_optimizer(cfg.ppo)
        R, S = parallel.REP, parallel.SHARD
        token = TokenRewards.from_config(cfg.ppo)
        if token is not None and (models.reward is None or not models.reward.token_head):
            raise ValueError("ppo.token_reward_coef > 0 but the reward model has no token head "
                             "(reward.token_head)")
        self.rollout_fn = dp.compile(make_rollout(models, self.task, use_rm=self.use_rm,
                                                  token_rewards=token),
                                     (R, R, R, S, S, R), (S, S))
        advantages = None if cfg.ppo.algo == "ppo" else pg.make_advantages(
            cfg.ppo.algo, k=cfg.ppo.rloo_k, decay=cfg.ppo.baseline_decay,
            axis_name=dp.batch_axes, grpo_variant=cfg.ppo.get("grpo_variant", "grpo"))
        update = make_update_step(models.apply_policy_value, self.optimizer, hparams(cfg),
                                  dp.batch_axes, advantages=advantages)
        self.update_fn = dp.compile(update, (R, S), (R, R), donate_argnums=(0,))

    def rollout(self, state, ref_params, rm_params, query_BxQ, query_mask_BxQ,
                gold_fn: Callable | None):
        """A scored rollout (device) plus host copies of what logging needs."""
        dp = self.dp
        # Only the key and step come to the host, not the whole state.
        key = rollout_key(dp.unreplicate(state.rng), int(dp.unreplicate(state.step)))
        ro, processed = self.rollout_fn(state.params, ref_params, rm_params,
                                        dp.shard(query_BxQ), dp.shard(query_mask_BxQ),
                                        dp.replicate(key))
        gold_B = None
        if gold_fn is not None or not self.use_rm:
            raw = None if self.use_rm else np.asarray(dp.unshard(ro.response_BxR))
            gold_B, scores = gold_scores(self.task, gold_fn, query_BxQ, query_mask_BxQ,
                                         np.asarray(dp.unshard(processed)), raw)
            if scores is not None:
                ro = ro.replace(scores_B=dp.shard(scores))
        return ro, processed, gold_B

    def train(self, *, params, ref_params, rm_params, queries: QuerySource, workdir: str | None,
              writer: metrics_lib.MetricsWriter | None = None, gold_fn: Callable | None = None,
              decode: Callable | None = None, stop_after: int | None = None, stage: str = STAGE,
              online=None):
        """Runs (or resumes) the PPO stage; returns `(params, summary)`.

        `gold_fn(query_BxQ, query_mask_BxQ, processed_BxR) -> scores_B` (host)
        gives `objective/gold_score`, and the reward itself when
        `ppo.reward_source="gold"`. `decode(ids) -> str` renders samples.
        `stop_after` ends the loop after that many updates in this call (tests,
        simulating a kill); a relaunch resumes from the last checkpoint.
        `online` (an `rlhf_jax.stages.online.OnlineCollector`) collects labels and
        retrains the RM before the updates it is `due` at, checkpointing first;
        PPO then continues against the new RM (Ziegler 2.3).

        About 100 lines: the order of rollout, update, logging, checkpoint and
        stop within one update is what makes a resume exact; it is to merge with
        `members.MemberPPOTrainer.train` (docs/architecture.md, "One loop per
        trainer").
        """
        cfg, dp = self.cfg, self.dp
        n = config_check.num_updates(cfg.ppo)
        # On a mesh the params are placed split along fsdp and the optimizer state
        # created split: no host or device holds a full copy of it.
        state = dp.init(lambda p: init_state(p, self.optimizer, cfg), params)
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints", stage),
                            max_to_keep=keep_checkpoints(cfg)) if workdir else None
        start = 0
        if ckpt is not None:
            restored = ckpt.restore(state)
            if restored is not None:
                start, state, meta = restored
                if meta.get("finished"):
                    logging.info("%s: finished at update %d; nothing to do", stage, start)
                    ckpt.close()
                    return parallel.host_complete(state.params), {
                        "updates": start, "resumed": True, "history": meta.get("last", [])}
                logging.info("%s: resuming at update %d of %d", stage, start, n)
                if writer is not None:
                    writer.resume(stage, start)
        state = dp.replicate(state, reuse=True)  # fresh from dp.init or the restore
        if online is not None:
            rm_params = online.start(start)  # the newest online round's RM, on resume
        ref_r, rm_r = dp.replicate(ref_params), dp.replicate(rm_params if rm_params else {})
        t_start = time.monotonic()
        deferred = metrics_lib.DeferredMetrics()
        t_last = time.perf_counter()
        history = []
        update = start

        def log(step_done, host_stats):
            row = {k: v for k, v in host_stats.items() if np.ndim(v) == 0}
            _, eta_s = metrics_lib.rate_and_eta(update, n, start, time.monotonic() - t_start)
            write_row(writer, stage, stage, step_done, n, row, history, eta_s)

        with PreemptionHandler() as preempt:
            while update < n:
                if online is not None and online.due(update):
                    if ckpt is not None:
                        ckpt.wait()  # the checkpoint at `update` is the round's resume point
                    new_rm = online.collect(update, dp.unreplicate(state).params,
                                            preempt.should_stop)
                    if new_rm is None:  # stopped (SIGTERM) mid-round; a relaunch redoes it
                        break
                    rm_r = dp.replicate(new_rm)
                    t_last = time.perf_counter()
                q_BxQ, qm_BxQ = query_batch(cfg, queries, update)
                ro, processed, gold_B = self.rollout(state, ref_r, rm_r, q_BxQ, qm_BxQ, gold_fn)
                state, stats = self.update_fn(state, ro)
                update += 1
                now = time.perf_counter()
                extra = update_extras(cfg.ppo, update, now - t_last, cfg.ppo.batch_size, gold_B)
                t_last = now
                is_log = update % cfg.ppo.log_every == 0 or update == n
                if is_log and writer is not None and decode is not None:
                    # The beta this rollout was penalised with (before this update's change).
                    kl_coef = float(np.asarray(dp.unreplicate(stats)["objective/kl_coef"]))
                    self._log_samples(writer, update, ro, processed, gold_B, decode, stage, kl_coef)
                ready = deferred.push(update, (dp.unreplicate(stats), extra, is_log))
                if ready is not None:
                    step_done, (host_stats, host_extra, was_log) = ready
                    if was_log:
                        log(step_done, {**host_stats, **host_extra})
                stopping = preempt.should_stop(update) or (
                    stop_after is not None and update - start >= stop_after)
                if ckpt is not None and (update % cfg.ppo.checkpoint_every == 0 or update == n
                                         or stopping or (online is not None
                                                         and online.due(update))):
                    ready = deferred.flush()
                    if ready is not None and ready[1][2]:
                        log(ready[0], {**ready[1][0], **ready[1][1]})
                    meta = {"step": update}
                    if update == n:  # the last row too: the stage's summary after a resume
                        meta = mark_finished({**meta, "last": history[-1:]})
                    ckpt.save(update, dp.unreplicate(state), meta, force=True)
                if stopping:
                    break
            ready = deferred.flush()
            if ready is not None and ready[1][2]:
                log(ready[0], {**ready[1][0], **ready[1][1]})
        if ckpt is not None:
            ckpt.wait()
            ckpt.close()
        final = dp.unreplicate(state)
        # Multi-host FSDP: full host copies for export (a collective on every process).
        return parallel.host_complete(final.params), {
            "updates": update, "history": history, "kl_state": final.kl,
            "preempted": update < n}

    def _log_samples(self, writer, update, ro, processed, gold_B, decode, stage, kl_coef):
        host = jax.tree.map(lambda x: np.asarray(self.dp.unshard(x)), ro)
        log_samples(self.cfg, self.task, writer, update, host, np.asarray(self.dp.unshard(processed)),
                    gold_B, decode, stage, kl_coef)


def log_samples(cfg, task: TaskSpec, writer, update, ro, processed, gold_B, decode, stage,
                kl_coef, label: str | None = None):
    """Writes the first `ppo.num_logged_samples` episodes of a host rollout; prints one."""
    k = min(cfg.ppo.num_logged_samples, cfg.ppo.batch_size)
    q, qm, resp = ro.query_BxQ[:k], ro.query_mask_BxQ[:k], processed[:k]
    scores, logp, ref = ro.scores_B[:k], ro.logprobs_BxR[:k], ro.ref_logprobs_BxR[:k]
    mask = ro.response_mask_BxR[:k]
    rows = []
    for i in range(k):
        # Over the response's own tokens: after a stop at EOS the rest is padding.
        kl = float(np.sum((logp[i] - ref[i]) * mask[i]))
        row = {"query": decode(q[i][qm[i] > 0]),
               "response": decode(resp[i][resp[i] != task.pad_token]),
               "score": float(scores[i]), "kl": kl, "total": float(scores[i]) - kl_coef * kl}
        if gold_B is not None:
            row["gold_score"] = float(gold_B[i])
        rows.append(row)
    writer.write_samples(update, stage, rows)
    r = rows[0]
    if parallel.process_is_main():
        print(f"  sample{f' [{label}]' if label else ''} | {r['query']!r} -> {r['response']!r} "
              f"| score {r['score']:.3f} | kl {r['kl']:.2f} | total {r['total']:.3f}"
              + (f" | gold {r['gold_score']:.3f}" if "gold_score" in r else ""), flush=True)


# --------------------------------------------------------------------------
# The PPO stage in a workdir (`pipeline.stage_ppo`, `rlhf_jax.members`).


def ppo_models_and_params(ctx: Context):
    """`(models, params, ref_params, rm_params)` for the PPO stage from the workdir: the
    initial policy (with a value head or a separate value model, by `ppo.value_model`;
    none for RLOO / REINFORCE), its reference copy and the reward model."""
    cfg = ctx.cfg
    ref_model, ref_params = ctx.initial_policy()
    rm_model, rm_params = ctx.reward_model() or (None, None)
    if cfg.ppo.reward_source == "rm" and rm_model is None:
        raise ValueError("ppo.reward_source='rm' needs the reward stage (models/reward is missing)")
    if cfg.ppo.algo != "ppo":  # RLOO / REINFORCE: the plain LM, no value model
        params = {"policy": ref_params}
        models = PPOModels(policy=ref_model, reference=ref_model, reward=rm_model, no_value=True)
    elif cfg.ppo.value_model == "shared":
        policy = PolicyWithValueHead(ref_model.config)
        init = jax.jit(policy.init)(stage_key(cfg, "ppo"), jnp.zeros((1, 8), jnp.int32))["params"]
        params = {"policy": {"transformer": ref_params["transformer"],
                             "value_head": init["value_head"]}}
        models = PPOModels(policy=policy, reference=ref_model, reward=rm_model)
    else:
        if rm_model is None:
            raise ValueError("ppo.value_model='separate' is initialised from the reward model")
        value = ValueModel(rm_model.config, head=rm_model.head)
        params = {"policy": ref_params, "value": value_params_from_reward(rm_params)}
        models = PPOModels(policy=ref_model, reference=ref_model, value=value, reward=rm_model)
    return models, params, ref_params, rm_params


def finish_ppo(ctx: Context, models, params, summary: dict) -> dict:
    """Exports the trained policy (`models/policy`); the stage summary (its last log row)."""
    raise_if_preempted(summary, "ppo")
    ctx.save_lm("policy", models.reference, {"transformer": params["policy"]["transformer"]})
    hist = summary.get("history") or []  # a resume of a finished PPO keeps only the last
    return {"updates": summary["updates"], **({k: v for k, v in hist[-1].items()} if hist else {})}

"""The PPO stage: rollout -> score -> update, repeated, resumable, logged.

One update (docs/implementation_details.md item 24): a rollout of `ppo.batch_size` episodes,
then `ppo.noptepochs` passes of `ppo.nminibatches` minibatches (scans inside
one compiled step), then the KL controller. The lr anneals linearly to zero
over updates, constant within one (item 25, LHP `lrnow`).

Config fields read (groups `ppo`, `kl`, `task`, `parallel`, `seed`):
`ppo.batch_size`, `ppo.nminibatches`, `ppo.noptepochs`, `ppo.lr`, `ppo.adam`
("tf" | "torch"), `ppo.adam_eps`, `ppo.cliprange`, `ppo.cliprange_value`,
`ppo.vf_coef`, `ppo.gamma`, `ppo.lam`, `ppo.whiten_rewards`, `ppo.algo`,
`ppo.rloo_k`, `ppo.baseline_decay` (`rlhf_jax.algorithms.pg`),
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
from rlhf_jax.stages.rollout import PPOModels, TaskSpec, TokenRewards, make_rollout, penalize

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
    )


def make_optimizer(ppo_cfg, lr=None) -> optax.GradientTransformation:
    """Adam (TF-style by default, item 26), lr linear to zero over updates (item 25).

    `lr` overrides `ppo_cfg.lr`; it may be traced (one per vmapped member).
    """
    steps_per_update = ppo_cfg.noptepochs * ppo_cfg.nminibatches
    n = config_check.num_updates(ppo_cfg)
    lr = ppo_cfg.lr if lr is None else lr

    def schedule(count):
        update = count // steps_per_update
        return lr * (1.0 - update / n)

    if ppo_cfg.adam == "tf":
        return optim.tf_adam(schedule, eps=ppo_cfg.adam_eps)
    return optax.adam(schedule, eps=ppo_cfg.adam_eps)


def init_state(params, optimizer, cfg) -> PPOState:
    fields = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                  kl=init_kl_state(cfg.kl.coef), rng=jax.random.key(cfg.seed))
    if cfg.ppo.algo == "ppo":
        return PPOState(**fields)
    return pg.PGState(**fields, baseline=jnp.zeros((), jnp.float32))


def query_batch(cfg, queries: QuerySource, update: int):
    """The queries of one update: `ppo.batch_size` of them, or for RLOO
    `batch_size / rloo_k` queries each repeated `rloo_k` times."""
    if cfg.ppo.algo == "rloo":
        k = cfg.ppo.rloo_k
        return pg.repeat_queries(*queries.batch(update, cfg.ppo.batch_size // k), k)
    return queries.batch(update, cfg.ppo.batch_size)


class PPOTrainer:
    """Compiled rollout and update for one config; the loop is `train`."""

    def __init__(self, cfg, models: PPOModels, dp: parallel.DataParallel, *,
                 task: TaskSpec | None = None):
        """`task`: the rollout's task fields, with the query prefix / suffix as token
        ids (`TaskSpec.from_config`); default from `cfg.task`, which then must not
        set a prefix or suffix."""
        config_check.check_ppo(cfg.ppo, dp.num_devices)
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
            axis_name=dp.batch_axes)
        update = make_update_step(models.apply_policy_value, self.optimizer, hparams(cfg),
                                  dp.batch_axes, advantages=advantages)
        self.update_fn = dp.compile(update, (R, S), (R, R), donate_argnums=(0,))

    def rollout(self, state, ref_params, rm_params, query_BxQ, query_mask_BxQ,
                gold_fn: Callable | None):
        """A scored rollout (device) plus host copies of what logging needs."""
        dp = self.dp
        # Only the key and step come to the host, not the whole state.
        key = jax.random.fold_in(jax.random.fold_in(dp.unreplicate(state.rng), 1 << 20),
                                 int(dp.unreplicate(state.step)))
        ro, processed = self.rollout_fn(state.params, ref_params, rm_params,
                                        dp.shard(query_BxQ), dp.shard(query_mask_BxQ),
                                        dp.replicate(key))
        gold_B = None
        if gold_fn is not None or not self.use_rm:
            processed_h = np.asarray(dp.unshard(processed))
            gold_B = np.asarray(gold_fn(query_BxQ, query_mask_BxQ, processed_h), np.float32)
            if not self.use_rm:
                raw = np.asarray(dp.unshard(ro.response_BxR))
                scores = np.asarray(penalize(jnp.asarray(gold_B), jnp.asarray(raw), self.task))
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
        """
        cfg, dp = self.cfg, self.dp
        n = config_check.num_updates(cfg.ppo)
        # On a mesh the params are placed split along fsdp and the optimizer state
        # created split: no host or device holds a full copy of it.
        state = dp.init(lambda p: init_state(p, self.optimizer, cfg), params)
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints", stage)) if workdir else None
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
            check = {k: v for k, v in host_stats.items() if np.ndim(v) == 0}
            metrics_lib.check_finite(check, step_done, stage)
            history.append({"step": step_done, **check})
            if writer is not None:
                writer.write(step_done, stage, check)
            if parallel.process_is_main():
                _, eta_s = metrics_lib.rate_and_eta(update, n, start, time.monotonic() - t_start)
                print(metrics_lib.format_log_line(step_done, n, check, LOG_KEYS, stage=stage,
                                                  eta_s=eta_s), flush=True)

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
                extra = {"elapsed/fps": cfg.ppo.batch_size / max(now - t_last, 1e-9),
                         "ppo/episodes": update * cfg.ppo.batch_size,
                         "ppo/lr": cfg.ppo.lr * (1.0 - (update - 1) / n)}
                t_last = now
                if gold_B is not None:
                    extra["objective/gold_score"] = float(np.mean(gold_B))
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

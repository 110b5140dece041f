"""The PPO stage: rollout -> score -> update, repeated, resumable, logged.

One update (docs/implementation_details.md item 24): a rollout of `ppo.batch_size` episodes,
then `ppo.noptepochs` passes of `ppo.nminibatches` minibatches (scans inside
one compiled step), then the KL controller. The lr anneals linearly to zero
over updates, constant within one (item 25, LHP `lrnow`). One loop trains a
group of runs over a member axis (`PPOTrainer.train_members`, sweeps via
`rlhf_jax.members`); a run is a group of one (`PPOTrainer.train`).

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

import dataclasses
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
from rlhf_jax.infra import fsdp, metrics as metrics_lib, parallel
from rlhf_jax.infra.checkpoint import Checkpointer, PreemptionHandler, mark_finished
from rlhf_jax.models.heads import PolicyWithValueHead, ValueModel, value_params_from_reward
from rlhf_jax.stages.context import Context, stage_key
from rlhf_jax.stages.batched import gold_reward
from rlhf_jax.stages.rollout import PPOModels, TaskSpec, TokenRewards, make_rollout, penalize
from rlhf_jax.stages.run import raise_if_preempted
from rlhf_jax.stages.supervised import over_members

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


# PPOHParams field of each config field a group traces per member (`ppo.lr` goes
# to the optimizer); a group of one reads them all as constants, as a run does.
TRACED_HPARAMS = {"ppo.cliprange": "cliprange", "ppo.cliprange_value": "cliprange_value",
                  "ppo.vf_coef": "vf_coef", "ppo.gamma": "gamma", "ppo.lam": "lam",
                  "kl.target": "kl_target", "kl.horizon": "kl_horizon"}


def stack_members(trees):
    """The members' trees, stacked along a new leading member axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree, i: int):
    """Member `i`'s slice of a tree with a leading member axis."""
    return jax.tree.map(lambda x: x[i], tree)


@dataclasses.dataclass
class Member:
    """One run of a group: what `PPOTrainer.train` takes, per run (`train_members`)."""

    name: str
    cfg: object
    params: dict
    ref_params: dict
    rm_params: dict | None
    queries: QuerySource
    workdir: str | None
    writer: metrics_lib.MetricsWriter | None = None
    gold_fn: Callable | None = None
    decode: Callable | None = None


class PPOTrainer:
    """Compiled rollout and update for a group of runs (one config, or several that
    differ only in `TRACED_HPARAMS`, `ppo.lr`, `kl.coef` and `seed`); the loop is
    `train_members`, and `train` a group of one.

    Layout: replicated values (params, states, keys, hyperparameters) carry the
    member axis first; batch-sharded values (queries, rollouts) carry it second,
    `[B, M, ...]`, so data parallelism still splits the batch. A group of one
    drops the axis around one call instead of a `jax.vmap` and reads every
    hyperparameter as a constant: the program a run always compiled
    (`supervised.over_members`).
    """

    def __init__(self, cfgs, models: PPOModels, dp: parallel.DataParallel, *,
                 task: TaskSpec | None = None):
        """`cfgs`: one config (a run) or a list (the members). `task`: the rollout's
        task fields, with the query prefix / suffix as token ids
        (`TaskSpec.from_config`); default from `cfg.task`, which then must not
        set a prefix or suffix."""
        self.cfgs = list(cfgs) if isinstance(cfgs, (list, tuple)) else [cfgs]
        cfg, m = self.cfgs[0], len(self.cfgs)
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
        rollout = over_members(make_rollout(models, self.task, use_rm=self.use_rm,
                                            token_rewards=token), (0, 0, 0, 1, 1, 0), m, out_axes=1)
        self.rollout_fn = dp.compile(rollout, (R, R, R, S, S, R), (S, S))
        # Each member's rollout key, computed on the device: reading the state's
        # key and step on the host would wait for the previous update.
        self.keys_fn = dp.compile(over_members(rollout_key, (0, 0), m), (R, R), R)
        self.hparams = None if m == 1 else {
            f: jnp.asarray([c[f.split(".")[0]][f.split(".")[1]] for c in self.cfgs], jnp.float32)
            for f in ("ppo.lr", *TRACED_HPARAMS)}
        base = hparams(cfg)
        advantages = None if cfg.ppo.algo == "ppo" else pg.make_advantages(
            cfg.ppo.algo, k=cfg.ppo.rloo_k, decay=cfg.ppo.baseline_decay,
            axis_name=dp.batch_axes, grpo_variant=cfg.ppo.get("grpo_variant", "grpo"))

        one = make_update_step(models.apply_policy_value, self.optimizer, base, dp.batch_axes,
                               advantages=advantages) if m == 1 else None

        def update(state, ro, hp):
            if hp is None:  # a group of one: its config's constants
                return one(state, ro)
            member_hp = dataclasses.replace(
                base, **{name: hp[f] for f, name in TRACED_HPARAMS.items()})
            return make_update_step(models.apply_policy_value,
                                    make_optimizer(cfg.ppo, lr=hp["ppo.lr"]), member_hp,
                                    dp.batch_axes, advantages=advantages)(state, ro)

        step = over_members(update, (0, 1, 0), m)

        def update_members(state, ro, hp):
            # FSDP boxes count the member axis outside the vmap, not inside it.
            state, stats = step(fsdp.member_view(state, inside=True), ro, hp)
            return fsdp.member_view(state, inside=False), stats

        self.update_fn = dp.compile(update_members, (R, S, R), (R, R), donate_argnums=(0,))

    def rollout(self, state, ref_params, rm_params, query_BxMxQ, query_mask_BxMxQ):
        """The members' rollouts `(ro, processed)` (device, `[B, M, ...]`)."""
        dp = self.dp
        return self.rollout_fn(state.params, ref_params, rm_params, dp.shard(query_BxMxQ),
                               dp.shard(query_mask_BxMxQ), self.keys_fn(state.rng, state.step))

    def train(self, *, params, ref_params, rm_params, queries: QuerySource, workdir: str | None,
              writer: metrics_lib.MetricsWriter | None = None, gold_fn: Callable | None = None,
              decode: Callable | None = None, stop_after: int | None = None, stage: str = STAGE,
              online=None):
        """Runs (or resumes) the PPO stage of one run; returns `(params, summary)`.

        `gold_fn(query_BxQ, query_mask_BxQ, processed_BxR) -> scores_B` (host)
        gives `objective/gold_score`, and the reward itself when
        `ppo.reward_source="gold"`. `decode(ids) -> str` renders samples.
        `stop_after` ends the loop after that many updates in this call (tests,
        simulating a kill); a relaunch resumes from the last checkpoint.
        `online` (an `rlhf_jax.stages.online.OnlineCollector`) collects labels and
        retrains the RM before the updates it is `due` at, checkpointing first;
        PPO then continues against the new RM (Ziegler 2.3).
        """
        run = Member(name="", cfg=self.cfg, params=params, ref_params=ref_params,
                     rm_params=rm_params, queries=queries, workdir=workdir, writer=writer,
                     gold_fn=gold_fn, decode=decode)
        return self.train_members([run], stop_after=stop_after, stage=stage, online=online)[0]

    def _restore(self, members, stage):
        """`(start, states, ckpts, metas)`: every member at the newest update they all
        have on disk (host layout, no member axis), fresh ones at 0."""
        dp = self.dp
        # On a mesh the params are placed split along fsdp and the optimizer state
        # created split: no host or device holds a full copy of it.
        states = [dp.init(lambda p, c=mb.cfg: init_state(p, make_optimizer(c.ppo), c), mb.params)
                  for mb in members]
        if not all(mb.workdir for mb in members):  # in memory: no checkpoints
            return 0, states, [None] * len(members), [{}] * len(members)
        ckpts = [Checkpointer(os.path.join(mb.workdir, "checkpoints", stage),
                              max_to_keep=keep_checkpoints(mb.cfg)) for mb in members]
        restored = [c.restore(s) for c, s in zip(ckpts, states)]
        if all(r is None for r in restored):
            return 0, states, ckpts, [{}] * len(members)
        if any(r is None for r in restored):
            missing = [mb.name for mb, r in zip(members, restored) if r is None]
            raise ValueError(f"{stage}: members {missing} have no checkpoint but others do; "
                             "resume them separately or clear the group's checkpoints")
        start = min(r[0] for r in restored)
        if any(r[0] != start for r in restored):
            # A kill between two members' saves: the others step back to `start`
            # (deterministic, so their redone updates equal the saved ones).
            restored = [c.restore(s, max_step=start) for c, s in zip(ckpts, states)]
        return start, [r[1] for r in restored], ckpts, [r[2] for r in restored]

    def _stack_states(self, states):
        """The members' placed states, stacked in the step layout. On a mesh inside a
        jit: an eager stack of arrays spread over several processes cannot be placed."""
        if self.dp.mode == "pmap":
            return self.dp.replicate(stack_members(states), reuse=True)
        out = self.dp.shardings(jax.eval_shape(stack_members, states))
        return jax.jit(stack_members, out_shardings=out)(states)

    def train_members(self, members: list[Member], *, stop_after: int | None = None,
                      stage: str = STAGE, online=None) -> list[tuple[dict, dict]]:
        """Runs (or resumes) the members' PPO stage; `[(params, summary)]` per member,
        each as `train` returns it for that member alone. `online` (`train`'s)
        needs a group of one.

        About 120 lines, kept whole: the order of rollout, update, logging,
        checkpoint and stop within one update is what makes a resume exact.
        """
        cfg, dp, m = self.cfg, self.dp, len(members)
        if m != len(self.cfgs):
            raise ValueError(f"{m} members for a trainer compiled for {len(self.cfgs)}")
        if online is not None and m > 1:
            raise ValueError("online label collection runs one member at a time")
        n, b = config_check.num_updates(cfg.ppo), cfg.ppo.batch_size
        start, states, ckpts, metas = self._restore(members, stage)
        if start and all(meta.get("finished") for meta in metas):
            logging.info("%s: finished at update %d; nothing to do", stage, start)
            for c in ckpts:
                c.close()
            return [(parallel.host_complete(s.params),
                     {"updates": start, "resumed": True, "history": meta.get("last", [])})
                    for s, meta in zip(states, metas)]
        if start:
            logging.info("%s: resuming at update %d of %d", stage, start, n)
            for mb in members:
                if mb.writer is not None:
                    mb.writer.resume(stage, start)
        state = self._stack_states(states)
        del states  # not held twice on the device for the whole stage
        rm_params = [mb.rm_params or {} for mb in members]
        if online is not None:
            rm_params = [online.start(start) or {}]  # the newest round's RM, on resume
        ref_r, rm_r = (dp.replicate(stack_members([mb.ref_params for mb in members])),
                       dp.replicate(stack_members(rm_params)))
        hp_r = None if self.hparams is None else dp.replicate(self.hparams)
        t_start = time.monotonic()
        deferred = metrics_lib.DeferredMetrics()
        histories = [[] for _ in members]
        t_last = time.perf_counter()
        update = start

        def log(step_done, host_stats, extras):
            _, eta_s = metrics_lib.rate_and_eta(update, n, start, time.monotonic() - t_start)
            for i, mb in enumerate(members):
                row = {k: float(v[i]) for k, v in host_stats.items() if np.ndim(v) == 1}
                write_row(mb.writer, stage, f"{stage} [{mb.name}]" if mb.name else stage,
                          step_done, n, {**row, **extras[i]}, histories[i], eta_s)

        def flush():
            ready = deferred.flush()
            if ready is not None and ready[1][2]:
                log(ready[0], ready[1][0], ready[1][1])

        with PreemptionHandler() as preempt:
            while update < n:
                if online is not None and online.due(update):
                    if ckpts[0] is not None:
                        ckpts[0].wait()  # the checkpoint at `update` is the round's resume point
                    new_rm = online.collect(update, member(dp.unreplicate(state), 0).params,
                                            preempt.should_stop)
                    if new_rm is None:  # stopped (SIGTERM) mid-round; a relaunch redoes it
                        break
                    rm_r = dp.replicate(stack_members([new_rm]))
                    t_last = time.perf_counter()
                batches = [query_batch(mb.cfg, mb.queries, update) for mb in members]
                q_BxMxQ = np.stack([q for q, _ in batches], 1)
                qm_BxMxQ = np.stack([qm for _, qm in batches], 1)
                ro, processed = self.rollout(state, ref_r, rm_r, q_BxMxQ, qm_BxMxQ)

                def gold():
                    proc_h = np.asarray(dp.unshard(processed))
                    raw = None if self.use_rm else np.asarray(dp.unshard(ro.response_BxR))
                    golds = [gold_scores(self.task, mb.gold_fn, q_BxMxQ[:, i], qm_BxMxQ[:, i],
                                         proc_h[:, i], None if raw is None else raw[:, i])
                             for i, mb in enumerate(members)]
                    return np.stack([g for g, _ in golds], 1), golds

                gold_BxM = None
                if not self.use_rm:  # the gold is the reward: the update waits for it
                    gold_BxM, golds = gold()
                    ro = ro.replace(scores_B=dp.shard(np.stack([s for _, s in golds], 1)))
                state, stats = self.update_fn(state, ro, hp_r)
                if gold_BxM is None and members[0].gold_fn is not None:
                    # Logged only: scored on the host while the device runs the update.
                    gold_BxM, _ = gold()
                update += 1
                now = time.perf_counter()
                extras = [update_extras(mb.cfg.ppo, update, now - t_last, m * b,
                                        None if gold_BxM is None else gold_BxM[:, i])
                          for i, mb in enumerate(members)]
                t_last = now
                is_log = update % cfg.ppo.log_every == 0 or update == n
                if is_log and members[0].decode is not None:
                    self._log_samples(members, update, ro, processed, gold_BxM, stats, stage)
                ready = deferred.push(update, (dp.unreplicate(stats), extras, is_log))
                if ready is not None and ready[1][2]:
                    log(ready[0], ready[1][0], ready[1][1])
                stopping = preempt.should_stop(update) or (
                    stop_after is not None and update - start >= stop_after)
                if ckpts[0] is not None and (update % cfg.ppo.checkpoint_every == 0 or update == n
                                             or stopping or (online is not None
                                                             and online.due(update))):
                    flush()
                    host = dp.unreplicate(state)
                    for i, c in enumerate(ckpts):
                        meta = {"step": update}
                        if update == n:  # the last row too: the stage's summary after a resume
                            meta = mark_finished({**meta, "last": histories[i][-1:]})
                        if update not in c.all_steps():  # a member that stepped back has it
                            c.save(update, member(host, i), meta, force=True)
                if stopping:
                    break
            flush()
        for c in ckpts:
            if c is not None:
                c.wait()
                c.close()
        final = dp.unreplicate(state)
        # Multi-host FSDP: full host copies for export (a collective on every process).
        return [(parallel.host_complete(member(final.params, i)),
                 {"updates": update, "history": histories[i], "kl_state": member(final.kl, i),
                  "preempted": update < n}) for i in range(m)]

    def _log_samples(self, members, update, ro, processed, gold_BxM, stats, stage):
        # The beta each rollout was penalised with (before this update's change).
        kl_coef_M = np.asarray(self.dp.unreplicate(stats)["objective/kl_coef"])
        host_ro = jax.tree.map(lambda x: np.asarray(self.dp.unshard(x)), ro)
        proc_h = np.asarray(self.dp.unshard(processed))
        for i, mb in enumerate(members):
            if mb.writer is not None:
                log_samples(mb.cfg, self.task, mb.writer, update,
                            jax.tree.map(lambda x, i=i: x[:, i], host_ro), proc_h[:, i],
                            None if gold_BxM is None else gold_BxM[:, i], mb.decode, stage,
                            float(kl_coef_M[i]), label=mb.name or None)


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

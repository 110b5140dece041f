"""Many runs in one compiled program: members that differ only in seed or numbers.

A sweep's runs whose configs agree except in `MEMBER_FIELDS` (the seed and
numeric PPO/KL/reward hyperparameters) run their reward-model and PPO stages
together. PPO: one `jax.vmap` over a leading member axis of the rollout and
the update, each member with its own params, optimizer state, KL controller
state, PRNG key, queries, reward model and reference. Reward model
(`run_reward_members`): the supervised loop vmapped the same way
(`rlhf_jax.stages.supervised.run_members`), each member with its own labels, data
order, initial head, normalisation samples and `reward.lr`. Where one small run leaves the device mostly
idle (an accelerator), M members cost far less than M runs; on a small CPU
whose cores one run already keeps busy, about M times one (docs/sweeps.md).

Each member keeps its own workdir exactly as a separate run would: its
metrics, samples, Orbax checkpoints (`checkpoints/ppo`, the member's state
alone, so a member can be resumed alone or in a group), exported policy and
stage marker. The result equals separate runs up to float rounding (batched
matmuls sum in another order); `tests/test_members.py` pins that.

Traced per member: `seed` (state key, query order, value-head init),
`kl.coef` (initial KL state), `ppo.lr` (the optimizer's schedule),
`ppo.cliprange`, `ppo.cliprange_value`, `ppo.vf_coef`, `ppo.gamma`,
`ppo.lam`, `kl.target`, `kl.horizon` (in the update). Anything else that
differs (shapes, stages, model, batch, epochs, `kl.adaptive`, ...) makes
separate programs: `check_members` says which field.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import config_check, config_lib
from rlhf_jax.algorithms import pg
from rlhf_jax.algorithms.ppo import make_update_step
from rlhf_jax.infra import compile_cache, metrics as metrics_lib, parallel
from rlhf_jax.infra.checkpoint import Checkpointer, PreemptionHandler, mark_finished
from rlhf_jax.stages import reward_train, run as run_lib, supervised, train_ppo
from rlhf_jax.stages.batched import ppo_gold_function
from rlhf_jax.stages.rollout import TaskSpec, TokenRewards, make_rollout
from rlhf_jax.stages.train_ppo import (gold_scores, hparams, init_state, keep_checkpoints,
                                       log_samples, make_optimizer, query_batch, rollout_key,
                                       update_extras, write_row)

# PPOHParams field of each traced config field (`ppo.lr` goes to the optimizer).
_TRACED = {"ppo.cliprange": "cliprange", "ppo.cliprange_value": "cliprange_value",
           "ppo.vf_coef": "vf_coef", "ppo.gamma": "gamma", "ppo.lam": "lam",
           "kl.target": "kl_target", "kl.horizon": "kl_horizon"}
MEMBER_FIELDS = ("seed", "kl.coef", "ppo.lr", "reward.lr", *_TRACED)
# The stages that run as members, in pipeline order (`group_stages`).
GROUP_STAGES = ("reward", "ppo")


def _flat(tree, prefix="") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_members(cfgs) -> None:
    """ValueError naming the first field (outside `MEMBER_FIELDS`) in which the configs differ."""
    if not cfgs:
        raise ValueError("no members")
    base = _flat(cfgs[0].to_dict())
    for i, cfg in enumerate(cfgs[1:], 1):
        flat = _flat(cfg.to_dict())
        for key in sorted(set(base) | set(flat)):
            if key not in MEMBER_FIELDS and base.get(key) != flat.get(key):
                raise ValueError(f"members 0 and {i} differ in {key} ({base.get(key)!r} vs "
                                 f"{flat.get(key)!r}): only {', '.join(MEMBER_FIELDS)} may differ")
    if "labels" in cfgs[0] and cfgs[0].labels.online.enabled:
        raise ValueError("labels.online.enabled: online label collection runs one member at a time")


def group_stages(cfg) -> tuple[str, ...]:
    """The run's stages that may run as members of a group: its reward and PPO
    stages, none when it collects online labels (a collection round retrains
    the reward model inside PPO, one member at a time)."""
    if "labels" in cfg and cfg.labels.online.enabled:
        return ()
    stages = config_lib.stage_list(cfg)
    return tuple(s for s in GROUP_STAGES if s in stages)


def groupable(cfg) -> bool:
    """Whether a run may join a group (`group_stages`)."""
    return bool(group_stages(cfg))


def run_members(stage: str, cfgs, workdirs, **kw) -> list[dict]:
    """`run_reward_members` or `run_ppo_members`, by stage."""
    return {"reward": run_reward_members, "ppo": run_ppo_members}[stage](cfgs, workdirs, **kw)


def shared_config_key(cfg) -> str:
    """Configs with equal keys may run as members of one program (sweep grouping)."""
    flat = _flat(cfg.to_dict())
    return repr(sorted((k, repr(v)) for k, v in flat.items() if k not in MEMBER_FIELDS))


def _field(cfg, dotted: str):
    group, name = dotted.split(".")
    return cfg[group][name]


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


@dataclasses.dataclass
class Member:
    """One member's inputs and outputs (what `PPOTrainer.train` takes, per member)."""

    name: str
    cfg: object
    params: dict
    ref_params: dict
    rm_params: dict | None
    queries: object  # train_ppo.QuerySource
    workdir: str | None
    writer: metrics_lib.MetricsWriter | None = None
    gold_fn: Callable | None = None
    decode: Callable | None = None


class MemberPPOTrainer:
    """`PPOTrainer` for M members at once: the rollout and update vmapped over members.

    Placement: replicated values (params, states, keys, hyperparameters) carry
    the member axis first; batch-sharded values (queries, rollouts) carry it
    second, [B, M, ...], so data parallelism still splits the batch.
    """

    def __init__(self, cfgs, models, dp: parallel.DataParallel, *, task: TaskSpec | None = None):
        check_members(cfgs)
        cfg = cfgs[0]
        self.cfgs, self.cfg, self.models, self.dp = list(cfgs), cfg, models, dp
        self.task = TaskSpec.from_config(cfg.task) if task is None else task
        self.use_rm = cfg.ppo.reward_source == "rm"
        self.hparams = {f: jnp.asarray([_field(c, f) for c in cfgs], jnp.float32)
                        for f in ("ppo.lr", *_TRACED)}
        R, S = parallel.REP, parallel.SHARD
        rollout = jax.vmap(make_rollout(models, self.task, use_rm=self.use_rm,
                                        token_rewards=TokenRewards.from_config(cfg.ppo)),
                           in_axes=(0, 0, 0, 1, 1, 0), out_axes=1)
        self.rollout_fn = dp.compile(rollout, (R, R, R, S, S, R), (S, S))
        # Each member's rollout key as its own run derives it (PPOTrainer.rollout),
        # computed on the device: reading the state's key and step on the host
        # would wait for the previous update before the next rollout is queued.
        self.keys_fn = dp.compile(jax.vmap(rollout_key), (R, R), R)
        base = hparams(cfg)

        def update(state, ro, hp):
            optimizer = make_optimizer(cfg.ppo, lr=hp["ppo.lr"])
            member_hp = dataclasses.replace(base, **{name: hp[f] for f, name in _TRACED.items()})
            advantages = None if cfg.ppo.algo == "ppo" else pg.make_advantages(
                cfg.ppo.algo, k=cfg.ppo.rloo_k, decay=cfg.ppo.baseline_decay,
                axis_name=dp.batch_axes, grpo_variant=cfg.ppo.get("grpo_variant", "grpo"))
            step = make_update_step(models.apply_policy_value, optimizer, member_hp,
                                    dp.batch_axes, advantages=advantages)
            return step(state, ro)

        self.update_fn = dp.compile(jax.vmap(update, in_axes=(0, 1, 0)), (R, S, R), (R, R),
                                    donate_argnums=(0,))

    def _restore(self, members, ckpts, states, stage):
        """`(start, states)`: every member at the newest update they all have on disk."""
        restored = [c.restore(s) for c, s in zip(ckpts, states)]
        if all(r is None for r in restored):
            return 0, states
        if any(r is None for r in restored):
            missing = [m.name for m, r in zip(members, restored) if r is None]
            raise ValueError(f"{stage}: members {missing} have no checkpoint but others do; "
                             "resume them separately or clear the group's checkpoints")
        start = min(r[0] for r in restored)
        if any(r[0] != start for r in restored):
            # A kill between two members' saves: the others step back to `start`
            # (deterministic, so their redone updates equal the saved ones).
            restored = [c.restore(s, max_step=start) for c, s in zip(ckpts, states)]
        return start, [r[1] for r in restored]

    def train(self, members: list[Member], *, stop_after: int | None = None,
              stage: str = "ppo") -> list[tuple[dict, dict]]:
        """Runs (or resumes) the members' PPO stage; `[(params, summary)]` per member."""
        cfg, dp, m = self.cfg, self.dp, len(members)
        n, b = config_check.num_updates(cfg.ppo), cfg.ppo.batch_size
        states = [init_state(mb.params, make_optimizer(mb.cfg.ppo), mb.cfg) for mb in members]
        ckpts = [Checkpointer(os.path.join(mb.workdir, "checkpoints", stage),
                              max_to_keep=keep_checkpoints(mb.cfg)) if mb.workdir
                 else None for mb in members]
        start = 0
        if all(c is not None for c in ckpts):
            start, states = self._restore(members, ckpts, states, stage)
        for mb in members:
            if start and mb.writer is not None:
                mb.writer.resume(stage, start)
        state = dp.replicate(_stack(states))
        ref_r = dp.replicate(_stack([mb.ref_params for mb in members]))
        rm_r = dp.replicate(_stack([mb.rm_params or {} for mb in members]))
        hp_r = dp.replicate(self.hparams)
        t_start = time.monotonic()
        deferred = metrics_lib.DeferredMetrics()
        histories = [[] for _ in members]
        t_last = time.perf_counter()
        update = start

        def log(step_done, host_stats, extras):
            _, eta_s = metrics_lib.rate_and_eta(update, n, start, time.monotonic() - t_start)
            for i, mb in enumerate(members):
                row = {k: float(v[i]) for k, v in host_stats.items() if np.ndim(v) == 1}
                write_row(mb.writer, stage, f"{stage} [{mb.name}]", step_done, n,
                          {**row, **extras[i]}, histories[i], eta_s)

        def flush():
            ready = deferred.flush()
            if ready is not None and ready[1][2]:
                log(ready[0], ready[1][0], ready[1][1])

        with PreemptionHandler() as preempt:
            while update < n:
                batches = [query_batch(mb.cfg, mb.queries, update) for mb in members]
                q_BxMxQ = np.stack([q for q, _ in batches], 1)
                qm_BxMxQ = np.stack([qm for _, qm in batches], 1)
                ro, processed = self.rollout_fn(state.params, ref_r, rm_r, dp.shard(q_BxMxQ),
                                                dp.shard(qm_BxMxQ),
                                                self.keys_fn(state.rng, state.step))

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
                    kl_coef_M = np.asarray(dp.unreplicate(stats)["objective/kl_coef"])
                    host_ro = jax.tree.map(lambda x: np.asarray(dp.unshard(x)), ro)
                    proc_h = np.asarray(dp.unshard(processed))
                    for i, mb in enumerate(members):
                        if mb.writer is not None:
                            log_samples(mb.cfg, self.task, mb.writer, update,
                                        jax.tree.map(lambda x, i=i: x[:, i], host_ro),
                                        proc_h[:, i], None if gold_BxM is None else gold_BxM[:, i],
                                        mb.decode, stage, float(kl_coef_M[i]), label=mb.name)
                ready = deferred.push(update, (dp.unreplicate(stats), extras, is_log))
                if ready is not None and ready[1][2]:
                    log(ready[0], ready[1][0], ready[1][1])
                stopping = preempt.should_stop(update) or (
                    stop_after is not None and update - start >= stop_after)
                if ckpts[0] is not None and (update % cfg.ppo.checkpoint_every == 0 or update == n
                                             or stopping):
                    flush()
                    meta = {"step": update}
                    if update == n:
                        meta = mark_finished(meta)
                    host = dp.unreplicate(state)
                    for i, c in enumerate(ckpts):
                        if update not in c.all_steps():  # a member that stepped back has it
                            c.save(update, _member(host, i), meta, force=True)
                if stopping:
                    break
            flush()
        for c in ckpts:
            if c is not None:
                c.close()
        final = dp.unreplicate(state)
        return [(parallel.host_complete(_member(final.params, i)),
                 {"updates": update, "history": histories[i], "kl_state": _member(final.kl, i),
                  "preempted": update < n}) for i in range(m)]


def _run_group(stage: str, cfgs, workdirs, *, allow_config_change: bool, prepare, train,
               finish) -> list[dict]:
    """One stage of every unfinished member, in one program; then each member's marker.

    Opens every member's run; for each unfinished one (after `start_stage`)
    `prepare(ctx, dp)` builds its inputs; `train(prepared, dp)` runs them all
    and returns one result per member; `finish(ctx, k, result)` exports member
    k's model and returns its marker summary, which records its share of the
    group's time (`group_seconds`, `members`). A finished member's summary is
    read from its marker.
    """
    check_members(cfgs)
    dp = run_lib.data_parallel(cfgs[0])
    compile_cache.track()
    ctxs = [run_lib.open_run(c, w, dp, allow_config_change=allow_config_change)
            for c, w in zip(cfgs, workdirs)]
    try:
        done = [run_lib.finished_stage(ctx, stage) for ctx in ctxs]
        todo = [i for i, d in enumerate(done) if d is None]
        if not todo:
            return done
        prepared = []
        for i in todo:
            run_lib.start_stage(ctxs[i], stage)
            prepared.append(prepare(ctxs[i], dp))
        names = [os.path.basename(os.path.normpath(ctxs[i].workdir)) for i in todo]
        print(f"[{stage}] starting: {len(todo)} members in one program ({', '.join(names)})",
              flush=True)
        ts, cs = time.time(), compile_cache.stats()
        results = train(prepared, dp)
        seconds, compiled = time.time() - ts, compile_cache.stats() - cs
        for k, (i, result) in enumerate(zip(todo, results)):
            out = finish(ctxs[i], k, result)
            # The group's time, shared: each member's marker holds its share.
            out.update(members=len(todo), group_seconds=round(seconds, 1))
            done[i] = run_lib.record_stage(ctxs[i], stage, out, seconds / len(todo), compiled)
        return done
    finally:
        for ctx in ctxs:
            ctx.writer.close()


def _same_architecture(models, what: str, workdir: str) -> None:
    if len(models) > 1 and models[-1] != models[0]:
        raise ValueError(f"{workdir}: its {what} differ from the first member's; members "
                         "share one architecture")


def run_ppo_members(cfgs, workdirs, *, allow_config_change: bool = False) -> list[dict]:
    """The PPO stage of every unfinished member, in one program; then each member's marker.

    Every stage before `ppo` must be finished in each workdir (`pipeline.run(...,
    until="ppo")`); a member whose PPO stage is already done is left out.
    Returns the stage summaries (a finished member's from its marker).
    `allow_config_change`: see `stages.run.open_run`.
    """
    models = []

    def prepare(ctx, dp):
        m_models, params, ref_params, rm_params = train_ppo.ppo_models_and_params(ctx)
        models.append(m_models)
        _same_architecture(models, "PPO models", ctx.workdir)
        return ctx, Member(
            name=os.path.basename(os.path.normpath(ctx.workdir)), cfg=ctx.cfg,
            params=params, ref_params=ref_params,
            rm_params=rm_params if ctx.cfg.ppo.reward_source == "rm" else None,
            queries=ctx.queries("train"), workdir=ctx.workdir, writer=ctx.writer,
            gold_fn=ppo_gold_function(ctx, m_models.reference, ref_params), decode=ctx.decode)

    def train(prepared, dp):
        members = [mb for _, mb in prepared]
        trainer = MemberPPOTrainer([mb.cfg for mb in members], models[0], dp,
                                   task=prepared[0][0].task_spec())
        return trainer.train(members)

    def finish(ctx, k, result):
        return train_ppo.finish_ppo(ctx, models[0], *result)

    return _run_group("ppo", cfgs, workdirs, allow_config_change=allow_config_change,
                      prepare=prepare, train=train, finish=finish)


def run_reward_members(cfgs, workdirs, *, allow_config_change: bool = False,
                       stop_after: int | None = None) -> list[dict]:
    """The reward stage of every unfinished member, in one program; then each member's
    marker and `models/reward`, as `pipeline.stage_reward` leaves them.

    Every stage before `reward` must be finished in each workdir. Returns the
    stage summaries (a finished member's from its marker). `stop_after`:
    stop every member after this many steps (tests; the stage stays
    unfinished, as after a preemption).
    """
    models, loops = [], []

    def prepare(ctx, dp):
        inputs = reward_train.reward_inputs(ctx)
        models.append(inputs["rm_model"])
        _same_architecture(models, "reward model", ctx.workdir)
        p = reward_train.prepare(ctx.cfg, rm_model=inputs["rm_model"], train=inputs["train"],
                                 val=inputs["val"], dp=dp, normalizer=inputs["normalizer"])
        loops.append(p)
        return supervised.MemberRun(
            name=os.path.basename(os.path.normpath(ctx.workdir)), params=inputs["rm_params"],
            train_data=p.train_data, val_data=p.val_data, rng=inputs["rng"],
            workdir=ctx.workdir, writer=ctx.writer, init_fn=p.init_fn,
            finalize_fn=p.finalize_fn, lr=ctx.cfg.reward.lr)

    def train(runs, dp):
        results = supervised.run_members(
            loops[0].loop, runs, loss_fn=loops[0].loss_fn, eval_fn=loops[0].eval_fn, dp=dp,
            num_train_field="labels.num_train", stop_after=stop_after)
        if any(summary["stopped_early"] for _, summary in results):
            raise run_lib.Preempted("reward")  # checkpointed, not finished: no model, no marker
        return results

    def finish(ctx, k, result):
        return reward_train.finish_reward(ctx, models[k], *result)

    return _run_group("reward", cfgs, workdirs, allow_config_change=allow_config_change,
                      prepare=prepare, train=train, finish=finish)

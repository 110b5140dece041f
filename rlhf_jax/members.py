"""Many runs in one compiled program: members that differ only in seed or numbers.

A sweep's runs whose configs agree except in `MEMBER_FIELDS` (the seed and
numeric PPO/KL/reward hyperparameters) run their reward-model and PPO stages
together. PPO: the one PPO loop (`train_ppo.PPOTrainer.train_members`), a
`jax.vmap` over a leading member axis of the rollout and the update, each
member with its own params, optimizer state, KL controller state, PRNG key,
queries, reward model and reference. Reward model
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

import os
import time

from rlhf_jax import config_lib
from rlhf_jax.infra import compile_cache
from rlhf_jax.stages import reward_train, run as run_lib, supervised, train_ppo
from rlhf_jax.stages.batched import ppo_gold_function
from rlhf_jax.stages.train_ppo import TRACED_HPARAMS, Member

MEMBER_FIELDS = ("seed", "kl.coef", "ppo.lr", "reward.lr", *TRACED_HPARAMS)
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
        trainer = train_ppo.PPOTrainer([mb.cfg for mb in members], models[0], dp,
                                       task=prepared[0][0].task_spec())
        return trainer.train_members(members)

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

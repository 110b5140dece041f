"""The one training loop behind the reward model, SFT / LM pretraining and DPO.

A trainer hands `run` a per-shard loss, a dict of fixed-shape host arrays
(leading axis N) and a `config_lib.LoopConfig`; `run` does the rest:

- epochs over the data in fixed-size batches, a fresh permutation per epoch
  drawn from the base key (`fold_in(data_key, epoch)`), so the data order is
  a pure function of (key, step) and the step is the data cursor;
- Adam (TF-style or PyTorch-style) with a linear / cosine / constant lr
  schedule (`rlhf_jax.algorithms.optim`); no gradient clipping;
- a data-parallel step, written per shard with `pmean` over the batch axis and
  compiled by `DataParallel` under `pmap` or `jit` over a mesh; the state is
  donated;
- periodic held-out evaluation with exact weighted means (the last partial
  batch is padded with weight-0 rows);
- metrics kept on device and fetched one step late (`DeferredMetrics`),
  checked for NaN at log time, written by process 0 only;
- Orbax checkpoints of (params, optimizer state, base key, step) every
  `checkpoint_every` steps under `workdir/checkpoints/<stage>`, and a last one
  with `finished=True`; a relaunch resumes from the newest good checkpoint and
  ends with the same params as a run never interrupted; SIGTERM saves and
  returns early (`summary["stopped_early"]`), and the caller exits.

Per-shard contracts:

    loss_fn(params, batch, rng) -> (loss, metrics)
        `batch` is this shard's slice; `loss` a scalar whose gradient, averaged
        over shards, is the global batch's gradient (a per-shard mean over
        equal-sized shards is; a token-weighted loss must normalise by the
        global token count, `parallel.psum`); `metrics` a dict of scalars,
        averaged over shards. Collectives over `parallel.AXIS` are allowed.
    eval_fn(params, batch) -> {name: (numerator, denominator)}
        `batch["weight"]` is 1 for real rows and 0 for padding; each metric is
        sum(numerators) / sum(denominators) over the whole held-out set.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax.algorithms.optim import adam_optimizer, make_schedule
from rlhf_jax.config_lib import LoopConfig
from rlhf_jax.infra import fsdp, parallel
from rlhf_jax.infra.checkpoint import Checkpointer, PreemptionHandler, mark_finished
from rlhf_jax.infra.metrics import (DeferredMetrics, MetricsWriter, check_finite, format_log_line,
                                    rate_and_eta)

# Fold-in constants that split the base key into independent streams.
_DATA_STREAM, _STEP_STREAM, _INIT_STREAM, _FINAL_STREAM = 1, 2, 3, 4


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; checkpointed as a dict (`_to_ckpt`)."""

    params: Any
    opt_state: Any
    rng: jax.Array  # the base key; never changes (step keys are fold_ins)
    step: jax.Array  # int32, updates applied so far = the data cursor


def _to_ckpt(state: TrainState) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "rng": state.rng,
            "step": state.step}


def _from_ckpt(tree: dict) -> TrainState:
    return TrainState(params=tree["params"], opt_state=tree["opt_state"], rng=tree["rng"],
                      step=tree["step"])


# Compiled steps by (trainer's cache key, loop settings, steps, placement), so a
# relaunch in the same process (resume, sweeps, tests) does not recompile.
_COMPILED: dict = {}
_COMPILED_MAX = 16


def _compiled(key, build: Callable) -> Callable:
    if key is None:
        return build()
    if key not in _COMPILED:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = build()
    return _COMPILED[key]


def num_rows(data: Mapping[str, np.ndarray], what: str) -> int:
    """The common leading dimension of `data`'s arrays; ValueError if they differ."""
    sizes = {k: np.shape(v)[0] for k, v in data.items()}
    if not sizes or len(set(sizes.values())) != 1:
        raise ValueError(f"{what}: arrays must share their leading dimension, got {sizes}")
    return next(iter(sizes.values()))


def take_rows(data: Mapping[str, np.ndarray], idx: np.ndarray) -> dict:
    """`{k: v[idx]}` for a dict of host arrays."""
    return {k: np.asarray(v)[idx] for k, v in data.items()}


def pad_rows(data: Mapping[str, np.ndarray], multiple: int) -> dict:
    """Pads to a multiple of `multiple` rows by repeating row 0; adds `weight`
    (float32, 1 for real rows, 0 for padding)."""
    n = num_rows(data, "pad_rows")
    total = -(-n // multiple) * multiple
    idx = np.concatenate([np.arange(n), np.zeros(total - n, np.int64)])
    out = take_rows(data, idx)
    out["weight"] = (np.arange(total) < n).astype(np.float32)
    return out


def map_batches(dp: parallel.DataParallel, fn: Callable, replicated: Any,
                data: Mapping[str, np.ndarray], batch_size: int, *,
                cache_key: Any = None) -> dict:
    """Applies a per-shard `fn(replicated, batch) -> {name: [b, ...]}` to every row.

    `replicated` is already placed with `dp.replicate`. Rows are padded to a
    multiple of `batch_size` (which must divide by the device count) and the
    padding is cut from the returned host arrays ([N, ...] each). A hashable
    `cache_key` that determines `fn` lets later calls reuse the compiled step.
    """
    n = num_rows(data, "map_batches")
    dp.check_divisible(batch_size, "map_batches batch_size")
    padded = pad_rows(data, batch_size)
    padded.pop("weight")
    step = _compiled(
        None if cache_key is None else ("map", cache_key, dp.placement_key),
        lambda: dp.compile(fn, (parallel.REP, parallel.SHARD), parallel.SHARD))
    outs = []
    for start in range(0, num_rows(padded, "map_batches"), batch_size):
        batch = take_rows(padded, np.arange(start, start + batch_size))
        outs.append(dp.unshard(step(replicated, dp.shard(batch))))
    host = jax.device_get(outs)
    return {k: np.concatenate([o[k] for o in host])[:n] for k in host[0]}


def _epoch_permutation(data_key: jax.Array, epoch: int, n: int) -> np.ndarray:
    return np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), n))


def _make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    def train_step(state: TrainState, batch, lr_scale):
        step_rng = jax.random.fold_in(jax.random.fold_in(state.rng, _STEP_STREAM), state.step)
        rng = parallel.fold_in_device(step_rng)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, rng)
        grads = parallel.mean_grads(grads)  # pmean; FSDP-aware in mesh mode
        metrics = parallel.pmean({"loss": loss, **metrics})
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        if lr_scale is not None:
            # A member's own lr: Adam's step is linear in the lr. None when every
            # member has the loop's: a multiply by 1 would still round differently
            # (it stops XLA fusing the update into the params' add).
            updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return train_step


def _make_eval_step(eval_fn: Callable) -> Callable:
    def eval_step(params, batch):
        sums = eval_fn(params, batch)
        return {k: (parallel.psum(num), parallel.psum(den)) for k, (num, den) in sums.items()}

    return eval_step


def over_members(fn: Callable, in_axes: tuple, members: int, out_axes: int = 0) -> Callable:
    """`jax.vmap(fn, in_axes, out_axes)` over `members` members.

    A group of one drops the axis, calls `fn` once and restores it: the same
    function, and the very program a run without a member axis compiles (a
    vmapped dot may sum in another order, and a seeded run's numbers would
    move by float rounding)."""
    if members > 1:
        return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)

    def one(*args):
        inner = [a if axis is None else jax.tree.map(lambda x, ax=axis: jnp.squeeze(x, ax), a)
                 for a, axis in zip(args, in_axes)]
        return jax.tree.map(lambda x: jnp.expand_dims(x, out_axes), fn(*inner))

    return one


def member_steps(loss_fn: Callable, optimizer: optax.GradientTransformation, members: int,
                 eval_fn: Callable | None = None) -> tuple[Callable, Callable | None]:
    """The per-shard train and eval steps over a leading member axis of the state
    (params, optimizer state, key, step, lr scale) and a second one of the batch
    (`[B, M, ...]`, so data parallelism still splits the batch axis). A run is a
    group of one."""
    step = over_members(_make_train_step(loss_fn, optimizer), (0, 1, 0), members)

    def train(state, batch, lr_scale):
        # FSDP boxes count the member axis outside the vmap, not inside it.
        state, metrics = step(fsdp.member_view(state, inside=True), batch, lr_scale)
        return fsdp.member_view(state, inside=False), metrics

    if eval_fn is None:
        return train, None
    member_eval = over_members(_make_eval_step(eval_fn), (0, 1), members)
    return train, lambda params, batch: member_eval(fsdp.member_view(params, inside=True), batch)


def _is_main() -> bool:
    return jax.process_index() == 0


@dataclasses.dataclass
class MemberRun:
    """One run of a group: what `run` takes per run (`run_members`)."""

    name: str
    params: Any
    train_data: Mapping[str, np.ndarray]
    rng: jax.Array
    val_data: Mapping[str, np.ndarray] | None = None
    workdir: str | None = None
    writer: MetricsWriter | None = None
    init_fn: Callable[[Any, jax.Array], tuple[Any, dict]] | None = None
    finalize_fn: Callable[[Any, jax.Array], tuple[Any, dict]] | None = None
    lr: float | None = None  # None: the loop's


def run(
    loop: LoopConfig,
    *,
    loss_fn: Callable,
    params: Any,
    train_data: Mapping[str, np.ndarray],
    dp: parallel.DataParallel,
    rng: jax.Array,
    num_train_field: str,
    drop_last: bool = False,
    eval_fn: Callable | None = None,
    val_data: Mapping[str, np.ndarray] | None = None,
    workdir: str | None = None,
    writer: MetricsWriter | None = None,
    init_fn: Callable[[Any, jax.Array], tuple[Any, dict]] | None = None,
    finalize_fn: Callable[[Any, jax.Array], tuple[Any, dict]] | None = None,
    stop_after: int | None = None,
    max_to_keep: int = 2,
    cache_key: Any = None,
) -> tuple[Any, dict]:
    """Trains `params` for `loop.epochs` epochs of `train_data`; resumable. A group
    of one (`run_members`).

    Args:
      loop: the stage's settings (`LoopConfig.from_config`).
      loss_fn: per-shard `(params, batch, rng) -> (loss, metrics)` (module doc).
      params: initial params (host pytree, unreplicated).
      train_data: dict of host arrays with a common leading axis N.
      dp: the data-parallel placement.
      rng: the base key; the data order and every step key derive from it.
      num_train_field: the config field that sets N, for error messages.
      drop_last: allow N not divisible by the batch; each epoch then drops a
        different remainder (SFT). False requires exact division (LHP).
      eval_fn, val_data: per-shard `(params, batch) -> {name: (num, den)}` and
        the held-out rows; evaluated before training (fresh start), every
        `loop.eval_every` steps and after training.
      workdir: where metrics and `checkpoints/<stage>` go; None trains in
        memory with neither.
      writer: metrics sink; default `MetricsWriter(workdir)` when `workdir`
        is set (process 0 writes, others do nothing).
      init_fn: `(params, rng) -> (params, info)` applied once on a fresh start
        (not on resume), e.g. reward normalisation before training.
      finalize_fn: `(params, rng) -> (params, info)` applied after the last
        step, before the final checkpoint (normalisation after training).
      stop_after: stop (checkpointing, like a preemption) once this many steps
        are done; for tests and time-boxed jobs.
      max_to_keep: checkpoints kept on disk.
      cache_key: a hashable value that determines `loss_fn` and `eval_fn`
        (e.g. the model and loss settings); compiled steps are then reused
        by later runs with the same key, settings and devices. None compiles
        afresh.

    Returns:
      `(params, summary)`: host params and a JSON-able summary with `steps`,
      `total_steps`, `stopped_early`, the last logged train metrics under
      `train`, the held-out metrics before (`initial_val`) and after
      (`final_val`) training, and the `init` / `finalize` infos.
    """
    member = MemberRun(name="", params=params, train_data=train_data, rng=rng,
                       val_data=val_data, workdir=workdir, writer=writer, init_fn=init_fn,
                       finalize_fn=finalize_fn)
    return run_members(loop, [member], loss_fn=loss_fn, dp=dp, num_train_field=num_train_field,
                       drop_last=drop_last, eval_fn=eval_fn, stop_after=stop_after,
                       max_to_keep=max_to_keep, cache_key=cache_key)[0]


def loop_optimizer(loop: LoopConfig, total_steps: int, lr: float | None = None):
    """`(optimizer, lr_schedule)` of a loop of `total_steps` steps: Adam of the loop's
    style on its schedule (`lr` overrides the loop's); logging reads the same schedule."""
    schedule = make_schedule(loop.schedule, lr=loop.lr if lr is None else lr,
                             total_steps=total_steps,
                             warmup_steps=int(loop.warmup_frac * total_steps))
    return adam_optimizer(schedule, loop.adam, eps=loop.adam_eps), schedule


def _shapes(data, what):
    if data is None:
        return None
    return num_rows(data, what), {k: (np.shape(v)[1:], np.asarray(v).dtype.str)
                                  for k, v in data.items()}


def check_members(members: list[MemberRun], stage: str) -> None:
    """ValueError naming the first member whose data differs in shape from the first's."""
    if not members:
        raise ValueError(f"{stage}: no members")
    first = members[0]
    for mb in members[1:]:
        for what, a, b in (("training", first.train_data, mb.train_data),
                           ("held-out", first.val_data, mb.val_data)):
            sa, sb = _shapes(a, f"{stage} {what} data"), _shapes(b, f"{stage} {what} data")
            if sa != sb:
                raise ValueError(f"{stage} members {first.name!r} and {mb.name!r}: their "
                                 f"{what} data differ ({sa} vs {sb}); members need equal shapes")


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def run_members(loop: LoopConfig, members: list[MemberRun], *, loss_fn: Callable,
                dp: parallel.DataParallel, num_train_field: str, drop_last: bool = False,
                eval_fn: Callable | None = None, stop_after: int | None = None,
                max_to_keep: int = 2, cache_key: Any = None) -> list[tuple[Any, dict]]:
    """Trains every member for `loop.epochs` epochs of its data, in one vmapped
    program; resumable. The arguments are `run`'s, per member in `members`.

    Returns `[(params, summary)]` in `members`' order, each as `run` returns it
    for that member alone. A member whose checkpoint says finished is returned
    from it and trains no further.
    """
    stage = loop.stage
    check_members(members, stage)
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after={stop_after} must be >= 1")
    n = num_rows(members[0].train_data, f"{stage} train data")
    steps_per_epoch = loop.steps_per_epoch(
        n, num_field=num_train_field, drop_last=drop_last, num_devices=dp.num_devices)
    total_steps = steps_per_epoch * loop.epochs
    optimizer, lr_schedule = loop_optimizer(loop, total_steps)
    for mb in members:
        # Each member's own lr must be one its own run accepts.
        loop_optimizer(loop, total_steps, lr=mb.lr)
    ckpts = [Checkpointer(os.path.join(mb.workdir, "checkpoints", stage), max_to_keep=max_to_keep,
                          save_interval_steps=1) if mb.workdir is not None else None
             for mb in members]
    own = [mb.writer is None and mb.workdir is not None for mb in members]
    members = [dataclasses.replace(mb, writer=MetricsWriter(mb.workdir)) if o else mb
               for mb, o in zip(members, own)]
    try:
        return _run(loop, members, ckpts, loss_fn=loss_fn, eval_fn=eval_fn, dp=dp,
                    optimizer=optimizer, total_steps=total_steps,
                    steps_per_epoch=steps_per_epoch, lr_schedule=lr_schedule, stop_after=stop_after,
                    cache_key=cache_key)
    finally:
        for c in ckpts:
            if c is not None:
                c.close()
        for mb, o in zip(members, own):
            if o:
                mb.writer.close()


def _restore(loop, members, ckpts, optimizer, dp):
    """`(start, results, active, restored)`: finished members' results (None for the
    others), the indices of the others, and their checkpoints `{i: (step, tree,
    meta)}` at the newest step all of them have on disk (None on a fresh start)."""
    m = len(members)
    targets = [dp.placed_shapes(_to_ckpt(TrainState(
        params=mb.params, opt_state=jax.eval_shape(optimizer.init, mb.params), rng=mb.rng,
        step=jnp.zeros((), jnp.int32)))) for mb in members]
    restored = [c.restore(t) if c is not None else None for c, t in zip(ckpts, targets)]
    results: list = [None] * m
    for i, r in enumerate(restored):
        if r is not None and r[2].get("finished") is True:
            results[i] = (parallel.host_complete(r[1]["params"]), r[2]["summary"])
    active = [i for i in range(m) if results[i] is None]
    have = [restored[i] is not None for i in active]
    if any(have) and not all(have):
        missing = [members[i].name for i, h in zip(active, have) if not h]
        raise ValueError(f"{loop.stage}: members {missing} have no checkpoint but others do; "
                         "resume them separately or clear the group's checkpoints")
    if not any(have):
        return 0, results, active, None
    start = min(restored[i][0] for i in active)
    for i in active:
        if restored[i][0] != start:
            # A kill between two members' saves: the others step back to `start`
            # (deterministic, so their redone steps equal the saved ones).
            restored[i] = ckpts[i].restore(targets[i], max_step=start)
    return start, results, active, {i: restored[i] for i in active}


def _label(stage: str, group: list[MemberRun]) -> str:
    return f"{stage}:" if len(group) == 1 else f"{stage}: {len(group)} members"


def _start_state(loop, group, restored, start, summaries, optimizer, dp, total_steps):
    """The group's state (host layout, member axis first) at step `start`: stacked
    from the members' checkpoints `restored` (None on a fresh start), else their
    initial params after `init_fn`, with a fresh optimizer state."""
    stage = loop.stage
    if restored is not None:
        states = []
        for k, mb in enumerate(group):
            _, tree, meta = restored[k]
            summaries[k].update(meta["summary"])
            states.append(_from_ckpt(tree))
            if int(states[k].step) != start:
                raise ValueError(f"{mb.name or stage}: checkpoint of stage {stage!r} at step "
                                 f"{start} holds step {int(states[k].step)}")
            if mb.writer is not None:
                mb.writer.resume(stage, start)
        log_line(f"{_label(stage, group)} resuming at step {start}/{total_steps}")
        return _stack(states)
    params = []
    for k, mb in enumerate(group):
        p = mb.params
        if mb.init_fn is not None:
            p, summaries[k]["init"] = mb.init_fn(p, jax.random.fold_in(mb.rng, _INIT_STREAM))
        params.append(p)
    params = _stack(params)
    # On a mesh the optimizer state is created split, never whole on one device.
    return TrainState(params=params, opt_state=dp.init(jax.vmap(optimizer.init), params),
                      rng=_stack([mb.rng for mb in group]),
                      step=jnp.zeros((len(group),), jnp.int32))


def _evaluator(loop, group, eval_step, dp, total_steps) -> Callable:
    """`evaluate(step, state)`: every member's held-out metrics (exact weighted means
    over the padded set), written to its log; a list, one dict per member."""
    stage, batch_size = loop.stage, loop.batch_size
    padded = [pad_rows(mb.val_data, batch_size) for mb in group]
    num_val_rows = num_rows(padded[0], f"{stage} val data")

    def run_eval(step, state):
        totals = None
        for s in range(0, num_val_rows, batch_size):
            rows = np.arange(s, s + batch_size)
            batch = dp.shard(_stack_batch([take_rows(p, rows) for p in padded]))
            out = jax.tree.map(lambda x: np.asarray(x, np.float64),  # sums as floats
                               jax.device_get(dp.unreplicate(eval_step(state.params, batch))))
            totals = out if totals is None else jax.tree.map(lambda a, b: a + b, totals, out)
        vals = []
        for k, mb in enumerate(group):
            metrics = {f"{stage}/val_{name}": float(num[k]) / max(float(den[k]), 1e-12)
                       for name, (num, den) in totals.items()}
            _write(mb, step, stage, metrics, total_steps)
            vals.append({key.split("/", 1)[1]: v for key, v in metrics.items()})
        return vals

    return run_eval


def _run(loop, members, ckpts, *, loss_fn, eval_fn, dp, optimizer, total_steps, steps_per_epoch,
         lr_schedule, stop_after, cache_key):
    """The loop (one program for the group): restore or start, train, evaluate, save.

    About 120 lines, kept whole: the order of a step's logging, evaluation,
    checkpoint and stop is what makes a resume exact, and reads in one place."""
    stage, batch_size = loop.stage, loop.batch_size
    start, results, active, restored = _restore(loop, members, ckpts, optimizer, dp)
    if not active:
        return results
    group = [members[i] for i in active]
    group_ckpts = [ckpts[i] for i in active]
    summaries = [{"total_steps": total_steps, "stopped_early": False} for _ in group]
    mine = None if restored is None else [restored[i] for i in active]
    host_state = _start_state(loop, group, mine, start, summaries, optimizer, dp, total_steps)
    state = dp.replicate(host_state)
    m = len(group)
    scales = [(loop.lr if mb.lr is None else mb.lr) / loop.lr if loop.lr else 1.0 for mb in group]
    scale_r = (None if all(x == 1.0 for x in scales)
               else dp.replicate(jnp.asarray(scales, jnp.float32)))
    R, S = parallel.REP, parallel.SHARD
    placement = dp.placement_key
    train_fn, eval_fn_m = member_steps(loss_fn, optimizer, m, eval_fn)
    train_step = _compiled(
        None if cache_key is None else ("train", cache_key, loop, total_steps, placement, m,
                                        scale_r is None),
        lambda: dp.compile(train_fn, (R, S, R), (R, R), donate_argnums=(0,)))
    evaluate = None
    if eval_fn is not None and group[0].val_data is not None:
        eval_step = _compiled(
            None if cache_key is None else ("eval", cache_key, placement, m),
            lambda: dp.compile(eval_fn_m, (R, S), R))
        run_eval = _evaluator(loop, group, eval_step, dp, total_steps)
        evaluate = run_eval
        if start == 0:
            for summary, val in zip(summaries, evaluate(0, state)):
                summary["initial_val"] = val

    t0 = time.monotonic()

    def log_train(done):
        step, host = done[0], jax.device_get(done[1])
        rate, eta_s = rate_and_eta(step, total_steps, start, time.monotonic() - t0)
        for k, mb in enumerate(group):
            row = {f"{stage}/{key}": float(np.asarray(v)[k]) for key, v in host.items()}
            row[f"{stage}/lr"] = float(lr_schedule(step - 1)) * scales[k]  # update `step`'s
            row[f"{stage}/steps_per_s"] = rate or 0.0
            _write(mb, step, stage, row, total_steps, eta_s=eta_s)
            summaries[k]["train"] = {key.split("/", 1)[1]: v for key, v in row.items()
                                     if not key.endswith("/steps_per_s")}  # deterministic only

    def save(step, finished=False, params=None):
        host = dp.unreplicate(state)
        for k, (mb, c) in enumerate(zip(group, group_ckpts)):
            if c is None or step in c.all_steps():  # a member that stepped back has it
                continue
            single = TrainState(params=_member(host.params, k) if params is None else params[k],
                                opt_state=_member(host.opt_state, k), rng=mb.rng,
                                step=_member(host.step, k))
            meta = {"step": step, "summary": dict(summaries[k])}
            c.save(step, _to_ckpt(single), mark_finished(meta) if finished else meta, force=True)

    data_keys = [jax.random.fold_in(mb.rng, _DATA_STREAM) for mb in group]
    deferred = DeferredMetrics()
    perm_epoch, perms = -1, None
    with PreemptionHandler() as preempt:
        for step in range(start, total_steps):
            epoch, i = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:
                perm_epoch = epoch
                perms = [_epoch_permutation(key, epoch, num_rows(mb.train_data, stage))
                         for key, mb in zip(data_keys, group)]
            batch = _stack_batch([take_rows(mb.train_data, p[i * batch_size:(i + 1) * batch_size])
                                  for mb, p in zip(group, perms)])
            state, metrics = train_step(state, dp.shard(batch), scale_r)
            done = step + 1
            # Fetch the previous log step's metrics now that this step is queued.
            if (prev := deferred.flush()) is not None:
                log_train(prev)
            if done % loop.log_every == 0 or done == total_steps:
                deferred.push(done, dp.unreplicate(metrics))
            if done == total_steps:
                break
            if evaluate is not None and loop.eval_every and done % loop.eval_every == 0:
                evaluate(done, state)
            stop = preempt.should_stop(done) or (stop_after is not None and done >= stop_after)
            if stop or done % loop.checkpoint_every == 0:
                # Every row up to a checkpoint is written before it, so a resume
                # from it neither loses nor repeats rows.
                if (prev := deferred.flush()) is not None:
                    log_train(prev)
                save(done)
            if stop:
                for c in group_ckpts:
                    if c is not None:
                        c.wait()
                log_line(f"{_label(stage, group)} stopping at step {done}/{total_steps}"
                         f"{' (preempted)' if preempt.received_signal else ''}")
                host = dp.unreplicate(state.params)
                for k, idx in enumerate(active):
                    summaries[k].update(steps=done, stopped_early=True)
                    results[idx] = (parallel.host_complete(_member(host, k)), summaries[k])
                return results
    if (prev := deferred.flush()) is not None:
        log_train(prev)

    if evaluate is not None:
        for summary, val in zip(summaries, evaluate(total_steps, state)):
            summary["final_val"] = val
    host = dp.unreplicate(state.params)
    final = []
    for k, mb in enumerate(group):
        params = _member(host, k)
        if mb.finalize_fn is not None:
            params, summaries[k]["finalize"] = mb.finalize_fn(
                params, jax.random.fold_in(mb.rng, _FINAL_STREAM))
        summaries[k]["steps"] = total_steps
        final.append(params)
    save(total_steps, finished=True, params=final)
    # Multi-host FSDP: full host copies for export (a collective on every process).
    for k, idx in enumerate(active):
        results[idx] = (parallel.host_complete(final[k]), summaries[k])
    return results


def log_line(text: str) -> None:
    """Prints one line on process 0."""
    if _is_main():
        print(text, flush=True)


def _write(mb: MemberRun, step: int, stage: str, metrics: Mapping[str, float], total: int,
           eta_s: float | None = None) -> None:
    """NaN check, the member's metrics row (process 0) and one readable line."""
    label = f"{stage} [{mb.name}]" if mb.name else stage
    check_finite(metrics, step, label)
    if mb.writer is not None:
        mb.writer.write(step, stage, metrics)
    keys = [k for k in metrics if not k.endswith("/steps_per_s")]
    log_line(format_log_line(step, total, metrics, keys, stage=label, eta_s=eta_s))


def _stack_batch(batches: list[dict]) -> dict:
    """Members' batches `[B, ...]` as one `[B, M, ...]` batch."""
    return {k: np.stack([b[k] for b in batches], axis=1) for k in batches[0]}

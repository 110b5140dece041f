"""`supervised.run` for M runs at once: one vmapped step, each member its own run.

Members share the loop's settings, the loss and the data's shapes; each has
its own initial params, data, base key (so its own data order and step keys),
learning rate, workdir, metrics and Orbax checkpoints, and its own
`init_fn` / `finalize_fn` (reward normalisation). Params, optimizer states and
keys carry a leading member axis; a batch is `[B, M, ...]`, so data
parallelism still splits the batch axis (the placement of
`rlhf_jax.members.MemberPPOTrainer`).

A member's learning rate enters as a scale on its Adam step (its lr over the
loop's): every schedule here is the peak lr times a function of the step, and
Adam's step is linear in it. The results equal separate `supervised.run`
calls up to float rounding (batched matmuls sum in another order);
`tests/test_members.py` pins that, and that an interrupted group resumes to
the same result, each member from its own checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms.optim import make_optimizer, make_schedule
from rlhf_jax.config_lib import LoopConfig
from rlhf_jax.infra import parallel
from rlhf_jax.infra.checkpoint import Checkpointer, PreemptionHandler, mark_finished
from rlhf_jax.infra.metrics import (DeferredMetrics, MetricsWriter, check_finite, format_log_line,
                                    rate_and_eta)
from rlhf_jax.stages.supervised import (_DATA_STREAM, _FINAL_STREAM, _INIT_STREAM, TrainState,
                                        _epoch_permutation, _from_ckpt, _make_eval_step,
                                        _make_train_step, _to_ckpt, log_line, num_rows, pad_rows,
                                        take_rows)


@dataclasses.dataclass
class MemberRun:
    """One member: what `supervised.run` takes per run."""

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
                max_to_keep: int = 2) -> list[tuple[Any, dict]]:
    """Trains every member for `loop.epochs` epochs of its data; resumable.

    Returns `[(params, summary)]` in `members`' order, each as `supervised.run`
    returns it for that member alone. A member whose checkpoint says finished
    is returned from it and trains no further.
    """
    stage = loop.stage
    check_members(members, stage)
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after={stop_after} must be >= 1")
    n = num_rows(members[0].train_data, f"{stage} train data")
    steps_per_epoch = loop.steps_per_epoch(
        n, num_field=num_train_field, drop_last=drop_last, num_devices=dp.num_devices)
    total_steps = steps_per_epoch * loop.epochs
    warmup = int(loop.warmup_frac * total_steps)
    optimizer = make_optimizer(lr=loop.lr, total_steps=total_steps, schedule=loop.schedule,
                               adam=loop.adam, eps=loop.adam_eps, warmup_steps=warmup)
    for mb in members:
        # Each member's own lr must be one its own run accepts.
        make_schedule(loop.schedule, lr=loop.lr if mb.lr is None else mb.lr,
                      total_steps=total_steps, warmup_steps=warmup)
    ckpts = [Checkpointer(os.path.join(mb.workdir, "checkpoints", stage), max_to_keep=max_to_keep,
                          save_interval_steps=1) if mb.workdir is not None else None
             for mb in members]
    own = [mb.writer is None and mb.workdir is not None for mb in members]
    members = [dataclasses.replace(mb, writer=MetricsWriter(mb.workdir)) if o else mb
               for mb, o in zip(members, own)]
    try:
        return _run(loop, members, ckpts, loss_fn=loss_fn, eval_fn=eval_fn, dp=dp,
                    optimizer=optimizer, total_steps=total_steps,
                    steps_per_epoch=steps_per_epoch, warmup=warmup, stop_after=stop_after)
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


def _run(loop, members, ckpts, *, loss_fn, eval_fn, dp, optimizer, total_steps, steps_per_epoch,
         warmup, stop_after):
    stage, batch_size = loop.stage, loop.batch_size
    start, results, active, restored = _restore(loop, members, ckpts, optimizer, dp)
    if not active:
        return results
    group = [members[i] for i in active]
    group_ckpts = [ckpts[i] for i in active]
    summaries, states = [], []
    for k, mb in enumerate(group):
        summary: dict[str, Any] = {"total_steps": total_steps, "stopped_early": False}
        if restored is not None:
            _, tree, meta = restored[active[k]]
            summary.update(meta["summary"])
            state = _from_ckpt(tree)
            if int(state.step) != start:
                raise ValueError(f"{mb.name}: checkpoint of stage {stage!r} at step {start} "
                                 f"holds step {int(state.step)}")
            if mb.writer is not None:
                mb.writer.resume(stage, start)
        else:
            params = mb.params
            if mb.init_fn is not None:
                params, summary["init"] = mb.init_fn(params, jax.random.fold_in(mb.rng,
                                                                                _INIT_STREAM))
            state = TrainState(params=params, opt_state=optimizer.init(params), rng=mb.rng,
                               step=jnp.zeros((), jnp.int32))
        summaries.append(summary)
        states.append(state)
    if restored is not None:
        log_line(f"{stage}: {len(group)} members resuming at step {start}/{total_steps}")
    m = len(group)
    state = dp.replicate(_stack(states))
    scales = [(loop.lr if mb.lr is None else mb.lr) / loop.lr for mb in group]
    scale_r = dp.replicate(jnp.asarray(scales, jnp.float32))
    R, S = parallel.REP, parallel.SHARD
    train_step = dp.compile(jax.vmap(_make_train_step(loss_fn, optimizer), in_axes=(0, 1, 0)),
                            (R, S, R), (R, R), donate_argnums=(0,))
    evaluate = None
    if eval_fn is not None and group[0].val_data is not None:
        eval_step = dp.compile(jax.vmap(_make_eval_step(eval_fn), in_axes=(0, 1)), (R, S), R)
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

        evaluate = run_eval
        if start == 0:
            for summary, val in zip(summaries, evaluate(0, state)):
                summary["initial_val"] = val

    lr_schedule = make_schedule(loop.schedule, lr=loop.lr, total_steps=total_steps,
                                warmup_steps=warmup)
    t0 = time.monotonic()

    def log_train(done):
        step, host = done
        rate, eta_s = rate_and_eta(step, total_steps, start, time.monotonic() - t0)
        for k, mb in enumerate(group):
            row = {f"{stage}/{key}": float(np.asarray(v)[k]) for key, v in host.items()}
            row[f"{stage}/lr"] = float(lr_schedule(step - 1)) * scales[k]
            row[f"{stage}/steps_per_s"] = rate or 0.0
            _write(mb, step, stage, row, total_steps, eta_s=eta_s)
            summaries[k]["train"] = {key.split("/", 1)[1]: v for key, v in row.items()
                                     if not key.endswith("/steps_per_s")}

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
                if (prev := deferred.flush()) is not None:
                    log_train(prev)
                save(done)
            if stop:
                for c in group_ckpts:
                    if c is not None:
                        c.wait()
                log_line(f"{stage}: {m} members stopping at step {done}/{total_steps}"
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
    for k, idx in enumerate(active):
        results[idx] = (parallel.host_complete(final[k]), summaries[k])
    return results


def _write(mb: MemberRun, step: int, stage: str, metrics: Mapping[str, float], total: int,
           eta_s: float | None = None) -> None:
    """`supervised._write` for one member: its writer, its name on the line."""
    label = f"{stage} [{mb.name}]"
    check_finite(metrics, step, label)
    if mb.writer is not None:
        mb.writer.write(step, stage, metrics)
    keys = [k for k in metrics if not k.endswith("/steps_per_s")]
    log_line(format_log_line(step, total, metrics, keys, stage=label, eta_s=eta_s))


def _stack_batch(batches: list[dict]) -> dict:
    """Members' batches `[B, ...]` as one `[B, M, ...]` batch."""
    return {k: np.stack([b[k] for b in batches], axis=1) for k in batches[0]}

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

import os
import time
from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax.algorithms.optim import make_optimizer, make_schedule
from rlhf_jax.config_lib import LoopConfig
from rlhf_jax.infra import parallel
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
    def train_step(state: TrainState, batch, lr_scale=None):
        step_rng = jax.random.fold_in(jax.random.fold_in(state.rng, _STEP_STREAM), state.step)
        rng = parallel.fold_in_device(step_rng)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, rng)
        grads = parallel.mean_grads(grads)  # pmean; FSDP-aware in mesh mode
        metrics = parallel.pmean({"loss": loss, **metrics})
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        if lr_scale is not None:
            # A member's own lr (`supervised_members`): Adam's step is linear in the lr.
            updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return train_step


def _make_eval_step(eval_fn: Callable) -> Callable:
    def eval_step(params, batch):
        sums = eval_fn(params, batch)
        return {k: (parallel.psum(num), parallel.psum(den)) for k, (num, den) in sums.items()}

    return eval_step


def _is_main() -> bool:
    return jax.process_index() == 0


def _single_state(dp: parallel.DataParallel, state: TrainState, rng) -> TrainState:
    """One copy of a replicated state; the base key is the host's own."""
    single = dp.unreplicate(state)
    return TrainState(params=single.params, opt_state=single.opt_state, rng=rng,
                      step=single.step)


def _host_metrics(tree):
    """Fetched metrics (a pytree of scalars, [D] under pmap) as host floats."""
    host = jax.device_get(tree)
    return jax.tree.map(lambda x: float(np.asarray(x).reshape(-1)[0]), host)


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
    """Trains `params` for `loop.epochs` epochs of `train_data`; resumable.

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
    stage = loop.stage
    n = num_rows(train_data, f"{stage} train data")
    steps_per_epoch = loop.steps_per_epoch(
        n, num_field=num_train_field, drop_last=drop_last, num_devices=dp.num_devices)
    total_steps = steps_per_epoch * loop.epochs
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after={stop_after} must be >= 1")
    warmup = int(loop.warmup_frac * total_steps)
    optimizer = make_optimizer(lr=loop.lr, total_steps=total_steps, schedule=loop.schedule,
                               adam=loop.adam, eps=loop.adam_eps, warmup_steps=warmup)
    lr_schedule = make_schedule(loop.schedule, lr=loop.lr, total_steps=total_steps,
                                warmup_steps=warmup)

    ckpt = None
    if workdir is not None:
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints", stage),
                            max_to_keep=max_to_keep, save_interval_steps=1)
    own_writer = writer is None and workdir is not None
    if own_writer:
        writer = MetricsWriter(workdir)
    try:
        return _run(loop, ckpt, writer, loss_fn=loss_fn, params=params,
                    train_data=train_data, dp=dp, rng=rng, eval_fn=eval_fn,
                    val_data=val_data, init_fn=init_fn, finalize_fn=finalize_fn,
                    stop_after=stop_after, optimizer=optimizer, lr_schedule=lr_schedule,
                    steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                    cache_key=cache_key)
    finally:
        if ckpt is not None:
            ckpt.close()
        if own_writer:
            writer.close()


def _run(loop, ckpt, writer, *, loss_fn, params, train_data, dp, rng, eval_fn, val_data,
         init_fn, finalize_fn, stop_after, optimizer, lr_schedule, steps_per_epoch,
         total_steps, cache_key):
    stage, batch_size = loop.stage, loop.batch_size
    summary: dict[str, Any] = {"total_steps": total_steps, "stopped_early": False}

    # ---- restore or start fresh ------------------------------------------------
    target = _to_ckpt(TrainState(params=params, opt_state=jax.eval_shape(optimizer.init, params),
                                 rng=rng, step=jnp.zeros((), jnp.int32)))
    target = dp.placed_shapes(target)  # a mesh restore lands split along fsdp
    restored = ckpt.restore(target) if ckpt is not None else None
    if restored is not None:
        start, tree, meta = restored
        if meta.get("finished") is True:
            return parallel.host_complete(tree["params"]), meta["summary"]
        host_state = _from_ckpt(tree)
        summary.update(meta["summary"])
        if writer is not None:
            writer.resume(stage, start)
        log_line(f"{stage}: resuming at step {start}/{total_steps}")
    else:
        start = 0
        if init_fn is not None:
            params, summary["init"] = init_fn(params, jax.random.fold_in(rng, _INIT_STREAM))
        # On a mesh the optimizer state is created split, never whole on one device.
        opt_state = dp.init(optimizer.init, params)
        host_state = TrainState(params=params, opt_state=opt_state, rng=rng,
                                step=jnp.zeros((), jnp.int32))
    if int(host_state.step) != start:
        raise ValueError(f"checkpoint of stage {stage!r} at step {start} holds step "
                         f"{int(host_state.step)}")
    state = dp.replicate(host_state)

    placement = dp.placement_key
    train_step = _compiled(
        None if cache_key is None else ("train", cache_key, loop, total_steps, placement),
        lambda: dp.compile(_make_train_step(loss_fn, optimizer),
                           (parallel.REP, parallel.SHARD), (parallel.REP, parallel.REP),
                           donate_argnums=(0,)))
    evaluate = None
    if eval_fn is not None and val_data is not None:
        eval_step = _compiled(
            None if cache_key is None else ("eval", cache_key, placement),
            lambda: dp.compile(_make_eval_step(eval_fn), (parallel.REP, parallel.SHARD),
                               parallel.REP))
        padded_val = pad_rows(val_data, batch_size)
        num_val_rows = num_rows(padded_val, f"{stage} val data")

        def run_eval(step, state):
            totals = None
            for s in range(0, num_val_rows, batch_size):
                batch = dp.shard(take_rows(padded_val, np.arange(s, s + batch_size)))
                out = _host_metrics(eval_step(state.params, batch))
                totals = out if totals is None else jax.tree.map(lambda a, b: a + b, totals, out)
            metrics = {f"{stage}/val_{k}": num / max(den, 1e-12)
                       for k, (num, den) in totals.items()}
            _write(writer, step, stage, metrics, total_steps)
            return {k.split("/", 1)[1]: v for k, v in metrics.items()}

        evaluate = run_eval
        if start == 0:
            summary["initial_val"] = evaluate(0, state)

    def log_train(done):
        step, metrics = done[0], _host_metrics(done[1])
        row = {f"{stage}/{k}": v for k, v in metrics.items()}
        row[f"{stage}/lr"] = float(lr_schedule(step - 1))  # the lr of update `step`
        rate, eta_s = rate_and_eta(step, total_steps, start, time.monotonic() - t0)
        row[f"{stage}/steps_per_s"] = rate or 0.0
        _write(writer, step, stage, row, total_steps, eta_s=eta_s)
        summary["train"] = {k.split("/", 1)[1]: v for k, v in row.items()
                            if not k.endswith("/steps_per_s")}  # deterministic values only

    def save(step, single: TrainState, meta_summary, finished=False):
        if ckpt is None:
            return
        meta = {"step": step, "summary": meta_summary}
        ckpt.save(step, _to_ckpt(single), mark_finished(meta) if finished else meta, force=True)

    # ---- train -----------------------------------------------------------------
    data_key = jax.random.fold_in(host_state.rng, _DATA_STREAM)
    deferred = DeferredMetrics()
    perm_epoch, perm = -1, None
    t0 = time.monotonic()
    with PreemptionHandler() as preempt:
        for step in range(start, total_steps):
            epoch, i = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:
                perm_epoch, perm = epoch, _epoch_permutation(data_key, epoch,
                                                             num_rows(train_data, stage))
            idx = perm[i * batch_size:(i + 1) * batch_size]
            state, metrics = train_step(state, dp.shard(take_rows(train_data, idx)))
            done = step + 1
            # Fetch the previous log step's metrics now that this step is queued.
            if (prev := deferred.flush()) is not None:
                log_train(prev)
            if done % loop.log_every == 0 or done == total_steps:
                deferred.push(done, metrics)
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
                save(done, _single_state(dp, state, host_state.rng), dict(summary))
            if stop:
                if ckpt is not None:
                    ckpt.wait()
                log_line(f"{stage}: stopping at step {done}/{total_steps}"
                         f"{' (preempted)' if preempt.received_signal else ''}")
                summary.update(steps=done, stopped_early=True)
                return parallel.host_complete(dp.unreplicate(state.params)), summary
    if (prev := deferred.flush()) is not None:
        log_train(prev)

    # ---- finish ------------------------------------------------------------------
    if evaluate is not None:
        summary["final_val"] = evaluate(total_steps, state)
    host_state = _single_state(dp, state, host_state.rng)
    params = host_state.params
    if finalize_fn is not None:
        params, summary["finalize"] = finalize_fn(
            params, jax.random.fold_in(host_state.rng, _FINAL_STREAM))
    summary["steps"] = total_steps
    save(total_steps, host_state.replace(params=params), dict(summary), finished=True)
    # Multi-host FSDP: full host copies for export (a collective on every process).
    return parallel.host_complete(params), summary


def log_line(text: str) -> None:
    """Prints one line on process 0."""
    if _is_main():
        print(text, flush=True)


def _write(writer, step: int, stage: str, metrics: Mapping[str, float], total: int,
           eta_s: float | None = None) -> None:
    """NaN check, metrics row (process 0) and one readable line."""
    check_finite(metrics, step, stage)
    if writer is not None:
        writer.write(step, stage, metrics)
    keys = [k for k in metrics if not k.endswith("/steps_per_s")]
    log_line(format_log_line(step, total, metrics, keys, stage=stage, eta_s=eta_s))

"""Orbax checkpointing: one CheckpointManager per stage, safe to kill at any time.

A stage keeps its checkpoints in `workdir/checkpoints/<stage>/<step>/` with
two items:

    state   the training pytree (params, optimizer state, KL controller,
            reward normalisation, PRNG key, step counters): everything needed
            to continue bit-for-bit. Restored into the structure, dtypes and
            shardings of a target pytree.
    meta    a small JSON dict: data cursor, `finished`, ...

(The config a stage ran with is recorded beside its done marker, in
`workdir/stages/<stage>.config.json`; see `rlhf_jax.config_guard`.)

Resuming (`Checkpointer.restore`) takes the newest step that restores. Orbax
writes each step into a `<step>.orbax-checkpoint-tmp*` directory and renames
it when complete, so a kill mid-save leaves a tmp directory that is ignored
and cleaned up (a resume says so in one warning line); a step directory that is damaged anyway (a lost file, a
half-synced disk) is skipped with a warning naming it, moved aside to
`<step>.corrupt-<unix time>`, and the previous step is used. If checkpoints
exist but none restores, restoring raises rather than silently starting over.

PRNG keys: new-style typed keys (`jax.random.key`) are stored as their
`key_data` (uint32) and re-wrapped with the target leaf's key implementation;
legacy raw uint32 keys (`jax.random.PRNGKey`) are plain arrays.

Finished stages: the stage's last save carries `meta["finished"] = True`
(`mark_finished`); a relaunch finds it in the meta `restore` returns and does
no new work.

Preemption: `PreemptionHandler` turns SIGTERM into a flag the loop polls;
the loop then saves (force=True), `wait()`s for the save and exits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

STATE_ITEM = "state"
META_ITEM = "meta"


# ---------------------------------------------------------------------------
# Typed PRNG keys <-> raw key data.


def _is_typed_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _key_impl(leaf: Any) -> str:
    """The PRNG implementation name of a concrete or abstract typed key."""
    if isinstance(leaf, jax.Array):
        return jax.random.key_impl(leaf)
    # key_impl wants an array; a tracer of the abstract key is one.
    found = []
    jax.eval_shape(lambda k: found.append(jax.random.key_impl(k)), leaf)
    return found[0]


def _keys_to_data(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, tree)


def _abstract_target(target: Any) -> Any:
    """Restore target of shape/dtype/sharding structs, typed keys as key data."""

    def leaf_fn(x):
        if _is_typed_key(x):
            data = jax.eval_shape(jax.random.key_data, x)
            return jax.ShapeDtypeStruct(data.shape, data.dtype,
                                        sharding=getattr(x, "sharding", None))
        if isinstance(x, (jax.Array, np.ndarray)):
            return ocp.utils.to_shape_dtype_struct(x)
        return x  # ShapeDtypeStruct, or a Python scalar restored as such.

    return jax.tree.map(leaf_fn, target)


def _rewrap_keys(restored: Any, target: Any) -> Any:
    return jax.tree.map(
        lambda r, t: jax.random.wrap_key_data(r, impl=_key_impl(t))
        if _is_typed_key(t) else r,
        restored, target)


# ---------------------------------------------------------------------------
# The checkpointer.


def mark_finished(meta: Mapping[str, Any]) -> dict:
    """A copy of `meta` with `finished=True`: pass it to the stage's last save."""
    return {**meta, "finished": True}


class Checkpointer:
    """An Orbax `CheckpointManager` for one stage's `state` pytree and `meta`.

    Args:
      directory: the stage's checkpoint directory, e.g.
        `workdir/checkpoints/ppo` (local paths are made absolute; `gs://`
        paths work as Orbax supports them).
      max_to_keep: newest steps kept on disk (>= 1).
      save_interval_steps: `save` writes only steps that are multiples of it,
        unless `force=True`.

    State passed to `save` should be global arrays (unreplicated under pmap,
    mesh-sharded under jit); saves are asynchronous, and the arrays may be
    donated once `save` returns (Orbax copies them to host first).
    """

    def __init__(self, directory: str, *, max_to_keep: int = 2,
                 save_interval_steps: int = 1):
        if max_to_keep < 1:
            raise ValueError(f"checkpoint max_to_keep must be >= 1, got {max_to_keep}")
        if save_interval_steps < 1:
            raise ValueError("checkpoint save_interval_steps must be >= 1, got "
                             f"{save_interval_steps}")
        if "://" not in str(directory):
            directory = os.path.abspath(directory)
        self.directory = epath.Path(directory)
        # Saves a kill cut short, which the manager deletes as it opens: named on restore.
        self._torn = sorted(p.name for p in self.directory.glob("*.orbax-checkpoint-tmp*")) \
            if self.directory.exists() else []
        self.save_interval_steps = save_interval_steps
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                # The interval is applied in `save`: Orbax would also always
                # save the first step it sees, whatever its number.
                save_interval_steps=1,
                # Tmp dirs are saves cut short by a kill; they hold nothing usable.
                cleanup_tmp_directories=True,
                create=True),
            item_names=(STATE_ITEM, META_ITEM))

    # -- queries --------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest committed step on disk (it may still fail to restore)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Committed steps on disk, ascending."""
        return sorted(self._manager.all_steps())

    # -- save / restore -------------------------------------------------------

    def save(self, step: int, state: Any, meta: Mapping[str, Any], *,
             force: bool = False) -> bool:
        """Starts an asynchronous save of `state` and `meta` at `step`.

        Returns whether a save was started (False for a step that is not a
        multiple of `save_interval_steps`, unless `force`). `meta` must be
        JSON (put PRNG keys in `state`, or as lists of ints in `meta`).
        Raises ValueError if `step` is already saved: save a stage's last
        step once, with `mark_finished(meta)` and `force=True`.
        """
        step = int(step)
        if not force and step % self.save_interval_steps != 0:
            return False
        try:
            json.dumps(dict(meta))
        except (TypeError, ValueError) as e:
            raise ValueError(f"checkpoint meta at step {step} is not JSON: {e}") from e
        if step in self._manager.all_steps():
            raise ValueError(f"checkpoint step {step} already exists in {self.directory}")
        return self._manager.save(
            step,
            args=ocp.args.Composite(**{
                STATE_ITEM: ocp.args.StandardSave(_keys_to_data(state)),
                META_ITEM: ocp.args.JsonSave(dict(meta)),
            }),
            force=force)

    def restore(self, target: Any, *, max_step: int | None = None
                ) -> tuple[int, Any, dict] | None:
        """Restores the newest good step (at most `max_step`) into the structure of `target`.

        `target` is a pytree like the saved state: concrete arrays, or
        abstract ones (`jax.eval_shape`, `jax.ShapeDtypeStruct` with
        shardings); restored arrays take the target leaves' shapes, dtypes and
        shardings, typed PRNG keys are re-wrapped, numpy leaves come back as
        numpy, Python scalars as Python scalars.

        Returns `(step, state, meta)`, or None when there is no checkpoint.
        A step that fails to restore is skipped with a warning and moved
        aside; RuntimeError if steps exist but none restores.
        """
        self.wait()
        steps = [s for s in self.all_steps() if max_step is None or s <= max_step]
        if self._torn:
            logging.warning("checkpoint %s: %d save(s) cut short (%s) were discarded; "
                            "resuming from %s", self.directory, len(self._torn),
                            ", ".join(t.split(".")[0] for t in self._torn),
                            f"step {steps[-1]}" if steps else "the start")
            self._torn = []
        if not steps:
            return None
        abstract = _abstract_target(target)
        bad: list[int] = []
        errors: list[str] = []
        for step in reversed(steps):
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(**{
                        STATE_ITEM: ocp.args.StandardRestore(abstract),
                        META_ITEM: ocp.args.JsonRestore(),
                    }))
            except Exception as e:  # pylint: disable=broad-except
                # Any failure (missing file, bad metadata, I/O) means this step
                # cannot be resumed from; an older one may be intact.
                first_line = (str(e).strip().splitlines() or [""])[0][:200]
                logging.warning("checkpoint %s step %d failed to restore, "
                                "trying the previous step (%s: %s)",
                                self.directory, step, type(e).__name__, first_line)
                bad.append(step)
                errors.append(f"step {step}: {type(e).__name__}: {e}")
                continue
            if bad:
                self._quarantine(bad)
            state = _rewrap_keys(restored[STATE_ITEM], target)
            return step, state, dict(restored[META_ITEM])
        raise RuntimeError(
            f"no checkpoint in {self.directory} restores (steps {steps}); "
            "refusing to start the stage from scratch over them. Errors: "
            + " | ".join(errors))

    def read(self, step: int) -> tuple[Any, dict]:
        """`(state, meta)` of a saved `step` as saved (nested dicts of arrays, no
        target needed): for reading parts of it, e.g. the policy of a PPO step."""
        self.wait()
        restored = self._manager.restore(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(), META_ITEM: ocp.args.JsonRestore()}))
        return restored[STATE_ITEM], dict(restored[META_ITEM])

    def _quarantine(self, steps: list[int]) -> None:
        """Moves bad step directories aside so later saves can reuse the steps."""
        if jax.process_index() == 0:
            stamp = int(time.time())
            for step in steps:
                src = self.directory / str(step)
                dst = self.directory / f"{step}.corrupt-{stamp}"
                logging.warning("checkpoint %s: moving unrestorable step %d to %s",
                                self.directory, step, dst)
                src.rename(dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("rlhf_jax_checkpoint_quarantine")
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Preemption.


class PreemptionHandler:
    """Turns SIGTERM (preemption) into a flag the training loop polls.

        with PreemptionHandler() as preempt:
            for step in ...:
                ...
                if preempt.should_stop(step):
                    ckpt.save(step, state, meta, force=True)
                    ckpt.wait()
                    break

    Single process: a SIGTERM handler sets the flag; the previous handler is
    restored on exit; if it belongs to an enclosing PreemptionHandler and the
    signal arrived, that one is flagged too (so the outer loop stops as well).
    Handlers can only be installed from the main thread;
    elsewhere a warning is logged and nothing is installed.

    Several processes: hosts must stop at the same step, or the ones still
    running hang in a collective. So no handler is installed (JAX's
    coordination service watches SIGTERM itself) and `should_stop(step)`
    asks `multihost_utils.reached_preemption_sync_point(step)`, which is
    true on every host at the same step; it needs `jax.distributed.initialize`.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self._signals = tuple(signals)
        self._previous: dict[int, Any] = {}
        self._received: int | None = None

    @property
    def received_signal(self) -> int | None:
        """The signal number received, or None."""
        return self._received

    def _handle(self, signum, frame) -> None:
        del frame
        self._received = signum
        logging.warning("received %s: will checkpoint and stop at the next step",
                        signal.Signals(signum).name)

    def __enter__(self) -> "PreemptionHandler":
        if jax.process_count() > 1:
            return self
        if threading.current_thread() is not threading.main_thread():
            logging.warning("PreemptionHandler: not on the main thread, "
                            "signal handlers not installed")
            return self
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
            # Nested loops (an RM retrain inside PPO): pass a signal caught here
            # on to the enclosing PreemptionHandler, so the outer loop stops too.
            outer = getattr(previous, "__self__", None)
            if self._received == sig and isinstance(outer, PreemptionHandler):
                outer._handle(sig, None)
        self._previous.clear()

    def should_stop(self, step: int | None = None) -> bool:
        """True once a signal arrived; multi-host, at the preemption sync point.

        Multi-host callers must pass `step` and call this on every host at
        every step (the sync point is a per-step agreement).
        """
        if self._received is not None:
            return True
        if jax.process_count() > 1:
            if step is None:
                raise ValueError("PreemptionHandler.should_stop: pass the step "
                                 "when running on several processes")
            from jax.experimental import multihost_utils
            return bool(multihost_utils.reached_preemption_sync_point(int(step)))
        return False

"""Data parallelism: one step function, run under `jax.pmap` or `jit(shard_map)` on a mesh.

A step is written once for the per-device shard of the batch, with explicit
collectives over the batch axes (`batch_axes()`: `AXIS` under pmap, the mesh's
two axes in mesh mode; `mean_grads` of gradients, `pmean` of metrics, `psum`
for global statistics). `DataParallel` runs it:

- `mode="pmap"`: replicated values carry a leading device axis (the classic
  pmap layout); batches are reshaped [B, ...] -> [D, B/D, ...].
- `mode="mesh"`: a 2-D `Mesh` with axes `("data", "fsdp")` (`fsdp` devices per
  group, `fsdp=1` by default); the step runs as `jit(shard_map(...))` with its
  collectives over both axes; batches are split over both (every device holds
  distinct rows); "replicated" values (params, optimizer state) are global
  arrays whose float leaves are split along `fsdp` (`rlhf_jax.infra.fsdp`: gathered
  where used inside the step, gradients reduce-scattered), the rest replicated.

Either way the host sees the same global batch, so results do not depend on
the device count beyond float noise. Multi-host: `initialize_distributed()`
before anything touches the devices; each process feeds its local slice.

The choice of backend lives here only: trainers place values (`replicate`,
`shard`, `init`, `placed_shapes`), compile steps (`compile`) and call the
collectives below, and never ask which mode they run in. The collectives find
the batch axes in a context variable that `compile` sets while a mesh step
traces (pmap's single axis is the default): passing the names instead would
thread them through every loss, sampler and rollout signature, spreading the
backend into code that otherwise knows nothing of it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlhf_jax.infra import fsdp as fsdp_lib

AXIS = "batch"
# The batch axis name(s) a step's collectives use: AXIS under pmap, the mesh's
# ("data", "fsdp") pair under mesh mode (set while `compile`d steps trace).
_BATCH_AXES: contextvars.ContextVar = contextvars.ContextVar("batch_axes", default=AXIS)
MODES = ("pmap", "mesh")
REP, SHARD = "rep", "shard"


def initialize_distributed() -> None:
    """`jax.distributed.initialize()` when running multi-process (TPU pods, or tests).

    On TPU VMs JAX discovers the coordinator itself; elsewhere the standard
    variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`
    name it. Single-process runs skip this.
    """
    if jax.distributed.is_initialized():
        return
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        jax.distributed.initialize()


def batch_axes():
    """The axis name(s) of the batch inside the step being traced."""
    return _BATCH_AXES.get()


@contextlib.contextmanager
def _tracing_with(axes):
    token = _BATCH_AXES.set(axes)
    try:
        yield
    finally:
        _BATCH_AXES.reset(token)


def axis_index() -> jax.Array:
    """This shard's index along the batch (row-major over the mesh's batch axes)."""
    return jax.lax.axis_index(batch_axes())


def pmean(tree):
    return jax.lax.pmean(tree, batch_axes())


def psum(tree):
    return jax.lax.psum(tree, batch_axes())


def all_gather(tree):
    """Concatenates every device's shard along axis 0 (the global batch)."""
    return jax.tree.map(lambda x: jax.lax.all_gather(x, batch_axes(), tiled=True), tree)


def mean_grads(grads, axis_name=None):
    """Gradients averaged over every batch shard: `pmean`, FSDP-aware (`fsdp.mean_grads`).

    `axis_name` defaults to the traced step's batch axes.
    """
    return fsdp_lib.mean_grads(grads, batch_axes() if axis_name is None else axis_name)


def check_layout(mode: str, fsdp, num_devices: int) -> None:
    """ValueError naming the `parallel` field for a layout that cannot run on
    `num_devices` devices (`config_check.resolve` and `DataParallel` both ask)."""
    if mode not in MODES:
        raise ValueError(f"parallel.mode={mode!r}: expected one of {MODES}")
    if isinstance(fsdp, bool) or not isinstance(fsdp, int) or fsdp < 1:
        raise ValueError(f"parallel.fsdp={fsdp!r} must be an int >= 1")
    if fsdp > 1 and mode != "mesh":
        raise ValueError(f"parallel.fsdp={fsdp} shards params over a mesh: it needs "
                         f"parallel.mode='mesh' (got {mode!r})")
    if num_devices % fsdp:
        raise ValueError(f"parallel.fsdp={fsdp} does not divide the device count {num_devices}")


class DataParallel:
    """Places data and compiles steps for one of the two data-parallel modes."""

    def __init__(self, mode: str = "pmap", num_devices: int | None = None, fsdp: int = 1):
        devices = jax.devices()
        if num_devices:
            if num_devices > len(devices):
                raise ValueError(
                    f"parallel.num_devices={num_devices} but only {len(devices)} devices exist"
                )
            devices = devices[:num_devices]
        if mode == "pmap" and jax.process_count() > 1:
            # pmap's layout here stacks every device's copy on one host.
            raise ValueError("parallel.mode='pmap' runs on one process; use parallel.mode='mesh' "
                             f"for a run over {jax.process_count()} processes")
        check_layout(mode, fsdp, len(devices))
        self.mode = mode
        self.devices = devices
        self.num_devices = len(devices)
        self.fsdp = fsdp
        if mode == "pmap":
            self.mesh = Mesh(np.asarray(devices), (AXIS,))
            self.batch_axes = AXIS
        else:
            # Topology-aware on TPU (fsdp groups on neighbouring chips); a reshape elsewhere.
            from jax.experimental import mesh_utils

            grid = mesh_utils.create_device_mesh((self.num_devices // fsdp, fsdp), devices)
            self.mesh = Mesh(grid, (fsdp_lib.DATA, fsdp_lib.FSDP))
            self.batch_axes = (fsdp_lib.DATA, fsdp_lib.FSDP)

    @property
    def placement_key(self) -> tuple:
        """Hashable identity of where and how values are placed (compile caches)."""
        return (self.mode, self.fsdp, tuple(d.id for d in self.devices))

    def check_config(self, cfg) -> None:
        """ValueError unless `cfg.parallel.mode` names this backend (a trainer given
        a `DataParallel` built for another config)."""
        if cfg.parallel.mode != self.mode:
            raise ValueError(f"parallel.mode={cfg.parallel.mode!r} but the DataParallel given "
                             f"runs in mode {self.mode!r}")

    def check_divisible(self, size: int, field: str) -> None:
        if size % self.num_devices:
            raise ValueError(
                f"{field}={size} is not divisible by the device count {self.num_devices}"
            )

    # ---- placement -------------------------------------------------------
    # Two layouts. The *host layout* is what checkpoints hold, `init` returns and
    # `unreplicate` gives back: one copy under pmap, global arrays split along
    # fsdp on a mesh. The *step layout* is what a compiled step takes for a REP
    # argument (`replicate`): a leading device axis under pmap, and on a mesh
    # the same global arrays as the host layout.

    def replicate(self, tree, *, reuse: bool = False):
        """`tree` in the step layout, in fresh buffers.

        Fresh, because a replicated value may be donated to a step and must not
        alias an input the caller still holds (e.g. the reference policy sharing
        the initial policy's arrays). `reuse=True` hands the tree over instead:
        leaves already placed (a mesh state from `init` or a restore into
        `placed_shapes`) are used as they are, not copied; pass it only for a
        value the caller does not use again.
        """
        if self.mode == "pmap":
            # A leading device axis, one copy per device, placed directly from a
            # host copy (no compiled broadcast per leaf shape).
            devices = list(self.mesh.devices.flat)
            sharding = NamedSharding(self.mesh, P(AXIS))

            def stack(x):
                if _is_key(x):
                    return jax.random.wrap_key_data(stack(jax.random.key_data(x)),
                                                    impl=jax.random.key_impl(x))
                host = np.asarray(x)[None]
                copies = [jax.device_put(host, d) for d in devices]
                return jax.make_array_from_single_device_arrays(
                    (len(devices), *host.shape[1:]), sharding, copies)

            return jax.tree.map(stack, tree)
        # Mesh: float leaves split along fsdp where they divide (fsdp=1: all replicated).
        shardings = self.shardings(tree)
        if reuse:
            def hand_over(x, sharding):
                if jax.process_count() == 1 or (isinstance(x, jax.Array)
                                                and not x.is_fully_addressable):
                    return jax.device_put(x, sharding)  # a placed array stays: no copy
                return _global_array(x, sharding)

            return jax.tree.map(hand_over, tree, shardings)
        if jax.process_count() > 1:
            # Built from host values: fresh buffers on this process's devices.
            return jax.tree.map(_global_array, tree, shardings)
        placed = jax.device_put(tree, shardings)
        # Host values transfer into fresh buffers; a device array can share one
        # with its placed copy (even with may_alias=False, device 0's shard), so
        # those are copied.
        return jax.tree.map(lambda x, y: y.copy() if isinstance(x, jax.Array) else y,
                            tree, placed)

    def shardings(self, tree):
        """Mesh mode: the `NamedSharding` `replicate` gives each leaf of `tree`
        (arrays or `jax.eval_shape` structs): split along fsdp or replicated."""
        return fsdp_lib.param_shardings(tree, self.mesh, self.fsdp)

    def placed_shapes(self, tree):
        """A restore target for `tree` in the host layout: on a mesh,
        `ShapeDtypeStruct`s carrying `shardings(tree)` (it lands split); under
        pmap `tree` itself. Typed PRNG keys and Python scalars stay as they are."""
        if self.mode == "pmap":
            return tree

        def leaf(x, sharding):
            if _is_key(x) or not hasattr(x, "shape"):
                return x
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

        return jax.tree.map(leaf, tree, self.shardings(tree))

    def step_shapes(self, tree, kind: str):
        """`ShapeDtypeStruct`s of `tree` (global shapes) as a compiled step receives
        a `kind` (REP / SHARD) argument: for `lower` without allocating."""
        if kind == SHARD and self.mode == "mesh":
            rows = NamedSharding(self.mesh, P(self.batch_axes))
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rows),
                                tree)
        if kind == REP and self.mode == "mesh":
            return self.placed_shapes(tree)
        d = self.num_devices
        lead = (lambda s: (d, *s)) if kind == REP else (lambda s: (d, s[0] // d, *s[1:]))
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(lead(x.shape), x.dtype), tree)

    def init(self, fn: Callable, *args):
        """`fn(*args)` in the host layout, without a full copy anywhere.

        Mesh mode: `args` are placed as `replicate` places them, the output's
        shapes come from `jax.eval_shape` and `fn` runs under `jit` with those
        `out_shardings`, so each device computes only its own slices (model or
        optimizer-state initialisation at any size). Pmap mode: `fn` runs once
        under `jit` on the default device (one copy; one program, not one per op).
        """
        if self.mode == "pmap":
            return jax.jit(fn)(*args)
        args = self.replicate(args)
        out_shardings = self.shardings(jax.eval_shape(fn, *args))
        return jax.jit(fn, out_shardings=out_shardings)(*args)

    def unreplicate(self, tree):
        """A host-side view of a replicated value (device 0's copy under pmap)."""
        if self.mode == "pmap":
            # Device 0's shard as is: no compiled slice per leaf.
            def first(x):
                if _is_key(x):
                    return jax.random.wrap_key_data(first(jax.random.key_data(x)),
                                                    impl=jax.random.key_impl(x))
                return x.addressable_shards[0].data.reshape(x.shape[1:])

            return jax.tree.map(first, tree)
        return tree

    def shard(self, tree):
        """Splits a global batch (leading axis B) across devices."""
        if self.mode == "pmap":

            def split(x):
                if x.shape[0] % self.num_devices:
                    raise ValueError(
                        f"batch of {x.shape[0]} rows is not divisible by {self.num_devices} devices"
                    )
                return x.reshape(self.num_devices, x.shape[0] // self.num_devices, *x.shape[1:])

            return jax.device_put(jax.tree.map(split, tree), NamedSharding(self.mesh, P(AXIS)))
        sharding = NamedSharding(self.mesh, P(self.batch_axes))
        if jax.process_count() > 1:
            # Every process holds the global batch; each places only its own rows.
            return jax.tree.map(lambda x: _global_array(x, sharding), tree)
        return jax.device_put(tree, sharding)

    def unshard(self, tree):
        """The global batch back from a sharded value."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)
        if jax.process_count() > 1:
            # Other processes' rows live on their devices: gather them (host numpy).
            from jax.experimental import multihost_utils

            return jax.tree.map(
                lambda x: multihost_utils.process_allgather(x, tiled=True)
                if isinstance(x, jax.Array) and not x.is_fully_addressable else x, tree)
        return tree

    # ---- compilation -----------------------------------------------------
    def compile(
        self,
        fn: Callable,
        in_kinds: Sequence[str],
        out_kinds,
        *,
        donate_argnums: Sequence[int] = (),
        static_argnums: Sequence[int] = (),
    ) -> Callable:
        """Compiles `fn` (written per shard, collectives over `batch_axes()`) for this mode.

        `in_kinds[i]` is REP for a replicated argument or SHARD for one split
        along the batch; `out_kinds` is the same for the outputs (a pytree of
        REP/SHARD strings matching the output structure's top level). In mesh
        mode a REP value's float leaves are split along fsdp (see `fsdp`): `fn`
        sees them as `fsdp.Shard` boxes, which Flax gathers when a module reads
        them; reduce gradients with `mean_grads`, not `pmean`.
        """
        in_kinds = tuple(in_kinds)
        for k in jax.tree.leaves(out_kinds) + list(in_kinds):
            if k not in (REP, SHARD):
                raise ValueError(f"unknown placement {k!r}")
        if self.mode == "pmap":
            return jax.pmap(
                fn,
                axis_name=AXIS,
                devices=self.devices,
                donate_argnums=tuple(donate_argnums),
                static_broadcasted_argnums=tuple(static_argnums),
            )
        return _MeshStep(self, fn, in_kinds, out_kinds, tuple(donate_argnums))


class _MeshStep:
    """`fn` under `jit(shard_map)` on the ("data", "fsdp") mesh, built per argument layout.

    REP arguments are split by `fsdp.param_specs` (from their shapes) and boxed
    inside; a REP output keeps a box's split (the optimizer passes boxes
    through) and is otherwise replicated. Output specs therefore depend on
    what `fn` returns: the first call per layout traces `fn` once abstractly
    to read them, then compiles for real.
    """

    def __init__(self, dp: DataParallel, fn: Callable, in_kinds, out_kinds, donate_argnums):
        self.dp, self.fn = dp, fn
        self.in_kinds, self.out_kinds, self.donate_argnums = in_kinds, out_kinds, donate_argnums
        self._compiled: dict = {}

    def _in_specs(self, args) -> tuple:
        if len(args) != len(self.in_kinds):
            raise ValueError(f"step takes {len(self.in_kinds)} arguments, got {len(args)}")
        return tuple(fsdp_lib.param_specs(a, self.dp.fsdp) if k == REP
                     else P(self.dp.batch_axes) for k, a in zip(self.in_kinds, args))

    def _build(self, in_specs, args):
        dp, recorded = self.dp, {}

        def body(*local_args):
            with _tracing_with(dp.batch_axes):
                boxed = [fsdp_lib.box(a, s) if k == REP else a
                         for k, a, s in zip(self.in_kinds, local_args, in_specs)]
                local, recorded["specs"] = fsdp_lib.unbox_local(self.fn(*boxed))
            return local

        def mapped(out_specs):
            return jax.shard_map(body, mesh=dp.mesh, in_specs=in_specs, out_specs=out_specs,
                                 check_vma=False)

        by_kind = jax.tree.map(lambda k: P() if k == REP else P(dp.batch_axes), self.out_kinds)
        jax.eval_shape(mapped(by_kind), *args)  # records the output boxes' splits
        out_specs = jax.tree.map(lambda k, specs: specs if k == REP else P(dp.batch_axes),
                                 self.out_kinds, recorded["specs"])
        return jax.jit(mapped(out_specs), donate_argnums=self.donate_argnums)

    def _get(self, args):
        in_specs = self._in_specs(args)
        key = jax.tree.flatten(in_specs, is_leaf=lambda x: isinstance(x, P))
        key = (tuple(key[0]), key[1])
        if key not in self._compiled:
            self._compiled[key] = self._build(in_specs, args)
        return self._compiled[key]

    def __call__(self, *args):
        return self._get(args)(*args)

    def lower(self, *args):
        """`jax.jit(...).lower(*args)` of the step for these arguments (memory analysis)."""
        return self._get(args).lower(*args)


def _is_key(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _global_array(x, sharding: NamedSharding) -> jax.Array:
    """A global array with `sharding` from a value every process holds in full.

    Multi-process placement: `jax.device_put` rejects shardings over other
    processes' devices, so each process builds its addressable shards from
    its host copy. Typed PRNG keys travel as their key data.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding).copy()  # already global: reshard, fresh buffers
    if _is_key(x):
        data = _global_array(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def fold_in_device(rng: jax.Array) -> jax.Array:
    """A per-device key: `fold_in(rng, axis_index)` of the step's one base key."""
    return jax.random.fold_in(rng, axis_index())


def global_row_offset(local_batch: int) -> jax.Array:
    """Index of this shard's first row in the global batch (inside a mapped step).

    Per-row keys `fold_in(key, row_offset + i)` make sampling independent of
    how the batch is split across devices.
    """
    return axis_index() * local_batch


def host_complete(tree):
    """`tree` with every array whose value spans other processes' devices (FSDP
    splits across hosts) gathered to a full host copy, for export.

    A collective under multi-process (`process_allgather`): every process must
    call it, in the same order. Single process: `tree` unchanged.
    """
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    def full(x):
        if (isinstance(x, jax.Array) and not x.is_fully_addressable
                and not x.is_fully_replicated and not _is_key(x)):
            return multihost_utils.process_allgather(x, tiled=True)
        return x

    return jax.tree.map(full, tree)


@functools.lru_cache(maxsize=None)
def process_is_main() -> bool:
    return jax.process_index() == 0

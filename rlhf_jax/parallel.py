"""Data parallelism: one step function, run under `jax.pmap` or `jit(shard_map)` on a mesh.

A step is written once for the per-device shard of the batch, with explicit
collectives over the axis named `AXIS` (`lax.pmean` of gradients and metrics,
`lax.psum` for global statistics). `DataParallel` runs it:

- `mode="pmap"`: replicated values carry a leading device axis (the classic
  pmap layout); batches are reshaped [B, ...] -> [D, B/D, ...].
- `mode="mesh"`: a 1-D `Mesh` over the devices with axis `AXIS`; the step runs
  as `jit(shard_map(...))`; replicated values are ordinary global arrays with a
  replicated `NamedSharding`, batches are sharded along `AXIS`.

Either way the host sees the same global batch, so results do not depend on
the device count beyond float noise. Multi-host: `initialize_distributed()`
before anything touches the devices; each process feeds its local slice.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "batch"
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


def axis_index() -> jax.Array:
    return jax.lax.axis_index(AXIS)


def pmean(tree):
    return jax.lax.pmean(tree, AXIS)


def psum(tree):
    return jax.lax.psum(tree, AXIS)


def all_gather(tree):
    """Concatenates every device's shard along axis 0 (the global batch)."""
    return jax.tree.map(lambda x: jax.lax.all_gather(x, AXIS, tiled=True), tree)


class DataParallel:
    """Places data and compiles steps for one of the two data-parallel modes."""

    def __init__(self, mode: str = "pmap", num_devices: int | None = None):
        if mode not in MODES:
            raise ValueError(f"parallel.mode={mode!r}: expected one of {MODES}")
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
        self.mode = mode
        self.devices = devices
        self.num_devices = len(devices)
        self.mesh = Mesh(np.asarray(devices), (AXIS,))

    def check_divisible(self, size: int, field: str) -> None:
        if size % self.num_devices:
            raise ValueError(
                f"{field}={size} is not divisible by the device count {self.num_devices}"
            )

    # ---- placement -------------------------------------------------------
    def replicate(self, tree):
        if self.mode == "pmap":
            # A leading device axis, one copy per device.
            # Per-device copies placed directly (no compiled broadcast per leaf).
            devices = list(self.mesh.devices.flat)
            sharding = NamedSharding(self.mesh, P(AXIS))

            def stack(x):
                if _is_key(x):
                    return jax.random.wrap_key_data(stack(jax.random.key_data(x)),
                                                    impl=jax.random.key_impl(x))
                copies = [jax.device_put(x, d)[None] if isinstance(x, jax.Array)
                          else jax.device_put(np.asarray(x)[None], d) for d in devices]
                shape = (len(devices), *np.shape(x))
                return jax.make_array_from_single_device_arrays(shape, sharding, copies)

            return jax.tree.map(stack, tree)
        sharding = NamedSharding(self.mesh, P())
        if jax.process_count() > 1:
            # Built from host values: fresh buffers on this process's devices.
            return jax.tree.map(lambda x: _global_array(x, sharding), tree)
        # Always fresh buffers: a replicated value may be donated to a step, and
        # must not alias an input the caller still holds (e.g. the reference
        # policy sharing the initial policy's arrays).
        placed = jax.device_put(tree, sharding)
        return jax.tree.map(lambda x: x.copy(), placed)

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
        sharding = NamedSharding(self.mesh, P(AXIS))
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
        """Compiles `fn` (written per shard, collectives over AXIS) for this mode.

        `in_kinds[i]` is REP for a replicated argument or SHARD for one split
        along the batch; `out_kinds` is the same for the outputs (a pytree of
        REP/SHARD strings matching the output structure's top level).
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
        spec = lambda k: P() if k == REP else P(AXIS)  # noqa: E731
        in_specs = tuple(spec(k) for k in in_kinds)
        out_specs = jax.tree.map(spec, out_kinds)
        mapped = jax.shard_map(
            fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )
        return jax.jit(mapped, donate_argnums=tuple(donate_argnums))


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
    """A per-device key: `fold_in(rng, axis_index)` (STYLE.md: one base key)."""
    return jax.random.fold_in(rng, axis_index())


def global_row_offset(local_batch: int) -> jax.Array:
    """Index of this shard's first row in the global batch (inside a mapped step).

    Per-row keys `fold_in(key, row_offset + i)` make sampling independent of
    how the batch is split across devices.
    """
    return axis_index() * local_batch


def tree_size(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


@functools.lru_cache(maxsize=None)
def process_is_main() -> bool:
    return jax.process_index() == 0


def global_batch_size(local: int) -> int:
    return local * jax.process_count()


def to_host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))



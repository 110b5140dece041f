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
import jax.numpy as jnp
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
            n = self.num_devices
            stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), tree)
            return jax.device_put(stacked, NamedSharding(self.mesh, P(AXIS)))
        # Always fresh buffers: a replicated value may be donated to a step, and
        # must not alias an input the caller still holds (e.g. the reference
        # policy sharing the initial policy's arrays).
        placed = jax.device_put(tree, NamedSharding(self.mesh, P()))
        return jax.tree.map(lambda x: x.copy(), placed)

    def unreplicate(self, tree):
        """A host-side view of a replicated value (device 0's copy under pmap)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x[0], tree)
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
        return jax.device_put(tree, NamedSharding(self.mesh, P(AXIS)))

    def unshard(self, tree):
        """The global batch back from a sharded value."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)
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



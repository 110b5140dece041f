"""Fully sharded data parallelism (FSDP) for steps written per shard.

`parallel.DataParallel(mode="mesh", fsdp=F)` lays the devices out as a 2-D
`Mesh` with axes `("data", "fsdp")`. The batch is split over both axes (every
device holds distinct rows, and the steps' collectives run over the pair, so
whitening, the minibatch permutation and gradient means stay global); every
float leaf of the params and optimizer state is split along the `fsdp` axis
on one of its dimensions, the rule below computed from the leaf's shape.

Inside a `shard_map` step a split leaf is a `Shard` box around the device's
slice. Flax unboxes a param when a module reads it (`Scope.param`), and
`Shard.unbox` all-gathers it over `fsdp` right there: weights are gathered
where they are used, one block at a time, and under `model.remat` gathered
again in the backward pass instead of being kept. The gather's transpose is a
reduce-scatter, so the gradient of a split leaf arrives already summed over
the `fsdp` axis and split like the leaf; `mean_grads` finishes the mean over
the rest of the batch axes. Optimizers see boxes as pytree nodes and update
the slices elementwise, so optimizer state never exists unsplit. (Adam is
elementwise; a transform over the whole gradient, such as global-norm
clipping, would see only the slices and need a `psum` over `fsdp`. The papers
clip nothing.)

Nothing here allocates: specs come from shapes (`jax.eval_shape` trees work).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA, FSDP = "data", "fsdp"


def shard_dim(shape, dtype, fsdp: int) -> int | None:
    """The dimension a leaf is split along on an `fsdp`-way axis, or None (replicated).

    The largest dimension divisible by `fsdp` (the first on ties). Replicated:
    `fsdp == 1`, scalars, non-float leaves (PRNG keys, step counters) and
    leaves with no divisible dimension (e.g. GPT-2's 50257-row embedding is
    split along its width instead).
    """
    if fsdp <= 1 or len(shape) == 0 or not jnp.issubdtype(dtype, jnp.floating):
        return None
    best = None
    for d, size in enumerate(shape):
        if size % fsdp == 0 and (best is None or size > shape[best]):
            best = d
    return best


def partition_spec(x, fsdp: int) -> P:
    """The `PartitionSpec` of one leaf (an array, `ShapeDtypeStruct` or Python scalar)."""
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    d = shard_dim(np.shape(x), dtype, fsdp)
    if d is None:
        return P()
    return P(*([None] * d), FSDP)


def param_specs(tree, fsdp: int):
    """`PartitionSpec`s for every leaf of `tree` (arrays or `ShapeDtypeStruct`s)."""
    return jax.tree.map(lambda x: partition_spec(x, fsdp), tree)


def param_shardings(tree, mesh, fsdp: int):
    """`NamedSharding`s on `mesh` for every leaf of `tree`."""
    return jax.tree.map(lambda x: NamedSharding(mesh, partition_spec(x, fsdp)), tree)


def _is_spec(x) -> bool:
    return isinstance(x, P)


def _spec_dim(spec: P) -> int | None:
    return list(spec).index(FSDP) if FSDP in tuple(spec) else None


class Shard(flax.struct.PyTreeNode, meta.AxisMetadata):
    """One device's slice of a leaf split along `dim` over mesh axis `axis`.

    `unbox()` (called by Flax when a module reads the param) all-gathers the
    full leaf; its gradient w.r.t. the slice is the reduce-scatter (sum over
    `axis`) of the full gradient.
    """

    value: Any
    dim: int = flax.struct.field(pytree_node=False)
    axis: str = flax.struct.field(pytree_node=False, default=FSDP)

    def unbox(self):
        return jax.lax.all_gather(self.value, self.axis, axis=self.dim, tiled=True)

    def replace_boxed(self, val):
        return self.replace(value=val)

    def add_axis(self, index, params):
        raise NotImplementedError("FSDP params do not go through nn.scan / nn.vmap")

    def remove_axis(self, index, params):
        raise NotImplementedError("FSDP params do not go through nn.scan / nn.vmap")


def is_shard(x) -> bool:
    return isinstance(x, Shard)


def box(local_tree, specs):
    """Wraps the split leaves of a per-device tree in `Shard` boxes (inside a step)."""
    def wrap(spec, x):
        d = _spec_dim(spec)
        return x if d is None else Shard(x, dim=d)

    return jax.tree.map(wrap, specs, local_tree, is_leaf=_is_spec)


def unbox_local(tree):
    """`(local_tree, specs)`: boxes replaced by their slices, and the spec of every leaf
    (`P()` for an unboxed one). The inverse of `box` on a step's outputs."""
    local = jax.tree.map(lambda x: x.value if is_shard(x) else x, tree, is_leaf=is_shard)
    specs = jax.tree.map(
        lambda x: P(*([None] * x.dim), x.axis) if is_shard(x) else P(), tree, is_leaf=is_shard)
    return local, specs


def member_view(tree, *, inside: bool):
    """A step's boxes as seen inside (`inside=True`) or outside a `jax.vmap` over a
    leading member axis: a `Shard`'s `dim` counts that axis outside, not inside.
    ValueError if a leaf is split along the member axis itself."""
    def shift(x):
        if not is_shard(x):
            return x
        dim = x.dim - 1 if inside else x.dim + 1
        if dim < 0:
            raise ValueError("a leaf is split along fsdp on its member axis; use a member "
                             "count that parallel.fsdp does not divide")
        return x.replace(dim=dim)

    return jax.tree.map(shift, tree, is_leaf=is_shard)


def mean_grads(grads, batch_axes):
    """The mean of per-device gradients over every batch shard (inside a step).

    A plain leaf is `pmean`-ed over `batch_axes`. A `Shard` leaf's gradient is
    already the sum over its `fsdp` axis (the transpose of its gather): it is
    summed over the remaining batch axes and divided by the number of shards.
    """
    axes = tuple(batch_axes) if isinstance(batch_axes, (tuple, list)) else (batch_axes,)
    num_shards = 1
    for a in axes:
        num_shards *= jax.lax.axis_size(a)

    def reduce(g):
        if not is_shard(g):
            return jax.lax.pmean(g, axes)
        rest = tuple(a for a in axes if a != g.axis)
        summed = jax.lax.psum(g.value, rest) if rest else g.value
        return g.replace(value=summed / num_shards)

    return jax.tree.map(reduce, grads, is_leaf=is_shard)

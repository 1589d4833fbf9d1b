"""Row-parallel computations: each model-axis device computes a partial sum, one collective.

Under plain GSPMD a matmul whose contracting axis is sharded is all-reduced where XLA puts
it: right after the dot, in the dot's float32 output type, and, for a loop over experts, once
per expert. Here each device runs `fn` on its own slices (`shard_map`), sums everything
locally, and one collective sums fn's output over the model axis, in the activation dtype:
an all-reduce, or, where the output's rows are split over the model axis (the residual
stream's sequence-parallel layout, grok.parallel.sharding), a reduce-scatter that leaves each
device its rows of the sum (the same sums; 1/n of the bytes written). Needs the mesh in
context (the runner traces under `jax.sharding.use_abstract_mesh`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.sharding import PartitionSpec as P

from grok.axes import MODEL_AXIS


def model_axis_size() -> int:
    """Devices along the model axis of the mesh in context (1 without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty or MODEL_AXIS not in mesh.axis_names else mesh.shape[MODEL_AXIS]


def _names(entry: Any) -> tuple:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def without_model_axis(entry: Any) -> Any:
    """A PartitionSpec entry (None, an axis, or a tuple of axes) less the model axis: the
    rows a device computes before a reduce-scatter over the model axis splits them."""
    rest = tuple(a for a in _names(entry) if a != MODEL_AXIS)
    return None if not rest else rest[0] if len(rest) == 1 else rest


def sum_over_model_axis(fn: Callable, in_specs: tuple, *args, out_specs: P = P()) -> jax.Array:
    """fn(*local slices) on every model-axis device, summed over the model axis.

    out_specs lays the sum out over the mesh. Where it names the model axis on a dimension
    (last among that dimension's axes), fn gives that dimension whole (split only by the
    axes before it, as in_specs split the rows) and one reduce-scatter along it leaves each
    device its slice of the sum; otherwise one all-reduce."""
    scatter = [i for i, entry in enumerate(out_specs) if MODEL_AXIS in _names(entry)]
    if scatter and _names(out_specs[scatter[0]])[-1] != MODEL_AXIS:
        raise ValueError(f"out_specs {out_specs}: the model axis must be its dimension's last")

    def local(*a):
        if scatter:
            return jax.lax.psum_scatter(fn(*a), MODEL_AXIS, scatter_dimension=scatter[0],
                                        tiled=True)
        return jax.lax.psum(fn(*a), MODEL_AXIS)
    return jax.shard_map(local, in_specs=in_specs, out_specs=out_specs, check_vma=False)(*args)


def gather_over_model_axis(x: jax.Array, rows: Any) -> jax.Array:
    """x, its leading axis split over `rows` (a PartitionSpec entry naming the model axis
    last), with every model-axis device's rows: one all-gather, in x's dtype. (A sharding
    constraint would leave GSPMD free to gather x's producer instead, e.g. the float32
    input of a bf16 convert: twice the bytes.)"""
    if MODEL_AXIS not in _names(rows):
        return x
    if _names(rows)[-1] != MODEL_AXIS:
        raise ValueError(f"rows {rows}: the model axis must be the last")
    gather = lambda x: jax.lax.all_gather(x, MODEL_AXIS, axis=0, tiled=True)
    return jax.shard_map(gather, in_specs=P(rows), out_specs=P(without_model_axis(rows)),
                         check_vma=False)(x)

"""Row-parallel computations: each model-axis device computes a partial sum, one all-reduce.

Under plain GSPMD a matmul whose contracting axis is sharded is all-reduced where XLA puts
it: right after the dot, in the dot's float32 output type, and, for a loop over experts, once
per expert. Here each device runs `fn` on its own slices (`shard_map`), sums everything
locally, and the one all-reduce happens on fn's output, in the activation dtype. Needs the
mesh in context (the runner traces under `jax.sharding.use_abstract_mesh`).
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import PartitionSpec as P

from grok.axes import MODEL_AXIS


def model_axis_size() -> int:
    """Devices along the model axis of the mesh in context (1 without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty or MODEL_AXIS not in mesh.axis_names else mesh.shape[MODEL_AXIS]


def sum_over_model_axis(fn: Callable, in_specs: tuple, *args, out_specs: P = P()) -> jax.Array:
    """fn(*local slices) on every model-axis device, summed: one all-reduce of fn's output
    (laid out as `out_specs` over the other mesh axes)."""
    local = lambda *a: jax.lax.psum(fn(*a), MODEL_AXIS)
    return jax.shard_map(local, in_specs=in_specs, out_specs=out_specs, check_vma=False)(*args)

"""Where every array lives: the device mesh, and one table of partition rules.

Parameters and caches carry *logical* axis names ("embed", "ffn", "heads", ...), given per
parameter by `PARAM_RULES`; `LOGICAL_TO_MESH` maps each logical name to mesh axes. The
defaults reproduce Grok-1's partition rules. A parameter no rule matches is an error.

A mesh axis is used for a dimension only if it divides it (`fit_spec`): the same rules run on
meshes of 1, 2, 4 or 8 devices whatever the kv-head count or scale-group count (the
reference requires 8-way model parallelism). Quantization scales follow their weight's
output axis and are replicated along the scale-group axis (they are ~1/K the weight's size).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from grok.axes import DATA_AXIS, MESH_AXES, MODEL_AXIS
from grok.ops.quantization import QuantizedWeight8bit


LOGICAL_TO_MESH: dict[str, Any] = {
    "layers": None,
    "experts": None,
    # The table [V, D] is split over V, not D: a lookup then gives a residual stream that is
    # replicated over the model axis (one all-reduce, outside the layers), and each layer
    # needs only its two all-reduces (after attention's output projection, after the MoE).
    "vocab": MODEL_AXIS,
    "embed": DATA_AXIS,                      # weights' residual dimension (Grok-1: "data")
    "embed_table": DATA_AXIS,                # the embedding table's D dimension
    "residual": None,                        # activations' D: replicated over the model axis
    # The residual stream's rows between layers (Megatron-style sequence parallelism): over
    # the model axis too, where it divides them. The row-split matmuls (attention's output
    # projection, the MoE's down projection) then end in a reduce-scatter, not an all-reduce,
    # each device norms and adds only its rows, and one all-gather of normed rows precedes
    # the column-split ones (query/key/value, the MoE): the per-layer activation traffic that
    # does not shrink with the model axis under a replicated stream. A model axis that does
    # not divide the rows (one-slot decode, a one-prompt prefill) leaves them replicated.
    "residual_rows": (DATA_AXIS, MODEL_AXIS),
    "heads": MODEL_AXIS,
    "ffn": MODEL_AXIS,
    "router_experts": None,
    "norm": None,
    "batch": DATA_AXIS,
    "cache_seq": None,
    "kv_heads": MODEL_AXIS,
    "head_dim": None,
}

_LAYER = r"^transformer/decoder_layer/"
# The embedding table [V, D] (the input lookup reads it by this layout too)
TABLE_AXES = ("vocab", "embed_table")
# (regex over "module/name", logical axes of the parameter's dimensions)
PARAM_RULES: tuple[tuple[str, tuple], ...] = (
    (_LAYER + r"multi_head_attention/(query|key|value)/w$", ("layers", "embed", "heads")),
    (_LAYER + r"multi_head_attention/linear/w$", ("layers", "heads", "embed")),
    (_LAYER + r"moe/(linear|linear_v)/w$", ("layers", "experts", "embed", "ffn")),
    (_LAYER + r"moe/linear_1/w$", ("layers", "experts", "ffn", "embed")),
    (_LAYER + r"router/w$", ("layers", "embed", "router_experts")),
    (_LAYER + r"rms_norm(_\d+)?/scale$", ("layers", "norm")),
    (r"^language_model/in_out_embed/embeddings$", TABLE_AXES),
    (r"^language_model/rms_norm/scale$", ("norm",)),
)

# The residual stream x [B, T, D] between sub-layers (rows split over the model axis too)
RESIDUAL_AXES = ("residual_rows", None, "residual")
# Output logits [B, T, V] as sampling reads them: whole rows on every model-axis device
LOGITS_AXES = ("batch", None, None)
# Memory.k / Memory.v [L, B, K, S, d], Memory.step [B], Memory.valid [B, S]
CACHE_AXES = ("layers", "batch", "kv_heads", "cache_seq", "head_dim")
STEP_AXES = ("batch",)
VALID_AXES = ("batch", "cache_seq")


def make_mesh(local_mesh_config: Sequence[int], between_hosts_config: Sequence[int] = (1, 1),
              devices=None) -> Mesh:
    """A (data, model) mesh: `local_mesh_config` per process, tiled by `between_hosts_config`."""
    local, hosts = tuple(local_mesh_config), tuple(between_hosts_config)
    for name, cfg in (("local_mesh_config", local), ("between_hosts_config", hosts)):
        if len(cfg) != 2 or any(not isinstance(n, int) or n < 1 for n in cfg):
            raise ValueError(f"{name} must be two positive ints (data, model), got {cfg}")
    devices = list(jax.devices() if devices is None else devices)
    num_processes = jax.process_count()
    if math.prod(hosts) != num_processes:
        raise ValueError(f"between_hosts_config {hosts} spans {math.prod(hosts)} processes, "
                         f"but this job has {num_processes}")
    if num_processes > 1:
        if math.prod(local) != jax.local_device_count():
            raise ValueError(f"local_mesh_config {local} needs {math.prod(local)} devices per "
                             f"process; this process has {jax.local_device_count()}")
        grid = mesh_utils.create_hybrid_device_mesh(local, hosts, devices, process_is_granule=True)
        return Mesh(grid, MESH_AXES)
    shape = (local[0] * hosts[0], local[1] * hosts[1])
    if math.prod(shape) > len(devices):
        raise ValueError(f"mesh {shape} needs {math.prod(shape)} devices; {len(devices)} available")
    grid = np.array(devices[: math.prod(shape)]).reshape(shape)
    return Mesh(grid, MESH_AXES)


def fit_spec(shape: Sequence[int], axes: Sequence[Any], mesh: Mesh) -> P:
    """PartitionSpec for `shape` from mesh axes per dim, dropping axes that do not divide it."""
    spec = []
    for size, mesh_axes in zip(shape, axes):
        names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
        names = tuple(n for n in names if mesh.shape[n] > 1)
        while names and size % math.prod(mesh.shape[n] for n in names):
            names = names[:-1]  # keep the longest prefix of the axes that divides the size
        spec.append(None if not names else names[0] if len(names) == 1 else names)
    return P(*spec)


def logical_sharding(shape: Sequence[int], logical_axes: Sequence[str | None], mesh: Mesh,
                     rules: dict[str, Any] = LOGICAL_TO_MESH) -> NamedSharding:
    """The sharding of an array with these logical axes (`mesh` may be an abstract mesh)."""
    if len(shape) != len(logical_axes):
        raise ValueError(f"shape {tuple(shape)} has {len(shape)} dims, axes {logical_axes} "
                         f"name {len(logical_axes)}")
    mesh_axes = [None if a is None else rules[a] for a in logical_axes]
    return NamedSharding(mesh, fit_spec(shape, mesh_axes, mesh))


def residual_rows(rows: int) -> Any:
    """The mesh axes (a PartitionSpec entry) that split the residual stream's `rows` leading
    rows under the mesh in context (None: replicated, or no mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    return fit_spec((rows,), (LOGICAL_TO_MESH["residual_rows"],), mesh)[0]


def param_logical_axes(path: str) -> tuple:
    for pattern, axes in PARAM_RULES:
        if re.search(pattern, path):
            return axes
    raise ValueError(f"no partition rule matches parameter {path!r}; add one to grok.parallel.sharding.PARAM_RULES")


def param_shardings(params: dict, mesh: Mesh, rules: dict[str, Any] = LOGICAL_TO_MESH) -> dict:
    """Shardings with the structure of `params` (arrays or ShapeDtypeStructs, QW leaves)."""
    out: dict = {}
    for module, leaves in params.items():
        out[module] = {}
        for name, leaf in leaves.items():
            axes = param_logical_axes(f"{module}/{name}")
            if isinstance(leaf, QuantizedWeight8bit):
                # scales [.., G, N]: the weight's axes, replicated along the group axis
                scale_axes = (*axes[:-2], None, axes[-1])
                out[module][name] = QuantizedWeight8bit(
                    logical_sharding(leaf.weight.shape, axes, mesh, rules),
                    logical_sharding(leaf.scales.shape, scale_axes, mesh, rules))
            else:
                out[module][name] = logical_sharding(leaf.shape, axes, mesh, rules)
    return out


def memory_shardings(memory, mesh: Mesh, rules: dict[str, Any] = LOGICAL_TO_MESH):
    """Shardings for a `grok.model.Memory` (or its ShapeDtypeStructs)."""
    return type(memory)(
        logical_sharding(memory.k.shape, CACHE_AXES, mesh, rules),
        logical_sharding(memory.v.shape, CACHE_AXES, mesh, rules),
        logical_sharding(memory.step.shape, STEP_AXES, mesh, rules),
        logical_sharding(memory.valid.shape, VALID_AXES, mesh, rules))


def batch_sharding(shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    """Per-slot arrays [B, ...]: the batch over the data axis, the rest replicated."""
    return logical_sharding(shape, ("batch",) + (None,) * (len(shape) - 1), mesh)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())

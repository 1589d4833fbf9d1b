"""Router and top-k Mixture-of-Experts with gelu-gated experts.

Three implementations with the same numbers (tests/test_model.py checks they agree):
- `dense` (moe_impl="dense"): the readable one. Every expert runs on every token, then the
  selected outputs are combined. This is the reference's arithmetic and costs E/k times the
  needed work.
- `routed` (moe_impl="sparse", at most moe_block_rows rows: decode): each distinct selected
  expert, at most min(E, M*k) of them, is indexed on the outermost axis of the layer's stack
  (`weight[e]`, a slice XLA reads in place) and runs on all M rows; rows that did not choose
  it are excluded. One batch-1 step reads exactly k experts' weights, with no control flow
  (a `lax.cond` per expert is a device->host round trip on GPU, and control-flow operands
  make XLA copy the whole [E, D, F] stack).
- `grouped` (moe_impl="sparse", more rows: prefill): token-expert pairs sorted by expert and
  one grouped matmul per weight (`jax.lax.ragged_dot`, the MaxText/megablox shape): k/E of
  the dense FLOPs, no loop over experts.

On GPUs the sparse MoE runs grok.kernels' fused Pallas kernels instead of `routed` and
`grouped` (RuntimeConfig.kernels "auto": chosen where the step is lowered for CUDA, by
`jax.lax.platform_dependent`, so a deviceless compile for a GPU picks them too). They read
the selected experts in place from every layer's stack [L, E, ...] with the layer index as an
operand (`ExpertStacks`): a per-layer slice of the scanned stack would be a copy of all E
experts on GPU. On CPU XLA's paths run; kernels="interpret" runs the kernels there.

Unrouted rows are excluded with `where`, never multiplied by a 0 gate: NaN in an expert no
row of a request chose cannot reach that request (NaN * 0 is NaN).

Glossary: M tokens (B*T flattened), D emb_size, F ffn_size, E experts, k selected experts,
P token-expert pairs (M*k), U experts a decode step runs (min(E, M*k)).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import haiku as hk
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from grok.config import TransformerConfig
from grok.runtime_config import RuntimeConfig
from grok.ops.layers import no_init
from grok.ops.model_parallel import model_axis_size, sum_over_model_axis, without_model_axis
from grok.kernels import fused_moe, supported
from grok.ops.quantization import QuantizedWeight8bit, matmul_dtype, qmatmul, qmatmul_experts
from grok.axes import MODEL_AXIS
from grok.parallel.sharding import LOGICAL_TO_MESH, param_logical_axes

# The experts' parameters: gelu branch [E, D, F], linear branch [E, D, F], down projection [E, F, D]
EXPERT_WEIGHTS = ("linear", "linear_v", "linear_1")
_MOE_PATH = "transformer/decoder_layer/moe/"


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ExpertStacks:
    """Every layer's expert weights, [L, E, D, F] / [L, E, D, F] / [L, E, F, D], outside the
    layer scan: the GPU kernels index them with the layer number (no per-layer slice exists)."""

    gate: QuantizedWeight8bit
    value: QuantizedWeight8bit
    down: QuantizedWeight8bit


def expert_stacks(params: dict) -> ExpertStacks:
    """The stacked expert weights of a parameter tree (grok.model.build_forward's params)."""
    return ExpertStacks(*(params[_MOE_PATH + name]["w"] for name in EXPERT_WEIGHTS))


class Router(hk.Module):
    """Softmax router in float32: gates [M, k] (not renormalised) and expert ids [M, k]."""

    def __init__(self, config: TransformerConfig, name: str = "router"):
        super().__init__(name=name)
        self.config = config

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.config
        w = hk.get_parameter("w", [x.shape[-1], c.num_experts], jnp.float32, init=no_init)
        logits = jnp.einsum("md,de->me", x.astype(jnp.float32), w.astype(jnp.float32))
        probs = jax.nn.softmax(logits, axis=-1)                                  # [M, E]
        return jax.lax.top_k(probs, c.num_selected_experts)


def _expert_weight(module: hk.Module, name: str, shape) -> QuantizedWeight8bit:
    with hk.name_scope(name):
        w = hk.get_parameter("w", shape, jnp.int8, init=no_init)
    if not isinstance(w, QuantizedWeight8bit):
        raise TypeError(f"{module.module_name}/{name}/w must be a QuantizedWeight8bit")
    return w


def choose_impl(moe_impl: str, block_rows: int, rows: int):
    """The MoE function for `rows` tokens: dense, routed (decode sizes) or grouped (prefill)."""
    if moe_impl == "dense":
        return _dense
    return _routed if rows <= block_rows else _grouped


class MoELayer(hk.Module):
    def __init__(self, config: TransformerConfig, runtime: RuntimeConfig, name: str = "moe"):
        super().__init__(name=name)
        self.config = config
        self.runtime = runtime   # moe_impl, moe_block_rows

    def __call__(self, x: jax.Array, gates: jax.Array, experts: jax.Array,
                 stacks: Optional[ExpertStacks] = None, layer: jax.Array | int = 0,
                 out_rows: Any = None) -> jax.Array:
        """x [M, D], gates/experts [M, k] -> [M, D]. `stacks` and `layer` (this layer's index in
        them) let the GPU kernels read the experts in place; without them the kernels read
        this layer's weights. `out_rows`: the mesh axes the output's rows are split over (the
        residual stream's, grok.parallel.sharding.residual_rows; None: replicated)."""
        c = self.config
        e, d, f = c.num_experts, c.emb_size, c.ffn_size
        w_gate = _expert_weight(self, "linear", [e, d, f])      # gelu branch   [E, D, F]
        w_value = _expert_weight(self, "linear_v", [e, d, f])   # linear branch [E, D, F]
        w_down = _expert_weight(self, "linear_1", [e, f, d])    # down proj     [E, F, D]
        moe_fn = choose_impl(self.runtime.moe_impl, self.runtime.moe_block_rows, x.shape[0])
        gates = gates.astype(x.dtype)    # the reference combines with bf16(gate)
        if moe_fn is _dense:
            return _dense(x, gates, experts, w_gate, w_value, w_down)
        kind = self.runtime.kernels

        def xla(x, gates, experts):
            return _per_model_shard(moe_fn, x, gates, experts, w_gate, w_value, w_down,
                                    out_rows=out_rows)

        def kernels(x, gates, experts):
            weights = ((w_gate, w_value, w_down) if stacks is None
                       else (stacks.gate, stacks.value, stacks.down))
            run = functools.partial(_fused, interpret=kind == "interpret")
            return _per_model_shard(run, x, gates, experts, *weights,
                                    jnp.asarray(0 if stacks is None else layer, jnp.int32),
                                    out_rows=out_rows)
        if kind == "xla" or (kind == "auto" and not _fits_kernels(w_gate, w_down)):
            return xla(x, gates, experts)
        if kind == "interpret":
            return kernels(x, gates, experts)
        return jax.lax.platform_dependent(x, gates, experts, cuda=kernels, default=xla)


def _fits_kernels(w_gate: QuantizedWeight8bit, w_down: QuantizedWeight8bit) -> bool:
    """Whether the GPU kernels' tiles fit each device's share of the weights."""
    n, d, f = model_axis_size(), w_gate.weight.shape[-2], w_gate.weight.shape[-1]
    if n > 1 and not (f % n or (w_down.num_groups > 1 and w_down.num_groups % n)):
        f, down_groups = f // n, max(1, w_down.num_groups // n)
    else:
        down_groups = w_down.num_groups
    return supported(d, f, w_gate.num_groups, down_groups)


def _fused(x, gates, experts, w_gate, w_value, w_down, layer, *, interpret: bool):
    return fused_moe(x, gates, experts, w_gate, w_value, w_down, layer=layer, interpret=interpret)


def _model_axis_specs(name: str, qw: QuantizedWeight8bit) -> QuantizedWeight8bit:
    """The weight's and scales' PartitionSpecs over the model axis only, from the sharding
    table (grok.parallel.sharding); scales [.., G, N] follow N, and their groups follow the
    contracting axis when there are several (each device holds its rows' groups)."""
    axes = param_logical_axes(f"{_MOE_PATH}{name}/w")[-qw.weight.ndim:]
    spec = tuple(MODEL_AXIS if LOGICAL_TO_MESH[a] == MODEL_AXIS else None for a in axes)
    groups = spec[-2] if qw.num_groups > 1 else None
    return QuantizedWeight8bit(P(*spec), P(*spec[:-2], groups, spec[-1]))


def _per_model_shard(moe_fn, x, gates, experts, w_gate, w_value, w_down, *rest, out_rows=None):
    """Runs moe_fn on each device's slice of the FFN axis, then one all-reduce, or one
    reduce-scatter where out_rows splits the output's rows over the model axis.

    Under plain GSPMD every selected expert's down projection ends in its own all-reduce;
    here each device sums its partial outputs over all experts first (grok.ops.model_parallel).
    Needs the FFN axis and down-projection scale groups divisible by the model axis;
    otherwise moe_fn runs as it is, with the same result. `rest` (replicated) goes to moe_fn.
    """
    n, groups = model_axis_size(), w_down.num_groups
    if n == 1 or w_gate.weight.shape[-1] % n or (groups > 1 and groups % n):
        return moe_fn(x, gates, experts, w_gate, w_value, w_down, *rest)
    specs = tuple(_model_axis_specs(name, w)
                  for name, w in zip(EXPERT_WEIGHTS, (w_gate, w_value, w_down)))
    rows = P(without_model_axis(out_rows))                   # the rows each device computes
    return sum_over_model_axis(moe_fn, (rows, rows, rows, *specs) + (P(),) * len(rest),
                               x, gates, experts, w_gate, w_value, w_down, *rest,
                               out_specs=P(out_rows))


def _select(qw: QuantizedWeight8bit, expert) -> QuantizedWeight8bit:
    """One expert's weight, indexed on the stack's outermost axis (read in place)."""
    return QuantizedWeight8bit(qw.weight[expert], qw.scales[expert])


def _ffn(x, w_gate: QuantizedWeight8bit, w_value: QuantizedWeight8bit, w_down: QuantizedWeight8bit):
    """One expert on rows x [M, D] -> [M, D]."""
    return qmatmul(jax.nn.gelu(qmatmul(x, w_gate)) * qmatmul(x, w_value), w_down)


def _dense(x, gates, experts, w_gate, w_value, w_down):
    """Every expert on every row, then each row's selected outputs summed."""
    e = w_gate.weight.shape[0]
    h = jax.nn.gelu(qmatmul_experts(x, w_gate)) * qmatmul_experts(x, w_value)    # [E, M, F]
    y = jnp.stack([qmatmul(h[i], _select(w_down, i)) for i in range(e)])         # [E, M, D]
    chosen = experts[None, :, :] == jnp.arange(e)[:, None, None]                 # [E, M, k]
    gate = jnp.sum(jnp.where(chosen, gates[None], 0), axis=-1)                   # [E, M]
    y = jnp.where(jnp.any(chosen, axis=-1)[..., None], y * gate[..., None], 0)   # [E, M, D]
    return jnp.sum(y, axis=0)


def _routed(x, gates, experts, w_gate, w_value, w_down):
    """Decode: each distinct selected expert (U = min(E, M*k) slots) on all M rows.

    The slots hold the selected experts in increasing order; slots past the number of distinct
    experts repeat the first one and are excluded, so no expert outside the selection is read.
    """
    m, k = experts.shape
    e = w_gate.weight.shape[0]
    units = min(e, m * k)
    picked = jnp.zeros((e,), bool).at[experts.reshape(-1)].set(True)              # [E]
    slots = jnp.flatnonzero(picked, size=units, fill_value=-1)                    # [U]
    in_use = slots >= 0
    slots = jnp.where(in_use, slots, slots[0])
    out = jnp.zeros(x.shape, jnp.float32)                                         # [M, D]
    for u in range(units):
        expert = slots[u]
        chosen = experts == expert                                                # [M, k]
        routed = jnp.any(chosen, axis=1) & in_use[u]                              # [M]
        gate = jnp.sum(jnp.where(chosen, gates, 0), axis=1)                       # [M]
        y = _ffn(x, *(_select(w, expert) for w in (w_gate, w_value, w_down)))    # [M, D]
        out = out + jnp.where(routed[:, None], y * gate[:, None], 0).astype(jnp.float32)
    return out.astype(x.dtype)


def _ragged_qmatmul(x, qw: QuantizedWeight8bit, group_sizes, pair_expert):
    """Rows x [P, K] sorted by expert, row p times expert pair_expert[p]'s weight -> [P, N].

    One ragged_dot per scale group (each group's partial sums take their own scales)."""
    e, k, n = qw.weight.shape
    g = qw.scales.shape[1]
    scales = qw.scales.astype(jnp.float32)[pair_expert]                           # [P, G, N]
    out = jnp.zeros((x.shape[0], n), jnp.float32)
    for i in range(g):
        part = slice(i * k // g, (i + 1) * k // g)
        dtype = matmul_dtype(x.dtype)
        partial = jax.lax.ragged_dot(x[:, part].astype(dtype), qw.weight[:, part].astype(dtype),
                                     group_sizes, preferred_element_type=jnp.float32)
        out = out + partial * scales[:, i]
    return out.astype(x.dtype)


def _grouped(x, gates, experts, w_gate, w_value, w_down):
    """Prefill: the M*k token-expert pairs sorted by expert, one grouped matmul per weight.

    Each pair is computed with its own expert only, so nothing else can reach its row."""
    m, k = experts.shape
    e = w_gate.weight.shape[0]
    flat = experts.reshape(-1)                                                    # [P]
    order = jnp.argsort(flat, stable=True)                                        # by expert
    pair_expert = flat[order]
    sizes = jnp.bincount(flat, length=e).astype(jnp.int32)                        # [E]
    rows = order // k                                                             # [P] token
    xs = x[rows]                                                                  # [P, D]
    h = (jax.nn.gelu(_ragged_qmatmul(xs, w_gate, sizes, pair_expert))
         * _ragged_qmatmul(xs, w_value, sizes, pair_expert))                      # [P, F]
    y = _ragged_qmatmul(h, w_down, sizes, pair_expert)                            # [P, D]
    y = y.astype(jnp.float32) * gates.reshape(-1)[order][:, None]
    return jnp.zeros(x.shape, jnp.float32).at[rows].add(y).astype(x.dtype)

"""Grouped-query attention with RoPE, a soft cap on scores and a per-row KV cache.

With a cache, a call may read only the first `kv_len` cache positions (a static length the
caller picks, e.g. a power-of-two bucket >= the longest live row): decode then costs what the
live context needs, not `sequence_len`. Scores and softmax are float32 (bf16 storage, float32
accumulation, as flash-attention kernels do); a query with no visible key attends to nothing
(output 0), so a slot's stale keys can never leak into a new request.

Glossary: B batch, T new tokens, S cache length (or T without a cache), H query heads,
K kv heads, G = H / K query heads per kv head, d key_size, D emb_size, L layers,
M rows (B*T), N a projection's output width.

The four projections: on GPUs a call of 2..DECODE_ROWS rows (a many-slot decode step) runs
them with grok.kernels.layer_matmul(s) on every layer's weight stack [L, K, N] with the layer
index as an operand (`ProjectionStacks`): XLA:GPU's GEMM would first copy the layer's weights
out of the scanned stack. Query, key and value are one kernel call (the rows read once). One
row takes QuantizedLinear's in-place reduction; CPU, more rows, and RuntimeConfig.kernels=
"xla" take QuantizedLinear; kernels="interpret" runs the kernel on CPU (tests).

Decode (one new token per row over a cache) on GPUs runs grok.kernels.decode_attention: one
kernel per layer reads the layer's key and value windows in place from the caches and keeps
scores and softmax in registers (XLA's form copies both windows and writes the scores);
kernels="xla" and windows the kernel does not take run `_decode_attention`, XLA's form.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from grok.axes import MODEL_AXIS
from grok.config import TransformerConfig
from grok.kernels import (decode_attention, decode_attention_fits, layer_matmul,
                          layer_matmul_fits, layer_matmuls)
from grok.ops.layers import QuantizedLinear, apply_rope
from grok.ops.model_parallel import model_axis_size, sum_over_model_axis, without_model_axis
from grok.ops.platform import on_cpu
from grok.ops.quantization import QuantizedWeight8bit, matmul_dtype
from grok.parallel.sharding import CACHE_AXES, logical_sharding, param_logical_axes, residual_rows
from grok.runtime_config import RuntimeConfig

MASKED_SCORE = -1e30  # the reference's fill for invisible keys (scores are float32)
PROJECTIONS = ("query", "key", "value", "linear")
_ATTENTION_PATH = "transformer/decoder_layer/multi_head_attention/"


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ProjectionStacks:
    """Every layer's projection weights [L, D, H*d], [L, D, K*d], [L, D, K*d], [L, H*d, D],
    outside the layer scan: the GPU kernel indexes them with the layer number."""

    query: QuantizedWeight8bit
    key: QuantizedWeight8bit
    value: QuantizedWeight8bit
    linear: QuantizedWeight8bit


def projection_stacks(params: dict) -> ProjectionStacks:
    """The stacked projection weights of a parameter tree (grok.model.build_forward's params)."""
    return ProjectionStacks(*(params[_ATTENTION_PATH + name]["w"] for name in PROJECTIONS))


def _model_axis_spec(name: str, qw: QuantizedWeight8bit) -> QuantizedWeight8bit:
    """A stack's and its scales' PartitionSpecs over the model axis only, from the sharding
    table; scales [L, G, N] follow N, and their groups follow K when there are several."""
    n = model_axis_size()
    axes = param_logical_axes(f"{_ATTENTION_PATH}{name}/w")
    spec = tuple(MODEL_AXIS if a == "heads" and size % n == 0 else None
                 for a, size in zip(axes, qw.weight.shape))
    groups = spec[1] if qw.num_groups > 1 and qw.num_groups % n == 0 else None
    return QuantizedWeight8bit(P(*spec), P(spec[0], groups, spec[2]))


def _column_projections(x: jax.Array, names: Sequence[str], stacks: Sequence[QuantizedWeight8bit],
                        layer: jax.Array, interpret: bool) -> tuple[jax.Array, ...]:
    """x [M, K] @ each stack[layer] (column-split over the model axis, or whole) by one
    layer_matmuls kernel per device (x's rows read once for all), in x's dtype."""
    def local(x, *ws_layer):
        *ws, layer = ws_layer
        return layer_matmuls(x, ws, layer, interpret=interpret)
    specs = [_model_axis_spec(name, w) for name, w in zip(names, stacks)]
    if model_axis_size() == 1:
        return local(x, *stacks, layer)
    out_specs = tuple(P(None, s.weight[2]) for s in specs)                    # [M, N_i]
    return jax.shard_map(local, in_specs=(P(), *specs, P()), out_specs=out_specs,
                         check_vma=False)(x, *stacks, layer)


def _stack_projection(x: jax.Array, name: str, stack: QuantizedWeight8bit, layer: jax.Array,
                      interpret: bool, out_rows: Any = None) -> jax.Array:
    """x [M, K] @ stack[layer] by the kernel, in x's dtype, under the model-parallel layout:
    per device for a column-split weight (q, k, v: heads), or per device then one all-reduce
    in x's dtype for a row-split one (the output projection), or one reduce-scatter where
    `out_rows` splits the output's rows over the model axis, as QuantizedLinear's XLA path."""
    spec = _model_axis_spec(name, stack)
    if model_axis_size() == 1 or spec.weight[1] != MODEL_AXIS:
        return _column_projections(x, (name,), (stack,), layer, interpret)[0]

    def local(x, w, layer):                                                   # row-split K
        return layer_matmul(x, w, layer, interpret=interpret)
    return sum_over_model_axis(local, (P(without_model_axis(out_rows), MODEL_AXIS), spec, P()),
                               x, stack, layer, out_specs=P(out_rows, None))


def _local_shape(k_size: int, out_size: int, groups: int,
                 row_parallel: bool) -> Optional[tuple[int, int, int]]:
    """A projection's (K, N, scale groups) per model-axis device, as the sharding table splits
    it; None where its scale groups do not split with its rows."""
    n = model_axis_size()
    k_local = k_size // n if row_parallel and k_size % n == 0 else k_size
    n_local = out_size // n if not row_parallel and out_size % n == 0 else out_size
    if row_parallel and k_local != k_size and groups > 1:   # each device holds its K's groups
        if groups % n:
            return None
        groups //= n
    return k_local, n_local, groups


def _kernel_or_xla(x: jax.Array, kernel, xla):
    """kernel(x) where the program is lowered for CUDA, else xla(x); an XLA form traced
    anyway is dead code on GPUs (XLA removes it with its weight or window slices).
    Interpret mode is CPU: its callers run the kernel directly."""
    return jax.lax.platform_dependent(x, cuda=kernel, default=xla)


def _project(x: jax.Array, name: str, out_size: int, runtime: RuntimeConfig,
             stacks: Optional[ProjectionStacks], layer: jax.Array,
             row_parallel: bool = False) -> jax.Array:
    """x [B, T, K] @ the layer's projection `name` -> [B, T, N] (see the module docstring).
    A row-split projection's output is laid out as the residual stream (its rows split over
    the model axis where it divides them: a reduce-scatter, grok.parallel.sharding)."""
    out_rows = residual_rows(x.shape[0]) if row_parallel else None
    xla = QuantizedLinear(out_size, name=name, row_parallel=row_parallel)(x, out_rows)
    return _by_kernel(x, name, out_size, runtime, stacks, layer, xla, row_parallel, out_rows)


def _by_kernel(x: jax.Array, name: str, out_size: int, runtime: RuntimeConfig,
               stacks: Optional[ProjectionStacks], layer: jax.Array, xla: jax.Array,
               row_parallel: bool = False, out_rows: Any = None) -> jax.Array:
    """`_project`'s result: by the kernel where it takes the projection, else `xla`."""
    rows, k_size = math.prod(x.shape[:-1]), x.shape[-1]
    if stacks is None or runtime.kernels == "xla" or rows == 1:
        return xla
    stack = getattr(stacks, name)
    local = _local_shape(k_size, out_size, stack.num_groups, row_parallel)
    if local is None or not layer_matmul_fits(rows, *local):
        return xla
    interpret = runtime.kernels == "interpret"

    def kernel(x):
        out = _stack_projection(x.reshape(rows, k_size), name, stack, layer, interpret, out_rows)
        return out.reshape(*x.shape[:-1], out_size)                            # [B, T, N]
    return kernel(x) if interpret else _kernel_or_xla(x, kernel, lambda _: xla)


def _project_columns(x: jax.Array, sizes: dict[str, int], runtime: RuntimeConfig,
                     stacks: Optional[ProjectionStacks], layer: jax.Array) -> tuple[jax.Array, ...]:
    """x [B, T, K] @ each column-split projection (name -> output width N_i) -> [B, T, N_i]:
    where the kernel takes them all, one layer_matmuls call for all (x read once), else each
    as `_project` runs it."""
    xla = tuple(QuantizedLinear(size, name=name)(x) for name, size in sizes.items())
    rows, k_size = math.prod(x.shape[:-1]), x.shape[-1]
    if stacks is None or runtime.kernels == "xla" or rows == 1:
        return xla
    ws = [getattr(stacks, name) for name in sizes]
    local = [_local_shape(k_size, size, w.num_groups, False) for size, w in zip(sizes.values(), ws)]
    if not all(layer_matmul_fits(rows, *shape) for shape in local):
        return tuple(_by_kernel(x, name, size, runtime, stacks, layer, out)
                     for (name, size), out in zip(sizes.items(), xla))
    interpret = runtime.kernels == "interpret"

    def kernel(x):
        outs = _column_projections(x.reshape(rows, k_size), tuple(sizes), ws, layer, interpret)
        return tuple(o.reshape(*x.shape[:-1], size) for o, size in zip(outs, sizes.values()))
    return kernel(x) if interpret else _kernel_or_xla(x, kernel, lambda _: xla)


class LayerKV(NamedTuple):
    """Every layer's post-RoPE keys and values, and which layer this call reads and writes.

    The whole stack travels in the layer scan's carry so each call writes only its new
    tokens in place; heads come before positions so attention reads contiguous [S, d] rows.
    """

    k: jax.Array      # [L, B, K, S, d]
    v: jax.Array      # [L, B, K, S, d]
    layer: jax.Array  # [] int32


class AttentionContext(NamedTuple):
    """Per-call facts shared by every layer."""

    positions: jax.Array      # [B, T] absolute position of each new token
    key_valid: jax.Array      # [B, T, S] bool: query t may attend key s
    write_index: Optional[jax.Array]  # [B, T] cache slot each new token is written to
    key_extent: jax.Array     # [B, T] int32: one past the last key query t may attend (0: none)


def _write(cache: jax.Array, layer: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """cache [L, B, K, S, d] with new [B, T, K, d] written at layer, positions index [B, T].

    Heads and head width are whole windows of the scatter (only layer, row and position are
    indexed), so a cache sharded over kv heads is written by each device locally, with no
    collective. Positions >= S (padding past the end of a last prefill chunk) are dropped.
    """
    rows = jnp.arange(new.shape[0])[:, None]                                     # [B, 1]
    return cache.at[layer, rows, :, index, :].set(new.astype(cache.dtype), mode="drop")


def _live(cache: jax.Array, layer: jax.Array, kv_len: int) -> jax.Array:
    """The layer's first kv_len positions, [B, K, kv_len, d] (a slice XLA fuses into its use)."""
    _, b, k, _, d = cache.shape
    return jax.lax.dynamic_slice(cache, (layer, 0, 0, 0, 0), (1, b, k, kv_len, d))[0]


def _softmax_weights(c: TransformerConfig, scores: jax.Array, key_valid: jax.Array,
                     dtype) -> jax.Array:
    """Soft-capped, masked softmax of float32 scores [B, K, G, T, S], in the reference's bf16."""
    scores = scores * c.attn_output_multiplier
    cap = c.attn_logit_soft_cap
    scores = cap * jnp.tanh(scores / cap)
    visible = key_valid[:, None, None]                                          # [B, 1, 1, T, S]
    scores = jnp.where(visible, scores, MASKED_SCORE)
    weights = jax.nn.softmax(scores, axis=-1)
    # A query with no visible key (a pad-only prompt) would otherwise average every key.
    weights = jnp.where(jnp.any(visible, axis=-1, keepdims=True), weights, 0)
    return weights.astype(dtype)                         # the reference's bf16 weights


def _attention(c: TransformerConfig, q, k, v, key_valid, dtype) -> jax.Array:
    """q [B, T, K, G, d] over k, v [B, K, S, d] as two matmuls -> [B, T, K, G, d]."""
    mm = matmul_dtype(dtype)               # bf16 operands, float32 accumulation
    scores = jnp.einsum("btkgd,bksd->bkgts", q.astype(mm), k.astype(mm),
                        preferred_element_type=jnp.float32)                     # [B, K, G, T, S]
    weights = _softmax_weights(c, scores, key_valid, dtype).astype(mm)
    return jnp.einsum("bkgts,bksd->btkgd", weights, v.astype(mm),
                      preferred_element_type=jnp.float32).astype(dtype)


def _decode_attention(c: TransformerConfig, q, k, v, key_valid, dtype) -> jax.Array:
    """One new token per row (T = 1) over the cache window k, v [B, K, S, d] -> [B, 1, K, G, d]:
    the GPU form XLA compiles (kernels="xla", or a window the kernel does not take).

    The same products and float32 sums as `_attention`. The scores are a multiply-reduce over
    d, the cache's minor axis; the weighted sum over S is a batched matmul: as a reduction over
    S (not the minor axis) XLA:GPU's layout assignment would put S minor-most, i.e. transpose
    the whole V cache before the layer loop and back after it, every step. XLA:GPU still copies
    the value window out of the layer stack for the GEMM (its dynamic slice must be on the
    major-most axis), at one kv head per device the key window too, and writes the float32
    scores out; `_kernel_decode_attention` reads both windows in place instead.
    bf16 x bf16 products are exact in float32."""
    f32 = jnp.float32
    qf = q[:, 0].astype(f32)                                                    # [B, K, G, d]
    scores = jnp.sum(qf[:, :, :, None, :] * k.astype(f32)[:, :, None], axis=-1)  # [B, K, G, S]
    weights = _softmax_weights(c, scores[:, :, :, None], key_valid, dtype)[:, :, :, 0]
    mm = matmul_dtype(dtype)
    out = jnp.einsum("bkgs,bksd->bkgd", weights.astype(mm), v.astype(mm),
                     preferred_element_type=f32)                               # [B, K, G, d]
    return out[:, None].astype(dtype)


def _kernel_decode_attention(c: TransformerConfig, q: jax.Array, kv: LayerKV,
                             key_valid: jax.Array, key_extent: jax.Array,
                             interpret: bool) -> jax.Array:
    """q [B, 1, K, G, d] over the first S' positions of layer kv.layer of the caches
    [L, B, K, S, d], visible where key_valid [B, 1, S'] (up to key_extent [B, 1]) ->
    [B, 1, K, G, d] in q's type: grok.kernels.decode_attention, reading both windows in
    place, per device under the cache's layout (slots over the data axis, kv heads over the
    model axis)."""
    def run(q, k_cache, v_cache, layer, valid, lengths):
        return decode_attention(q, k_cache, v_cache, layer, valid, lengths,
                                scale=c.attn_output_multiplier, soft_cap=c.attn_logit_soft_cap,
                                interpret=interpret)
    args = (q[:, 0], kv.k, kv.v, kv.layer, key_valid[:, 0], key_extent[:, 0])
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return run(*args)[:, None]
    spec = logical_sharding(kv.k.shape, CACHE_AXES, mesh).spec
    rows = P(spec[1], spec[2], None, None)                                     # [B, K, G, d]
    out = jax.shard_map(run, in_specs=(rows, spec, spec, P(), P(spec[1], None), P(spec[1])),
                        out_specs=rows, check_vma=False)(*args)
    return out[:, None]


def _gpu_decode_attention(c: TransformerConfig, q, k, v, kv: LayerKV, ctx: AttentionContext,
                          dtype, runtime: RuntimeConfig) -> jax.Array:
    """Decode attention (T = 1) as traced for a GPU (or kernels="interpret" on CPU): the
    kernel where it takes the window, XLA's form (over the windows k, v [B, K, S', d])
    otherwise or with kernels="xla"."""
    xla = lambda q: _decode_attention(c, q, k, v, ctx.key_valid, dtype)
    if runtime.kernels == "xla" or not decode_attention_fits(k.shape[2], k.shape[3]):
        return xla(q)
    interpret = runtime.kernels == "interpret"
    kernel = lambda q: _kernel_decode_attention(c, q, kv, ctx.key_valid, ctx.key_extent,
                                                interpret).astype(dtype)
    return kernel(q) if interpret else _kernel_or_xla(q, kernel, xla)


class MultiHeadAttention(hk.Module):
    def __init__(self, config: TransformerConfig, runtime: RuntimeConfig,
                 name: str = "multi_head_attention"):
        super().__init__(name=name)
        self.config = config
        self.runtime = runtime   # kernels: which kernels run the projections

    def __call__(self, x: jax.Array, ctx: AttentionContext, kv: Optional[LayerKV],
                 stacks: Optional[ProjectionStacks] = None,
                 layer: jax.Array | int = 0) -> tuple[jax.Array, Optional[LayerKV]]:
        """x [B, T, D]; `stacks` and `layer` (this layer's index in them) let the GPU kernel
        read the projections in place."""
        c = self.config
        b, t, _ = x.shape
        layer = jnp.asarray(layer, jnp.int32)
        q, k, v = _project_columns(x, {"query": c.num_q_heads * c.key_size,
                                       "key": c.num_kv_heads * c.key_size,
                                       "value": c.num_kv_heads * c.key_size},
                                   self.runtime, stacks, layer)
        q = q.reshape(b, t, c.num_q_heads, c.key_size)                          # [B, T, H, d]
        k = k.reshape(b, t, c.num_kv_heads, c.key_size)                         # [B, T, K, d]
        v = v.reshape(b, t, c.num_kv_heads, c.key_size)
        q = apply_rope(q, ctx.positions, c.rope_base)
        k = apply_rope(k, ctx.positions, c.rope_base)

        q = q.reshape(b, t, c.num_kv_heads, c.q_per_kv, c.key_size)             # [B, T, K, G, d]
        if kv is None:
            k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)                  # [B, K, T, d]
        else:
            kv = kv._replace(k=_write(kv.k, kv.layer, k, ctx.write_index),
                             v=_write(kv.v, kv.layer, v, ctx.write_index))
            kv_len = ctx.key_valid.shape[-1]
            k, v = _live(kv.k, kv.layer, kv_len), _live(kv.v, kv.layer, kv_len)  # [B, K, S, d]
        if t == 1 and kv is not None and (not on_cpu() or self.runtime.kernels == "interpret"):
            out = _gpu_decode_attention(c, q, k, v, kv, ctx, x.dtype, self.runtime)
        else:
            out = _attention(c, q, k, v, ctx.key_valid, x.dtype)
        out = out.reshape(b, t, c.num_q_heads * c.key_size)                    # [B, T, H*d]
        return _project(out, "linear", c.emb_size, self.runtime, stacks, layer,
                        row_parallel=True), kv


def make_context(tokens: jax.Array, pad_token: int, step: Optional[jax.Array] = None,
                 lengths: Optional[jax.Array] = None, cache_valid: Optional[jax.Array] = None,
                 kv_len: Optional[int] = None):
    """Positions and visibility for a call on tokens [B, T]; returns (context, new cache_valid).

    Without a cache (step is None) keys are the T tokens themselves. With a cache, row b's
    new tokens go to slots step[b] .. step[b]+T-1, only its first lengths[b] count, and
    cache_valid [B, S] records which cached keys are real tokens (not padding), so a pad
    stays invisible in every later call, as it is in a full forward.

    kv_len (static, default S): attention reads cache positions [0, kv_len) only. The caller
    must pick kv_len >= max(step + lengths) over the rows whose output it uses; keys at or past
    kv_len are not seen (they are still written).
    """
    b, t = tokens.shape
    offsets = jnp.arange(t, dtype=jnp.int32)
    token_ok = tokens > pad_token                                               # [B, T]
    if step is None:
        positions = jnp.broadcast_to(offsets, (b, t))
        causal = offsets[:, None] >= offsets[None, :]                           # [T, T]
        key_valid = causal[None] & token_ok[:, None, :]
        return AttentionContext(positions, key_valid, None, _extent(key_valid)), None

    positions = step[:, None] + offsets[None, :]                                # [B, T]
    rows = jnp.arange(b)[:, None]
    cache_valid = cache_valid.at[rows, positions].set(token_ok, mode="drop")    # [B, S]
    s = cache_valid.shape[1]
    kv_len = s if kv_len is None else kv_len
    if not isinstance(kv_len, int) or not 1 <= kv_len <= s:
        raise ValueError(f"kv_len must be an int in [1, sequence_len={s}], got {kv_len!r}")
    keys = jnp.arange(kv_len, dtype=jnp.int32)                                  # [S']
    key_ok = (keys[None, :] < (step + lengths)[:, None]) & cache_valid[:, :kv_len]  # [B, S']
    causal = keys[None, None, :] <= positions[:, :, None]                       # [B, T, S]
    key_valid = causal & key_ok[:, None, :]
    return AttentionContext(positions, key_valid, positions, _extent(key_valid)), cache_valid


def _extent(key_valid: jax.Array) -> jax.Array:
    """[B, T, S] -> [B, T]: one past each query's last visible key, 0 where it sees none
    (once per call, outside the layer loop: the decode kernel reads no position past it)."""
    ends = jnp.arange(1, key_valid.shape[-1] + 1, dtype=jnp.int32)
    return jnp.max(jnp.where(key_valid, ends, 0), axis=-1)

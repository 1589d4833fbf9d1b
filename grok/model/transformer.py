"""The Grok-1 language model: embeddings, a scanned stack of decoder layers, tied output.

Layers run under `hk.layer_stack` (one `lax.scan`), so compile time does not grow with depth
and every per-layer parameter is stacked on a leading [L] axis under `transformer/decoder_layer/`.
`grok.checkpoint` maps these stacked paths to and from the checkpoint's per-layer files.

The KV cache is an immutable pytree (`Memory`) passed in and returned.

Glossary: B batch (slots), T tokens in this call, S cache length, L layers, K kv heads,
d key_size, D emb_size, V vocab_size.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from grok.model.attention import (AttentionContext, LayerKV, MultiHeadAttention, ProjectionStacks,
                                  make_context, projection_stacks)
from grok.config import LanguageModelConfig, TransformerConfig
from grok.runtime_config import RuntimeConfig
from grok.ops.layers import RMSNorm, no_init
from grok.model.moe import ExpertStacks, MoELayer, Router, expert_stacks
from grok.ops.quantization import QuantizedWeight8bit
from grok.ops.model_parallel import gather_over_model_axis, model_axis_size, sum_over_model_axis
from grok.axes import MODEL_AXIS
from grok.parallel.sharding import (LOGITS_AXES, RESIDUAL_AXES, TABLE_AXES, logical_sharding,
                                    residual_rows)

# The shortest cache length live_kv_len picks: below it a step's cost is the weights' anyway.
MIN_KV_LEN = 128


class Memory(NamedTuple):
    """Per-slot KV cache of every layer."""

    k: jax.Array      # [L, B, K, S, d]
    v: jax.Array      # [L, B, K, S, d]
    step: jax.Array   # [B] int32: cached positions per row
    valid: jax.Array  # [B, S] bool: the cached key is a real token, not padding


def init_memory(config: LanguageModelConfig, batch_size: int, sequence_len: int,
                runtime: Optional[RuntimeConfig] = None) -> Memory:
    c = config.model
    shape = (c.num_layers, batch_size, c.num_kv_heads, sequence_len, c.key_size)
    dtype = jnp.dtype((runtime or RuntimeConfig()).activation_dtype)
    return Memory(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                  jnp.zeros((batch_size,), jnp.int32), jnp.zeros((batch_size, sequence_len), bool))


def live_kv_len(longest: int, sequence_len: int, smallest: int = MIN_KV_LEN) -> int:
    """The cache length a call should read: the smallest power of two >= `longest` (the
    longest row's step + lengths after the call), at least `smallest`, at most sequence_len.

    Power-of-two buckets keep the compiled variants few (log2(S / smallest) + 1) while a
    step reads at most twice the live context.
    """
    if longest > sequence_len:
        raise ValueError(f"a row needs {longest} cache positions; sequence_len is {sequence_len}")
    bucket = max(smallest, 1 << max(0, longest - 1).bit_length())
    return min(bucket, sequence_len)


def kv_len_buckets(sequence_len: int, smallest: int = MIN_KV_LEN) -> list[int]:
    """Every cache length live_kv_len can pick: the decode-step variants to compile."""
    return sorted({live_kv_len(1 << i, sequence_len, smallest)
                   for i in range(sequence_len.bit_length() + 1) if 1 << i <= sequence_len}
                  | {sequence_len})


def _laid_out(x: jax.Array, logical_axes: tuple) -> jax.Array:
    """x constrained to the sharding table's layout for `logical_axes` (a no-op without a
    mesh in context, e.g. a plain jit on one device)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_sharding(x.shape, logical_axes, mesh))


def residual_layout(x: jax.Array) -> jax.Array:
    """x [B, T, D] laid out as the residual stream: rows over the data axis and, where it
    divides them, the model axis (sequence parallelism: grok.parallel.sharding), D whole.
    Attention's output projection and the MoE end in the reduce-scatter that gives this
    layout (grok.ops.model_parallel), or, where the rows stay whole, in an all-reduce."""
    return _laid_out(x, RESIDUAL_AXES)


def gathered(x: jax.Array) -> jax.Array:
    """x [B, T, D] in the residual layout with every row on every model-axis device (one
    all-gather where the rows are split over the model axis): the input of the column-split
    matmuls."""
    return gather_over_model_axis(residual_layout(x), residual_rows(x.shape[0]))


def _local_rows(table: jax.Array, tokens: jax.Array) -> jax.Array:
    """The rows of this device's vocabulary slice table [V/n, D'] that tokens [B, T] name,
    zero for tokens held by another device."""
    rows = table.shape[0]
    local = tokens - jax.lax.axis_index(MODEL_AXIS) * rows                      # [B, T]
    inside = (local >= 0) & (local < rows)
    found = jnp.take(table, jnp.clip(local, 0, rows - 1), axis=0)               # [B, T, D']
    return jnp.where(inside[..., None], found, jnp.zeros((), table.dtype))


def embedding_lookup(table: jax.Array, tokens: jax.Array) -> jax.Array:
    """table[tokens] -> [B, T, D] for a table [V, D] split over V on the model axis.

    Each device gathers the rows its own slice holds (zeros elsewhere) and one all-reduce
    sums them: the exact rows (x + 0 is exact), moving B*T*D values, never the table. (Left to
    GSPMD, a one-token lookup becomes a dynamic-slice of the V-split table, which it
    all-gathers whole: 1.5 GiB per step at Grok-1 width.)
    """
    n = model_axis_size()
    mesh = jax.sharding.get_abstract_mesh()
    if n == 1 or table.shape[0] % n:
        return table[tokens]
    spec = logical_sharding(table.shape, TABLE_AXES, mesh).spec
    if spec[0] != MODEL_AXIS:
        return table[tokens]
    width = spec[1] if len(spec) > 1 else None
    return sum_over_model_axis(_local_rows, (P(MODEL_AXIS, width), P()), table, tokens,
                               out_specs=P(None, None, width))


def decoder_layer(config: TransformerConfig, runtime: RuntimeConfig, x: jax.Array,
                  ctx: AttentionContext, kv: Optional[LayerKV], layer: jax.Array,
                  stacks: Optional[ExpertStacks],
                  projections: Optional[ProjectionStacks]) -> tuple[jax.Array, Optional[LayerKV]]:
    """One pre- and post-normed attention + MoE block on x [B, T, D] (layer number `layer`).

    x comes and goes in the residual layout; norms, residual adds and the router run on a
    device's own rows, and each sub-layer's input is gathered once, after its norm."""
    eps = config.norm_eps
    h = gathered(RMSNorm(eps, "rms_norm")(x))
    a, kv = MultiHeadAttention(config, runtime)(h, ctx, kv, projections, layer)
    x = x + RMSNorm(eps, "rms_norm_1")(residual_layout(a))
    b, t, d = x.shape
    h = RMSNorm(eps, "rms_norm_2")(x)                                          # [B, T, D]
    gates, experts = Router(config)(h.reshape(b * t, d))                       # [M, k]
    h = gathered(h).reshape(b * t, d)                                          # [M, D]
    m = MoELayer(config, runtime)(h, gates, experts, stacks, layer,
                                  out_rows=residual_rows(b)).reshape(b, t, d)
    x = x + RMSNorm(eps, "rms_norm_3")(residual_layout(m))
    return x, kv


class Transformer(hk.Module):
    def __init__(self, config: TransformerConfig, runtime: RuntimeConfig,
                 stacks: Optional[ExpertStacks] = None,
                 projections: Optional[ProjectionStacks] = None, name: str = "transformer"):
        super().__init__(name=name)
        self.config = config
        self.runtime = runtime
        self.stacks = stacks   # every layer's experts, for the GPU MoE kernels (grok.model.moe)
        self.projections = projections   # every layer's attention projections, likewise

    def __call__(self, x: jax.Array, ctx: AttentionContext,
                 kv: Optional[LayerKV]) -> tuple[jax.Array, Optional[LayerKV]]:
        """x [B, T, D]; kv holds every layer's cache (its `layer` is ignored) or is None."""
        c = self.config
        stack = hk.layer_stack(c.num_layers, with_per_layer_inputs=True, name="decoder_layer")
        layers = jnp.arange(c.num_layers, dtype=jnp.int32)
        if kv is None:
            x, _ = stack(lambda x, i: (decoder_layer(c, self.runtime, x, ctx, None, i, self.stacks,
                                                     self.projections)[0], None))(x, layers)
            return x, None

        def layer(carry, index):
            x, k, v = carry
            x, kv = decoder_layer(c, self.runtime, x, ctx, LayerKV(k, v, index), index, self.stacks,
                                  self.projections)
            return (x, kv.k, kv.v), None

        (x, k, v), _ = stack(layer)((x, kv.k, kv.v), layers)
        return x, LayerKV(k, v, layers[-1])


class InOutEmbed(hk.Module):
    """The embedding table [V, D], shared by the input lookup and the output projection."""

    def __init__(self, config: LanguageModelConfig, name: str = "in_out_embed"):
        super().__init__(name=name)
        self.config = config

    def __call__(self) -> jax.Array:
        shape = [self.config.vocab_size, self.config.model.emb_size]
        return hk.get_parameter("embeddings", shape, jnp.float32, init=no_init)


class LanguageModel(hk.Module):
    """Scaled input embedding, the transformer, final norm and tied output projection."""

    def __init__(self, config: LanguageModelConfig, runtime: RuntimeConfig,
                 name: str = "language_model"):
        super().__init__(name=name)
        self.config = config
        self.runtime = runtime

    def __call__(self, transformer: Transformer, tokens: jax.Array, memory: Optional[Memory],
                 lengths: Optional[jax.Array], output_index: Optional[jax.Array],
                 kv_len: Optional[int] = None):
        c = self.config
        dtype = jnp.dtype(self.runtime.activation_dtype)
        table = InOutEmbed(c)().astype(dtype)                                 # [V, D]
        x = embedding_lookup(table, tokens)
        x = x * jnp.asarray(c.embedding_multiplier_scale, dtype)                # [B, T, D]
        x = residual_layout(x)
        if memory is None:
            ctx, valid = make_context(tokens, c.pad_token)
        else:
            ctx, valid = make_context(tokens, c.pad_token, memory.step, lengths, memory.valid,
                                      kv_len)
        kv = None if memory is None else LayerKV(memory.k, memory.v, jnp.int32(0))
        x, kv = transformer(x, ctx, kv)
        if output_index is not None:                     # only the rows' chosen positions
            x = jnp.take_along_axis(x, output_index[:, None, None], axis=1)     # [B, 1, D]
        y = gathered(RMSNorm(c.model.norm_eps, "rms_norm")(x))   # the table is split over V
        logits = jnp.einsum("btd,vd->btv", y, table).astype(jnp.float32)
        logits = logits * c.output_multiplier_scale                             # [B, T', V] f32
        # The table is split over V: one all-gather here keeps sampling local to each device.
        logits = _laid_out(logits, LOGITS_AXES)
        new_memory = None if memory is None else Memory(kv.k, kv.v, memory.step + lengths, valid)
        return logits, new_memory


def build_forward(config: LanguageModelConfig, runtime: Optional[RuntimeConfig] = None):
    """A pure function forward(params, tokens, memory=None, lengths=None, output_index=None,
    kv_len=None).

    `runtime` gives the MoE implementation and the activation dtype (default RuntimeConfig()).

    Returns (logits [B, T, V] float32 — or [B, 1, V] at output_index —, new memory or None).
    With a memory, row b's first lengths[b] tokens are appended to its cache, and attention
    reads only its first kv_len positions (a static int, default sequence_len; it must be
    >= max(step + lengths) over the rows whose logits are used: see `live_kv_len`).
    """
    runtime = runtime or RuntimeConfig()

    def fn(stacks, projections, tokens, memory=None, lengths=None, output_index=None, kv_len=None):
        transformer = Transformer(config.model, runtime, stacks, projections)
        return LanguageModel(config, runtime)(transformer, tokens, memory, lengths, output_index,
                                              kv_len)

    transformed = hk.without_apply_rng(hk.transform(fn))

    def forward(params, tokens, memory=None, lengths=None, output_index=None, kv_len=None):
        # the expert and projection stacks also enter whole, beside the layer scan's slices
        return transformed.apply(params, expert_stacks(params), projection_stacks(params), tokens,
                                 memory, lengths, output_index, kv_len)
    return forward


def abstract_params(config: LanguageModelConfig, scale_groups: int = 1) -> dict:
    """The parameter tree as ShapeDtypeStructs (QW leaves with `scale_groups` groups).

    Used to compute shardings before any weight is read; scale shardings do not depend on G.
    """
    def creator(next_creator, shape, dtype, init, context):
        if dtype == jnp.int8:
            scales = tuple(shape[:-2]) + (scale_groups, shape[-1])
            return QuantizedWeight8bit(jnp.zeros(shape, jnp.int8), jnp.zeros(scales, jnp.bfloat16))
        return jnp.zeros(shape, dtype)

    def fn(tokens):
        with hk.custom_creator(creator):
            runtime = RuntimeConfig()
            return LanguageModel(config, runtime)(Transformer(config.model, runtime), tokens,
                                                  None, None, None)

    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    params = jax.eval_shape(lambda t: hk.transform(fn).init(None, t), tokens)
    return {module: dict(leaves) for module, leaves in params.items()}

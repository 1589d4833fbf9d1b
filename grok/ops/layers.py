"""Building blocks shared by attention and MoE: RMSNorm, RoPE, quantized linear layers.

Glossary: B batch, T tokens in this call, D emb_size, H query heads, K kv heads,
d key_size, N output width.
"""

from __future__ import annotations

import math
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from jax.sharding import PartitionSpec as P

from grok.ops.model_parallel import model_axis_size, sum_over_model_axis, without_model_axis
from grok.ops.platform import on_cpu
from grok.ops.quantization import REDUCE_ROWS, QuantizedWeight8bit, qmatmul, qmatmul_reduce
from grok.axes import MODEL_AXIS


def no_init(shape, dtype):
    raise RuntimeError(
        "grok parameters are not initialised by Haiku: restore a checkpoint "
        "(grok.checkpoint.load_checkpoint) or make random ones (grok.checkpoint.random_params)")


class RMSNorm(hk.Module):
    """x * rsqrt(mean(x²) + eps) * scale, computed in float32, returned in x's dtype."""

    def __init__(self, eps: float, name: str):
        super().__init__(name=name)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = hk.get_parameter("scale", [x.shape[-1]], jnp.float32, init=no_init)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (normed * scale.astype(jnp.float32)).astype(x.dtype)


class QuantizedLinear(hk.Module):
    """y = x @ W with W a `QuantizedWeight8bit` parameter `w` [K, N] (no bias, like Grok-1).

    row_parallel: x's last axis and W's rows are split over the model axis (attention's
    output projection over heads); each device multiplies its slices and one all-reduce in
    x's dtype sums them (grok.ops.model_parallel), or one reduce-scatter where `out_rows`
    (a call's PartitionSpec entry for x's leading axis) splits the output's rows over the
    model axis. Without a mesh, or where the model axis does not divide K and W's scale
    groups, the plain matmul (same numbers). One row on an accelerator (one-slot decode)
    takes `qmatmul_reduce`, which reads W in place.
    """

    def __init__(self, output_size: int, name: str, row_parallel: bool = False):
        super().__init__(name=name)
        self.output_size = output_size
        self.row_parallel = row_parallel

    def __call__(self, x: jax.Array, out_rows: Any = None) -> jax.Array:
        w = hk.get_parameter("w", [x.shape[-1], self.output_size], jnp.int8, init=no_init)
        if not isinstance(w, QuantizedWeight8bit):
            raise TypeError(f"{self.module_name}/w must be a QuantizedWeight8bit, got {type(w).__name__}")
        rows = math.prod(x.shape[:-1])
        matmul = qmatmul_reduce if rows <= REDUCE_ROWS and not on_cpu() else qmatmul
        n, groups = model_axis_size(), w.num_groups
        if not self.row_parallel or n == 1 or x.shape[-1] % n or (groups > 1 and groups % n):
            return matmul(x, w)
        rest = (None,) * (x.ndim - 2)
        x_spec = P(without_model_axis(out_rows), *rest, MODEL_AXIS)              # [..., K/n]
        w_spec = QuantizedWeight8bit(P(MODEL_AXIS, None), P(MODEL_AXIS if groups > 1 else None, None))
        return sum_over_model_axis(matmul, (x_spec, w_spec), x, w,
                                   out_specs=P(out_rows, *rest, None))


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotary embedding over the whole head width, rotate-half layout.

    x: [B, T, heads, d]; positions: [B, T] int32 absolute positions.
    """
    d = x.shape[-1]
    inv_freq = base ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)            # [d/2]
    phase = positions.astype(jnp.float32)[..., None] * inv_freq                  # [B, T, d/2]
    phase = jnp.concatenate([phase, phase], axis=-1)[:, :, None, :]              # [B, T, 1, d]
    x32 = x.astype(jnp.float32)
    return (x32 * jnp.cos(phase) + rotate_half(x32) * jnp.sin(phase)).astype(x.dtype)

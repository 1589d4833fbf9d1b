"""8-bit weights with grouped scales, kept int8 on the device.

A `QuantizedWeight8bit` holds `weight` int8 [*lead, K, N] and `scales` [*lead, G, N]: the
dequantized weight is `weight[..., g*K/G + r, n] * scales[..., g, n]`. Matmuls never build
the dequantized weight: they contract the int8 values directly (every int8 is exact in the
activation dtype), group by group, accumulating in float32, and apply the scales to the
[G, .., N] partial sums. That is the same arithmetic up to rounding order, reads 1 byte per
weight, and works for any G that divides K (the reference needs G == its model-axis size).

Glossary: K contracting (input) width, N output width, G scale groups, E experts,
M rows (tokens or token-expert pairs).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from grok.ops.platform import on_cpu


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class QuantizedWeight8bit:
    """int8 `weight` [*lead, K, N] with `scales` [*lead, G, N] (the checkpoint's class)."""

    weight: jax.Array
    scales: jax.Array

    @property
    def shape(self):
        return self.weight.shape

    @property
    def num_groups(self) -> int:
        return self.scales.shape[-2]


def quantize(w: np.ndarray, num_groups: int = 1, scale_dtype=jnp.bfloat16) -> QuantizedWeight8bit:
    """Symmetric per-(group, column) int8 quantization of a float array [*lead, K, N]."""
    w = np.asarray(w, np.float32)
    *lead, k, n = w.shape
    if num_groups < 1 or k % num_groups:
        raise ValueError(f"quantize: {num_groups} scale groups do not divide the contracting size {k}")
    grouped = w.reshape(*lead, num_groups, k // num_groups, n)
    scales = np.abs(grouped).max(axis=-2) / 127.0                      # [*lead, G, N]
    scales = np.where(scales == 0, 1.0, scales).astype(scale_dtype)
    q = np.rint(grouped / scales.astype(np.float32)[..., None, :])
    q = np.clip(q, -127, 127).astype(np.int8).reshape(w.shape)
    return QuantizedWeight8bit(weight=q, scales=scales)


def dequantize(qw: QuantizedWeight8bit, dtype=jnp.float32) -> jax.Array:
    """The full float weight [*lead, K, N]; for tests and the readable dense MoE path."""
    *lead, k, n = qw.weight.shape
    g = qw.scales.shape[-2]
    w = qw.weight.reshape(*lead, g, k // g, n).astype(dtype)
    w = w * qw.scales.astype(dtype)[..., :, None, :]
    return w.reshape(*lead, k, n)


def matmul_dtype(dtype) -> jnp.dtype:
    """The operand type of a matmul on activations of `dtype` that accumulates in float32.

    Accelerators take bf16 operands with float32 accumulation natively; XLA:CPU's runtime has
    no bf16 x bf16 -> f32 dot (DotThunk: "Unsupported element type"), so on CPU operands are
    float32 (the same numbers: a bf16 value is exact in float32). The platform is the
    traced program's (grok.ops.platform)."""
    return jnp.dtype(jnp.float32) if on_cpu() else jnp.dtype(dtype)


def _dot(x: jax.Array, w: jax.Array, dims) -> jax.Array:
    """x (activations) times the int8 weight w, accumulated in float32.

    The int8 -> float convert is the dot's own operand, adjacent to it: on GPU, XLA's GEMM
    fusion pulls such a convert into the matmul kernel, which then reads each weight byte
    once (check: `python -m grok.benchmarks.hlo_check` on the optimised HLO). A mixed
    int8 x bf16 dot_general would instead be lowered by JAX with both operands converted to
    the float32 accumulation type: an f32 copy of the weight and an f32 matmul.
    """
    dtype = matmul_dtype(x.dtype)
    return jax.lax.dot_general(x.astype(dtype), w.astype(dtype), dims,
                               preferred_element_type=jnp.float32)


def qmatmul(x: jax.Array, qw: QuantizedWeight8bit) -> jax.Array:
    """x [..., K] @ weight [K, N] -> [..., N] in x's dtype."""
    k, n = qw.weight.shape
    g = qw.scales.shape[0]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)                                                       # [M, K]
    if g == 1:
        out = _dot(x2, qw.weight, (((1,), (0,)), ((), ()))) * qw.scales[0].astype(jnp.float32)
    else:
        xg = x2.reshape(-1, g, k // g)                                          # [M, G, K/G]
        wg = qw.weight.reshape(g, k // g, n)                                    # [G, K/G, N]
        partial = _dot(xg, wg, (((2,), (1,)), ((1,), (0,))))                    # [G, M, N]
        out = jnp.einsum("gmn,gn->mn", partial, qw.scales.astype(jnp.float32))
    return out.astype(x.dtype).reshape(*lead, n)


# On an accelerator, a matmul of this many rows is done by `qmatmul_reduce`: it reads the int8
# weight where it lies (a GEMM copies a weight sliced out of the layer stack first).
REDUCE_ROWS = 1


def qmatmul_reduce(x: jax.Array, qw: QuantizedWeight8bit) -> jax.Array:
    """One row x [..., K] (the leading dims multiply to 1) @ weight [K, N] -> [..., N] in x's
    dtype, as products summed over K.

    For one decode row on an accelerator. The products [K, N] summed over their major axis K
    are a column reduction that XLA:GPU fuses with the int8 weight (a dynamic slice of the
    layer stack included) and reads in place. Any other arrangement (chunks of K summed in
    two stages, more rows) makes XLA:GPU's layout assignment put the reduced axis minor-most,
    i.e. transpose a copy of the weight first, or of the whole stack before the layer loop.
    Each product x * w is exact in float32 and takes its group's scale before the float32 sum
    (the same numbers as qmatmul up to rounding order)."""
    k, n = qw.weight.shape
    g = qw.scales.shape[0]
    lead = x.shape[:-1]
    if math.prod(lead) != 1:
        raise ValueError(f"qmatmul_reduce takes one row, got x of shape {x.shape}")
    f32 = jnp.float32
    xs = x.reshape(k, 1).astype(f32)                                            # [K, 1]
    scales = jnp.broadcast_to(qw.scales.astype(f32)[:, None, :], (g, k // g, n))  # [G, K/G, N]
    products = xs * qw.weight.astype(f32) * scales.reshape(k, n)                # [K, N]
    return jnp.sum(products, axis=0).astype(x.dtype).reshape(*lead, n)


def qmatmul_experts(x: jax.Array, qw: QuantizedWeight8bit) -> jax.Array:
    """Every row through every expert: x [M, K] @ weight [E, K, N] -> [E, M, N]."""
    e, k, n = qw.weight.shape
    g = qw.scales.shape[1]
    scales = qw.scales.astype(jnp.float32)                                      # [E, G, N]
    if g == 1:
        out = _dot(x, qw.weight, (((1,), (1,)), ((), ())))                      # [M, E, N]
        out = jnp.swapaxes(out * scales[:, 0], 0, 1)
    else:
        xg = x.reshape(-1, g, k // g)                                           # [M, G, K/G]
        wg = qw.weight.reshape(e, g, k // g, n)                                 # [E, G, K/G, N]
        partial = _dot(xg, wg, (((2,), (2,)), ((1,), (1,))))                    # [G, M, E, N]
        out = jnp.einsum("gmen,egn->emn", partial, scales)
    return out.astype(x.dtype)

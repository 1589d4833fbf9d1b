"""Decode attention's weighted sum over the cache window, read in place (Pallas, Triton backend).

out[b, k, g] = sum_s weights[b, k, g, s] * v[layer, b, k, s]  over the window s < S'

Inside the layer scan the window is a slice of every layer's cache [L, B, K, S, d] on two
axes (layer, positions); XLA:GPU's GEMM takes a dynamic slice only on the major-most axis and
copies the window first (at Grok-1 width and 64 slots, 256 MiB a layer written and read back),
and as a reduction over S its layout assignment transposes the whole cache. Here program
(b, k) loads its row's [BS, d] tiles of the window where they lie, BS positions per step,
and the [GP, BS] tile of the G query heads' weights (G padded to a power of two >= 16, masked),
accumulating a float32 [GP, d] product, of which it stores the G real rows (row G of the
output is scratch that no valid row touches): the window is read once.

Glossary: B slots, K kv heads, G query heads per kv head (GP padded), S cache length, S' window
(kv_len), d key_size, L layers, BS positions per step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from grok.kernels.block_layout import MIN_TILE, pow2_tile

WEIGHTED_VALUES = "weighted_values"   # the kernel's name in a compiled program
BLOCK_POSITIONS = 64


def weighted_values_fits(window: int, key_size: int) -> bool:
    """Whether the GPU kernel takes this window and head width (Triton tiles: powers of two
    dividing them, >= 16)."""
    whole_width = key_size >= MIN_TILE and key_size & (key_size - 1) == 0
    return whole_width and pow2_tile(window, BLOCK_POSITIONS) >= MIN_TILE


def _kernel(layer_ref, w_ref, v_ref, out_ref, *, heads, padded, block, steps, dtype):
    b, k = pl.program_id(0), pl.program_id(1)
    layer = layer_ref[0]
    g = jnp.arange(padded, dtype=jnp.int32)                                      # [GP]
    real = g < heads

    def step(i, acc):
        s = pl.multiple_of(i * block, block)
        pos = s + jnp.arange(block, dtype=jnp.int32)                              # [BS]
        w = plgpu.load(w_ref.at[b, k, jnp.where(real, g, 0)[:, None], pos[None, :]],
                       mask=real[:, None], other=0)                               # [GP, BS]
        v = v_ref[layer, b, k, pl.ds(s, block), :]                                # [BS, d]
        return acc + jnp.dot(w.astype(dtype), v.astype(dtype), preferred_element_type=jnp.float32)
    d = out_ref.shape[-1]
    acc = jax.lax.fori_loop(0, steps, step, jnp.zeros((padded, d), jnp.float32))
    cols = jnp.arange(d, dtype=jnp.int32)
    # the G real rows; padding rows aim at the scratch row G (masked: nothing is stored)
    plgpu.store(out_ref.at[b, k, jnp.minimum(g, heads)[:, None], cols[None, :]], acc,
                mask=real[:, None])


def weighted_values(weights: jax.Array, cache: jax.Array, layer: jax.Array | int, *,
                    interpret: bool = False) -> jax.Array:
    """weights [B, K, G, S'] (the softmax's, in the activation type) times the window
    cache[layer, :, :, :S'] of a cache [L, B, K, S, d] -> float32 [B, K, G, d].

    `interpret=True` runs the kernel on CPU (tests)."""
    b, kv, heads, window = weights.shape
    d = cache.shape[-1]
    padded = max(MIN_TILE, 1 << max(0, heads - 1).bit_length())
    block = pow2_tile(window, BLOCK_POSITIONS)
    dtype = jnp.float32 if interpret else weights.dtype
    out = pl.pallas_call(
        functools.partial(_kernel, heads=heads, padded=padded, block=block,
                          steps=window // block, dtype=dtype),
        out_shape=jax.ShapeDtypeStruct((b, kv, heads + 1, d), jnp.float32),
        grid=(b, kv),
        # no BlockSpecs: every operand by address; each program loads and stores its own tiles
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name=WEIGHTED_VALUES,
    )(jnp.asarray(layer, jnp.int32).reshape(1), weights, cache)
    return out[:, :, :heads]

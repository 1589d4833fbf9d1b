"""Decode attention over one layer's cache window, read in place (Pallas, Triton backend).

out[b, k, g] = sum_s softmax_s(cap * tanh(scale * q[b, k, g] . key[layer, b, k, s] / cap))
               * value[layer, b, k, s]           over the visible positions s of row b

One kernel per layer: program (b, k) walks its row's live positions in blocks of BS, loading
the [BS, d] tiles of the key and value windows where they lie in every layer's cache
[L, B, K, S, d] (the layer an operand), and keeps the float32 scores of its G query heads
(padded to GP, a power of two >= 16) and an online softmax (running max, running sum,
rescaled float32 [GP, d] accumulator) in registers: the windows are read once, no score or
weight leaves the kernel, and only the [B, K, G, d] output is written. XLA's form instead
copies the key window out of the cache stack (its dynamic slice is on two axes), writes the
float32 scores, reads them back for the softmax, and copies the value window for its GEMM.

Each program stops at its row's live extent (`lengths`, one past its last visible position),
so a short row reads only its own blocks; within them `valid` (bool: XLA stores a byte per
element, the Triton lowering loads it as one) masks the invisible positions
(padding, another request's stale keys). A row with no visible position gets 0, as XLA's
form. The per-program position loop over blocks is the shape a block-paged cache keeps: a
page table would map block i of row b to its page.

With few (slot, kv head) programs (one slot: B*K = 8 on one GPU, 1 on each of 8) most SMs
would idle while one program walks the whole window, so the positions are split as in
flash-decoding: program (b, k, p) takes the p-th of NS equal runs of blocks and writes its
normalised float32 partial rows and their log-sum-exps; a second small kernel merges the NS
partials of each head (weights exp(lse - max lse)). Many slots keep NS = 1 and write the
output directly.

The numbers are the XLA form's (grok.model.attention): bf16 x bf16 products summed in
float32, times the scale, then the soft cap, softmax in float32, weights rounded to the
activation type (q's) for the weighted sum (here the unnormalised exp(s - running max),
divided by the sum at the end, as flash-attention does), float32 accumulation.

Glossary: B slots, K kv heads, G query heads per kv head (GP padded), S cache length, S'
window (kv_len), d key_size, L layers, BS positions per block, NS splits of a row's blocks.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from grok.kernels.block_layout import MIN_TILE, pow2_tile

DECODE_ATTENTION = "decode_attention"   # the kernel's name in a compiled program
COMBINE = "decode_attention_combine"    # the splits' merge (a second, small kernel)
BLOCK_POSITIONS = 64
# Fewer (slot, kv head) programs than this leave most SMs of an H100/H200 (132) idle: the
# rows' positions are then split over more programs, whose partial results a second kernel
# (`_combine_kernel`) merges.
MIN_PROGRAMS = 64
MASKED_SCORE = -1e30   # an invisible position's score (the running max starts there)


def decode_attention_fits(window: int, key_size: int) -> bool:
    """Whether the GPU kernel takes this window and head width (Triton tiles: powers of two
    dividing them, >= 16)."""
    whole_width = key_size >= MIN_TILE and key_size & (key_size - 1) == 0
    return whole_width and pow2_tile(window, BLOCK_POSITIONS) >= MIN_TILE


def position_splits(programs: int, blocks: int) -> int:
    """How many programs share one row's window (flash-decoding's split of the positions):
    the power of two that brings `programs` (B*K) up to MIN_PROGRAMS, at most the window's
    blocks, each split an equal whole number of them. 1 at many slots: no partials."""
    splits = 1
    while programs * splits < MIN_PROGRAMS and blocks % (2 * splits) == 0:
        splits *= 2
    return splits


def _kernel(layer_ref, lengths_ref, valid_ref, q_ref, k_ref, v_ref, *out_refs,
            heads, padded, block, per_split, scale, soft_cap, dtype, weight_dtype):
    b, k, part = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    layer = layer_ref[0]
    d = q_ref.shape[-1]
    g = jnp.arange(padded, dtype=jnp.int32)                                      # [GP]
    cols = jnp.arange(d, dtype=jnp.int32)                                        # [d]
    real = g < heads
    q = plgpu.load(q_ref.at[b, k, jnp.where(real, g, 0)[:, None], cols[None, :]],
                   mask=real[:, None], other=0).astype(dtype)                    # [GP, d]

    def step(i, carry):
        m, l, acc = carry                                                        # [GP], [GP], [GP, d]
        s0 = pl.multiple_of(i * block, block)
        keys = k_ref[layer, b, k, pl.ds(s0, block), :].astype(dtype)             # [BS, d]
        values = v_ref[layer, b, k, pl.ds(s0, block), :]                         # [BS, d]
        visible = valid_ref[b, pl.ds(s0, block)]                                 # [BS] bool
        s = jax.lax.dot_general(q, keys, (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32)              # [GP, BS]
        s = s * scale
        s = soft_cap * jnp.tanh(s / soft_cap)
        s = jnp.where(visible[None, :], s, MASKED_SCORE)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))                               # [GP]
        p = jnp.where(visible[None, :], jnp.exp(s - m_new[:, None]), 0.0)        # [GP, BS]
        alpha = jnp.exp(m - m_new)
        l = l * alpha + jnp.sum(p, axis=1)
        weights = p.astype(weight_dtype).astype(dtype)   # rounded as XLA's form rounds its weights
        acc = acc * alpha[:, None] + jnp.dot(weights, values.astype(dtype),
                                             preferred_element_type=jnp.float32)
        return m_new, l, acc

    first = part * per_split                                # this program's blocks of the row,
    last = jnp.minimum(first + per_split, (lengths_ref[b] + block - 1) // block)  # live ones only
    init = (jnp.full((padded,), MASKED_SCORE, jnp.float32), jnp.zeros((padded,), jnp.float32),
            jnp.zeros((padded, d), jnp.float32))
    m, l, acc = jax.lax.fori_loop(first, last, step, init)
    out = jnp.where(l[:, None] > 0, acc / jnp.where(l > 0, l, 1.0)[:, None], 0.0)  # [GP, d]
    split = len(out_refs) == 2          # partial rows [B, K, G, NS, d] and log-sum-exps
    for h in range(heads):     # the G real rows, one store each (no padding row is written)
        row = jnp.sum(jnp.where(g[:, None] == h, out, 0.0), axis=0)              # [d]
        if split:
            out_refs[0][b, k, h, part, :] = row
        else:
            out_refs[0][b, k, h, :] = row.astype(out_refs[0].dtype)
    if split:
        lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), MASKED_SCORE)  # [GP]
        out_refs[1][b, k, part, :] = lse


def _combine_kernel(partial_ref, lse_ref, out_ref, *, heads, padded):
    """Program (b, k): the NS splits' partial rows of each head, each weighted by its share
    exp(lse - max lse) of the row's softmax sum."""
    b, k = pl.program_id(0), pl.program_id(1)
    g = jnp.arange(padded, dtype=jnp.int32)
    lse = lse_ref[b, k, :, :]                                                    # [NS, GP]
    for h in range(heads):
        head = jnp.sum(jnp.where(g[None, :] == h, lse, 0.0), axis=1)             # [NS]
        weights = jnp.exp(head - jnp.max(head))       # a row with no visible key: all 1, rows 0
        rows = partial_ref[b, k, h, :, :]                                        # [NS, d]
        out = jnp.sum(weights[:, None] * rows, axis=0) / jnp.sum(weights)        # [d]
        out_ref[b, k, h, :] = out.astype(out_ref.dtype)


def decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                     layer: jax.Array | int, valid: jax.Array, lengths: jax.Array, *,
                     scale: float, soft_cap: float, splits: Optional[int] = None,
                     interpret: bool = False) -> jax.Array:
    """q [B, K, G, d] (post-RoPE queries) over the windows k_cache[layer, :, :, :S'] and
    v_cache[layer, :, :, :S'] of caches [L, B, K, S, d], visible where valid [B, S'] (bool)
    -> [B, K, G, d] in q's type. S' must pass `decode_attention_fits`.

    lengths [B] int32: row b reads positions [0, lengths[b]) only; at least one past its last
    visible position (grok.model.attention computes it once per step, not per layer).
    splits: programs per row (default `position_splits`; it must divide the window's blocks).
    `interpret=True` runs the kernel on CPU (tests)."""
    b, kv, heads, d = q.shape
    window = valid.shape[-1]
    if not decode_attention_fits(window, d):
        raise ValueError(f"decode_attention takes a window with a power-of-two tile >= "
                         f"{MIN_TILE} and a power-of-two key_size >= {MIN_TILE}, got "
                         f"window {window}, key_size {d}")
    padded = max(MIN_TILE, 1 << max(0, heads - 1).bit_length())
    block = pow2_tile(window, BLOCK_POSITIONS)
    blocks = window // block
    splits = position_splits(b * kv, blocks) if splits is None else splits
    if blocks % splits:
        raise ValueError(f"splits {splits} must divide the window's {blocks} blocks")
    dtype = jnp.float32 if interpret else k_cache.dtype
    out = jax.ShapeDtypeStruct((b, kv, heads, d), q.dtype)
    if splits > 1:
        partials = (jax.ShapeDtypeStruct((b, kv, heads, splits, d), jnp.float32),
                    jax.ShapeDtypeStruct((b, kv, splits, padded), jnp.float32))
    result = pl.pallas_call(
        functools.partial(_kernel, heads=heads, padded=padded, block=block,
                          per_split=blocks // splits, scale=scale, soft_cap=soft_cap,
                          dtype=dtype, weight_dtype=q.dtype),
        out_shape=out if splits == 1 else partials,
        grid=(b, kv, splits),
        # no BlockSpecs: every operand by address; each program loads and stores its own tiles
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name=DECODE_ATTENTION,
    )(jnp.asarray(layer, jnp.int32).reshape(1), lengths.astype(jnp.int32), valid, q, k_cache,
      v_cache)
    if splits == 1:
        return result
    return pl.pallas_call(
        functools.partial(_combine_kernel, heads=heads, padded=padded),
        out_shape=out, grid=(b, kv),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret, name=COMBINE,
    )(*result)

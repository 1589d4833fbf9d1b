"""Fused int8 MoE for GPUs (Pallas, Triton backend): experts read in place, per sorted block.

Two kernels, each one `pallas_call` over a grid of (block, output tile):
- up:   h[r] = gelu(x[r] @ Wgate[e]) * (x[r] @ Wvalue[e])       [R, D] x [E, D, F] -> [R, F]
- down: y[r] = gate[r] * (h[r] @ Wdown[e])                        [R, F] x [E, F, D] -> [R, D]
where r runs over the sorted rows of a block and e is that block's expert (`sort_into_blocks`).
Rows are then summed back into their tokens (an XLA scatter-add of activations only).

How only the selected experts' weights are read: the weight operands have no BlockSpec
(the kernel gets the whole stack's address; nothing is copied in or out), and program
(b, n) loads exactly the tiles `w[layer, block_expert[b], k-tile, n-tile]` for the k-tiles
of its K range and its one n-tile; a block whose expert is -1 (unused) loads nothing.
Over the grid each used block therefore reads its expert's [K, N] matrix once, and an
expert is read by as many blocks as its rows need: with the decode tiling (BM >= M) one
block per selected expert, so the kernel reads exactly the selected experts' bytes; with
the prefill tiling ceil(rows/BM) times (a grouped GEMM's usual weight re-reads).

Scales are applied per scale group to the float32 partial sums inside the kernel (the int8
tile is converted to the matmul type in registers), so the weight is never dequantized in
memory. Padding rows are excluded with `where` (never multiplied by a zero gate), and a
row's output depends only on its own activations and its own expert: a NaN in one expert
reaches only the rows routed to it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from grok.kernels.block_layout import BlockLayout, sort_into_blocks
from grok.ops.quantization import QuantizedWeight8bit

# Rows up to which a call is "decode": one block per selected expert (BM >= M).
DECODE_ROWS = 64


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Tile sizes (powers of two): BM rows per block, at most BN output and BK contracting
    columns per tile (the largest power of two dividing the width, up to these), and
    Triton's warps and pipeline stages."""

    block_rows: int
    block_n: int = 64
    block_k: int = 128
    num_warps: int = 4
    num_stages: int = 3


def tiling_for(rows: int) -> Tiling:
    """Decode (rows <= DECODE_ROWS): BM = rows rounded up to a power of two (>= 16, Triton's
    smallest dot), so each selected expert is one block and is read once. Prefill: BM = 64,
    a grouped GEMM whose padding is at most E*BM rows beyond the P pairs."""
    if rows <= DECODE_ROWS:
        return Tiling(block_rows=max(16, pl.next_power_of_2(rows)))
    return Tiling(block_rows=64, block_n=128, block_k=64, num_warps=8, num_stages=3)


def _pow2_tile(width: int, most: int) -> int:
    """The largest power of two <= most that divides width."""
    tile = 1
    while tile * 2 <= most and width % (tile * 2) == 0:
        tile *= 2
    return tile


def supported(emb: int, ffn: int, up_groups: int, down_groups: int) -> bool:
    """Whether the GPU kernels' tiles fit these widths (emb D, the device's ffn F, scale groups):
    every output and per-group contracting width needs a power-of-two factor >= 16 (Triton's
    smallest dot). Grok-1 (D 6144, F 32768 over up to 8 devices) fits."""
    if emb % up_groups or ffn % down_groups:
        return False
    return min(_pow2_tile(ffn, 16), _pow2_tile(emb // up_groups, 16),
               _pow2_tile(emb, 16), _pow2_tile(ffn // down_groups, 16)) >= 16


def _stacked(qw: QuantizedWeight8bit) -> tuple[jax.Array, jax.Array]:
    """weight [L, E, K, N] and scales [L, E, G, N]; a per-layer [E, K, N] gets L = 1 (a bitcast)."""
    if qw.weight.ndim == 3:
        return qw.weight[None], qw.scales[None]
    return qw.weight, qw.scales


def _grouped_dot(lhs_ref, rows, w_ref, s_ref, layer, expert, cols, *, groups, bk, dtype):
    """sum_g (lhs[rows, group g] @ w[layer, expert, group g, cols]) * s[layer, expert, g, cols].

    float32 [BM, BN]; each int8 tile is converted to the matmul type in registers."""
    k_size = w_ref.shape[2]
    per_group = k_size // groups
    bm, bn = rows.size, cols.size

    def group(g, acc):
        def step(i, part):
            kk = pl.ds(pl.multiple_of(g * per_group + i * bk, bk), bk)
            a = lhs_ref[rows, kk].astype(dtype)                                   # [BM, BK]
            w = w_ref[layer, expert, kk, cols].astype(dtype)                      # [BK, BN]
            return part + jnp.dot(a, w, preferred_element_type=jnp.float32)
        part = jax.lax.fori_loop(0, per_group // bk, step, jnp.zeros((bm, bn), jnp.float32))
        scale = s_ref[layer, expert, g, cols].astype(jnp.float32)                 # [BN]
        return acc + part * scale[None, :]
    return jax.lax.fori_loop(0, groups, group, jnp.zeros((bm, bn), jnp.float32))


def _per_used_block(block_expert_ref, out_ref, compute):
    """Program (b, n) writes out block (b, n): compute(expert, rows, cols) [BM, BN] where block b
    has an expert, zeros (and no weight load) where it is unused (expert -1)."""
    b, n = pl.program_id(0), pl.program_id(1)
    bm, bn = out_ref.shape
    expert = block_expert_ref[b]

    @pl.when(expert < 0)
    def _unused():
        out_ref[...] = jnp.zeros(out_ref.shape, out_ref.dtype)

    @pl.when(expert >= 0)
    def _used():
        rows, cols = pl.ds(pl.multiple_of(b * bm, bm), bm), pl.ds(pl.multiple_of(n * bn, bn), bn)
        out_ref[...] = compute(expert, rows, cols).astype(out_ref.dtype)


def _up_kernel(layer_ref, block_expert_ref, x_ref, wg_ref, sg_ref, wv_ref, sv_ref, h_ref, *,
               groups, bk, dtype, act_dtype):
    def compute(expert, rows, cols):                                              # [BM, BN]
        dot = functools.partial(_grouped_dot, x_ref, rows, layer=layer_ref[0], expert=expert,
                                cols=cols, groups=groups, bk=bk, dtype=dtype)
        gate = dot(w_ref=wg_ref, s_ref=sg_ref).astype(act_dtype).astype(jnp.float32)
        value = dot(w_ref=wv_ref, s_ref=sv_ref).astype(act_dtype).astype(jnp.float32)
        return jax.nn.gelu(gate) * value
    _per_used_block(block_expert_ref, h_ref, compute)


def _down_kernel(layer_ref, block_expert_ref, h_ref, w_ref, s_ref, row_gate_ref, row_valid_ref,
                 y_ref, *, groups, bk, dtype, act_dtype):
    def compute(expert, rows, cols):                                              # [BM, BN]
        y = _grouped_dot(h_ref, rows, w_ref, s_ref, layer_ref[0], expert, cols,
                         groups=groups, bk=bk, dtype=dtype)
        y = y.astype(act_dtype).astype(jnp.float32)
        gate = row_gate_ref[rows].astype(act_dtype).astype(jnp.float32)           # [BM]
        valid = row_valid_ref[rows] != 0                                          # [BM]
        return jnp.where(valid[:, None], y * gate[:, None], 0.0)
    _per_used_block(block_expert_ref, y_ref, compute)


def _call(kernel, out_width: int, out_dtype, layout: BlockLayout, tiling: Tiling, operands,
          w, *, interpret: bool, act_dtype, name: str):
    """One grid over (block, output tile) for kernel on (layer, block_expert, *operands)."""
    k_size, groups = w[0].shape[2], w[1].shape[2]
    bn = _pow2_tile(out_width, tiling.block_n)
    bk = _pow2_tile(k_size // groups, tiling.block_k)
    if not interpret and min(bn, bk, tiling.block_rows) < 16:
        raise ValueError(f"{name}: tiles need widths with a power-of-two factor >= 16 "
                         f"(output {out_width}, {groups} groups of {k_size // groups})")
    bm, nb = tiling.block_rows, layout.num_blocks
    dtype = jnp.float32 if interpret else act_dtype   # XLA:CPU has no bf16 x bf16 -> f32 dot
    body = functools.partial(kernel, groups=groups, bk=bk, dtype=dtype, act_dtype=act_dtype)
    return pl.pallas_call(
        body,
        out_shape=jax.ShapeDtypeStruct((nb * bm, out_width), out_dtype),
        grid=(nb, out_width // bn),
        # inputs: no BlockSpec, i.e. whole arrays by address; each program loads its own tiles
        out_specs=pl.BlockSpec((bm, bn), lambda b, n: (b, n)),
        compiler_params=plgpu.CompilerParams(num_warps=tiling.num_warps,
                                             num_stages=tiling.num_stages),
        interpret=interpret,
        name=name,
    )(*operands)


def fused_moe(x: jax.Array, gates: jax.Array, experts: jax.Array,
              w_gate: QuantizedWeight8bit, w_value: QuantizedWeight8bit,
              w_down: QuantizedWeight8bit, *, layer: jax.Array | int = 0,
              tiling: Tiling | None = None, interpret: bool = False) -> jax.Array:
    """x [M, D], gates/experts [M, k] -> [M, D]: sum_j gates[m, j] * expert_{experts[m, j]}(x[m]).

    Weights are [E, D, F], [E, D, F], [E, F, D] (or [L, E, ...] with `layer` selecting the
    layer inside the kernel). `interpret=True` runs the kernels on CPU (tests).
    """
    m, k = experts.shape
    d = x.shape[1]
    wg, wv, wd = _stacked(w_gate), _stacked(w_value), _stacked(w_down)
    e, f = wg[0].shape[1], wg[0].shape[3]
    tiling = tiling or tiling_for(m)
    layout = sort_into_blocks(experts, e, tiling.block_rows)
    valid = layout.valid                                                          # [R]
    pair = jnp.minimum(layout.row_pair, m * k - 1)                                # [R]
    token = jnp.where(valid, layout.row_pair // k, m)                             # [R], m = dropped
    xs = jnp.where(valid[:, None], x[pair // k], 0).astype(x.dtype)              # [R, D]
    row_gate = jnp.where(valid, gates.reshape(-1)[pair], 0).astype(jnp.float32)   # [R]
    layer = jnp.asarray(layer, jnp.int32).reshape(1)
    common = dict(interpret=interpret, act_dtype=x.dtype)
    h = _call(_up_kernel, f, x.dtype, layout, tiling,                             # [R, F]
              (layer, layout.block_expert, xs, *wg, *wv), wg, name="moe_up", **common)
    y = _call(_down_kernel, d, jnp.float32, layout, tiling,                       # [R, D]
              (layer, layout.block_expert, h, *wd, row_gate, valid.astype(jnp.int32)), wd,
              name="moe_down", **common)
    out = jnp.zeros((m, d), jnp.float32).at[token].add(y, mode="drop")            # [M, D]
    return out.astype(x.dtype)

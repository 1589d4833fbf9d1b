"""Fused int8 MoE for GPUs (Pallas, Triton backend): experts read in place, per sorted block.

Two kernels, each one `pallas_call` over a grid of (block, output tile):
- up:   h[p] = gelu(x[t] @ Wgate[e]) * (x[t] @ Wvalue[e])      [M, D] x [E, D, F] -> [P+1, F]
- down: y[p] = gate[p] * (h[p] @ Wdown[e])                       [P+1, F] x [E, F, D] -> [P+1, D]
  (rounded to the activation type, as the XLA paths round each expert's gated output)
where p runs over the token-expert pairs of a block (`sort_into_blocks`), t = p // k is the
pair's token and e the block's expert. The kernels gather their rows by pair index and store
them back by pair index (masked: padding rows load nothing and store nothing), so nothing is
materialised in sorted or padded order; a token's output is then its k pair rows summed in
order, in float32 (y viewed as [M, k, D]). Row P of h and y is scratch that no valid row touches.

How only the selected experts' weights are read: the weight operands have no BlockSpec
(the kernel gets the whole stack's address; nothing is copied in or out), and program
(b, n) loads exactly the tiles `w[layer, block_expert[b], k-tile, n-tile]` for the k-tiles
of its K range and its one n-tile (grok.kernels.block_layout.matmul_tiles); a block whose
expert is -1 (unused) loads and stores nothing. Over the grid each used block therefore
reads its expert's [K, N] matrix once, and an expert is read by as many blocks as its rows
need: with the decode tiling (BM >= M) one block per selected expert, so the kernel reads
exactly the selected experts' bytes; with the prefill tiling ceil(rows/BM) times (a grouped
GEMM's weight re-reads; the grid's first axis is the block, the fastest-launched, so the
blocks of one expert load the same weight tile at about the same time, from L2).
grok.benchmarks.kernel_accounting counts these tiles.

Scales are applied per scale group to the float32 partial sums inside the kernel (the int8
tile is converted to the matmul type in registers), so the weight is never dequantized in
memory. Padding rows are excluded with masks and `where` (never multiplied by a zero gate),
and a row's output depends only on its own activations and its own expert: a NaN in one
expert reaches only the rows routed to it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from grok.kernels.block_layout import (MIN_TILE, BlockLayout, MatmulTiles, Tiling, matmul_tiles,
                                       pow2_tile, side_by_side_tiles, sort_into_blocks, tiling_for)
from grok.ops.quantization import QuantizedWeight8bit


def supported(emb: int, ffn: int, up_groups: int, down_groups: int) -> bool:
    """Whether the GPU kernels' tiles fit these widths (emb D, the device's ffn F, scale groups):
    every output and per-group contracting width needs a power-of-two factor >= 16 (Triton's
    smallest dot). Grok-1 (D 6144, F 32768 over up to 8 devices) fits."""
    if emb % up_groups or ffn % down_groups:
        return False
    return min(pow2_tile(ffn, MIN_TILE), pow2_tile(emb // up_groups, MIN_TILE),
               pow2_tile(emb, MIN_TILE), pow2_tile(ffn // down_groups, MIN_TILE)) >= MIN_TILE


def _stacked(qw: QuantizedWeight8bit) -> tuple[jax.Array, jax.Array]:
    """weight [L, E, K, N] and scales [L, E, G, N]; a per-layer [E, K, N] gets L = 1 (a bitcast)."""
    if qw.weight.ndim == 3:
        return qw.weight[None], qw.scales[None]
    return qw.weight, qw.scales


def _rows(ref, rows: jax.Array, cols: pl.Slice):
    """ref's [BM, BN] view at row indices rows [BM] and columns cols: both as index arrays
    (one gather/scatter form for the Triton lowering and interpret mode)."""
    return ref.at[rows[:, None], (cols.start + jnp.arange(cols.size, dtype=jnp.int32))[None, :]]


def _grouped_dots(load_lhs, weights, layer, expert, cols, *, tiles: MatmulTiles, dtype):
    """For each (w_ref, s_ref) of `weights` (same K and groups):
    sum_g (lhs[:, group g] @ w[layer, expert, group g, cols]) * s[layer, expert, g, cols].

    load_lhs(kk) gives the block's [BM, BK] rows of the contracting tile kk, loaded once per
    step for all the weights. A tuple of float32 [BM, BN]; each int8 tile is converted to the
    matmul type in registers."""
    per_group, bk = tiles.k_size // tiles.groups, tiles.block_k
    zeros = tuple(jnp.zeros((tiles.block_rows, tiles.block_n), jnp.float32) for _ in weights)

    def group(g, accs):
        def step(i, parts):
            kk = pl.ds(pl.multiple_of(g * per_group + i * bk, bk), bk)
            a = load_lhs(kk).astype(dtype)                                        # [BM, BK]
            return tuple(part + jnp.dot(a, w_ref[layer, expert, kk, cols].astype(dtype),
                                        preferred_element_type=jnp.float32)       # [BK, BN] tile
                         for part, (w_ref, _) in zip(parts, weights))
        parts = jax.lax.fori_loop(0, tiles.k_steps_per_group, step, zeros)
        return tuple(acc + part * s_ref[layer, expert, g, cols].astype(jnp.float32)[None, :]
                     for acc, part, (_, s_ref) in zip(accs, parts, weights))
    return jax.lax.fori_loop(0, tiles.groups, group, zeros)


def _per_used_block(block_expert_ref, row_pair_ref, out_ref, tiles: MatmulTiles, num_pairs: int,
                    compute):
    """Program (b, n) stores compute(expert, pairs, valid, cols) [BM, BN] into rows `pairs`
    (block b's pair indices; padding rows masked) and columns n of out_ref, where block b has
    an expert; an unused block (expert -1) loads and stores nothing."""
    b, n = pl.program_id(0), pl.program_id(1)
    bm, bn = tiles.block_rows, tiles.block_n
    expert = block_expert_ref[b]

    @pl.when(expert >= 0)
    def _used():
        pairs = row_pair_ref[pl.ds(pl.multiple_of(b * bm, bm), bm)]              # [BM], P = padding
        valid = pairs < num_pairs                                                 # [BM]
        cols = pl.ds(pl.multiple_of(n * bn, bn), bn)
        value = compute(expert, pairs, valid, cols).astype(out_ref.dtype)
        plgpu.store(_rows(out_ref, pairs, cols), value, mask=valid[:, None])


def _up_kernel(layer_ref, block_expert_ref, row_pair_ref, x_ref, wg_ref, sg_ref, wv_ref, sv_ref,
               h_ref, *, tiles, selected, num_pairs, dtype, act_dtype):
    def compute(expert, pairs, valid, cols):                                      # [BM, BN]
        tokens = jnp.where(valid, pairs // selected, 0)                           # [BM]
        load_x = lambda kk: plgpu.load(_rows(x_ref, tokens, kk), mask=valid[:, None], other=0)
        gate, value = (part.astype(act_dtype).astype(jnp.float32) for part in _grouped_dots(
            load_x, ((wg_ref, sg_ref), (wv_ref, sv_ref)), layer_ref[0], expert, cols,
            tiles=tiles, dtype=dtype))
        return jax.nn.gelu(gate) * value
    _per_used_block(block_expert_ref, row_pair_ref, h_ref, tiles, num_pairs, compute)


def _down_kernel(layer_ref, block_expert_ref, row_pair_ref, h_ref, w_ref, s_ref, gates_ref,
                 y_ref, *, tiles, num_pairs, dtype, act_dtype):
    def compute(expert, pairs, valid, cols):                                      # [BM, BN]
        load_h = lambda kk: plgpu.load(_rows(h_ref, pairs, kk), mask=valid[:, None], other=0)
        y, = _grouped_dots(load_h, ((w_ref, s_ref),), layer_ref[0], expert, cols, tiles=tiles,
                           dtype=dtype)
        y = y.astype(act_dtype).astype(jnp.float32)
        safe = jnp.where(valid, pairs, 0)
        gate = plgpu.load(gates_ref.at[safe], mask=valid, other=0)                # [BM]
        gate = gate.astype(act_dtype).astype(jnp.float32)
        return jnp.where(valid[:, None], y * gate[:, None], 0.0)
    _per_used_block(block_expert_ref, row_pair_ref, y_ref, tiles, num_pairs, compute)


def _call(kernel, out_width: int, out_dtype, layout: BlockLayout, tiling: Tiling, operands, w, *,
          interpret: bool, act_dtype, name: str):
    """One grid over (block, output tile) for kernel on (layer, block_expert, row_pair, *operands);
    the output has a row per pair plus the scratch row P."""
    k_size, groups = w[0].shape[2], w[1].shape[2]
    tiles = matmul_tiles(tiling, k_size, out_width, groups)
    if not interpret and min(tiles.block_n, tiles.block_k, tiles.block_rows) < MIN_TILE:
        raise ValueError(f"{name}: tiles need widths with a power-of-two factor >= {MIN_TILE} "
                         f"(output {out_width}, {groups} groups of {k_size // groups})")
    dtype = jnp.float32 if interpret else act_dtype   # XLA:CPU has no bf16 x bf16 -> f32 dot
    body = functools.partial(kernel, tiles=tiles, num_pairs=layout.num_pairs, dtype=dtype,
                             act_dtype=act_dtype)
    return pl.pallas_call(
        body,
        out_shape=jax.ShapeDtypeStruct((layout.num_pairs + 1, out_width), out_dtype),
        grid=tiles.grid(layout.num_blocks),
        # no BlockSpecs: whole arrays by address; each program loads and stores its own tiles
        compiler_params=plgpu.CompilerParams(num_warps=tiling.num_warps,
                                             num_stages=tiling.num_stages),
        interpret=interpret,
        name=name,
    )(*operands)


def _matmul_kernel(layer_ref, expert_ref, x_ref, *refs, tiles: tuple[MatmulTiles, ...], dtype):
    """Program (b, n): output tile n of the weights' tiles side by side (weight i's tiles
    after weights 0..i-1's), from block b's rows."""
    *weights, out_ref = refs
    b, n = pl.program_id(0), pl.program_id(1)
    bm, bn = tiles[0].block_rows, tiles[0].block_n
    rows = pl.ds(pl.multiple_of(b * bm, bm), bm)
    first = 0
    for i, t in enumerate(tiles):
        @pl.when((n >= first) & (n < first + t.n_tiles))
        def _tile(i=i, t=t, first=first):
            cols = pl.ds(pl.multiple_of((n - first) * bn, bn), bn)
            out, = _grouped_dots(lambda kk: x_ref[rows, kk], ((weights[2 * i], weights[2 * i + 1]),),
                                 layer_ref[0], expert_ref[0], cols, tiles=t, dtype=dtype)
            out_ref[...] = out.astype(out_ref.dtype)
        first += t.n_tiles


def expert_matmuls(x: jax.Array, ws: tuple[QuantizedWeight8bit, ...], expert: jax.Array | int, *,
                   layer: jax.Array | int = 0, interpret: bool = False,
                   name: str = "expert_matmul", out_dtype=jnp.float32) -> tuple[jax.Array, ...]:
    """x [M, K] @ expert `expert` of each w in ws ([E, K, N_i], or [L, E, K, N_i] at `layer`)
    -> a tuple of [M, N_i] in out_dtype (the float32 sums rounded in the kernel).

    The MoE kernels' inner loop (the same tiles, the same in-place reads of one expert's
    tiles, scales in the kernel), one kernel for all the weights: its grid's output tiles
    run over the weights' outputs side by side (one tile width BN for all), so the rows are
    read once for all of them. `name` names the kernel in the compiled program."""
    m, k_size = x.shape
    stacked = [_stacked(w) for w in ws]
    widths = [w.shape[3] for w, _ in stacked]
    tiling, tiles = side_by_side_tiles(m, k_size, widths, [s.shape[2] for _, s in stacked])
    bm, bn = tiling.block_rows, tiling.block_n
    rows = -(-m // bm) * bm
    xs = jnp.zeros((rows, k_size), x.dtype).at[:m].set(x)                       # [M padded, K]
    dtype = jnp.float32 if interpret else x.dtype
    out = pl.pallas_call(
        functools.partial(_matmul_kernel, tiles=tiles, dtype=dtype),
        out_shape=jax.ShapeDtypeStruct((rows, sum(widths)), out_dtype),
        grid=(rows // bm, sum(t.n_tiles for t in tiles)),
        out_specs=pl.BlockSpec((bm, bn), lambda b, n: (b, n)),
        compiler_params=plgpu.CompilerParams(num_warps=tiling.num_warps,
                                             num_stages=tiling.num_stages),
        interpret=interpret,
        name=name,
    )(jnp.asarray(layer, jnp.int32).reshape(1), jnp.asarray(expert, jnp.int32).reshape(1), xs,
      *(a for w in stacked for a in w))
    bounds = np.cumsum([0, *widths])
    return tuple(out[:m, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:]))


def expert_matmul(x: jax.Array, w: QuantizedWeight8bit, expert: jax.Array | int, *,
                  layer: jax.Array | int = 0, interpret: bool = False,
                  name: str = "expert_matmul", out_dtype=jnp.float32) -> jax.Array:
    """x [M, K] @ expert `expert` of w ([E, K, N], or [L, E, K, N] at `layer`) -> [M, N] in
    out_dtype: `expert_matmuls` on one weight, a GEMV at M = 1 to set beside a plain int8
    GEMV of the same bytes on a GPU."""
    return expert_matmuls(x, (w,), expert, layer=layer, interpret=interpret, name=name,
                          out_dtype=out_dtype)[0]


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
    tiling = tiling or tiling_for(m, k, e)
    layout = sort_into_blocks(experts, e, tiling.block_rows)
    layer = jnp.asarray(layer, jnp.int32).reshape(1)
    grid_inputs = (layer, layout.block_expert, layout.row_pair)
    common = dict(interpret=interpret, act_dtype=x.dtype)
    h = _call(functools.partial(_up_kernel, selected=k), f, x.dtype, layout, tiling,  # [P+1, F]
              (*grid_inputs, x, *wg, *wv), wg, name="moe_up", **common)
    y = _call(_down_kernel, d, x.dtype, layout, tiling,                           # [P+1, D]
              (*grid_inputs, h, *wd, gates.reshape(-1).astype(jnp.float32)), wd,
              name="moe_down", **common)
    y = y[:m * k].reshape(m, k, d).astype(jnp.float32)                            # [M, k, D]
    return jnp.sum(y, axis=1).astype(x.dtype)                                     # [M, D]

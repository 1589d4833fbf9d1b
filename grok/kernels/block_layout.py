"""Token->expert pairs sorted into blocks of rows that share one expert (host-free, jnp).

A kernel program handles one block: BM rows, all routed to the block's expert, so it reads
only that expert's weights. Each expert's pairs fill ceil(count/BM) consecutive blocks; the
last one is padded with invalid rows (pair index P). Blocks past the used ones have expert
-1 and read nothing. The number of blocks NB is static: an expert with c pairs takes
ceil(c/BM) <= c // BM + 1 blocks, and at most min(E, P) experts have pairs, so
NB = P // BM + min(E, P) always suffices; when BM >= M (an expert has at most M pairs, one
per token), every expert takes one block and NB = min(E, P).

The tiling (BM, and each matmul's BN and BK) lives here too: the kernels (grok.kernels.fused_moe)
take their grids from `matmul_tiles`, and the accounting of what those grids read and compute
(grok.benchmarks.kernel_accounting) enumerates the same tiles.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

# Rows up to which a call is "decode": one block per selected expert (BM >= M).
DECODE_ROWS = 64
# Prefill blocks: at most this many rows (Triton's dot tiles), at least Triton's smallest dot.
PREFILL_MAX_ROWS, MIN_TILE = 64, 16
# Prefill padding bound: the grid computes at most (1 + 1/PADDING_SHARE) times the pairs' rows.
PADDING_SHARE = 4


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


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def tiling_for(rows: int, selected: int, experts: int) -> Tiling:
    """The tiling for `rows` tokens, each routed to `selected` of `experts` experts.

    Decode (rows <= DECODE_ROWS): BM = rows rounded up to a power of two (>= 16), so each
    selected expert is one block and its weight tiles are read once. Prefill: the largest
    power-of-two BM in [16, 64] with E*BM <= P/PADDING_SHARE (P = rows*selected pairs), so the
    blocks the grid computes hold at most P + E*BM <= 1.25*P rows for any routing (when even
    BM = 16 exceeds that, 16)."""
    if rows <= DECODE_ROWS:
        return Tiling(block_rows=max(MIN_TILE, _next_power_of_2(rows)))
    pairs, bm = rows * selected, PREFILL_MAX_ROWS
    while bm > MIN_TILE and experts * bm * PADDING_SHARE > pairs:
        bm //= 2
    return Tiling(block_rows=bm, block_n=128, block_k=64, num_warps=8, num_stages=3)


def pow2_tile(width: int, most: int) -> int:
    """The largest power of two <= most that divides width."""
    tile = 1
    while tile * 2 <= most and width % (tile * 2) == 0:
        tile *= 2
    return tile


@dataclasses.dataclass(frozen=True)
class MatmulTiles:
    """One kernel's grid over (block, output tile): program (b, n) multiplies block b's BM rows
    [BM, K] by columns [n*BN, (n+1)*BN) of its expert's [K, N] weight, BK contracting rows
    per step, each of the G scale groups (K/G rows) in its own steps."""

    block_rows: int     # BM
    block_n: int        # BN
    block_k: int        # BK
    k_size: int         # K
    out_width: int      # N
    groups: int         # G

    @property
    def n_tiles(self) -> int:
        return self.out_width // self.block_n

    @property
    def k_steps_per_group(self) -> int:
        return self.k_size // self.groups // self.block_k

    def grid(self, num_blocks: int) -> tuple[int, int]:
        return num_blocks, self.n_tiles


def matmul_tiles(tiling: Tiling, k_size: int, out_width: int, groups: int) -> MatmulTiles:
    """The tiles of a [BM, K] x [K, N] kernel with G scale groups under `tiling`."""
    return MatmulTiles(tiling.block_rows, pow2_tile(out_width, tiling.block_n),
                       pow2_tile(k_size // groups, tiling.block_k), k_size, out_width, groups)


def side_by_side_tiles(rows: int, k_size: int, widths,
                       groups) -> tuple[Tiling, tuple[MatmulTiles, ...]]:
    """The tiling and tiles of one kernel of `rows` rows over several [K, N_i] weights (G_i
    scale groups), every row through every weight (one "expert" each), the weights' output
    tiles side by side: one BN for all, the largest power of two <= the tiling's BN that
    divides every N_i. Up to DECODE_ROWS rows are one block: each weight tile is read once."""
    tiling = tiling_for(rows, 1, 1)
    tiling = dataclasses.replace(tiling, block_n=min(pow2_tile(n, tiling.block_n) for n in widths))
    return tiling, tuple(matmul_tiles(tiling, k_size, n, g) for n, g in zip(widths, groups))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class BlockLayout:
    """Sorted pairs: `row_pair` [R] (pair index m*k+j, or P where padding), `block_expert` [NB]
    (the block's expert, -1 where unused). R = NB*BM."""

    row_pair: jax.Array
    block_expert: jax.Array
    block_rows: int = dataclasses.field(metadata=dict(static=True))
    num_pairs: int = dataclasses.field(metadata=dict(static=True))

    @property
    def num_blocks(self) -> int:
        return self.block_expert.shape[0]

    @property
    def valid(self) -> jax.Array:
        """[R] whether a sorted row holds a pair (False for padding)."""
        return self.row_pair < self.num_pairs


def num_blocks(num_pairs: int, num_experts: int, block_rows: int, rows_per_expert: int) -> int:
    """Static block count for P pairs, E experts, BM rows per block, at most that many pairs per expert."""
    if block_rows >= rows_per_expert:
        return min(num_experts, num_pairs)
    return num_pairs // block_rows + min(num_experts, num_pairs)


def sort_into_blocks(experts: jax.Array, num_experts: int, block_rows: int) -> BlockLayout:
    """experts [M, k] (each token's k distinct experts) -> the block layout of its M*k pairs."""
    m, k = experts.shape
    p = m * k
    nb = num_blocks(p, num_experts, block_rows, m)
    flat = experts.reshape(-1).astype(jnp.int32)                                  # [P]
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)                      # [P] pairs by expert
    counts = jnp.bincount(flat, length=num_experts).astype(jnp.int32)             # [E]
    blocks = (counts + block_rows - 1) // block_rows                              # [E]
    first_block = jnp.cumsum(blocks) - blocks                                     # [E] exclusive
    first_sorted = jnp.cumsum(counts) - counts                                    # [E] exclusive
    sorted_expert = flat[order]                                                   # [P]
    rank = jnp.arange(p, dtype=jnp.int32) - first_sorted[sorted_expert]           # [P] within expert
    dest = first_block[sorted_expert] * block_rows + rank                         # [P] padded row
    row_pair = jnp.full((nb * block_rows,), p, jnp.int32).at[dest].set(order)     # [R]
    # block b belongs to the expert whose block range holds it: count experts ending at or before b
    ends = jnp.cumsum(blocks)                                                     # [E]
    b = jnp.arange(nb, dtype=jnp.int32)
    owner = jnp.sum(ends[None, :] <= b[:, None], axis=1).astype(jnp.int32)        # [NB]
    block_expert = jnp.where(b < ends[-1], owner, -1)
    return BlockLayout(row_pair, block_expert, block_rows, p)

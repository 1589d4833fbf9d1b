"""Token->expert pairs sorted into blocks of rows that share one expert (host-free, jnp).

A kernel program handles one block: BM rows, all routed to the block's expert, so it reads
only that expert's weights. Each expert's pairs fill ceil(count/BM) consecutive blocks; the
last one is padded with invalid rows (pair index P). Blocks past the used ones have expert
-1 and read nothing. The number of blocks NB is static: an expert with c pairs takes
ceil(c/BM) <= c // BM + 1 blocks, and at most min(E, P) experts have pairs, so
NB = P // BM + min(E, P) always suffices; when BM >= M (an expert has at most M pairs, one
per token), every expert takes one block and NB = min(E, P).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


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

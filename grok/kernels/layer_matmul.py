"""A dense int8 projection of a few rows read in place from every layer's weight stack.

Inside the layer scan a dense weight is a slice `w[layer]` of its [L, K, N] stack; XLA:GPU's
GEMMs take a dynamic slice only on an operand's major-most axis and copy the rest of it out of
the stack first (for Grok-1's attention, 168 MiB a layer at 64 rows). `layer_matmul` runs the
MoE kernels' inner loop (grok.kernels.fused_moe.expert_matmul) with the stack as a stack of
"experts" and the layer index as the expert: the kernel reads w[layer]'s tiles where they lie,
once for up to DECODE_ROWS rows (one row block), with the scales applied in the kernel and
the float32 sums rounded to the activation type there (no float32 [M, N] buffer).
grok.benchmarks.kernel_accounting counts what its grid reads.

Glossary: M rows, K contracting width, N output width, L layers, G scale groups.
"""

from __future__ import annotations

from typing import Sequence

import jax

from grok.kernels.block_layout import DECODE_ROWS, MIN_TILE, pow2_tile
from grok.kernels.fused_moe import expert_matmuls
from grok.ops.quantization import QuantizedWeight8bit

LAYER_MATMUL = "layer_matmul"   # the kernel's name in a compiled program


def layer_matmul_fits(rows: int, k_size: int, out_width: int, groups: int) -> bool:
    """Whether `layer_matmul` takes this problem on a GPU: at most DECODE_ROWS rows (one row
    block reads the weight once), and output and per-group contracting widths with a
    power-of-two factor >= 16 (Triton's smallest dot)."""
    if rows > DECODE_ROWS or k_size % groups:
        return False
    return min(pow2_tile(out_width, MIN_TILE), pow2_tile(k_size // groups, MIN_TILE)) >= MIN_TILE


def layer_matmul(x: jax.Array, w: QuantizedWeight8bit, layer: jax.Array | int, *,
                 interpret: bool = False) -> jax.Array:
    """x [M, K] @ w[layer] for a stack w [L, K, N] (scales [L, G, N]) -> [M, N] in x's dtype
    (float32 sums rounded once, as qmatmul's).

    No slice of the stack is made: the kernel gets the whole stack and the layer index.
    `interpret=True` runs it on CPU (tests)."""
    return layer_matmuls(x, (w,), layer, interpret=interpret)[0]


def layer_matmuls(x: jax.Array, ws: Sequence[QuantizedWeight8bit], layer: jax.Array | int, *,
                  interpret: bool = False) -> tuple[jax.Array, ...]:
    """x @ w[layer] for each stack w [L, K, N_i] in ws -> a tuple of [M, N_i] in x's dtype, by
    one kernel (attention's query, key and value: x's rows are read once for the three)."""
    for w in ws:
        if w.weight.ndim != 3:
            raise ValueError(f"layer_matmul takes a weight stack [L, K, N], got {w.weight.shape}")
    return expert_matmuls(x, tuple(ws), layer, interpret=interpret, name=LAYER_MATMUL,
                          out_dtype=x.dtype)

"""Device kernels (Pallas) beside grok.ops: the fused int8 Mixture-of-Experts for GPUs.

`fused_moe` runs the experts' three int8 matmuls on token->expert pairs sorted into blocks
(`sort_into_blocks`), reading each selected expert's weight tiles in place from the stack
([E, K, N] or, with a layer index, [L, E, K, N]); no slice or copy of the stack exists.
On CPU the kernels run with `interpret=True` (tests); the model uses them on GPUs
(grok.model.moe). `expert_matmul` is their inner loop on one expert of one weight stack (a
GEMV at one row), to measure against a plain int8 GEMV on a GPU; `layer_matmul(s)` is that
loop on dense weight stacks [L, K, N] with the layer as the index (the attention's
projections on GPUs, grok.model.attention); `decode_attention` is one decode token's attention
over one layer's key and value windows (online softmax), read in place from every layer's cache.

Glossary: M tokens, D emb_size, F ffn_size (the device's share of it under model
parallelism), E experts, k selected experts per token, P token-expert pairs (M*k),
L layers, G scale groups, BM rows per block, NB blocks, R padded sorted rows (NB*BM),
BK contracting tile, BN output tile, K contracting width, N output width.
"""

from grok.kernels.block_layout import (BlockLayout, MatmulTiles, Tiling, matmul_tiles,
                                       sort_into_blocks, tiling_for)
from grok.kernels.decode_attention import DECODE_ATTENTION, decode_attention, decode_attention_fits
from grok.kernels.fused_moe import expert_matmul, fused_moe, supported
from grok.kernels.layer_matmul import LAYER_MATMUL, layer_matmul, layer_matmul_fits, layer_matmuls

__all__ = ["BlockLayout", "DECODE_ATTENTION", "LAYER_MATMUL", "MatmulTiles", "Tiling",
           "decode_attention", "decode_attention_fits", "expert_matmul", "fused_moe",
           "layer_matmul", "layer_matmul_fits", "layer_matmuls", "matmul_tiles", "sort_into_blocks",
           "supported", "tiling_for"]

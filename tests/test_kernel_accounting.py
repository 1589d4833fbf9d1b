"""What the MoE kernels' grids read and compute (grok.benchmarks.kernel_accounting), at a small
width: at decode (M = 1, 64) the weight tiles the programs load are exactly the selected
experts' bytes, none loaded twice; a prefill chunk's grid computes at most 1.25x the grouped
ideal 2*T*k*3*D*F for any routing; and in the compiled GPU step the MoE outside the kernels
moves next to nothing."""

import numpy as np
import pytest

from grok.benchmarks import kernel_accounting as acct
from grok.benchmarks.gpu_target import plugin_available

E, K, D, F = 8, 2, 256, 512


def shapes(rows: int) -> acct.MoEShapes:
    return acct.MoEShapes(rows=rows, selected=K, experts=E, emb=D, ffn=F, up_groups=1,
                          down_groups=8, layers=2, act_bytes=2)


def all_on_one(rows: int) -> np.ndarray:
    """Every token on expert 0 and one other."""
    return np.stack([np.zeros(rows, np.int32), 1 + np.arange(rows) % (E - 1)], axis=1)


@pytest.mark.parametrize("rows", [1, 64])
def test_decode_grid_loads_each_selected_expert_once(rows):
    per_expert = 2 * (D * F + 2 * F) + F * D + 2 * 8 * D       # int8 weights + bf16 scales
    for experts in (acct.random_routing(rows, K, E, seed=rows), acct.spread_routing(rows, K, E),
                    all_on_one(rows)):
        c = acct.count_grid(shapes(rows), experts)
        distinct = np.unique(experts).size
        assert c.distinct_experts == distinct and c.used_blocks == distinct
        assert c.weight_loads == c.weight_unique == c.selected_bytes == distinct * per_expert
        assert c.reread_factor == 1.0
    # one row reads its k experts, not the stack
    assert acct.count_grid(shapes(1), np.array([[5, 2]])).selected_bytes == 2 * per_expert


def crowded_blocks(rows: int, block_rows: int) -> np.ndarray:
    """A routing that leaves almost every expert's last block nearly empty: E-1 experts get
    q*BM + 1 pairs, the last one the rest (each token's two experts distinct)."""
    pairs = rows * K
    q = (pairs // E - 1) // block_rows
    counts = [q * block_rows + 1] * (E - 1)
    counts.append(pairs - sum(counts))
    flat = np.repeat(np.arange(E), counts)                   # sorted; no expert has > rows pairs
    return np.stack([flat[:rows], flat[rows:]], axis=1)


def test_prefill_grid_flops_within_a_quarter_of_the_grouped_ideal():
    rows = 512
    s = shapes(rows)
    ideal = acct.grouped_ideal_flops(s)
    block_rows = acct.tiling_for(rows, K, E).block_rows
    crowded = crowded_blocks(rows, block_rows)
    assert (crowded[:, 0] != crowded[:, 1]).all()
    for experts in (acct.random_routing(rows, K, E), acct.spread_routing(rows, K, E), crowded):
        c = acct.count_grid(s, experts)
        assert ideal <= c.flops <= 1.25 * ideal
        # every block used at most: the bound the tiling guarantees
        assert c.flops * c.blocks / c.used_blocks <= 1.25 * ideal
        # a grouped GEMM reads an expert's tiles once per row block of it
        assert c.weight_unique == c.selected_bytes < c.weight_loads
    c = acct.count_grid(s, crowded)
    assert c.flops > 1.15 * ideal                              # the crowding shows


@pytest.mark.slow
@pytest.mark.skipif(not plugin_available(), reason="the CUDA plugin wheels are absent")
def test_compiled_gpu_step_moe_is_the_kernels_reading_selected_experts():
    """sample_step for an H200 at a small width (F = 1024: the kernels' tiles fit), 1 and 64
    slots: the compiled kernels' grids are the block layout's (layer_moe checks), the MoE's
    launches outside the kernels move under 64 KiB, the weight tiles loaded are the ideal's
    (the expected experts' weights), and the MoE column adds the activations, each element once."""
    from grok.benchmarks import gpu_hlo

    flags = ["--vocab", "1024", "--emb", "256", "--widening", "6", "--q-heads", "8",
             "--kv-heads", "8", "--key-size", "32", "--experts", str(E), "--selected-experts",
             str(K), "--layers", "2", "--sequence-len", "256", "--kv-len", "128",
             "--prefill-len", "0", "--batch-size", "1,64", "--target", "h200", "--mesh", "1,1"]
    report = gpu_hlo.run(gpu_hlo.parse_args(flags))
    for r in report["decode"]:
        moe = r["moe_kernels"]
        assert moe is not None, "the GPU step does not run the MoE kernels"
        assert moe["outside_kernel_bytes"] < 64 * 1024
        routed = moe["random_routing"]
        assert routed["weight_loads"] == routed["selected_bytes"]
        assert routed["weight_loads"] == pytest.approx(r["moe_ideal_mib"] * 2 ** 20, rel=1e-3)
        once = moe["outside_kernel_bytes"] + routed["weight_unique"] + routed["activation_bytes"]
        assert r["moe_mib"] * 2 ** 20 == once

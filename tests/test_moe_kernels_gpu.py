"""The fused MoE kernels compiled for an H100 (sm_90) without a GPU (deviceless XLA:GPU).

Asserts on the optimised HLO of a 2-layer scan that runs the kernels with the layer index as
an operand: the only s8 buffers are the entry parameters (no copy or slice of expert weights,
no concatenation), and no dot outside the kernels touches expert weights (no dense-expanded
ragged dot). The kernels' reads and FLOPs are counted from their grids
(grok.benchmarks.kernel_accounting; grok.kernels.fused_moe says why a program reads only its
block's expert tiles).
"""

import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import SingleDeviceSharding

from grok.kernels import expert_matmul, fused_moe
from grok.benchmarks import kernel_accounting as acct
from grok.ops.quantization import QuantizedWeight8bit

from grok.benchmarks.gpu_target import compile_only_devices, plugin_available

pytestmark = pytest.mark.skipif(not plugin_available(), reason="needs the CUDA plugin wheels")

L, E, D, F, K, G = 2, 8, 256, 512, 2, 8   # layers, experts, emb, ffn, selected, scale groups


def compiled_hlo(m: int) -> str:
    device = SingleDeviceSharding(compile_only_devices("h100", 1)[0])
    sd = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=device)
    qw = lambda k, n: QuantizedWeight8bit(sd((L, E, k, n), jnp.int8), sd((L, E, G, n), jnp.bfloat16))

    def layers(x, gates, experts, w_gate, w_value, w_down):
        def layer(x, index):
            return fused_moe(x, gates, experts, w_gate, w_value, w_down, layer=index), None
        return jax.lax.scan(layer, x, jnp.arange(L))[0]

    lowered = jax.jit(layers).lower(sd((m, D), jnp.bfloat16), sd((m, K), jnp.bfloat16),
                                    sd((m, K), jnp.int32), qw(D, F), qw(D, F), qw(F, D))
    return lowered.compile().as_text()


def s8_buffers(hlo: str) -> list[str]:
    """Instructions producing s8 data other than entry parameters and tuple plumbing."""
    found = []
    for line in hlo.splitlines():
        match = re.match(r"\s*(?:ROOT )?%(\S+) = (\(?s8\[)", line)
        if match and not re.search(r" (parameter|get-tuple-element|tuple|bitcast)\(", line):
            found.append(line.strip()[:160])
    return found


@pytest.mark.slow
@pytest.mark.parametrize("m", [1, 1024])   # decode tiling / a prefill chunk
def test_kernels_compile_for_h100_reading_experts_in_place(m):
    hlo = compiled_hlo(m)
    assert hlo.count('custom_call_target="__gpu$xla.gpu.triton"') >= 2
    assert s8_buffers(hlo) == []
    dots = [l for l in hlo.splitlines() if re.search(r"= \S+ dot\(|ragged-dot|ragged_dot", l)]
    assert dots == []                       # every matmul is inside the kernels

    # what the grid reads and computes for a random routing (grok.benchmarks.kernel_accounting)
    shapes = acct.MoEShapes(rows=m, selected=K, experts=E, emb=D, ffn=F, up_groups=G,
                            down_groups=G, layers=L, act_bytes=2)
    count = acct.count_grid(shapes, acct.random_routing(m, K, E))
    grids = [tuple(int(v) for v in g) for g in re.findall(r"grid_x = (\d+) : i32, grid_y = (\d+)", hlo)]
    assert sorted(grids) == sorted(count.grids.values())      # the compiled grids are the layout's
    if m <= 64:                             # decode: each selected expert's tiles loaded once
        assert count.weight_loads == count.selected_bytes
    else:                                   # prefill: padding at most E*BM <= P/4 rows
        assert count.flops <= 1.25 * acct.grouped_ideal_flops(shapes)


@pytest.mark.slow
def test_whole_model_runs_the_kernels_on_the_layer_stacks_for_h100():
    """build_forward compiled for an H100: the MoE is the kernels (auto dispatch) reading the
    [L, E, ...] stacks whole; no s8 buffer of expert shape exists (attention's are i16's)."""
    from grok.config import LanguageModelConfig, TransformerConfig
    from grok.model.transformer import abstract_params, build_forward

    config = LanguageModelConfig(
        model=TransformerConfig(emb_size=256, key_size=32, num_q_heads=8, num_kv_heads=8,
                                num_layers=2, num_experts=8, num_selected_experts=2,
                                widening_factor=3, attn_output_multiplier=0.35),
        vocab_size=512, sequence_len=64, embedding_multiplier_scale=4.0, output_multiplier_scale=0.5)
    f = config.model.ffn_size
    device = SingleDeviceSharding(compile_only_devices("h100", 1)[0])
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          abstract_params(config))
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32, sharding=device)
    forward = build_forward(config)
    hlo = jax.jit(lambda p, t: forward(p, t)[0]).lower(params, tokens).compile().as_text()
    assert hlo.count('custom_call_target="__gpu$xla.gpu.triton"') >= 2
    expert_shaped = [b for b in s8_buffers(hlo) if str(f) in b.split("=")[1][:40]]
    assert expert_shaped == []


@pytest.mark.slow
def test_expert_gemv_compiles_for_h100_at_grok_width():
    """grok.kernels.expert_matmul, the kernels' inner loop as a GEMV [1, 6144] x expert e of an
    [8, 6144, 32768] stack (the GPU calibration's shape): one Triton kernel, no s8 buffer."""
    device = SingleDeviceSharding(compile_only_devices("h100", 1)[0])
    sd = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=device)
    stack = QuantizedWeight8bit(sd((8, 6144, 32768), jnp.int8), sd((8, 1, 32768), jnp.bfloat16))
    hlo = jax.jit(expert_matmul).lower(sd((1, 6144), jnp.bfloat16), stack,
                                       sd((), jnp.int32)).compile().as_text()
    assert hlo.count('custom_call_target="__gpu$xla.gpu.triton"') == 1
    assert s8_buffers(hlo) == []

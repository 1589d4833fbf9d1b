"""The compiled decode step, read from its optimised HLO (CPU, mesh (1, 8), tiny model).

What a GPU would do follows from the program's structure: per layer at most two collectives
(tensor parallelism: after attention's output projection and after the MoE), no
`conditional` (a device -> host round trip per expert on GPU), and no int8 buffer holding
more than half a layer's experts (only the selected experts are read, in place).
"""

import numpy as np
import pytest

from grok import checkpoint
from grok.benchmarks import hlo_check
from grok.config import LanguageModelConfig, TransformerConfig
from grok.engine.runner import ModelRunner
from grok.serving.runner import InferenceRunner

MESH = (1, 8)
# Grok-1's proportions on an 8-way model axis: 8 kv heads (one per device), 2 query heads per
# kv head, 8 experts, top-2.
CONFIG = LanguageModelConfig(
    model=TransformerConfig(emb_size=64, key_size=8, num_q_heads=16, num_kv_heads=8, num_layers=2,
                            num_experts=8, num_selected_experts=2, widening_factor=2),
    vocab_size=128, sequence_len=32)                  # RuntimeConfig's default: bfloat16
SLOTS = 2


@pytest.fixture(scope="module")
def lowered_sample_step():
    params = checkpoint.stack_params(
        checkpoint.quantize_tensors(checkpoint.random_tensors(CONFIG, 0), CONFIG), CONFIG)
    runner = ModelRunner(CONFIG, bs_per_device=SLOTS / np.prod(MESH))
    ir = InferenceRunner(runner, local_mesh_config=MESH, pad_sizes=(8,), params=params,
                         tokenizer=object(), precompile=False)
    ir.initialize()
    assert ir.batch_size == SLOTS
    return ir.sample_step.lower(ir.params, ir.new_memory())


@pytest.fixture(scope="module")
def sample_step_hlo(lowered_sample_step):
    return lowered_sample_step.compile().as_text()


@pytest.fixture(scope="module")
def layer_loop(sample_step_hlo):
    return hlo_check.analyse(sample_step_hlo)


def test_the_layer_loop_is_found(layer_loop):
    assert layer_loop.trip_count == CONFIG.model.num_layers


def test_two_all_reduces_per_layer(layer_loop):
    assert layer_loop.collectives == ["all-reduce", "all-reduce"]


def test_the_all_reduces_are_in_the_activation_dtype(lowered_sample_step):
    """Both are explicit row-parallel sums (attention's output projection, the MoE) of bf16
    activations; XLA:CPU widens them to f32 afterwards, a GPU does not."""
    types = hlo_check.lowered_all_reduce_types(lowered_sample_step.as_text())
    assert types == ["bf16", "bf16", "bf16"]   # + the embedding lookup's one, outside the loop


def test_no_conditional_in_the_layer_loop(layer_loop):
    assert layer_loop.conditionals == 0


def test_no_copy_of_the_expert_stack(layer_loop):
    c = CONFIG.model
    per_device_stack = c.num_experts * c.emb_size * c.ffn_size // MESH[1]   # one weight, one layer
    assert layer_loop.largest_int8_buffer <= per_device_stack // 2


# ---- the checker itself, on hand-written HLO -------------------------------------------------
BAD_LOOP = """\
HloModule m

%fused_slice (p0: s8[2,8,4,4], p1: s32[]) -> s8[8,4,4] {
  %p0 = s8[2,8,4,4]{3,2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  ROOT %ds = s8[8,4,4]{2,1,0} dynamic-slice(%p0, %p1), dynamic_slice_sizes={1,8,4,4}
}

%fused_convert (p0: s8[4,4]) -> bf16[4,4] {
  %p0 = s8[4,4]{1,0} parameter(0)
  ROOT %c = bf16[4,4]{1,0} convert(%p0)
}

%branch (p: (f32[4])) -> (f32[4]) {
  %p = (f32[4]) parameter(0)
  ROOT %t = (f32[4]) tuple(%p)
}

%body (state: (s32[], s8[2,8,4,4])) -> (s32[], s8[2,8,4,4]) {
  %state = (s32[], s8[2,8,4,4]{3,2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %w = s8[2,8,4,4]{3,2,1,0} get-tuple-element(%state), index=1
  %stack = s8[8,4,4]{2,1,0} fusion(%w, %i), kind=kLoop, calls=%fused_slice
  %one = s8[4,4]{1,0} bitcast(%stack)
  %wf = bf16[4,4]{1,0} fusion(%one), kind=kLoop, calls=%fused_convert
  %ag = f32[4]{0} all-gather-start(%i), dimensions={0}
  %agd = f32[4]{0} all-gather-done(%ag)
  %ar = f32[4]{0} all-reduce(%agd), to_apply=%branch
  %cond = (f32[4]) conditional(%i, %agd, %agd), branch_computations={%branch, %branch}
  ROOT %out = (s32[], s8[2,8,4,4]{3,2,1,0}) tuple(%i, %w)
}

%cond (state: (s32[], s8[2,8,4,4])) -> pred[] {
  %state = (s32[], s8[2,8,4,4]{3,2,1,0}) parameter(0)
  ROOT %p = pred[] constant(true)
}

ENTRY %main (w: s8[2,8,4,4]) -> (s32[], s8[2,8,4,4]) {
  %w = s8[2,8,4,4]{3,2,1,0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], s8[2,8,4,4]{3,2,1,0}) tuple(%zero, %w)
  ROOT %loop = (s32[], s8[2,8,4,4]{3,2,1,0}) while(%init), condition=%cond, body=%body, metadata={op_name="jit(sample_step)/language_model/transformer/while"}, backend_config={"known_trip_count":{"n":"2"}}
}
"""


def test_the_checker_sees_each_defect():
    report = hlo_check.analyse(BAD_LOOP)
    assert report.trip_count == 2
    assert report.collectives == ["all-gather", "all-reduce"]      # an async pair counts once
    assert report.conditionals == 1
    assert report.largest_int8_buffer == 8 * 4 * 4                  # the whole stack sliced out
    assert report.int8_float_copies == ["wf"]


def test_the_checker_command_fails_on_a_bad_loop(tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_text(BAD_LOOP)
    with pytest.raises(SystemExit):
        hlo_check.main([str(path), "--gpu"])
    out = capsys.readouterr().out
    assert "1 conditionals in the layer loop" in out
    # --gpu: the stack sliced out whole (s8) and the float copy of a weight
    assert "2 copies a GPU step must not make: stack: writes int8 s8[8,4,4]; wf: writes bf16[4,4]" in out

"""grok.kernels.decode_attention (one decode token's attention over one layer's cache windows,
read in place, online softmax) in interpret mode on CPU against the XLA attention
(grok.model.attention._attention on the layer's window): rows of random live lengths with
holes, a row with no visible key, scores past the soft cap, G = 6 query heads per kv head (as
Grok-1) and G = 2; alone, under the mesh as grok.model.attention runs it, and in the model's
decode steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from grok.config import TransformerConfig
from grok.kernels import decode_attention, decode_attention_fits
from grok.kernels.decode_attention import position_splits
from grok.model.attention import LayerKV, _attention, _extent, _kernel_decode_attention
from grok.parallel import sharding

L, S, D = 3, 256, 32    # layers, cache length, key_size


def config(heads: int, kv_heads: int) -> TransformerConfig:
    # a multiplier of 1 on scores q.k of standard deviation ~28: the soft cap (30) bends many
    return TransformerConfig(emb_size=64, key_size=D, num_q_heads=heads, num_kv_heads=kv_heads,
                             num_layers=L, attn_output_multiplier=1.0)


def problem(b: int, kv: int, g: int, window: int, dtype=jnp.float32, seed: int = 0):
    """Caches [L, B, K, S, d], queries [B, 1, K, G, d] and visibility [B, 1, S']: row 0 sees a
    prefix, row 1 nothing, the others random positions up to a random live extent."""
    rng = np.random.default_rng(seed)
    cache = lambda: jnp.asarray(rng.normal(size=(L, b, kv, S, D)), dtype)
    q = jnp.asarray(rng.normal(size=(b, 1, kv, g, D)) * 5, dtype)
    valid = rng.random((b, window)) < 0.8
    valid &= np.arange(window)[None, :] < rng.integers(1, window + 1, (b, 1))
    valid[0] = np.arange(window) < 37          # a live extent inside a block
    valid[1] = False                           # a pad-only row: attends to nothing
    return q, cache(), cache(), jnp.asarray(valid[:, None])


def extent(valid):
    """[B, 1, S'] -> [B]: one past each row's last visible position (what the kernel reads)."""
    return jnp.asarray([int(np.flatnonzero(row)[-1]) + 1 if row.any() else 0
                        for row in np.asarray(valid[:, 0])], jnp.int32)


def xla(c, q, k_cache, v_cache, layer, valid, dtype):
    window = valid.shape[-1]
    return _attention(c, q, k_cache[layer, :, :, :window], v_cache[layer, :, :, :window], valid, dtype)


@functools.cache
def kernel(c: TransformerConfig, splits=None):
    return jax.jit(functools.partial(decode_attention, scale=c.attn_output_multiplier,
                                     soft_cap=c.attn_logit_soft_cap, splits=splits,
                                     interpret=True))


def check_equals_xla(b, kv, g, window, splits):
    """float32: the same products and float32 sums, to rounding; the layer a traced operand;
    splits[i] programs per row at layer i."""
    c = config(kv * g, kv)
    q, k_cache, v_cache, valid = problem(b, kv, g, window)
    for layer, split in zip((0, 2), splits):
        got = kernel(c, split)(q[:, 0], k_cache, v_cache, jnp.int32(layer), valid[:, 0],
                               extent(valid))
        want = np.asarray(xla(c, q, k_cache, v_cache, layer, valid, jnp.float32)[:, 0])
        assert got.shape == want.shape == (b, kv, g, D) and got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        np.testing.assert_array_equal(np.asarray(got[1]), 0)    # no visible key: zeros
    # the soft cap bends these scores: many visible ones are past it
    scores = np.einsum("bkgd,bksd->bkgs", np.asarray(q[:, 0]), np.asarray(k_cache[2, :, :, :window]))
    capped = np.abs(scores * c.attn_output_multiplier) > c.attn_logit_soft_cap
    assert (capped & np.asarray(valid[:, 0])[:, None, None]).mean() > 0.05


def test_decode_attention_equals_xla_attention():
    """G = 6 query heads per kv head (as Grok-1; padded to 16 in the kernel), two blocks of
    positions: one program per row (its online softmax over both), and two (each block's
    partial result, merged by the combining kernel: 10 programs are few, the default)."""
    assert position_splits(5 * 2, 2) == 2 and position_splits(64, 16) == 1
    check_equals_xla(b=5, kv=2, g=6, window=128, splits=(1, None))


@pytest.mark.slow
def test_decode_attention_equals_xla_attention_at_two_heads_per_kv_head():
    """G = 2, four kv heads, a 256-position window: four splits of one block, two of two."""
    check_equals_xla(b=4, kv=4, g=2, window=256, splits=(4, 2))


@pytest.mark.slow
@pytest.mark.slow
def test_decode_attention_bf16_tracks_xla_attention():
    """bf16 queries and caches (the GPU's types): XLA's form rounds the normalised weights to
    bf16, the kernel the unnormalised ones; they agree to bf16's precision."""
    c = config(12, 2)
    q, k_cache, v_cache, valid = problem(5, 2, 6, 128, jnp.bfloat16, seed=1)
    got = np.asarray(kernel(c)(q[:, 0], k_cache, v_cache, jnp.int32(1), valid[:, 0],
                               extent(valid)), np.float32)
    want = np.asarray(xla(c, q, k_cache, v_cache, 1, valid, jnp.bfloat16)[:, 0], np.float32)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


def test_fits_only_triton_tiles():
    assert decode_attention_fits(1024, 128) and decode_attention_fits(48, 32)   # 48: 3 tiles of 16
    assert not decode_attention_fits(1024, 48)        # 48 is no power of two
    assert not decode_attention_fits(8, 128)          # a window under one 16-position tile
    with pytest.raises(ValueError, match="splits 3"):
        decode_attention(jnp.zeros((1, 1, 2, 32)), jnp.zeros((1, 1, 1, 64, 32)),
                         jnp.zeros((1, 1, 1, 64, 32)), 0, jnp.ones((1, 64), bool),
                         jnp.full((1,), 64), scale=1.0, soft_cap=30.0, splits=3, interpret=True)
    with pytest.raises(ValueError, match="window 8"):
        decode_attention(jnp.zeros((1, 1, 2, 32)), jnp.zeros((1, 1, 1, 8, 32)),
                         jnp.zeros((1, 1, 1, 8, 32)), 0, jnp.ones((1, 8), bool),
                         jnp.full((1,), 8), scale=1.0, soft_cap=30.0, interpret=True)


@pytest.mark.slow
def test_decode_attention_under_the_cache_layout_equals_xla():
    """grok.model.attention's kernel call on a (2, 4) mesh: slots over the data axis, kv heads
    over the model axis (the cache's layout from the sharding table), one call per device."""
    mesh = sharding.make_mesh((2, 4))
    c = config(24, 4)
    q, k_cache, v_cache, valid = problem(4, 4, 6, 128, seed=2)
    place = NamedSharding(mesh, P(None, "data", "model", None, None))
    k_placed, v_placed = jax.device_put(k_cache, place), jax.device_put(v_cache, place)

    def sharded(q, k_cache, v_cache, layer, valid):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return _kernel_decode_attention(c, q, LayerKV(k_cache, v_cache, layer), valid,
                                            _extent(valid), True)
    args = (q, k_placed, v_placed, jnp.int32(1), valid)
    assert "shard_map" in str(jax.make_jaxpr(sharded)(*args))
    want = np.asarray(xla(c, q, k_cache, v_cache, 1, valid, jnp.float32))
    np.testing.assert_allclose(np.asarray(jax.jit(sharded)(*args)), want, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())


@pytest.mark.slow
def test_model_decode_steps_with_the_kernel_equal_xla():
    """The tiny model's cached decode steps with kernels="interpret" (this kernel, two
    programs per row over a 128-position window, and the projections' and MoE's kernels) give
    the XLA paths' logits: the new key is written before the kernel reads the window, pads
    stay invisible."""
    from grok import checkpoint
    from grok.config import LanguageModelConfig
    from grok.model.transformer import build_forward, init_memory
    from grok.runtime_config import RuntimeConfig

    model = LanguageModelConfig(
        model=TransformerConfig(emb_size=64, key_size=16, num_q_heads=4, num_kv_heads=2,
                                num_layers=2, num_experts=4, num_selected_experts=2,
                                widening_factor=2, attn_output_multiplier=0.25),
        vocab_size=96, sequence_len=128)
    params = checkpoint.stack_params(
        checkpoint.quantize_tensors(checkpoint.random_tensors(model, 3), model, None), model)
    tokens = np.random.default_rng(3).integers(1, model.vocab_size, (2, 10)).astype(np.int32)
    prompt = tokens[:, :6].copy()
    prompt[1, 2] = 0                                    # a pad inside row 1's prompt

    def decode(kind):
        runtime = RuntimeConfig(kernels=kind, activation_dtype="float32")
        forward = jax.jit(build_forward(model, runtime), static_argnums=5)
        memory = init_memory(model, 2, model.sequence_len, runtime)
        _, memory = forward(params, prompt, memory, np.array([6, 4], np.int32), None, 128)
        steps = []
        for i in range(3):
            logits, memory = forward(params, tokens[:, 6 + i:7 + i], memory,
                                     np.ones(2, np.int32), None, 128)
            steps.append(np.asarray(logits))
        return np.stack(steps)
    want = decode("xla")
    np.testing.assert_allclose(decode("interpret"), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

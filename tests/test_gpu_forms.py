"""The GPU forms (chosen only when a program is traced for a GPU) against the CPU forms, on CPU:
decode attention read in place, few-row int8 projections as reductions, sampling without
control flow, and the embedding lookup as a masked local gather plus one all-reduce."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grok.axes import MODEL_AXIS
from grok.config import TransformerConfig
from grok.engine.sampling import SampleSettings, sample_token
from grok.model.attention import _attention, _decode_attention
from grok.model.transformer import embedding_lookup
from grok.ops.platform import compute_platform
from grok.ops.quantization import REDUCE_ROWS, qmatmul, qmatmul_reduce, quantize
from grok.parallel.sharding import TABLE_AXES, logical_sharding, make_mesh

ATTN = TransformerConfig(emb_size=32, key_size=8, num_q_heads=4, num_kv_heads=2, num_layers=1,
                         attn_output_multiplier=0.25)


def test_decode_attention_matches_attention_for_one_token_per_row():
    b, k, g, s, d = 3, ATTN.num_kv_heads, ATTN.q_per_kv, 16, ATTN.key_size
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(b, 1, k, g, d)) * 2, jnp.float32)          # [B, 1, K, G, d]
    keys = jnp.asarray(rng.normal(size=(b, k, s, d)), jnp.float32)               # [B, K, S, d]
    values = jnp.asarray(rng.normal(size=(b, k, s, d)), jnp.float32)
    # row 0 sees 5 keys, row 1 all of them, row 2 none (a pad-only prompt: zeros)
    visible = np.zeros((b, 1, s), bool)
    visible[0, 0, :5] = True
    visible[1, 0, :] = True
    visible = jnp.asarray(visible)
    want = _attention(ATTN, q, keys, values, visible, jnp.float32)
    got = _decode_attention(ATTN, q, keys, values, visible, jnp.float32)
    assert got.shape == want.shape == (b, 1, k, g, d)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(got[0]), np.asarray(got[1]))   # the mask matters
    np.testing.assert_array_equal(np.asarray(got[2]), 0)


@pytest.mark.parametrize("groups", [1, 4])
def test_qmatmul_reduce_matches_qmatmul(groups):
    rng = np.random.default_rng(1)
    qw = quantize(rng.normal(size=(64, 24)).astype(np.float32), num_groups=groups)
    x = jnp.asarray(rng.normal(size=(REDUCE_ROWS, 1, 64)), jnp.float32)
    want = qmatmul(x, qw)
    got = qmatmul_reduce(x, qw)
    assert got.shape == want.shape == (1, 1, 24)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="one row"):
        qmatmul_reduce(jnp.zeros((2, 64), jnp.float32), qw)


ROWS, VOCAB = 8, 300
LOGITS = jnp.asarray(np.random.default_rng(2).normal(size=(ROWS, VOCAB)) * 3, jnp.float32)


def _settings(temperature, top_p, top_k) -> SampleSettings:
    full = lambda v, t: jnp.broadcast_to(jnp.asarray(v, t), (ROWS,))
    return SampleSettings(full(temperature, jnp.float32), full(top_p, jnp.float32),
                          full(top_k, jnp.int32), jnp.ones((ROWS,), bool))


@functools.cache
def _sampler(platform):
    """sample_token compiled once as traced for `platform` (settings and keys are arguments)."""
    keys = jax.random.split(jax.random.PRNGKey(0), ROWS)
    with compute_platform(platform):
        # a fresh function per platform: JAX's trace cache is keyed by the function, not the
        # platform in context, and would hand one platform's trace to the other
        lowered = jax.jit(lambda *a: sample_token(*a)).lower(LOGITS, _settings(1.0, 1.0, 0), keys)
    # the GPU form has no control flow; the CPU form switches between draws
    assert ("stablehlo.case" in lowered.as_text()) == (platform == "cpu")
    return lowered.compile()


def _sample(platform, settings, seed):
    return _sampler(platform)(LOGITS, settings, jax.random.split(jax.random.PRNGKey(seed), ROWS))


@pytest.mark.parametrize("temperature,top_p,top_k", [
    (0.0, 1.0, 0),        # greedy
    (1.0, 1.0, 5),        # top-k
    (1.5, 0.8, 0),        # nucleus
    (0.7, 0.9, 20),       # both
    (1.0, 1.0, 0),        # no filter
])
def test_sorted_draw_gives_the_candidate_paths_tokens(temperature, top_p, top_k):
    """The GPU sampler promises the CPU path's tokens for the same keys (both reproduce
    jax.random.categorical over the same filtered row); the tokens also lie in the allowed set."""
    settings = _settings(temperature, top_p, top_k)
    scaled = np.asarray(LOGITS) / (temperature or 1.0)
    ranks = np.argsort(-scaled, axis=-1)
    for seed in range(3):
        cpu = _sample("cpu", settings, seed)
        gpu = _sample("gpu", settings, seed)
        np.testing.assert_array_equal(np.asarray(gpu.token_id), np.asarray(cpu.token_id))
        np.testing.assert_allclose(np.asarray(gpu.logprob), np.asarray(cpu.logprob), rtol=1e-6)
        for row, token in enumerate(np.asarray(gpu.token_id)):
            rank = int(np.nonzero(ranks[row] == token)[0][0])
            if temperature == 0:
                assert rank == 0
            if top_k:
                assert rank < top_k
            if top_p < 1:     # the reference's nucleus: the ranks before it hold < top_p mass
                p = np.exp(scaled[row] - scaled[row].max())
                p = p / p.sum() if not top_k else p * (np.argsort(ranks[row]) < top_k)
                p = p / p.sum()
                assert p[ranks[row][:rank]].sum() < top_p + 1e-6


def test_sorted_draw_samples_more_than_the_argmax():
    """Guards the test above: with a wide filter, the drawn tokens are not all the argmax."""
    gpu = _sample("gpu", _settings(2.0, 1.0, 50), 0)
    assert (np.asarray(gpu.token_id) != np.asarray(LOGITS).argmax(-1)).any()


def test_embedding_lookup_local_gather_is_exact_on_a_model_axis_of_8():
    mesh = make_mesh((1, 8))
    vocab, width = 64, 16
    table = jax.device_put(
        jnp.asarray(np.random.default_rng(3).normal(size=(vocab, width)), jnp.float32),
        logical_sharding((vocab, width), TABLE_AXES, mesh))
    assert table.sharding.spec[0] == MODEL_AXIS       # the form under test is taken
    tokens = jnp.asarray([[0, 7, 8, 63], [31, 32, 33, 5]], jnp.int32)
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        lowered = jax.jit(embedding_lookup).lower(table, tokens)
    assert "all-reduce" in lowered.compile().as_text()
    got = lowered.compile()(table, tokens)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(table)[np.asarray(tokens)])

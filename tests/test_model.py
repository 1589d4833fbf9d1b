"""The model's arithmetic: reference parity, cached decoding, a NumPy cross-check, MoE paths,
NaN and stale-cache isolation, attention over the live cache."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference
from grok import checkpoint
from grok.parallel import sharding
from grok.config import LanguageModelConfig, TransformerConfig, load_config
from grok.model import moe
from grok.model.transformer import abstract_params, build_forward, init_memory, kv_len_buckets, live_kv_len
from grok.ops.quantization import QuantizedWeight8bit
from grok.runtime_config import RuntimeConfig

TINY = LanguageModelConfig(
    model=TransformerConfig(emb_size=32, key_size=8, num_q_heads=4, num_kv_heads=2, num_layers=2,
                            num_experts=4, num_selected_experts=2, widening_factor=2,
                            attn_output_multiplier=0.35),
    vocab_size=96, sequence_len=64, embedding_multiplier_scale=4.0, output_multiplier_scale=0.5)
F32 = RuntimeConfig(activation_dtype="float32")
BF16 = RuntimeConfig(activation_dtype="bfloat16")
DENSE = F32.replace(moe_impl="dense")


def tiny_tensors(config=TINY, seed=0, groups=None):
    return checkpoint.quantize_tensors(checkpoint.random_tensors(config, seed), config, groups)


def run_forward(config, params, tokens, mesh_shape=(1, 1), runtime=F32):
    mesh = sharding.make_mesh(mesh_shape)
    params = jax.device_put(params, sharding.param_shardings(abstract_params(config), mesh))
    forward = jax.jit(lambda p, t: build_forward(config, runtime)(p, t)[0])
    return np.asarray(forward(params, jnp.asarray(tokens)))


# ---- parity with the reference implementation (../shared fixture) ------------------------------
@pytest.fixture(scope="module")
def fixture_model(fixture_dir):
    config = load_config(f"{fixture_dir}/config.json")
    tensors = checkpoint.read_checkpoint_tensors(fixture_dir, config)
    reference = np.load(f"{fixture_dir}/reference_logits.npz")
    return config, tensors, reference


# (1, 2) and (1, 8) are slow (a compile each): by default the fixture's parity runs on one
# device and the 2-D (2, 4) mesh, and test_meshes_where_heads_and_groups_do_not_divide and
# test_moe_per_model_shard_matches_single_device show (1, 4), (2, 4), (1, 8) and (2, 2) give
# the single device's logits.
@pytest.mark.parametrize("mesh_shape", [(1, 1), pytest.param((1, 2), marks=pytest.mark.slow),
                                        (2, 4), pytest.param((1, 8), marks=pytest.mark.slow)])
def test_parity_with_reference(fixture_model, fixture_dir, mesh_shape):
    config, _, ref = fixture_model
    mesh = sharding.make_mesh(mesh_shape)
    shardings = sharding.param_shardings(abstract_params(config), mesh)
    params = checkpoint.load_checkpoint(fixture_dir, config, shardings, progress=False)
    seqs = [ref[f"tokens_{j}"] for j in range(4)]
    batch = np.zeros((len(seqs), max(map(len, seqs))), np.int32)   # right padding is masked
    for j, s in enumerate(seqs):
        batch[j, :len(s)] = s
    logits = np.asarray(jax.jit(lambda p, t: build_forward(config, F32)(p, t)[0])(params, batch))
    for j, s in enumerate(seqs):
        ours = logits[j, :len(s)]
        theirs = ref[f"sub_logits_{j}"]
        err = np.abs(ours[:, ref["sub_ids"]] - theirs).max(-1) / theirs.std()
        assert np.median(err) <= 0.03, (j, np.median(err))
        assert np.mean(err <= 0.10) >= 0.95, (j, np.mean(err <= 0.10))
        logprobs = np.asarray(jax.nn.log_softmax(ours, axis=-1))
        next_lp = np.take_along_axis(logprobs[:-1], s[1:, None], axis=1)[:, 0]
        assert np.median(np.abs(next_lp - ref[f"next_logprobs_{j}"])) <= 0.06
        top = ref[f"top_logits_{j}"]
        decisive = top[:, 0] - top[:, 1] >= 0.25
        assert decisive.any()
        np.testing.assert_array_equal(ours.argmax(-1)[decisive], ref[f"top_ids_{j}"][decisive, 0])


def test_bf16_forward_tracks_reference(fixture_model):
    """The default bf16 path stays within bf16 noise of the reference (looser than float32)."""
    config, tensors, ref = fixture_model
    params = checkpoint.stack_params(tensors, config)
    tokens = ref["tokens_0"]
    ours = run_forward(config, params, tokens[None], runtime=BF16)[0]
    err = np.abs(ours[:, ref["sub_ids"]] - ref["sub_logits_0"]).max(-1) / ref["sub_logits_0"].std()
    assert np.median(err) <= 0.08


# ---- self-contained checks ---------------------------------------------------------------------
def test_numpy_reference_agrees():
    tensors = tiny_tensors()
    tokens = np.random.default_rng(1).integers(1, TINY.vocab_size, 12)
    expected = numpy_reference.forward(tensors, TINY, tokens)
    params = checkpoint.stack_params(tensors, TINY)
    ours32 = run_forward(TINY, params, tokens[None])[0]
    scale = expected.std()
    assert np.abs(ours32 - expected).max() <= 1e-3 * scale
    ours16 = run_forward(TINY, params, tokens[None], runtime=BF16)[0]
    assert np.median(np.abs(ours16 - expected).max(-1)) <= 0.1 * scale
    assert np.abs(ours16 - expected).max() > 1e-4 * scale   # bf16 really ran


def test_numpy_reference_with_padding_and_scale_groups():
    tensors = tiny_tensors(groups={"moe/linear": 4, "attention/query": 2, "moe/linear_1": 1})
    tokens = np.array([5, 9, 0, 14, 3, 0, 0])          # pads are masked as keys
    expected = numpy_reference.forward(tensors, TINY, tokens)
    ours = run_forward(TINY, checkpoint.stack_params(tensors, TINY), tokens[None])[0]
    assert np.abs(ours - expected).max() <= 1e-3 * expected.std()


def test_cached_decoding_matches_full_forward():
    params = checkpoint.stack_params(tiny_tensors(), TINY)
    forward = jax.jit(build_forward(TINY, F32))
    tokens = np.random.default_rng(2).integers(1, TINY.vocab_size, (2, 14)).astype(np.int32)
    full, _ = forward(params, tokens)
    memory = init_memory(TINY, 2, TINY.sequence_len, F32)
    # prefill 6 (row 1: only 4 valid, then 2 pads), then one token at a time
    prompt = tokens[:, :6].copy()
    prompt[1, 4:] = 0
    logits, memory = forward(params, prompt, memory, np.array([6, 4], np.int32))
    np.testing.assert_allclose(logits[0, :6], full[0, :6], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits[1, :4], full[1, :4], rtol=1e-4, atol=1e-4)
    pos = np.array([6, 4])
    for _ in range(6):
        step_tokens = tokens[np.arange(2), pos][:, None]
        logits, memory = forward(params, step_tokens, memory, np.ones(2, np.int32))
        np.testing.assert_allclose(logits[:, 0], full[np.arange(2), pos], rtol=1e-4, atol=1e-4)
        pos = pos + 1
    np.testing.assert_array_equal(np.asarray(memory.step), pos)


@pytest.mark.parametrize("block_rows", [256, 4])   # one block (decode), many (prefill)
def test_sparse_and_dense_moe_agree(block_rows):
    params = checkpoint.stack_params(tiny_tensors(seed=3), TINY)
    tokens = np.random.default_rng(3).integers(1, TINY.vocab_size, (3, 9))
    sparse = run_forward(TINY, params, tokens, runtime=F32.replace(moe_block_rows=block_rows))
    dense = run_forward(TINY, params, tokens, runtime=DENSE)
    np.testing.assert_allclose(sparse, dense, rtol=1e-4, atol=1e-4 * np.abs(dense).max())


@pytest.mark.parametrize("mesh_shape", [(1, 4), (2, 4), (1, 8)])
def test_meshes_where_heads_and_groups_do_not_divide(mesh_shape):
    """kv heads (2), G (1 and 8 on F=... ) and E (4) do not divide an 8-way model axis."""
    config = TINY.replace(num_kv_heads=2, num_q_heads=6, num_experts=4)
    tensors = tiny_tensors(config, seed=4)
    params = checkpoint.stack_params(tensors, config)
    tokens = np.random.default_rng(4).integers(1, config.vocab_size, (2, 7))
    single = run_forward(config, params, tokens, (1, 1))
    sharded = run_forward(config, params, tokens, mesh_shape)
    np.testing.assert_allclose(sharded, single, rtol=1e-4, atol=1e-4 * np.abs(single).max())


@pytest.mark.parametrize("mesh_shape, groups, block_rows",   # 4 rows: the grouped path
                         [((1, 4), 4, 4), ((2, 2), 1, 256), ((1, 8), 8, 256)])
def test_moe_per_model_shard_matches_single_device(mesh_shape, groups, block_rows):
    """With the mesh in context the sparse MoE and attention's output projection run under
    shard_map (one all-reduce each)."""
    runtime = F32.replace(moe_block_rows=block_rows)
    tensors = tiny_tensors(seed=5, groups={"moe/linear_1": groups})
    params = checkpoint.stack_params(tensors, TINY)
    tokens = np.random.default_rng(5).integers(1, TINY.vocab_size, (2, 6))
    single = run_forward(TINY, params, tokens, (1, 1), runtime=DENSE)
    mesh = sharding.make_mesh(mesh_shape)
    placed = jax.device_put(params, sharding.param_shardings(abstract_params(TINY), mesh))

    def forward(p, t):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return build_forward(TINY, runtime)(p, t)[0]

    assert "shard_map" in str(jax.make_jaxpr(forward)(placed, tokens))
    sharded = np.asarray(jax.jit(forward)(placed, tokens))
    np.testing.assert_allclose(sharded, single, rtol=1e-4, atol=1e-4 * np.abs(single).max())


@pytest.mark.slow
@pytest.mark.parametrize("block_rows", [256, 4])   # routed (decode) / grouped (prefill) path
def test_moe_paths_agree_with_scale_groups(block_rows):
    tensors = tiny_tensors(seed=6, groups={"moe/linear": 4, "moe/linear_v": 2, "moe/linear_1": 2})
    params = checkpoint.stack_params(tensors, TINY)
    tokens = np.random.default_rng(6).integers(1, TINY.vocab_size, (2, 5))
    sparse = run_forward(TINY, params, tokens, runtime=F32.replace(moe_block_rows=block_rows))
    dense = run_forward(TINY, params, tokens, runtime=DENSE)
    np.testing.assert_allclose(sparse, dense, rtol=1e-4, atol=1e-4 * np.abs(dense).max())


def _layer0_experts(params, poisoned: int):
    """Layer 0's three expert weights with expert `poisoned`'s scales set to NaN."""
    out = []
    for name in ("linear", "linear_v", "linear_1"):
        w = params[f"transformer/decoder_layer/moe/{name}"]["w"]
        scales = jnp.asarray(w.scales[0], jnp.float32).at[poisoned].set(jnp.nan)
        out.append(QuantizedWeight8bit(jnp.asarray(w.weight[0]), scales))
    return out


@pytest.mark.parametrize("impl", [moe._dense, moe._routed, moe._grouped])
def test_nan_expert_does_not_reach_rows_that_did_not_choose_it(impl):
    """Issue 8 item 5: unrouted rows are excluded, not multiplied by a 0 gate (NaN * 0 = NaN)."""
    weights = _layer0_experts(checkpoint.stack_params(tiny_tensors(seed=7), TINY), poisoned=3)
    x = jnp.asarray(np.random.default_rng(7).normal(size=(2, TINY.model.emb_size)), jnp.float32)
    experts = jnp.array([[3, 0], [1, 2]])          # row 0 chose the NaN expert, row 1 did not
    gates = jnp.array([[0.6, 0.3], [0.5, 0.4]], jnp.float32)
    both = np.asarray(impl(x, gates, experts, *weights))
    alone = np.asarray(impl(x[1:], gates[1:], experts[1:], *weights))
    assert np.isnan(both[0]).all()                 # the poison is real
    assert np.isfinite(both[1]).all()
    np.testing.assert_allclose(both[1], alone[0], rtol=1e-6, atol=1e-6)


def test_a_row_with_no_visible_key_attends_to_nothing():
    """Issue 8 item 4: a pad-only prompt must not average a slot's stale keys and values."""
    params = checkpoint.stack_params(tiny_tensors(seed=8), TINY)
    forward = jax.jit(build_forward(TINY, F32))
    clean = init_memory(TINY, 1, TINY.sequence_len, F32)
    rng = np.random.default_rng(8)
    stale = clean._replace(k=jnp.asarray(rng.normal(size=clean.k.shape), clean.k.dtype),
                           v=jnp.asarray(rng.normal(size=clean.v.shape), clean.v.dtype),
                           valid=jnp.ones_like(clean.valid))
    pads = np.full((1, 4), TINY.pad_token, np.int32)
    lengths = np.array([4], np.int32)
    from_clean, _ = forward(params, pads, clean, lengths)
    from_stale, _ = forward(params, pads, stale, lengths)
    np.testing.assert_array_equal(np.asarray(from_stale), np.asarray(from_clean))


def test_live_kv_len_buckets():
    assert [live_kv_len(n, 8192) for n in (1, 128, 129, 700, 8192)] == [128, 128, 256, 1024, 8192]
    assert live_kv_len(40, 64, smallest=8) == 64 and live_kv_len(9, 64, smallest=8) == 16
    with pytest.raises(ValueError, match="sequence_len is 64"):
        live_kv_len(65, 64)
    assert kv_len_buckets(8192) == [128, 256, 512, 1024, 2048, 4096, 8192]
    assert kv_len_buckets(100) == [100] and kv_len_buckets(1000) == [128, 256, 512, 1000]


@pytest.mark.slow
def test_decoding_over_the_live_cache_matches_the_whole_cache():
    """Attention over kv_len = a bucket >= the longest row gives the full cache's logits."""
    params = checkpoint.stack_params(tiny_tensors(seed=9), TINY)
    forward = jax.jit(build_forward(TINY, F32), static_argnums=5)
    tokens = np.random.default_rng(9).integers(1, TINY.vocab_size, (2, 12)).astype(np.int32)
    lengths = np.array([6, 4], np.int32)
    memories = {}
    for kv_len in (None, "live"):
        memory = init_memory(TINY, 2, TINY.sequence_len, F32)
        used = live_kv_len(6, TINY.sequence_len, smallest=8) if kv_len else None
        logits, memory = forward(params, tokens[:, :6], memory, lengths, None, used)
        steps = [logits]
        for i in range(6):
            longest = int(np.max(np.asarray(memory.step))) + 1
            used = live_kv_len(longest, TINY.sequence_len, smallest=8) if kv_len else None
            logits, memory = forward(params, tokens[:, 6 + i:7 + i], memory, np.ones(2, np.int32),
                                     None, used)
            steps.append(logits)
        memories[kv_len] = steps
    assert live_kv_len(12, TINY.sequence_len, smallest=8) < TINY.sequence_len   # really shorter
    for whole, live in zip(memories[None], memories["live"]):
        np.testing.assert_allclose(live, whole, rtol=1e-5, atol=1e-5)

"""The fused MoE kernels (grok.kernels) in interpret mode on CPU against the dense MoE path.

Tiny shapes; cases that differ only in data share one compiled function (interpret mode
compiles slowly), so the module runs a handful of compiles.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from grok.kernels import expert_matmul, fused_moe, sort_into_blocks, tiling_for
from grok.model.moe import _dense, _per_model_shard
from grok.ops.quantization import QuantizedWeight8bit, qmatmul, quantize
from grok.parallel import sharding

E, D, F, K = 4, 64, 64, 2   # experts, emb, ffn, selected experts per token


def weights(groups: int, seed: int = 0, layers: int = 0):
    """Gate, value, down QuantizedWeight8bit stacks [E, ...] (or [L, E, ...] when layers > 0)."""
    rng = np.random.default_rng(seed)
    lead = (layers, E) if layers else (E,)
    return (quantize(rng.normal(size=(*lead, D, F)), groups),
            quantize(rng.normal(size=(*lead, D, F)), groups),
            quantize(rng.normal(size=(*lead, F, D)) * 0.1, groups))


def routing(m: int, seed: int = 1, dtype=jnp.bfloat16):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(m, D)), dtype)
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(m, E)), jnp.float32))
    gates, experts = jax.lax.top_k(probs, K)
    return x, gates.astype(dtype), experts


@functools.cache
def kernel(layered: bool = False):
    """fused_moe in interpret mode, jitted (one compile per shape)."""
    if layered:
        return jax.jit(lambda x, g, e, wg, wv, wd, layer:
                       fused_moe(x, g, e, wg, wv, wd, layer=layer, interpret=True))
    return jax.jit(lambda x, g, e, wg, wv, wd: fused_moe(x, g, e, wg, wv, wd, interpret=True))


def dense(x, gates, experts, w):
    return np.asarray(jax.jit(_dense)(x, gates, experts, *w), np.float32)


def assert_close(got, want):
    got = np.asarray(got, np.float32)
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


def test_block_layout_sorts_every_pair_once_into_one_expert_blocks():
    experts = np.array(routing(37)[2])
    experts[:, 1] = np.where(experts[:, 0] == 2, experts[:, 1], experts[:, 0])
    experts[:, 0] = 2                                       # expert 2 gets every token
    for rows in (16, 64):
        layout = jax.jit(sort_into_blocks, static_argnums=(1, 2))(experts, E, rows)
        pairs = np.asarray(layout.row_pair)
        valid = pairs < experts.size
        assert sorted(pairs[valid].tolist()) == list(range(experts.size))
        flat = np.asarray(experts).reshape(-1)
        block_expert = np.asarray(layout.block_expert)
        for b, e in enumerate(block_expert):
            rows_of_b = pairs[b * rows:(b + 1) * rows]
            rows_of_b = rows_of_b[rows_of_b < experts.size]
            if e < 0:
                assert rows_of_b.size == 0
            else:
                assert rows_of_b.size and (flat[rows_of_b] == e).all()
        used = block_expert[block_expert >= 0]
        assert (np.diff(used) >= 0).all()                     # experts in order
        needed = sum(-(-np.sum(flat == e) // rows) for e in range(E))
        assert used.size == needed                            # no block beyond ceil(count/BM)
    # decode tiling: one block per distinct expert
    one = sort_into_blocks(jnp.array([[3, 1]]), E, tiling_for(1, K, E).block_rows)
    assert np.asarray(one.block_expert).tolist() == [1, 3]


@pytest.mark.parametrize("m, groups", [(1, 1), (3, 8)])
def test_decode_rows_equal_dense(m, groups):
    w = weights(groups)
    x, gates, experts = routing(m)
    assert_close(kernel()(x, gates, experts, *w), dense(x, gates, experts, w))


def test_64_rows_from_a_layer_stack_with_ragged_groups_and_nan_isolation():
    """M = 64 (decode tiling, BM = 64), weights [L, E, ...] with the layer as an operand."""
    stack = weights(8, seed=2, layers=2)
    layer1 = [QuantizedWeight8bit(w.weight[1], w.scales[1]) for w in stack]
    run = kernel(layered=True)
    x, gates, experts = routing(64)
    assert_close(run(x, gates, experts, *stack, 1), dense(x, gates, experts, layer1))
    # ragged: every row on expert 0, expert 3 gets none
    experts = experts.at[:, 0].set(0).at[:, 1].set(jnp.where(experts[:, 1] == 3, 1, experts[:, 1]))
    experts = experts.at[:, 1].set(jnp.where(experts[:, 1] == 0, 2, experts[:, 1]))
    assert_close(run(x, gates, experts, *stack, 1), dense(x, gates, experts, layer1))
    # NaN in expert 3's scales (layer 1) and in row 5's activations: only their rows see it
    nan_stack = list(stack)
    nan_stack[2] = QuantizedWeight8bit(stack[2].weight, jnp.asarray(stack[2].scales).at[1, 3].set(jnp.nan))
    x_nan = x.at[5].set(jnp.nan)
    experts = routing(64, seed=3)[2]
    out = np.asarray(run(x_nan, gates, experts, *nan_stack, 1), np.float32)
    poisoned = np.any(np.asarray(experts) == 3, axis=1)
    poisoned[5] = True
    assert np.isnan(out[poisoned]).all(axis=1).all()
    assert np.isfinite(out[~poisoned]).all()
    assert poisoned.sum() < 64 - 8                          # most rows are clean


def test_expert_matmul_is_one_experts_product_read_from_the_stack():
    """The kernels' inner loop on one expert of a [L, E, K, N] stack (the GEMV of a decode step)."""
    gate = weights(8, seed=5, layers=2)[0]
    x = routing(1)[0]
    run = jax.jit(lambda x, w, e, layer: expert_matmul(x, w, e, layer=layer, interpret=True))
    for layer, expert in ((1, 3), (0, 0)):
        want = qmatmul(x.astype(jnp.float32), QuantizedWeight8bit(gate.weight[layer, expert],
                                                                  gate.scales[layer, expert]))
        assert_close(run(x, gate, expert, layer), np.asarray(want, np.float32))


@pytest.mark.slow
def test_prefill_chunk_equals_dense_with_empty_and_crowded_experts():
    """M = 96 > 64: the prefill tiling (BM = 64, several blocks per expert)."""
    w = weights(1, seed=4)
    x, gates, experts = routing(96)
    assert tiling_for(96, K, E).block_rows == 16   # E*BM <= P/4
    assert_close(kernel()(x, gates, experts, *w), dense(x, gates, experts, w))
    crowded = jnp.stack([jnp.full((96,), 1), jnp.where(experts[:, 1] == 1, 2, 0)], axis=1)
    crowded = crowded.at[:, 1].set(jnp.where(crowded[:, 1] == 3, 0, crowded[:, 1]))
    assert_close(kernel()(x, gates, crowded, *w), dense(x, gates, crowded, w))


@pytest.mark.slow
def test_per_model_shard_equals_dense():
    """shard_map over the model axis (FFN split, specs from grok.model.moe), one all-reduce."""
    w = weights(8, seed=6)
    x, gates, experts = routing(8)
    mesh = sharding.make_mesh((2, 4))
    moe = functools.partial(fused_moe, interpret=True)

    def sharded(x, gates, experts, *w):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return _per_model_shard(moe, x, gates, experts, *w)

    placed = jax.device_put(w, tuple(QuantizedWeight8bit(*(jax.sharding.NamedSharding(mesh, s) for s in specs))
                                for specs in ((P(None, None, "model"), P(None, None, "model")),) * 2
                                + ((P(None, "model", None), P(None, "model", None)),)))
    jaxpr = str(jax.make_jaxpr(sharded)(x, gates, experts, *placed))
    assert "shard_map" in jaxpr and jaxpr.count("psum") == 1
    assert_close(jax.jit(sharded)(x, gates, experts, *placed), dense(x, gates, experts, w))


@pytest.mark.slow
def test_model_with_interpreted_kernels_equals_xla_paths():
    """The whole tiny model with kernels="interpret" (kernels on the layer stacks, layer
    index operand) gives the logits of the XLA paths."""
    from grok import checkpoint
    from grok.model.transformer import build_forward
    from grok.runtime_config import RuntimeConfig
    from tests.test_model import TINY, tiny_tensors

    params = checkpoint.stack_params(tiny_tensors(seed=7, groups={"moe/linear_1": 8}), TINY)
    tokens = np.random.default_rng(7).integers(1, TINY.vocab_size, (2, 5))
    runtime = lambda kind: RuntimeConfig(kernels=kind, activation_dtype="float32")
    run = lambda kind: np.asarray(jax.jit(build_forward(TINY, runtime(kind)))(params, tokens)[0])
    want = run("xla")
    np.testing.assert_allclose(run("interpret"), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

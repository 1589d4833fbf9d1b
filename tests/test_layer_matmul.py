"""grok.kernels.layer_matmul (a dense projection read in place from a layer stack) in
interpret mode on CPU against the XLA path (qmatmul on the layer's slice), alone and as
grok.model.attention runs it under the mesh (shard_map, specs from the sharding table)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from grok.kernels import layer_matmul, layer_matmul_fits, layer_matmuls
from grok.model.attention import _stack_projection
from grok.ops.quantization import QuantizedWeight8bit, qmatmul, quantize
from grok.parallel import sharding

L, K, N = 3, 64, 48   # layers, contracting width, output width (48 = 3 tiles of 16)


def stack(groups: int, k: int = K, n: int = N, seed: int = 0) -> QuantizedWeight8bit:
    return quantize(np.random.default_rng(seed).normal(size=(L, k, n)), groups)


def rows(m: int, k: int = K, seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(m, k)), jnp.float32)


def at_layer(w: QuantizedWeight8bit, layer: int) -> QuantizedWeight8bit:
    return QuantizedWeight8bit(w.weight[layer], w.scales[layer])


@functools.cache
def kernel():
    return jax.jit(functools.partial(layer_matmul, interpret=True))


def assert_close(got, want):
    want = np.asarray(want, np.float32)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("m,groups", [(1, 2), (8, 1), (8, 2), (64, 2)])
def test_layer_matmul_equals_xla_on_the_layer_slice(m, groups):
    """M = 1, 8, 64 rows, one and two scale groups; the layer is a traced operand."""
    w, x = stack(groups), rows(m)
    for layer in (0, 2):
        assert_close(kernel()(x, w, jnp.int32(layer)), qmatmul(x, at_layer(w, layer)))


def test_layer_matmuls_equal_each_weight_alone():
    """One kernel over three stacks of different widths and scale groups (attention's query,
    key and value): each output equals its weight's XLA matmul."""
    ws = (stack(2, n=48, seed=5), stack(1, n=16, seed=6), stack(2, n=32, seed=7))
    x = rows(8)
    outs = jax.jit(functools.partial(layer_matmuls, interpret=True))(x, ws, jnp.int32(1))
    assert [o.shape for o in outs] == [(8, 48), (8, 16), (8, 32)]
    for out, w in zip(outs, ws):
        assert_close(out, qmatmul(x, at_layer(w, 1)))


def test_fits_only_decode_rows_and_triton_tiles():
    assert layer_matmul_fits(64, 6144, 768, 1) and layer_matmul_fits(2, K, N, 2)
    assert not layer_matmul_fits(65, K, N, 1)          # prefill: XLA's GEMM
    assert not layer_matmul_fits(8, K, 40, 1)          # 40 has no power-of-two factor >= 16
    with pytest.raises(ValueError, match="stack"):
        layer_matmul(rows(2), at_layer(stack(1), 0), 0, interpret=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["query", "linear"])
def test_projection_under_model_axis_equals_xla(name):
    """Column-split (query: per device, no collective) and row-split (the output projection:
    per device then one all-reduce) projections on a (2, 4) mesh, layouts from the sharding
    table, equal the XLA path on the layer's slice."""
    mesh = sharding.make_mesh((2, 4))
    w, x = stack(4, seed=3), rows(8, seed=4)     # 4 groups: one per device when K is split
    axes = {"query": (None, None, "model"), "linear": (None, "model", None)}[name]
    scales = {"query": (None, None, "model"), "linear": (None, "model", None)}[name]
    placed = jax.device_put(w, QuantizedWeight8bit(NamedSharding(mesh, P(*axes)),
                                                   NamedSharding(mesh, P(*scales))))

    def sharded(x, w, layer):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return _stack_projection(x, name, w, layer, interpret=True)
    jaxpr = str(jax.make_jaxpr(sharded)(x, placed, jnp.int32(1)))
    assert "shard_map" in jaxpr and jaxpr.count("psum") == (name == "linear")
    assert_close(jax.jit(sharded)(x, placed, jnp.int32(1)), qmatmul(x, at_layer(w, 1)))


@pytest.mark.slow
def test_decode_with_split_residual_rows_and_kernels_equals_one_device():
    """A tiny model's 8-slot decode step on a (1, 4) mesh with kernels="interpret": the
    residual stream's rows split over the model axis (reduce-scatters after the output
    projection and the MoE, all-gathers before query/key/value and the MoE), the projections
    by layer_matmul(s) under shard_map; the logits equal one device's XLA paths."""
    from grok import checkpoint
    from grok.model.transformer import abstract_params, build_forward, init_memory
    from grok.runtime_config import RuntimeConfig
    from tests.test_model import TINY, tiny_tensors

    params = checkpoint.stack_params(tiny_tensors(seed=7, groups={"moe/linear_1": 4}), TINY)
    slots = 8
    tokens = np.random.default_rng(7).integers(1, TINY.vocab_size, (slots, 1)).astype(np.int32)
    lengths = np.ones(slots, np.int32)
    runtime = lambda kind: RuntimeConfig(kernels=kind, activation_dtype="float32")
    memory = init_memory(TINY, slots, TINY.sequence_len, runtime("xla"))
    want = np.asarray(jax.jit(build_forward(TINY, runtime("xla")))(params, tokens, memory, lengths)[0])
    mesh = sharding.make_mesh((1, 4))
    placed = jax.device_put(params, sharding.param_shardings(abstract_params(TINY), mesh))

    def sharded(p, t, m):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return build_forward(TINY, runtime("interpret"))(p, t, m, lengths)[0]
    jaxpr = str(jax.make_jaxpr(sharded)(placed, tokens, memory))
    assert "reduce_scatter" in jaxpr and "all_gather" in jaxpr and "pallas_call" in jaxpr
    got = np.asarray(jax.jit(sharded)(placed, tokens, memory))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

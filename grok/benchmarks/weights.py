"""Synthetic weights for benchmarks: Grok-style random parameters made on the devices.

Made in their final sharding: int8 weights hash each element's index, with no host copy and
no float -> quantize pass (one Grok-1-width layer is 4.8 GB of int8). The embedding table is
made in the activation dtype the runner will use, so no float32 copy of it is ever held.
"""

from __future__ import annotations

import math
import zlib
from typing import Sequence

import jax
import jax.numpy as jnp

from grok import checkpoint
from grok.config import LanguageModelConfig
from grok.model.transformer import abstract_params
from grok.ops.quantization import QuantizedWeight8bit

INT8_UNIFORM_STD = math.sqrt((256 ** 2 - 1) / 12)  # std of a uniform byte, ~73.9
NORM_STD = 0.1                   # grok.checkpoint.random_tensors' default
EMBED_SCALE = 0.1                # RMS of the scaled input embeddings (see synthetic_params)


def _mix32(x: jax.Array) -> jax.Array:
    """lowbias32 (C. Wellons): a cheap uint32 hash whose output bits all depend on every input bit."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hashed_int8(shape: Sequence[int], seed: int) -> jax.Array:
    """Pseudo-random int8 in [-127, 127] from a hash of each element's index (one fused loop,
    no temporaries, any size: each axis is hashed in turn so no linear index overflows)."""
    h = jnp.full(shape, seed & 0xFFFFFFFF, jnp.uint32)
    for axis in range(len(shape)):
        h = _mix32(h + jax.lax.broadcasted_iota(jnp.uint32, shape, axis))
    byte = jax.lax.bitcast_convert_type((h >> 24).astype(jnp.uint8), jnp.int8)
    return jnp.maximum(byte, -127)  # symmetric, like grok.ops.quantization.quantize


def _on_device(make, sharding):
    """make() evaluated straight into `sharding` (each device computes its own shard)."""
    return jax.jit(make, out_shardings=sharding)()


def _synthetic_leaf(path: str, leaf, sharding, groups: int, seed: int, embed_std: float,
                    table_dtype):
    """Random weights that keep activations at unit scale, like checkpoint.random_tensors."""
    if isinstance(leaf, QuantizedWeight8bit):
        *lead, k, n = leaf.weight.shape
        scale = 1.0 / (math.sqrt(k) * INT8_UNIFORM_STD)  # so x @ W has x's per-element scale
        weight = _on_device(lambda: hashed_int8(leaf.weight.shape, seed), sharding.weight)
        scales = _on_device(lambda: jnp.full((*lead, groups, n), scale, jnp.bfloat16),
                            sharding.scales)
        return QuantizedWeight8bit(weight, scales)
    name = path.rsplit("/", 1)[-1]
    dtype = jnp.float32
    if name in ("embeddings", "scale"):
        mean, std = (0.0, embed_std) if name == "embeddings" else (1.0, NORM_STD)
        dtype = table_dtype if name == "embeddings" else dtype
    else:  # the router [.., D, E]
        mean, std = 0.0, 1.0 / math.sqrt(leaf.shape[-2])
    key = jax.random.PRNGKey(seed)
    return _on_device(lambda: (mean + std * jax.random.normal(key, leaf.shape, jnp.float32))
                      .astype(dtype), sharding)


def synthetic_params(config: LanguageModelConfig, shardings: dict, seed: int = 0,
                     table_dtype=jnp.float32) -> dict:
    """A full random parameter tree, placed with `shardings`, scale groups as the release;
    the embedding table in `table_dtype` (give the activation dtype: the runner would cast)."""
    groups = {s.module: s.release_groups for s in checkpoint.checkpoint_layout(config) if s.quantized}
    # Scaled input embeddings well below the layers' unit-size outputs: with random tied
    # embeddings a larger input term wins the output projection, and greedy decoding would
    # repeat its input token forever (the same experts every step).
    embed_std = EMBED_SCALE / config.embedding_multiplier_scale
    params: dict = {}
    for module, leaves in abstract_params(config).items():
        for name, leaf in leaves.items():
            path = f"{module}/{name}"
            leaf_seed = zlib.crc32(f"{seed}/{path}".encode())  # stable across processes
            params.setdefault(module, {})[name] = _synthetic_leaf(
                path, leaf, shardings[module][name], groups.get(module, 1), leaf_seed, embed_std,
                table_dtype)
    return jax.block_until_ready(params)

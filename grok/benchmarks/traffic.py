"""What a decode step must move, what the machine can move, and how many layers fit.

- weight bytes per step: the parameters the runner actually holds (the embedding table in
  the activation dtype, not float32), all but the experts no token selected (dense: all E;
  sparse: the expected number of distinct experts under uniform routing, E(1 - (1 - k/E)^B),
  exactly k at one slot);
- KV bytes per step: the keys and values of the live context of every slot (what attention
  must read; a step that reads the whole sequence_len cache wastes the rest);
- the machine's bandwidth: the HBM peak of the mesh's GPUs, or on CPU a measured large copy;
- `--layers fit`: per-device memory of the compiled decode step (XLA's memory analysis:
  arguments + outputs - donated + temporaries) at 1 and 2 layers, extrapolated.

Glossary: B slots, S sequence_len, L layers, E experts, k selected experts, K kv heads,
d key_size.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from grok.config import LanguageModelConfig
from grok.model.transformer import abstract_params, build_forward, init_memory
from grok.parallel import sharding
from grok.runtime_config import RuntimeConfig

# Peak HBM bandwidth in bytes/s by a substring of device_kind; the first match wins.
HBM_PEAK_BYTES_PER_S = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
                        ("A100-SXM4-80GB", 2.039e12), ("A100", 1.555e12))
MEMORY_HEADROOM = 0.9            # --layers fit plans for this fraction of device memory
COPY_BYTES = 256 * 2 ** 20       # the bandwidth probe's array: well past any CPU cache
COPY_REPEATS = 5                 # best of these copies


def nbytes(x) -> int:
    return math.prod(x.shape) * jnp.dtype(x.dtype).itemsize


def experts_read(config: LanguageModelConfig, moe: str, batch: int) -> float:
    """Experts whose weights one decode step needs per layer (expected, uniform routing)."""
    e, k = config.model.num_experts, config.model.num_selected_experts
    return float(e) if moe == "dense" else e * (1 - (1 - k / e) ** batch)


def weight_bytes_per_step(params: dict, config: LanguageModelConfig, moe: str, batch: int) -> float:
    """Bytes of `params` (as the runner holds them) one decode step needs to read."""
    expert_fraction = experts_read(config, moe, batch) / config.model.num_experts
    total = 0.0
    for module, leaves in params.items():
        size = sum(nbytes(x) for x in jax.tree.leaves(leaves))
        total += size * (expert_fraction if "/moe/" in module else 1.0)
    return total


def kv_bytes_per_step(config: LanguageModelConfig, runtime: RuntimeConfig, batch: int,
                      context: float) -> float:
    """Keys and values of `context` live positions in each of `batch` slots, every layer."""
    c = config.model
    itemsize = jnp.dtype(runtime.activation_dtype).itemsize
    per_position = 2 * c.num_layers * c.num_kv_heads * c.key_size * itemsize
    return batch * context * per_position


def hbm_peak_bytes_per_s(devices) -> float | None:
    """The devices' summed HBM peak (weights are spread over the mesh), None if unknown."""
    kind = devices[0].device_kind
    peak = next((bw for name, bw in HBM_PEAK_BYTES_PER_S if name in kind), None)
    return None if peak is None else peak * len(devices)


def measured_copy_bytes_per_s(size: int = COPY_BYTES) -> float:
    """This machine's memory bandwidth as a large NumPy copy sees it (read + write bytes)."""
    src = np.ones(size, np.uint8)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(COPY_REPEATS):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * size / best


def decode_memory_bytes(config: LanguageModelConfig, runtime: RuntimeConfig, batch: int, mesh,
                        kv_len: int | None = None) -> int:
    """Per-device bytes of a compiled decode forward (params, cache, temporaries)."""
    forward = build_forward(config, runtime)
    params = abstract_params(config)
    table = params["language_model/in_out_embed"]["embeddings"]
    params["language_model/in_out_embed"]["embeddings"] = jax.ShapeDtypeStruct(
        table.shape, jnp.dtype(runtime.activation_dtype))   # the runner casts the table once
    memory = jax.eval_shape(lambda: init_memory(config, batch, config.sequence_len, runtime))
    shardings = (sharding.param_shardings(params, mesh), sharding.memory_shardings(memory, mesh))
    rep = sharding.replicated(mesh)

    def step(p, m, tokens, lengths, index):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return forward(p, tokens, m, lengths, index, kv_len)

    vector = jax.ShapeDtypeStruct((batch,), jnp.int32)
    compiled = jax.jit(step, in_shardings=shardings + (rep,) * 3, donate_argnums=(1,)).lower(
        params, memory, jax.ShapeDtypeStruct((batch, 1), jnp.int32), vector, vector).compile()
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes)


def layers_that_fit(config: LanguageModelConfig, runtime: RuntimeConfig, batch: int, mesh,
                    budget_bytes: float) -> int:
    """The most layers whose compiled decode step fits `budget_bytes` per device.

    Measured at 2 and 3 layers (a 1-layer scan is compiled differently) and extrapolated."""
    two, three = (decode_memory_bytes(config.replace(num_layers=n), runtime, batch, mesh)
                  for n in (2, 3))
    per_layer = max(1, three - two)
    layers = int((budget_bytes - (two - 2 * per_layer)) // per_layer)
    if layers < 1:
        raise ValueError(f"not even one layer fits in {budget_bytes / 2 ** 20:.0f} MiB per device "
                         f"(each layer's decode step needs {per_layer / 2 ** 20:.0f} MiB)")
    return layers


def device_budget_bytes(devices, override_gb: float | None) -> float:
    """MEMORY_HEADROOM of the smallest device's memory, or an explicit size in GB."""
    if override_gb is not None:
        return override_gb * 1e9
    stats = [d.memory_stats() or {} for d in devices]
    if not all("bytes_limit" in s for s in stats):
        raise ValueError("--layers fit needs devices that report memory (GPUs) or --device-memory-gb")
    return MEMORY_HEADROOM * min(s["bytes_limit"] for s in stats)

"""Compile-only NVIDIA devices for deviceless XLA:GPU compiles in tests.

`compile_only_devices("h100", n)` gives n devices of an H100 SXM (sm_90a) topology with no
GPU attached: `jax.jit(f).lower(...).compile()` on them runs XLA's whole GPU pipeline
(fusion, Triton lowering for Pallas kernels, ptxas when present). Only the fields XLA reads to
plan and lower kernels are given; the numbers are an H100 SXM's public specifications.
The same function name and signature as grok.benchmarks.gpu_target (issue 16), so the tests
can import that module once it lands.
"""

from __future__ import annotations

import functools
import os

import jax

_H100_SXM = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84942979072
  cuda_compute_capability { major: 9 feature_extension: ACCELERATED_FEATURES }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  thread_dim_limit_x: 1024
  thread_dim_limit_y: 1024
  thread_dim_limit_z: 64
  device_vendor: "NVIDIA Corporation"
  name: "NVIDIA H100 80GB HBM3"
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 1 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

TARGETS = {"h100": _H100_SXM}


@functools.lru_cache(maxsize=None)
def compile_only_devices(target: str, count: int) -> tuple:
    """`count` compile-only devices of `target` (one of TARGETS) on one host."""
    if target not in TARGETS:
        raise ValueError(f"unknown GPU target {target!r}; known: {sorted(TARGETS)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # the plugin logs the absent driver
    from jax._src import xla_bridge
    topology = xla_bridge.make_pjrt_topology("cuda", "", target_config=TARGETS[target],
                                             topology=f"1x1x{count}")
    return tuple(topology._make_compile_only_devices())

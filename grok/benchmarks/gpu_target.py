"""Compile for an NVIDIA H100 or H200 on a machine without one: XLA's GPU pipeline, no device.

The CUDA plugin wheels of the installed jaxlib (`jax-cuda12-pjrt`, `jax-cuda12-plugin`, same
version) compile for a GPU described by a `GpuTargetConfigProto` (text format) instead of a
probed device: `compile_only_devices("h100", 8)` gives 8 devices that `Mesh`, `jit(...).lower
(...).compile()` and `.as_text()` accept, and nothing can run on. XLA then runs its real GPU
pipeline (fusion, Triton GEMM choices, copy insertion, scheduling); only autotuning is skipped
(it needs a device), so GEMM tilings are the heuristics' and timings are not measured.

The target descriptions below are written from the published device numbers (NVIDIA's H100
SXM5 and H200 SXM data sheets: 132 SMs of Hopper, compute capability 9.0, 50 MiB L2, HBM3 at
3.35 TB/s and 80 GB; HBM3e at 4.8 TB/s and 141 GB); the per-SM limits are Hopper's (CUDA C++
Programming Guide, compute capability 9.0).
"""

from __future__ import annotations

import functools
import os

import jax

TARGETS = ("h100", "h200")

# Hopper (sm_90) per-SM limits, shared by both targets.
_HOPPER_SM = """\
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  cuda_compute_capability { major: 9 minor: 0 }
"""

# (HBM bytes/s, HBM bytes, the name CUDA reports) per target.
_MEMORY = {
    "h100": (3_352_320_000_000, 85_520_809_984, "NVIDIA H100 80GB HBM3"),
    "h200": (4_800_000_000_000, 150_754_820_096, "NVIDIA H200"),
}


def target_config(target: str) -> str:
    """The GpuTargetConfigProto text of `target` (one of TARGETS)."""
    if target not in _MEMORY:
        raise ValueError(f"unknown GPU target {target!r}; expected one of {TARGETS}")
    bandwidth, size, name = _MEMORY[target]
    return (f"gpu_device_info {{\n{_HOPPER_SM}"
            f"  memory_bandwidth: {bandwidth}\n  device_memory_size: {size}\n}}\n"
            f'platform_name: "CUDA"\n'
            f"dnn_version_info {{ major: 9 minor: 1 }}\n"
            f'device_description_str: "{name}"\n')


def hbm_bytes_per_s(target: str) -> float:
    """The target's peak HBM bandwidth (bytes/s)."""
    target_config(target)      # validates the name
    return float(_MEMORY[target][0])


def plugin_available() -> bool:
    """Whether this jaxlib can compile for a CUDA target (the plugin wheels are installed)."""
    try:
        import jax_plugins.xla_cuda12  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def compile_only_devices(target: str, count: int) -> tuple:
    """`count` compile-only devices of `target` ("h100" or "h200"), one host, NVLink-connected.

    For a `jax.sharding.Mesh`; `jit(...).lower(...).compile()` on them runs XLA's GPU compiler.
    Raises RuntimeError where the CUDA plugin is not installed.
    """
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    config = target_config(target)
    if not plugin_available():
        raise RuntimeError("compiling for a GPU needs the CUDA plugin of the installed jaxlib: "
                           f"pip install --no-deps jax-cuda12-pjrt=={jax.__version__} "
                           f"jax-cuda12-plugin=={jax.__version__}")
    # The plugin's own start-up looks for a CUDA driver and logs its absence; quiet it here.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from jax._src import xla_bridge

    topology = xla_bridge.make_pjrt_topology("cuda", "", target_config=config,
                                             topology=f"1x1x{count}")
    return tuple(topology._make_compile_only_devices())

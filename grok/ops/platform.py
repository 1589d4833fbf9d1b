"""The platform a program is traced for, which is not always the host's default backend.

A program compiled for GPUs from a CPU-only host (grok.benchmarks.gpu_target) must be traced
as the GPU would run it: bf16 matmul operands (grok.ops.quantization.matmul_dtype), decode
attention as fused reductions (grok.model.attention), sampling without control flow
(grok.engine.sampling). The runner and engine trace their functions inside
`compute_platform(<their mesh's platform>)`; elsewhere the default backend counts.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

_PLATFORM = contextvars.ContextVar("compute_platform", default=None)


@contextlib.contextmanager
def compute_platform(platform: str):
    """Traces inside this block are for devices of `platform` ("cpu", "gpu", "tpu")."""
    token = _PLATFORM.set(platform)
    try:
        yield
    finally:
        _PLATFORM.reset(token)


def current_platform() -> str:
    """The platform `compute_platform` names, else the default backend."""
    return _PLATFORM.get() or jax.default_backend()


def on_cpu() -> bool:
    return current_platform() == "cpu"

"""A short calibration of the device the decode benchmark runs on: what its memory moves.

    python -m grok.benchmarks.gpu_calibrate [--seconds 20] [--json FILE] [--small]

Each figure is bytes over the median time of repeated runs (each run up to block_until_ready),
so the decode step's bytes per second (grok.bench decode: useful_gb_per_s) can be compared
with what this device does on the same kind of work:
- copy: an HBM copy (read + write of a 1 GiB buffer);
- gemv_plain: an int8 x bf16 GEMV, x [1, D] @ w [D, F] (Grok-1's D 6144, F 32768), the
  weight a plain argument: the bound for a dense projection;
- gemv_stacked: the same GEMV through w[e] of an [8, D, F] stack with e an argument (how the
  layer loop and the MoE index a weight);
- gemv_reduce: the same GEMV as the decode step's one-row form (grok.ops.quantization.
  qmatmul_reduce: products summed over D);
- gemv_moe_kernel: the same GEMV through expert e of the stack by the MoE kernels' inner loop
  (grok.kernels.expert_matmul), to set beside gemv_plain (the MoE kernels' goal: at least 80%
  of a plain GEMV).
--small shrinks every size (a CPU dry run of the plumbing; the MoE kernel then runs
interpreted).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grok.benchmarks import save_report
from grok.ops.platform import compute_platform
from grok.ops.quantization import QuantizedWeight8bit, qmatmul, qmatmul_reduce


def _timed(fn: Callable, args: tuple, seconds: float) -> float:
    """Median seconds of fn(*args) (compiled, warmed up) over about `seconds`."""
    jax.block_until_ready(fn(*args))
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def calibrate(seconds: float = 20.0, small: bool = False) -> dict:
    """{name: {"gb_per_s", "ms", "bytes"}} for each figure of the module docstring."""
    d, f, e = (256, 1024, 8) if small else (6144, 32768, 8)
    copy_bytes = (8 if small else 1024) * 2 ** 20
    per = seconds / 5
    platform = jax.default_backend()
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.integers(-127, 128, size=(d, f), dtype=np.int8))
    stack = jnp.asarray(rng.integers(-127, 128, size=(e, d, f), dtype=np.int8))
    scales = jnp.ones((1, f), jnp.bfloat16)
    x = jnp.asarray(rng.normal(size=(1, d)), jnp.bfloat16)
    buf = jnp.zeros((copy_bytes // 4,), jnp.float32)

    def traced(fn):
        def run(*args):
            with compute_platform(platform):
                return fn(*args)
        return jax.jit(run)

    cases = {
        "copy": (jax.jit(lambda a: a + 1), (buf,), 2 * copy_bytes),
        "gemv_plain": (traced(lambda x, w: qmatmul(x, QuantizedWeight8bit(w, scales))), (x, w), d * f),
        "gemv_stacked": (traced(lambda x, s, i: qmatmul(x, QuantizedWeight8bit(s[i], scales))),
                         (x, stack, jnp.int32(3)), d * f),
        "gemv_reduce": (traced(lambda x, s, i: qmatmul_reduce(x, QuantizedWeight8bit(s[i], scales))),
                        (x, stack, jnp.int32(3)), d * f),
    }
    if platform == "gpu" or small:        # elsewhere the kernel only runs interpreted
        from grok.kernels import expert_matmul
        qstack = QuantizedWeight8bit(stack, jnp.ones((e, 1, f), jnp.bfloat16))
        kernel = jax.jit(lambda x, s, i: expert_matmul(x, QuantizedWeight8bit(s, qstack.scales), i,
                                                       interpret=platform != "gpu"))
        cases["gemv_moe_kernel"] = (kernel, (x, stack, jnp.int32(3)), d * f)
    out = {}
    for name, (fn, args, nbytes) in cases.items():
        t = _timed(fn, args, per)
        out[name] = {"gb_per_s": nbytes / t / 1e9, "ms": 1e3 * t, "bytes": nbytes}
        print(f"{name}: {nbytes / t / 1e9:.1f} GB/s ({1e3 * t:.3f} ms, {nbytes / 2**20:.0f} MiB)",
              flush=True)
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m grok.benchmarks.gpu_calibrate",
                                description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="total time to spend measuring")
    p.add_argument("--small", action="store_true", help="small sizes (a CPU dry run)")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    report = {"device": str(jax.devices()[0].device_kind),
              "figures": calibrate(args.seconds, args.small)}
    save_report(report, args.json)
    return report


if __name__ == "__main__":
    main()

"""How the decode benchmark times one configuration: the engine's functions compiled ahead of
time, its slots prefilled, its decode steps timed (interleaved across configurations), and the
useful bytes a step moves. Used by grok.benchmarks.decode, which sweeps configurations.

Glossary: B slots, T prompt length.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

import jax
import numpy as np

from grok.benchmarks import traffic
from grok.config import LanguageModelConfig
from grok.engine.api import SampleParams
from grok.serving.runner import InferenceRunner

WARMUP_STEPS = 2                 # decode steps run before timing (first-call effects)
MIB = 2 ** 20

def compile_functions(ir: InferenceRunner, prompt_len: int, kv_len: int):
    """AOT-compiles the engine's jitted functions: ({name: executable}, {name: wall seconds},
    {name: CPU seconds}). CPU time is the steadier figure on a machine busy with other work.

    The executables land in the jitted functions' caches, so the engine's own calls
    (prefill, generate) run them without compiling again."""
    engine = ir.engine
    executables, seconds, cpu_seconds = {}, {}, {}

    def timed(name, jitted, *args):
        start, cpu_start = time.perf_counter(), time.process_time()
        executables[name] = jitted.lower(*args).compile()
        seconds[name] = time.perf_counter() - start
        cpu_seconds[name] = time.process_time() - cpu_start

    timed("new_memory", engine.new_memory)
    state = executables["new_memory"]()
    bucket = engine.bucket_for(prompt_len)
    settings = np.asarray([0.0, 1.0, 0], np.float32)   # greedy: temperature, top_p, top_k
    timed(f"prefill_{prompt_len}", engine.prefill_fn(None, bucket, False), ir.params,
          np.ones((1, bucket), np.int32), np.int32(prompt_len), None, None, settings,
          np.uint32(0))
    timed("sample_step", engine.sample_step_fn(kv_len), ir.params, state)
    return executables, seconds, cpu_seconds


def make_prompts(config: LanguageModelConfig, batch: int, prompt_len: int, seed: int) -> np.ndarray:
    """[B, T] random non-pad token ids, the same for every run of a sweep."""
    rng = np.random.default_rng(seed)
    return rng.integers(config.pad_token + 1, config.vocab_size, (batch, prompt_len), np.int32)


def measure_prefill(ir: InferenceRunner, prompts: np.ndarray):
    """Fills every slot through the engine (prefill, insert; slot 0 once more first, as
    warmup): (state, median ms, first tokens)."""
    engine, batch = ir.engine, prompts.shape[0]
    state = engine.init_state()
    times, first_tokens = [], [0] * batch
    for i, slot in enumerate([0, *range(batch)]):
        start = time.perf_counter()
        prefix, result = engine.prefill(prompts[slot].tolist(), SampleParams(seed=slot))
        state = engine.insert(prefix, result.arm, state, slot)
        jax.block_until_ready((state, result))
        if i:
            times.append(time.perf_counter() - start)
        first_tokens[slot] = int(engine.read(result).token_ids[0])
    return state, 1e3 * statistics.median(times), first_tokens


def cost_analysis_bytes(executable) -> float:
    """The bytes XLA's cost model says the compiled step accesses (to set beside the useful
    bytes; NaN where the backend gives none)."""
    costs = executable.cost_analysis()
    costs = costs[0] if isinstance(costs, (list, tuple)) else costs
    return float((costs or {}).get("bytes accessed", float("nan")))


PROFILE_STEPS = 3


def profile_decode(prepared: list[dict], directory: str) -> None:
    """PROFILE_STEPS more decode steps of every prepared run under one jax.profiler trace."""
    with jax.profiler.trace(directory):
        for _ in range(PROFILE_STEPS):
            for p in prepared:
                p["state"], handle = p["ir"].engine.generate(p["state"], p["forced_kv_len"])
                jax.block_until_ready((p["state"], handle))


def measure_decode(prepared: list[dict], steps: int) -> None:
    """Times `engine.generate` (its sample_step variants) of every prepared run, interleaved
    step by step, so that a machine busy with something else slows each run alike and the
    ratios stay fair.

    Adds "step_times" (seconds, after WARMUP_STEPS) and "tokens" [WARMUP_STEPS + steps, B]."""
    for p in prepared:
        p["step_times"], p["tokens"] = [], []
    for i in range(WARMUP_STEPS + steps):
        for p in prepared:
            start = time.perf_counter()
            engine = p["ir"].engine
            p["state"], handle = engine.generate(p["state"], p["forced_kv_len"])
            jax.block_until_ready((p["state"], handle))
            if i >= WARMUP_STEPS:
                p["step_times"].append(time.perf_counter() - start)
            p["tokens"].append(engine.read(handle).token_ids.tolist())


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def traffic_report(ir: InferenceRunner, run: dict, args, step_s: float, devices,
                   bandwidth: float) -> dict:
    """Useful bytes per step (weights as the runner holds them + live KV) against `bandwidth`."""
    config, batch = ir.config, run["batch_size"]
    weight_bytes = traffic.weight_bytes_per_step(ir.params, config, run["moe"], batch)
    # mean live context over the timed steps (each reads its own token's key too)
    context = args.prompt_len + WARMUP_STEPS + (args.new_tokens + 1) / 2
    kv_bytes = traffic.kv_bytes_per_step(config, ir.runtime, batch, context)
    useful = weight_bytes + kv_bytes
    report = {"weight_mb_per_step": weight_bytes / MIB, "kv_mb_per_step": kv_bytes / MIB,
              "weight_read_gb_per_s": weight_bytes / step_s / 1e9,
              "useful_gb_per_s": useful / step_s / 1e9, "of_bandwidth": useful / step_s / bandwidth}
    if devices[0].platform != "cpu":
        stats = [d.memory_stats() or {} for d in devices]
        report["device_in_use_mb"] = max(s.get("bytes_in_use", 0) for s in stats) / MIB
        report["device_peak_mb"] = max(s.get("peak_bytes_in_use", 0) for s in stats) / MIB
    return report

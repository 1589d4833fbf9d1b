"""Benchmark: load, compile, prefill and decode times of InferenceRunner's compiled functions.

    JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m grok.bench decode --mesh 1,8 --moe sparse,dense --batch-size 1,8 --json bench.json

Comma-separated --layers, --moe, --batch-size and --dtype sweep every combination in one
process and print one table, with the sparse/dense decode speed ratio and, for several layer
counts, each function's compile-time ratio between the most and fewest layers.

Weights come from --checkpoint, or are synthetic (Grok-style dims from --config or the flags),
made on the devices in their final sharding: int8 weights hash each element's index, with no
host copy and no float -> quantize pass (one Grok-1-width layer is 4.8 GB of int8).

What is measured (the runner's own jitted functions, compiled ahead of time):
- compile_s (wall) and compile_cpu_s: `.lower(...).compile()` of new_memory, prefill for the
  --prompt-len bucket, and sample_step. The first configuration is compiled once untimed
  beforehand (with one more slot), so one-time start-up costs fall on no configuration.
- prefill_ms: one --prompt-len prompt into one slot (median over the slots).
- decode: every slot filled, WARMUP_STEPS steps, then --new-tokens steps each timed up to
  block_until_ready, interleaved across the configurations of one layer count (all their caches
  are held at once); decode_step_ms is the median, decode_tokens_per_s = slots / that.
- weight bytes read per decode step: everything but the experts no token selected (the dense
  path reads all E; the sparse path the expected number of distinct experts under uniform
  routing, E(1 - (1 - k/E)^B), exactly k at one slot). On a GPU, also device memory and that
  traffic per step time as a fraction of the devices' HBM peak.
peak_rss_mb is the process's peak so far, so it only grows along a sweep.

Glossary: B slots, T prompt length, S sequence_len, L layers, E experts, k selected experts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import statistics
import sys
import time
import zlib
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grok import checkpoint
from grok.config import FPROP_DTYPES, GROK_1, MOE_IMPLS, LanguageModelConfig, load_config
from grok.model.transformer import abstract_params
from grok.ops.quantization import QuantizedWeight8bit
from grok.engine.runner import InferenceRunner, ModelRunner, unpack_output

WARMUP_STEPS = 2                 # decode steps run before timing (first-call effects)
SEQUENCE_LEN_MULTIPLE = 128      # a synthetic cache is the run's length rounded up to this
GREEDY = (0.0, 1.0, 0)           # (temperature, nucleus_p, top_k): deterministic tokens
# Peak HBM bandwidth in bytes/s by a substring of device_kind; the first match wins.
HBM_PEAK_BYTES_PER_S = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
                        ("A100-SXM4-80GB", 2.039e12), ("A100", 1.555e12))
INT8_UNIFORM_STD = math.sqrt((256 ** 2 - 1) / 12)  # std of a uniform byte, ~73.9
NORM_STD = 0.1                   # grok.checkpoint.random_tensors' default
EMBED_SCALE = 0.1                # RMS of the scaled input embeddings (see synthetic_params)
MEMORY_HEADROOM = 0.9            # --layers fit plans for this fraction of device memory
MIB = 2 ** 20
RESULT_KEYS = ("load_s", "compile_s", "prefill_ms", "decode_step_ms", "decode_tokens_per_s", "peak_rss_mb")


# ---- command line ---------------------------------------------------------------------------
def _list(kind, choices=None):
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}")
        bad = [v for v in values if (choices and v not in choices) or (kind is int and v < 1)]
        if bad:
            raise argparse.ArgumentTypeError(
                f"{bad} not allowed; expected {'one of ' + str(choices) if choices else 'ints >= 1'}")
        return values
    return parse


def _mesh(text: str) -> tuple[int, int]:
    if len(mesh := _list(int)(text)) != 2:
        raise argparse.ArgumentTypeError(f"--mesh is DATA,MODEL (two ints), got {text!r}")
    return tuple(mesh)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m grok.bench", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="checkpoint directory (else synthetic weights)")
    p.add_argument("--config", help="config JSON (default: <checkpoint>/config.json, Grok-1 "
                   "for a checkpoint without one, else the synthetic dims below)")
    dims = p.add_argument_group("synthetic Grok-style dims (without --config/--checkpoint)")
    dims.add_argument("--vocab", type=int, default=32768)
    dims.add_argument("--emb", type=int, default=512)
    dims.add_argument("--q-heads", type=int, default=16)
    dims.add_argument("--kv-heads", type=int, default=8)
    dims.add_argument("--key-size", type=int, default=64)
    dims.add_argument("--experts", type=int, default=8)
    dims.add_argument("--selected-experts", type=int, default=2)
    dims.add_argument("--widening", type=float, default=8.0)
    p.add_argument("--layers", type=lambda t: "fit" if t == "fit" else _list(int)(t), default=None,
                   help="layer count(s), e.g. 4,32 (default: the config's, 8 synthetic); "
                   "'fit': as many as fit device memory")
    p.add_argument("--sequence-len", type=int, default=None, help="KV cache length S")
    p.add_argument("--mesh", type=_mesh, default=None, help="DATA,MODEL (default 1,#devices)")
    p.add_argument("--batch-size", type=_list(int), default=[1], help="decode slots, e.g. 1,8")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=16, help="timed decode steps")
    p.add_argument("--moe", type=_list(str, MOE_IMPLS), default=["sparse"])
    p.add_argument("--dtype", type=_list(str, FPROP_DTYPES + ("auto",)), default=["auto"],
                   help="activation dtype(s); auto: float32 on CPU, bfloat16 elsewhere")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    if args.checkpoint and args.layers is not None:
        p.error("--layers cannot change a checkpoint's layer count")
    for name in ("prompt_len", "new_tokens", "sequence_len"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def base_config(args: argparse.Namespace) -> LanguageModelConfig:
    """The model benchmarked, before --layers, --moe and --dtype are applied."""
    config_path = args.config
    if not config_path and args.checkpoint:
        candidate = os.path.join(args.checkpoint, "config.json")
        config_path = candidate if os.path.isfile(candidate) else None
    if config_path:
        config = load_config(config_path)
    elif args.checkpoint:
        config = GROK_1
    else:
        config = GROK_1.replace(
            vocab_size=args.vocab, emb_size=args.emb, num_q_heads=args.q_heads,
            num_kv_heads=args.kv_heads, key_size=args.key_size, num_experts=args.experts,
            num_selected_experts=args.selected_experts, widening_factor=args.widening,
            num_layers=8)
    run_len = args.prompt_len + WARMUP_STEPS + args.new_tokens
    seq_len = args.sequence_len
    if seq_len is None and not config_path and not args.checkpoint:
        seq_len = -(-run_len // SEQUENCE_LEN_MULTIPLE) * SEQUENCE_LEN_MULTIPLE
    config = config.replace(sequence_len=seq_len or config.sequence_len)
    if run_len > config.sequence_len:
        raise ValueError(f"--prompt-len + {WARMUP_STEPS} warmup + --new-tokens = {run_len} "
                         f"exceeds sequence_len {config.sequence_len}; pass --sequence-len")
    if config.pad_token + 1 >= config.vocab_size:
        raise ValueError("the vocabulary has no token id above pad_token for prompts")
    return config


# ---- weights ----------------------------------------------------------------------------------
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


def _synthetic_leaf(path: str, leaf, sharding, groups: int, seed: int, embed_std: float):
    """Random weights that keep activations at unit scale, like checkpoint.random_tensors."""
    if isinstance(leaf, QuantizedWeight8bit):
        *lead, k, n = leaf.weight.shape
        scale = 1.0 / (math.sqrt(k) * INT8_UNIFORM_STD)  # so x @ W has x's per-element scale
        weight = _on_device(lambda: hashed_int8(leaf.weight.shape, seed), sharding.weight)
        scales = _on_device(lambda: jnp.full((*lead, groups, n), scale, jnp.bfloat16),
                            sharding.scales)
        return QuantizedWeight8bit(weight, scales)
    name = path.rsplit("/", 1)[-1]
    if name in ("embeddings", "scale"):
        mean, std = (0.0, embed_std) if name == "embeddings" else (1.0, NORM_STD)
    else:  # the router [.., D, E]
        mean, std = 0.0, 1.0 / math.sqrt(leaf.shape[-2])
    key = jax.random.PRNGKey(seed)
    return _on_device(lambda: mean + std * jax.random.normal(key, leaf.shape, jnp.float32), sharding)


def synthetic_params(config: LanguageModelConfig, shardings: dict, seed: int = 0) -> dict:
    """A full random parameter tree, placed with `shardings`, scale groups as the release."""
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
                path, leaf, shardings[module][name], groups.get(module, 1), leaf_seed, embed_std)
    return jax.block_until_ready(params)


def load_params(args: argparse.Namespace, config: LanguageModelConfig, shardings: dict):
    """(params on the devices, seconds): --checkpoint read, or synthetic weights generated."""
    start = time.perf_counter()
    if args.checkpoint:
        params = checkpoint.load_checkpoint(args.checkpoint, config, shardings)
    else:
        params = synthetic_params(config, shardings, args.seed)
    return jax.block_until_ready(params), time.perf_counter() - start


def _nbytes(x) -> int:
    return math.prod(x.shape) * jnp.dtype(x.dtype).itemsize


def experts_read(config: LanguageModelConfig, moe: str, batch: int) -> float:
    """Experts whose weights one decode step reads per layer (expected, uniform routing)."""
    e, k = config.model.num_experts, config.model.num_selected_experts
    return float(e) if moe == "dense" else e * (1 - (1 - k / e) ** batch)


def weight_bytes_per_step(params: dict, config: LanguageModelConfig, moe: str, batch: int) -> float:
    """Bytes of weights one decode step reads: all but the unselected experts (see docstring)."""
    expert_fraction = experts_read(config, moe, batch) / config.model.num_experts
    total = 0.0
    for module, leaves in params.items():
        nbytes = sum(_nbytes(x) for x in jax.tree.leaves(leaves))
        total += nbytes * (expert_fraction if "/moe/" in module else 1.0)
    return total


def layers_that_fit(config: LanguageModelConfig, batch: int, devices) -> int:
    """The most layers whose weights and KV cache fit MEMORY_HEADROOM of the devices' memory."""
    stats = [d.memory_stats() or {} for d in devices]
    if not all("bytes_limit" in s for s in stats):
        raise ValueError("--layers fit needs devices that report memory (GPUs)")
    budget = MEMORY_HEADROOM * min(s["bytes_limit"] for s in stats) * len(devices)
    one, two = (sum(_nbytes(x) for x in jax.tree.leaves(abstract_params(config.replace(num_layers=n))))
                for n in (1, 2))
    c, itemsize = config.model, jnp.dtype(config.fprop_dtype).itemsize
    kv_per_layer = 2 * batch * config.sequence_len * c.num_kv_heads * c.key_size * itemsize
    table_copy = config.vocab_size * c.emb_size * itemsize  # the table cast to fprop_dtype
    per_layer = two - one + kv_per_layer
    layers = int((budget - (one - (two - one)) - table_copy) // per_layer)
    if layers < 1:
        raise ValueError(f"not even one layer fits in {budget / MIB:.0f} MiB of device memory")
    return layers


# ---- measurements -----------------------------------------------------------------------------
def compile_functions(ir: InferenceRunner, prompt_len: int):
    """AOT-compiles the runner's jitted functions: ({name: executable}, {name: wall seconds},
    {name: CPU seconds}). CPU time is the steadier figure on a machine busy with other work."""
    executables, seconds, cpu_seconds = {}, {}, {}

    def timed(name, jitted, *args):
        start, cpu_start = time.perf_counter(), time.process_time()
        executables[name] = jitted.lower(*args).compile()
        seconds[name] = time.perf_counter() - start
        cpu_seconds[name] = time.process_time() - cpu_start

    timed("new_memory", ir.new_memory)
    state = executables["new_memory"]()
    tokens = np.ones(prompt_len, np.int32)
    prefill_args = ir.prefill_args(tokens, tokens, prompt_len, 0, True, GREEDY, 0)
    timed(f"prefill_{prompt_len}", ir.prefill_jit[False], ir.params, state, *prefill_args)
    timed("sample_step", ir.sample_step, ir.params, state)
    return executables, seconds, cpu_seconds


def make_prompts(config: LanguageModelConfig, batch: int, prompt_len: int, seed: int) -> np.ndarray:
    """[B, T] random non-pad token ids, the same for every run of a sweep."""
    rng = np.random.default_rng(seed)
    return rng.integers(config.pad_token + 1, config.vocab_size, (batch, prompt_len), np.int32)


def measure_prefill(ir: InferenceRunner, executables: dict, prompts: np.ndarray):
    """Fills every slot (slot 0 once more first, as warmup): (state, median ms, first tokens)."""
    batch, prompt_len = prompts.shape
    prefill = executables[f"prefill_{prompt_len}"]
    state = executables["new_memory"]()
    times, first_tokens = [], [0] * batch
    for i, slot in enumerate([0, *range(batch)]):
        targets = np.append(prompts[slot, 1:], ir.config.pad_token)
        args = ir.prefill_args(prompts[slot], targets, prompt_len, slot, True, GREEDY, slot)
        start = time.perf_counter()
        state, out = prefill(ir.params, state, *args)
        jax.block_until_ready((state, out))
        if i:
            times.append(time.perf_counter() - start)
        first_tokens[slot] = int(unpack_output(np.asarray(out["sample"]))[0][0])
    return state, 1e3 * statistics.median(times), first_tokens


def measure_decode(prepared: list[dict], steps: int) -> None:
    """Times sample_step of every prepared run, interleaved step by step, so that a machine
    busy with something else slows each run alike and the ratios stay fair.

    Adds "step_times" (seconds, after WARMUP_STEPS) and "tokens" [WARMUP_STEPS + steps, B]."""
    for p in prepared:
        p["step_times"], p["tokens"] = [], []
    for i in range(WARMUP_STEPS + steps):
        for p in prepared:
            start = time.perf_counter()
            p["state"], packed = p["executables"]["sample_step"](p["ir"].params, p["state"])
            jax.block_until_ready((p["state"], packed))
            if i >= WARMUP_STEPS:
                p["step_times"].append(time.perf_counter() - start)
            p["tokens"].append(unpack_output(np.asarray(packed))[0].tolist())


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def device_report(params, config, moe: str, batch: int, step_s: float, devices) -> dict:
    """Weight traffic per step; on accelerators also device memory and HBM-peak fraction."""
    weight_bytes = weight_bytes_per_step(params, config, moe, batch)
    report = {"weight_mb_per_step": weight_bytes / MIB,
              "weight_read_gb_per_s": weight_bytes / step_s / 1e9}
    if devices[0].platform == "cpu":
        return report
    stats = [d.memory_stats() or {} for d in devices]
    report["device_in_use_mb"] = max(s.get("bytes_in_use", 0) for s in stats) / MIB
    report["device_peak_mb"] = max(s.get("peak_bytes_in_use", 0) for s in stats) / MIB
    peak = next((bw for name, bw in HBM_PEAK_BYTES_PER_S if name in devices[0].device_kind), None)
    if peak:  # weights are spread over the mesh, so its devices' bandwidth adds up
        report["hbm_peak_fraction"] = weight_bytes / step_s / (peak * len(devices))
    return report


def make_runner(args, config: LanguageModelConfig, params: dict, mesh, batch: int) -> InferenceRunner:
    """An initialized InferenceRunner with `batch` slots over the given (already placed) params."""
    num_devices = math.prod(mesh)
    runner = ModelRunner(config, bs_per_device=batch / num_devices)
    ir = InferenceRunner(runner, local_mesh_config=mesh, pad_sizes=(args.prompt_len,),
                         params=params, precompile=False)
    ir.initialize()  # params are already placed with the same shardings: no copy
    if ir.batch_size != batch:
        raise ValueError(f"--batch-size {batch} on {num_devices} devices gave {ir.batch_size} slots")
    return ir


def prepare_run(args, config: LanguageModelConfig, params: dict, mesh, batch: int,
                warm_up: bool = False) -> dict:
    """Compiles one configuration and prefills all its slots: the state decode starts from.

    warm_up: first compile the same model with one more slot, untimed, so that JAX's and
    XLA's one-time costs are not charged to whichever configuration comes first. (Not the same
    program: JAX would answer the timed compilation from its in-memory cache.)"""
    if warm_up:
        compile_functions(make_runner(args, config, params, mesh, batch + 1), args.prompt_len)
    ir = make_runner(args, config, params, mesh, batch)
    executables, compile_s, compile_cpu_s = compile_functions(ir, args.prompt_len)
    prompts = make_prompts(config, batch, args.prompt_len, args.seed)
    state, prefill_ms, first_tokens = measure_prefill(ir, executables, prompts)
    run = {"layers": config.model.num_layers, "moe": config.moe_impl, "batch_size": batch,
           "dtype": config.fprop_dtype, "compile_s": compile_s, "compile_cpu_s": compile_cpu_s,
           "prefill_ms": prefill_ms}
    return {"ir": ir, "executables": executables, "state": state, "first_tokens": first_tokens,
            "run": run}


def finish_run(p: dict, params: dict) -> dict:
    """The result row of a prepared run once its decode steps are timed."""
    run, ir, batch = p["run"], p["ir"], p["run"]["batch_size"]
    step_s = statistics.median(p["step_times"])
    run.update({"decode_step_ms": 1e3 * step_s, "decode_step_ms_min": 1e3 * min(p["step_times"]),
                "decode_tokens_per_s": batch / step_s, "peak_rss_mb": peak_rss_mb()})
    run.update(device_report(params, ir.config, run["moe"], batch, step_s, jax.devices()))
    # per slot: the prefill's token, then each decode step's
    run["tokens"] = [[p["first_tokens"][b]] + [step[b] for step in p["tokens"]] for b in range(batch)]
    return run


# ---- the sweep ------------------------------------------------------------------------------
def sweep(args: argparse.Namespace) -> dict:
    """Measures every (layers, dtype, moe, batch) combination; weights made once per layer count."""
    devices = jax.devices()
    mesh = args.mesh or (1, len(devices))
    base = base_config(args)
    dtypes = [("float32" if devices[0].platform == "cpu" else "bfloat16") if d == "auto" else d
              for d in args.dtype]
    layer_counts = args.layers or [base.model.num_layers]
    if layer_counts == "fit":
        layer_counts = [layers_that_fit(base.replace(fprop_dtype=dtypes[0]), max(args.batch_size),
                                        devices[:math.prod(mesh)])]
    runs = []
    for layers in layer_counts:
        config = base.replace(num_layers=layers)
        placement = ModelRunner(config)  # only for the mesh's parameter shardings
        placement.initialize(None, mesh)
        params, load_s = load_params(args, config, placement.param_shardings)
        prepared = []
        for dtype, moe, batch in itertools.product(dtypes, args.moe, args.batch_size):
            variant = config.replace(fprop_dtype=dtype, moe_impl=moe)
            first = not runs and not prepared
            prepared.append(prepare_run(args, variant, params, mesh, batch, warm_up=first))
            print(f"compiled and prefilled: {layers} layers, {moe}, {batch} slots, {dtype}",
                  file=sys.stderr, flush=True)
        measure_decode(prepared, args.new_tokens)
        runs += [{"load_s": load_s, **finish_run(p, params)} for p in prepared]
        del params, prepared
    return {"device": f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})",
            "mesh": list(mesh), "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
            "warmup_steps": WARMUP_STEPS, "config": base.to_dict(), "runs": runs,
            "comparisons": comparisons(runs)}


def _group(runs: list[dict], varying: str) -> dict:
    """Runs grouped by every setting except `varying`."""
    groups: dict = {}
    for run in runs:
        key = tuple((k, run[k]) for k in ("layers", "moe", "batch_size", "dtype") if k != varying)
        groups.setdefault(key, {})[run[varying]] = run
    return groups


def comparisons(runs: list[dict]) -> list[dict]:
    """Sparse/dense decode speed, and compile time at the most over the fewest layers."""
    out = []
    for key, by_moe in _group(runs, "moe").items():
        if {"sparse", "dense"} <= set(by_moe):
            ratio = by_moe["sparse"]["decode_tokens_per_s"] / by_moe["dense"]["decode_tokens_per_s"]
            out.append({"what": "decode_tokens_per_s sparse / dense", **dict(key), "ratio": ratio})
    for key, by_layers in _group(runs, "layers").items():
        if len(by_layers) > 1:
            most, fewest = by_layers[max(by_layers)], by_layers[min(by_layers)]
            for timing, name in itertools.product(("compile_s", "compile_cpu_s"), most["compile_s"]):
                if name == "new_memory":  # zeros only; nothing that grows with depth
                    continue
                out.append({"what": f"{timing}[{name}] {max(by_layers)} / {min(by_layers)} layers",
                            **dict(key), "ratio": most[timing][name] / fewest[timing][name]})
    return out


# ---- output -----------------------------------------------------------------------------------
def _columns(run: dict) -> list[tuple[str, Any]]:
    """(header, value) of one table row."""
    cols = [("layers", run["layers"]), ("moe", run["moe"]), ("slots", run["batch_size"]),
            ("dtype", run["dtype"]), ("load s", f"{run['load_s']:.1f}")]
    cols += [(f"compile {name} s", f"{s:.1f}") for name, s in run["compile_s"].items()
             if name != "new_memory"]
    cols += [("prefill ms", f"{run['prefill_ms']:.1f}"), ("step ms", f"{run['decode_step_ms']:.1f}"),
             ("tok/s", f"{run['decode_tokens_per_s']:.2f}"), ("rss MB", f"{run['peak_rss_mb']:.0f}"),
             ("weights GB/s", f"{run['weight_read_gb_per_s']:.2f}")]
    if "device_peak_mb" in run:
        cols.append(("dev peak MB", f"{run['device_peak_mb']:.0f}"))
    if "hbm_peak_fraction" in run:
        cols.append(("of HBM peak", f"{100 * run['hbm_peak_fraction']:.1f}%"))
    return cols


def print_report(report: dict, file=sys.stdout) -> None:
    """A plain (Markdown) table of the runs, then the ratios."""
    rows = [_columns(run) for run in report["runs"]]
    header = [h for h, _ in max(rows, key=len)]
    widths = [max(len(str(cell)) for cell in [h] + [r[i][1] for r in rows if i < len(r)])
              for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"
    print(f"{report['device']}, mesh {tuple(report['mesh'])}, prompt {report['prompt_len']}, "
          f"S {report['config']['sequence_len']}, {report['new_tokens']} timed decode steps "
          f"(median)", file=file)
    print(line(header), file=file)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=file)
    for row in rows:
        print(line([v for _, v in row]), file=file)
    for c in report["comparisons"]:
        where = ", ".join(f"{k} {c[k]}" for k in ("layers", "moe", "batch_size", "dtype") if k in c)
        print(f"{c['what']} ({where}): {c['ratio']:.2f}x", file=file)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    report = {"command": " ".join(["python -m grok.bench", *argv]), **sweep(args)}
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()

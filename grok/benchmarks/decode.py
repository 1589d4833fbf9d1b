"""Benchmark: load, compile, prefill and decode times of the engine's compiled functions.

    JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m grok.bench decode --mesh 1,8 --moe sparse,dense --batch-size 1,8 --json bench.json

Comma-separated --layers, --experts, --sequence-len, --moe, --batch-size and --dtype sweep
every combination in one process and print one table, with ratios measured side by side:
sparse/dense decode speed, step time at the most over the fewest experts and at the longest
over the shortest sequence_len, and each function's compile time at the most over the fewest
layers.

Weights come from --checkpoint, or are synthetic (Grok-style dims from --config or the flags,
grok.benchmarks.weights), made on the devices in their final sharding.

What is measured (the engine's own jitted functions, grok.engine.engine.JaxEngine, compiled
ahead of time; the engine then runs these very executables):
- compile_s (wall) and compile_cpu_s: `.lower(...).compile()` of new_memory, the prefill
  (`prefill_memory`) of the --prompt-len bucket, and the `sample_step` variant the run decodes
  with. The first configuration is compiled once untimed beforehand (with one more slot), so
  one-time start-up costs fall on no configuration.
- prefill_ms: one --prompt-len prompt prefilled and inserted into a slot (median over slots).
- decode: every slot filled, WARMUP_STEPS steps, then --new-tokens steps each timed up to
  block_until_ready, interleaved across the configurations of one layer count (all their caches
  are held at once); decode_step_ms is the median, decode_tokens_per_s = slots / that.
  Each step is `engine.generate`: --kv-len auto lets the engine pick its variant per step
  (the power-of-two bucket of the live context, grok.model.transformer.live_kv_len; the
  run's kv_len is the bucket holding the whole run, and kv_len_steps counts the variants
  actually run); full forces the variant reading all sequence_len positions.
- useful bytes per step (grok.benchmarks.traffic): the weights a step needs plus the KV of
  the live context; as GB/s, and as a fraction of the mesh's HBM peak (GPU) or of this
  machine's measured copy bandwidth (CPU).
- --dump-hlo DIR: each sample_step's optimised HLO, and its layer loop's collectives,
  conditionals and int8 copies (grok.benchmarks.hlo_check) in the results.
- cost_analysis_mb_per_step: the bytes XLA's cost model gives the compiled sample_step,
  beside the useful bytes (weight_mb_per_step + kv_mb_per_step).
- --profile DIR: 3 more steps of each run traced with jax.profiler (TensorBoard/Perfetto).
peak_rss_mb is the process's peak so far, so it only grows along a sweep.

Glossary: B slots, T prompt length, S sequence_len, L layers, E experts, k selected experts.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from grok import checkpoint
from grok.benchmarks import hlo_check, traffic
from grok.benchmarks.decode_measure import (MIB, WARMUP_STEPS, compile_functions, cost_analysis_bytes,
                                           make_prompts, measure_decode, measure_prefill,
                                           peak_rss_mb, profile_decode, traffic_report)
from grok.benchmarks.decode_report import SETTINGS, comparisons, print_report
from grok.benchmarks.weights import synthetic_params
from grok.config import GROK_1, LanguageModelConfig, load_config
from grok.engine.runner import ModelRunner
from grok.serving.runner import InferenceRunner
from grok.model.transformer import live_kv_len
from grok.parallel import sharding
from grok.runtime_config import ACTIVATION_DTYPES, MOE_IMPLS, RuntimeConfig
from grok.benchmarks import save_report

SEQUENCE_LEN_MULTIPLE = 128      # a synthetic cache is the run's length rounded up to this
KV_LEN_MODES = ("auto", "full")
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
    dims.add_argument("--experts", type=_list(int), default=[8], help="expert count(s), e.g. 2,8")
    dims.add_argument("--selected-experts", type=int, default=2)
    dims.add_argument("--widening", type=float, default=8.0)
    p.add_argument("--layers", type=lambda t: "fit" if t == "fit" else _list(int)(t), default=None,
                   help="layer count(s), e.g. 4,32 (default: the config's, 8 synthetic); "
                   "'fit': as many as fit device memory (XLA's memory analysis of the step)")
    p.add_argument("--device-memory-gb", type=float, default=None,
                   help="--layers fit plans for this much memory per device (default: 90%% "
                   "of what the device reports; needed on CPU)")
    p.add_argument("--sequence-len", type=_list(int), default=None,
                   help="KV cache length(s) S, e.g. 512,8192")
    p.add_argument("--kv-len", choices=KV_LEN_MODES, default="auto",
                   help="cache positions sample_step reads: auto = the power-of-two bucket "
                   "holding the run; full = all of sequence_len")
    p.add_argument("--mesh", type=_mesh, default=None, help="DATA,MODEL (default 1,#devices)")
    p.add_argument("--batch-size", type=_list(int), default=[1], help="decode slots, e.g. 1,8")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=16, help="timed decode steps")
    p.add_argument("--moe", type=_list(str, MOE_IMPLS), default=["sparse"])
    p.add_argument("--dtype", type=_list(str, ACTIVATION_DTYPES + ("auto",)), default=["auto"],
                   help="activation dtype(s); auto: float32 on CPU, bfloat16 elsewhere")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dump-hlo", help="write each sample_step's optimised HLO to this directory")
    p.add_argument("--profile", help="after the timed steps, trace PROFILE_STEPS more of each run "
                                     "with jax.profiler into this directory")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    if args.checkpoint and args.layers is not None:
        p.error("--layers cannot change a checkpoint's layer count")
    for name in ("prompt_len", "new_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def run_length(args: argparse.Namespace) -> int:
    """Cache positions a run fills: the prompt, the warmup and the timed steps."""
    return args.prompt_len + WARMUP_STEPS + args.new_tokens


def base_config(args: argparse.Namespace) -> LanguageModelConfig:
    """The model benchmarked (first --experts and --sequence-len), before the sweep's changes."""
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
            num_kv_heads=args.kv_heads, key_size=args.key_size, num_experts=args.experts[0],
            num_selected_experts=args.selected_experts, widening_factor=args.widening,
            num_layers=8)
    run_len = run_length(args)
    seq_lens = args.sequence_len or [None]
    if seq_lens == [None] and not config_path and not args.checkpoint:
        seq_lens = [-(-run_len // SEQUENCE_LEN_MULTIPLE) * SEQUENCE_LEN_MULTIPLE]
    seq_lens = [s or config.sequence_len for s in seq_lens]
    for s in seq_lens:
        if run_len > s:
            raise ValueError(f"--prompt-len + {WARMUP_STEPS} warmup + --new-tokens = {run_len} "
                             f"exceeds sequence_len {s}; pass --sequence-len")
    args.sequence_len = seq_lens
    config = config.replace(sequence_len=seq_lens[0])
    if config.pad_token + 1 >= config.vocab_size:
        raise ValueError("the vocabulary has no token id above pad_token for prompts")
    return config


def load_params(args: argparse.Namespace, config: LanguageModelConfig, shardings: dict,
                table_dtype) -> tuple[dict, float]:
    """(params on the devices, seconds): --checkpoint read, or synthetic weights generated."""
    start = time.perf_counter()
    if args.checkpoint:
        params = checkpoint.load_checkpoint(args.checkpoint, config, shardings)
    else:
        params = synthetic_params(config, shardings, args.seed, table_dtype)
    return jax.block_until_ready(params), time.perf_counter() - start


def make_runner(args, config: LanguageModelConfig, runtime: RuntimeConfig, params: dict, mesh,
                batch: int) -> InferenceRunner:
    """An initialized InferenceRunner with `batch` slots over the given (already placed) params."""
    num_devices = math.prod(mesh)
    runner = ModelRunner(config, bs_per_device=batch / num_devices, runtime=runtime)
    ir = InferenceRunner(runner, local_mesh_config=mesh, pad_sizes=(args.prompt_len,),
                         params=params, precompile=False)
    ir.initialize()  # params are already placed with the same shardings: no copy
    if ir.batch_size != batch:
        raise ValueError(f"--batch-size {batch} on {num_devices} devices gave {ir.batch_size} slots")
    return ir


def run_kv_len(args, config: LanguageModelConfig) -> int:
    if args.kv_len == "full":
        return config.sequence_len
    return live_kv_len(run_length(args), config.sequence_len)


def dump_hlo(args, run: dict, executable) -> dict:
    """Writes sample_step's optimised HLO under --dump-hlo; its layer loop's report."""
    os.makedirs(args.dump_hlo, exist_ok=True)
    name = "_".join(f"{k}{run[k]}" for k in SETTINGS) + ".sample_step.txt"
    text = executable.as_text()
    with open(os.path.join(args.dump_hlo, name), "w") as f:
        f.write(text)
    report = hlo_check.analyse(text)
    return {"file": name, "collectives_per_layer": len(report.collectives),
            "layer_collectives": report.collectives,
            "conditionals": report.conditionals,
            "largest_int8_buffer": report.largest_int8_buffer,
            "int8_float_copies": len(report.int8_float_copies)}


def prepare_run(args, config: LanguageModelConfig, runtime: RuntimeConfig, params: dict, mesh,
                batch: int, warm_up: bool = False) -> dict:
    """Compiles one configuration and prefills all its slots: the state decode starts from.

    warm_up: first compile the same model with one more slot, untimed, so that JAX's and
    XLA's one-time costs are not charged to whichever configuration comes first. (Not the same
    program: JAX would answer the timed compilation from its in-memory cache.)"""
    kv_len = run_kv_len(args, config)
    if warm_up:
        compile_functions(make_runner(args, config, runtime, params, mesh, batch + 1),
                          args.prompt_len, kv_len)
    ir = make_runner(args, config, runtime, params, mesh, batch)
    executables, compile_s, compile_cpu_s = compile_functions(ir, args.prompt_len, kv_len)
    prompts = make_prompts(config, batch, args.prompt_len, args.seed)
    state, prefill_ms, first_tokens = measure_prefill(ir, prompts)
    run = {"layers": config.model.num_layers, "experts": config.model.num_experts,
           "moe": runtime.moe_impl, "batch_size": batch, "dtype": runtime.activation_dtype,
           "sequence_len": config.sequence_len, "kv_len": kv_len, "compile_s": compile_s,
           "compile_cpu_s": compile_cpu_s, "prefill_ms": prefill_ms,
           "cost_analysis_mb_per_step": cost_analysis_bytes(executables["sample_step"]) / MIB}
    if args.dump_hlo:
        run["hlo"] = dump_hlo(args, run, executables["sample_step"])
    forced = config.sequence_len if args.kv_len == "full" else None   # None: the engine picks
    return {"ir": ir, "executables": executables, "state": state, "first_tokens": first_tokens,
            "forced_kv_len": forced, "run": run}


def finish_run(p: dict, args, devices, bandwidth: float) -> dict:
    """The result row of a prepared run once its decode steps are timed."""
    run, ir, batch = p["run"], p["ir"], p["run"]["batch_size"]
    step_s = statistics.median(p["step_times"])
    run.update({"decode_step_ms": 1e3 * step_s, "decode_step_ms_min": 1e3 * min(p["step_times"]),
                "decode_tokens_per_s": batch / step_s, "peak_rss_mb": peak_rss_mb(),
                "kv_len_steps": {str(k): n for k, n in
                                 sorted(ir.engine.decode_steps_by_kv_len.items())}})
    run.update(traffic_report(ir, run, args, step_s, devices, bandwidth))
    # per slot: the prefill's token, then each decode step's
    run["tokens"] = [[p["first_tokens"][b]] + [step[b] for step in p["tokens"]] for b in range(batch)]
    return run


# ---- the sweep ------------------------------------------------------------------------------
def _bandwidth(devices) -> tuple[float, str]:
    """(bytes/s, where the figure comes from) that useful traffic is compared with."""
    peak = traffic.hbm_peak_bytes_per_s(devices)
    if peak is not None:
        return peak, f"HBM peak of {len(devices)} x {devices[0].device_kind}"
    return traffic.measured_copy_bytes_per_s(), "measured NumPy copy (read + write)"


def sweep(args: argparse.Namespace) -> dict:
    """Every (layers, experts, dtype, moe, batch, sequence_len) combination; weights made once
    per (layers, experts); decode interleaved over all runs of one layer count."""
    all_devices = jax.devices()
    mesh = args.mesh or (1, len(all_devices))
    devices = all_devices[:math.prod(mesh)]      # the mesh's devices, not every device
    base = base_config(args)
    dtypes = [("float32" if devices[0].platform == "cpu" else "bfloat16") if d == "auto" else d
              for d in args.dtype]
    table_dtype = jnp.dtype(dtypes[0]) if len(set(dtypes)) == 1 else jnp.float32
    expert_counts = args.experts if not (args.config or args.checkpoint) else [base.model.num_experts]
    layer_counts = args.layers or [base.model.num_layers]
    if layer_counts == "fit":
        widest = base.replace(num_experts=max(expert_counts), sequence_len=max(args.sequence_len))
        budget = traffic.device_budget_bytes(devices, args.device_memory_gb)
        layer_counts = [traffic.layers_that_fit(widest, RuntimeConfig(activation_dtype=dtypes[0]),
                                                max(args.batch_size),
                                                sharding.make_mesh(mesh), budget)]
    bandwidth, bandwidth_source = _bandwidth(devices)
    runs = []
    for layers in layer_counts:
        prepared, load_s = [], {}
        for experts in expert_counts:
            config = base.replace(num_layers=layers, num_experts=experts)
            placement = ModelRunner(config)  # only for the mesh's parameter shardings
            placement.initialize(None, mesh)
            params, load_s[experts] = load_params(args, config, placement.param_shardings, table_dtype)
            for dtype, moe, batch, seq in itertools.product(dtypes, args.moe, args.batch_size,
                                                            args.sequence_len):
                variant = config.replace(sequence_len=seq)
                runtime = RuntimeConfig(activation_dtype=dtype, moe_impl=moe)
                first = not runs and not prepared
                prepared.append(prepare_run(args, variant, runtime, params, mesh, batch,
                                            warm_up=first))
                print(f"compiled and prefilled: {layers} layers, {experts} experts, {moe}, "
                      f"{batch} slots, {dtype}, S {seq}", file=sys.stderr, flush=True)
            del params
        measure_decode(prepared, args.new_tokens)
        if args.profile:
            profile_decode(prepared, args.profile)
        runs += [{"load_s": load_s[p["run"]["experts"]], **finish_run(p, args, devices, bandwidth)}
                 for p in prepared]
        del prepared
    return {"device": f"{len(all_devices)} x {all_devices[0].device_kind} ({all_devices[0].platform})",
            "mesh": list(mesh), "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
            "warmup_steps": WARMUP_STEPS, "config": base.to_dict(),
            "bandwidth_gb_per_s": bandwidth / 1e9, "bandwidth_source": bandwidth_source,
            "runs": runs, "comparisons": comparisons(runs)}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    report = {"command": " ".join(["python -m grok.bench", *argv]), **sweep(args)}
    print_report(report)
    save_report(report, args.json)
    return report


if __name__ == "__main__":
    main()

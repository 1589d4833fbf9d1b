"""Benchmark: the GPU decode step and prefill as XLA:GPU compiles them, with no GPU present.

    python -m grok.bench gpu_hlo --target h200 --mesh 1,1 --batch-size 1,64 --layers 2
    python -m grok.bench gpu_hlo --target h100 --mesh 1,8 --batch-size 1,64 --layers 2

Compiles the engine's own `sample_step` (its shardings and donation, the --kv-len variant) and
a first prefill chunk of --prefill-len tokens for compile-only H100/H200 devices
(grok.benchmarks.gpu_target; needs the CUDA plugin wheels, not a GPU), Grok-1 width by default
with --layers layers and synthetic shapes (no weights are made). From each optimised module
(grok.benchmarks.hlo_bytes) it reports, per layer-loop iteration and per device:
- HBM bytes moved, outside the MoE and in it, beside their ideal: each weight the step needs
  read once (the MoE: the expected distinct experts of B rows under uniform routing, k at one
  row), plus the live KV window (kv_len positions of every slot) read once and each slot's new
  key and value written; and the part outside the MoE that is not attention's work on the
  cache (projections, norms, residual adds, router and their collectives) beside the
  non-MoE weights read once;
- kernels launched, collectives and their bytes;
(work XLA hoists out of the loop, e.g. a transpose of a whole weight stack or of the KV cache
before it, counts per layer as 1/L of its bytes: grok.benchmarks.hlo_bytes)
and per step: the rest of the step's bytes (output projection, sampling) beside the embedding
table read once, collectives outside the layer loop, conditionals anywhere in the step; for the
prefill: the MoE's matmul FLOPs beside the grouped ideal (each token through its k experts).
The matmul operand type is the GPU's (bf16), whatever the host's backend.

Glossary: B slots, T prefill tokens, L layers, E experts, k selected experts, K kv heads,
d key_size, D emb_size, F ffn_size, S sequence_len.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grok import checkpoint
from grok.benchmarks import hlo_check, kernel_accounting, save_report, traffic
from grok.benchmarks.decode import _list, _mesh
from grok.benchmarks.gpu_target import TARGETS, compile_only_devices
from grok.benchmarks.hlo_bytes import Kernel, Traffic, dot_flops, traffic as module_traffic
from grok.config import GROK_1, LanguageModelConfig
from grok.engine.engine import JaxEngine
from grok.engine.runner import ModelRunner
from grok.model.attention import PROJECTIONS
from grok.model.transformer import abstract_params
from grok.ops.quantization import QuantizedWeight8bit
from grok.runtime_config import RuntimeConfig

MIB = 2 ** 20
LAYER_PREFIX = "transformer/decoder_layer/"
ATTENTION_OP_NAME = "/multi_head_attention/"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    g = GROK_1.model
    p = argparse.ArgumentParser(prog="python -m grok.bench gpu_hlo", description=__doc__.split("\n")[0])
    p.add_argument("--target", choices=TARGETS, default="h200")
    p.add_argument("--mesh", type=_mesh, default=(1, 1), help="DATA,MODEL")
    p.add_argument("--batch-size", type=_list(int), default=[1, 64], help="decode slots, e.g. 1,64")
    p.add_argument("--layers", type=int, default=2, help="layers compiled (>= 2: a real loop)")
    p.add_argument("--kv-len", type=int, default=1024, help="cache positions the step reads")
    p.add_argument("--sequence-len", type=int, default=8192, help="cache length S")
    p.add_argument("--prefill-len", type=int, default=512, help="prefill chunk T (0: none)")
    dims = p.add_argument_group("model dims (default Grok-1's)")
    dims.add_argument("--vocab", type=int, default=GROK_1.vocab_size)
    dims.add_argument("--emb", type=int, default=g.emb_size)
    dims.add_argument("--q-heads", type=int, default=g.num_q_heads)
    dims.add_argument("--kv-heads", type=int, default=g.num_kv_heads)
    dims.add_argument("--key-size", type=int, default=g.key_size)
    dims.add_argument("--experts", type=int, default=g.num_experts)
    dims.add_argument("--selected-experts", type=int, default=g.num_selected_experts)
    dims.add_argument("--widening", type=float, default=g.widening_factor)
    p.add_argument("--dump-hlo", help="write each module's optimised HLO text to this directory")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    if args.layers < 2:
        p.error("--layers must be >= 2 (XLA unrolls a one-trip loop)")
    if not 1 <= args.kv_len <= args.sequence_len:
        p.error("--kv-len must be in [1, --sequence-len]")
    return args


def model_config(args: argparse.Namespace) -> LanguageModelConfig:
    return GROK_1.replace(
        vocab_size=args.vocab, emb_size=args.emb, num_q_heads=args.q_heads,
        num_kv_heads=args.kv_heads, key_size=args.key_size, num_experts=args.experts,
        num_selected_experts=args.selected_experts, widening_factor=args.widening,
        num_layers=args.layers, sequence_len=args.sequence_len)


def abstract_inputs(config: LanguageModelConfig, shardings: dict, dtype) -> dict:
    """The parameter tree as the runner holds it (release scale groups, the embedding table
    in the activation dtype), as ShapeDtypeStructs with their shardings."""
    groups = {s.module: s.release_groups for s in checkpoint.checkpoint_layout(config) if s.quantized}

    def leaf(module, x, sh):
        if isinstance(x, QuantizedWeight8bit):
            scales = x.weight.shape[:-2] + (groups[module], x.weight.shape[-1])
            return QuantizedWeight8bit(jax.ShapeDtypeStruct(x.weight.shape, jnp.int8, sharding=sh.weight),
                                       jax.ShapeDtypeStruct(scales, jnp.bfloat16, sharding=sh.scales))
        table = module.endswith("in_out_embed")
        return jax.ShapeDtypeStruct(x.shape, dtype if table else x.dtype, sharding=sh)

    return {m: {n: leaf(m, x, shardings[m][n]) for n, x in leaves.items()}
            for m, leaves in abstract_params(config).items()}


def _shard_bytes(x: jax.ShapeDtypeStruct) -> int:
    return math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize


def ideal_layer_bytes(config: LanguageModelConfig, params: dict, batch: int, kv_len: int,
                      model_axis: int, cache_dtype=jnp.bfloat16) -> dict[str, float]:
    """Per device, one layer: {"outside_moe", "moe"} bytes a decode step must move, and
    "outside_moe_weights": the part of "outside_moe" that is weights (not the KV cache)."""
    c, layers = config.model, config.model.num_layers
    outside, moe = 0.0, 0.0
    for module, leaves in params.items():
        if not module.startswith(LAYER_PREFIX):
            continue
        size = sum(_shard_bytes(x) for x in jax.tree.leaves(leaves)) / layers
        if "/moe/" in module:
            moe += size * traffic.experts_read(config, "sparse", batch) / c.num_experts
        else:
            outside += size
    kv_heads = c.num_kv_heads // model_axis if c.num_kv_heads % model_axis == 0 else c.num_kv_heads
    # keys and values: the live window read once, each slot's new token written
    kv = 2 * batch * kv_heads * (kv_len + 1) * c.key_size * jnp.dtype(cache_dtype).itemsize
    return {"outside_moe": outside + kv, "moe": moe, "outside_moe_weights": outside}


def _collectives(t: Traffic, kernels: list[Kernel]) -> list[dict]:
    return [{"op": k.opcode.removesuffix("-start"), "mib": k.moved / MIB / 2} for k in t.collectives(kernels)]


def _compile(lowered, name: str, dump: Optional[str], tag: str):
    start = time.perf_counter()
    text = lowered.compile().as_text()
    seconds = time.perf_counter() - start
    if dump:
        os.makedirs(dump, exist_ok=True)
        with open(os.path.join(dump, f"{tag}.{name}.txt"), "w") as f:
            f.write(text)
    return text, seconds


def ideal_step_bytes(params: dict) -> float:
    """Per device, the step outside the layer loop: the tied embedding table read once (the
    output projection; the input lookup reads B rows)."""
    return float(sum(_shard_bytes(x) for m, leaves in params.items() if m.endswith("in_out_embed")
                     for x in jax.tree.leaves(leaves)))


def _attention_core(k: Kernel) -> bool:
    """Whether a kernel is attention's own work on the cache (scores, softmax, weighted sum,
    the cache write, rotary embedding), not a projection's or the residual stream's
    (norms, residual adds, router, the collectives that gather and scatter rows)."""
    projection = any(f"{ATTENTION_OP_NAME}{name}/" in k.op_name for name in PROJECTIONS)
    return (ATTENTION_OP_NAME in k.op_name and not projection
            and f"/{kernel_accounting.LAYER_MATMUL}/" not in k.op_name
            and k.opcode.removesuffix("-start") not in hlo_check.COLLECTIVES)


def decode_report(text: str, ideal: dict, step_ideal: float) -> dict:
    t, module = module_traffic(text)
    body = module.layer_loop_body()[0]
    attention_kernels = kernel_accounting.count_attention_kernels(t, module, body)
    kernels = kernel_accounting.layer_moe(t, module, body)
    outside, moe = t.moved(moe=False), kernels["moe_bytes"] if kernels else t.moved(moe=True)
    loop_collectives = _collectives(t, t.layer)
    step_collectives = _collectives(t, t.outside)
    return {
        "layer_mib": (outside + moe) / MIB,
        "layer_ideal_mib": (ideal["outside_moe"] + ideal["moe"]) / MIB,
        "outside_moe_mib": outside / MIB, "outside_moe_ideal_mib": ideal["outside_moe"] / MIB,
        "outside_moe_ratio": outside / ideal["outside_moe"],
        # outside the MoE less attention's work on the cache, beside the weights read once
        "stream_mib": sum(k.moved for k in t.layer if not k.in_moe and not _attention_core(k)) / MIB,
        "stream_ideal_mib": ideal["outside_moe_weights"] / MIB,
        "moe_mib": moe / MIB, "moe_ideal_mib": ideal["moe"] / MIB,
        "moe_ratio": moe / ideal["moe"] if ideal["moe"] else None,
        "layer_ratio": (outside + moe) / (ideal["outside_moe"] + ideal["moe"]),
        "kernels_per_layer": len(t.layer),
        "kernels_outside_moe": sum(not k.in_moe for k in t.layer),
        "projection_kernels": attention_kernels[kernel_accounting.LAYER_MATMUL],
        "decode_attention_kernels": attention_kernels[kernel_accounting.DECODE_ATTENTION],
        "layer_collectives": loop_collectives,
        "step_collectives": step_collectives,
        "largest_step_collective_mib": max([c["mib"] for c in step_collectives], default=0.0),
        "hoisted_mib": sum(k.moved for k in t.hoisted) / MIB,
        "step_mib": t.step_moved() / MIB, "step_ideal_mib": step_ideal / MIB,
        "step_ratio": t.step_moved() / step_ideal,
        "conditionals": t.conditionals(module),
        "moe_kernels": kernels,
        "largest_outside_moe": [{"name": k.name, "mib": k.moved / MIB, "op_name": k.op_name}
                                for k in sorted((k for k in t.layer + t.hoisted if not k.in_moe),
                                                key=lambda k: -k.moved)[:5]],
    }


def prefill_report(text: str, config: LanguageModelConfig, tokens: int, model_axis: int) -> dict:
    t, module = module_traffic(text)
    body, _ = module.layer_loop_body()
    c = config.model
    kernels = kernel_accounting.layer_moe(t, module, body)
    flops = dot_flops(module, body) + (kernels["random_routing"]["flops"] if kernels else 0.0)
    ffn_shard = c.ffn_size // model_axis if c.ffn_size % model_axis == 0 else c.ffn_size
    ideal = 2.0 * tokens * c.num_selected_experts * 3 * c.emb_size * ffn_shard
    return {"moe_gflop_per_layer": flops / 1e9, "moe_ideal_gflop_per_layer": ideal / 1e9,
            "moe_flop_ratio": flops / ideal, "kernels_per_layer": len(t.layer),
            "moe_kernels": kernels,
            "moe_flop_bound_ratio": kernel_accounting.bound_flops(kernels) / ideal if kernels else None,
            "conditionals": t.conditionals(module)}


def build(args: argparse.Namespace, batch: int):
    """(engine, abstract params, abstract state, config) on compile-only devices."""
    config = model_config(args)
    n = math.prod(args.mesh)
    devices = compile_only_devices(args.target, n)
    buckets = (args.prefill_len,) if args.prefill_len else (min(512, args.sequence_len),)
    runtime = RuntimeConfig(activation_dtype="bfloat16", local_mesh_config=tuple(args.mesh),
                            prefill_buckets=buckets)
    runner = ModelRunner(config, bs_per_device=batch / n, runtime=runtime)
    runner.initialize(None, devices=devices)
    params = abstract_inputs(config, runner.param_shardings, jnp.bfloat16)
    engine = JaxEngine(config, runner.runtime, runner.mesh, runner.forward, None,
                       runner.param_shardings, runner.batch_size, min_kv_len=args.kv_len)
    state = engine.new_memory.eval_shape()        # with the engine's state shardings
    return engine, params, state, config


def run(args: argparse.Namespace) -> dict:
    runs = []
    tag = f"{args.target}_{args.mesh[0]}x{args.mesh[1]}"
    prefill = None
    for batch in args.batch_size:
        engine, params, state, config = build(args, batch)
        kv_len = args.kv_len if args.kv_len in engine.kv_len_buckets else args.sequence_len
        text, seconds = _compile(engine.sample_step_fn(kv_len).lower(params, state),
                                 "sample_step", args.dump_hlo, f"{tag}_b{batch}")
        ideal = ideal_layer_bytes(config, params, engine.batch_size, kv_len, args.mesh[1])
        runs.append({"batch_size": engine.batch_size, "kv_len": kv_len, "compile_s": seconds,
                     **decode_report(text, ideal, ideal_step_bytes(params))})
        print(f"compiled sample_step: {args.target}, mesh {args.mesh}, {batch} slots "
              f"({seconds:.1f} s)", file=sys.stderr, flush=True)
        if prefill is None and args.prefill_len:
            settings = np.asarray([0.0, 1.0, 0], np.float32)
            lowered = engine.prefill_fn(None, args.prefill_len, False).lower(
                params, jax.ShapeDtypeStruct((1, args.prefill_len), jnp.int32),
                np.int32(args.prefill_len), None, None, settings, np.uint32(0))
            text, seconds = _compile(lowered, "prefill", args.dump_hlo, tag)
            prefill = {"tokens": args.prefill_len, "compile_s": seconds,
                       **prefill_report(text, config, args.prefill_len, args.mesh[1])}
    return {"target": args.target, "mesh": list(args.mesh), "layers": args.layers,
            "sequence_len": args.sequence_len, "config": model_config(args).to_dict(),
            "decode": runs, "prefill": prefill}


def print_report(report: dict) -> None:
    print(f"\nGPU compile ({report['target']}, mesh {tuple(report['mesh'])}, "
          f"{report['layers']} layers); per layer-loop iteration, per device:")
    head = ("slots", "kv_len", "outside MoE MiB", "ideal", "ratio", "MoE MiB", "ideal", "ratio",
            "layer ratio", "kernels", "collectives/layer", "max step coll. MiB", "conditionals",
            "rest of step MiB", "ideal", "ratio")
    print(" | ".join(head))
    for r in report["decode"]:
        coll = ", ".join(f"{c['op']} {c['mib']:.2f}" for c in r["layer_collectives"]) or "-"
        moe_ratio = f"{r['moe_ratio']:.2f}" if r["moe_ratio"] is not None else "-"
        print(" | ".join([str(r["batch_size"]), str(r["kv_len"]), f"{r['outside_moe_mib']:.1f}",
                          f"{r['outside_moe_ideal_mib']:.1f}", f"{r['outside_moe_ratio']:.2f}",
                          f"{r['moe_mib']:.1f}", f"{r['moe_ideal_mib']:.1f}", moe_ratio,
                          f"{r['layer_ratio']:.2f}", str(r["kernels_per_layer"]), coll,
                          f"{r['largest_step_collective_mib']:.1f}", str(r["conditionals"]),
                          f"{r['step_mib']:.1f}", f"{r['step_ideal_mib']:.1f}",
                          f"{r['step_ratio']:.2f}"]))
    for r in report["decode"]:
        print(f"  {r['batch_size']} slots, outside the MoE less attention's work on the cache "
              f"(projections, norms, residual adds, router, their collectives): "
              f"{r['stream_mib']:.1f} MiB, weights once {r['stream_ideal_mib']:.1f} MiB "
              f"({r['stream_mib'] / r['stream_ideal_mib']:.2f}x)")
    for r in report["decode"]:
        if r["moe_kernels"]:
            print(kernel_accounting.describe(r["moe_kernels"], f"{r['batch_size']} slots"))
    if report["prefill"]:
        p = report["prefill"]
        print(f"prefill {p['tokens']} tokens: MoE {p['moe_gflop_per_layer']:.1f} GFLOP per layer "
              f"(grouped ideal {p['moe_ideal_gflop_per_layer']:.1f}, {p['moe_flop_ratio']:.2f}x), "
              f"{p['kernels_per_layer']} kernels per layer, {p['conditionals']} conditionals")
        if p["moe_kernels"]:
            print(f"  MoE kernels' grid: {p['moe_flop_bound_ratio']:.2f}x the grouped ideal for any "
                  f"routing (every block used); "
                  + kernel_accounting.describe(p["moe_kernels"], f"{p['tokens']} tokens").strip())


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if not os.environ.get("JAX_PLATFORMS"):
        # The compile needs no device: only the CPU backend, beside the CUDA plugin's compiler.
        # Started as a backend on a host without CUDA libraries, the plugin fails to load, and
        # its topology (grok.benchmarks.gpu_target) cannot be made.
        jax.config.update("jax_platforms", "cpu")
    report = {"command": " ".join(["python -m grok.bench gpu_hlo", *argv]), **run(args)}
    print_report(report)
    save_report(report, args.json)
    return report


if __name__ == "__main__":
    main()

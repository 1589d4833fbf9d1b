"""Batched prefill: N short prompts in one `Engine.prefill_batch` call vs one `prefill` each.

`python -m grok.bench prefill_batch [--prompts 4] [--prompt-len 64] [--repeats 5] ...` builds a
random-weight model (flags below; defaults are a small model that runs in seconds on CPU),
compiles both paths first, then times the same N prompts both ways, interleaved repeat by
repeat so a machine busy with other work slows both alike. Reports median milliseconds for
all N prompts each way and `speedup` = one-at-a-time / batched (> 1: batching pays).

Result keys: prompts, prompt_len, one_at_a_time_ms, batched_ms, speedup, same_tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional, Sequence

import jax
import numpy as np

from grok import checkpoint
from grok.config import LanguageModelConfig, TransformerConfig
from grok.engine.api import SampleParams
from grok.engine.runner import ModelRunner
from grok.serving.runner import InferenceRunner
from grok.runtime_config import RuntimeConfig
from grok.tokenizer import ByteTokenizer

SEED = 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m grok.bench prefill_batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=4, help="N prompts per batch (default 4)")
    p.add_argument("--prompt-len", type=int, default=64, help="tokens per prompt (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--emb", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--q-heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--key-size", type=int, default=32)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = p.parse_args(list(argv))
    for name in ("prompts", "prompt_len", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def build_engine(args):
    config = LanguageModelConfig(
        model=TransformerConfig(emb_size=args.emb, key_size=args.key_size, num_q_heads=args.q_heads,
                                num_kv_heads=args.kv_heads, num_layers=args.layers,
                                num_experts=args.experts, num_selected_experts=2),
        vocab_size=args.vocab, sequence_len=max(256, 2 * args.prompt_len))
    runtime = RuntimeConfig(activation_dtype=args.dtype, prefill_buckets=(args.prompt_len,),
                            max_prefill_batch=args.prompts, bs_per_device=args.prompts)
    runner = InferenceRunner(ModelRunner(config, rng_seed=SEED), tokenizer=ByteTokenizer(),
                             params=checkpoint.random_params(config, SEED), runtime=runtime,
                             precompile=False)
    runner.initialize()
    return runner.engine


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args([] if argv is None else argv)
    engine = build_engine(args)
    rng = np.random.default_rng(SEED)
    prompts = rng.integers(1, args.vocab, (args.prompts, args.prompt_len)).tolist()
    samples = [SampleParams(seed=i) for i in range(args.prompts)]

    def one_at_a_time():
        out = [engine.prefill(p, s) for p, s in zip(prompts, samples)]
        jax.block_until_ready(out)
        return [int(engine.read(r).token_ids[0]) for _, r in out]

    def batched():
        out = engine.prefill_batch(prompts, samples)
        jax.block_until_ready(out)
        return [int(engine.read(r).token_ids[0]) for _, r in out]

    same = one_at_a_time() == batched()          # also compiles both
    times = {one_at_a_time: [], batched: []}
    for _ in range(args.repeats):
        for fn in times:
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    single_ms, batch_ms = (1e3 * statistics.median(times[fn]) for fn in (one_at_a_time, batched))
    result = {"prompts": args.prompts, "prompt_len": args.prompt_len,
              "one_at_a_time_ms": single_ms, "batched_ms": batch_ms,
              "speedup": single_ms / batch_ms, "same_tokens": same}
    print(f"{args.prompts} prompts x {args.prompt_len} tokens on {jax.default_backend()}: "
          f"one at a time {single_ms:.1f} ms, batched {batch_ms:.1f} ms, "
          f"speedup {result['speedup']:.2f}x, same first tokens: {same}")
    return result

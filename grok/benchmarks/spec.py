"""Benchmark: decode tokens/s with speculative decoding (n-gram drafts, K per step) vs off.

    python -m grok.bench spec                      # CPU, the fixture-sized random model
    python -m grok.bench spec --json spec.json --rounds 3

Three workloads, each run by a Scheduler with speculation off and one with it on (the gate
measuring its own break-even, as in serving), on the same engine, alternating round by round
(--rounds; each batch of requests in both modes back to back, the modes taking turns going
first), after an untimed warm-up round of each that compiles everything:

(a) repeat, 1 slot: greedy requests whose continuation repeats their context. A random-weight
    model neither copies its prompt nor falls into a cycle within 1,000 greedy tokens (tried
    from 6 seeds; the attention over a random context keeps changing its prediction), and
    any other token in front of a run breaks it. What it does have are fixed points: tokens t
    whose greedy successor after [t] * n is t again. Attention over identical tokens returns
    the same values wherever they sit, so that prediction does not depend on n, and the
    continuation of [t] * --prompt-len is t forever: the model loops, and prompt lookup
    drafts the loop. The prompts are [t] * --prompt-len for the first --repeat-prompts fixed
    points found among the --candidates tokens with the longest embeddings (a token's own
    embedding is its likeliest successor, the more so the longer it is: the seed-0 model has
    4 among its 1,024 longest embeddings, against 1 among its first 8,192 ids). Every draft
    of a one-token loop is right, so (a) weighs what a verify step costs against the K + 1
    tokens it gives at full acceptance.
(b) no repeat, 1 slot: sampled requests (temperature 1) over the 131k vocabulary, whose
    tokens practically never repeat: nothing to draft, so the gate must keep speculation
    from costing anything.
(c) mixed, 8 slots: half (a)'s prompts, half (b)'s, in one batch.

Reported per workload: output tokens / wall seconds from submission to the last Completion
(prompts are short, so prefill is a small, equal share), on / off, the acceptance rate
(accepted / drafted) and the tokens per verify step. Outputs are checked equal token for
token between the two modes.

Glossary: K drafted tokens per slot and step.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

import numpy as np

from grok.benchmarks import save_report
from grok.config import LanguageModelConfig, TransformerConfig
from grok.engine.runner import ModelRunner
from grok.serving.runner import InferenceRunner
from grok.runtime_config import RuntimeConfig
from grok.serving.requests import Request
from grok.serving.results import Completion
from grok.serving.scheduler import Scheduler
from grok.tokenizer import ByteTokenizer

# The golden fixture's dimensions (../shared/fixtures/tiny-grok-a/config.json).
FIXTURE = dict(emb_size=64, widening_factor=8, key_size=16, num_q_heads=16, num_kv_heads=8,
               num_layers=2, num_experts=8, num_selected_experts=2)
FIXTURE_VOCAB = 131072
NUM_SPECIAL = 3          # ids below this are pad, bos, eos


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m grok.bench spec", description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, default=4, help="speculative tokens K")
    p.add_argument("--max-tokens", type=int, default=192, help="output tokens per request")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--candidates", type=int, default=1024,
                   help="tokens (longest embeddings first) tried as (a)'s loops")
    p.add_argument("--repeat-prompts", type=int, default=4, help="prompts of (a)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per mode")
    p.add_argument("--sequence-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    if args.k < 1 or args.rounds < 1 or args.repeat_prompts < 1:
        p.error("--k, --rounds and --repeat-prompts must be >= 1")
    if args.prompt_len + args.max_tokens > args.sequence_len:
        p.error("--prompt-len + --max-tokens must fit --sequence-len")
    return args


def make_engine(args, slots: int):
    """A JaxEngine over a random model of the fixture's size, `slots` slots."""
    config = LanguageModelConfig(model=TransformerConfig(**FIXTURE), vocab_size=FIXTURE_VOCAB,
                                 sequence_len=args.sequence_len)
    runtime = RuntimeConfig(activation_dtype="float32", prefill_buckets=(32,),
                            max_prefill_batch=1)
    runner = InferenceRunner(ModelRunner(config, bs_per_device=slots, rng_seed=args.seed,
                                         runtime=runtime),
                             local_mesh_config=(1, 1), tokenizer=ByteTokenizer(), precompile=False)
    runner.initialize()
    return runner.engine


def run(scheduler: Scheduler, requests: list) -> tuple[float, dict]:
    """Seconds from submission to the last Completion, and {request_id: output ids}."""
    start = time.perf_counter()
    scheduler.submit(requests)
    outputs = {}
    while not scheduler.idle():
        for event in scheduler.step():
            if isinstance(event, Completion):
                if event.error is not None:
                    raise RuntimeError(f"{event.request_id} failed: {event.error}")
                outputs[event.request_id] = list(event.output_ids)
    return time.perf_counter() - start, outputs


def prompts(args, count: int, offset: int) -> list:
    rng = np.random.default_rng(args.seed + offset)
    return [rng.integers(NUM_SPECIAL, FIXTURE_VOCAB, args.prompt_len).tolist()
            for _ in range(count)]


def loop_tokens(args, engine, scheduler: Scheduler) -> list:
    """Up to --repeat-prompts tokens t whose greedy successor after [t] * 4 is t again (the
    model's fixed points), tried in order of their embedding's length among the --candidates
    longest: a token's own embedding is its likeliest successor, the more so the longer it is."""
    table = np.asarray(engine.params["language_model/in_out_embed"]["embeddings"])   # [V, D]
    norms = np.linalg.norm(table[NUM_SPECIAL:], axis=-1)
    order = (np.argsort(-norms, kind="stable")[:args.candidates] + NUM_SPECIAL).tolist()
    found = []
    for at in range(0, len(order), 64):
        chunk = order[at:at + 64]
        requests = [Request([t] * 4, temperature=0.0, max_tokens=1, request_id=str(t))
                    for t in chunk]
        _, outputs = run(scheduler, requests)
        found += [t for t in chunk if outputs[str(t)] == [t]]
        if len(found) >= args.repeat_prompts:
            return found[:args.repeat_prompts]
    if not found:
        raise SystemExit(f"no fixed point among the {args.candidates} longest embeddings: "
                         "raise --candidates")
    return found


def workload(args, name: str, repeat: list, fresh: list) -> list:
    greedy = [Request(p, temperature=0.0, max_tokens=args.max_tokens, request_id=f"{name}-g{i}")
              for i, p in enumerate(repeat)]
    sampled = [Request(p, temperature=1.0, seed=args.seed + i, max_tokens=args.max_tokens,
                       request_id=f"{name}-s{i}") for i, p in enumerate(fresh)]
    return greedy + sampled


def measure(args, engine, requests: list, one_at_a_time: bool) -> dict:
    """Off and on, alternating rounds after a warm-up; tokens/s of each and the counters."""
    modes = {"off": Scheduler(engine, ByteTokenizer()),
             "on": Scheduler(engine, ByteTokenizer(), speculative_tokens=args.k)}
    batches = [[r] for r in requests] if one_at_a_time else [requests]
    seconds, outputs = {m: 0.0 for m in modes}, {m: {} for m in modes}
    ratios = []                                 # each timed round's on / off speed
    for r in range(args.rounds + 1):
        spec = modes["on"].speculation
        if r == 1:                               # count the timed rounds only
            spec.draft_tokens = spec.accepted_tokens = spec.verify_steps = 0
        took_round = {m: 0.0 for m in modes}
        for i, batch in enumerate(batches):
            # each batch runs in both modes back to back, the modes taking turns going
            # first: a busy machine's slow spells hit both alike
            for mode in (("off", "on") if (r + i) % 2 else ("on", "off")):
                took, out = run(modes[mode], batch)
                outputs[mode].update(out)
                took_round[mode] += took
        if r:
            for mode in modes:
                seconds[mode] += took_round[mode]
            ratios.append(took_round["off"] / took_round["on"])
    if outputs["on"] != outputs["off"]:
        raise AssertionError("speculation changed the tokens")
    tokens = sum(len(o) for o in outputs["off"].values()) * args.rounds
    spec = modes["on"].speculation
    on_tokens_per_s, off_tokens_per_s = tokens / seconds["on"], tokens / seconds["off"]
    return {"requests": len(requests), "tokens": tokens,
            "off_tokens_per_s": round(off_tokens_per_s, 1),
            "on_tokens_per_s": round(on_tokens_per_s, 1),
            "speedup": round(on_tokens_per_s / off_tokens_per_s, 3),
            "round_speedups": [round(x, 3) for x in ratios],
            "break_even": round(spec.sampled_break_even if any(r.temperature > 0 for r in requests)
                                else spec.break_even, 2),
            "verify_steps": spec.verify_steps,
            "draft_tokens": spec.draft_tokens, "accepted_tokens": spec.accepted_tokens,
            "acceptance": round(spec.accepted_tokens / max(spec.draft_tokens, 1), 3),
            "tokens_per_verify_step": round(
                (spec.accepted_tokens + spec.verify_steps) / max(spec.verify_steps, 1), 2)}


def print_table(args, report: dict) -> None:
    print(f"speculative decoding, K={args.k}, fixture-sized random model (vocab {FIXTURE_VOCAB}), "
          f"{args.max_tokens} tokens per request, {args.rounds} rounds, CPU")
    print(f"(a)'s prompts: [t] * {args.prompt_len} for the loop tokens t = {report['loop_tokens']}")
    print(f"{'workload':<22}{'off tok/s':>10}{'on tok/s':>10}{'on/off':>8}{'accept':>8}"
          f"{'tok/verify':>11}{'break-even':>11}  on/off by round")
    for name in ("a_repeat_1_slot", "b_no_repeat_1_slot", "c_mixed_8_slots"):
        r = report[name]
        print(f"{name:<22}{r['off_tokens_per_s']:>10}{r['on_tokens_per_s']:>10}{r['speedup']:>8}"
              f"{r['acceptance']:>8}{r['tokens_per_verify_step']:>11}{r['break_even']:>11}  "
              + " ".join(str(x) for x in r["round_speedups"]))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    one = make_engine(args, 1)
    loops = loop_tokens(args, one, Scheduler(one, ByteTokenizer()))
    repeat = [[t] * args.prompt_len for t in loops]
    fresh = prompts(args, args.repeat_prompts, 2)
    report = {"k": args.k, "max_tokens": args.max_tokens, "prompt_len": args.prompt_len,
              "rounds": args.rounds, "model": dict(FIXTURE, vocab_size=FIXTURE_VOCAB),
              "loop_tokens": loops}
    report["a_repeat_1_slot"] = measure(args, one, workload(args, "a", repeat, []), True)
    report["b_no_repeat_1_slot"] = measure(args, one, workload(args, "b", [], fresh), True)
    eight = make_engine(args, 8)
    report["c_mixed_8_slots"] = measure(
        args, eight, workload(args, "c", (repeat * 4)[:4], (fresh * 4)[:4]), False)
    print_table(args, report)
    save_report(report, args.json)
    sys.stdout.flush()
    return report


if __name__ == "__main__":
    main()

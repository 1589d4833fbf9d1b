"""Benchmark: running streams keep producing tokens while a long prompt is prefilled.

    JAX_PLATFORMS=cpu python -m grok.bench interleave [--chunks 8 --bucket 64 --json out.json]

The demo model (grok.demo: its weights, a longer sequence_len) on one device with
`--streams` + 1 slots. `--streams` requests stream tokens; once each has produced tokens, a
prompt of `--chunks` largest-bucket chunks arrives. Measured from its arrival until its first
token (its time to first token, TTFT): the longest gap between two consecutive tokens of any
running stream, as the caller of `Scheduler.step()` sees them (events are timed when `step`
returns them).

Two schedules side by side, each `--repeats` times (medians reported):
- interleaved: the scheduler's default budget, one chunk between two decode steps;
- back_to_back: a budget of the whole prompt, so all its chunks run in one step (the
  scheduler before issue 9): the streams stall for the whole prefill.
Acceptance (issue 9): interleaved longest gap <= half of the long prompt's TTFT.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Optional, Sequence

from grok.demo import DEMO, demo_params
from grok.engine.runner import ModelRunner
from grok.serving.runner import InferenceRunner
from grok.runtime_config import RuntimeConfig
from grok.serving.requests import Request
from grok.serving.results import Completion, TokenEvent
from grok.serving.scheduler import Scheduler
from grok.tokenizer import ByteTokenizer
from grok.benchmarks import save_report

TOKENS_BEFORE = 3         # tokens each stream makes before the long prompt arrives
ACCEPTANCE_RATIO = 0.5    # longest gap / TTFT, interleaved (issue 9)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m grok.bench interleave",
                                description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, default=3, help="running streams (default 3)")
    p.add_argument("--chunks", type=int, default=8, help="long prompt length in largest "
                   "buckets (default 8)")
    p.add_argument("--bucket", type=int, default=64, help="prefill bucket T (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per schedule")
    p.add_argument("--json", metavar="FILE", help="also write the report here")
    args = p.parse_args(argv)
    for name in ("streams", "chunks", "bucket", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


def build_runner(args) -> InferenceRunner:
    prompt_len = args.chunks * args.bucket
    config = DEMO.replace(sequence_len=2 * prompt_len + args.bucket)
    runtime = RuntimeConfig(activation_dtype="float32", prefill_buckets=(args.bucket,))
    runner = InferenceRunner(ModelRunner(config, bs_per_device=args.streams + 1),
                             local_mesh_config=(1, 1), tokenizer=ByteTokenizer(),
                             params=demo_params(config), runtime=runtime)
    runner.initialize()
    return runner


def long_prompt(args) -> list:
    text = ("The quick brown fox jumps over the lazy dog. " * (args.chunks * args.bucket))
    return ByteTokenizer().encode(text)[:args.chunks * args.bucket]


def measure(runner, args, budget: int, tag: str) -> dict:
    """One arrival of the long prompt among running streams: TTFT and the longest gap."""
    scheduler = Scheduler(runner.engine, runner.tokenizer, prefill_budget=budget)
    prompts = [f"stream {i}:" for i in range(args.streams)]
    room = runner.config.sequence_len - max(map(len, prompts))   # bytes = tokens
    streams = [Request(prompt=p, temperature=0.0, max_tokens=room, stream=True,
                       request_id=f"{tag}-s{i}") for i, p in enumerate(prompts)]
    scheduler.submit(streams)
    last_token: dict = {}
    while len(last_token) < args.streams or min(n for n, _ in last_token.values()) < TOKENS_BEFORE:
        for e in scheduler.step():
            if isinstance(e, TokenEvent):
                last_token[e.request_id] = (e.index + 1, time.perf_counter())
            elif isinstance(e, Completion):
                raise RuntimeError(f"stream {e.request_id} ended early: {e.finish_reason} "
                                   f"{e.error}")
    long_id = f"{tag}-long"
    scheduler.submit(Request(prompt=long_prompt(args), temperature=0.0, max_tokens=2, stream=True,
                             request_id=long_id))
    arrival, gaps, ttft = time.perf_counter(), [], None
    seen = {rid: t for rid, (_, t) in last_token.items()}
    while ttft is None:
        if scheduler.idle():
            raise RuntimeError("the long prompt was not served")
        events = scheduler.step()
        now = time.perf_counter()
        for e in events:
            if e.request_id == long_id and isinstance(e, (TokenEvent, Completion)):
                if isinstance(e, Completion) and e.finish_reason == "error":
                    raise RuntimeError(f"the long prompt failed: {e.error}")
                ttft = now - arrival
            elif isinstance(e, TokenEvent):
                gaps.append(now - seen[e.request_id])
                seen[e.request_id] = now
    for request_id in [s.request_id for s in streams] + [long_id]:
        scheduler.cancel(request_id)
    while not scheduler.idle():
        scheduler.step()
    return {"ttft_s": ttft, "longest_gap_s": max(gaps), "stream_tokens": len(gaps)}


def run(args) -> dict:
    runner = build_runner(args)
    largest = args.bucket
    schedules = {"interleaved": largest, "back_to_back": args.chunks * largest}
    for name, budget in schedules.items():        # warm-up: compiles every prefix capacity
        measure(runner, args, budget, f"warmup-{name}")
    rows = {}
    for name, budget in schedules.items():
        runs = [measure(runner, args, budget, f"{name}-{i}") for i in range(args.repeats)]
        ttft = statistics.median(r["ttft_s"] for r in runs)
        gap = statistics.median(r["longest_gap_s"] for r in runs)
        rows[name] = {"prefill_budget_tokens": budget, "ttft_ms": 1e3 * ttft,
                      "longest_gap_ms": 1e3 * gap, "gap_over_ttft": gap / ttft,
                      "stream_tokens_during_prefill": statistics.median(
                          r["stream_tokens"] for r in runs)}
    ratio = rows["interleaved"]["gap_over_ttft"]
    return {"streams": args.streams, "chunks": args.chunks, "bucket": args.bucket,
            "prompt_tokens": args.chunks * args.bucket, "repeats": args.repeats,
            "schedules": rows, "acceptance": {"limit": ACCEPTANCE_RATIO, "ratio": ratio,
                                              "passed": ratio <= ACCEPTANCE_RATIO}}


def print_report(report: dict) -> None:
    print(f"{report['streams']} streams; a {report['prompt_tokens']}-token prompt "
          f"({report['chunks']} chunks of {report['bucket']}) arrives")
    header = f"{'schedule':<14}{'budget':>8}{'TTFT ms':>10}{'max gap ms':>12}{'gap/TTFT':>10}" \
             f"{'tokens':>8}"
    print(header)
    for name, row in report["schedules"].items():
        print(f"{name:<14}{row['prefill_budget_tokens']:>8}{row['ttft_ms']:>10.1f}"
              f"{row['longest_gap_ms']:>12.1f}{row['gap_over_ttft']:>10.2f}"
              f"{row['stream_tokens_during_prefill']:>8.0f}")
    acc = report["acceptance"]
    print(f"acceptance: interleaved longest gap / TTFT = {acc['ratio']:.2f} "
          f"(limit {acc['limit']}): {'PASS' if acc['passed'] else 'FAIL'}")
    print(json.dumps(report))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    report = {"command": " ".join(["python -m grok.bench interleave", *argv]), **run(args)}
    print_report(report)
    save_report(report, args.json)
    return report


if __name__ == "__main__":
    main()

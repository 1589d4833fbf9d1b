"""Benchmark: the decode step with constrained rows, side by side in one run.

    python -m grok.bench structured [--tokenizer tokenizer.model] [--vocab 131072]
                                    [--slots 8] [--steps 40] [--json out.json]

A small random model with the tokenizer's vocabulary (Grok-1's 131,072 SentencePiece pieces
by default) and `--slots` slots, each holding a prompt. Each case runs `--steps` decode steps
as the scheduler does in steady state; the cases take turns step by step (interleaved, so
machine load falls on all alike) and the table shows the median ms per step:
- "plain": the plain decode step, its output read each step (what every step ran before
  logit processing existed, and what a step runs when no request processes its logits);
- "processed, none constrained": the processed step with every row neutral;
- "all constrained (JSON schema)": every row under a tool-call-like JSON schema: read the
  previous token, advance each grammar, fill the packed masks (llguidance, in parallel), run
  the processed step. A grammar that finishes starts over (steady state).
Also: the time to compile a typical tool schema (a grammar from scratch, then a matcher over
this vocabulary), median of several distinct schemas.

The model is tiny, so the step is mostly the 131k-wide unembedding and sampling: the host
and mask costs are as large as they can be relative to the step (on Grok-1 the forward pass
dominates).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Optional, Sequence

import numpy as np

from grok.config import LanguageModelConfig, TransformerConfig
from grok.engine.api import SampleParams
from grok.engine.logits_processing import neutral_controls
from grok.engine.runner import ModelRunner
from grok.serving.runner import InferenceRunner
from grok.runtime_config import RuntimeConfig
from grok.serving.logit_controls import RowControls, SlotRow, StepControls
from grok.serving.http.tools import tool_grammar
from grok.serving.structured import grammars
from grok.serving.structured.masks import GrammarState
from grok.serving.structured.tokenizers import llg_tokenizer
from grok.tokenizer import load_tokenizer

DEFAULT_TOKENIZER = "/work/shared/grok1/tokenizer.model"
PROMPT_LEN = 16


def tool_schema(i: int) -> dict:
    """A typical function tool (distinct names per i, so nothing is cached)."""
    return {"type": "function", "function": {
        "name": f"search_flights_{i}", "description": "Find flights.",
        "parameters": {"type": "object", "properties": {
            "origin": {"type": "string", "description": "IATA code", "pattern": "^[A-Z]{3}$"},
            "destination": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "date": {"type": "string", "format": "date"},
            "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
            "cabin": {"enum": ["economy", "premium", "business", "first"]},
            "flexible": {"type": "boolean"},
            "max_price": {"type": "number"},
            "airlines": {"type": "array", "items": {"type": "string"}, "maxItems": 5}},
            "required": ["origin", "destination", "date", "passengers"],
            "additionalProperties": False}}}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m grok.bench structured", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                   help="SentencePiece model (its vocabulary is the model's); 'bytes': the "
                        "demo's byte tokenizer (259 ids)")
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--steps", type=int, default=40, help="timed steps per case")
    p.add_argument("--emb", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="every row's (0, greedy: every case samples alike; with > 0 a masked "
                        "row's draw is cheaper, its few allowed tokens settle it)")
    p.add_argument("--json", help="also write the results here")
    return p


def _engine(vocab: int, slots: int, args):
    config = LanguageModelConfig(
        model=TransformerConfig(emb_size=args.emb, key_size=32, num_q_heads=4, num_kv_heads=2,
                                num_layers=args.layers, num_experts=4, num_selected_experts=2,
                                widening_factor=2),
        vocab_size=vocab, sequence_len=1024)
    runtime = RuntimeConfig(activation_dtype="float32", prefill_buckets=(PROMPT_LEN,),
                            max_prefill_batch=1)
    runner = InferenceRunner(ModelRunner(config, bs_per_device=slots, rng_seed=args.seed,
                                         runtime=runtime),
                             local_mesh_config=(1, 1), precompile=False)
    runner.initialize()
    return runner.engine


def _fill(engine, slots: int, seed: int, temperature: float):
    state = engine.init_state()
    rng = np.random.default_rng(seed)
    for slot in range(slots):
        prompt = rng.integers(10, engine.vocab_size, PROMPT_LEN).tolist()
        prefix, result = engine.prefill(prompt, SampleParams(temperature, 1.0, 0, slot))
        state = engine.insert(prefix, result.arm, state, slot)
    return state


def compile_seconds(tokenizer, count: int = 5) -> float:
    """Median seconds to compile a typical tool's grammar and build its first matcher."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        source = tool_grammar([tool_schema(1000 + i)], "required", True)
        constraint = grammars.check("grammar", source, "tools")
        GrammarState(constraint, tokenizer)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _Cases:
    """The three cases' steps over one engine: each `run(state, previous TokenOutput)` does
    one step as the scheduler would and returns (state, its TokenOutput or None)."""

    def __init__(self, engine, tokenizer, slots: int, vocab: int):
        self.engine = engine
        schema = tool_schema(0)["function"]["parameters"]
        constraint = grammars.check("json", json.dumps(schema), "json_schema")
        self.grammars = [GrammarState(constraint, tokenizer) for _ in range(slots)]
        self.row = RowControls.of(_Neutral, engine.eos_token,
                                  neutral_controls(1, 1).bias_ids.shape[1])
        self.builder = StepControls(slots, vocab)
        self.neutral = neutral_controls(slots, vocab)
        self.fill_times: list[float] = []
        self.runs = dict(zip(CASES, (self.plain, self.unconstrained, self.constrained)))

    def plain(self, state, _):
        state, handle = self.engine.generate(state)
        self.engine.read(handle)
        return state, None

    def unconstrained(self, state, _):
        state, handle = self.engine.generate(state, controls=self.neutral)
        self.engine.read(handle)
        return state, None

    def constrained(self, state, previous):
        if previous is not None:
            for slot, g in enumerate(self.grammars):
                token = int(previous.token_ids[slot])
                if token == self.engine.eos_token or g.finished:
                    g.matcher.reset()
                else:
                    g.advance(token)
                if g.finished:
                    g.matcher.reset()
        controls = self.builder.build({s: SlotRow(self.row, g, 1)
                                       for s, g in enumerate(self.grammars)})
        self.fill_times.append(self.builder.last_fill_seconds)
        state, handle = self.engine.generate(state, controls=controls)
        return state, self.engine.read(handle)


def _median_ms(cases: _Cases, states: dict, steps: int) -> dict:
    """Each case's median ms per step, the cases taking turns step by step (after 3 warm-up
    steps each, which compile)."""
    last = {name: None for name in CASES}
    for name, run in cases.runs.items():
        for _ in range(3):
            states[name], last[name] = run(states[name], last[name])
    cases.fill_times.clear()
    times = {name: [] for name in CASES}
    for _ in range(steps):
        for name, run in cases.runs.items():
            start = time.perf_counter()
            states[name], last[name] = run(states[name], last[name])
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def _report(args, vocab: int, ms: dict, fill_ms: float, compile_ms: float) -> dict:
    """Prints the table and returns the results."""
    base = ms["plain"]
    print(f"decode step, B={args.slots} V={vocab} (tiny model, {args.layers} layers, emb "
          f"{args.emb}), temperature {args.temperature}, median of {args.steps} steps")
    print(f"{'case':<34}{'ms/step':>10}{'x plain':>10}")
    for name, value in ms.items():
        print(f"{name:<34}{value:>10.2f}{value / base:>10.2f}")
    print(f"mask fill for {args.slots} rows (median): {fill_ms:.3f} ms")
    print(f"typical tool schema: grammar compile + first matcher {compile_ms:.1f} ms")
    return {"vocab": vocab, "slots": args.slots, "steps": args.steps, "ms_per_step": ms,
            "ratio_to_plain": {n: v / base for n, v in ms.items()},
            "mask_fill_ms": fill_ms, "tool_schema_compile_ms": compile_ms}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = _parser().parse_args(argv)
    text_tokenizer = load_tokenizer(None if args.tokenizer == "bytes" else args.tokenizer)
    vocab = text_tokenizer.vocab_size
    engine = _engine(vocab, args.slots, args)
    tokenizer = llg_tokenizer(text_tokenizer, vocab, engine.eos_token)
    cases = _Cases(engine, tokenizer, args.slots, vocab)
    states = {name: _fill(engine, args.slots, args.seed, args.temperature) for name in CASES}
    ms = _median_ms(cases, states, args.steps)
    compile_ms = 1e3 * compile_seconds(tokenizer)
    fill_ms = 1e3 * statistics.median(cases.fill_times)
    result = _report(args, vocab, ms, fill_ms, compile_ms)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


CASES = ("plain", "processed, none constrained", "all constrained (JSON schema)")


class _Neutral:
    """A request's logit-processing fields at their neutral values."""

    logit_bias, stop_tokens, min_tokens = (), (), 0
    min_p, presence_penalty, frequency_penalty, repetition_penalty = 0.0, 0.0, 0.0, 1.0

"""Benchmark: one decode step's `sample_token` call (jitted) at Grok-1's vocabulary, greedy
vs sampled slots, side by side in one run.

    python -m grok.bench sampling [--vocab 131072] [--slots 8] [--iters 30] [--json out.json]

Each case is a [slots, vocab] float32 logits batch with per-slot settings; every iteration
times each case once, in turn (interleaved, so machine load falls on all of them alike), up
to block_until_ready; the table shows the median ms per call and its ratio to all-greedy.

Logits: "peaked" rows are a next-token-like distribution, logit = -zipf * log(rank) over a
random permutation of the vocabulary (Zipf exponent 2: the top token holds ~61% of the mass,
the p = 0.9 nucleus a handful of tokens, all inside the candidate set); "flat" rows are
standard normal, whose p = 0.9 nucleus spans most of the vocabulary, so top-p takes the
exact full-sort fallback: the cost every top-p step paid before candidate sampling.

Glossary: B slots, V vocabulary, C candidates per row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from grok.config import GROK_1
from grok.engine.sampling import NUM_CANDIDATES, SampleSettings, sample_token

DEFAULT_SLOTS = 8          # the decode benchmark's batch size
DEFAULT_ITERS = 30
DEFAULT_ZIPF = 2.0         # see the module docstring
TOP_P, TOP_K = 0.9, 50     # common serving defaults
GREEDY, TOP_P_ROW, TOP_K_ROW = (0.0, 1.0, 0), (1.0, TOP_P, 0), (1.0, 1.0, TOP_K)
TEMPERATURE_ROW = (1.0, 1.0, 0)
BOTH_ROW = (1.0, TOP_P, TOP_K)

# (name, logits family, per-slot settings as a function of the slot count)
CASES = (
    ("greedy", "peaked", lambda b: [GREEDY] * b),
    ("one top-p slot", "peaked", lambda b: [TOP_P_ROW] + [GREEDY] * (b - 1)),
    ("all top-p", "peaked", lambda b: [TOP_P_ROW] * b),
    ("all top-k", "peaked", lambda b: [TOP_K_ROW] * b),
    ("all top-k + top-p", "peaked", lambda b: [BOTH_ROW] * b),
    ("all temperature only", "peaked", lambda b: [TEMPERATURE_ROW] * b),
    ("all top-p, flat (sort)", "flat", lambda b: [TOP_P_ROW] * b),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m grok.bench sampling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=GROK_1.vocab_size, help="V (default Grok-1's)")
    p.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help="B")
    p.add_argument("--iters", type=int, default=DEFAULT_ITERS, help="timed calls per case")
    p.add_argument("--zipf", type=float, default=DEFAULT_ZIPF, help="peaked rows' exponent")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    return p


def _logits(family: str, slots: int, vocab: int, zipf: float, rng) -> jax.Array:
    if family == "peaked":
        ranks = np.stack([rng.permutation(vocab) for _ in range(slots)]) + 1
        return jnp.asarray(-zipf * np.log(ranks), jnp.float32)                  # [B, V]
    return jnp.asarray(rng.normal(size=(slots, vocab)), jnp.float32)


def _settings(rows: list) -> SampleSettings:
    temperature, top_p, top_k = zip(*rows)
    return SampleSettings(jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32),
                          jnp.asarray(top_k, jnp.int32), jnp.ones((len(rows),), bool))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = _parser().parse_args(argv)
    for name in ("vocab", "slots", "iters"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    rng = np.random.default_rng(args.seed)
    logits = {family: _logits(family, args.slots, args.vocab, args.zipf, rng)
              for family in ("peaked", "flat")}
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.slots)
    step = jax.jit(sample_token)
    cases = [(name, logits[family], _settings(rows(args.slots))) for name, family, rows in CASES]
    for _, x, s in cases:                           # compile (once) and first-call effects
        jax.block_until_ready(step(x, s, keys))
    times = {name: [] for name, _, _ in cases}
    for _ in range(args.iters):
        for name, x, s in cases:
            start = time.perf_counter()
            jax.block_until_ready(step(x, s, keys))
            times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    greedy = ms["greedy"]
    print(f"sample_token, jitted: B={args.slots} V={args.vocab} C={NUM_CANDIDATES} "
          f"({jax.devices()[0].platform}), median of {args.iters}, peaked = Zipf {args.zipf}")
    print(f"{'case':<26}{'ms/call':>10}{'x greedy':>10}")
    for name in ms:
        print(f"{name:<26}{ms[name]:>10.2f}{ms[name] / greedy:>10.2f}")
    result = {"vocab": args.vocab, "slots": args.slots, "candidates": NUM_CANDIDATES,
              "iters": args.iters, "zipf": args.zipf, "platform": jax.devices()[0].platform,
              "ms_per_call": ms, "ratio_to_greedy": {n: m / greedy for n, m in ms.items()}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result

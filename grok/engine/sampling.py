"""Pure sampling functions: temperature, top-k, nucleus (top-p), per-row PRNG keys.

Everything is per row, so a request's tokens depend only on its own logits, settings and
key, never on which slot it occupies or what else is in flight.

Top-k and top-p without a full-vocabulary sort. Each sampled row takes its C largest logits
(`lax.top_k`, C = NUM_CANDIDATES), finds its top-k and nucleus thresholds among them and draws
its token from them. The draw reproduces `jax.random.categorical` over the full filtered row
(the reference's: every filtered-out logit at DISALLOWED_LOGIT) exactly: that draw is the
argmax of logit + Gumbel noise, the noise of vocabulary entry i is a pure function of (key, i),
so we compute it for the candidates alone, and a token outside the candidates cannot win when
it is filtered out, or when it lies more than MAX_GUMBEL_SPREAD below the row's best logit.
Where a row's candidates cannot settle its draw (its nucleus reaches past them, top_k > C with
a nucleus, or a flat tail that could win), the step falls back (`lax.switch`) to the full
filtered row: thresholds from a full sort only when a row's thresholds lie outside its
candidates, then `jax.random.categorical` over the whole row. Same tokens for the same key
either way. Inactive rows take the argmax (their tokens are never used).

Glossary: B rows (slots), V vocabulary, C candidates per row, A alternatives reported per token.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

from grok.ops.platform import on_cpu

DISALLOWED_LOGIT = -1e10  # the reference's fill for filtered-out tokens
NUM_ALTERNATIVES = 8      # the reference reports the 8 most probable tokens
# Candidates per sampled row. `lax.top_k` over 8 x 131,072 logits on CPU costs ~1.3 ms at
# C = 64, ~2 ms at 256 and ~4.5 ms at 1024 next to ~5 ms for a whole greedy call; 256 keeps a
# top-p step within 1.5x of greedy while holding the p = 0.9 nucleus of a peaked next-token
# distribution (a Zipf-2 row keeps 99.8% of its mass in its first 256 tokens). Rows whose
# nucleus is wider take the exact full-sort path for that step.
NUM_CANDIDATES = 256

# jax.random.categorical's noise (default "low" mode, float32) is -log(-log(u)) with u in
# [tiny, 1 - 2^-23]: from -log(-log(tiny)) = -4.47 up to -log(2^-23) = 15.94, a spread of
# 20.41. The best logit (0 after shifting; never filtered out) scores at least -4.47, so a
# logit more than 20.41 below it never wins; 21 leaves room for float32 rounding.
_F32 = np.finfo(np.float32)
MAX_GUMBEL_SPREAD = 21.0
assert MAX_GUMBEL_SPREAD > -np.log(-np.log(1 - 2.0 ** -_F32.nmant)) + np.log(-np.log(_F32.tiny))
_UNIFORM_MANTISSA_SHIFT = 32 - _F32.nmant     # jax.random.uniform keeps the top 23 bits
_ONE_BITS = int(np.array(1.0, np.float32).view(np.uint32))


class SampleSettings(NamedTuple):
    """Per-slot sampling settings (device arrays)."""

    temperature: jax.Array  # [B] float32; 0 = greedy
    top_p: jax.Array        # [B] float32 in (0, 1]: the nucleus
    top_k: jax.Array        # [B] int32; 0 = no top-k filter
    active: jax.Array       # [B] bool; inactive slots neither advance nor sample


class SampleOutput(NamedTuple):
    token_id: jax.Array          # [B] int32
    logprob: jax.Array           # [B] float32: log p(token) under the model (temperature 1)
    top_k_token_ids: jax.Array   # [B, A] int32: the most probable tokens (A = min(8, V))
    top_k_logprobs: jax.Array    # [B, A] float32


class _Candidates(NamedTuple):
    """A row's C largest scaled logits and what they settle (all [B] unless noted)."""

    values: jax.Array           # [B, C] float32, descending
    ids: jax.Array              # [B, C] int32 vocabulary ids
    threshold: jax.Array        # keep candidates >= this (-inf: every candidate)
    mask_known: jax.Array       # bool: the candidates' keep mask is exact
    row_threshold_known: jax.Array  # bool: the full row's filter is `scaled >= threshold`
    draw_settled: jax.Array     # bool: the full-row draw's winner is among the candidates
    filtering: jax.Array        # bool: the row uses top-k or top-p


# ---- the exact full-vocabulary filters (one sort per row; the fallback) -----------------------
def _top_k_filter(logits: jax.Array, top_k: jax.Array) -> jax.Array:
    """Keeps each row's top_k largest logits (all where top_k == 0). logits [B, V]."""
    v = logits.shape[-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)                          # [B]
    kth = jnp.take_along_axis(jnp.sort(logits, axis=-1), (v - k)[:, None], axis=-1)
    return jnp.where(logits >= kth, logits, DISALLOWED_LOGIT)


def _nucleus_filter(logits: jax.Array, nucleus_p: jax.Array) -> jax.Array:
    """The reference's top-p: keep logits >= the one where ascending cumsum reaches 1 - p.

    Where rounding keeps the float32 cumsum below 1 - p (p tiny), the reference's argmax over
    an all-False row would pick index 0 and keep every token; we keep the largest instead.
    """
    ascending = jnp.sort(logits, axis=-1)                                       # [B, V]
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    reached = cumulative >= (1.0 - nucleus_p)[:, None]                          # [B, V]
    last = ascending.shape[-1] - 1
    first = jnp.where(jnp.any(reached, axis=-1), jnp.argmax(reached, axis=-1), last)  # [B]
    threshold = jnp.take_along_axis(ascending, first[:, None], axis=-1)
    return jnp.where(logits >= threshold, logits, DISALLOWED_LOGIT)


def _sorted_filter(scaled: jax.Array, settings: SampleSettings) -> jax.Array:
    """Top-k then nucleus over the full row, sorting only when some row uses each filter."""
    scaled = jax.lax.cond(jnp.any(settings.top_k > 0),
                          lambda s: _top_k_filter(s, settings.top_k), lambda s: s, scaled)
    return jax.lax.cond(jnp.any(settings.top_p < 1),
                        lambda s: _nucleus_filter(s, settings.top_p), lambda s: s, scaled)


# ---- the same filters from the candidates -----------------------------------------------------
def _candidates(scaled: jax.Array, settings: SampleSettings, num_candidates: int) -> _Candidates:
    """Top-k and nucleus thresholds from each row's C largest scaled logits. scaled [B, V].

    In descending order the reference's rule (first ascending index whose cumsum reaches
    1 - p) keeps every logit >= the value at the last rank j whose exclusive prefix mass
    (the probability of the ranks before j) is <= p; that rank lies among the candidates
    whenever their total mass exceeds p. Probabilities are normalized over the top-k-kept
    row, as the reference's softmax over the top-k-filtered row.
    """
    b, v = scaled.shape
    c = min(num_candidates, v)
    values, ids = jax.lax.top_k(scaled, c)                                      # [B, C]
    # The barriers keep XLA from folding later slices (ids[:, 0]) into the top_k, which on CPU
    # turns it back into a full sort (its TopK rewrite needs plain leading slices). One per
    # array: a barrier on the pair gets simplified onto the TopK tuple, which XLA's SPMD
    # TopK decomposer cannot handle.
    values = jax.lax.optimization_barrier(values)
    ids = jax.lax.optimization_barrier(ids)
    rows = jnp.arange(b)
    neg_inf = jnp.full((b,), -jnp.inf, scaled.dtype)
    everything = c == v                       # no token outside the candidates

    top_k_on = (settings.top_k > 0) & (settings.top_k < v)
    top_k_inside = ~top_k_on | (settings.top_k <= c)
    kth = jnp.where(top_k_on & top_k_inside,
                    values[rows, jnp.clip(settings.top_k - 1, 0, c - 1)], neg_inf)  # [B]

    nucleus_on = settings.top_p < 1
    # The scaled row's max is 0 (shifted), so exp never overflows; the sum spans the whole
    # top-k-kept row, ties beyond the candidates included.
    total = jnp.sum(jnp.where(scaled >= kth[:, None], jnp.exp(scaled), 0.0), axis=-1)  # [B]
    probs = jnp.where(values >= kth[:, None], jnp.exp(values), 0.0) / total[:, None]    # [B, C]
    cumulative = jnp.cumsum(probs, axis=-1)                                     # [B, C]
    before = jnp.pad(cumulative[:, :-1], ((0, 0), (1, 0)))   # mass of the ranks before each
    # the last rank whose prior mass is <= p (rank 0 always qualifies: its prior mass is 0)
    last_rank = jnp.max(jnp.where(before <= settings.top_p[:, None], jnp.arange(c), 0), axis=-1)
    nucleus_inside = ~nucleus_on | everything | (cumulative[:, -1] > settings.top_p)
    nucleus_t = jnp.where(nucleus_on & nucleus_inside, values[rows, last_rank], neg_inf)

    threshold = jnp.maximum(kth, nucleus_t)
    mask_known = top_k_inside | ~nucleus_on   # the nucleus needs the top-k row's total
    row_threshold_known = top_k_inside & nucleus_inside
    lowest = jnp.min(values, axis=-1)
    outside_filtered = everything | (row_threshold_known & (threshold > lowest))
    outside_cannot_win = lowest < -MAX_GUMBEL_SPREAD
    return _Candidates(values, ids, threshold, mask_known, row_threshold_known,
                       mask_known & (outside_filtered | outside_cannot_win), top_k_on | nucleus_on)


# ---- the draw ---------------------------------------------------------------------------------
def _gumbel_draw_reproducible(keys: jax.Array) -> bool:
    """Whether `_gumbel_at` reproduces jax.random.categorical's noise for these keys."""
    if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(keys))
    else:
        impl = getattr(jax.config, "jax_default_prng_impl", "")
    # getattr: jax.config options differ between JAX versions; an unknown JAX (options renamed)
    # counts as not reproducible, and the full-row draw is exact
    return ("threefry2x32" in str(impl) and getattr(jax.config, "jax_threefry_partitionable", False)
            and not getattr(jax.config, "jax_high_dynamic_range_gumbel", True))


def _gumbel_at(keys: jax.Array, ids: jax.Array) -> jax.Array:
    """jax.random.gumbel(keys[b], (V,))[ids[b]] without the other V entries. ids [B, C].

    The partitionable threefry gives entry i the bits threefry2x32(key, (0, i)) (both output
    words xor-ed); uniform keeps 23 of them as a float in [0, 1) moved to [tiny, 1).
    """
    if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.key_data(keys)
    counts = ids.astype(jnp.uint32)                                              # [B, C]
    key_words = [jnp.broadcast_to(keys[:, i:i + 1], counts.shape) for i in (0, 1)]
    high, low = threefry2x32_p.bind(*key_words, jnp.zeros_like(counts), counts)
    bits = jnp.bitwise_xor(high, low)
    mantissa = jax.lax.shift_right_logical(bits, jnp.uint32(_UNIFORM_MANTISSA_SHIFT))
    floats = jax.lax.bitcast_convert_type(mantissa | jnp.uint32(_ONE_BITS), jnp.float32) - 1.0
    lo, hi = jnp.float32(_F32.tiny), jnp.float32(1.0)
    uniform = jax.lax.max(lo, floats * (hi - lo) + lo)
    return -jnp.log(-jnp.log(uniform))


def _candidate_draw(cand: _Candidates, keys: jax.Array) -> jax.Array:
    """The full filtered row's categorical draw, scored on the candidates alone. -> [B]."""
    kept = jnp.where(cand.values >= cand.threshold[:, None], cand.values, DISALLOWED_LOGIT)
    score = _gumbel_at(keys, cand.ids) + kept                                   # [B, C]
    best = jnp.max(score, axis=-1, keepdims=True)
    # argmax over the full row returns the first (lowest id) of equal scores
    return jnp.min(jnp.where(score == best, cand.ids, jnp.iinfo(jnp.int32).max), axis=-1)


def _full_row_draw(scaled: jax.Array, settings: SampleSettings, cand: _Candidates,
                   keys: jax.Array, draws: jax.Array, sort: bool) -> jax.Array:
    """jax.random.categorical over the full filtered row; with `sort`, rows whose thresholds
    lie outside their candidates take them from a full sort (the others never need it)."""
    filtered = jnp.where(scaled >= cand.threshold[:, None], scaled, DISALLOWED_LOGIT)
    if sort:
        known = cand.row_threshold_known | ~draws
        filtered = jnp.where(known[:, None], filtered, _sorted_filter(scaled, settings))
    return jax.vmap(jax.random.categorical)(keys, filtered)


def _unfiltered_draw(scaled: jax.Array, keys: jax.Array) -> jax.Array:
    """jax.random.categorical over the scaled rows as they are (no drawing row filters). A
    separate path: a `where` in front of the draw doubles its cost on CPU (fusion)."""
    return jax.vmap(jax.random.categorical)(keys, scaled)


# The ways one step can draw, cheapest first (lax.switch index).
ARGMAX_ONLY, CANDIDATE_DRAW, UNFILTERED_DRAW, FULL_ROW_DRAW, SORTED_FULL_ROW_DRAW = range(5)


def sample_token(logits: jax.Array, settings: SampleSettings, keys: jax.Array,
                 num_candidates: int = NUM_CANDIDATES, alternatives: bool = True) -> SampleOutput:
    """Samples one token per row. logits [B, V] float32; keys [B] PRNG keys.

    Greedy rows (temperature 0) and inactive rows take the argmax. num_candidates (C) only
    changes the speed, never the tokens; without `alternatives` the top ids and logprobs
    are zeros (the token's own logprob is always there).
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    logits = logits.astype(jnp.float32)
    draws = (settings.temperature > 0) & settings.active                        # [B]
    # Shifting by the row max first keeps a tiny temperature from turning several logits
    # into +inf (which would tie them); softmax and the filters are shift-invariant.
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    scaled = shifted / jnp.where(draws, settings.temperature, 1.0)[:, None]     # [B, V]
    if not on_cpu():
        return _finish(logits, draws, *_sorted_draw(scaled, settings, keys), alternatives)
    cand = _candidates(scaled, settings, num_candidates)
    # The first candidate is the argmax (cheaper than jnp.argmax on CPU): top_k puts the
    # lowest index first among equals, and shifting never reorders or ties the max.
    argmax = cand.ids[:, 0]
    # One switch, not nested conds: XLA's CPU backend runs a conditional's branches on one
    # thread, so the full-row draw should sit no deeper than before.
    path = jnp.where(~jnp.any(draws), ARGMAX_ONLY,
                     jnp.where(jnp.all(cand.draw_settled | ~draws) & _gumbel_draw_reproducible(keys),
                               CANDIDATE_DRAW,
                      jnp.where(jnp.all(~cand.filtering | ~draws), UNFILTERED_DRAW,
                      jnp.where(jnp.all(cand.row_threshold_known | ~draws),
                                FULL_ROW_DRAW, SORTED_FULL_ROW_DRAW))))
    sampled = jax.lax.switch(path, [
        lambda: argmax,
        lambda: _candidate_draw(cand, keys),
        lambda: _unfiltered_draw(scaled, keys),
        lambda: _full_row_draw(scaled, settings, cand, keys, draws, sort=False),
        lambda: _full_row_draw(scaled, settings, cand, keys, draws, sort=True)])
    return _finish(logits, draws, sampled, argmax, alternatives)


def _sorted_draw(scaled: jax.Array, settings: SampleSettings, keys: jax.Array):
    """(draw, argmax) [B] with no control flow: exact top-k and nucleus thresholds from one
    ascending sort of each row, then jax.random.categorical over the filtered row.

    The accelerator path: there `lax.top_k` over the vocabulary is a full sort already, and a
    `lax.switch` on a device value is a device -> host round trip every step. The thresholds
    are the fallback filters' (`_top_k_filter`, `_nucleus_filter`) from the same sorted row;
    a row with top_k 0 or top_p 1 keeps everything. Same tokens as the candidate path."""
    v = scaled.shape[-1]
    ascending = jnp.sort(scaled, axis=-1)                                       # [B, V]
    k = jnp.where(settings.top_k > 0, jnp.minimum(settings.top_k, v), v)        # [B]
    kth = jnp.take_along_axis(ascending, (v - k)[:, None], axis=-1)             # [B, 1]
    # The top-k-filtered row, still ascending: the dropped logits are its smallest.
    kept = jnp.where(ascending >= kth, ascending, DISALLOWED_LOGIT)
    cumulative = jnp.cumsum(jax.nn.softmax(kept, axis=-1), axis=-1)
    reached = cumulative >= (1.0 - settings.top_p)[:, None]                 # [B, V]
    first = jnp.where(jnp.any(reached, axis=-1), jnp.argmax(reached, axis=-1), v - 1)
    threshold = jnp.maximum(jnp.take_along_axis(kept, first[:, None], axis=-1), kth)
    filtered = jnp.where(scaled >= threshold, scaled, DISALLOWED_LOGIT)
    return jax.vmap(jax.random.categorical)(keys, filtered), jnp.argmax(scaled, axis=-1)


def _finish(logits: jax.Array, draws: jax.Array, sampled: jax.Array,
            argmax: jax.Array, alternatives: bool = True) -> SampleOutput:
    """The SampleOutput of rows that drew `sampled` (the others take `argmax`); without
    `alternatives` (no row asked for them), the top ids and logprobs are zeros."""
    token = jnp.where(draws, sampled, argmax).astype(jnp.int32)
    if not alternatives:
        a = min(NUM_ALTERNATIVES, logits.shape[-1])
        return SampleOutput(token, chosen_logprob(logits, token),
                            jnp.zeros(token.shape + (a,), jnp.int32),
                            jnp.zeros(token.shape + (a,), jnp.float32))
    logprobs = jax.nn.log_softmax(logits, axis=-1)                              # [B, V]
    top_logprobs, top_ids = jax.lax.top_k(logprobs, min(NUM_ALTERNATIVES, logits.shape[-1]))
    chosen = jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
    return SampleOutput(token, chosen, top_ids.astype(jnp.int32), top_logprobs)


def chosen_logprob(logits: jax.Array, token: jax.Array) -> jax.Array:
    """log_softmax(logits)[b, token[b]] -> [B], by log_softmax's own arithmetic (shift by the
    row max, subtract the log of the shifted row's exp-sum) without the [B, V] logprobs:
    their top_k over the vocabulary costs as much as the rest of a greedy row."""
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)                  # [B, V]
    total = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))                         # [B]
    return jnp.take_along_axis(shifted, token[:, None], axis=-1)[:, 0] - total


def greedy_token(logits: jax.Array, alternatives: bool = True) -> SampleOutput:
    """What `sample_token` gives rows that do not draw (greedy or inactive), without its
    candidates: the argmax (the lowest id among equal maxima, as its top_k candidate) and the
    same logprobs and alternatives. logits [B, V]."""
    logits = logits.astype(jnp.float32)
    argmax = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return _finish(logits, jnp.zeros(argmax.shape, bool), argmax, argmax, alternatives)


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(targets[b, t] | prefix) from logits [B, T, V] -> [B, T] float32 (echo scoring)."""
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]

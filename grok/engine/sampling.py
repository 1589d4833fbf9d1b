"""Pure sampling functions: temperature, top-k, nucleus (top-p), per-row PRNG keys.

Everything is per row, so a request's tokens depend only on its own logits, settings and
key, never on which slot it occupies or what else is in flight.

Glossary: B rows (slots), V vocabulary, A alternatives reported per token.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

DISALLOWED_LOGIT = -1e10  # the reference's fill for filtered-out tokens
NUM_ALTERNATIVES = 8      # the reference reports the 8 most probable tokens


class SampleSettings(NamedTuple):
    """Per-slot sampling settings (device arrays)."""

    temperature: jax.Array  # [B] float32; 0 = greedy
    nucleus_p: jax.Array    # [B] float32 in (0, 1]
    top_k: jax.Array        # [B] int32; 0 = no top-k filter
    active: jax.Array       # [B] bool; inactive slots neither advance nor sample


class SampleOutput(NamedTuple):
    token_id: jax.Array          # [B] int32
    logprob: jax.Array           # [B] float32: log p(token) under the model (temperature 1)
    top_k_token_ids: jax.Array   # [B, A] int32: the most probable tokens (A = min(8, V))
    top_k_logprobs: jax.Array    # [B, A] float32


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


def sample_token(logits: jax.Array, settings: SampleSettings, keys: jax.Array) -> SampleOutput:
    """Samples one token per row. logits [B, V] float32; keys [B] PRNG keys."""
    logits = logits.astype(jnp.float32)
    greedy = settings.temperature <= 0
    # Shifting by the row max first keeps a tiny temperature from turning several logits
    # into +inf (which would tie them); softmax and the filters are shift-invariant.
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    scaled = shifted / jnp.where(greedy, 1.0, settings.temperature)[:, None]
    scaled = jax.lax.cond(jnp.any(settings.top_k > 0),
                          lambda s: _top_k_filter(s, settings.top_k), lambda s: s, scaled)
    scaled = jax.lax.cond(jnp.any(settings.nucleus_p < 1),
                          lambda s: _nucleus_filter(s, settings.nucleus_p), lambda s: s, scaled)
    argmax = jnp.argmax(logits, axis=-1)
    sampled = jax.lax.cond(jnp.all(greedy), lambda: argmax,  # all greedy: draw nothing
                           lambda: jax.vmap(jax.random.categorical)(keys, scaled))  # [B]
    token = jnp.where(greedy, argmax, sampled).astype(jnp.int32)
    logprobs = jax.nn.log_softmax(logits, axis=-1)                              # [B, V]
    top_logprobs, top_ids = jax.lax.top_k(logprobs, min(NUM_ALTERNATIVES, logits.shape[-1]))
    chosen = jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]
    return SampleOutput(token, chosen, top_ids.astype(jnp.int32), top_logprobs)


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(targets[b, t] | prefix) from logits [B, T, V] -> [B, T] float32 (echo scoring)."""
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]

"""The speculative verify step: score each slot's last token and its drafts in one call.

`verify` is a decode step over a short chunk: slot b feeds its last token and its
num_drafts[b] drafted tokens (at most K, padded with pad ids) through the live-cache
attention and the MoE of the decode path, so one call gives K + 1 positions' logits per slot.

Exactness. A slot's n-th token is drawn with a key that is a pure function of its seed and n:
each decode step splits the slot's key, samples with one half and keeps the other
(grok.engine.steps.generate). `verify` walks the same chain K + 1 times, so position j is
sampled (`sample_token`, the same function as a decode step) with exactly the key the
(n + j)-th decode step would use. A draft is accepted while it equals the token sampled at
its position; the accepted drafts plus the next sampled token are exactly the tokens that
decode steps would have produced one by one, given the same logits.

Rejected positions. Every fed position's KV is written, but the slot's length advances only
by the tokens accepted (+ 1), and positions at or past the new length are marked invalid, so
no later call sees a rejected draft's key: the next call writes its own token there.

Glossary: B slots, K draft tokens per slot (static), J = K + 1 positions, V vocabulary,
S sequence_len, A reported alternatives.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from grok.engine.sampling import SampleSettings, greedy_token, sample_token
from grok.engine.state import DecodeState, pack_output
from grok.ops.platform import on_cpu


def key_chain(rngs: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """The next n decode steps' keys from each slot's key rngs [B, 2]: (sample keys
    [B, n, 2], the slot's key after each of those steps [B, n, 2]), as `generate` splits."""
    def step(rng, _):
        halves = jax.random.split(rng)
        return halves[0], (halves[1], halves[0])

    def chain(rng):
        _, (sample, kept) = jax.lax.scan(step, rng, None, length=n)
        return sample, kept
    return jax.vmap(chain)(rngs)


def verify(forward: Callable, params, state: DecodeState, drafts: jax.Array,
           num_drafts: jax.Array, pad_token: int, alternatives: bool = True):
    """One verify step: drafts [B, K] int32 (pad after num_drafts), num_drafts [B] int32;
    without `alternatives` (static: no slot reports them) each position's top ids and
    logprobs are zeros, and the step skips their top_k over the vocabulary.

    Returns (state, packed [B, J, 2 + 2A] (each position's sampled token, as a decode step
    packs it), emitted [B] int32: tokens this step produced per slot = accepted drafts + 1,
    0 for inactive slots). Inactive slots are left exactly as they were.
    """
    active = state.settings.active                                              # [B]
    b, k = drafts.shape
    j = k + 1
    offsets = jnp.arange(k, dtype=jnp.int32)                                    # [K]
    num_drafts = jnp.where(active, num_drafts, 0)
    drafts = jnp.where(offsets[None] < num_drafts[:, None], drafts, pad_token)   # [B, K]
    tokens = jnp.concatenate([state.last_tokens[:, None], drafts], axis=1)      # [B, J]
    fed = jnp.where(active, 1 + num_drafts, 0)                                  # [B]
    logits, memory = forward(params, tokens, state.memory, fed, None)           # [B, J, V]

    sample_keys, kept_keys = key_chain(state.rngs, j)                           # [B, J, 2]
    rows = lambda a: jnp.repeat(a, j, axis=0)                                   # [B*J]
    position_live = (jnp.arange(j)[None] < fed[:, None]).reshape(b * j)         # [B*J]
    settings = SampleSettings(rows(state.settings.temperature), rows(state.settings.top_p),
                              rows(state.settings.top_k), position_live)
    flat, keys = logits.reshape(b * j, -1), sample_keys.reshape(b * j, -1)     # [B*J, V]
    if on_cpu():
        # Steps where no live position draws (all greedy) skip the sampler's candidates
        # (on an accelerator a branch on a device value costs a round trip to the host).
        draws = jnp.any((settings.temperature > 0) & position_live)
        out = jax.lax.cond(
            draws, lambda: sample_token(flat, settings, keys, alternatives=alternatives),
            lambda: greedy_token(flat, alternatives))
    else:
        out = sample_token(flat, settings, keys, alternatives=alternatives)
    sampled = out.token_id.reshape(b, j)                                        # [B, J]

    matches = (drafts == sampled[:, :k]) & (offsets[None] < num_drafts[:, None])  # [B, K]
    accepted = jnp.sum(jnp.cumprod(matches.astype(jnp.int32), axis=1), axis=1)  # [B]
    emitted = jnp.where(active, accepted + 1, 0)                                # [B]

    pick = lambda a: jnp.take_along_axis(a, accepted[:, None, None], axis=1)[:, 0]
    rngs = jnp.where(active[:, None], pick(kept_keys), state.rngs)
    last = jnp.take_along_axis(sampled, accepted[:, None], axis=1)[:, 0]
    last_tokens = jnp.where(active, last, state.last_tokens)
    step = state.memory.step + emitted           # (the forward's counts every fed position)
    positions = jnp.arange(memory.valid.shape[1], dtype=jnp.int32)              # [S]
    memory = memory._replace(step=step, valid=memory.valid & (positions[None] < step[:, None]))
    packed = pack_output(out).reshape(b, j, -1)
    # token_counts stay as they are: only logit-processing rows read them, and no verify
    # step runs while such a row is running (their counts restart when a request enters)
    return state._replace(memory=memory, rngs=rngs, last_tokens=last_tokens), packed, emitted

"""The device functions the engine compiles: prefill, batched prefill, insert, decode, release.

Pure functions of (params, device values); `forward` is grok.model.build_forward's function
(traced under the mesh). grok.engine.engine jits them with explicit shardings; the names of
the reference's compiled functions, `prefill_memory` and `sample_step`, are kept there.

Glossary: B slots, N prompts in a batched prefill, T chunk bucket, P / Q prefix capacity
(in / out), S sequence_len, L layers, K kv heads, d key_size, V vocabulary.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from grok.engine.api import Prefix, SlotArm
from grok.engine.logits_processing import LogitControls, count_tokens, process_logits
from grok.engine.sampling import NUM_ALTERNATIVES, SampleOutput, SampleSettings, sample_token
from grok.engine.state import DecodeState, arm_slot, pack_output
from grok.model.transformer import Memory

Forward = Callable


def _grow(prefix: Prefix, capacity: int) -> Memory:
    """The prefix as a one-row Memory of `capacity` >= P positions (zeros and invalid after)."""
    pad = capacity - prefix.k.shape[3]
    widen = lambda a: jnp.pad(a, [(0, 0)] * 3 + [(0, pad), (0, 0)])            # [L, 1, K, Q, d]
    return Memory(widen(prefix.k), widen(prefix.v), prefix.length[None],
                  jnp.pad(prefix.valid, [(0, 0), (0, pad)]))


def _settings_rows(settings: jax.Array) -> SampleSettings:
    """settings [N, 3] float32 (temperature, top_p, top_k) -> SampleSettings rows, active."""
    return SampleSettings(settings[:, 0], settings[:, 1], settings[:, 2].astype(jnp.int32),
                          jnp.ones(settings.shape[:1], bool))


def _sample_first(logits: jax.Array, settings: jax.Array, seeds: jax.Array):
    """The first token of N prompts from their last logits [N, V]: (packed [N, ...], arms).

    Each slot's key is split from PRNGKey(seed): one half samples, the other is kept.
    """
    keys = jax.vmap(lambda s: jax.random.split(jax.random.PRNGKey(s)))(seeds)  # [N, 2, 2]
    rows = _settings_rows(settings)
    out = sample_token(logits, rows, keys[:, 1])
    return pack_output(out), SlotArm(out.token_id, keys[:, 0], rows)


def prefill(forward: Forward, params, tokens, length, prefix: Prefix, targets, settings, seed,
            *, capacity: int, echo: bool):
    """One prompt chunk after `prefix` (empty for a prompt's first chunk).

    tokens, targets [1, T] (right-padded; targets: each position's next prompt token, for
    echo); length []: real tokens in the chunk; settings [3]; seed [] uint32. Returns
    (Prefix of `capacity` positions, packed first-token sample [1, 2 + 2A], SlotArm,
    echo scores [T, 2 + 2A] or None). `prefix` is only read.
    """
    memory = _grow(prefix, capacity)
    logits, memory = forward(params, tokens, memory, length[None],
                             None if echo else (length - 1)[None])
    out = Prefix(memory.k, memory.v, memory.valid, memory.step[0])
    last = logits[:, length - 1] if echo else logits[:, 0]                      # [1, V]
    packed, arm = _sample_first(last, settings[None], seed[None])
    arm = jax.tree.map(lambda a: a[0], arm)
    return out, packed, arm, (_echo_scores(logits, targets) if echo else None)


def _echo_scores(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Each prompt position's score in the decode step's packed format [T, 2 + 2A]: the next
    prompt token (as the row's token), its logprob, and the A most probable tokens there (so
    an echoed prompt token carries its alternatives as a generated one does)."""
    logprobs = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)         # [T, V]
    top_lps, top_ids = jax.lax.top_k(logprobs, min(NUM_ALTERNATIVES, logits.shape[-1]))
    # The target's logprob is read from the same array as the top ones, so a target that is
    # the most probable token has exactly the top value (clients compare them for greedy).
    chosen = jnp.take_along_axis(logprobs, targets[0][:, None], axis=-1)[:, 0]     # [T]
    scored = SampleOutput(targets[0], chosen, top_ids, top_lps)
    return pack_output(scored)


def prefill_batch(forward: Forward, empty_memory: Callable[[int, int], Memory], params, tokens,
                  lengths, settings, seeds, *, capacity: int):
    """N whole prompts at once: tokens [N, T], lengths [N] (0 for padding rows), settings
    [N, 3], seeds [N]; empty_memory(rows, positions) -> a zero Memory. Returns (N Prefixes of
    `capacity` positions, packed [N, 2 + 2A], N SlotArms)."""
    n, _ = tokens.shape
    memory = empty_memory(n, capacity)
    last = jnp.maximum(lengths - 1, 0)
    logits, memory = forward(params, tokens, memory, lengths, last)
    packed, arms = _sample_first(logits[:, 0], settings, seeds)
    prefixes = tuple(Prefix(memory.k[:, i:i + 1], memory.v[:, i:i + 1], memory.valid[i:i + 1],
                            memory.step[i]) for i in range(n))
    return prefixes, packed, tuple(jax.tree.map(lambda a: a[i], arms) for i in range(n))


def insert(state: DecodeState, prefix: Prefix, arm: SlotArm, slot) -> DecodeState:
    """The state with `slot` holding exactly `prefix`: its KV and validity written, every
    position after the prefix zeroed and invalid (no key of the previous occupant survives),
    step = the prefix's length; armed with `arm` and active."""
    mem = state.memory
    row = _grow(prefix, mem.k.shape[3])                                          # S positions
    put = lambda a, r, axis: jax.lax.dynamic_update_slice_in_dim(a, r.astype(a.dtype), slot, axis)
    memory = Memory(put(mem.k, row.k, 1), put(mem.v, row.v, 1), put(mem.step, row.step, 0),
                    put(mem.valid, row.valid, 0))
    counts = state.token_counts.at[slot].set(0)
    prompt_tokens = state.prompt_tokens.at[slot].set(False)
    return arm_slot(state._replace(memory=memory, token_counts=counts,
                                   prompt_tokens=prompt_tokens), arm, slot)


def mark_prompt(state: DecodeState, tokens: jax.Array, length: jax.Array, slot) -> DecodeState:
    """The state with the slot's first `length` of `tokens` [S] (its prompt, right-padded)
    marked in prompt_tokens: the tokens its repetition penalty counts besides its outputs."""
    live = (jnp.arange(tokens.shape[0]) < length).astype(jnp.int32)            # [S]
    row = jnp.zeros(state.prompt_tokens.shape[1:], jnp.int32).at[tokens].add(live) > 0  # [V]
    return state._replace(prompt_tokens=state.prompt_tokens.at[slot].set(row))


def generate(forward: Forward, params, state: DecodeState,
             controls: Optional[LogitControls] = None):
    """One decode step for every slot; inactive slots are left exactly as they were.

    With `controls` (grok.engine.logits_processing), each row's logits are processed before
    sampling and the slots' generated-token counts kept; without, neither (the counts only
    matter to processed rows, and a row's counts restart when a request enters its slot).
    Returns (state, packed [B, 2 + 2A])."""
    active = state.settings.active
    b = active.shape[0]
    logits, memory = forward(params, state.last_tokens[:, None], state.memory,
                             active.astype(jnp.int32), jnp.zeros((b,), jnp.int32))
    keys = jax.vmap(jax.random.split)(state.rngs)                               # [B, 2, 2]
    logits = logits[:, 0]
    if controls is not None:
        logits = process_logits(logits, controls, state.token_counts, state.prompt_tokens,
                                state.settings.temperature)
    out = sample_token(logits, state.settings, keys[:, 1])
    rngs = jnp.where(active[:, None], keys[:, 0], state.rngs)
    tokens = jnp.where(active, out.token_id, state.last_tokens)
    counts = (state.token_counts if controls is None
              else count_tokens(state.token_counts, out.token_id, active))
    return (state._replace(memory=memory, rngs=rngs, last_tokens=tokens, token_counts=counts),
            pack_output(out))


def release(state: DecodeState, slot) -> DecodeState:
    settings = state.settings._replace(active=state.settings.active.at[slot].set(False))
    return state._replace(settings=settings)


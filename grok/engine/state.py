"""Device values between calls: the per-slot DecodeState, prefix sizes, shardings, packing.

Prefix capacities. A `Prefix` (grok.engine.api) holds P positions, P a "capacity bucket":
the prefill buckets, then the largest bucket doubled until sequence_len, then sequence_len
(buckets (1024,) and S = 8192 give 1024, 2048, 4096, 8192). So a prefix costs at most about
twice its length (a cached 1k-token Grok-1 prefix holds 1024 positions: 268 MB in bf16, not
the 2.1 GB of 8192), prefill attends over P keys rather than S, and there are
O(log(S / bucket)) shapes to compile, not one per length.

Glossary: B slots, S sequence_len, P prefix capacity, T chunk, L layers, K kv heads,
d key_size, A reported alternatives.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from grok.config import LanguageModelConfig
from grok.engine.api import Prefix, SlotArm, TokenOutput
from grok.engine.sampling import SampleSettings
from grok.model.transformer import Memory, init_memory
from grok.parallel import sharding
from grok.runtime_config import RuntimeConfig

PRNG_KEY_WORDS = 2   # a threefry PRNG key as raw uint32 data


class DecodeState(NamedTuple):
    """Everything the device keeps per slot between calls (donated to each call)."""

    memory: Memory
    settings: SampleSettings
    rngs: jax.Array         # [B, 2] uint32 PRNG key per slot (raw key data; 2 for threefry)
    last_tokens: jax.Array  # [B] int32: the token each slot feeds to the next step
    token_counts: jax.Array  # [B, V] int32: tokens each slot generated (for penalties)
    prompt_tokens: jax.Array  # [B, V] bool: tokens of each slot's prompt, where marked
    #                           (grok.engine.steps.mark_prompt: the repetition penalty's)


def new_state(config: LanguageModelConfig, runtime: RuntimeConfig, batch_size: int) -> DecodeState:
    """Every slot empty (zero KV, nothing valid) and inactive."""
    b = batch_size
    return DecodeState(
        init_memory(config, b, config.sequence_len, runtime),
        SampleSettings(jnp.zeros((b,), jnp.float32), jnp.ones((b,), jnp.float32),
                       jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool)),
        jnp.zeros((b, PRNG_KEY_WORDS), jnp.uint32), jnp.zeros((b,), jnp.int32),
        jnp.zeros((b, config.vocab_size), jnp.int32), jnp.zeros((b, config.vocab_size), bool))


def empty_prefix(config: LanguageModelConfig, runtime: RuntimeConfig, capacity: int) -> Prefix:
    """A prefix of `capacity` positions holding nothing (the start of every prompt)."""
    memory = init_memory(config, 1, capacity, runtime)
    return Prefix(memory.k, memory.v, memory.valid, jnp.int32(0))


def prefix_capacities(buckets, sequence_len: int) -> tuple[int, ...]:
    """The capacity buckets P (see module docstring), ascending, the last = sequence_len."""
    sizes = {b for b in buckets if b < sequence_len}
    size = max(buckets)
    while size < sequence_len:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes | {sequence_len}))


def capacity_for(positions: int, capacities: tuple[int, ...]) -> int:
    """The smallest capacity holding `positions` (sequence_len when none does: positions past
    the end are padding the model drops)."""
    return next((p for p in capacities if p >= positions), capacities[-1])


def slice_prefix(prefix: Prefix, length, capacity: int) -> Prefix:
    """The prefix's first `length` positions ([] int32, <= prefix.length) as a Prefix of
    `capacity` (static, >= length) positions; the rest zero and invalid, as in any Prefix.

    A prefix cache hit that covers only part of a cached prompt continues from this (the
    cached prefix itself is only read). K and V of position p depend on tokens[:p + 1] alone,
    so the first `length` positions are exactly the KV of that shorter prompt.
    """
    keep = jnp.arange(capacity) < length                                        # [P']
    cut = lambda a: jnp.where(keep[:, None], a[:, :, :, :capacity], jnp.zeros((), a.dtype))
    return Prefix(cut(prefix.k), cut(prefix.v), prefix.valid[:, :capacity] & keep[None],
                  jnp.asarray(length, jnp.int32))


def extract_prefix(state: DecodeState, slot, length, capacity: int) -> Prefix:
    """Slot's first `length` positions ([] int32, <= the slot's filled positions) as a Prefix
    of `capacity` (static, >= length) positions; the rest zero and invalid, as in any Prefix.

    A finished request's prompt and output KV, kept by the prefix cache (a conversation's next
    turn starts with them). The state is only read: its KV stays in the slot.
    """
    mem = state.memory
    take = lambda a, axis: jax.lax.dynamic_slice_in_dim(a, slot, 1, axis)
    keep = jnp.arange(capacity) < length                                        # [P]
    cut = lambda a: jnp.where(keep[:, None], a[:, :, :, :capacity], jnp.zeros((), a.dtype))
    return Prefix(cut(take(mem.k, 1)), cut(take(mem.v, 1)),                     # [L, 1, K, P, d]
                  take(mem.valid, 0)[:, :capacity] & keep[None], jnp.asarray(length, jnp.int32))


def arm_slot(state: DecodeState, arm: SlotArm, slot) -> DecodeState:
    """The state with slot's sampling settings, PRNG key and next input token from `arm`."""
    put = lambda a, r: a.at[slot].set(r.astype(a.dtype))
    return state._replace(settings=jax.tree.map(put, state.settings, arm.settings),
                          rngs=put(state.rngs, arm.rng), last_tokens=put(state.last_tokens, arm.token))


# ---- shardings -------------------------------------------------------------------------------
def state_shardings(state_shape: DecodeState, mesh: Mesh) -> DecodeState:
    per_slot = lambda x: sharding.batch_sharding(x.shape, mesh)
    return DecodeState(sharding.memory_shardings(state_shape.memory, mesh),
                       jax.tree.map(per_slot, state_shape.settings),
                       per_slot(state_shape.rngs), per_slot(state_shape.last_tokens),
                       per_slot(state_shape.token_counts), per_slot(state_shape.prompt_tokens))


def prefix_shardings(prefix_shape: Prefix, mesh: Mesh) -> Prefix:
    """A prefix is laid out like one slot of the cache (its batch axis of 1 is not split)."""
    memory = sharding.memory_shardings(
        Memory(prefix_shape.k, prefix_shape.v, jax.ShapeDtypeStruct((1,), jnp.int32),
               prefix_shape.valid), mesh)
    return Prefix(memory.k, memory.v, memory.valid, sharding.replicated(mesh))


# ---- outputs ---------------------------------------------------------------------------------
def pack_output(out) -> jax.Array:
    """A SampleOutput as one float32 array [B, 2 + 2A], so a step costs one host copy.

    Token ids are below 2**24, so they are exact in float32.
    """
    return jnp.concatenate([out.token_id.astype(jnp.float32)[:, None], out.logprob[:, None],
                            out.top_k_token_ids.astype(jnp.float32), out.top_k_logprobs], axis=1)


def unpack_output(packed: np.ndarray) -> TokenOutput:
    """Host side of `pack_output`: (token ids [B], logprobs [B], top ids [B, A], top lps [B, A])."""
    a = (packed.shape[1] - 2) // 2
    return TokenOutput(packed[:, 0].astype(np.int64), packed[:, 1],
                       packed[:, 2:2 + a].astype(np.int64), packed[:, 2 + a:])


def to_host(array: jax.Array) -> np.ndarray:
    """A replicated device array as NumPy, also in a multi-process job (where the global
    array is not fully addressable: this process's copy is the value)."""
    if array.is_fully_addressable:
        return np.asarray(array)
    if not array.is_fully_replicated:
        raise ValueError(f"expected a replicated output, got sharding {array.sharding}")
    return np.asarray(array.addressable_data(0))

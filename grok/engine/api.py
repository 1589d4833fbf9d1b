"""The engine API: the typed seam between the host loop (grok.serving) and the device.

The host loop drives a model only through an `Engine`:

    state = engine.init_state()                         # every slot empty
    prefix, result = engine.prefill(ids[:1024], sample)  # a prompt's KV, in no slot
    prefix, result = engine.prefill(ids[1024:], sample, existing_prefix=prefix)  # next chunk
    first = engine.read(result)                          # TokenOutput, one row
    state = engine.insert(prefix, result.arm, state, slot)
    state, handle = engine.generate(state)               # one decode step for every slot
    state, later = engine.generate(state)                # dispatched before `handle` is read
    out = engine.read(handle)                            # TokenOutput, one row per slot
    state = engine.release(state, slot)
    shorter = engine.slice_prefix(prefix, 700)           # its first 700 positions (a new Prefix)
    kept = engine.extract_prefix(state, slot, 900)       # a slot's first 900 positions

Roles (JetStream's engine_api shape, with these differences):
- A `Prefix` is an immutable device value: a prompt's keys/values, which positions are real
  tokens, and how many positions it holds. `prefill` never donates or modifies the
  `existing_prefix` it continues, so a prefix cache can keep one and resume from it many times.
- A `Prefix` holds `capacity` positions, a bucket >= its length (see `prefix_capacities`), not
  `sequence_len`: a cached 1k-token prefix of Grok-1 holds 1k positions (268 MB in bf16),
  not 8k (2.1 GB).
- `insert` writes the prefix into a slot AND clears the rest of that slot: a new request never
  sees the previous occupant's keys (issue 8 item 4).
- `generate` is the compiled `sample_step`; it starts the device->host copy of its output, so
  the host reads step n after dispatching step n+1 (the overlap that keeps the device busy).
- `slice_prefix` keeps a prefix's first n positions (a prefix cache's partial hit), then
  `prefill` continues it.
- Device code knows nothing of requests: no ids, no stop tokens, no text; the host loop keeps
  a prompt plus its output within sequence_len (a prefix's length is a device value, so the
  engine does not check it; positions past the end are dropped).
- Compiled once per shape bucket; nothing recompiles while serving.

Everything a handle or result holds is a device value until `read` (or `read_echo`) brings
it to the host as NumPy.

Glossary: B slots, T tokens in a chunk (a prefill bucket), P prefix capacity, S sequence_len,
L layers, K kv heads, d key_size, V vocabulary, A reported alternatives (8), N prompts in a
batched prefill.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Protocol, Sequence, Union, runtime_checkable

import jax
import numpy as np

from grok.engine.sampling import SampleSettings

__all__ = ["Prefix", "SlotArm", "SampleParams", "PrefillResult", "StepHandle", "TokenOutput",
           "VerifyOutput", "Engine", "GREEDY"]


class Prefix(NamedTuple):
    """A prompt's KV cache on the device, in no slot; immutable (never donated by the engine).

    `length` positions are filled (real tokens and any pad ids inside the prompt, which are
    invisible keys, as in a full forward); positions >= length are zeros and invalid.
    """

    k: jax.Array       # [L, 1, K, P, d] activation dtype, post-RoPE keys
    v: jax.Array       # [L, 1, K, P, d]
    valid: jax.Array   # [1, P] bool: position holds a real (non-pad) token
    length: jax.Array  # [] int32: positions filled

    @property
    def capacity(self) -> int:
        """P: positions this prefix can hold (static; a bucket, see `prefix_capacities`)."""
        return self.k.shape[3]


class SlotArm(NamedTuple):
    """What `insert` needs besides the KV to start decoding a slot (device values)."""

    token: jax.Array            # [] int32: the first sampled token, fed to the next step
    rng: jax.Array              # [2] uint32: the slot's PRNG key after that sample
    settings: SampleSettings    # each field [] (temperature, top_p, top_k, active=True)


class SampleParams(NamedTuple):
    """A request's sampling settings (host values)."""

    temperature: float = 0.0   # 0 = greedy
    top_p: float = 1.0         # nucleus (0, 1]
    top_k: int = 0             # 0 = no top-k filter
    seed: int = 0              # PRNG seed (uint32)


GREEDY = SampleParams()


class TokenOutput(NamedTuple):
    """One sampled token per row, on the host (B rows for a step, 1 for a prefill)."""

    token_ids: np.ndarray     # [B] int64
    logprobs: np.ndarray      # [B] float32: log p(token) at temperature 1
    top_ids: np.ndarray       # [B, A] int64: the A most probable tokens
    top_logprobs: np.ndarray  # [B, A] float32


class StepHandle(NamedTuple):
    """A decode step's output still on the device (its host copy already started)."""

    packed: jax.Array   # [B, 2 + 2A] float32 (see grok.engine.state.pack_output)


class PrefillResult(NamedTuple):
    """What a prefill chunk returns besides the Prefix (device values; read with `read`).

    The sample is of the token after the chunk's last position: meaningful after a prompt's
    last chunk (earlier chunks' samples are computed and ignored).
    """

    packed: jax.Array              # [1, 2 + 2A] float32: the first token's TokenOutput
    arm: SlotArm                   # for `insert`
    echo: Optional[jax.Array]      # [T, 2 + 2A] float32 with echo: each position's next prompt
                                   # token, its logprob and the top A (read with `read_echo`)


class VerifyOutput(NamedTuple):
    """A verify step's tokens on the host: every position's sample, and how many count."""

    tokens: TokenOutput    # each field [B, J, ...]: position j's sample (J = K + 1)
    emitted: np.ndarray    # [B] int64: slot b's tokens are tokens[b, :emitted[b]] (0: inactive)


Handle = Union[StepHandle, PrefillResult]


@runtime_checkable
class Engine(Protocol):
    """The device API the host loop uses (implemented by grok.engine.engine.JaxEngine)."""

    batch_size: int                     # B: slots in a DecodeState
    prefill_buckets: tuple[int, ...]    # chunk sizes T, ascending; a chunk is <= the largest
    prefix_capacities: tuple[int, ...]  # prefix sizes P, ascending; the last is sequence_len
    prefill_batch_sizes: tuple[int, ...]  # N buckets of `prefill_batch`, ascending; () when
    #                                       the engine has none (the host prefills one by one)
    sequence_len: int                   # S: positions per slot (prompt + output)
    vocab_size: int
    eos_token: int
    pad_token: int

    def init_state(self):
        """A DecodeState (grok.engine.state) with every slot empty and inactive."""

    def prefill(self, tokens: Sequence[int], sample: SampleParams, *,
                existing_prefix: Optional[Prefix] = None, echo: bool = False,
                next_token: Optional[int] = None) -> tuple[Prefix, PrefillResult]:
        """Runs one chunk of a prompt (1 <= len(tokens) <= prefill_buckets[-1]).

        With `existing_prefix`, the chunk continues it (chunked prefill, or a prefix-cache hit);
        that prefix is not modified. The returned prefix holds existing + chunk positions.
        With `echo`, the result's `echo[t]` is log p(tokens[t + 1]) for t < len(tokens) - 1 and
        log p(next_token) at the last position (0 where next_token is None).
        """

    def prefill_batch(self, prompts: Sequence[Sequence[int]], samples: Sequence[SampleParams]
                      ) -> list[tuple[Prefix, PrefillResult]]:
        """Several whole short prompts (each <= prefill_buckets[-1]) in one device call.

        Equal to `prefill` of each alone (no echo, no existing prefix).
        """

    def insert(self, prefix: Prefix, arm: SlotArm, state, slot: int):
        """The state with `slot` holding exactly `prefix` (everything else in it cleared),
        armed with `arm` and active. Donates `state`, not `prefix`."""

    def mark_prompt(self, state, slot: int, tokens: Sequence[int]):
        """The state with `tokens` (the prompt of the request in `slot`, inserted) counted by
        the slot's repetition penalty besides its outputs (vLLM's definition); insert clears
        them. Donates `state`."""

    def generate(self, state, *, controls=None):
        """One decode step for every active slot -> (state, StepHandle). Donates `state`.

        `controls` (grok.engine.logits_processing.LogitControls, None: none) process each
        row's logits before sampling: masks, logit_bias, penalties, min_p."""

    def release(self, state, slot: int):
        """The state with `slot` inactive (its KV stays until the next insert clears it)."""

    def slice_prefix(self, prefix: Prefix, length: int) -> Prefix:
        """The first `length` positions of `prefix` (0 <= length <= prefix.length) as a new
        Prefix of the smallest capacity holding them; `prefix` is not modified (a prefix
        cache continues a hit that ends inside a cached prompt from this; a constrained
        request's slot gets its prompt but the last token, which may leave none)."""

    def extract_prefix(self, state, slot: int, length: int) -> Prefix:
        """The slot's first `length` positions (a finished request's prompt and the outputs
        fed back so far) as a new Prefix of the smallest capacity holding them. `state` is only
        read, never donated; positions the slot has not filled hold nothing meaningful, so the
        caller keeps `length` within them. For a prefix cache: a conversation's next turn
        continues the previous turn's prompt and answer."""

    def read(self, handle: Handle) -> TokenOutput:
        """A step's or a prefill's sampled tokens on the host (waits for the device)."""

    def read_echo(self, result: PrefillResult) -> TokenOutput:
        """A prefill's echo scores on the host, one row per chunk position: token_ids [T] the
        next prompt token, logprobs [T] its log p, top_ids / top_logprobs [T, A] the A most
        probable tokens at that position."""

    # ---- speculative decoding (optional: a scheduler asks for it only when configured) ----
    def verify(self, state, drafts: Sequence[Sequence[int]], k: int, alternatives: bool = True
               ) -> tuple[object, VerifyOutput]:
        """One step scoring each active slot's last token and its drafts (drafts[b]: at most
        k ids; [] = a plain decode step for that slot) -> (state, VerifyOutput), on the host.
        Without `alternatives` (no slot reports them) the outputs' top ids and logprobs are
        zeros, and the step is cheaper.

        Slot b emits its accepted drafts (those equal to the token sampled at their position,
        with the key a decode step would use there) plus the next sampled token: exactly the
        tokens decode steps would give. Its length advances by what it emitted; rejected
        drafts' KV is never visible later. Donates `state`."""
        raise NotImplementedError("this engine does not verify drafts (speculative decoding)")

    def step_costs(self, state, k: int, sampled: bool = False) -> tuple[object, float, float]:
        """(state, seconds of a decode step, seconds of a k-draft verify step) measured at
        this batch size in `state` (donated; every slot free, and free again after), every
        slot greedy or (`sampled`) sampling: the cost model of the speculation gate."""
        raise NotImplementedError("this engine does not verify drafts (speculative decoding)")

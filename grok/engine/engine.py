"""JaxEngine: the Engine API (grok.engine.api) on compiled JAX functions over one mesh.

Every device function (grok.engine.steps) is jitted with explicit shardings and cached by
its static shape key, so each shape compiles once and nothing recompiles while serving:
- prefill: one program per (prefix capacity in, chunk bucket T, echo); a prompt's first
  chunk has no prefix in and gives a prefix of capacity T;
- batched prefill: one per (N, T);
- insert: one per prefix capacity P; slice_prefix: one per (P in, P out);
- sample_step (`generate`): one per kv_len bucket (`kv_len_buckets(S)`), each reading only
  the first kv_len cache positions; `generate` picks the smallest bucket holding the longest
  active slot, from lengths the engine tracks on the host (grok.engine.live_lengths: no
  device sync); release: one.
`precompile()` (grok.engine.precompile) compiles what a prompt of every bucket needs up front
(first chunks, their inserts, and the decode variants up to the one a prompt of the largest
bucket starts in); `precompile_all()` adds every continuation, batch shape and decode variant.
A longer context compiles its decode variant on first use (once per bucket, then never again).

Glossary: B slots, N prompts per batched call, T chunk bucket, P prefix capacity,
S sequence_len, V vocabulary.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from grok.config import LanguageModelConfig
from grok.engine import steps
from grok.engine.api import (GREEDY, Handle, Prefix, PrefillResult, SampleParams, SlotArm,
                             StepHandle, TokenOutput)
from grok.engine.logits_processing import LogitControls
from grok.engine.live_lengths import (HostShadow, SlotLengths, after_step, longest_after_step,
                                      with_slot)
from grok.engine.precompile import Precompiling
from grok.engine.speculative import SpeculativeSteps
from grok.engine.state import (DecodeState, capacity_for, empty_prefix, new_state,
                               prefix_capacities, prefix_shardings, slice_prefix,
                               state_shardings, to_host, unpack_output)
from grok.model.transformer import MIN_KV_LEN, init_memory, kv_len_buckets, live_kv_len
from grok.ops.platform import compute_platform
from grok.parallel import sharding
from grok.runtime_config import RuntimeConfig

SETTINGS_FIELDS = 3   # temperature, top_p, top_k as one float32 row


def _batch_sizes(largest: int) -> tuple[int, ...]:
    """Batched-prefill sizes N: powers of two from 2 up to `largest`, and `largest`."""
    sizes, n = set(), 2
    while n < largest:
        sizes.add(n)
        n *= 2
    return tuple(sorted(sizes | ({largest} if largest > 1 else set())))


def _settings_row(sample: SampleParams) -> np.ndarray:
    return np.asarray([sample.temperature, sample.top_p, sample.top_k], np.float32)


class JaxEngine(SpeculativeSteps, Precompiling):
    """The Engine protocol (see grok.engine.api) for one model, mesh and set of weights;
    `verify` and `step_costs` come from grok.engine.speculative, `precompile` and
    `precompile_all` from grok.engine.precompile."""

    def __init__(self, config: LanguageModelConfig, runtime: RuntimeConfig, mesh: Mesh,
                 forward: Callable, params: Any, param_shardings: Any, batch_size: int,
                 min_kv_len: int = MIN_KV_LEN):
        """min_kv_len: the shortest decode variant's cache length (tests use a few positions
        to see several variants on a tiny sequence_len)."""
        self.config, self.runtime, self.mesh = config, runtime, mesh
        self.params = params
        self.batch_size = batch_size
        self.prefill_buckets = runtime.prefill_buckets
        self.sequence_len = config.sequence_len
        self.prefix_capacities = prefix_capacities(self.prefill_buckets, self.sequence_len)
        self.prefill_batch_sizes = _batch_sizes(runtime.max_prefill_batch)
        self.vocab_size, self.eos_token, self.pad_token = (
            config.vocab_size, config.eos_token, config.pad_token)
        self._forward = forward
        self._params_sh = param_shardings
        self._rep = sharding.replicated(mesh)
        make_state = functools.partial(new_state, config, runtime, batch_size)
        self._state_sh = state_shardings(jax.eval_shape(make_state), mesh)
        self._jits: dict[tuple, Any] = {}
        if not (isinstance(min_kv_len, int) and min_kv_len >= 1):
            raise ValueError(f"min_kv_len must be an int >= 1, got {min_kv_len!r}")
        self.min_kv_len = min_kv_len
        self.kv_len_buckets = tuple(kv_len_buckets(self.sequence_len, min_kv_len))
        # Host-side lengths (grok.engine.live_lengths): per state (by its memory.step array),
        # the slot lengths; per prefix (by its length array), its length.
        self._slot_lengths, self._prefix_lengths = HostShadow(), HostShadow()
        self.decode_steps_by_kv_len: collections.Counter = collections.Counter()
        # The reference's names for the compiled functions.
        self.new_memory = jax.jit(make_state, out_shardings=self._state_sh)
        self.sample_step = self.sample_step_fn(self.sequence_len)   # reads the whole cache
        self.release_slot = jax.jit(steps.release, in_shardings=(self._state_sh, self._rep),
                                    out_shardings=self._state_sh, donate_argnums=(0,))

    # ---- shardings and compiled functions, by static key ---------------------------------------
    def _prefix_sh(self, capacity: int) -> Prefix:
        shape = jax.eval_shape(lambda: empty_prefix(self.config, self.runtime, capacity))
        return prefix_shardings(shape, self.mesh)

    def _arm_sharding(self) -> SlotArm:
        return SlotArm(self._rep, self._rep, steps.SampleSettings(*(self._rep,) * 4))

    def _on_mesh_platform(self, fn: Callable) -> Callable:
        """fn traced for the mesh's platform (grok.ops.platform), not the host's backend."""
        platform = self.mesh.devices.flat[0].platform

        @functools.wraps(fn)
        def traced(*args):
            with compute_platform(platform):
                return fn(*args)
        return traced

    def _jit(self, key: tuple, build: Callable[[], Any]):
        if key not in self._jits:
            self._jits[key] = build()
        return self._jits[key]

    def prefill_fn(self, capacity_in: Optional[int], bucket: int, echo: bool):
        """The compiled prefill for a prefix of capacity_in (None: a first chunk) and bucket."""
        capacity = capacity_for((capacity_in or 0) + bucket, self.prefix_capacities)
        rep, forward = self._rep, self._forward
        outs = (self._prefix_sh(capacity), rep, self._arm_sharding()) + ((rep,) if echo else ())

        @self._on_mesh_platform
        def prefill_memory(params, tokens, length, prefix, targets, settings, seed):
            # (named as the reference's compiled prefill, for XLA dumps and profiles)
            if prefix is None:
                prefix = empty_prefix(self.config, self.runtime, capacity)
            out = steps.prefill(forward, params, tokens, length, prefix, targets, settings,
                                seed, capacity=capacity, echo=echo)
            return out if echo else out[:3]

        def build():
            prefix_sh = None if capacity_in is None else self._prefix_sh(capacity_in)
            ins = (self._params_sh, rep, rep, prefix_sh, rep if echo else None, rep, rep)
            return jax.jit(prefill_memory, in_shardings=ins, out_shardings=outs)
        return self._jit(("prefill", capacity_in, bucket, echo), build)

    def prefill_batch_fn(self, n: int, bucket: int):
        capacity = capacity_for(bucket, self.prefix_capacities)
        empty = lambda rows, positions: init_memory(self.config, rows, positions, self.runtime)

        def build():
            rep = self._rep
            outs = ((self._prefix_sh(capacity),) * n, (rep,) * n, (self._arm_sharding(),) * n)
            fn = functools.partial(steps.prefill_batch, self._forward, empty, capacity=capacity)

            @self._on_mesh_platform
            def rows(*args):
                prefixes, packed, arms = fn(*args)
                return prefixes, tuple(packed[i:i + 1] for i in range(n)), arms
            return jax.jit(rows, in_shardings=(self._params_sh,) + (rep,) * 4, out_shardings=outs)
        return self._jit(("prefill_batch", n, bucket), build)

    def insert_fn(self, capacity: int):
        def build():
            ins = (self._state_sh, self._prefix_sh(capacity), self._arm_sharding(), self._rep)
            return jax.jit(steps.insert, in_shardings=ins, out_shardings=self._state_sh,
                           donate_argnums=(0,))
        return self._jit(("insert", capacity), build)

    def sample_step_fn(self, kv_len: int, processed: bool = False):
        """The compiled decode step `sample_step(params, state) -> (state, packed)` whose
        attention reads the first kv_len cache positions (one of `kv_len_buckets`); with
        `processed`, `sample_step(params, state, controls)` processes the logits first
        (grok.engine.logits_processing)."""
        if kv_len not in self.kv_len_buckets:
            raise ValueError(f"kv_len must be one of the decode variants {self.kv_len_buckets}, "
                             f"got {kv_len!r}")
        forward = self._forward

        @self._on_mesh_platform
        def sample_step(params, state, controls=None):
            # (named as the reference's compiled decode step, for XLA dumps and profiles)
            return steps.generate(lambda *args: forward(*args, kv_len), params, state, controls)

        def build():
            ins = (self._params_sh, self._state_sh) + ((self._rep,) if processed else ())
            return jax.jit(sample_step, in_shardings=ins,
                           out_shardings=(self._state_sh, self._rep), donate_argnums=(1,))
        return self._jit(("sample_step", kv_len, processed), build)

    def kv_len_for(self, state: DecodeState) -> int:
        """The decode variant the next `generate(state)` runs: the smallest bucket holding
        every active slot's context plus its new token (sequence_len for a state this engine
        did not make, whose lengths it does not know)."""
        lengths = self._slot_lengths.get(state.memory.step)
        if lengths is None:
            return self.sequence_len
        longest = min(longest_after_step(lengths), self.sequence_len)
        return live_kv_len(longest, self.sequence_len, self.min_kv_len)

    def _prefix_length(self, prefix: Prefix) -> int:
        """Host bound on the prefix's length: exact when this engine made it, else its
        capacity (a Prefix never holds more)."""
        return self._prefix_lengths.get(prefix.length, prefix.capacity)

    def _lengths_of(self, state: DecodeState) -> SlotLengths:
        """Host slot lengths of `state`; a state made elsewhere counts as full everywhere."""
        unknown = (self.sequence_len,) * self.batch_size
        return self._slot_lengths.get(state.memory.step, unknown)

    # ---- the Engine API --------------------------------------------------------------------------
    def init_state(self) -> DecodeState:
        state = self.new_memory()
        self._slot_lengths.set(state.memory.step, (None,) * self.batch_size)
        return state

    def bucket_for(self, n: int) -> int:
        """The smallest prefill bucket holding n tokens (ValueError past the largest)."""
        if not 1 <= n <= self.prefill_buckets[-1]:
            raise ValueError(f"a prefill chunk must have 1 to {self.prefill_buckets[-1]} tokens "
                             f"(the largest prefill bucket), got {n}")
        return next(b for b in self.prefill_buckets if b >= n)

    def _padded(self, tokens: Sequence[int], bucket: int) -> np.ndarray:
        row = np.full((bucket,), self.pad_token, np.int32)
        row[:len(tokens)] = np.asarray(tokens, np.int32)
        return row

    def prefill(self, tokens: Sequence[int], sample: SampleParams = GREEDY, *,
                existing_prefix: Optional[Prefix] = None, echo: bool = False,
                next_token: Optional[int] = None) -> tuple[Prefix, PrefillResult]:
        """See grok.engine.api.Engine.prefill."""
        n = len(tokens)
        bucket = self.bucket_for(n)
        capacity_in = None if existing_prefix is None else existing_prefix.capacity
        fn = self.prefill_fn(capacity_in, bucket, echo)
        targets = None
        if echo:
            following = list(tokens[1:]) + [self.pad_token if next_token is None else next_token]
            targets = self._padded(following, bucket)[None]
        out = fn(self.params, self._padded(tokens, bucket)[None], np.int32(n), existing_prefix,
                 targets, _settings_row(sample), np.uint32(sample.seed))
        prefix, packed, arm = out[:3]
        before = 0 if existing_prefix is None else self._prefix_length(existing_prefix)
        self._prefix_lengths.set(prefix.length, before + n)
        return prefix, PrefillResult(packed, arm, out[3] if echo else None)

    def prefill_batch(self, prompts: Sequence[Sequence[int]], samples: Sequence[SampleParams]
                      ) -> list[tuple[Prefix, PrefillResult]]:
        """See grok.engine.api.Engine.prefill_batch; more prompts than the largest batch size
        run in several calls, a single prompt as `prefill`."""
        if len(prompts) != len(samples):
            raise ValueError(f"prefill_batch: {len(prompts)} prompts but {len(samples)} samples")
        largest = self.prefill_batch_sizes[-1] if self.prefill_batch_sizes else 1
        results = []
        for start in range(0, len(prompts), largest):
            group, settings = prompts[start:start + largest], samples[start:start + largest]
            if len(group) == 1:
                results.append(self.prefill(group[0], settings[0]))
                continue
            bucket = self.bucket_for(max(len(p) for p in group))
            for p in group:
                self.bucket_for(len(p))   # every prompt non-empty
            n = next(s for s in self.prefill_batch_sizes if s >= len(group))
            tokens = np.full((n, bucket), self.pad_token, np.int32)
            lengths, rows = np.zeros((n,), np.int32), np.zeros((n, SETTINGS_FIELDS), np.float32)
            seeds = np.zeros((n,), np.uint32)
            for i, (p, s) in enumerate(zip(group, settings)):
                tokens[i], lengths[i] = self._padded(p, bucket), len(p)
                rows[i], seeds[i] = _settings_row(s), s.seed
            prefixes, packed, arms = self.prefill_batch_fn(n, bucket)(
                self.params, tokens, lengths, rows, seeds)
            for i, p in enumerate(group):
                self._prefix_lengths.set(prefixes[i].length, len(p))
                results.append((prefixes[i], PrefillResult(packed[i], arms[i], None)))
        return results

    def insert(self, prefix: Prefix, arm: SlotArm, state: DecodeState, slot: int) -> DecodeState:
        """See grok.engine.api.Engine.insert (donates `state`)."""
        self._check_slot(slot)
        lengths = with_slot(self._lengths_of(state), slot, self._prefix_length(prefix))
        state = self.insert_fn(prefix.capacity)(state, prefix, arm, np.int32(slot))
        self._slot_lengths.set(state.memory.step, lengths)
        return state

    def mark_prompt(self, state: DecodeState, slot: int, tokens: Sequence[int]) -> DecodeState:
        """See grok.engine.api.Engine.mark_prompt (one program: tokens padded to
        sequence_len)."""
        self._check_slot(slot)
        if not 1 <= len(tokens) <= self.sequence_len:
            raise ValueError(f"mark_prompt: 1 to {self.sequence_len} tokens (sequence_len), "
                             f"got {len(tokens)}")
        padded = np.zeros((self.sequence_len,), np.int32)
        padded[:len(tokens)] = tokens

        def build():
            return jax.jit(steps.mark_prompt, in_shardings=(self._state_sh,) + (self._rep,) * 3,
                           out_shardings=self._state_sh, donate_argnums=(0,))
        lengths = self._slot_lengths.get(state.memory.step)
        state = self._jit(("mark_prompt",), build)(state, padded, np.int32(len(tokens)),
                                                   np.int32(slot))
        if lengths is not None:
            self._slot_lengths.set(state.memory.step, lengths)
        return state

    def generate(self, state: DecodeState, kv_len: Optional[int] = None,
                 controls: Optional[LogitControls] = None) -> tuple[DecodeState, StepHandle]:
        """See grok.engine.api.Engine.generate (donates `state`; starts the host copy).

        Runs the `sample_step` variant `kv_len_for(state)`; `kv_len` (a bucket at least that
        long) forces a longer one, e.g. sequence_len for the whole-cache reference. With
        `controls`, the processed variant of that step runs."""
        needed = self.kv_len_for(state)
        if kv_len is None:
            kv_len = needed
        elif not (kv_len in self.kv_len_buckets and kv_len >= needed):
            raise ValueError(f"generate: kv_len must be a decode variant >= {needed} (the live "
                             f"context), one of {self.kv_len_buckets}; got {kv_len!r}")
        lengths = self._slot_lengths.get(state.memory.step)
        step = self.sample_step_fn(kv_len, controls is not None)
        extra = () if controls is None else (controls,)
        state, packed = step(self.params, state, *extra)
        packed.copy_to_host_async()
        if lengths is not None:
            self._slot_lengths.set(state.memory.step, after_step(lengths, self.sequence_len))
        self.decode_steps_by_kv_len[kv_len] += 1
        return state, StepHandle(packed)

    def release(self, state: DecodeState, slot: int) -> DecodeState:
        self._check_slot(slot)
        lengths = self._slot_lengths.get(state.memory.step)
        state = self.release_slot(state, np.int32(slot))
        if lengths is not None:
            self._slot_lengths.set(state.memory.step, with_slot(lengths, slot, None))
        return state

    def slice_prefix(self, prefix: Prefix, length: int) -> Prefix:
        """See grok.engine.api.Engine.slice_prefix (one program per capacity pair)."""
        if not 0 <= length <= prefix.capacity:
            raise ValueError(f"slice_prefix: length must be in [0, {prefix.capacity}], "
                             f"got {length}")
        capacity = capacity_for(length, self.prefix_capacities)
        capacity = min(capacity, prefix.capacity)

        def build():
            fn = functools.partial(slice_prefix, capacity=capacity)
            return jax.jit(fn, in_shardings=(self._prefix_sh(prefix.capacity), self._rep),
                           out_shardings=self._prefix_sh(capacity))
        out = self._jit(("slice_prefix", prefix.capacity, capacity), build)(
            prefix, np.int32(length))
        self._prefix_lengths.set(out.length, length)
        return out

    def extract_prefix(self, state: DecodeState, slot: int, length: int) -> Prefix:
        """See grok.engine.api.Engine.extract_prefix (one program per capacity; no donation)."""
        from grok.engine.state import extract_prefix

        self._check_slot(slot)
        if not 1 <= length <= self.sequence_len:
            raise ValueError(f"extract_prefix: length must be in [1, {self.sequence_len}] "
                             f"(sequence_len), got {length}")
        capacity = capacity_for(length, self.prefix_capacities)

        def build():
            fn = functools.partial(extract_prefix, capacity=capacity)
            return jax.jit(fn, in_shardings=(self._state_sh, self._rep, self._rep),
                           out_shardings=self._prefix_sh(capacity))
        out = self._jit(("extract_prefix", capacity), build)(state, np.int32(slot),
                                                             np.int32(length))
        self._prefix_lengths.set(out.length, length)
        return out

    def read(self, handle: Handle) -> TokenOutput:
        return unpack_output(to_host(handle.packed))

    def read_echo(self, result: PrefillResult) -> TokenOutput:
        if result.echo is None:
            raise ValueError("read_echo: this prefill ran without echo=True")
        return unpack_output(to_host(result.echo))

    def _check_slot(self, slot: int) -> None:
        if not (isinstance(slot, (int, np.integer)) and 0 <= slot < self.batch_size):
            raise ValueError(f"slot must be an int in [0, {self.batch_size}), got {slot!r}")

"""The engine's speculative capability: `verify` (drafts scored in one step) and its costs.

`SpeculativeSteps` is a mixin of grok.engine.engine.JaxEngine: it compiles
grok.engine.verify.verify once per (kv_len bucket, K) with the engine's shardings, keeps the
engine's host-side slot lengths exact (each slot advances by the tokens it emitted), and
measures what a verify step costs next to a decode step (`step_costs`), from which the
scheduler's gate derives its break-even (grok.serving.speculation).

`verify` reads its result before returning: the next drafts are made from the tokens it
accepts, so nothing could be dispatched before they are known anyway.

Glossary: B slots, K drafts per slot, J = K + 1 positions.
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import numpy as np

from grok.engine.api import SampleParams, VerifyOutput
from grok.engine.live_lengths import with_slot
from grok.engine.state import DecodeState, to_host, unpack_output
from grok.engine.verify import verify
from grok.model.transformer import live_kv_len

COST_REPEATS = 5   # timed runs of each step kind (the median counts)


class SpeculativeSteps:
    """`verify` and `step_costs` for JaxEngine (uses its jit cache, shardings and lengths)."""

    def verify_fn(self, kv_len: int, k: int, alternatives: bool = True):
        """The compiled verify(params, state, drafts [B, K], num_drafts [B]) reading kv_len
        cache positions (one of `kv_len_buckets`); without `alternatives`, the variant whose
        outputs carry no top ids and logprobs (zeros)."""
        forward, pad = self._forward, self.pad_token

        @self._on_mesh_platform
        def verify_step(params, state, drafts, num_drafts):
            fwd = lambda *args: forward(*args, kv_len)
            return verify(fwd, params, state, drafts, num_drafts, pad, alternatives)

        def build():
            rep = self._rep
            return jax.jit(verify_step, in_shardings=(self._params_sh, self._state_sh, rep, rep),
                           out_shardings=(self._state_sh, rep, rep), donate_argnums=(1,))
        return self._jit(("verify", kv_len, k, alternatives), build)

    def verify(self, state: DecodeState, drafts: Sequence[Sequence[int]], k: int,
               alternatives: bool = True) -> tuple[DecodeState, VerifyOutput]:
        """See grok.engine.api.Engine.verify (donates `state`; returns host values)."""
        if len(drafts) != self.batch_size:
            raise ValueError(f"verify: {len(drafts)} draft lists for {self.batch_size} slots")
        if not (isinstance(k, int) and k >= 1) or any(len(d) > k for d in drafts):
            raise ValueError(f"verify: k must be an int >= 1 holding every draft, got {k!r}")
        table = np.full((self.batch_size, k), self.pad_token, np.int32)
        counts = np.zeros((self.batch_size,), np.int32)
        for slot, draft in enumerate(drafts):
            table[slot, :len(draft)], counts[slot] = draft, len(draft)
        lengths = self._slot_lengths.get(state.memory.step)
        if lengths is None:
            kv_len = self.sequence_len
        else:
            longest = max((n + 1 + k for n in lengths if n is not None), default=1)
            kv_len = live_kv_len(min(longest, self.sequence_len), self.sequence_len,
                                 self.min_kv_len)
        fn = self.verify_fn(kv_len, k, alternatives)
        state, packed, emitted = fn(self.params, state, table, counts)
        emitted = to_host(emitted)
        if lengths is not None:
            for slot, n in enumerate(lengths):
                if n is not None:
                    lengths = with_slot(lengths, slot, min(n + int(emitted[slot]),
                                                           self.sequence_len))
            self._slot_lengths.set(state.memory.step, lengths)
        packed = to_host(packed)                                                # [B, J, F]
        b, j, f = packed.shape
        flat = unpack_output(packed.reshape(b * j, f))
        tokens = type(flat)(*(a.reshape((b, j) + a.shape[1:]) for a in flat))
        return state, VerifyOutput(tokens, emitted.astype(np.int64))

    def step_costs(self, state: DecodeState, k: int, sampled: bool = False
                   ) -> tuple[DecodeState, float, float]:
        """Median seconds of a decode step and of a K-draft verify step (each dispatched and
        read back), with every slot active, greedy or (`sampled`) sampling at temperature 1,
        and drafting K tokens, on the shortest variant; the verify step without alternatives
        (requests rarely ask for logprobs).
        Runs in `state` (donated; every slot must be free: they are used and freed again,
        so no second KV cache is allocated). In a multi-process job every process
        returns process 0's figures, so their schedulers take the same steps."""
        # (an all-greedy verify step skips the sampler's candidates: the two costs differ)
        prefix, result = self.prefill([1], SampleParams(temperature=1.0 if sampled else 0.0))
        for slot in range(self.batch_size):
            state = self.insert(prefix, result.arm, state, slot)
        drafts = [[1] * k] * self.batch_size
        decode, verify_times = [], []
        for _ in range(COST_REPEATS + 1):     # the first run of each compiles
            start = time.perf_counter()
            state, handle = self.generate(state)
            self.read(handle)
            decode.append(time.perf_counter() - start)
            start = time.perf_counter()
            state, _ = self.verify(state, drafts, k, alternatives=False)
            verify_times.append(time.perf_counter() - start)
        for slot in range(self.batch_size):
            state = self.release(state, slot)
        costs = np.asarray([np.median(decode[1:]), np.median(verify_times[1:])], np.float64)
        if jax.process_count() > 1:    # every process gates alike: process 0's measurement
            from jax.experimental import multihost_utils
            costs = np.asarray(multihost_utils.broadcast_one_to_all(costs))
        return state, float(costs[0]), float(costs[1])


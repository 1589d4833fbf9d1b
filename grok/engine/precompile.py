"""The engine's ahead-of-time compiling: `precompile` and `precompile_all`.

`Precompiling` is a mixin of grok.engine.engine.JaxEngine: it compiles the engine's programs
by running them once on an empty state, so their first request does not wait for XLA.
`precompile` compiles what a prompt of every prefill bucket needs (its first chunk, its
insert, and the decode variants it can start in, `startup_kv_lens`); `precompile_all` adds
every continuation chunk, batched-prefill shape, decode variant, `extract_prefix` capacity and
echo variant.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from grok.engine.api import GREEDY
from grok.engine.logits_processing import neutral_controls
from grok.engine.state import empty_prefix
from grok.model.transformer import live_kv_len


class Precompiling:
    """`precompile`, `precompile_all` and `startup_kv_lens` for JaxEngine (uses its compiled
    functions, buckets and shardings)."""

    def startup_kv_lens(self) -> tuple[int, ...]:
        """The decode variants `precompile` compiles: every one a prompt of up to the largest
        prefill bucket starts decoding in (a longer context compiles its variant on first use:
        startup time grows with each variant, and most requests never need the long ones)."""
        first_step = min(self.prefill_buckets[-1] + 1, self.sequence_len)
        largest = live_kv_len(first_step, self.sequence_len, self.min_kv_len)
        return tuple(k for k in self.kv_len_buckets if k <= largest)

    def precompile(self) -> None:
        """Compiles every bucket's first chunk, its insert, and the decode variants of
        `startup_kv_lens` (as the reference compiles its buckets before serving), by running
        them once on an empty state."""
        self._run_decode_variants(self.startup_kv_lens())

    def _run_decode_variants(self, kv_lens: Sequence[int]) -> None:
        state = self.init_state()
        for bucket in self.prefill_buckets:
            prefix, result = self.prefill([1] * bucket)
            state = self.insert(prefix, result.arm, state, 0)
        packed = None
        controls = neutral_controls(self.batch_size, self.vocab_size)
        for kv_len in kv_lens:   # each variant once (the slot's context is irrelevant here)
            state, packed = self.sample_step_fn(kv_len)(self.params, state)
            state, packed = self.sample_step_fn(kv_len, True)(self.params, state, controls)
        state = self.release_slot(state, np.int32(0))
        jax.block_until_ready((state, packed))

    def precompile_all(self) -> None:
        """`precompile`, plus every continuation chunk (from each capacity that can hold a
        prompt), every batched-prefill shape, every decode variant and every `extract_prefix`
        capacity, and the echo (prompt-scoring) variant of every prefill chunk, so no request
        ever waits for XLA."""
        self._run_decode_variants(self.kv_len_buckets)
        state = self.init_state()
        for bucket in self.prefill_buckets:
            self.prefill([1] * bucket, echo=True)
        for capacity in self.prefix_capacities:
            prefix = empty_prefix(self.config, self.runtime, capacity)
            prefix = jax.device_put(prefix, self._prefix_sh(capacity))
            for bucket in self.prefill_buckets:
                for echo in (False, True):
                    out, result = self.prefill([1] * bucket, existing_prefix=prefix, echo=echo)
                state = self.insert(out, result.arm, state, 0)
        for n in self.prefill_batch_sizes:
            for bucket in self.prefill_buckets:
                self.prefill_batch([[1] * bucket] * n, [GREEDY] * n)
        for capacity in self.prefix_capacities:    # a finished request's KV, for the cache
            self.extract_prefix(state, 0, capacity)
        state = self.mark_prompt(state, 0, [1])     # a request with a repetition penalty
        jax.block_until_ready(state)

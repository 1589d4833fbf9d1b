"""Speculative decoding in the scheduler: which slots draft, the verify step, the gate.

With `speculative_tokens` K > 0 the scheduler may replace a decode step by a verify step
(grok.engine.api.Engine.verify): each slot whose gate is open drafts up to K tokens from its
own prompt + output (grok.serving.drafting), the engine scores every slot's last token and
drafts at once, and each slot takes the tokens it emitted (accepted drafts + the next sampled
token) one by one through the scheduler's usual token handling, so stop tokens, stop strings,
max_tokens, logprobs and cancel behave exactly as without speculation. The tokens are the
same as with speculation off (the engine samples each position with the key a decode step
would use there); only how many arrive per step changes. Slots without a draft take one token
in the same step.

Gate. A verify step costs what `break_even` decode steps cost: the ratio of the engine's
measured step times (`Engine.step_costs`, at this batch size and K), not a constant; one ratio
for batches of greedy requests, one (`sampled_break_even`) for batches with a sampling request
(an all-greedy verify step skips the sampler's candidates, so it is cheaper). Each slot
keeps an average of the tokens its verify steps gave (a step with nothing to draft counts as
1). A slot whose average falls below break-even stops drafting for a while (8 steps, doubling
on each failed retry up to 256), then retries; the scheduler stays on the pipelined decode path
meanwhile. A verify step runs only when the slots' expected tokens beat break-even for the
whole batch: sum(expected) >= break_even * running slots; where they do not, the drafting
slots back off as a closed gate does (each retry reads the step in flight first, a stall).

Multi-host: drafts come from token ids every process holds, the gate from emitted counts every
process sees alike and from step costs the engine agrees on (process 0's measurement), so
every process runs the same steps.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from grok.runtime_config import SPECULATIVE_METHODS as METHODS
from grok.serving.drafting import propose

MIN_BACKOFF, MAX_BACKOFF = 8, 256   # steps a closed gate waits before it retries
SMOOTHING = 0.5                     # weight of the newest verify step in a slot's average


def check_settings(tokens, method) -> None:
    """ValueError naming the field unless tokens is an int >= 0 and method is known."""
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise ValueError(f"speculative_tokens must be an int >= 0 (0 = off), got {tokens!r}")
    if method not in METHODS:
        raise ValueError(f"speculative_method must be one of {METHODS}, got {method!r}")


@dataclasses.dataclass
class _Gate:
    """One slot's acceptance record."""

    tokens_per_step: float          # average tokens its verify steps emitted
    wait: int = 0                   # decode steps until it drafts again (0: open)
    backoff: int = MIN_BACKOFF

    def close(self) -> None:
        """Stops drafting for `backoff` decode steps; the next closing waits twice as long."""
        self.wait, self.backoff = self.backoff, min(2 * self.backoff, MAX_BACKOFF)


class Speculation:
    """The speculative side of one Scheduler; see the module docstring.

    `break_even`: decode steps one all-greedy verify step costs, `sampled_break_even` one
    with a sampling row (None: call `measure` before serving; a fixed `break_even` stands for
    both). Counters: `draft_tokens` (drafted and verified), `accepted_tokens` (of those,
    accepted), `verify_steps`.
    """

    def __init__(self, engine, tokens: int, method: str = "ngram",
                 break_even: Optional[float] = None):
        check_settings(tokens, method)
        self.engine, self.k, self.method = engine, tokens, method
        self.break_even = self.sampled_break_even = break_even
        self._gates: dict[int, _Gate] = {}
        self.draft_tokens = self.accepted_tokens = self.verify_steps = 0

    def _gate(self, slot: int) -> _Gate:
        if slot not in self._gates:
            self._gates[slot] = _Gate(float(self.k + 1))
        return self._gates[slot]

    def forget(self, slot: int) -> None:
        """The slot's request ended: the next one starts with an open gate."""
        self._gates.pop(slot, None)

    def wants(self, running: dict) -> bool:
        """Whether some running slot would draft this step (the scheduler then reads the
        step in flight first: drafts continue its tokens)."""
        return any(self._gate(slot).wait == 0 for slot in running)

    def decoded(self, running: dict) -> None:
        """A plain decode step ran: closed gates count it."""
        for slot in running:
            gate = self._gate(slot)
            gate.wait = max(0, gate.wait - 1)

    def _limit(self, stream) -> int:
        """Drafts the stream may verify: within K, its max_tokens (the last emitted token is
        a sampled one) and the slot's positions (its last token and drafts are written)."""
        remaining = stream.request.max_tokens - len(stream.output_ids)
        positions = self.engine.sequence_len - len(stream.prompt_ids) - stream.fed - 1
        return max(0, min(self.k, remaining - 1, positions))

    def _break_even_for(self, running: dict) -> float:
        """Decode steps a verify step of this batch costs: a sampling row makes it dearer."""
        sampling = any(stream.request.temperature > 0 for stream in running.values())
        return self.sampled_break_even if sampling else self.break_even

    def plan(self, running: dict) -> Optional[dict]:
        """{slot: drafts} for this step's verify, or None: run a decode step instead."""
        break_even = self._break_even_for(running)
        drafts, expected = {}, 0.0
        for slot, stream in running.items():
            gate = self._gate(slot)
            draft = []
            if gate.wait == 0:
                draft = propose(stream.prompt_ids + stream.output_ids, self._limit(stream))
                if not draft:
                    self._record(gate, 1, break_even)   # nothing to draft: a 1-token step
            if draft:
                drafts[slot] = draft
                expected += gate.tokens_per_step
            else:
                expected += 1.0
        if not drafts:
            return None
        if expected < break_even * len(running):
            for slot in drafts:                  # not worth it for the batch: try later
                self._gate(slot).close()
            return None
        return drafts

    def measure(self, state):
        """Sets `break_even` from the engine's step costs, measured in `state` (all slots
        free; donated) -> the state."""
        state, decode, verify = self.engine.step_costs(state, self.k)
        self.break_even = verify / max(decode, 1e-9)
        state, decode, verify = self.engine.step_costs(state, self.k, sampled=True)
        self.sampled_break_even = verify / max(decode, 1e-9)
        return state

    @staticmethod
    def _record(gate: _Gate, emitted: int, break_even: float) -> None:
        gate.tokens_per_step += SMOOTHING * (emitted - gate.tokens_per_step)
        if gate.tokens_per_step < break_even:
            gate.close()
            gate.tokens_per_step = break_even     # a retry starts at break-even
        else:
            gate.backoff = MIN_BACKOFF

    def table(self, drafts: dict) -> list:
        """Every slot's drafts for Engine.verify ([] where none)."""
        return [drafts.get(slot, []) for slot in range(self.engine.batch_size)]

    def take(self, out, running: dict, drafts: dict,
             take: Callable[[object, object, int], list]) -> list:
        """Hands a verify step's emitted tokens (out: VerifyOutput) to the scheduler, one by
        one through take(stream, TokenOutput, row) -> its events; updates the gates."""
        self.verify_steps += 1
        break_even = self._break_even_for(running)
        events = []
        for slot, stream in running.items():
            emitted = int(out.emitted[slot])
            stream.fed += emitted           # its last token and the accepted drafts
            if slot in drafts:
                self.draft_tokens += len(drafts[slot])
                self.accepted_tokens += emitted - 1
                self._record(self._gate(slot), emitted, break_even)
            rows = type(out.tokens)(*(a[slot] for a in out.tokens))   # [J, ...] per field
            for j in range(emitted):
                if stream.done:
                    break
                events += take(stream, rows, j)
        return events

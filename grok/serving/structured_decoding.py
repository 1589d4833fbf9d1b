"""How the scheduler serves requests that process their logits: `StructuredDecoding`.

A request with a constraint (json_schema, regex, choice, grammar), logit_bias, min_p,
penalties or min_tokens (grok.serving.structured.fields.processes_logits) gets a `Structured`
at admission (grok.serving.structured_streams) and takes every token from the processed
decode step. Hooks, each called by grok.serving.scheduler.Scheduler:

- admission: `admit` builds the request's Structured (every process of a multi-host job
  builds the same from the same admission) and counts the requests with a grammar;
- insertion: `insert` gives the slot the prompt but its last token, which the first
  decode step feeds (`fed` counts it as -1), so the first output token comes from a
  processed step too (the prefill's own first token is not taken), and marks the prompt's
  tokens for a repetition penalty (which counts them, as vLLM defines it);
- each step: `controls` builds the step's LogitControls (None: the plain step runs);
  `needs_last_token` says a grammar's next mask needs the step in flight read before the
  next dispatch; `processes` keeps speculation's verify step off while it holds;
- each token: `advance` feeds a grammar the sampled token (EOS aside) and says whether the
  grammar is finished (it allows nothing but EOS: the request stops).
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, runtime_checkable

import numpy as np

from grok.engine.api import Engine, Prefix
from grok.engine.logits_processing import LogitControls
from grok.serving.logit_controls import StepControls
from grok.serving.requests import Request
from grok.serving.structured_streams import Structured


@runtime_checkable
class StructuredStream(Protocol):
    """What StructuredDecoding reads and sets on one of the scheduler's requests (its
    `Stream`, grok.serving.stream)."""

    request: Request
    prompt_ids: list
    fed: int                              # output tokens fed to dispatched decode steps
    structured: Optional[Structured]      # set at admission


class StructuredDecoding:
    """The structured-output side of one Scheduler; see the module docstring.

    `constrained_requests`: admitted requests with a grammar so far. `on_mask_fill`:
    callable(seconds) per step that fills grammar masks (None: nobody listens).
    """

    def __init__(self, engine: Engine, tokenizer):
        self.engine, self.tokenizer = engine, tokenizer
        self.step_controls = StepControls(engine.batch_size, engine.vocab_size)
        self.constrained_requests = 0
        self.on_mask_fill: Optional[Callable[[float], None]] = None

    def admit(self, stream: StructuredStream) -> None:
        """Logit processing and the grammar of a request that needs them."""
        stream.structured = Structured.of(stream.request, self.tokenizer, self.engine)
        if stream.structured is not None and stream.structured.grammar is not None:
            self.constrained_requests += 1

    def insert(self, stream: StructuredStream, prefix: Prefix, arm, state, slot: int):
        """The state with the stream's prompt in `slot` (engine.insert): as prefilled, or for
        a request that processes its logits, all but the prompt's last token, which its first
        decode step feeds; with a repetition penalty, the prompt's tokens marked."""
        if stream.structured is None:
            return self.engine.insert(prefix, arm, state, slot)
        prefix = self.engine.slice_prefix(prefix, len(stream.prompt_ids) - 1)
        stream.fed = -1
        arm = arm._replace(token=np.int32(stream.prompt_ids[-1]))
        state = self.engine.insert(prefix, arm, state, slot)
        if stream.request.repetition_penalty != 1:
            state = self.engine.mark_prompt(state, slot, stream.prompt_ids)
        return state

    @staticmethod
    def processes(running: dict) -> bool:
        """Whether a running request processes its logits: it runs the processed decode
        step, so no verify step runs meanwhile."""
        return any(s.structured is not None for s in running.values())

    @staticmethod
    def needs_last_token(running: dict) -> bool:
        """Whether a running request has a grammar (its next mask needs its last token)."""
        return any(s.structured is not None and s.structured.grammar is not None
                   for s in running.values())

    def controls(self, running: dict) -> Optional[LogitControls]:
        """This step's LogitControls for `running` ({slot: stream}), or None when no running
        request processes logits."""
        rows = {slot: s.structured.row(s.fed) for slot, s in running.items()
                if s.structured is not None}
        if not rows:
            return None
        controls = self.step_controls.build(rows)
        if self.on_mask_fill is not None and any(r.grammar is not None for r in rows.values()):
            self.on_mask_fill(self.step_controls.last_fill_seconds)
        return controls

    def advance(self, stream: StructuredStream, token: int, eos_token: int) -> bool:
        """Feeds the stream's grammar a sampled token (not EOS); whether the grammar is then
        finished (False without one)."""
        grammar = stream.structured.grammar if stream.structured is not None else None
        if grammar is None:
            return False
        if token != eos_token:
            grammar.advance(token)
        return grammar.finished

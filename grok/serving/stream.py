"""One admitted request as the scheduler holds it: its slot, its prompt's progress, and what
it has produced (tokens, logprobs, text held back until it is final), up to its Completion.

The scheduler (grok.serving.scheduler) decides when a stream prefills, decodes and ends; a
Stream only records what comes back and renders it as events.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from grok.engine.api import Prefix, PrefillResult, TokenOutput
from grok.serving.prefix_cache import Hit
from grok.serving.requests import Request
from grok.serving.results import Completion, TokenEvent
from grok.serving.structured_streams import Structured
from grok.serving.text import TextStream


@dataclasses.dataclass(eq=False)
class Stream:
    """An admitted request: holding a slot, prefilling or decoding."""

    request: Request
    request_id: str
    prompt_ids: list
    slot: int
    text: TextStream
    prefix: Optional[Prefix] = None        # the prompt's KV so far (prefilling)
    prefilled: int = 0                     # prompt tokens in `prefix`
    echo_results: list = dataclasses.field(default_factory=list)   # PrefillResults with echo
    first: Optional[PrefillResult] = None  # the last chunk's result, until its token is read
    output_ids: list = dataclasses.field(default_factory=list)
    logprobs: list = dataclasses.field(default_factory=list)
    top_logprobs: list = dataclasses.field(default_factory=list)
    prompt_logprobs: Optional[list] = None
    prompt_top_logprobs: Optional[list] = None
    held: list = dataclasses.field(default_factory=list)   # TokenEvents whose text is not final
    inserted: bool = False                 # the slot holds its KV (release it when done)
    cache_hit: Optional[Hit] = None        # the prefix-cache entry it continues (pinned)
    looked_up: bool = False                # the prefix cache was asked for its prompt
    fed: int = 0                           # output tokens fed to dispatched decode steps
    done: bool = False
    structured: Optional[Structured] = None  # logit processing / grammar (StructuredDecoding)

    def record_echo(self, engine) -> None:
        """The prompt's logprobs from the echo results of its prefill chunks (the first
        position has none)."""
        lps, tops = [], []
        for echo_result, size in self.echo_results:
            scores = engine.read_echo(echo_result)
            lps += scores.logprobs[:size].tolist()
            tops += [list(zip(ids, values)) for ids, values in
                     zip(scores.top_ids[:size].tolist(), scores.top_logprobs[:size].tolist())]
        self.prompt_logprobs = [None] + lps[:len(self.prompt_ids) - 1]
        self.prompt_top_logprobs = [None] + tops[:len(self.prompt_ids) - 1]
        self.echo_results = []

    def record(self, out: TokenOutput, row: int) -> Optional[str]:
        """Appends row `row` of `out` as the next output token (and its event when
        streaming); returns the stop string its text completes, if any."""
        token = int(out.token_ids[row])
        logprob = float(out.logprobs[row])
        top = list(zip(out.top_ids[row].tolist(), out.top_logprobs[row].tolist()))
        self.output_ids.append(token)
        self.logprobs.append(logprob)
        self.top_logprobs.append(top)
        released, stop = self.text.add(token)
        if self.request.stream:
            self.held.append(TokenEvent(self.request_id, len(self.output_ids) - 1, token,
                                        released, logprob, top if self.request.logprobs else None))
        return stop

    def released_events(self) -> list:
        """The held events, once no stop string may still be starting in their text."""
        if self.text.holding:
            return []
        events, self.held = self.held, []
        return events

    def finish_text(self, reason: str, stop_reason, error: Optional[str]) -> tuple:
        """Flushes the text held back (a stop string found in it makes the reason "stop");
        returns (reason, stop_reason, error) as they end up."""
        if reason in ("length", "stop", "cancelled") and error is None:
            try:
                tail, stop = self.text.finish()
                if stop is not None and reason != "cancelled":
                    reason, stop_reason = "stop", stop
                if self.held:
                    last = self.held[-1]
                    self.held[-1] = dataclasses.replace(last, text=last.text + tail)
            except Exception as e:
                reason, error = "error", f"{type(e).__name__}: {e}"
        return reason, stop_reason, error

    def last_events(self, reason: str, stop_reason, error: Optional[str]) -> list:
        """The events still held and the request's Completion."""
        r = self.request
        completion = Completion(
            self.text.text, request_id=self.request_id, prompt_ids=self.prompt_ids,
            output_ids=self.output_ids, finish_reason=reason, stop_reason=stop_reason,
            error=error, logprobs=self.logprobs if r.logprobs else None,
            top_logprobs=self.top_logprobs if r.logprobs else None,
            prompt_logprobs=self.prompt_logprobs,
            prompt_top_logprobs=self.prompt_top_logprobs)
        events, self.held = self.held, []
        return events + [completion]

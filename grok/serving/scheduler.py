"""The host side of serving: slots, admission, chunked prefill, stopping, streaming.

`serve(runner)` is the generator behind `InferenceRunner.run()`. Protocol (the reference's,
extended):

    gen = runner.run()
    next(gen)                                # -> None: ready for requests
    out = gen.send(Request(...))             # a Request, or a list of them
    out = next(gen)                          # or gen.send(None): keep going

Each `send`/`next` returns the next result: a `Completion` (a str subclass: the text, with
request_id, output_ids, logprobs, ...) or, for streaming requests, a `TokenEvent`; or `None`
when nothing is in flight (send more requests). A request that cannot be served (prompt too
long for sequence_len, token ids outside the vocabulary) comes back as a Completion with
finish_reason "error" and never disturbs the other slots.

Decode steps overlap with the host: step n+1 is dispatched before step n's output (one
packed array) is read, so a finished slot may run one extra step whose token is ignored.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from typing import Optional

import numpy as np

from grok.serving.requests import Completion, Request, TokenEvent
from grok.engine.runner import unpack_output


@dataclasses.dataclass
class _Active:
    """A request occupying a slot."""

    request: Request
    request_id: str
    prompt_ids: list
    slot: int
    output_ids: list = dataclasses.field(default_factory=list)
    logprobs: list = dataclasses.field(default_factory=list)
    top_logprobs: list = dataclasses.field(default_factory=list)
    prompt_logprobs: Optional[list] = None
    streamed_tokens: int = 0       # output tokens already sent as TokenEvents
    streamed_text: str = ""        # the text those events carried
    done: bool = False


class Engine:
    """Owns the device state and the slots of one InferenceRunner."""

    def __init__(self, runner):
        self.runner = runner
        self.config = runner.config
        self.tokenizer = runner.tokenizer
        self.state = runner.new_memory()
        self.free_slots = list(range(runner.batch_size))
        self.slots: dict[int, _Active] = {}
        self.queue: collections.deque = collections.deque()
        self.inflight = None                   # (packed output of the last step, slot snapshot)
        self._ids = itertools.count()

    # ---- admission --------------------------------------------------------------------------
    def submit(self, item) -> list:
        requests = list(item) if isinstance(item, (list, tuple)) else [item]
        events = []
        for request in requests:
            request_id = getattr(request, "request_id", None) or f"req-{next(self._ids)}"
            if not isinstance(request, Request):
                events.append(_error(request_id, [], f"expected a Request, got {type(request).__name__}"))
                continue
            if request_id in self._ids_in_flight():   # results could not be told apart
                events.append(_error(request_id, [], f"request_id {request_id!r} is already in flight"))
                continue
            self.queue.append((request, request_id))
        return events

    def _ids_in_flight(self) -> set:
        return {rid for _, rid in self.queue} | {a.request_id for a in self.slots.values()}

    def _prompt_ids(self, request: Request) -> list:
        if isinstance(request.prompt, str):
            ids = self.tokenizer.encode(request.prompt)
        else:
            ids = list(request.prompt)
        if not ids:
            raise ValueError("Request.prompt encodes to no tokens")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"Request.prompt has token ids outside the vocabulary "
                             f"[0, {self.config.vocab_size}): {bad[:5]}")
        total = len(ids) + request.max_len
        if total > self.config.sequence_len:
            raise ValueError(f"Request: prompt ({len(ids)} tokens) plus max_len ({request.max_len}) "
                             f"is {total}, beyond sequence_len {self.config.sequence_len}")
        return ids

    def _take_admissions(self) -> list:
        """The queued (request, request_id) pairs that get a slot now.

        A hook: a multi-process job decides this on process 0 and broadcasts it.
        """
        taken = []
        while len(taken) < len(self.free_slots) and self.queue:
            taken.append(self.queue.popleft())
        return taken

    def _to_host(self, array) -> np.ndarray:
        """A replicated device array as NumPy (a hook for multi-process jobs)."""
        return np.asarray(array)

    def _admit(self) -> list:
        events = []
        for request, request_id in self._take_admissions():
            try:
                ids = self._prompt_ids(request)
            except Exception as e:  # a bad prompt fails its request alone
                events.append(_error(request_id, [], str(e)))
                continue
            slot = self.free_slots.pop(0)
            active = _Active(request, request_id, ids, slot)
            self.slots[slot] = active
            events += self._prefill(active)
        return events

    def _chunks(self, n: int):
        """(start, length, bucket) covering n prompt tokens; long prompts in largest buckets."""
        largest, start = self.runner.pad_sizes[-1], 0
        while start < n:
            length = min(largest, n - start)
            bucket = next(p for p in self.runner.pad_sizes if p >= length)
            yield start, length, bucket
            start += length

    def _prefill(self, active: _Active) -> list:
        r, ids = active.request, active.prompt_ids
        settings = (r.temperature, r.nucleus_p, r.top_k)
        echo = []
        for start, length, bucket in self._chunks(len(ids)):
            tokens = np.zeros(bucket, np.int32)
            tokens[:length] = ids[start:start + length]
            targets = np.zeros(bucket, np.int32)
            nxt = ids[start + 1:start + length + 1]
            targets[:len(nxt)] = nxt
            args = self.runner.prefill_args(tokens, targets, length, active.slot, start == 0,
                                            settings, r.rng_seed)
            self.state, out = self.runner.prefill_memory(self.state, *args, echo=r.echo)
            if r.echo:
                echo.extend(self._to_host(out["echo"])[:length].tolist())
        if r.echo:
            active.prompt_logprobs = [None] + echo[:len(ids) - 1]
        return self._on_token(active, unpack_output(self._to_host(out["sample"])), 0)

    # ---- decoding ---------------------------------------------------------------------------
    def idle(self) -> bool:
        return not self.slots and not self.queue and self.inflight is None

    def advance(self) -> list:
        """Admits what fits, dispatches one decode step, and handles the previous step's output."""
        events = self._admit()
        dispatched = None
        if self.slots:
            snapshot = dict(self.slots)
            self.state, packed = self.runner.sample_step(self.runner.params, self.state)
            packed.copy_to_host_async()
            dispatched = (packed, snapshot)
        if self.inflight is not None:
            packed, snapshot = self.inflight
            step_out = unpack_output(self._to_host(packed))
            for slot, active in snapshot.items():
                if not active.done:
                    events += self._on_token(active, step_out, slot)
        self.inflight = dispatched
        return events

    def _on_token(self, active: _Active, step_out: tuple, row: int) -> list:
        """Takes row `row` of an unpacked step output (see `unpack_output`) for `active`."""
        token_ids, logprobs, top_ids, top_lps = step_out
        token, logprob = int(token_ids[row]), float(logprobs[row])
        r = active.request
        stopped = token == self.config.eos_token or token in r.stop_tokens
        if not stopped:
            active.output_ids.append(token)
            active.logprobs.append(logprob)
            active.top_logprobs.append(list(zip(top_ids[row].tolist(), top_lps[row].tolist())))
        finished = stopped or len(active.output_ids) >= r.max_len
        events = self._token_events(active, finished) if r.stream else []
        if finished:
            events.append(self._finish(active, "stop" if stopped else "length"))
        return events

    def _token_events(self, active: _Active, finished: bool) -> list:
        """TokenEvents for the output tokens not streamed yet.

        A token that leaves an incomplete UTF-8 character is held back until a later token
        completes it (or the request ends), so every event's text is final and the events'
        texts concatenate to the Completion's text.
        """
        n = len(active.output_ids)
        text = self.tokenizer.decode(active.output_ids)
        if active.streamed_tokens == n or (text.endswith("\ufffd") and not finished):
            return []
        events = []
        for index in range(active.streamed_tokens, n):
            delta = text[len(active.streamed_text):] if index == n - 1 else ""
            events.append(TokenEvent(active.request_id, index, active.output_ids[index], delta,
                                     active.logprobs[index]))
        active.streamed_tokens, active.streamed_text = n, text
        return events

    def _finish(self, active: _Active, reason: str) -> Completion:
        active.done = True
        del self.slots[active.slot]
        self.state = self.runner.release_slot(self.state, np.int32(active.slot))
        self.free_slots.append(active.slot)
        self.free_slots.sort()
        r = active.request
        return Completion(
            self.tokenizer.decode(active.output_ids), request_id=active.request_id,
            prompt_ids=active.prompt_ids, output_ids=active.output_ids, finish_reason=reason,
            logprobs=active.logprobs if r.logprobs else None,
            top_logprobs=active.top_logprobs if r.logprobs else None,
            prompt_logprobs=active.prompt_logprobs)


def _error(request_id: str, prompt_ids: list, message: str) -> Completion:
    return Completion("", request_id=request_id, prompt_ids=prompt_ids, finish_reason="error",
                      error=message)


def serve(runner, engine: Optional[Engine] = None):
    """The generator protocol described in the module docstring (`engine`: a subclass's,
    e.g. grok.parallel.multihost's; default a new Engine)."""
    engine = Engine(runner) if engine is None else engine
    pending: collections.deque = collections.deque()
    incoming = yield None
    while True:
        if incoming is not None:
            pending.extend(engine.submit(incoming))
        while not pending and not engine.idle():
            pending.extend(engine.advance())
        incoming = yield (pending.popleft() if pending else None)

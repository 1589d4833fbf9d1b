"""The scheduler API the server drives, over the scheduler this tree has.

The server needs `submit(item) -> events`, `cancel(request_id) -> events`, `step() -> events`,
`idle()`, `num_running`, `num_waiting`, stop strings and per-token top logprobs in stream
events. Where grok.serving.scheduler has that `Scheduler` it is used as is; with the older
`Engine` (submit/advance/idle, no cancel, no stop strings), `LegacyScheduler` adds them on
the host: cancel ends the request and releases its slot, stop strings are matched on the
streamed text (held back while it could be a stop string's start) and end the request.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from grok.serving import requests as request_types
from grok.serving import scheduler as scheduler_module

NATIVE = hasattr(scheduler_module, "Scheduler")
REQUEST_HAS_STOP = "stop" in {f.name for f in dataclasses.fields(request_types.Request)}


@dataclasses.dataclass(frozen=True)
class StopRequest:
    """A Request and the stop strings this tree's Request cannot carry itself."""

    request: request_types.Request
    stop: tuple[str, ...]


def make_request(stop: Sequence[str] = (), **fields):
    """A Request with stop strings, in whatever form this tree's scheduler takes them."""
    if REQUEST_HAS_STOP:
        return request_types.Request(stop=tuple(stop), **fields)
    request = request_types.Request(**fields)
    return StopRequest(request, tuple(stop)) if stop else request


@dataclasses.dataclass(frozen=True)
class StreamToken:
    """A TokenEvent with the fields the server streams (top_logprobs added)."""

    request_id: str
    index: int
    token_id: int
    text: str
    logprob: float
    top_logprobs: Optional[list] = None


@dataclasses.dataclass
class _StopState:
    stops: tuple[str, ...]
    text: str = ""        # everything decoded so far
    sent: int = 0         # characters of `text` already passed on
    stop_at: Optional[tuple] = None   # (offset, stop string) once one is found


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could still be the start of a stop string."""
    for k in range(min(len(text), max(map(len, stops)) - 1), 0, -1):
        if any(s.startswith(text[-k:]) for s in stops):
            return k
    return 0


class LegacyScheduler:
    """The server's scheduler API over grok.serving.scheduler.Engine (see module docstring)."""

    def __init__(self, engine):
        self.engine = engine
        self._stops: dict[str, _StopState] = {}

    @property
    def num_running(self) -> int:
        return len(self.engine.slots)

    @property
    def num_waiting(self) -> int:
        return len(self.engine.queue)

    def idle(self) -> bool:
        return self.engine.idle()

    def submit(self, item) -> list:
        items = list(item) if isinstance(item, (list, tuple)) else [item]
        plain = []
        for entry in items:
            if isinstance(entry, StopRequest):
                self._stops[entry.request.request_id] = _StopState(entry.stop)
                entry = entry.request
            plain.append(entry)
        return self._convert(self.engine.submit(plain))

    def step(self) -> list:
        return self._convert(self.engine.advance())

    def cancel(self, request_id: str) -> list:
        return self._convert(self._end(request_id, "cancelled"))

    def _end(self, request_id: str, reason: str) -> list:
        engine = self.engine
        for queued in list(engine.queue):
            if queued[1] == request_id:
                engine.queue.remove(queued)
                return [request_types.Completion("", request_id=request_id,
                                                 finish_reason=reason)]
        for active in list(engine.slots.values()):
            if active.request_id == request_id and not active.done:
                return [engine._finish(active, reason)]
        return []

    def _active(self, request_id: str):
        return next((a for a in self.engine.slots.values() if a.request_id == request_id), None)

    def _convert(self, events: list) -> list:
        out = []
        for event in events:
            if isinstance(event, request_types.Completion):
                out += self._completion(event)
            else:
                out += self._token(event)
        return out

    def _token(self, event) -> list:
        active = self._active(event.request_id)
        top = None
        if active is not None and active.request.logprobs and event.index < len(active.top_logprobs):
            top = active.top_logprobs[event.index]
        state = self._stops.get(event.request_id)
        if state is None:
            return [StreamToken(event.request_id, event.index, event.token_id, event.text,
                                event.logprob, top)]
        state.text += event.text
        hits = [(state.text.find(s), s) for s in state.stops if s in state.text]
        if hits:
            at, stop = min(hits)
            delta = state.text[state.sent:at]
            state.sent, state.stop_at = at, (at, stop)
            out = [StreamToken(event.request_id, event.index, event.token_id, delta,
                               event.logprob, top)]
            for completion in self._end(event.request_id, "stop"):  # [] if it ended already
                out += self._completion(completion)
            return out
        end = len(state.text) - _held_back(state.text, state.stops)
        delta, state.sent = state.text[state.sent:end], max(state.sent, end)
        return [StreamToken(event.request_id, event.index, event.token_id, delta, event.logprob,
                            top)]

    def _completion(self, completion) -> list:
        state = self._stops.pop(completion.request_id, None)
        out = []
        if state is not None and state.stop_at is not None and completion.finish_reason != "error":
            at, stop = state.stop_at
            fields = completion.to_dict()
            fields.pop("text")
            fields.update(finish_reason="stop")
            completion = request_types.Completion(completion.text[:at], **fields)
            completion.stop_reason = stop
            return [completion]
        if state is not None and state.sent < len(state.text):   # held text: not a stop after all
            out.append(StreamToken(completion.request_id, len(completion.output_ids),
                                   -1, state.text[state.sent:], 0.0))
        completion.stop_reason = getattr(completion, "stop_reason", None)
        return out + [completion]


def build_scheduler(runner):
    """The scheduler the server drives for an initialized InferenceRunner."""
    if NATIVE:
        return scheduler_module.Scheduler(runner.engine)
    return LegacyScheduler(scheduler_module.Engine(runner))

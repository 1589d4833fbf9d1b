"""The engine thread: the only owner of the scheduler (and so of the device).

HTTP handlers never touch the scheduler. They put commands on a thread-safe queue
(`submit`, `cancel`); the thread drains it between steps, steps the scheduler while anything
is in flight, and hands each request's events to the callback its handler gave, which moves
them onto the handler's asyncio loop with `call_soon_threadsafe`. When nothing is in flight
the thread blocks on the queue: no polling anywhere.

The model is built and compiled on this thread too (`build` runs first), so the HTTP port
is open at once and /health answers 503 until `ready` is set.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Any, Callable, Optional

from grok.serving.http.metrics import ServerMetrics
from grok.serving.interface import SchedulerAPI
from grok.serving.structured.fields import constraint_of
from grok.serving.results import Completion, error_completion
from grok.serving.generator import scheduler_for
from grok.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

Deliver = Callable[[Any], None]   # called on the engine thread with each event of a request
STOP = object()                   # the command that ends the thread


@dataclasses.dataclass(frozen=True)
class Backend:
    """What `build` makes: the scheduler and what handlers need to know of the model."""

    scheduler: SchedulerAPI
    slots: int              # requests decoded at once
    tokenizer: Tokenizer
    vocab_size: int
    sequence_len: int       # prompt plus new tokens at most
    pad_token: int = 0


def backend_for(runner, log=None, precompile_all: bool = False) -> Backend:
    """The Backend of an initialized InferenceRunner. `log`: a multi-host admission log
    (grok.serving.decisions.AdmissionLog) that process 0 publishes its decisions to.
    `precompile_all`: compile every prefill shape (continuations, batches) now, so no request
    ever waits for XLA (the runner compiles only each bucket's first chunk and decode)."""
    engine = runner.engine
    if precompile_all:
        engine.precompile_all()
    return Backend(scheduler_for(runner, log=log), engine.batch_size, runner.tokenizer,
                   engine.vocab_size, engine.sequence_len, engine.pad_token)


class QueueFull(Exception):
    """More requests would wait than --max-queue allows."""


class NotReady(Exception):
    """The model is still loading (or failed to load)."""


@dataclasses.dataclass
class _Route:
    deliver: Deliver
    arrival: float
    first_token: Optional[float] = None


def is_completion(event) -> bool:
    """Completions end a request; other events are tokens."""
    return isinstance(event, Completion)


class EngineLoop(threading.Thread):
    """Runs `build()` (-> a Backend), then serves commands until `stop()`."""

    def __init__(self, build: Callable[[], Backend], metrics: ServerMetrics,
                 max_queue: Optional[int] = None):
        super().__init__(name="grok-engine", daemon=True)
        self._build = build
        self.metrics = metrics
        self.max_queue = max_queue
        self.backend: Optional[Backend] = None
        self.scheduler: Optional[SchedulerAPI] = None
        self.slots = 0
        self.ready = threading.Event()
        self.error: Optional[str] = None          # why the model could not be built
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._routes: dict[str, _Route] = {}      # engine thread only
        self._lock = threading.Lock()
        self._outstanding = 0                     # submitted and not finished (any thread)
        self._stopping = False
        self._prefix_counted = (0, 0)               # prefix-cache (hit, query) tokens reported
        self._spec_counted = (0, 0)                 # speculative (drafted, accepted) reported

    # ---- called from HTTP handlers (any thread) -------------------------------------------
    def submit(self, requests: list, deliver: Deliver) -> None:
        """Queues `requests` (each with a unique request_id); raises QueueFull or NotReady."""
        if not self.ready.is_set() or self._stopping:
            raise NotReady(self.error or ("the server is shutting down" if self._stopping
                                          else "the model is still loading"))
        with self._lock:
            waiting = self._outstanding + len(requests) - self.slots
            if self.max_queue is not None and waiting > self.max_queue:
                raise QueueFull(f"{waiting} requests would wait for a slot; --max-queue is "
                                f"{self.max_queue}")
            self._outstanding += len(requests)
        self._commands.put(("submit", requests, deliver, time.monotonic()))

    def cancel(self, request_ids: list[str]) -> None:
        """Ends these requests at the next step (finished or unknown ids are ignored)."""
        self._commands.put(("cancel", list(request_ids)))

    def stop(self, timeout: Optional[float] = None) -> None:
        """Cancels everything in flight and ends the thread."""
        self._stopping = True
        self._commands.put((STOP,))
        if self.is_alive():
            self.join(timeout)

    # ---- the thread -------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.backend = self._build()
            self.scheduler, self.slots = self.backend.scheduler, self.backend.slots
        except BaseException as e:   # reported by /health and every request
            logger.exception("the model could not be started")
            self.error = f"the model could not be started: {type(e).__name__}: {e}"
            return
        self.scheduler.on_mask_fill = self.metrics.mask_fill.observe
        self.ready.set()
        logger.info("engine ready: %d slots", self.slots)
        try:
            self._serve()
        except BaseException as e:   # a bug in this loop: fail what waits, refuse the rest
            logger.exception("the engine thread failed")
            self.error = f"the engine thread failed: {type(e).__name__}: {e}"
            self._stopping = True
            self._fail_all(self.error)

    def _serve(self) -> None:
        while True:
            block = self.scheduler.idle()
            commands = [self._commands.get()] if block else []
            while True:
                try:
                    commands.append(self._commands.get_nowait())
                except queue.Empty:
                    break
            for command in commands:
                if command[0] is STOP:
                    self._cancel_all()
                    return
                self._handle(command)
            if not self.scheduler.idle():
                self._guarded(self.scheduler.step)
            self.metrics.set_load(self.scheduler.num_running, self.scheduler.num_waiting)
            self._count_prefix_cache()
            self._count_speculation()

    def _count_prefix_cache(self) -> None:
        """Adds what the scheduler's cumulative prefix-cache counters gained since last time."""
        hit = self.scheduler.prefix_cache_hit_tokens
        query = self.scheduler.prefix_cache_query_tokens
        if query != self._prefix_counted[1]:
            self.metrics.add_prefix_cache(hit - self._prefix_counted[0],
                                          query - self._prefix_counted[1])
            self._prefix_counted = (hit, query)

    def _count_speculation(self) -> None:
        """Adds what the scheduler's speculative counters gained since last time."""
        counts = self.scheduler.speculative_counts
        if counts != self._spec_counted:
            self.metrics.add_speculation(counts[0] - self._spec_counted[0],
                                         counts[1] - self._spec_counted[1])
            self._spec_counted = counts

    def _handle(self, command: tuple) -> None:
        if command[0] == "submit":
            _, requests, deliver, arrival = command
            for request in requests:
                self._routes[request.request_id] = _Route(deliver, arrival)
            self.metrics.on_constrained(sum(constraint_of(r) is not None for r in requests))
            self._guarded(lambda: self.scheduler.submit(requests))
        elif command[0] == "cancel":
            for request_id in command[1]:
                if request_id in self._routes:
                    self._guarded(lambda: self.scheduler.cancel(request_id))

    def _guarded(self, call: Callable[[], list]) -> None:
        """Runs a scheduler call and routes its events; a failure ends what is in flight."""
        try:
            events = call()
        except Exception as e:   # the scheduler isolates per-request faults; this is beyond
            logger.exception("scheduler failure: ending every request in flight")
            self._fail_all(f"engine failure: {type(e).__name__}: {e}")
            return
        for event in events:
            self._route(event)

    def _route(self, event) -> None:
        route = self._routes.get(event.request_id)
        if route is None:
            return
        now = time.monotonic()
        if is_completion(event):
            del self._routes[event.request_id]
            with self._lock:
                self._outstanding -= 1
            self.metrics.on_finish(event.finish_reason, route.arrival, route.first_token,
                                   len(event.prompt_ids), len(event.output_ids), now)
        elif route.first_token is None:
            route.first_token = now
            self.metrics.on_first_token(route.arrival, now)
        try:
            route.deliver(event)
        except Exception:   # a handler whose loop has gone: nothing to tell
            logger.debug("could not deliver an event for %s", event.request_id, exc_info=True)

    def _cancel_all(self) -> None:
        for request_id in list(self._routes):
            self._guarded(lambda: self.scheduler.cancel(request_id))
        self._fail_all("the server is shutting down")

    def _fail_all(self, message: str) -> None:
        for request_id in list(self._routes):
            self._route(error_completion(request_id, message))

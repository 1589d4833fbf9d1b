"""The seam between the HTTP server and the host loop, typed: `SchedulerAPI`, what the
server's engine thread calls on a scheduler.

grok.serving.scheduler.Scheduler implements it, and so does the server tests' fake (a test
checks it with isinstance), so the fake never drifts from what the server calls. Every member
is declared: callers never probe for one.
"""

from __future__ import annotations

from typing import Protocol, Sequence, Union, runtime_checkable

from grok.serving.requests import Request
from grok.serving.results import Completion, TokenEvent

Event = Union[TokenEvent, Completion]


@runtime_checkable
class SchedulerAPI(Protocol):
    """A host loop serving Requests (vLLM's SchedulerInterface shape). Every call returns the
    events it produced, in order; a request's last event is its Completion."""

    @property
    def num_running(self) -> int:
        """Requests holding a slot."""

    @property
    def num_waiting(self) -> int:
        """Requests queued for a slot."""

    @property
    def prefix_cache_hit_tokens(self) -> int:
        """Prompt tokens served from the prefix cache so far (0 without one)."""

    @property
    def prefix_cache_query_tokens(self) -> int:
        """Prompt tokens looked up in the prefix cache so far (0 without one)."""

    @property
    def speculative_counts(self) -> tuple[int, int]:
        """(drafted tokens verified, of those accepted) so far; (0, 0) without speculation."""

    def idle(self) -> bool:
        """Nothing queued or running."""

    def submit(self, item: Union[Request, Sequence[Request]]) -> list[Event]:
        """Queues one request or several."""

    def cancel(self, request_id: str) -> list[Event]:
        """Ends a queued or running request (its Completion says "cancelled")."""

    def step(self) -> list[Event]:
        """Admits, prefills and decodes one step."""


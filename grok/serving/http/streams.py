"""One HTTP request's scheduler requests, seen from its asyncio task.

`RequestStream` submits the requests to the engine thread with a callback that moves each
event onto this task's loop (`call_soon_threadsafe` into an asyncio.Queue), and yields the
events as they come. Leaving it early (the client went away, the task was cancelled, an
error) cancels whatever of its requests is still running, so their slots free at the next
step. `until_disconnected` lets a non-streaming handler notice a client that goes away.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from starlette.requests import Request as HTTPRequest
from starlette.responses import StreamingResponse

from grok.serving.http.engine_loop import EngineLoop, is_completion


class RequestStream:
    def __init__(self, engine: EngineLoop, requests: list, request_ids: list[str]):
        self.engine = engine
        self.requests = requests
        self.pending = set(request_ids)     # not finished yet
        self._queue: asyncio.Queue = asyncio.Queue()
        self._submitted = False

    def submit(self) -> None:
        """Hands the requests to the engine thread (raises QueueFull / NotReady)."""
        loop = asyncio.get_running_loop()
        put = self._queue.put_nowait

        def deliver(event: Any) -> None:     # on the engine thread
            loop.call_soon_threadsafe(put, event)

        self.engine.submit(self.requests, deliver)
        self._submitted = True

    async def events(self) -> AsyncIterator[Any]:
        """Every event of these requests until each has its Completion; cancels the rest if
        the consumer stops early (including by cancellation)."""
        try:
            while self.pending:
                event = await self._queue.get()
                if is_completion(event):
                    self.pending.discard(event.request_id)
                yield event
        finally:
            self.close()

    def close(self) -> None:
        if self._submitted and self.pending:
            self.engine.cancel(sorted(self.pending))
            self.pending.clear()


class CancellingStreamingResponse(StreamingResponse):
    """A StreamingResponse that cancels `stream`'s unfinished requests however it ends, even
    when the client goes away before the body's generator has started (a generator that
    never started runs no `finally`)."""

    def __init__(self, content, stream: RequestStream, **kwargs):
        super().__init__(content, **kwargs)
        self.request_stream = stream

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.request_stream.close()


async def until_disconnected(request: HTTPRequest) -> None:
    """Returns when the client disconnects (the body must have been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def collect_unless_disconnected(stream: RequestStream, request: HTTPRequest) -> dict | None:
    """request_id -> Completion for every request of `stream`; None (and the requests
    cancelled) if the client disconnects first."""
    async def collect() -> dict:
        done = {}
        async for event in stream.events():
            if is_completion(event):
                done[event.request_id] = event
        return done

    collector = asyncio.ensure_future(collect())
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not collector.done():
            collector.cancel()
            stream.close()
    return collector.result() if collector.done() and not collector.cancelled() else None

"""Request bodies bounded as they arrive: an ASGI middleware in front of the application.

`BodyLimit` reads an HTTP request's body itself, chunk by chunk, before the application sees
the request: a `Content-Length` beyond the limit is refused with 413 before a byte of the
body is read, and a body sent without one (chunked) is counted as it streams and refused the
moment it passes the limit; nothing after that is read (uvicorn closes a connection whose
body was not read to the end). So the server holds at most the limit plus one chunk per
request, whatever the client sends. A client that goes away while sending its body is simply
dropped: nothing reaches the application, nothing is logged.

The application then receives the body as one message, and later messages (a disconnect)
from the connection as they come, so handlers can still notice a client that goes away.
"""

from __future__ import annotations

import json
from typing import Awaitable, Callable

MAX_BODY_BYTES = 16 * 2**20     # a request body beyond this is refused (413)

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _too_large(limit: int) -> bytes:
    return json.dumps({"error": {"message": f"request body over {limit} bytes",
                                 "type": "invalid_request_error", "param": None,
                                 "code": "request_too_large"}}).encode()


class BodyLimit:
    """Wraps an ASGI app: its HTTP requests' bodies are read here, at most `limit` bytes."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = self._content_length(scope)
        if declared is not None and declared > self.limit:
            await self._refuse(send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return          # the client left mid-body: nobody to answer
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    @staticmethod
    def _content_length(scope: Scope):
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None     # uvicorn refuses a malformed length before we run
        return None

    async def _refuse(self, send: Send) -> None:
        body = _too_large(self.limit)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` as one message, then the connection's own messages."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed

"""Work proportional to a request's size runs here, off the event loop.

The event loop serves every connection: /health, every stream's next chunk, every new
request. Parsing a large body, rendering chat messages, tokenizing a long prompt or
detokenizing a long id list take time proportional to what one client sent, so handlers hand
them to `WorkerPool.run` and await the result; the loop keeps serving everyone else meanwhile
(SentencePiece releases the GIL while it encodes). What a request may send is bounded first
(grok.serving.http.body_limit, the list limits in grok.serving.http.protocol, and
`MAX_CHARS_PER_TOKEN` here), so a worker's task is bounded too.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

DEFAULT_THREADS = 4
# A text longer than this many characters per token of the model's context is refused before
# it is tokenized: no tokenizer's piece covers that much (Grok-1's longest is 16 characters,
# and normalization merges at most 3 characters into one).
MAX_CHARS_PER_TOKEN = 64


class WorkerPool:
    """A few threads for request work, shut down with the server."""

    def __init__(self, threads: int = DEFAULT_THREADS):
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="grok-http-worker")

    async def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """fn(*args, **kwargs) on a worker thread; its exception is raised here."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def max_text_chars(sequence_len: int) -> int:
    """The longest text (in characters) a prompt may be for a model of `sequence_len`."""
    return sequence_len * MAX_CHARS_PER_TOKEN

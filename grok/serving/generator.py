"""The request generator of the reference implementation, extended, over a Scheduler.

`serve(scheduler)` (or `serve(runner)`, through `scheduler_for`) is what
`InferenceRunner.run()` returns; the HTTP server and multi-host jobs drive a Scheduler the
same way, through `scheduler_for`.
"""

from __future__ import annotations

import collections
from typing import Optional

from grok.serving.decisions import AdmissionLog
from grok.serving.requests import Cancel
from grok.serving.scheduler import Scheduler


def scheduler_for(runner, log: Optional[AdmissionLog] = None) -> Scheduler:
    """The Scheduler of an InferenceRunner: its engine, tokenizer and runtime budget."""
    runtime = runner.runtime
    return Scheduler(runner.engine, runner.tokenizer,
                     prefill_budget=runtime.prefill_chunk_tokens,
                     max_prefill_batch=runtime.max_prefill_batch, log=log,
                     prefix_cache_tokens=runtime.prefix_cache_tokens,
                     prefix_cache_outputs=runtime.prefix_cache_outputs,
                     speculative_tokens=runtime.speculative_tokens,
                     speculative_method=runtime.speculative_method)


def serve(source):
    """The request generator (the reference's protocol, extended) over a Scheduler, or over
    an InferenceRunner's (`scheduler_for`):

        gen = serve(scheduler)
        next(gen)                        # -> None: ready for requests
        out = gen.send(Request(...))     # a Request, a list of them, or Cancel(request_id)
        out = next(gen)                  # or gen.send(None): keep going

    Each send/next returns the next result: a Completion (a str: the text, with request_id,
    output_ids, ...), a TokenEvent for streaming requests, or None when nothing is in flight.
    """
    scheduler = source if isinstance(source, Scheduler) else scheduler_for(source)
    pending: collections.deque = collections.deque()
    incoming = yield None
    while True:
        if isinstance(incoming, Cancel):
            pending.extend(scheduler.cancel(incoming.request_id))
        elif incoming is not None:
            pending.extend(scheduler.submit(incoming))
        while not pending and not scheduler.idle():
            pending.extend(scheduler.step())
        incoming = yield (pending.popleft() if pending else None)

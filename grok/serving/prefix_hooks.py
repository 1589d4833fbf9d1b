"""How the scheduler uses the prefix cache (grok.serving.prefix_cache): `PrefixReuse`.

Hooks, each called by grok.serving.scheduler.Scheduler: a lookup when a prompt's prefill is
about to start (not at admission, so a prompt admitted with an earlier one that shares its
start finds that one's Prefix once it is kept; the hit's positions count as prefilled),
storing the prompt's Prefix once it is inserted into its slot, and unpinning the hit's entry
then (or when the request ends before). Echo requests bypass the cache: they need every
prompt position's logprobs, which a hit would skip. The cache is an optimisation: a failed
lookup is a miss, a failed store is logged, and neither becomes a request's error.

Output KV. A conversation's next turn is the last prompt + the last answer + new text; only
the new text needs a prefill when the cache holds the answer's KV too. So a request that
finishes by "stop" or "length" (not "error" or "cancelled") has its slot's first
len(prompt) + f positions copied out (`engine.extract_prefix`) and kept under the ids
prompt + output[:f] before its slot is released, f = the output tokens already fed to a
decode step (a token's KV is written by the step that feeds it; every token read so far has
been fed, because step n + 1 is dispatched before step n's token is read, so f is the whole
output). The trade: those positions were written by decode steps, one token at a time,
not by a prefill of the whole text, so a later prompt continuing them can differ from an
uncached run by rounding (float32 on CPU: the same tokens, logprobs about 5e-7 apart, as
after a prompt-KV hit that ends inside a chunk; tests/test_prefix_cache.py);
`prefix_cache_outputs=False` keeps prompt KV only.
vLLM's automatic prefix caching and SGLang's radix cache keep generated tokens the same way.
In a multi-process job the choice follows from the finish reason and the outputs, which every
process sees alike, so no decision is published for it (grok.serving.decisions).
"""

from __future__ import annotations

import logging
from typing import Optional, Protocol, runtime_checkable

import numpy as np

from grok.engine.api import Engine, Prefix
from grok.serving.prefix_cache import (BLOCK_TOKENS, Hit, PrefixCache, common_prefix,
                                      namespace_of)
from grok.serving.requests import Request

logger = logging.getLogger(__name__)


@runtime_checkable
class CachedStream(Protocol):
    """What PrefixReuse reads and sets on one of the scheduler's requests (a
    grok.serving.stream.Stream)."""

    request: Request
    request_id: str
    prompt_ids: list
    output_ids: list
    fed: int                    # output tokens fed to dispatched decode steps
    slot: int
    prefix: Optional[Prefix]    # set on a hit: the cached prompt KV to continue
    prefilled: int              # set on a hit: the prompt tokens that KV holds
    cache_hit: Optional[Hit]    # the pinned entry, until released
    looked_up: bool


class PrefixReuse:
    """The prefix cache of one Scheduler and its counters.

    `cache_tokens`: positions the cache may hold on the device (0: no cache). `keep_outputs`:
    also keep a finished request's output KV (`engine.extract_prefix`). Each hook sees a
    request only as a `CachedStream`.
    """

    def __init__(self, engine: Engine, cache_tokens: int, keep_outputs: bool):
        self.engine = engine
        self.cache = (PrefixCache(int(cache_tokens), engine.slice_prefix, engine.prefix_capacities)
                      if cache_tokens else None)
        self.keep_outputs = bool(keep_outputs)
        self.hit_tokens = 0      # prompt tokens served from the cache
        self.query_tokens = 0    # prompt tokens looked up in it

    def lookup(self, stream: CachedStream) -> None:
        """Continues `stream` from the longest cached prefix of its prompt (pinned)."""
        if self.cache is None or stream.request.echo or stream.looked_up:
            return
        stream.looked_up = True
        self.query_tokens += len(stream.prompt_ids)
        try:
            hit = self.cache.acquire(stream.prompt_ids, _namespace(stream))
        except Exception:
            logger.exception("prefix cache lookup failed for %s", stream.request_id)
            return
        if hit is not None:
            stream.cache_hit, stream.prefix, stream.prefilled = hit, hit.prefix, hit.length
            self.hit_tokens += hit.length

    def shares_prefix(self, stream: CachedStream, batch: list[CachedStream]) -> bool:
        """Whether the prompt starts like one in `batch` (at least one cache block): it should
        wait for that one's Prefix rather than be prefilled beside it."""
        if self.cache is None or stream.request.echo:
            return False
        ids, salt = np.asarray(stream.prompt_ids), stream.request.cache_salt
        return any(s.request.cache_salt == salt
                   and common_prefix(np.asarray(s.prompt_ids), ids) >= BLOCK_TOKENS for s in batch)

    def release(self, stream: CachedStream) -> None:
        """Unpins the entry `stream` continued, if any."""
        if stream.cache_hit is not None:
            self.cache.release(stream.cache_hit)
            stream.cache_hit = None

    def store(self, stream: CachedStream, prefix: Prefix) -> None:
        """Keeps a prompt's Prefix once it is inserted into its slot."""
        self.release(stream)
        if self.cache is not None and not stream.request.echo:
            self.cache.insert(stream.prompt_ids, prefix, prefix.capacity, _namespace(stream))

    def store_output(self, stream: CachedStream, state) -> None:
        """Keeps a finished request's prompt + output KV (see "Output KV" above) from its
        slot in `state`, before the slot is released."""
        if self.cache is None or not self.keep_outputs or stream.request.echo:
            return
        ids = stream.prompt_ids + stream.output_ids[:stream.fed]
        if len(ids) <= len(stream.prompt_ids) or len(ids) > self.engine.sequence_len:
            return      # nothing new beyond the stored prompt / positions the slot dropped
        try:
            prefix = self.engine.extract_prefix(state, stream.slot, len(ids))
            self.cache.insert(ids, prefix, prefix.capacity, _namespace(stream))
        except Exception:
            logger.exception("prefix cache: keeping the output of %s failed", stream.request_id)


def _namespace(stream) -> int:
    """The cache namespace of a stream's request (its `cache_salt`)."""
    return namespace_of(stream.request.cache_salt)

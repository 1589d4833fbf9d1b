"""The host loop: slots, admission, prefill interleaved with decode, stopping, cancel.

`Scheduler` owns the queue and the slots of one model and touches the device only through
the engine API (grok.engine.api.Engine). Each `step()`:

1. takes this step's decisions: the queued requests that get a free slot (tokenized and
   checked, grok.serving.admission) and the cancels asked since the last step; a multi-process
   job publishes them here (grok.serving.decisions) and the other processes replay them;
2. applies the cancels (a running request's slot is released at once);
3. prefills at most `prefill_budget` prompt tokens (one largest bucket by default): a long
   prompt goes one chunk per step, continued through `existing_prefix`, and is inserted into
   its slot after its last chunk, so running streams keep decoding meanwhile. Several short
   prompts go in one batched call where the engine offers it. With no stream decoding there is
   nobody to keep waiting, and every admitted prompt is prefilled at once;
   a prompt whose prefill starts continues the longest prefix the prefix cache holds
   (grok.serving.prefix_cache: only the rest is prefilled; every process's cache evolves
   alike) and its Prefix joins the cache once inserted; with `prefix_cache_outputs`, a
   request that ends by stop or length also leaves its prompt + output KV there (see
   "Output KV" in grok.serving.prefix_hooks);
4. dispatches one decode step for every running slot, then reads the previous step's tokens
   (step n+1 is on the device while the host handles step n; a slot that finished in step n
   ran one more step whose token is ignored) and the first tokens of the prompts inserted.

Any exception while admitting, prefilling or handling one request's tokens ends that request
alone with finish_reason "error" and its message; its slot is freed and the others go on.

Glossary: B slots, T tokens in a prefill chunk.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import secrets
from typing import Optional

from grok.engine.api import Engine, PrefillResult, SampleParams, TokenOutput
from grok.serving.admission import ModelLimits, prepare
from grok.serving.decisions import Admission, AdmissionLog, Decisions
from grok.serving.prefix_hooks import PrefixReuse
from grok.serving.requests import Cancel, Request
from grok.serving.results import Completion, error_completion
from grok.serving.stream import Stream
from grok.serving.speculation import Speculation
from grok.serving.structured_decoding import StructuredDecoding
from grok.serving.text import TextStream


class Scheduler:
    """Serves Requests on an Engine; see the module docstring.

    `prefill_budget`: prompt tokens prefilled between two decode steps (0: one largest
    bucket). `max_prefill_batch`: most prompts in one batched prefill (1: never batch).
    `log`: where process 0 publishes its decisions (None: a single process).
    `prefix_cache_tokens`: positions the prefix cache may hold on the device (0: no cache;
    see grok.serving.prefix_cache); `prefix_cache_hit_tokens` / `prefix_cache_query_tokens`
    count prompt tokens served from it / looked up in it. `prefix_cache_outputs`: also keep
    a finished request's output KV (see "Output KV" in grok.serving.prefix_hooks).
    `speculative_tokens`: drafts verified per slot and step (0: off; see
    grok.serving.speculation, whose `break_even` `speculative_break_even` fixes instead of
    measuring it); `speculative_method`: how drafts are made ("ngram").
    Requests that process their logits: see grok.serving.structured_decoding.
    """

    def __init__(self, engine: Engine, tokenizer, *, prefill_budget: int = 0,
                 max_prefill_batch: int = 1, log: Optional[AdmissionLog] = None,
                 prefix_cache_tokens: int = 0, prefix_cache_outputs: bool = True,
                 speculative_tokens: int = 0, speculative_method: str = "ngram",
                 speculative_break_even: Optional[float] = None):
        self.engine, self.tokenizer, self.log = engine, tokenizer, log
        self.limits = ModelLimits.of(engine)
        self.eos_token = int(engine.eos_token)
        self.largest_chunk = int(engine.prefill_buckets[-1])
        self.prefill_budget = int(prefill_budget) or self.largest_chunk
        self.max_prefill_batch = max(1, int(max_prefill_batch))
        self.state = engine.init_state()
        self._free = list(range(engine.batch_size))          # a heap: lowest slot first
        self._waiting: collections.OrderedDict = collections.OrderedDict()  # id -> Request
        self._prefilling: collections.deque = collections.deque()   # Streams, in order
        self._running: dict = {}                 # slot -> Stream, decoding
        self._streams: dict = {}                 # request_id -> admitted Stream
        self._cancels: dict = {}                 # request_ids to cancel at the next step
        self._inflight = None                    # (StepHandle, {slot: Stream}) being computed
        self._auto_prefix = f"req-{secrets.token_hex(4)}-"
        self._auto_ids = itertools.count()
        self.prefixes = PrefixReuse(engine, prefix_cache_tokens, prefix_cache_outputs)
        self.structured_decoding = StructuredDecoding(engine, tokenizer)
        self.prefix_cache = self.prefixes.cache      # None when off
        self.speculation = (Speculation(engine, speculative_tokens, speculative_method,
                                        speculative_break_even) if speculative_tokens else None)
        if self.speculation is not None and speculative_break_even is None:
            self.state = self.speculation.measure(self.state)

    # ---- the API the generator and the HTTP server use ---------------------------------------
    @property
    def prefix_cache_hit_tokens(self) -> int:
        """Prompt tokens served from the prefix cache so far."""
        return self.prefixes.hit_tokens

    @property
    def prefix_cache_query_tokens(self) -> int:
        """Prompt tokens looked up in the prefix cache so far."""
        return self.prefixes.query_tokens

    @property
    def speculative_counts(self) -> tuple[int, int]:
        """(drafted tokens verified, of those accepted) so far; (0, 0) with speculation off."""
        s = self.speculation
        return (0, 0) if s is None else (s.draft_tokens, s.accepted_tokens)

    @property
    def constrained_requests(self) -> int:
        """Admitted requests with a grammar so far."""
        return self.structured_decoding.constrained_requests

    @property
    def on_mask_fill(self):
        """callable(seconds) per step that fills grammar masks (None: nobody listens)."""
        return self.structured_decoding.on_mask_fill

    @on_mask_fill.setter
    def on_mask_fill(self, observe) -> None:
        self.structured_decoding.on_mask_fill = observe

    @property
    def num_running(self) -> int:
        """Requests holding a slot (prefilling or decoding)."""
        return len(self._streams)

    @property
    def num_waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._waiting)

    def idle(self) -> bool:
        return not self._waiting and not self._streams and self._inflight is None

    def submit(self, item) -> list:
        """Queues a Request (or a list; a Cancel in it cancels). Returns the events of what
        failed at once (not a Request, an id already in flight)."""
        events = []
        for request in (list(item) if isinstance(item, (list, tuple)) else [item]):
            if isinstance(request, Cancel):
                events += self.cancel(request.request_id)
                continue
            given = request.request_id if isinstance(request, Request) else None
            request_id = given if given is not None else self._new_id()
            if not isinstance(request, Request):
                events.append(error_completion(
                    request_id, f"expected a Request, got {type(request).__name__}"))
            elif request_id in self._waiting or request_id in self._streams:
                events.append(error_completion(  # its results could not be told apart
                    request_id, f"request_id {request_id!r} is already in flight"))
            else:
                self._waiting[request_id] = request
        return events

    def cancel(self, request_id: str) -> list:
        """Ends a queued request now (its Completion is returned) or a running one at the next
        step; an unknown id does nothing."""
        if request_id in self._waiting:
            del self._waiting[request_id]
            return [Completion("", request_id=request_id, finish_reason="cancelled")]
        if request_id in self._streams:
            self._cancels[request_id] = None
        return []

    def step(self, decisions: Optional[Decisions] = None) -> list:
        """One scheduler step (see the module docstring). `decisions`: the leader's, replayed
        by another process; None: decide here (and publish them where there is a log)."""
        events = []
        if decisions is None:
            decisions = self._decide(events)
            if self.log is not None:
                self.log.publish(decisions)
        for request_id in decisions.cancelled:
            stream = self._streams.get(request_id)
            if stream is not None:
                events += self._finish(stream, "cancelled")
        for admission in decisions.admitted:
            events += self._admit(admission)
        inserted = self._prefill(events)
        spec, structured = self.speculation, self.structured_decoding
        if (spec is not None and self._running and spec.wants(self._running)
                and not structured.processes(self._running)):
            # drafts continue every token so far: read the step in flight and first tokens
            events += self._read_inflight() + self._first_tokens(inserted)
            inserted, drafts = [], spec.plan(self._running) if self._running else None
            if drafts is not None:
                running = dict(self._running)
                alternatives = any(s.request.logprobs for s in running.values())
                self.state, out = self.engine.verify(self.state, spec.table(drafts), spec.k,
                                                     alternatives)
                return events + spec.take(out, running, drafts, self._take)
        dispatched = None
        if self._inflight is not None and structured.needs_last_token(self._running):
            events += self._read_inflight()      # the next mask needs its last token
        if self._running:
            self.state, handle = self.engine.generate(
                self.state, controls=structured.controls(self._running))
            dispatched = (handle, dict(self._running))
            for stream in self._running.values():
                stream.fed += 1       # this step writes the KV of its last token
            if spec is not None:
                spec.decoded(self._running)
        events += self._read_inflight()
        self._inflight = dispatched
        return events + self._first_tokens(inserted)

    def _read_inflight(self) -> list:
        """The tokens of the step in flight, if any (it is then no longer in flight)."""
        if self._inflight is None:
            return []
        (handle, snapshot), self._inflight = self._inflight, None
        out = self.engine.read(handle)
        return sum((self._take(stream, out, slot) for slot, stream in snapshot.items()
                    if not stream.done), [])

    def _first_tokens(self, inserted: list) -> list:
        return sum((self._guarded(s, self._on_first_token) for s in inserted if not s.done), [])

    def _take(self, stream: Stream, out: TokenOutput, row: int) -> list:
        return self._guarded(stream, self._on_token, out, row)

    # ---- decisions and admission ------------------------------------------------------------
    def _new_id(self) -> str:
        """An automatic id: a per-scheduler random prefix and a counter, never one in flight."""
        while True:
            request_id = f"{self._auto_prefix}{next(self._auto_ids)}"
            if request_id not in self._waiting and request_id not in self._streams:
                return request_id

    def _decide(self, events: list) -> Decisions:
        cancelled, self._cancels = list(self._cancels), {}
        admitted = []
        while self._waiting and len(admitted) < len(self._free):
            request_id, request = self._waiting.popitem(last=False)
            try:
                request, ids = prepare(request, self.tokenizer, self.limits)
            except Exception as e:  # a bad request fails alone
                events.append(error_completion(request_id, str(e)))
                continue
            admitted.append(Admission(dataclasses.replace(request, prompt=tuple(ids)),
                                      request_id))
        return Decisions(admitted, cancelled)

    def _admit(self, admission: Admission) -> list:
        request, prompt_ids = admission.request, list(admission.request.prompt)
        slot = heapq.heappop(self._free)
        stream = Stream(request, admission.request_id, prompt_ids, slot,
                        TextStream(self.tokenizer, prompt_ids, request.stop))
        self._streams[stream.request_id] = stream
        self._prefilling.append(stream)
        return self._guarded(stream, self.structured_decoding.admit)

    # ---- prefill ----------------------------------------------------------------------------
    def _prefill(self, events: list) -> list:
        """Prefills within the budget; returns the streams inserted into their slots."""
        budget = self.prefill_budget if self._running else None
        spent, inserted = 0, []
        while self._prefilling:
            batch = self._batchable(budget, spent)
            if len(batch) > 1:
                spent += sum(len(s.prompt_ids) for s in batch)
                inserted += self._prefill_batch(batch, events)
                continue
            stream = self._prefilling[0]
            self.prefixes.lookup(stream)
            size = min(self.largest_chunk, budget or self.largest_chunk,
                       len(stream.prompt_ids) - stream.prefilled)
            if spent and budget is not None and spent + size > budget:
                break
            spent += size
            events += self._guarded(stream, self._prefill_chunk, size)
            if stream.inserted and not stream.done:
                inserted.append(stream)
        return inserted

    def _batchable(self, budget: Optional[int], spent: int) -> list:
        """The leading streams that fit one batched prefill: whole short prompts, no echo."""
        if self.max_prefill_batch < 2 or not self.engine.prefill_batch_sizes:
            return []
        batch = []
        for stream in itertools.islice(self._prefilling, self.max_prefill_batch):
            if self.prefixes.shares_prefix(stream, batch):
                break           # it continues that one's Prefix from the cache once it is kept
            self.prefixes.lookup(stream)
            n = len(stream.prompt_ids)
            if (stream.prefilled or stream.request.echo or n > self.largest_chunk
                    or (budget is not None and spent + n > budget and (spent or batch))):
                break
            batch.append(stream)
            spent += n
        return batch

    def _prefill_batch(self, batch: list, events: list) -> list:
        try:
            results = self.engine.prefill_batch([s.prompt_ids for s in batch],
                                                [self._sample_params(s.request) for s in batch])
        except Exception:  # whose fault? one at a time, so a bad one fails alone
            results = [None] * len(batch)
        for stream, done in zip(batch, results):
            if done is None:
                events += self._guarded(stream, self._prefill_chunk, len(stream.prompt_ids))
            else:
                stream.prefix, stream.prefilled = done[0], len(stream.prompt_ids)
                events += self._guarded(stream, self._insert, done[1])
        return [s for s in batch if s.inserted and not s.done]

    @staticmethod
    def _sample_params(request: Request) -> SampleParams:
        return SampleParams(request.temperature, request.top_p, request.top_k, request.seed)

    def _prefill_chunk(self, stream: Stream, size: int) -> None:
        """The stream's next prompt chunk; after its last one, its insertion into its slot."""
        ids, start = stream.prompt_ids, stream.prefilled
        echo = stream.request.echo
        end = start + size
        prefix, result = self.engine.prefill(
            ids[start:end], self._sample_params(stream.request), existing_prefix=stream.prefix,
            echo=echo, next_token=ids[end] if echo and end < len(ids) else None)
        stream.prefix, stream.prefilled = prefix, end
        if echo:
            stream.echo_results.append((result, size))
        if end == len(ids):
            self._insert(stream, result)

    def _insert(self, stream: Stream, result: PrefillResult) -> None:
        self.state = self.structured_decoding.insert(stream, stream.prefix, result.arm,
                                                     self.state, stream.slot)
        prefix = stream.prefix
        stream.prefix, stream.first, stream.inserted = None, result, True
        self._prefilling.remove(stream)
        self._running[stream.slot] = stream
        self.prefixes.store(stream, prefix)

    # ---- tokens -----------------------------------------------------------------------------
    def _guarded(self, stream: Stream, work, *args) -> list:
        """work(stream, *args) -> its events (None: none); an exception ends `stream` alone
        with finish_reason "error" and returns its Completion instead."""
        try:
            return work(stream, *args) or []
        except Exception as e:
            return self._finish(stream, "error", error=f"{type(e).__name__}: {e}")

    def _on_first_token(self, stream: Stream) -> list:
        result, stream.first = stream.first, None
        if stream.request.echo:
            stream.record_echo(self.engine)
        if stream.structured is not None:
            return []   # its first token: its first decode step's (StructuredDecoding.insert)
        return self._on_token(stream, self.engine.read(result), 0)

    def _on_token(self, stream: Stream, out: TokenOutput, row: int) -> list:
        """Takes row `row` of a TokenOutput for `stream`."""
        token, r = int(out.token_ids[row]), stream.request
        finished = self.structured_decoding.advance(stream, token, self.eos_token)
        if len(stream.output_ids) >= r.min_tokens and (
                (token == self.eos_token and not r.ignore_eos) or token in r.stop_tokens):
            return self._finish(stream, "stop", token if token in r.stop_tokens else None)
        stop = stream.record(out, row)
        if stop is not None:
            return self._finish(stream, "stop", stop)
        if finished:           # the grammar allows nothing but EOS
            return self._finish(stream, "stop")
        if len(stream.output_ids) >= r.max_tokens:
            return self._finish(stream, "length")
        return stream.released_events()

    def _finish(self, stream: Stream, reason: str, stop_reason=None,
                error: Optional[str] = None) -> list:
        """Ends an admitted stream: frees its slot; returns its last events and Completion."""
        if stream.done:
            return []
        stream.done = True
        del self._streams[stream.request_id]
        reason, stop_reason, error = stream.finish_text(reason, stop_reason, error)
        if stream.inserted:
            if reason in ("stop", "length") and error is None:
                self.prefixes.store_output(stream, self.state)
            self._running.pop(stream.slot, None)
            self.state = self.engine.release(self.state, stream.slot)
            if self.speculation is not None:
                self.speculation.forget(stream.slot)
        else:
            self._prefilling.remove(stream)
            self.prefixes.release(stream)
            stream.prefix = None
        heapq.heappush(self._free, stream.slot)
        return stream.last_events(reason, stop_reason, error)

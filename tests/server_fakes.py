"""A fake scheduler for HTTP server tests: the scheduler API, no model, no JAX.

Request i's tokens are printable bytes that depend only on its prompt and position, one per
`step()` for every running request; `step_s` slows steps down so tests can catch requests
in flight.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from grok.serving.http.engine_loop import Backend
from grok.serving.results import Completion
from grok.tokenizer import ByteTokenizer

SEQUENCE_LEN = 256


@dataclasses.dataclass
class FakeToken:
    request_id: str
    index: int
    token_id: int
    text: str
    logprob: float
    top_logprobs: list = None


def fake_token(prompt_ids, index: int) -> int:
    """A lowercase letter's byte id from the prompt and the position."""
    return ByteTokenizer.NUM_SPECIAL + ord("a") + (sum(prompt_ids) + 7 * index) % 26


class FakeScheduler:
    def __init__(self, slots: int = 4, step_s: float = 0.0):
        self.slots = slots
        self.step_s = step_s
        self.tokenizer = ByteTokenizer()
        self.waiting: list = []
        self.running: dict = {}     # request_id -> [request, output ids]
        self.submitted = 0

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    prefix_cache_hit_tokens = 0     # no prefix cache
    prefix_cache_query_tokens = 0

    def idle(self) -> bool:
        return not self.running and not self.waiting

    speculative_counts = (0, 0)     # no speculative decoding (drafted, accepted)

    def submit(self, item) -> list:
        for request in item if isinstance(item, list) else [item]:
            self.waiting.append(request)
            self.submitted += 1
        return []

    def cancel(self, request_id: str) -> list:
        for request in self.waiting:
            if request.request_id == request_id:
                self.waiting.remove(request)
                return [self._completion(request, [], "cancelled")]
        if request_id in self.running:
            request, out = self.running.pop(request_id)
            return [self._completion(request, out, "cancelled")]
        return []

    def step(self) -> list:
        if self.step_s:
            time.sleep(self.step_s)
        while self.waiting and len(self.running) < self.slots:
            request = self.waiting.pop(0)
            self.running[request.request_id] = [request, []]
        events = []
        for request_id, (request, out) in list(self.running.items()):
            token = fake_token(request.prompt, len(out))
            out.append(token)
            events.append(FakeToken(request_id, len(out) - 1, token,
                                    self.tokenizer.decode([token]), -1.0, [(token, -1.0)]))
            if len(out) >= request.max_tokens:
                del self.running[request_id]
                events.append(self._completion(request, out, "length"))
        return events

    def _completion(self, request, out, reason) -> Completion:
        return Completion(self.tokenizer.decode(out), request_id=request.request_id,
                          prompt_ids=list(request.prompt), output_ids=list(out),
                          finish_reason=reason, logprobs=[-1.0] * len(out),
                          top_logprobs=[[(t, -1.0)] for t in out])


def fake_backend(scheduler: FakeScheduler) -> Backend:
    return Backend(scheduler, scheduler.slots, scheduler.tokenizer, ByteTokenizer.vocab_size,
                   SEQUENCE_LEN, pad_token=0)


class ServerThread:
    """An in-process server (grok.serving.http.make_server) on a free port, in a thread."""

    def __init__(self, build, **kwargs):
        from grok.serving.http import make_server

        self.server = make_server(build, model_name=kwargs.pop("model_name", "fake"),
                                  port=0, **kwargs)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        sock = self.server.servers[0].sockets[0]
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)

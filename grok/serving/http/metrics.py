"""Prometheus metrics of one server (GET /metrics), in their own registry.

Names follow vLLM's, with the `grok_` prefix. The engine thread records them as events come
out of the scheduler (`on_submit`, `on_token`, `on_finish`, `set_load`); prometheus-client's
metrics are thread-safe, so /metrics reads them from the event loop directly.
Prefix caching (issue 13) reports through `add_prefix_cache`.
"""

from __future__ import annotations

import time
from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

# Bucket bounds in seconds: from one fast decode step on an accelerator to a long CPU prefill.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
               30.0, 40.0, 50.0, 60.0, 120.0, 240.0)
# A step's mask fill: tens of microseconds per JSON row at a 131k vocabulary, more for
# grammars with large free-text lexemes.
MASK_FILL_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                     0.05, 0.1)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        r, label = self.registry, {"model_name": model_name}
        self.running = Gauge("grok_requests_running", "Requests holding a slot.",
                             registry=r)
        self.waiting = Gauge("grok_requests_waiting", "Requests queued for a slot.",
                             registry=r)
        self.ttft = Histogram("grok_time_to_first_token_seconds",
                              "From arrival to the first new token.", buckets=TTFT_BUCKETS,
                              registry=r)
        self.tpot = Histogram("grok_time_per_output_token_seconds",
                              "Mean time between a request's tokens after the first.",
                              buckets=TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("grok_e2e_request_latency_seconds", "From arrival to the end.",
                             buckets=E2E_BUCKETS, registry=r)
        self.prompt_tokens = Counter("grok_prompt_tokens", "Prompt tokens of finished requests.",
                                     registry=r)
        self.generation_tokens = Counter("grok_generation_tokens", "Tokens generated.",
                                         registry=r)
        self.requests = Counter("grok_requests", "Finished requests by finish_reason.",
                                ["finish_reason"], registry=r)
        self.prefix_hit = Counter("grok_prefix_cache_hit_tokens",
                                  "Prompt tokens served from the prefix cache.", registry=r)
        self.prefix_query = Counter("grok_prefix_cache_query_tokens",
                                    "Prompt tokens looked up in the prefix cache.", registry=r)
        self.constrained = Counter("grok_constrained_requests",
                                   "Requests with a structured-output constraint (JSON schema, "
                                   "regex, choice, grammar or tools).", registry=r)
        self.mask_fill = Histogram("grok_mask_fill_seconds",
                                   "Host time filling a decode step's allowed-token masks.",
                                   buckets=MASK_FILL_BUCKETS, registry=r)
        self.spec_draft = Counter("grok_spec_draft_tokens", "Speculative tokens drafted and "
                                  "verified.", registry=r)
        self.spec_accepted = Counter("grok_spec_accepted_tokens", "Speculative drafted tokens "
                                     "accepted (equal to the sampled token).", registry=r)
        for reason in ("stop", "length", "cancelled", "error"):
            self.requests.labels(finish_reason=reason)   # export 0s before the first request
        self.info = Gauge("grok_model_info", "The served model (value 1).", ["model_name"],
                          registry=r)
        self.info.labels(**label).set(1)

    def set_load(self, running: int, waiting: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)

    def on_first_token(self, arrival: float, now: Optional[float] = None) -> None:
        self.ttft.observe((now or time.monotonic()) - arrival)

    def on_finish(self, reason: str, arrival: float, first_token: Optional[float],
                  prompt_tokens: int, output_tokens: int, now: Optional[float] = None) -> None:
        now = now or time.monotonic()
        self.e2e.observe(now - arrival)
        if first_token is not None and output_tokens > 1:
            self.tpot.observe((now - first_token) / (output_tokens - 1))
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(output_tokens)
        self.requests.labels(finish_reason=reason).inc()

    def on_constrained(self, count: int) -> None:
        self.constrained.inc(count)

    def add_prefix_cache(self, hit_tokens: int, query_tokens: int) -> None:
        """For the prefix cache (issue 13): tokens found and tokens looked up at admission."""
        self.prefix_hit.inc(hit_tokens)
        self.prefix_query.inc(query_tokens)

    def add_speculation(self, drafted: int, accepted: int) -> None:
        """Speculative decoding: tokens drafted and verified, and of those accepted."""
        self.spec_draft.inc(drafted)
        self.spec_accepted.inc(accepted)

    def render(self) -> bytes:
        return generate_latest(self.registry)

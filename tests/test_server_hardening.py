"""HTTP server hardening against a fake scheduler: bodies bounded as they stream, list fields
bounded, off-loop tokenization, metrics behind the key, disconnects and 500 bodies."""

import argparse
import dataclasses
import json
import logging
import os
import select
import socket
import threading
import time

import h11
import httpx
import pytest

from fake_engine import FakeEngine
from server_fakes import SEQUENCE_LEN, FakeScheduler, ServerThread, fake_backend
from test_server_errors import KEY, MODEL, http  # noqa: F401 (the keyed client fixture)
from grok.serving.http.body_limit import MAX_BODY_BYTES
from grok.serving.http.engine_loop import Backend
from grok.serving.http.server import default_model_name
from grok.serving.http.protocol import (MAX_CONTENT_PARTS, MAX_LIST_ENTRIES, MAX_MESSAGES,
                                        MAX_PROMPTS, MAX_TOKEN_LIST)
from grok.serving.http.workers import max_text_chars
from grok.serving.prefix_cache import PrefixCache, namespace_of
from grok.serving.requests import MAX_STOP_CHARS, MAX_STOP_TOKENS, Request
from grok.serving.scheduler import Scheduler
from grok.tokenizer import ByteTokenizer


def wait_ready(url: str) -> None:
    """Until /health says the (fake) model is ready: 30 s at most."""
    deadline = time.monotonic() + 30
    while httpx.get(url + "/health").status_code != 200:
        assert time.monotonic() < deadline, "the server did not get ready"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def server():
    """A fake-scheduler server with an API key, ready."""
    with ServerThread(lambda: fake_backend(FakeScheduler(slots=4)), api_key=KEY,
                      model_name=MODEL) as s:
        wait_ready(s.url)
        yield s


def _connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _response(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_declared_length_over_limit_refused_before_the_body(server):
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1))
        reply = _response(sock)       # answered without a byte of the body sent
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"request body over" in reply


def test_chunked_upload_past_limit_refused_as_it_streams(server, http):
    """A chunked body is refused once it passes the limit: the client is answered while it is
    still sending, and the server's memory grows by less than twice the limit."""
    peak, stop = [_rss_bytes()], threading.Event()
    start_rss = peak[0]

    def sample():
        while not stop.is_set():
            peak.append(_rss_bytes())
            stop.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    chunk = b"x" * 2**20
    sent, answered = 0, False
    try:
        with _connect(server) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            try:
                while sent < 8 * MAX_BODY_BYTES:       # bounded: 8x the limit at most
                    if select.select([sock], [], [], 0)[0]:
                        answered = True
                        break
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                answered = True
            reply = _response(sock)
    finally:
        stop.set()
        sampler.join()
    assert answered, f"sent {sent} bytes without an answer"
    assert sent < 3 * MAX_BODY_BYTES, sent
    if reply:     # the 413 (a reset may drop it after the server stops reading)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert max(peak) - start_rss < 2 * MAX_BODY_BYTES, (max(peak) - start_rss)
    assert http.get("/health").status_code == 200      # still serving


def test_body_within_limit_still_served(http):
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"][0]["text"]) == 2


# ---- nothing heavy on the event loop ------------------------------------------------------
class SlowTokenizer(ByteTokenizer):
    """The byte tokenizer taking time in proportion to the text, without holding the GIL (as
    SentencePiece does): the largest accepted text takes FULL_S to encode."""

    FULL_S = 3.0

    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self.large_started = threading.Event()

    def encode(self, text: str) -> list[int]:
        if len(text) > self.max_chars // 2:
            self.large_started.set()
        time.sleep(self.FULL_S * len(text) / self.max_chars)
        return super().encode(text)


@pytest.fixture(scope="module")
def slow_server():
    scheduler = FakeScheduler(slots=4)
    tokenizer = SlowTokenizer(max_text_chars(SEQUENCE_LEN))
    backend = dataclasses.replace(fake_backend(scheduler), tokenizer=tokenizer)
    with ServerThread(lambda: backend, model_name=MODEL) as s:
        s.tokenizer = tokenizer
        wait_ready(s.url)
        yield s


def _timed(client: httpx.Client, method: str, path: str, **kwargs) -> float:
    start = time.perf_counter()
    response = client.request(method, path, **kwargs)
    assert response.status_code == 200, response.text
    return time.perf_counter() - start


SHORT = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": 0}


def test_large_tokenize_and_prompt_do_not_stall_others(slow_server):
    """While a maximum-size /tokenize and a maximum-size completion prompt are being tokenized,
    /health and a short greedy completion answer within 2 s (or 5x their quiet time)."""
    big = "y" * max_text_chars(SEQUENCE_LEN)
    with httpx.Client(base_url=slow_server.url, timeout=60) as client:
        quiet = max(_timed(client, "GET", "/health"),
                    _timed(client, "POST", "/v1/completions", json=SHORT))
        results = {}

        def send(name, path, body):
            with httpx.Client(base_url=slow_server.url, timeout=60) as own:
                results[name] = own.post(path, json=body)

        heavy = [threading.Thread(target=send, args=("tokenize", "/tokenize",
                                                     {"prompt": big})),
                 threading.Thread(target=send, args=("complete", "/v1/completions",
                                                     {"model": MODEL, "prompt": big}))]
        for thread in heavy:
            thread.start()
        assert slow_server.tokenizer.large_started.wait(30)
        loaded = max(_timed(client, "GET", "/health"),
                     _timed(client, "POST", "/v1/completions", json=SHORT))
        for thread in heavy:
            thread.join(60)
    assert loaded < max(2.0, 5 * quiet), (loaded, quiet)
    assert loaded < SlowTokenizer.FULL_S      # did not wait for the large ones
    assert results["tokenize"].status_code == 200
    assert results["tokenize"].json()["count"] == len(big)
    assert results["complete"].status_code == 400          # too long for the context
    assert results["complete"].json()["error"]["param"] == "prompt"


def test_text_beyond_any_context_refused_before_tokenizing(http):
    """A prompt far longer than any context could hold is a 400 naming it, at once."""
    huge = "z" * (max_text_chars(SEQUENCE_LEN) + 1)
    for path, body in (("/tokenize", {"prompt": huge}),
                       ("/v1/completions", {"model": MODEL, "prompt": huge})):
        r = http.post(path, json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "prompt"
        assert "characters" in r.json()["error"]["message"]


OVERSIZED_LISTS = [   # (path, body, the field the 400 names)
    ("/v1/completions", {"model": MODEL, "prompt": "hi",
                         "stop_token_ids": [5] * (MAX_STOP_TOKENS + 1)}, "stop_token_ids"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "stop": ["a"] * 17}, "stop"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "stop": "s" * (MAX_STOP_CHARS + 1)},
     "stop"),
    ("/v1/completions", {"model": MODEL, "prompt": ["hi"] * (MAX_PROMPTS + 1)}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi",
                         "logit_bias": {str(i): 0.0 for i in range(MAX_LIST_ENTRIES + 1)}},
     "logit_bias"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "a"}]
                              * (MAX_MESSAGES + 1)}, "messages"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}] * (MAX_CONTENT_PARTS + 1)}]},
     "messages[0].content"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "a"}],
                              "tools": [{}] * (MAX_LIST_ENTRIES + 1)}, "tools"),
    ("/tokenize", {"messages": [{"role": "user", "content": "a"}] * (MAX_MESSAGES + 1)},
     "messages"),
    ("/detokenize", {"tokens": [5] * (MAX_TOKEN_LIST + 1)}, "tokens"),
]


@pytest.mark.parametrize("path,body,param", OVERSIZED_LISTS,
                         ids=[f"{p}-{i}" for i, (_, _, p) in enumerate(OVERSIZED_LISTS)])
def test_oversized_list_fields_refused_naming_the_field(http, path, body, param):
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"]["param"] == param, r.json()


def test_request_bounds_list_fields():
    """The Python API's Request bounds them too (the scheduler's per-token work stays small)."""
    with pytest.raises(ValueError, match="stop_tokens"):
        Request(prompt="hi", stop_tokens=[5] * (MAX_STOP_TOKENS + 1))
    with pytest.raises(ValueError, match="stop"):
        Request(prompt="hi", stop=["x" * (MAX_STOP_CHARS + 1)])
    assert Request(prompt="hi", stop_tokens=[5] * MAX_STOP_TOKENS).stop_tokens[-1] == 5


# ---- no cross-user cache leak -------------------------------------------------------------
def test_metrics_and_openapi_need_the_key(server):
    for path in ("/metrics", "/openapi.json"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"
        ok = httpx.get(server.url + path, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200, (path, ok.text)
    assert httpx.get(server.url + "/health").status_code == 200     # load balancers


def _hits(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("grok_prefix_cache_hit_tokens_total"):
            return float(line.split()[-1])
    raise AssertionError("no prefix-cache counter in /metrics")


@pytest.fixture(scope="module")
def cached_server():
    """A real Scheduler (prefix cache on) over the fake engine; two API keys, isolated."""
    engine = FakeEngine(batch_size=2, buckets=(8, 64), sequence_len=SEQUENCE_LEN)
    scheduler = Scheduler(engine, ByteTokenizer(), prefix_cache_tokens=4096)
    backend = Backend(scheduler, 2, ByteTokenizer(), ByteTokenizer.vocab_size, SEQUENCE_LEN)
    with ServerThread(lambda: backend, model_name=MODEL, api_key="alice,bob",
                      isolate_cache_per_key=True) as s:
        wait_ready(s.url)
        yield s


def _client(server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"},
                        timeout=30)


def test_cache_salt_separates_and_equal_salts_share(cached_server):
    system = "You are a helpful assistant. The PIN is 4711. " * 2
    with _client(cached_server, "alice") as alice:
        def ask(salt, tail):
            body = {"model": MODEL, "prompt": system + tail, "max_tokens": 2, "temperature": 0}
            if salt is not None:
                body["cache_salt"] = salt
            r = alice.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            return _hits(alice)

        start = _hits(alice)
        assert ask("tenant-a", "Hello?") == start                 # nothing cached yet
        assert ask("tenant-b", "Howdy?") == start                 # another salt: no hit
        assert ask(None, "Hi?") == start                          # no salt: its own namespace
        shared = ask("tenant-a", "Hey?")
        assert shared - start >= len(system) - 16                 # equal salts share the prefix
    r = httpx.post(cached_server.url + "/v1/completions", headers={"Authorization": "Bearer x"},
                   json={"model": MODEL, "prompt": "x", "cache_salt": ""})
    assert r.status_code == 401


def test_cache_isolated_per_api_key(cached_server):
    """Different keys never share, even with the same cache_salt; the same key does."""
    prompt = {"model": MODEL, "max_tokens": 2, "temperature": 0, "cache_salt": "same"}
    text = "A long shared system prompt for the per-key test, long enough. " * 2
    with _client(cached_server, "alice") as alice, _client(cached_server, "bob") as bob:
        r = alice.post("/v1/completions", json={**prompt, "prompt": text + "one"})
        assert r.status_code == 200, r.text
        start = _hits(alice)
        assert bob.post("/v1/completions", json={**prompt, "prompt": text + "two"}
                        ).status_code == 200
        assert _hits(bob) == start
        assert alice.post("/v1/completions", json={**prompt, "prompt": text + "three"}
                          ).status_code == 200
        assert _hits(alice) > start


def test_cache_salt_field_checked(http):
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "cache_salt": ""})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache_salt"
    with pytest.raises(ValueError, match="cache_salt"):
        Request(prompt="hi", cache_salt=7)


def test_prefix_cache_namespaces():
    cache = PrefixCache(1024, lambda prefix, n: prefix)
    prompt = list(range(3, 3 + 40))
    assert cache.insert(prompt, "kv", 64, namespace_of("a"))
    assert cache.acquire(prompt + [5], namespace_of("b")) is None
    assert cache.acquire(prompt + [5]) is None
    assert cache.acquire(prompt + [5], namespace_of("a")).length == 40
    assert cache.insert(prompt, "kv", 64)            # the same ids in another namespace
    assert len(cache) == 2
    assert namespace_of(None) == namespace_of("") == 0 != namespace_of("a")


# ---- the rest: names, disconnects, half-closed clients, 500 bodies ------------------------
def test_non_utf8_directory_served_under_a_valid_name(tmp_path):
    raw = os.fsdecode(b"model-\xff\xfe")            # what Python makes of a non-UTF-8 name
    name = default_model_name(argparse.Namespace(checkpoint=str(tmp_path / raw), config=None))
    scheduler = FakeScheduler(slots=2)
    with ServerThread(lambda: fake_backend(scheduler), model_name=name) as s:
        wait_ready(s.url)
        models = httpx.get(s.url + "/v1/models")
        assert models.status_code == 200, models.text
        served = models.json()["data"][0]["id"]
        assert served == "model-\ufffd\ufffd"
        r = httpx.post(s.url + "/v1/completions", json={"model": served, "prompt": "hi",
                                                        "max_tokens": 2})
        assert r.status_code == 200 and r.json()["model"] == served


def test_disconnect_mid_body_logs_no_traceback(server, http, caplog):
    with caplog.at_level(logging.DEBUG):
        with _connect(server) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": ")
        assert http.get("/health").status_code == 200     # served after it
        assert http.post("/v1/completions", json={"model": MODEL, "prompt": "x",
                                                  "max_tokens": 1}).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


def test_half_closed_client_is_answered(server):
    body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": 3}).encode()
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + KEY.encode() + b"\r\nContent-Type: application/json\r\nConnection: "
                     b"close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        sock.shutdown(socket.SHUT_WR)                  # done sending; still reading
        reply = _response(sock)
    client = h11.Connection(h11.CLIENT)                # parsed as an HTTP client would
    client.send(h11.Request(method="POST", target="/", headers=[("Host", "x")]))
    client.receive_data(reply)
    events = []
    for _ in range(20):                                # 103s, the response, data, the end
        events.append(client.next_event())
        if isinstance(events[-1], h11.EndOfMessage) or events[-1] is h11.NEED_DATA:
            break
    final = [e for e in events if isinstance(e, h11.Response)]
    assert final and final[0].status_code == 200, reply[:300]
    text = b"".join(e.data for e in events if isinstance(e, h11.Data))
    assert len(json.loads(text)["choices"][0]["text"]) == 3


def test_500_bodies_hold_no_internal_text(caplog):
    class Failing(FakeScheduler):
        def step(self):
            if self.running:
                self.running.clear()
                raise RuntimeError("secret state at /srv/weights/ckpt-0")
            return super().step()

    scheduler = Failing(slots=2)
    with ServerThread(lambda: fake_backend(scheduler)) as s:
        wait_ready(s.url)
        for stream in (False, True):
            r = httpx.post(s.url + "/v1/completions", timeout=10, json={
                "model": MODEL, "prompt": "hi", "max_tokens": 4, "stream": stream})
            text = r.text
            assert "secret" not in text and "/srv" not in text and "RuntimeError" not in text
            assert (r.status_code == 500) if not stream else ("internal error" in text), text

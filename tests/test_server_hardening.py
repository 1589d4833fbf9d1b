"""HTTP server hardening against a fake scheduler: bodies bounded as they stream, list fields
bounded, off-loop tokenization, metrics behind the key, disconnects and 500 bodies."""

import socket
import select
import threading
import time

import httpx
import pytest

from server_fakes import FakeScheduler, ServerThread, fake_backend
from grok.serving.http.body_limit import MAX_BODY_BYTES

KEY = "sekret"
MODEL = "fake"


@pytest.fixture(scope="module")
def server():
    scheduler = FakeScheduler(slots=4)
    with ServerThread(lambda: fake_backend(scheduler), api_key=KEY, model_name=MODEL) as s:
        s.scheduler = scheduler
        yield s


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=30) as client:
        client.get("/health")
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        yield client


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

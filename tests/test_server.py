"""The HTTP server end to end: the demo model served by a real process on 127.0.0.1, driven
with the official `openai` package and httpx. One server for the module (8 slots); the last
test stops it with SIGTERM while requests are in flight."""

import asyncio
import json
import re
import signal
import time

import httpx
import openai
import pytest

from grok.benchmarks import serving as bench

SLOTS = 8
MODEL = "demo"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    process, url = bench.start_demo_server(SLOTS)
    yield process, url
    if process.poll() is None:
        bench.stop_server(process)


@pytest.fixture(scope="module")
def url(server):
    return server[1]


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=2)  # keep-alive races


def stream_text(stream, chat=False):
    texts, reasons = {}, {}
    for chunk in stream:
        for choice in chunk.choices:
            piece = choice.delta.content if chat else choice.text
            texts[choice.index] = texts.get(choice.index, "") + (piece or "")
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    return texts, reasons


def metric(url, name):
    text = httpx.get(url + "/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_health_models(url):
    assert httpx.get(url + "/health").status_code == 200
    assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == [MODEL]


def test_completion_streamed_equals_whole(client):
    args = dict(model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=0.8, seed=7)
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True},
                                            **args))
    texts, reasons = stream_text(chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert len(whole.choices[0].text) > 0
    assert texts[0] == whole.choices[0].text
    assert reasons[0] == whole.choices[0].finish_reason == "length"
    assert whole.usage.prompt_tokens == len("Once upon a time")   # byte tokenizer
    assert whole.usage.completion_tokens == 24
    assert whole.usage.total_tokens == 24 + 16


def test_chat_streamed_equals_whole(client):
    args = dict(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Hi there"}],
                max_tokens=20, temperature=0.0)
    whole = client.chat.completions.create(**args)
    message = whole.choices[0].message
    assert message.role == "assistant" and message.content
    texts, reasons = stream_text(client.chat.completions.create(stream=True, **args), chat=True)
    assert texts[0] == message.content
    assert reasons[0] == whole.choices[0].finish_reason
    assert whole.usage.completion_tokens <= 20


def test_token_id_prompts_and_batch(client):
    ids = [3 + b for b in b"Hello"]
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    by_text = client.completions.create(model=MODEL, prompt="Hello", max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    batch = client.completions.create(model=MODEL, prompt=["Hello", "Bye"], max_tokens=8,
                                      temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == by_text.choices[0].text
    assert batch.usage.prompt_tokens == 5 + 3


def test_stop_strings(client):
    free = client.completions.create(model=MODEL, prompt="The cat", max_tokens=30,
                                     temperature=0).choices[0].text
    stop = free[5:7]           # a stop string that occurs (maybe first earlier than 5)
    cut = free[:free.index(stop)]
    whole = client.completions.create(model=MODEL, prompt="The cat", max_tokens=30,
                                      temperature=0, stop=[stop, "never-there"])
    assert whole.choices[0].text == cut
    assert whole.choices[0].finish_reason == "stop"
    texts, reasons = stream_text(client.completions.create(
        model=MODEL, prompt="The cat", max_tokens=30, temperature=0, stop=stop, stream=True))
    assert texts[0] == cut and reasons[0] == "stop"


def test_logprobs_and_echo(client):
    out = client.completions.create(model=MODEL, prompt="Hey", max_tokens=5, temperature=0,
                                    logprobs=3, echo=True)
    choice = out.choices[0]
    assert choice.text.startswith("Hey") and len(choice.text) == 8
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3 + 5
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == choice.text
    for alternatives, token, value in zip(lp.top_logprobs[3:], lp.tokens[3:],
                                          lp.token_logprobs[3:]):
        assert alternatives[token] == pytest.approx(value)   # greedy: the best alternative
        assert max(alternatives.values()) == pytest.approx(value)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                          max_tokens=4, temperature=0, logprobs=True,
                                          top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == 4 and all(len(c.top_logprobs) == 2 for c in content)


def test_n_and_seeds(client):
    args = dict(model=MODEL, prompt="Seeds", max_tokens=12, temperature=1.0, seed=123)
    first = client.completions.create(n=2, **args)
    second = client.completions.create(n=2, **args)
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in second.choices]             # reproducible
    assert len(set(texts)) == 2                                  # each choice its own seed
    assert first.usage.completion_tokens == 24
    other = client.completions.create(n=1, **{**args, "seed": 124})
    assert other.choices[0].text == texts[1]                     # choice j uses seed + j


def test_batch_invariance(url):
    """32 concurrent seeded requests over 8 slots each equal the same request alone."""
    def body(i):
        return {"model": MODEL, "prompt": f"request {i}:", "max_tokens": 10,
                "temperature": 1.0, "seed": 1000 + i}

    alone = [httpx.post(url + "/v1/completions", json=body(i), timeout=60).json()
             ["choices"][0]["text"] for i in range(32)]

    async def together():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            replies = await asyncio.gather(*(c.post("/v1/completions", json=body(i))
                                             for i in range(32)))
        return [r.json()["choices"][0]["text"] for r in replies]

    assert asyncio.run(together()) == alone


def test_dropped_streams_free_their_slots(url):
    async def drop_eight():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            async def one(i):
                # Greedy: none of these prompts meets EOS within max_tokens on the demo, so
                # each request can only end by being cancelled.
                body = {"model": MODEL, "prompt": f"drop {i}", "max_tokens": 200,
                        "stream": True, "temperature": 0}
                async with c.stream("POST", "/v1/completions", json=body) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: ") and json.loads(line[6:])["choices"]:
                            return          # one token seen: drop the connection
            await asyncio.gather(*(one(i) for i in range(8)))

    cancelled = metric(url, 'grok_requests_total{finish_reason="cancelled"}')
    asyncio.run(drop_eight())
    deadline = time.monotonic() + 5
    while metric(url, "grok_requests_running") > 0:
        assert time.monotonic() < deadline, "slots still held after the clients went away"
        time.sleep(0.05)
    assert metric(url, 'grok_requests_total{finish_reason="cancelled"}') >= cancelled + 8


def test_metrics(url):
    text = httpx.get(url + "/metrics").text
    for name in ("grok_requests_running", "grok_requests_waiting",
                 "grok_time_to_first_token_seconds_count",
                 "grok_time_per_output_token_seconds_count",
                 "grok_e2e_request_latency_seconds_count", "grok_prompt_tokens_total",
                 "grok_generation_tokens_total", 'grok_requests_total{finish_reason="length"}',
                 "grok_prefix_cache_hit_tokens_total", "grok_prefix_cache_query_tokens_total"):
        assert re.search(rf"^{re.escape(name)} ", text, re.M), name
    assert metric(url, "grok_generation_tokens_total") > 0
    assert metric(url, "grok_time_to_first_token_seconds_count") > 0


def test_prefix_cache_counters(client, url):
    """A prompt that starts like an earlier one is served partly from the prefix cache."""
    shared = "A long shared system prompt that many requests start with, word for word. "
    hit_before = metric(url, "grok_prefix_cache_hit_tokens_total")
    query_before = metric(url, "grok_prefix_cache_query_tokens_total")
    for suffix in ("First question?", "Second question?"):
        client.completions.create(model=MODEL, prompt=shared + suffix, max_tokens=2,
                                  temperature=0)
    assert metric(url, "grok_prefix_cache_query_tokens_total") >= query_before + 2 * len(shared)
    assert metric(url, "grok_prefix_cache_hit_tokens_total") >= hit_before + len(shared) // 2


def test_load_benchmark_tiny(url, tmp_path):
    path = tmp_path / "serve.json"
    report = bench.main(["--url", url, "--num-prompts", "6", "--concurrency", "3",
                         "--input-len", "8", "--output-len", "6", "--json", str(path)])
    assert report["completed"] == 6 and report["failed"] == 0
    assert report["output_tokens"] == 36
    assert report["ttft_ms"]["p50"] > 0 and report["request_throughput"] > 0
    assert json.loads(path.read_text())["completed"] == 6
    poisson = bench.main(["--url", url, "--num-prompts", "4", "--request-rate", "50",
                          "--input-len", "8", "--output-len", "4"])
    assert poisson["completed"] == 4 and poisson["itl_ms"]["p99"] is not None


def test_sigterm_with_requests_in_flight_exits_0(server):
    """Last: stops the module's server."""
    process, url = server

    async def in_flight():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            # Greedy prompts that run to max_tokens (see test_dropped_streams_free_their_slots).
            tasks = [asyncio.ensure_future(c.post("/v1/completions", json={
                "model": MODEL, "prompt": f"drop {i}", "max_tokens": 200, "temperature": 0}))
                for i in range(4)]
            deadline = time.monotonic() + 10
            while metric(url, "grok_requests_running") == 0:   # until they hold slots
                assert time.monotonic() < deadline, "the requests never started"
                await asyncio.sleep(0.005)
            start = time.monotonic()
            process.send_signal(signal.SIGTERM)
            replies = await asyncio.gather(*tasks, return_exceptions=True)
            return replies, start

    replies, start = asyncio.run(in_flight())
    assert process.wait(30) == 0
    assert time.monotonic() - start < 30
    finished = [r for r in replies if isinstance(r, httpx.Response) and r.status_code == 200]
    assert finished, replies          # in-flight requests are finished, not dropped
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")

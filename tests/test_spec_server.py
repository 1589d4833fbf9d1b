"""Speculative decoding over HTTP, driven with the official `openai` client: the same
completions as with speculation off, and the speculation counters in /metrics.

One tiny engine (2 slots, float32) is compiled for the module and served twice, one server
after the other, each in-process on 127.0.0.1 (a free port): first with speculation off, then
with the Backend the server builds for `--speculative-tokens 4` (`backend_for` over a runner
whose runtime says speculative_tokens=4; the gate measures its own break-even, as in serving).
Both get the same requests: greedy with logprobs, greedy streamed with a stop string,
seeded top-p streamed with logprobs, seeded with a stop string, and a run of the tiny model's
fixed-point token (its greedy continuation is that token forever, so every draft is accepted
and /metrics counts them).
Slow: the engine's compiles (prefill, decode, verify) and the gate's cost measurement.
"""

import time

import httpx
import openai
import pytest

from grok.engine.runner import ModelRunner
from grok.serving.http.engine_loop import Backend, backend_for
from grok.serving.runner import InferenceRunner
from grok.serving.scheduler import Scheduler
from grok.tokenizer import ByteTokenizer
from server_fakes import ServerThread
from tiny_model import F32, SEED, TOLERANCE, make_prompt, tiny_config

K = 4
LOOPING = make_prompt(6, 21)     # its greedy continuation repeats a few n-grams
# A fixed point of the tiny model: after a run of this token the greedy next token is this
# token again (attention over identical tokens reads the same values wherever they sit), so
# every draft is accepted.
LOOP_TOKEN = 242
MODEL = "tiny"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runner():
    runtime = F32.replace(speculative_tokens=K, prefill_buckets=(8,))
    runner = InferenceRunner(ModelRunner(tiny_config(), bs_per_device=2, rng_seed=SEED,
                                         runtime=runtime),
                             local_mesh_config=(1, 1), tokenizer=ByteTokenizer(),
                             precompile=False)
    runner.initialize()
    return runner


def plain_backend(runner) -> Backend:
    engine = runner.engine
    return Backend(Scheduler(engine, runner.tokenizer), engine.batch_size, runner.tokenizer,
                   engine.vocab_size, engine.sequence_len, engine.pad_token)


def streamed(chunks) -> dict:
    """A stream's text, finish reason and per-token logprobs, concatenated."""
    text, reason, tokens, values, tops = "", None, [], [], []
    for chunk in chunks:
        choice = chunk.choices[0]
        text += choice.text
        reason = choice.finish_reason or reason
        if choice.logprobs is not None:
            tokens += choice.logprobs.tokens
            values += choice.logprobs.token_logprobs
            tops += [sorted(t) for t in choice.logprobs.top_logprobs]
    return dict(text=text, finish_reason=reason, tokens=tokens, logprobs=values, tops=tops)


def whole(response) -> list:
    """Each choice's text, finish reason and logprobs."""
    out = []
    for choice in response.choices:
        lp = choice.logprobs
        out.append(dict(text=choice.text, finish_reason=choice.finish_reason,
                        tokens=lp.tokens if lp else None,
                        logprobs=lp.token_logprobs if lp else None,
                        tops=[sorted(t) for t in lp.top_logprobs] if lp else None))
    return out


def completions(url: str, stop: str) -> dict:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    create = lambda **kw: client.completions.create(model=MODEL, **kw)
    return {
        "greedy": whole(create(prompt=LOOPING, max_tokens=40, temperature=0, logprobs=3)),
        "greedy_stop_streamed": streamed(create(prompt=LOOPING, max_tokens=40, temperature=0,
                                                stop=[stop, "never"], stream=True)),
        "seeded_streamed": streamed(create(prompt=LOOPING, max_tokens=30, temperature=0.8,
                                           top_p=0.9, seed=7, logprobs=2, stream=True)),
        "seeded": whole(create(prompt=LOOPING, max_tokens=20, temperature=1.0, seed=3,
                               stop=["zz"])),
        "loop": whole(create(prompt=[LOOP_TOKEN] * 8, max_tokens=32, temperature=0,
                             logprobs=1)),
    }


def wait_ready(url: str, timeout_s: float = 300.0) -> None:
    """Until /health says the backend is built (the engine compiles on the server's thread)."""
    deadline = time.monotonic() + timeout_s
    while httpx.get(url + "/health").status_code != 200:
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.05)


def spec_metrics(url: str) -> dict:
    values = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("grok_spec_draft_tokens_total", "grok_spec_accepted_tokens_total"):
            values[name] = float(value)
    return values


@pytest.fixture(scope="module")
def served(runner):
    """(completions with speculation off, with it on, the on server's /metrics counters)."""
    with ServerThread(lambda: plain_backend(runner), model_name=MODEL) as server:
        wait_ready(server.url)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        text = client.completions.create(model=MODEL, prompt=LOOPING, max_tokens=40,
                                         temperature=0).choices[0].text
        stop = text[12:14]            # ends the greedy loop in mid-text
        off = completions(server.url, stop)
    with ServerThread(lambda: backend_for(runner), model_name=MODEL) as server:
        wait_ready(server.url)
        assert server.server.engine.scheduler.speculation.k == K
        on = completions(server.url, stop)
        metrics = spec_metrics(server.url)
    return off, on, metrics


def assert_same(a: dict, b: dict):
    assert (b["text"], b["finish_reason"], b["tokens"], b["tops"]) == \
        (a["text"], a["finish_reason"], a["tokens"], a["tops"])
    if a["logprobs"] is not None:
        assert b["logprobs"] == pytest.approx(a["logprobs"], rel=TOLERANCE["rtol"],
                                              abs=TOLERANCE["atol"])


@pytest.mark.parametrize("case", ["greedy", "greedy_stop_streamed", "seeded_streamed",
                                  "seeded", "loop"])
def test_speculation_gives_the_same_completions_over_http(served, case):
    off, on, _ = served
    a, b = off[case], on[case]
    a, b = (a, b) if isinstance(a, list) else ([a], [b])      # choices
    assert len(a) == len(b) == 1
    for x, y in zip(a, b):
        assert x["text"]
        assert_same(x, y)


def test_stop_string_ends_the_stream(served):
    off, _, _ = served
    assert off["greedy_stop_streamed"]["finish_reason"] == "stop"
    assert off["greedy"][0]["text"].startswith(off["greedy_stop_streamed"]["text"])


def test_metrics_count_drafted_and_accepted_tokens(served):
    off, _, metrics = served
    loop = off["loop"][0]["tokens"]
    assert len(loop) == 32 and len(set(loop)) == 1          # the loop goes on
    drafted = metrics["grok_spec_draft_tokens_total"]
    accepted = metrics["grok_spec_accepted_tokens_total"]
    assert drafted > 0 and 0 < accepted <= drafted

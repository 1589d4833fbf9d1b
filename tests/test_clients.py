"""Third-party clients' exact requests, replayed with httpx against the demo server (one
process on 127.0.0.1 for the module): guidellm's streaming benchmark request (vLLM's
`ignore_eos`, `stream_options.continuous_usage_stats`), lm-evaluation-harness's
`local-completions` (its tokenizer calls, then `echo` with `logprobs` for loglikelihood),
`max_tokens: 0` scoring, the OpenAI fields that change nothing here, and `openai`'s
`models.retrieve`. The real tools (torch-based) ran once outside CI; see the README."""

import json

import httpx
import openai
import pytest

from grok.benchmarks import serving as bench
from grok.serving.http.client_fields import OPENAI_NO_EFFECT_FIELDS

MODEL = "demo"
pytestmark = pytest.mark.slow
NO_EFFECT_VALUES = {"store": False, "metadata": {"k": "v"}, "service_tier": "auto",
                    "reasoning_effort": "low", "verbosity": "low",
                    "prompt_cache_key": "k", "safety_identifier": "u1",
                    "prediction": {"type": "content", "content": "x"}, "modalities": ["text"]}


@pytest.fixture(scope="module")
def url():
    process, url = bench.start_demo_server(4)
    yield url
    bench.stop_server(process)


@pytest.fixture(scope="module")
def http(url):
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client


def test_openai_models_retrieve(url):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    card = client.models.retrieve(MODEL)
    assert (card.id, card.object, card.owned_by) == (MODEL, "model", "grok")
    with pytest.raises(openai.NotFoundError, match=MODEL):
        client.models.retrieve("gpt-4o")


@pytest.mark.parametrize("field", OPENAI_NO_EFFECT_FIELDS)
def test_openai_fields_without_effect_get_200(http, field):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            field: NO_EFFECT_VALUES[field]}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text


def test_unknown_fields_are_all_named(http):
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": "x",
                                                  "tempreature": 0, "stopp": "y"})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "'tempreature'" in message and "'stopp'" in message


def sse(response) -> list:
    chunks = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            chunks.append(json.loads(line[len("data: "):]))
    return chunks


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_guidellm_streaming_request(http, endpoint):
    """guidellm 0.8.1's body for a fixed output length: ignore_eos, stop null, usage in
    every chunk."""
    body = {"model": MODEL, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "stop": None, "ignore_eos": True}
    if endpoint == "chat":
        path = "/v1/chat/completions"
        body.update(messages=[{"role": "user", "content": "fox dog skies"}],
                    max_completion_tokens=12)
    else:
        path = "/v1/completions"
        body.update(prompt="fox dog skies hum", max_tokens=12)
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        chunks = sse(response)
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert all(c["usage"] is not None for c in chunks)
    assert counts == sorted(counts) and counts[-1] == 12           # ran to max_tokens
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert len({c["usage"]["prompt_tokens"] for c in chunks}) == 1


def tokenize(http, text: str) -> list:
    response = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False})
    assert response.status_code == 200
    return response.json()["tokens"]


def test_lm_eval_tokenizer_calls(http):
    """lm-eval's RemoteTokenizer: GET /tokenizer_info (eos_token), POST /tokenize
    {"prompt", "add_special_tokens": false}, POST /detokenize {"tokens"}; it finds the EOS
    and BOS ids by tokenizing their texts."""
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] and info["bos_token"]
    assert tokenize(http, info["eos_token"]) == [2]
    assert tokenize(http, info["bos_token"]) == [1]
    tokens = tokenize(http, "test")
    assert http.post("/detokenize", json={"tokens": tokens}).json() == {"prompt": "test"}
    with_bos = http.post("/tokenize", json={"prompt": "test", "add_special_tokens": True,
                                            "return_token_strs": True}).json()
    assert with_bos["tokens"] == [1] + tokens and with_bos["token_strs"][1:] == list("test")


def lm_eval_score(http, context: list, continuation: list) -> tuple[float, bool]:
    """lm-eval 0.4.13's local-completions loglikelihood request and its parse_logprobs."""
    body = {"model": MODEL, "prompt": [context + continuation], "temperature": 0,
            "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": True}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    lp = response.json()["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(context) + len(continuation) + 1
    scores = lp["token_logprobs"][len(context):-1]
    tops = lp["top_logprobs"][len(context):-1]
    return sum(scores), all(s == max(top.values()) for s, top in zip(scores, tops))


def test_lm_eval_loglikelihood_matches_greedy_generation(http):
    context = tokenize(http, "the quick brown fox")
    generated = http.post("/v1/completions", json={
        "model": MODEL, "prompt": context, "max_tokens": 3, "temperature": 0,
        "ignore_eos": True, "logprobs": 1}).json()["choices"][0]["logprobs"]
    greedy = [t for t in _ids(generated["tokens"])]
    total, is_greedy = lm_eval_score(http, context, greedy)
    assert is_greedy
    assert total == pytest.approx(sum(generated["token_logprobs"]), abs=1e-3)
    other = greedy[:-1] + [3 + (greedy[-1] - 3 + 1) % 256]
    assert lm_eval_score(http, context, other)[1] is False


def _ids(token_texts: list) -> list:
    """The byte tokenizer's ids of logprobs' token texts ("a", or "bytes:\\xNN")."""
    return [int(t[8:10], 16) + 3 if t.startswith("bytes:\\x") else t.encode()[0] + 3
            for t in token_texts]


def test_max_tokens_0_scores_the_prompt_only(http):
    prompt = "Hello world"
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt,
                                                  "max_tokens": 0, "echo": True,
                                                  "logprobs": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    choice = body["choices"][0]
    assert choice["text"] == prompt and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0
    lp = choice["logprobs"]
    assert lp["text_offset"] == list(range(len(prompt)))      # one byte per character
    assert lp["top_logprobs"][0] is None
    assert all(len(top) >= 2 for top in lp["top_logprobs"][1:])
    for extra in ({}, {"echo": True, "stream": True}):
        refused = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt,
                                                     "max_tokens": 0, **extra})
        assert refused.status_code == 400 and "echo" in refused.json()["error"]["message"]
        assert refused.json()["error"]["param"] == "max_tokens"

"""HTTP server against a fake scheduler (no model): OpenAI error bodies for bad requests,
auth, unknown model, not ready, queue full, and the normal path still working after each."""

import argparse
import json
import threading
import time

import httpx
import openai
import pytest

from server_fakes import FakeScheduler, ServerThread, fake_backend, fake_token
from grok.serving.http.chat_template import ChatTemplate
from grok.serving.http.server import add_serve_arguments, check_serve_arguments, default_model_name

KEY = "sekret"
MODEL = "fake"
GOOD = {"model": MODEL, "prompt": "hello", "max_tokens": 4}


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
        yield client


def expected_text(prompt: str, n: int) -> str:
    ids = [b + 3 for b in prompt.encode()]
    return "".join(chr(fake_token(ids, i) - 3) for i in range(n))


def assert_error(response, status: int, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
        assert param.split("[")[0].split(".")[0] in error["message"], error


BAD_COMPLETIONS = [  # (body, param the error must name)
    ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": "4"}, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 10_000}, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "temperature": -1}, "temperature"),
    ({"model": MODEL, "prompt": "hi", "temperature": "hot"}, "temperature"),
    ({"model": MODEL, "prompt": "hi", "top_p": 0}, "top_p"),
    ({"model": MODEL, "prompt": "hi", "top_p": 1.5}, "top_p"),
    ({"model": MODEL, "prompt": "hi", "n": 0}, "n"),
    ({"model": MODEL, "prompt": "hi", "n": 1000}, "n"),
    ({"model": MODEL, "prompt": "hi", "seed": -1}, "seed"),
    ({"model": MODEL, "prompt": "hi", "seed": 2**40}, "seed"),
    ({"model": MODEL, "prompt": "hi", "logprobs": 50}, "logprobs"),
    ({"model": MODEL, "prompt": "hi", "stop": ""}, "stop"),
    ({"model": MODEL, "prompt": "hi", "stop": [1, 2]}, "stop"),
    ({"model": MODEL, "prompt": "hi", "top_k": -3}, "top_k"),
    ({"model": MODEL, "prompt": "hi", "top_k": 10**6}, "top_k"),
    ({"model": MODEL, "prompt": "hi", "stop_token_ids": [99999]}, "stop_token_ids"),
    ({"model": MODEL, "prompt": "hi", "echo": "yes"}, "echo"),
    ({"model": MODEL, "prompt": "hi", "stream": 1}, "stream"),
    ({"model": MODEL, "prompt": "hi", "presence_penalty": 5}, "presence_penalty"),
    ({"model": MODEL, "prompt": "hi", "best_of": 3}, "best_of"),
    ({"model": MODEL, "prompt": "hi", "frobnicate": True}, "frobnicate"),
    ({"model": MODEL, "prompt": []}, "prompt"),
    ({"model": MODEL, "prompt": ""}, "prompt"),
    ({"model": MODEL, "prompt": [[1, 2], []]}, "prompt"),
    ({"model": MODEL, "prompt": [5, 99999]}, "prompt"),
    ({"model": MODEL, "prompt": [["a"], 3]}, "prompt"),
    ({"model": MODEL, "prompt": 42}, "prompt"),
    ({"model": MODEL, "prompt": [0, 0, 0]}, "prompt"),           # only the pad id
    (b'{"model": "fake", "prompt": "lone \\ud800 surrogate"}', None),  # bad JSON
    ({"model": MODEL, "prompt": "x" * 300}, "prompt"),
    ({"model": MODEL}, "prompt"),
    ({"prompt": "hi"}, "model"),
]

BAD_CHATS = [
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"model": MODEL, "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3},
     None),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"x": 1}]},
     "tools[0].x"),
    ({"model": MODEL, "messages": "hi"}, "messages"),
]


@pytest.mark.parametrize("body,param", BAD_COMPLETIONS,
                         ids=[f"{p or 'body'}-{i}" for i, (_, p) in enumerate(BAD_COMPLETIONS)])
def test_bad_completion_request(http, body, param):
    sent = {"content": body} if isinstance(body, bytes) else {"json": body}
    assert_error(http.post("/v1/completions", **sent), 400, param)


@pytest.mark.parametrize("body,param", BAD_CHATS,
                         ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD_CHATS)])
def test_bad_chat_request(http, body, param):
    assert_error(http.post("/v1/chat/completions", json=body), 400, param)


def test_malformed_bodies(http):
    assert_error(http.post("/v1/completions", content=b'{"model": "fake", "prompt": '), 400)
    assert_error(http.post("/v1/completions", content=b"[1, 2]"), 400)
    assert_error(http.post("/v1/completions", content=b"\xff\xfe"), 400)
    assert_error(http.post("/v1/completions", json={**GOOD, "stream_options":
                                                    {"include_usage": True}}), 400)
    assert_error(http.post("/tokenize", json={"prompt": "a", "messages": []}), 400)
    assert_error(http.post("/detokenize", json={"tokens": [-1]}), 400, "tokens")


def test_unknown_model_route_method_and_key(server, http):
    assert_error(http.post("/v1/completions", json={**GOOD, "model": "gpt-4"}), 404, "model")
    assert http.post("/v1/completions", json={**GOOD, "model": "gpt-4"}).json()["error"][
        "code"] == "model_not_found"
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.get("/v1/completions"), 405)
    assert_error(httpx.post(server.url + "/v1/completions", json=GOOD), 401)
    assert_error(httpx.post(server.url + "/v1/completions", json=GOOD,
                            headers={"Authorization": "Bearer wrong"}), 401)
    assert httpx.get(server.url + "/health").status_code == 200     # open without the key
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=server.url + "/v1", api_key=KEY).completions.create(
            model="other", prompt="hi")


def test_still_serves_after_bad_requests(http):
    for body, _ in BAD_COMPLETIONS[:5]:
        assert http.post("/v1/completions", json=body).status_code == 400
    response = http.post("/v1/completions", json=GOOD)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == expected_text("hello", 4)
    assert response.json()["usage"] == {"prompt_tokens": 5, "completion_tokens": 4,
                                        "total_tokens": 9}


def test_models_tokenize_detokenize(http):
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    tokens = http.post("/tokenize", json={"prompt": "hé"}).json()
    assert tokens["tokens"] == [b + 3 for b in "hé".encode()] and tokens["count"] == 3
    assert http.post("/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": "hé"}
    chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "x"}]}).json()
    rendered = ChatTemplate().render([("user", "x")])
    assert chat["tokens"] == [b + 3 for b in rendered.encode()]


def test_not_ready_then_ready():
    gate = threading.Event()
    scheduler = FakeScheduler()

    def build():
        gate.wait(30)
        return fake_backend(scheduler)

    with ServerThread(build) as s:
        assert httpx.get(s.url + "/health").status_code == 503
        assert_error(httpx.post(s.url + "/v1/completions", json=GOOD), 503)
        gate.set()
        deadline = time.monotonic() + 10
        while httpx.get(s.url + "/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert httpx.post(s.url + "/v1/completions", json=GOOD).status_code == 200


def test_queue_full_is_503_at_once():
    scheduler = FakeScheduler(slots=1, step_s=0.01)
    with ServerThread(lambda: fake_backend(scheduler), max_queue=0) as s:
        long = {**GOOD, "max_tokens": 60}
        holder = threading.Thread(target=httpx.post, args=(s.url + "/v1/completions",),
                                  kwargs={"json": long, "timeout": 30})
        holder.start()
        while scheduler.submitted == 0:
            time.sleep(0.005)
        start = time.monotonic()
        assert_error(httpx.post(s.url + "/v1/completions", json=GOOD), 503)
        assert time.monotonic() - start < 0.5            # refused, not queued
        holder.join(30)
        assert httpx.post(s.url + "/v1/completions", json=GOOD).status_code == 200


def test_failed_build_is_reported():
    def build():
        raise ValueError("no such checkpoint")

    with ServerThread(build) as s:
        deadline = time.monotonic() + 10
        while "failed" not in httpx.get(s.url + "/health").json()["status"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        response = httpx.post(s.url + "/v1/completions", json=GOOD)
        assert_error(response, 503)
        assert "no such checkpoint" in response.json()["error"]["message"]


def test_client_gone_cancels_non_streaming_request():
    scheduler = FakeScheduler(slots=2, step_s=0.01)
    with ServerThread(lambda: fake_backend(scheduler)) as s:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(s.url + "/v1/completions", json={**GOOD, "max_tokens": 250}, timeout=0.3)
        deadline = time.monotonic() + 3
        while scheduler.num_running or scheduler.num_waiting:
            assert time.monotonic() < deadline, "the abandoned request kept its slot"
            time.sleep(0.02)
        metrics = httpx.get(s.url + "/metrics").text
        assert 'grok_requests_total{finish_reason="cancelled"} 1.0' in metrics


def test_bad_requests_do_not_disturb_a_running_stream():
    scheduler = FakeScheduler(slots=2, step_s=0.005)
    with ServerThread(lambda: fake_backend(scheduler)) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        stream = client.completions.create(model=MODEL, prompt="steady", max_tokens=40,
                                           stream=True)
        text = ""
        for i, chunk in enumerate(stream):
            text += chunk.choices[0].text if chunk.choices else ""
            if i < len(BAD_COMPLETIONS) and isinstance(BAD_COMPLETIONS[i][0], dict):
                assert httpx.post(s.url + "/v1/completions",
                                  json=BAD_COMPLETIONS[i][0]).status_code == 400
        assert text == expected_text("steady", 40)


def test_chat_template_file(tmp_path):
    path = tmp_path / "template.json"
    path.write_text(json.dumps({"system": "<s>{content}</s>", "user": "<u>{content}</u>",
                                "assistant": "<a>{content}</a>", "generation_prompt": "<a>",
                                "stop": ["</a>"]}))
    template = ChatTemplate.load(str(path))
    assert template.render([("developer", "be nice"), ("user", "hi")]) == \
        "<s>be nice</s><u>hi</u><a>"
    assert template.stop == ("</a>",)
    scheduler = FakeScheduler()
    with ServerThread(lambda: fake_backend(scheduler), chat_template=template) as s:
        tokens = httpx.post(s.url + "/tokenize", json={"messages": [
            {"role": "user", "content": "hi"}]}).json()["tokens"]
        assert tokens == [b + 3 for b in b"<u>hi</u><a>"]
    for bad in ({"user": "no placeholder"}, {"stop": "x"}, {"colour": "red"}, [1]):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="chat-template"):
            ChatTemplate.load(str(path))
    with pytest.raises(ValueError, match="chat-template"):
        ChatTemplate.load(str(tmp_path / "missing.json"))


def test_serve_arguments(monkeypatch):
    monkeypatch.setenv("GROK_API_KEY", "from-env")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8000, "from-env")
    check_serve_arguments(args)
    for flags, name in ((["--port", "70000"], "--port"), (["--max-queue", "-1"], "--max-queue"),
                        (["--api-key", " "], "--api-key")):
        with pytest.raises(ValueError, match=name):
            check_serve_arguments(parser.parse_args(flags))
    named = argparse.Namespace(checkpoint="/data/my-model/", config=None)
    assert default_model_name(named) == "my-model"
    assert default_model_name(argparse.Namespace(checkpoint="checkpoints", config=None)) == "grok-1"


def test_scheduler_failure_fails_requests_in_flight_not_the_server():
    class Failing(FakeScheduler):
        fail_next = True

        def step(self):
            if self.fail_next and self.running:
                self.fail_next = False
                self.running.clear()
                raise RuntimeError("device lost")
            return super().step()

    scheduler = Failing(slots=2)
    with ServerThread(lambda: fake_backend(scheduler)) as s:
        response = httpx.post(s.url + "/v1/completions", json=GOOD, timeout=10)
        assert_error(response, 500)
        assert "device lost" not in response.json()["error"]["message"]     # logged, not sent
        assert httpx.post(s.url + "/v1/completions", json=GOOD).status_code == 200

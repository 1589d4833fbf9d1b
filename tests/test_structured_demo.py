"""Acceptance on the demo model (the real engine, random weights) served in a child process
with a 1024-token context (`--max-model-len`: the tools' system message and a call do not fit
the demo's default 256), with the official `openai` client:

- chat.completions.parse with a pydantic model returns a parsed object;
- tools with tool_choice "required" return tool_calls whose arguments validate against the
  function's schema, and the same request streamed (delta.tool_calls as OpenAI streams them:
  the call's id, type and name first, then its arguments in fragments) reassembles to the
  same call, by hand and through the client's stream helper.

Slow: it compiles the demo.
"""

import json

import openai
import pydantic
import pytest

from grok.benchmarks import serving as bench
from structured_examples import TIME_TOOL, WEATHER_TOOL

pytestmark = pytest.mark.slow


class Reading(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    label: str = pydantic.Field(max_length=8)
    value: int
    ok: bool


class Weather(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    city: str = pydantic.Field(max_length=10)
    unit: str = pydantic.Field(pattern="^(c|f)$")


ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def client():
    # one prompt bucket holding the tool prompt: no continuation-chunk compile mid-test
    process, url = bench.start_demo_server(2, flags=["--max-model-len", "1024",
                                                     "--pad-sizes", "256"])
    yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    bench.stop_server(process)


def test_parse_returns_a_pydantic_object(client):
    out = client.chat.completions.parse(model="demo", response_format=Reading, max_tokens=120,
                                        messages=[{"role": "user", "content": "Read it."}],
                                        seed=1)
    assert isinstance(out.choices[0].message.parsed, Reading), out.choices[0].message.content


def valid(name: str, arguments: str) -> None:
    if name == "get_weather":
        Weather.model_validate_json(arguments)
    else:
        assert name == "get_time"
        args = json.loads(arguments)
        assert set(args) == {"zone"} and len(args["zone"]) <= 6


def test_required_tool_calls_validate_and_stream_the_same(client):
    request = dict(model="demo", messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL],
                   tool_choice="required", parallel_tool_calls=False, max_tokens=200)
    for seed in (1,):
        whole = client.chat.completions.create(seed=seed, **request)
        choice = whole.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        valid(call.function.name, call.function.arguments)

        calls, reasons, fragments = {}, [], 0
        for chunk in client.chat.completions.create(seed=seed, stream=True, **request):
            for c in chunk.choices:
                reasons.append(c.finish_reason)
                for delta in c.delta.tool_calls or []:
                    entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                    if delta.id is not None:     # the call's first chunk
                        assert delta.type == "function" and delta.function.arguments == ""
                        entry["name"] = delta.function.name
                    else:
                        fragments += 1
                        entry["arguments"] += delta.function.arguments
        assert calls == {0: {"name": call.function.name, "arguments": call.function.arguments}}
        assert fragments > 1, "the arguments come as they are generated, in fragments"
        assert reasons[-1] == "tool_calls"

        with client.beta.chat.completions.stream(seed=seed, **request) as stream:
            final = stream.get_final_completion()
        (streamed,) = final.choices[0].message.tool_calls
        assert (streamed.function.name, streamed.function.arguments) == (
            call.function.name, call.function.arguments)
        assert final.choices[0].finish_reason == "tool_calls"

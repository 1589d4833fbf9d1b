"""Acceptance on the demo model (the real engine, random weights) served in a child process,
with the official `openai` client: chat.completions.parse with a pydantic model returns a
parsed object; tool_choice "required" returns tool_calls whose arguments validate, and the
same request streamed reassembles to the same call. Slow: it compiles the demo."""

import json

import openai
import pydantic
import pytest

from grok.benchmarks import serving as bench

pytestmark = pytest.mark.slow


class Reading(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    label: str = pydantic.Field(max_length=8)
    value: int
    ok: bool


TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"key": {"type": "string", "maxLength": 6},
                                     "n": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["key", "n"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def client():
    process, url = bench.start_demo_server(2)
    yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    bench.stop_server(process)


def test_parse_returns_a_pydantic_object(client):
    out = client.chat.completions.parse(model="demo", response_format=Reading, max_tokens=120,
                                        messages=[{"role": "user", "content": "Read it."}],
                                        seed=1)
    assert isinstance(out.choices[0].message.parsed, Reading), out.choices[0].message.content


def test_required_tool_call_validates_and_streams_the_same(client):
    kw = dict(model="demo", messages=[{"role": "user", "content": "Look it up."}],
              tools=[TOOL], tool_choice="required", parallel_tool_calls=False,
              max_tokens=120, seed=3, temperature=0.0)
    whole = client.chat.completions.create(**kw)
    (call,) = whole.choices[0].message.tool_calls
    args = json.loads(call.function.arguments)
    assert call.function.name == "lookup" and set(args) == {"key", "n"}
    assert 0 <= args["n"] <= 99 and len(args["key"]) <= 6
    arguments = ""
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            for delta in c.delta.tool_calls or []:
                arguments += delta.function.arguments or ""
    assert arguments == call.function.arguments

"""Acceptance on the demo model (the real engine, random weights) served in a child process,
with the official `openai` client: chat.completions.parse with a pydantic model returns a
parsed object. (Tool calls are tested on the fake engine, tests/test_structured_server.py:
the tools' system message alone is longer than the demo's 256-byte context.) Slow: it
compiles the demo."""

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

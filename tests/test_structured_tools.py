"""How tools are shown to the model and how its calls are read back (no model, no server):
compact signature lines, CallReader's deltas (whole text or one character at a time, the
same calls), text answers, calls cut short; and --max-model-len, which gives the demo the
context a tool prompt needs."""

import json

import pytest

from grok.config import GROK_1
from grok.demo import DEMO
from grok.loading import UsageError, with_context
from grok.serving.http.tool_calls import CallReader, read_calls
from grok.serving.http.tool_signatures import signature
from grok.serving.http.tools import tools_prompt

WEATHER = {"name": "get_weather", "description": "The weather\n in a city.",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string", "description": "a city name"},
               "unit": {"enum": ["c", "f"]},
               "days": {"type": "array", "items": {"type": ["integer", "null"]}},
               "where": {"type": "object", "properties": {"lat": {"type": "number"}},
                         "required": ["lat"]},
               "ref": {"$ref": "#/$defs/Place"}}, "required": ["city"]}}


def test_signature_lines_are_compact():
    assert signature(WEATHER) == (
        'get_weather(city: string, unit?: "c" | "f", days?: (integer | null)[], '
        'where?: {lat: number}, ref?: Place) - The weather in a city. city: a city name')
    assert signature({"name": "now"}) == "now()"
    prompt = tools_prompt([{"type": "function", "function": WEATHER}])
    assert len(prompt) < len(json.dumps(WEATHER)) + 130 and "<tool_call>" in prompt


TWO_CALLS = ('<tool_call>{"name": "get_weather", "arguments": {"city": "Pa\\"r}is", '
             '"days": [1, {"a": [2]}]}}</tool_call>\n'
             '<tool_call>{"name": "now", "arguments": {}}</tool_call>')


def test_calls_read_whole_and_streamed_are_the_same():
    whole = read_calls(TWO_CALLS)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole] == [
        ("get_weather", {"city": 'Pa"r}is', "days": [1, {"a": [2]}]}), ("now", {})]
    reader, deltas = CallReader(), []
    for ch in TWO_CALLS:
        deltas += [d["tool_calls"][0] for d in reader.feed(ch)]
    firsts = [d for d in deltas if "id" in d]
    assert [(d["index"], d["type"], d["function"]) for d in firsts] == [
        (0, "function", {"name": "get_weather", "arguments": ""}),
        (1, "function", {"name": "now", "arguments": ""})]
    for i, call in enumerate(whole):
        fragments = [d["function"]["arguments"] for d in deltas
                     if d["index"] == i and "id" not in d]
        assert "".join(fragments) == call["function"]["arguments"]
        assert len(fragments) == len(call["function"]["arguments"])   # one per character
    assert deltas.index(firsts[1]) > max(i for i, d in enumerate(deltas) if d["index"] == 0)


def test_text_answers_and_calls_cut_short():
    reader = CallReader()
    assert reader.feed("Sunny") == [{"content": "Sunny"}] and reader.feed("") == []
    assert read_calls("Sunny, 20 C") is None and read_calls("") is None
    (cut,) = read_calls('<tool_call>{"name": "f", "arguments": {"a": [1, 2')
    assert cut["function"] == {"name": "f", "arguments": '{"a": [1, 2'}
    assert read_calls('<tool_call>{"name": "f", "arguments": 12}</tool_call>')[0][
        "function"]["arguments"] == "12"
    assert read_calls("<tool_call>[oops]") is None     # not the layout: the text as text


def test_max_model_len_sets_the_context():
    assert with_context(DEMO, 1024, random_weights=True).sequence_len == 1024
    assert with_context(GROK_1, 4096, random_weights=False).sequence_len == 4096
    assert with_context(GROK_1, None, random_weights=False) is GROK_1
    with pytest.raises(UsageError, match="longer than the model's sequence_len 8192"):
        with_context(GROK_1, 10_000, random_weights=False)
    with pytest.raises(UsageError, match="--max-model-len must be"):
        with_context(DEMO, 0, random_weights=True)

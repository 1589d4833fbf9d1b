"""What vLLM- and OpenAI-speaking clients ask of the scheduler and the response builders,
without a model: ignore_eos and min_tokens on the scheduler (fake engine), echo's prompt
alternatives, text offsets that follow the returned text (byte and SentencePiece tokenizers),
the tokenizer endpoint's reading of special tokens, and the request bodies' fields."""

import os

import pydantic
import pytest

from fake_engine import FakeEngine
from grok.serving.http.client_fields import OPENAI_NO_EFFECT_FIELDS, VLLM_EXTRA_FIELDS
from grok.serving.http.client_routes import encode_text, tokenizer_info
from grok.serving.http.errors import validation_error
from grok.serving.http.protocol import ChatCompletionRequest, CompletionRequest
from grok.serving.http.responses import CompletionLogprobs
from grok.serving.requests import Request
from grok.serving.results import Completion
from grok.serving.scheduler import Scheduler
from grok.tokenizer import ByteTokenizer, SentencePieceTokenizer

BYTES = ByteTokenizer()
EOS = 2
PROMPT = tuple(BYTES.encode("Q:"))
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                      "shared", "grok1", "tokenizer.model")


def run(request: Request, script: list) -> Completion:
    scheduler = Scheduler(FakeEngine(script={PROMPT: script}), BYTES)
    scheduler.submit(request)
    for _ in range(200):
        if scheduler.idle():
            break
        for event in scheduler.step():
            if isinstance(event, Completion):
                done = event
    return done


def test_ignore_eos_keeps_going_to_max_tokens():
    script = BYTES.encode("ab") + [EOS] + BYTES.encode("cd")
    plain = run(Request(prompt=PROMPT, max_tokens=5, request_id="a"), script)
    assert (plain.output_ids, plain.finish_reason) == (BYTES.encode("ab"), "stop")
    ignoring = run(Request(prompt=PROMPT, max_tokens=5, ignore_eos=True, request_id="b"), script)
    assert ignoring.output_ids == script and ignoring.finish_reason == "length"
    assert ignoring.text == "abcd"         # EOS has no text


def test_min_tokens_masks_eos_and_stop_tokens_until_reached():
    # vLLM's meaning: EOS and stop tokens cannot be sampled before min_tokens tokens are out
    # (the fake engine takes another allowed token where its script's is masked).
    script = [EOS] + BYTES.encode("x") + [EOS, 9, 9]
    done = run(Request(prompt=PROMPT, max_tokens=8, min_tokens=2, request_id="m"), script)
    assert len(done.output_ids) >= 2 and EOS not in done.output_ids[:2]
    stop = run(Request(prompt=PROMPT, max_tokens=8, min_tokens=1, stop_tokens=[9],
                       request_id="s"), [9, 9, 5])
    assert stop.output_ids[:1] != [9] and 9 not in stop.output_ids
    with pytest.raises(ValueError, match="min_tokens"):
        Request(prompt=PROMPT, max_tokens=2, min_tokens=3)


def test_echo_carries_the_prompts_alternatives():
    done = run(Request(prompt=PROMPT + (40, 41), max_tokens=1, echo=True, logprobs=True,
                       request_id="e"), [50])
    assert done.prompt_logprobs[0] is None and done.prompt_top_logprobs[0] is None
    assert len(done.prompt_top_logprobs) == len(done.prompt_ids)
    for position, top in enumerate(done.prompt_top_logprobs[1:], start=1):
        assert top[0][0] == done.prompt_ids[position]     # the fake's top is the token itself


def offsets_follow_text(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    decoded = tokenizer.decode(ids)
    built = CompletionLogprobs(tokenizer, 1).build(ids, [None] + [-1.0] * (len(ids) - 1))
    offsets = built["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    for i in range(len(ids)):
        before = tokenizer.decode(ids[:i])
        if not before.endswith("\ufffd"):    # (a token inside a character: at its start)
            assert decoded[:offsets[i]] == before, i


def test_text_offsets_follow_the_returned_text_bytes():
    offsets_follow_text(BYTES, "Hello wörld")


@pytest.mark.skipif(not os.path.exists(SHARED), reason="Grok-1's tokenizer not in ../shared")
def test_text_offsets_follow_the_returned_text_sentencepiece():
    tokenizer = SentencePieceTokenizer(SHARED)
    offsets_follow_text(tokenizer, "Hello world, the answer is 42.")
    ids = tokenizer.encode("Hello world")
    assert CompletionLogprobs(tokenizer, 1).build(ids, [None, -1.0])["text_offset"] == [0, 5]
    eos_id, eos_text = tokenizer.special_tokens["eos"]
    assert encode_text(tokenizer, eos_text) == [eos_id]


def test_tokenize_reads_special_tokens_text():
    info = tokenizer_info(BYTES, 256)
    assert (info["eos_token"], info["bos_token"], info["model_max_length"]) == ("</s>", "<s>", 256)
    assert encode_text(BYTES, "</s>") == [EOS]
    assert encode_text(BYTES, "a</s>b") == BYTES.encode("a") + [EOS] + BYTES.encode("b")
    assert encode_text(BYTES, "ab", add_special_tokens=True) == [1] + BYTES.encode("ab")


NO_EFFECT_VALUES = {"store": False, "metadata": {"k": "v"}, "service_tier": "auto",
                    "reasoning_effort": "low", "verbosity": "low",
                    "prompt_cache_key": "k", "safety_identifier": "u1",
                    "prediction": {"type": "content", "content": "x"}, "modalities": ["text"]}


def test_every_no_effect_field_has_a_test_value():
    assert set(NO_EFFECT_VALUES) == set(OPENAI_NO_EFFECT_FIELDS)
    assert {"ignore_eos", "min_tokens", "include_stop_str_in_output", "add_special_tokens",
            "skip_special_tokens"} == set(VLLM_EXTRA_FIELDS)


def test_bodies_accept_client_fields_and_name_every_unknown_one():
    messages = [{"role": "user", "content": "hi"}]
    ChatCompletionRequest.model_validate({"model": "m", "messages": messages, "stream": True,
                                          "stream_options": {"include_usage": True,
                                                             "include_obfuscation": False,
                                                             "continuous_usage_stats": True},
                                          **NO_EFFECT_VALUES})
    CompletionRequest.model_validate({"model": "m", "prompt": "x", "ignore_eos": True,
                                      "min_tokens": 2, "include_stop_str_in_output": True,
                                      "add_special_tokens": False, "skip_special_tokens": True})
    with pytest.raises(pydantic.ValidationError) as e:
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "foo": 1, "bar": 2})
    error = validation_error(e.value.errors(include_url=False))
    assert "'foo'" in error.message and "'bar'" in error.message and error.param == "foo"


def test_max_tokens_0_is_a_completions_body():
    CompletionRequest.model_validate({"model": "m", "prompt": "x", "max_tokens": 0,
                                      "echo": True})
    with pytest.raises(pydantic.ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "max_tokens": 0,
                                              "messages": [{"role": "user", "content": "x"}]})


def test_readme_lists_the_ignored_fields_and_installs_the_package():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    ignored = text[text.index("Accepted and ignored"):]
    ignored = ignored[:ignored.index("\n- ", 1)]
    for name in OPENAI_NO_EFFECT_FIELDS:
        assert f"`{name}`" in ignored, name
    for name in VLLM_EXTRA_FIELDS:
        assert f"`{name}`" in text, name
    assert "pip install -r requirements-cpu.txt -e ." in text     # `import grok` from anywhere

"""grok.LLM's inputs: SamplingParams reads an iterable once, and every bad prompt of a batch gets
its own error Completion while the others run (on a fake runner: no model is built)."""

import itertools

import pytest

from grok.llm import LLM, SamplingParams
from grok.serving.results import Completion
from grok.tokenizer import ByteTokenizer


class EchoRunner:
    """The reference's generator protocol: send a list of Requests, then next() until None;
    each request finishes at once with the text "ok"."""

    tokenizer = ByteTokenizer()

    def __init__(self):
        self.seen = []

    def run(self):
        received = yield None
        while True:
            for request in received or []:
                self.seen.append(request)
                yield Completion("ok", request_id=request.request_id,
                                 prompt_ids=list(request.prompt) if not isinstance(
                                     request.prompt, str) else [],
                                 output_ids=[5], finish_reason="length")
            received = yield None


def fake_llm() -> LLM:
    llm = LLM.__new__(LLM)     # the real class, with a fake runner instead of a loaded model
    llm.runner, llm.quiet, llm._gen, llm._requests = EchoRunner(), True, None, itertools.count()
    return llm


def test_iterables_in_sampling_params_are_read_once():
    params = SamplingParams(stop_token_ids=(t for t in [5, 7]), stop=(s for s in ["END"]))
    assert params.stop_token_ids == (5, 7) and params.stop == ("END",)
    request = params.request("hi", "r", 0)
    assert request.stop_tokens == (5, 7) and request.stop == ("END",)
    assert set(SamplingParams(stop_token_ids={9, 3}).request("hi", "r", 0).stop_tokens) == {3, 9}
    with pytest.raises(ValueError, match="stop_token_ids"):
        SamplingParams(stop_token_ids=[-1])


def test_every_bad_prompt_gets_its_own_error():
    llm = fake_llm()
    prompts = ["good", "", [-1, 5], "lone \ud800 surrogate", [5, 6], None]
    results = llm.generate(prompts, SamplingParams(max_tokens=2))
    assert [r.finish_reason for r in results] == ["length", "error", "error", "error", "length",
                                                  "error"]
    for bad in (results[1], results[2], results[3], results[5]):
        assert "prompt" in bad.error, bad.error
    assert [str(r) for r in results[::4]] == ["ok", "ok"]
    assert len(llm.runner.seen) == 2
    assert all(r.finish_reason == "error" for r in llm.generate(["", [-3]]))

"""One bad field through each door (Request, grok.LLM's SamplingParams, a CLI flag, an input-file
record, HTTP): every door reports the field from the error's data (RequestError.field, the HTTP
error's `param`, the CLI item's `field`), never by parsing its text."""

import httpx
import pytest

from server_fakes import FakeScheduler, ServerThread, fake_backend
from grok.cli.flags import build_parser
from grok.cli.inputs import make_request, read_items
from grok.llm import SamplingParams
from grok.serving.requests import Request, RequestError

BAD_TOP_P = 1.5


def test_request_door():
    with pytest.raises(RequestError) as caught:
        Request(prompt="hi", top_p=BAD_TOP_P)
    assert (caught.value.field, caught.value.value) == ("top_p", BAD_TOP_P)


def test_llm_door():
    with pytest.raises(RequestError) as caught:
        SamplingParams(top_p=BAD_TOP_P)
    assert caught.value.field == "top_p" and caught.value.name == "SamplingParams.top_p"
    with pytest.raises(RequestError) as caught:
        SamplingParams(stop_token_ids=[-1])
    assert caught.value.name == "SamplingParams.stop_token_ids"   # its own name for the field


def test_cli_flag_door():
    args = build_parser().parse_args(["--top-p", str(BAD_TOP_P)])
    with pytest.raises(RequestError) as caught:
        make_request("hi", args, 0)
    assert (caught.value.field, caught.value.name) == ("top_p", "--top-p")
    assert str(caught.value).startswith("--top-p ")


def test_input_file_record_door(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "good"}\n{"prompt": "bad", "nucleus_p": 1.5}\n'
                    '{"prompt": "bad", "max_tokens": 0}\n')
    args = build_parser().parse_args(["--input-file", str(path)])
    good, top_p, max_tokens = read_items(args, "unused")
    assert good.error is None and good.field is None
    assert top_p.field == "top_p" and "'nucleus_p'" in top_p.error   # the key the user wrote
    assert max_tokens.field == "max_tokens" and "'max_tokens'" in max_tokens.error


@pytest.fixture(scope="module")
def http():
    with ServerThread(lambda: fake_backend(FakeScheduler(slots=2)), model_name="fake") as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client


@pytest.mark.parametrize("field,value", [("top_p", BAD_TOP_P), ("top_k", 10**6),
                                         ("stop_token_ids", [10**6]), ("max_tokens", 10**6)])
def test_http_door(http, field, value):
    response = http.post("/v1/completions", json={"model": "fake", "prompt": "hi",
                                                  "max_tokens": 4, field: value})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == field, error

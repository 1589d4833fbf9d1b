"""Request validation, incremental detokenization and stop strings (no model, no JAX)."""

import dataclasses
import os

import numpy as np
import pytest

from grok.serving.requests import Cancel, Request, RequestError
from grok.serving.text import Detokenizer, StopStrings, TextStream
from grok.tokenizer import ByteTokenizer, SentencePieceTokenizer

GROK_TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "grok1",
                              "tokenizer.model")

BAD_FIELDS = [
    ("prompt", "\ud800 lone surrogate"), ("prompt", [3, 2**31]), ("prompt", [3, 10**400]),
    ("temperature", 10**400), ("temperature", -(10**400)), ("top_p", 10**400),
    ("seed", 10**400), ("seed", -1), ("max_tokens", 10**400), ("max_tokens", -5),
    ("max_tokens", 2**31), ("top_k", 10**400), ("top_k", 2**31),
    ("stop_tokens", None), ("stop_tokens", [2**31]), ("stop_tokens", [10**400]),
    ("stop", 5), ("stop", [""]), ("stop", ""), ("stop", ["ok", 3]), ("stop", ["\udfff"]),
    ("stop", None), ("request_id", ""), ("request_id", "\ud800"),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS)
def test_bad_field_is_a_request_error_carrying_it(field, value):
    fields = {"prompt": [5, 6]} if field != "prompt" else {}
    with pytest.raises(RequestError) as caught:
        Request(**fields, **{field: value})
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field} ")
    renamed = caught.value.named("--flag")
    assert (renamed.field, str(renamed)) == (field, "--flag " + caught.value.problem)


def test_reference_keywords_fill_openai_fields_once():
    r = Request("hi", 0.5, 0.9, 7, 10)            # the reference's positional order
    assert (r.top_p, r.seed, r.max_tokens) == (0.9, 7, 10)
    old = Request(prompt="hi", nucleus_p=0.8, rng_seed=5, max_len=3)
    assert (old.top_p, old.seed, old.max_tokens) == (0.8, 5, 3)
    assert dataclasses.replace(old, top_p=0.5).top_p == 0.5    # not the stale keyword
    assert Request(prompt="hi", top_p=0.8, nucleus_p=0.8).top_p == 0.8
    with pytest.raises(RequestError) as caught:
        Request(prompt="hi", top_p=0.5, nucleus_p=0.7)
    assert caught.value.field == "nucleus_p" and "top_p" in str(caught.value)
    with pytest.raises(RequestError) as caught:
        Request(prompt="hi", max_len=0)
    assert (caught.value.field, caught.value.value) == ("max_tokens", 0)


def test_fields_are_normalised_and_frozen():
    r = Request(prompt=np.array([5, 6], np.int64), stop="END", stop_tokens={7, 3},
                stream=np.bool_(True), top_k=np.int32(4))
    assert (r.prompt, r.stop, r.stop_tokens, r.stream, r.top_k) == ((5, 6), ("END",), (3, 7),
                                                                   True, 4)
    assert type(r.top_k) is int and type(r.stream) is bool
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seed = -1
    object.__setattr__(r, "seed", -1)          # behind the dataclass's back...
    with pytest.raises(RequestError, match=r"^seed"):
        r.validated()                          # ...caught when the scheduler admits it
    assert hash(Request(prompt="a", stop=["x"])) == hash(Request(prompt="a", stop=("x",)))
    with pytest.raises(RequestError, match="request_id"):
        Cancel(3)


# ---- detokenization -------------------------------------------------------------------------
def stream_text(tokenizer, prompt_ids, output_ids) -> list:
    detok = Detokenizer(tokenizer, prompt_ids)
    pieces = [detok.add(t) for t in output_ids]
    pieces[-1] += detok.flush()
    return pieces


def test_byte_detokenizer_holds_partial_characters():
    tok = ByteTokenizer()
    text = "a\u00e9\u20ac\U0001F600b"
    out = tok.encode(text)
    pieces = stream_text(tok, tok.encode("x"), out)
    assert "".join(pieces) == text == tok.decode(out)
    assert pieces == ["a", "", "\u00e9", "", "", "\u20ac", "", "", "", "\U0001F600", "b"]
    cut = stream_text(tok, [], out[:4])                 # ends inside the euro sign
    assert "".join(cut) == tok.decode(out[:4]) == "a\u00e9\ufffd"


@pytest.fixture(scope="module")
def grok_tokenizer():
    if not os.path.isfile(GROK_TOKENIZER):
        pytest.skip("Grok-1 tokenizer ../shared/grok1/tokenizer.model is absent")
    return SentencePieceTokenizer(GROK_TOKENIZER)


def test_sentencepiece_spaces_and_multibyte(grok_tokenizer):
    tok = grok_tokenizer
    prompt = tok.encode("The answer:")
    text = "caf\u00e9 costs 3\u20ac, \u4e2d\u6587  ok\n\nnext \U0001F600!"
    out = tok.encode(text)
    pieces = stream_text(tok, prompt, out)
    assert "".join(pieces) == " " + text       # the first piece keeps its leading space
    assert all("\ufffd" not in p for p in pieces) and "" in pieces   # bytes held, then whole
    assert tok.decode(prompt + out) == tok.decode(prompt) + "".join(pieces)


def test_min_tokens_is_a_lower_bound(grok_tokenizer):
    samples = ["Hello world", "x" * 5000, "\u4e2d\u6587" * 300, "a1 " * 999,
               "\u1100\u1161\u11a8" * 50, " " * 2000, "e\u0301" * 400]
    for text in samples:
        assert grok_tokenizer.min_tokens(text) <= len(grok_tokenizer.encode(text)), text[:20]
        assert ByteTokenizer().min_tokens(text) <= len(ByteTokenizer().encode(text))
    assert grok_tokenizer.min_tokens("x" * 100_000) > 1000


def test_stop_strings_hold_only_possible_starts():
    stops = StopStrings(["</s>", "\n\n"])
    assert stops.feed("Hello") == ("Hello", None)
    assert stops.feed(" <") == (" ", None) and stops.held == "<"
    assert stops.feed("b>") == ("<b>", None)
    assert stops.feed("\n") == ("", None)
    assert stops.feed("x</") == ("\nx", None)
    assert stops.feed("s") == ("", None)
    assert stops.feed(">tail") == ("", "</s>")
    assert StopStrings([]).feed("any") == ("any", None)


def test_text_stream_stop_across_tokens():
    tok = ByteTokenizer()
    stream = TextStream(tok, tok.encode("q"), ["STOP"])
    released = [stream.add(t) for t in tok.encode("goSTO")]
    assert [r for r, _ in released] == ["g", "o", "", "", ""] and stream.holding
    assert stream.add(tok.encode("P")[0]) == ("", "STOP") and stream.text == "go"
    stream = TextStream(tok, [], ["STOP"])
    for t in tok.encode("a STO"):
        stream.add(t)
    assert stream.finish() == ("STO", None) and stream.text == "a STO"

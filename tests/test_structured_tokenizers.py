"""The llguidance tokenizer (structured outputs' view of the vocabulary) is built when the
model starts, in the background, where requests may carry a grammar (the HTTP server,
grok.LLM, a run.py job with a constrained prompt), so the first constrained request does not
pay for it: at Grok-1's 131,072 SentencePiece vocabulary the build takes about 1.7 s, the
lookup after it microseconds (measured here side by side). A job that sends no constrained
request never builds it."""

import os
import sys
import time
import types

import pytest

from grok import checkpoint, cli
from grok import llm as llm_module
from grok.cli import app as cli_app
from grok.cli.app import may_constrain
from grok.cli.inputs import read_items
from grok.engine.runner import ModelRunner
from grok.llm import LLM
from grok.serving import runner as serving_runner
from grok.serving.runner import InferenceRunner
from grok.serving.structured import tokenizers
from grok.tokenizer import ByteTokenizer, SentencePieceTokenizer
from tiny_model import F32, SEED, tiny_config

TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "grok1",
                         "tokenizer.model")
VOCAB, EOS = 131072, 2


@pytest.mark.slow    # the build itself: 1.7 s alone, 5-8 s on a busy 2-core machine
def test_a_background_build_leaves_the_first_request_a_lookup(monkeypatch):
    if not os.path.isfile(TOKENIZER):
        pytest.skip("../shared/grok1/tokenizer.model is absent")
    monkeypatch.setattr(tokenizers, "_built", {})        # nothing built in this process yet
    sp = SentencePieceTokenizer(TOKENIZER)
    start = time.perf_counter()
    tokenizers.build_in_background(sp, VOCAB, EOS).join()
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    built = tokenizers.llg_tokenizer(sp, VOCAB, EOS)       # the model's tokenizer, as served
    first_request_s = time.perf_counter() - start
    print(f"llguidance tokenizer: build {build_s * 1e3:.0f} ms in the background, "
          f"first request's lookup {first_request_s * 1e3:.3f} ms")
    assert built.vocab_size == VOCAB and len(tokenizers._built) == 1
    assert first_request_s < 0.05 and build_s > 10 * first_request_s


@pytest.mark.parametrize("prebuild", [False, True])
def test_the_runner_starts_the_build_only_when_asked(monkeypatch, prebuild):
    started = []
    monkeypatch.setattr(serving_runner, "build_in_background",
                        lambda *args: started.append(args))
    runner = InferenceRunner(ModelRunner(tiny_config(), bs_per_device=1, rng_seed=SEED,
                                         runtime=F32),
                             local_mesh_config=(1, 1), pad_sizes=(16,),
                             tokenizer=ByteTokenizer(), precompile=False,
                             params=checkpoint.random_params(tiny_config(), SEED),
                             prebuild_grammar_tokenizer=prebuild)
    runner.initialize()
    if not prebuild:
        assert started == []
        return
    ((tokenizer, vocab, eos),) = started
    assert isinstance(tokenizer, ByteTokenizer) and (vocab, eos) == (259, 2)


@pytest.mark.parametrize("argv, expected", [
    (["--prompt", "a", "--prompt", "b"], False),
    (["--prompt", "a", "--logit-bias", "5=1", "--min-p", "0.1"], False),  # no grammar
    (["--prompt", "a", "--regex", "[ab]+"], True),
    (["--prompt", "a", "--choice", "yes", "--choice", "no"], True),
    (["--interactive"], False),
    (["--interactive", "--regex", "[ab]+"], True),
])
def test_run_builds_it_only_for_a_constrained_request(argv, expected):
    args = cli.build_parser().parse_args(argv)
    items = [] if args.interactive else read_items(args, "default")
    assert may_constrain(args, items) is expected


def test_an_input_record_with_its_own_grammar_builds_it(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b", "regex": "[ab]+"}\n')
    args = cli.build_parser().parse_args(["--input-file", str(path)])
    assert may_constrain(args, read_items(args, "default"))
    path.write_text('{"prompt": "a"}\n{"prompt": "b", "max_tokens": 3}\n')
    assert not may_constrain(args, read_items(args, "default"))


class _Loaded(Exception):
    """Stops a start-up once the model options are known."""


def test_the_server_and_llm_ask_for_it(monkeypatch):
    options = []

    def load_model(opts):
        options.append(opts)
        raise _Loaded
    monkeypatch.setattr(cli_app, "load_model", load_model)
    monkeypatch.setattr(llm_module, "load_model", load_model)
    fake = types.ModuleType("grok.serving.http")
    fake.add_serve_arguments = lambda parser: None
    fake.serve = lambda args, build_runner: build_runner()
    monkeypatch.setitem(sys.modules, "grok.serving.http", fake)
    with pytest.raises(_Loaded):
        cli.main(["--serve", "--checkpoint", "x"])
    with pytest.raises(_Loaded):
        cli.main(["--prompt", "a"])        # a plain run: not asked
    with pytest.raises(_Loaded):
        LLM()
    assert [o.prebuild_grammar_tokenizer for o in options] == [True, False, True]

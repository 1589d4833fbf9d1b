"""The llguidance tokenizer (structured outputs' view of the vocabulary) is built when the
model starts, in the background, so the first constrained request does not pay for it: at
Grok-1's 131,072 SentencePiece vocabulary the build takes about 1.7 s, the lookup after it
microseconds. Measured here side by side."""

import os
import time

import pytest

from grok import checkpoint
from grok.engine.runner import ModelRunner
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


def test_the_runner_starts_the_build(monkeypatch):
    started = []
    monkeypatch.setattr(serving_runner, "build_in_background",
                        lambda *args: started.append(args))
    runner = InferenceRunner(ModelRunner(tiny_config(), bs_per_device=1, rng_seed=SEED,
                                         runtime=F32),
                             local_mesh_config=(1, 1), pad_sizes=(16,),
                             tokenizer=ByteTokenizer(), precompile=False,
                             params=checkpoint.random_params(tiny_config(), SEED))
    runner.initialize()
    ((tokenizer, vocab, eos),) = started
    assert isinstance(tokenizer, ByteTokenizer) and (vocab, eos) == (259, 2)

"""Speculative decoding is exact: the same tokens (and logprobs within float tolerance) with
drafts verified as with one decode step per token.

One tiny engine (4 slots, float32, sequence_len 128) is compiled for the module. The engine
tests drive `verify` directly with drafts known to be right, wrong or partly right; the
scheduler tests run the same requests with speculation off and on (K = 4) and compare them
token for token: greedy and seeded sampling, top-k/top-p, stop strings, logprobs, several
slots, max_tokens, the prefix cache, and prompts that loop (so most drafts are accepted).
"""

import numpy as np
import pytest

from grok import checkpoint
from grok.engine.api import GREEDY, SampleParams
from grok.engine.engine import JaxEngine
from grok.engine.runner import InferenceRunner, ModelRunner
from grok.serving.drafting import propose
from grok.serving.requests import Request
from grok.serving.scheduler import Scheduler
from grok.tokenizer import ByteTokenizer
from test_runner import SEED, TOLERANCE, make_prompt, tiny_config

K = 4
SAMPLED = SampleParams(temperature=0.8, top_p=0.9, top_k=20, seed=7)


@pytest.fixture(scope="module")
def engine():
    params = checkpoint.random_params(tiny_config(), SEED)
    runner = InferenceRunner(ModelRunner(tiny_config(), bs_per_device=4, rng_seed=SEED),
                             local_mesh_config=(1, 1), pad_sizes=(8, 16),
                             tokenizer=ByteTokenizer(), params=params, precompile=False)
    runner.initialize()
    model = runner.runner
    return JaxEngine(runner.config, runner.runtime, model.mesh, model.forward, runner.params,
                     model.param_shardings, runner.batch_size, min_kv_len=16)


# ---- drafting ---------------------------------------------------------------------------------
def test_propose_copies_what_followed_the_last_match():
    assert propose([5, 6, 7, 8, 9, 5, 6], 3) == [7, 8, 9]
    assert propose([1, 2, 3], 2) == []                    # nothing repeats
    assert propose([], 2) == [] and propose([1, 1], 0) == []
    # the longest n-gram wins: [2, 3] last followed by 9, [3] alone last followed by 4
    assert propose([2, 3, 9, 3, 4, 2, 3], 1) == [9]
    # a loop of period 2 drafts k tokens by copying from its own draft
    assert propose([7, 1, 2, 1, 2], 5) == [1, 2, 1, 2, 1]


# ---- the engine's verify step -----------------------------------------------------------------
def _plain(engine, prompt, sample, steps):
    """`steps` + 1 tokens (first + steps decode steps) and their logprobs, one slot (1)."""
    prefix, result = engine.prefill(prompt, sample)
    state = engine.insert(prefix, result.arm, engine.init_state(), 1)
    first = engine.read(result)
    tokens, logprobs = [int(first.token_ids[0])], [float(first.logprobs[0])]
    for _ in range(steps):
        state, handle = engine.generate(state)
        out = engine.read(handle)
        tokens.append(int(out.token_ids[1]))
        logprobs.append(float(out.logprobs[1]))
    return tokens, logprobs


def _speculated(engine, prompt, sample, want, guess):
    """Decodes `want` tokens with verify steps whose drafts come from guess(tokens so far)."""
    prefix, result = engine.prefill(prompt, sample)
    state = engine.insert(prefix, result.arm, engine.init_state(), 1)
    first = engine.read(result)
    tokens, logprobs = [int(first.token_ids[0])], [float(first.logprobs[0])]
    steps = 0
    while len(tokens) < want:
        drafts = [[] for _ in range(engine.batch_size)]
        drafts[1] = guess(tokens)[:K]
        state, out = engine.verify(state, drafts, K)
        n = int(out.emitted[1])
        assert 1 <= n <= len(drafts[1]) + 1 and out.emitted[0] == 0
        tokens += out.tokens.token_ids[1, :n].tolist()
        logprobs += out.tokens.logprobs[1, :n].tolist()
        steps += 1
    return tokens[:want], logprobs[:want], steps


@pytest.mark.parametrize("sample", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_verify_gives_the_decode_steps_tokens(engine, sample):
    prompt = make_prompt(11, 3)
    expected, expected_lps = _plain(engine, prompt, sample, 20)
    # right drafts: the true continuation (every draft accepted, K + 1 tokens a step)
    right = lambda toks: expected[len(toks):len(toks) + K]
    tokens, lps, steps = _speculated(engine, prompt, sample, 21, right)
    assert tokens == expected and steps == 4      # 1 + 4 * 5 tokens
    np.testing.assert_allclose(lps, expected_lps, **TOLERANCE)
    # wrong drafts (off by one): rejected, one token a step, later steps unaffected
    wrong = lambda toks: [(t + 1) % 250 + 3 for t in expected[len(toks):len(toks) + K]]
    tokens, lps, steps = _speculated(engine, prompt, sample, 21, wrong)
    assert tokens == expected and steps == 20
    np.testing.assert_allclose(lps, expected_lps, **TOLERANCE)
    # half right: the first two drafts, then wrong ones
    half = lambda toks: right(toks)[:2] + wrong(toks)[2:]
    tokens, _, steps = _speculated(engine, prompt, sample, 21, half)
    assert tokens == expected and steps == 7      # 3 tokens a step

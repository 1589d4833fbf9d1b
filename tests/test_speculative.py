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
from grok.engine.runner import ModelRunner
from grok.serving.runner import InferenceRunner
from grok.serving.drafting import propose
from grok.serving.requests import Request
from grok.serving.results import Completion
from grok.serving.scheduler import Scheduler
from grok.tokenizer import ByteTokenizer
from tiny_model import F32, SEED, TOLERANCE, make_prompt, tiny_config

K = 4
SAMPLED = SampleParams(temperature=0.8, top_p=0.9, top_k=20, seed=7)


def tiny_engine() -> JaxEngine:
    params = checkpoint.random_params(tiny_config(), SEED)
    runner = InferenceRunner(ModelRunner(tiny_config(), bs_per_device=4, rng_seed=SEED, runtime=F32),
                             local_mesh_config=(1, 1), pad_sizes=(8, 16),
                             tokenizer=ByteTokenizer(), params=params, precompile=False)
    runner.initialize()
    model = runner.runner
    return JaxEngine(runner.config, runner.runtime, model.mesh, model.forward, runner.params,
                     model.param_shardings, runner.batch_size, min_kv_len=16)


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


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


@pytest.mark.parametrize("sample", [GREEDY, pytest.param(SAMPLED, marks=pytest.mark.slow)],
                         ids=["greedy", "sampled"])
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


# ---- the scheduler: the same completions with speculation off and on --------------------------
def run_all(scheduler, requests, cancel_after=None):
    """Submits `requests`, steps until idle; {request_id: Completion}, [TokenEvents]. With
    cancel_after=(request_id, n): cancels that request once it has streamed n tokens."""
    scheduler.submit(list(requests))
    done, streamed = {}, []
    for _ in range(500):
        if scheduler.idle():
            break
        for event in scheduler.step():
            if isinstance(event, Completion):
                done[event.request_id] = event
            else:
                streamed.append(event)
        if cancel_after and sum(e.request_id == cancel_after[0] for e in streamed) >= cancel_after[1]:
            scheduler.cancel(cancel_after[0])
            cancel_after = None
    assert scheduler.idle()
    return done, streamed


def scheduler(engine, k, **kwargs):
    kwargs.setdefault("speculative_break_even", 0.0)   # verify whenever there is a draft
    return Scheduler(engine, ByteTokenizer(), speculative_tokens=k, **kwargs)


# Greedy and sampled requests; the greedy one's output repeats a few n-grams (some drafts
# are accepted: `accepted_tokens > 0`).
LOOPING = make_prompt(6, 21)
REQUESTS = [
    Request(LOOPING, temperature=0.0, max_tokens=40, logprobs=True, request_id="greedy-loop"),
    Request(make_prompt(13, 5), temperature=0.8, top_p=0.9, top_k=20, seed=11,
            max_tokens=30, logprobs=True, request_id="sampled"),
    Request(make_prompt(9, 6), temperature=1.0, seed=3, max_tokens=25, request_id="seeded"),
    Request(LOOPING, temperature=0.0, max_tokens=33, stop=["zz"], request_id="greedy-stop"),
    Request(make_prompt(20, 8), temperature=0.7, top_k=5, seed=5, max_tokens=12,
            stream=True, request_id="queued-stream"),
]


def assert_same(off: dict, on: dict):
    assert off.keys() == on.keys()
    for rid, a in off.items():
        b = on[rid]
        assert (b.output_ids, str(b), b.finish_reason, b.stop_reason) == \
            (a.output_ids, str(a), a.finish_reason, a.stop_reason), rid
        if a.logprobs is not None:
            np.testing.assert_allclose(b.logprobs, a.logprobs, **TOLERANCE)
            assert [[t for t, _ in top] for top in b.top_logprobs] == \
                [[t for t, _ in top] for top in a.top_logprobs]


def test_speculation_gives_the_same_completions(engine):
    off, off_events = run_all(scheduler(engine, 0), REQUESTS)
    spec = scheduler(engine, K)
    on, on_events = run_all(spec, REQUESTS)
    assert_same(off, on)
    assert [(e.request_id, e.token_id, e.text) for e in on_events] == \
        [(e.request_id, e.token_id, e.text) for e in off_events]
    s = spec.speculation
    assert s.verify_steps > 0 and s.accepted_tokens > 0 and s.draft_tokens >= s.accepted_tokens


def test_speculation_with_stop_strings_and_tokens(engine):
    base = run_all(scheduler(engine, 0), REQUESTS[:1])[0]["greedy-loop"]
    text, ids = str(base), base.output_ids
    stop = text[len(text) // 2:len(text) // 2 + 2]      # ends the loop's text in mid-step
    requests = [Request(LOOPING, temperature=0.0, max_tokens=40, stop=[stop], request_id="s"),
                Request(LOOPING, temperature=0.0, max_tokens=40, stop_tokens=[ids[9]],
                        request_id="t"),
                Request(LOOPING, temperature=0.0, max_tokens=7, request_id="len")]
    assert_same(run_all(scheduler(engine, 0), requests)[0],
                run_all(scheduler(engine, K), requests)[0])


def test_speculation_with_min_tokens_and_ignore_eos(engine):
    # min_tokens masks stop tokens in the processed decode step, so no verify step runs while
    # that request does; ignore_eos alone speculates, its accepted drafts going through the
    # same stop checks as decode steps' tokens
    plain, _ = run_all(scheduler(engine, 0), [Request(LOOPING, temperature=0.0, max_tokens=40,
                                                      request_id="p")])
    ids = plain["p"].output_ids
    requests = [Request(LOOPING, temperature=0.0, max_tokens=40, stop_tokens=[ids[2]],
                        min_tokens=12, request_id="min"),
                Request(LOOPING, temperature=0.0, max_tokens=30, ignore_eos=True,
                        request_id="ignore")]
    off, _ = run_all(scheduler(engine, 0), requests)
    on, _ = run_all(scheduler(engine, K), requests)
    assert_same(off, on)
    assert ids[2] not in on["min"].output_ids[:12] and len(on["min"].output_ids) >= 12
    assert len(on["ignore"].output_ids) == 30
    spec = scheduler(engine, K)
    alone, _ = run_all(spec, requests[1:])
    assert alone["ignore"].output_ids == on["ignore"].output_ids
    assert spec.speculation.verify_steps > 0


def test_cancel_mid_speculation_keeps_a_prefix(engine):
    request = Request(LOOPING, temperature=0.0, max_tokens=60, stream=True, request_id="c")
    full = run_all(scheduler(engine, 0), [request])[0]["c"]
    done, _ = run_all(scheduler(engine, K), [request], cancel_after=("c", 5))
    got = done["c"]
    assert got.finish_reason == "cancelled"
    assert 5 <= len(got.output_ids) < len(full.output_ids)
    assert got.output_ids == full.output_ids[:len(got.output_ids)]


@pytest.mark.slow   # two schedulers with a prefix cache (more compiles)
def test_speculation_with_the_prefix_cache(engine):
    """A second turn continuing the first's cached prompt + output KV (written by verify
    steps) gives the tokens it gives without speculation."""
    first = Request(LOOPING, temperature=0.0, max_tokens=20, request_id="one")
    results = []
    for k in (0, K):
        s = scheduler(engine, k, prefix_cache_tokens=512)
        one = run_all(s, [first])[0]["one"]
        follow = Request(list(LOOPING) + one.output_ids + make_prompt(3, 9), temperature=0.0,
                         max_tokens=20, logprobs=True, request_id="two")
        results.append((one, run_all(s, [follow])[0]))
        assert s.prefix_cache_hit_tokens > len(LOOPING)
    assert results[0][0].output_ids == results[1][0].output_ids
    assert_same(results[0][1], results[1][1])


def test_a_closed_gate_runs_plain_decode_steps(engine):
    spec = scheduler(engine, K, speculative_break_even=1e9)   # never worth it
    assert_same(run_all(scheduler(engine, 0), REQUESTS[:2])[0], run_all(spec, REQUESTS[:2])[0])
    assert spec.speculation.verify_steps == 0


def test_measured_break_even_is_a_cost_ratio(engine):
    spec = Scheduler(engine, ByteTokenizer(), speculative_tokens=K).speculation
    assert 0.5 < spec.break_even < 50     # a verify step costs about some decode steps
    assert 0.5 < spec.sampled_break_even < 50   # (batches with a sampling request)


# ---- flags and metrics (no engine) ------------------------------------------------------------
def test_flags_metrics_and_settings_are_checked():
    from grok.cli.flags import build_parser
    from grok.runtime_config import RuntimeConfig
    from grok.serving.http.metrics import ServerMetrics

    args = build_parser().parse_args(["--speculative-tokens", "4", "--speculative-method",
                                      "ngram"])
    assert (args.speculative_tokens, args.speculative_method) == (4, "ngram")
    assert build_parser().parse_args([]).speculative_tokens == 0
    with pytest.raises(ValueError, match="speculative_tokens"):
        RuntimeConfig(speculative_tokens=-1)
    with pytest.raises(ValueError, match="speculative_method"):
        RuntimeConfig(speculative_method="eagle")
    metrics = ServerMetrics("m")
    metrics.add_speculation(5, 3)
    text = metrics.render().decode()
    assert "grok_spec_draft_tokens_total 5.0" in text
    assert "grok_spec_accepted_tokens_total 3.0" in text


def test_greedy_token_is_the_samplers_greedy_row():
    """The verify step's all-greedy path gives sample_token's greedy output (ties included)."""
    import jax
    import jax.numpy as jnp
    from grok.engine.sampling import SampleSettings, greedy_token, sample_token

    logits = jax.random.normal(jax.random.PRNGKey(0), (6, 300)) * 4
    logits = logits.at[1, 7].set(50.0).at[1, 3].set(50.0)          # a tie: the lowest id wins
    settings = SampleSettings(jnp.zeros(6), jnp.ones(6), jnp.zeros(6, jnp.int32),
                              jnp.array([True] * 5 + [False]))
    keys = jax.random.split(jax.random.PRNGKey(1), 6)
    want, got = sample_token(logits, settings, keys), greedy_token(logits)
    assert int(got.token_id[1]) == 3
    for a, b in zip(want, got):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6)


def test_outputs_without_alternatives_keep_the_token_and_its_logprob():
    """The variant for steps where no slot reports alternatives: the same tokens and logprobs
    (from the row's max and exp-sum, not the [B, V] log_softmax), zeros for the top ones."""
    import jax
    import jax.numpy as jnp
    from grok.engine.sampling import NUM_ALTERNATIVES, chosen_logprob, greedy_token

    logits = jax.random.normal(jax.random.PRNGKey(2), (4, 300)) * 4
    full, lean = greedy_token(logits), greedy_token(logits, alternatives=False)
    np.testing.assert_array_equal(np.asarray(lean.token_id), np.asarray(full.token_id))
    np.testing.assert_allclose(np.asarray(lean.logprob), np.asarray(full.logprob), rtol=1e-6)
    assert np.asarray(lean.top_k_token_ids).shape == (4, NUM_ALTERNATIVES)
    assert not np.asarray(lean.top_k_logprobs).any()
    drawn = jnp.array([5, 299, 0, 17])             # any token, as a sampled row's
    want = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(drawn)[:, None],
                              axis=1)[:, 0]
    np.testing.assert_allclose(np.asarray(chosen_logprob(logits, drawn)), want, rtol=1e-6)

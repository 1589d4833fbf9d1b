"""The engine API (grok.engine.api) on a tiny random model: prefill -> Prefix -> insert -> generate.

The reference for every number is a full forward over the whole sequence without a cache
(tests/test_runner.py's `FullForward`). One engine is compiled for the module: 4 slots on one
device (test_runner.py covers meshes), prefill buckets (8, 16), float32, sequence_len 128 (prefix capacities 8, 16, 32,
64, 128), decode variants reading 16, 32, 64 or 128 cache positions (min_kv_len 16, so
every test below also decodes through the short variants). Tests drive the engine through a
small host loop (`decode`), as a scheduler would.
"""

import collections


import jax
import numpy as np
import pytest

from grok.engine.api import GREEDY, Engine, Prefix, SampleParams
from grok.engine.engine import JaxEngine
from grok.engine.runner import ModelRunner
from grok.serving.runner import InferenceRunner
from grok.engine.state import capacity_for
from grok.tokenizer import ByteTokenizer
from tiny_model import F32, SEED, TOLERANCE, make_prompt, tiny_config

BUCKETS = (8, 16)
SAMPLED = SampleParams(temperature=0.8, top_p=0.9, top_k=20, seed=7)
MIN_KV_LEN = 16   # the shortest decode variant (production: 128)


@pytest.fixture(scope="module")
def engine(host_params):
    runner = InferenceRunner(ModelRunner(tiny_config(), bs_per_device=4, rng_seed=SEED, runtime=F32),
                             local_mesh_config=(1, 1), pad_sizes=BUCKETS,
                             tokenizer=ByteTokenizer(), params=host_params, precompile=False)
    runner.initialize()
    model = runner.runner
    engine = JaxEngine(runner.config, runner.runtime, model.mesh, model.forward, runner.params,
                       model.param_shardings, runner.batch_size, min_kv_len=MIN_KV_LEN)
    engine.precompile()
    assert engine.batch_size == 4 and engine.prefix_capacities == (8, 16, 32, 64, 128)
    assert engine.kv_len_buckets == (16, 32, 64, 128)
    assert engine.startup_kv_lens() == (16, 32)   # a 16-token prompt's first step: 17
    return engine


def prefill_prompt(engine, prompt, sample=GREEDY, prefix=None, chunk=None):
    """The whole prompt in chunks of `chunk` (default the largest bucket) -> (Prefix, result)."""
    chunk = chunk or engine.prefill_buckets[-1]
    for start in range(0, len(prompt), chunk):
        prefix, result = engine.prefill(prompt[start:start + chunk], sample, existing_prefix=prefix)
    return prefix, result


def decode(engine, prefilled: dict, steps: int, state=None, kv_len=None):
    """Inserts {slot: (prefix, result)} and runs `steps` decode steps (the `kv_len` variant, or
    the engine's choice), reading each step after the next is dispatched.
    Returns ({slot: [token ids]}, {slot: [logprobs]}, state)."""
    state = engine.init_state() if state is None else state
    tokens, logprobs = {}, {}
    for slot, (prefix, result) in prefilled.items():
        state = engine.insert(prefix, result.arm, state, slot)
        first = engine.read(result)
        tokens[slot], logprobs[slot] = [int(first.token_ids[0])], [float(first.logprobs[0])]
    pending = None
    for _ in range(steps + 1):
        handle = None
        if _ < steps:
            state, handle = engine.generate(state, kv_len)
        if pending is not None:
            out = engine.read(pending)
            for slot in prefilled:
                tokens[slot].append(int(out.token_ids[slot]))
                logprobs[slot].append(float(out.logprobs[slot]))
        pending = handle
    return tokens, logprobs, state


def test_engine_satisfies_the_protocol(engine):
    assert isinstance(engine, Engine)
    assert engine.prefill_buckets == BUCKETS and engine.prefill_batch_sizes == (2, 4)


@pytest.mark.slow   # compiles several prefill shapes
def test_prefix_round_trip_matches_full_forward(engine, reference):
    prompts = {0: make_prompt(3, 0), 1: make_prompt(16, 1), 2: make_prompt(20, 2),
               3: make_prompt(40, 3)}          # 1 chunk, 1 full chunk, 2 and 3 chunks
    prefilled = {slot: prefill_prompt(engine, p) for slot, p in prompts.items()}
    for slot, (prefix, _) in prefilled.items():
        n = len(prompts[slot])
        assert int(prefix.length) == n and prefix.capacity >= n
    assert [p.capacity for p, _ in prefilled.values()] == [8, 16, 32, 64]
    tokens, logprobs, _ = decode(engine, prefilled, steps=5)
    for slot, prompt in prompts.items():
        expected, _ = reference.greedy(prompt, 6)
        assert tokens[slot] == expected, slot
        full = reference.logprobs(prompt + expected[:-1])[len(prompt) - 1:]
        np.testing.assert_allclose(logprobs[slot], full[np.arange(6), expected], **TOLERANCE)


@pytest.mark.parametrize("chunks", [(8, 8), (3, 5, 8)])
def test_chunked_prefill_equals_one_shot(engine, chunks):
    prompt = make_prompt(16, 10)
    whole, whole_result = engine.prefill(prompt, SAMPLED)
    prefix, start = None, 0
    for n in chunks:
        prefix, result = engine.prefill(prompt[start:start + n], SAMPLED, existing_prefix=prefix)
        start += n
    assert int(prefix.length) == int(whole.length) == 16
    valid = np.asarray(whole.valid)[0]
    np.testing.assert_array_equal(np.asarray(prefix.valid)[0, :16], valid)
    assert not np.asarray(prefix.valid)[0, 16:].any()
    for a, b in ((prefix.k, whole.k), (prefix.v, whole.v)):
        np.testing.assert_allclose(np.asarray(a)[:, :, :, :16], np.asarray(b), **TOLERANCE)
    got, want = engine.read(result), engine.read(whole_result)
    assert got.token_ids[0] == want.token_ids[0]
    np.testing.assert_allclose(got.top_logprobs, want.top_logprobs, **TOLERANCE)


def test_existing_prefix_is_kept_and_shared(engine, reference):
    """A prefix continued by two different suffixes (as a prefix cache would) is unchanged, and
    inserted into two slots at once both decode like the full prompt."""
    shared, suffixes = make_prompt(16, 20), (make_prompt(5, 21), make_prompt(9, 22))
    prefix, result = engine.prefill(shared, GREEDY)
    before = jax.tree.map(np.asarray, prefix)
    branches = [engine.prefill(s, GREEDY, existing_prefix=prefix) for s in suffixes]
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, prefix), before)
    prefilled = {0: branches[0], 1: branches[1], 2: (prefix, result), 3: (prefix, result)}
    tokens, _, _ = decode(engine, prefilled, steps=3)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, prefix), before)
    for slot, prompt in ((0, shared + suffixes[0]), (1, shared + suffixes[1]), (2, shared), (3, shared)):
        assert tokens[slot] == reference.greedy(prompt, 4)[0], slot


def test_insert_clears_the_previous_occupant(engine):
    """issue 8 item 4: a pad-only prompt in a reused slot sees nothing of the slot's last request."""
    pad_only = [engine.pad_token] * 3
    busy = {1: prefill_prompt(engine, make_prompt(40, 30)), 2: prefill_prompt(engine, make_prompt(20, 31))}
    _, _, used = decode(engine, busy, steps=4)
    used = engine.release(used, 1)
    fresh_tokens, fresh_lps, fresh = decode(engine, {1: engine.prefill(pad_only, GREEDY)}, steps=3)
    reused_tokens, reused_lps, reused = decode(engine, {1: engine.prefill(pad_only, GREEDY)}, steps=3,
                                               state=used)
    assert reused_tokens[1] == fresh_tokens[1]
    np.testing.assert_allclose(reused_lps[1], fresh_lps[1], **TOLERANCE)
    row = lambda a, axis: np.take(np.asarray(a), 1, axis=axis)
    for name, axis in (("k", 1), ("v", 1), ("valid", 0), ("step", 0)):
        np.testing.assert_allclose(row(getattr(reused.memory, name), axis),
                                   row(getattr(fresh.memory, name), axis), err_msg=name, **TOLERANCE)


@pytest.mark.slow   # compiles several prefill shapes
def test_prefill_batch_equals_one_at_a_time(engine):
    prompts = [make_prompt(3, 40), make_prompt(8, 41), make_prompt(6, 42)]
    samples = [GREEDY, SAMPLED, SAMPLED._replace(seed=9, top_k=0)]
    batched = engine.prefill_batch(prompts, samples)
    assert len(batched) == 3
    for prompt, sample, (prefix, result) in zip(prompts, samples, batched):
        alone_prefix, alone_result = engine.prefill(prompt, sample)
        assert prefix.capacity == alone_prefix.capacity == capacity_for(8, engine.prefix_capacities)
        assert int(prefix.length) == len(prompt)
        np.testing.assert_array_equal(np.asarray(prefix.valid), np.asarray(alone_prefix.valid))
        np.testing.assert_allclose(np.asarray(prefix.k), np.asarray(alone_prefix.k), **TOLERANCE)
        got, want = engine.read(result), engine.read(alone_result)
        assert got.token_ids[0] == want.token_ids[0]
        np.testing.assert_allclose(got.logprobs, want.logprobs, **TOLERANCE)
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, result.arm),
                     jax.tree.map(np.asarray, alone_result.arm))


@pytest.mark.slow   # compiles several prefill shapes
def test_echo_scores_the_prompt_across_chunks(engine, reference):
    prompt = make_prompt(20, 50)
    first, r1 = engine.prefill(prompt[:16], GREEDY, echo=True, next_token=prompt[16])
    _, r2 = engine.prefill(prompt[16:], GREEDY, existing_prefix=first, echo=True)
    s1, s2 = engine.read_echo(r1), engine.read_echo(r2)
    echo = np.concatenate([s1.logprobs[:16], s2.logprobs[:3]])                        # [19]
    full = reference.logprobs(prompt)
    np.testing.assert_allclose(echo, full[np.arange(19), prompt[1:]], **TOLERANCE)
    # each position carries the alternatives of a generated token: the most probable first
    top_ids = np.concatenate([s1.top_ids[:16], s2.top_ids[:3]])                       # [19, A]
    np.testing.assert_array_equal(top_ids[:, 0], np.argmax(full[:19], axis=-1))
    np.testing.assert_array_equal(np.concatenate([s1.token_ids[:16], s2.token_ids[:3]]),
                                  prompt[1:])
    assert engine.read(r2).token_ids[0] == int(np.argmax(full[-1]))


def test_no_recompiles_while_serving(engine):
    """After every shape was seen once, other prompts of those shapes compile nothing."""
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _, **kw: compiles.append(event)
        if event == "/jax/core/compile/backend_compile_duration" else None)

    def serve(lengths, seed, sample):
        prefilled = {slot: prefill_prompt(engine, make_prompt(n, seed + slot), sample)
                     for slot, n in enumerate(lengths)}
        decode(engine, prefilled, steps=2)
        engine.prefill_batch([make_prompt(n % 8 + 1, seed) for n in lengths[:3]],
                            [sample] * len(lengths[:3]))

    serve((3, 12, 20, 40), 60, GREEDY)      # chunk shapes (-, 8), (-, 16), (16, 8), (32, 8)
    serve((3,), 65, GREEDY)                 # decode variants 64 (above) and 16 (here)
    compiles.clear()
    steps_before = collections.Counter(engine.decode_steps_by_kv_len)
    serve((5, 10, 23, 39), 70, SAMPLED)     # the same shapes, other lengths and settings
    serve((4,), 75, SAMPLED)
    assert compiles == []
    assert engine.decode_steps_by_kv_len - steps_before == collections.Counter({64: 2, 16: 2})


def test_bad_calls_name_the_problem(engine):
    with pytest.raises(ValueError, match="1 to 16 tokens"):
        engine.prefill([], GREEDY)
    with pytest.raises(ValueError, match="1 to 16 tokens"):
        engine.prefill(make_prompt(17, 0), GREEDY)
    prefix, result = engine.prefill(make_prompt(4, 0), GREEDY)
    with pytest.raises(ValueError, match="slot"):
        engine.insert(prefix, result.arm, engine.init_state(), 4)
    with pytest.raises(ValueError, match="echo"):
        engine.read_echo(result)
    with pytest.raises(ValueError, match="2 prompts but 1"):
        engine.prefill_batch([[5], [6]], [GREEDY])
    assert isinstance(prefix, Prefix)


def test_slice_prefix_keeps_a_shorter_shared_part(engine):
    """A prefix cache's partial hit: the first 11 of 20 positions, continued, equal to a prompt
    prefilled from scratch (tokens and KV)."""
    prompt, other = make_prompt(20, 80), make_prompt(5, 81)
    full, _ = prefill_prompt(engine, prompt)
    kept = engine.slice_prefix(full, 11)
    assert kept.capacity == 16 and int(kept.length) == 11 and full.capacity == 32
    assert not np.asarray(kept.valid)[0, 11:].any() and not np.asarray(kept.k)[:, :, :, 11:].any()
    resumed, result = engine.prefill(other, GREEDY, existing_prefix=kept)
    scratch, scratch_result = prefill_prompt(engine, prompt[:11] + other, chunk=8)
    assert engine.read(result).token_ids[0] == engine.read(scratch_result).token_ids[0]
    n = 16
    np.testing.assert_allclose(np.asarray(resumed.k)[:, :, :, :n], np.asarray(scratch.k)[:, :, :, :n],
                               **TOLERANCE)
    with pytest.raises(ValueError, match="slice_prefix"):
        engine.slice_prefix(full, 33)


def _steps_run(engine, run):
    """(what run() returns, the decode variants it ran: {kv_len: steps})."""
    before = collections.Counter(engine.decode_steps_by_kv_len)
    out = run()
    return out, dict(engine.decode_steps_by_kv_len - before)


def test_a_short_context_runs_the_short_variant_with_the_same_tokens(engine):
    """Two short prompts decode through the 16-position variant, with exactly the tokens of
    the step reading all 128 positions, and their logprobs to float32 rounding (the softmax
    sums 16 or 128 terms, which a vectorising CPU backend may group differently)."""
    prompts = {0: make_prompt(3, 90), 2: make_prompt(5, 91)}
    prefilled = {slot: engine.prefill(p, SAMPLED._replace(seed=slot)) for slot, p in prompts.items()}
    (live, live_steps) = _steps_run(engine, lambda: decode(engine, prefilled, steps=5))
    (full, full_steps) = _steps_run(engine, lambda: decode(engine, prefilled, steps=5,
                                                           kv_len=engine.sequence_len))
    assert live_steps == {16: 5}            # contexts 6 .. 10 (with the new token)
    assert full_steps == {128: 5}
    for slot in prompts:
        assert live[0][slot] == full[0][slot], slot
        np.testing.assert_allclose(live[1][slot], full[1][slot], rtol=2e-6, atol=0)
    np.testing.assert_allclose(np.asarray(live[2].memory.k), np.asarray(full[2].memory.k),
                               rtol=1e-5, atol=1e-5)


def test_a_context_crossing_buckets_keeps_the_full_length_tokens(engine, reference):
    """A 14-token prompt decoded for 20 steps crosses 16 and 32 positions mid-generation; its
    tokens stay those of the whole-cache step and of a full forward without a cache."""
    prompt = make_prompt(14, 92)
    prefilled = {1: engine.prefill(prompt, GREEDY)}
    (live, live_steps) = _steps_run(engine, lambda: decode(engine, prefilled, steps=20))
    full, _ = _steps_run(engine, lambda: decode(engine, prefilled, steps=20, kv_len=128))
    assert live_steps == {16: 2, 32: 16, 64: 2}   # needs 15 .. 34 positions
    assert live[0][1] == full[0][1] == reference.greedy(prompt, 21)[0]
    np.testing.assert_allclose(live[1][1], full[1][1], rtol=2e-6, atol=0)


def test_the_variant_follows_the_host_lengths(engine):
    """kv_len_for: the longest active slot + 1, from lengths the engine tracks on the host;
    a released slot no longer counts; a state the engine did not make reads everything."""
    state = engine.init_state()
    assert engine.kv_len_for(state) == 16
    long_prefix, long_result = prefill_prompt(engine, make_prompt(20, 93))
    short_prefix, short_result = engine.prefill(make_prompt(3, 94), GREEDY)
    state = engine.insert(long_prefix, long_result.arm, state, 3)
    state = engine.insert(short_prefix, short_result.arm, state, 0)
    assert engine.kv_len_for(state) == 32                  # 20 + 1
    kept = engine.slice_prefix(long_prefix, 17)
    state = engine.insert(kept, long_result.arm, state, 3)  # replaces the 20-token prompt
    assert engine.kv_len_for(state) == 32                  # 17 + 1
    state = engine.insert(engine.slice_prefix(kept, 11), long_result.arm, state, 3)
    assert engine.kv_len_for(state) == 16                  # 11 + 1
    state = engine.release(state, 0)
    state = engine.release(state, 3)
    assert engine.kv_len_for(state) == 16                  # nothing active
    assert engine.kv_len_for(engine.new_memory()) == 128
    with pytest.raises(ValueError, match="kv_len must be a decode variant >= 16"):
        engine.generate(state, kv_len=8)
    with pytest.raises(ValueError, match="decode variants"):
        engine.sample_step_fn(100)

"""InferenceRunner and its request generator on a tiny random model.

The reference for every number is `grok.model.build_forward` run on the whole sequence without
a KV cache (`FullForward`). Runners are compiled once per module: `runner` has 4 slots on a
(2, 2) mesh, `runner1` 1 slot on a (1, 2) mesh; prompt buckets are (8, 16), so prompts
longer than 16 tokens are prefilled in chunks. The config's eos_token is chosen from the
model's own greedy outputs (`eos_token` fixture) so that some requests really stop at EOS.
"""

import collections
import dataclasses

import jax
import numpy as np
import pytest

from grok.model.transformer import build_forward, init_memory
from grok.serving.requests import Request, RequestError
from grok.serving.results import Completion, TokenEvent
from grok.engine.api import Engine
from grok.engine.runner import ModelRunner
from grok.serving.runner import InferenceRunner, sample_from_model
from grok.tokenizer import ByteTokenizer
from tiny_model import F32, NUM_SPECIAL, PAD_SIZES, SEED, TOLERANCE, make_prompt, tiny_config

# Mixed prompt lengths: many beyond the largest bucket (16), so prefilled in 2 or 3 chunks
# (continuing prefixes of capacity 16 and 32; each capacity and chunk bucket compiles a
# program, so longer prompts would add compiles, not cases). The first four are prefilled as
# one batch of bucket 16, the shape test_streaming_order_tokens_and_text's batch reuses.
PROMPT_LENGTHS = (12, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 18, 20, 24, 25, 31, 33, 35, 40)


MIXED = [(make_prompt(n, i), 3 + (7 * i) % 22) for i, n in enumerate(PROMPT_LENGTHS)]


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eos_token(reference):
    """The token the most MIXED greedy outputs contain after their first token."""
    outputs = [reference.greedy(p, n)[0] for p, n in MIXED]
    counts = collections.Counter(t for out in outputs for t in set(out[1:]) - {out[0]})
    return counts.most_common(1)[0][0]


@pytest.fixture(scope="module")
def config(eos_token):
    return tiny_config(eos_token)


@pytest.fixture(scope="module")
def cached_forward(config, host_params):
    """forward(tokens [1, T], memory, lengths) through the KV cache, on one device."""
    forward = jax.jit(build_forward(config, F32))
    params = jax.device_put(host_params, jax.devices()[0])
    return lambda tokens, memory, lengths: forward(params, tokens, memory, lengths)


def make_runner(config, mesh, bs_per_device, params=None) -> InferenceRunner:
    runner = InferenceRunner(ModelRunner(config, bs_per_device=bs_per_device, rng_seed=SEED,
                                         runtime=F32),
                             local_mesh_config=mesh, pad_sizes=PAD_SIZES,
                             tokenizer=ByteTokenizer(), params=params)
    runner.initialize()
    return runner


@pytest.fixture(scope="module")
def runner(config, host_params):
    runner = make_runner(config, (2, 2), 1, host_params)
    assert runner.batch_size == 4
    return runner


@pytest.fixture(scope="module")
def runner1(config):
    """One slot; weights from ModelRunner.load_or_init's own random init (no checkpoint)."""
    runner = make_runner(config, (1, 2), 0.5)
    assert runner.batch_size == 1
    return runner


def run_all(gen, requests) -> list:
    """Sends `requests` and collects every result until the generator is idle."""
    results, out = [], gen.send(requests)
    while out is not None:
        results.append(out)
        out = next(gen)
    return results


def run_staggered(gen, requests, group: int) -> list:
    """Sends `group` requests at a time, the next group while earlier ones are in flight."""
    batches = [requests[i:i + group] for i in range(0, len(requests), group)]
    results, out = [], gen.send(batches.pop(0))
    while out is not None or batches:
        if out is not None:
            results.append(out)
        send_now = batches and (out is None or len(results) % 3 == 0)
        out = gen.send(batches.pop(0)) if send_now else next(gen)
    return results


def by_id(results) -> dict:
    done = {r.request_id: r for r in results if isinstance(r, Completion)}
    assert len(done) == sum(isinstance(r, Completion) for r in results), "duplicate Completion"
    return done


def new_generator(runner):
    gen = runner.run()
    assert next(gen) is None
    return gen


@pytest.fixture(scope="module")
def alone(runner):
    """alone(request) -> its Completion with nothing else in flight (same runner, 4 slots)."""
    gen, cache = new_generator(runner), {}

    def run(request: Request) -> Completion:
        if request not in cache:
            (result,) = run_all(gen, request)
            cache[request] = result
        return cache[request]
    return run


# ---- many requests through the slots -------------------------------------------------------
def test_mixed_greedy_batch_matches_alone_and_full_forward(runner, alone, reference, eos_token):
    requests = [Request(prompt=p, temperature=0, max_tokens=n, request_id=f"g{i}")
                for i, (p, n) in enumerate(MIXED)]
    done = by_id(run_all(new_generator(runner), requests))
    assert sorted(done) == sorted(r.request_id for r in requests)
    reasons = collections.Counter()
    for r in requests:
        got = done[r.request_id]
        expected, reason = reference.greedy(r.prompt, r.max_tokens, {eos_token})
        assert (got.output_ids, got.finish_reason) == (expected, reason), r.request_id
        assert got.output_ids == alone(r).output_ids
        assert got.prompt_ids == list(r.prompt)
        reasons[reason] += 1
    assert reasons["stop"] >= 2 and reasons["length"] >= 2, reasons
    assert max(len(p) for p, _ in MIXED) > 2 * max(PAD_SIZES)     # 3 chunks


def sampled_requests():
    return [Request(prompt=p, temperature=(0.7, 1.0, 1.6)[i % 3], top_k=(0, 0, 5)[i % 3],
                    top_p=(1.0, 0.9)[i % 2], seed=1000 + i, max_tokens=n, request_id=f"s{i}")
            for i, (p, n) in enumerate(MIXED)]


def test_sampling_is_deterministic_whatever_the_slot_and_company(runner, alone, reference):
    requests = sampled_requests()
    staggered = by_id(run_staggered(new_generator(runner), requests, group=5))
    reversed_batch = by_id(run_all(new_generator(runner), requests[::-1]))
    differs_from_greedy = 0
    for r in requests:
        single = alone(r)
        assert staggered[r.request_id].output_ids == single.output_ids, r.request_id
        assert reversed_batch[r.request_id].output_ids == single.output_ids, r.request_id
        greedy, _ = reference.greedy(r.prompt, r.max_tokens, {runner.config.eos_token})
        differs_from_greedy += single.output_ids != greedy
    assert differs_from_greedy >= len(requests) // 2   # the sampling really samples
    other_seed = dataclasses.replace(requests[3], seed=7)
    assert alone(other_seed).output_ids != alone(requests[3]).output_ids


# ---- chunked prefill ------------------------------------------------------------------------
def test_chunked_prefill_equals_full_forward(config, cached_forward, reference):
    """Model level: a 37-token prompt in chunks of 8 (the last one 5) through the cache (one
    chunk shape, as test_cached_pad_key_stays_masked's: each shape compiles the forward)."""
    prompt, chunk = make_prompt(37, seed=99), min(PAD_SIZES)
    memory = init_memory(config, 1, config.sequence_len, F32)
    chunk_logits = []
    for start in range(0, len(prompt), chunk):
        part = prompt[start:start + chunk]
        tokens = np.zeros((1, chunk), np.int32)
        tokens[0, :len(part)] = part
        logits, memory = cached_forward(tokens, memory, np.array([len(part)], np.int32))
        chunk_logits.append(np.asarray(logits[0, :len(part)]))
    full = reference.logits(prompt)
    np.testing.assert_allclose(np.concatenate(chunk_logits), full, **TOLERANCE)
    assert int(memory.step[0]) == len(prompt)
    token = int(np.argmax(full[-1]))                       # one decode step continues it
    logits, memory = cached_forward(np.array([[token]], np.int32), memory, np.array([1], np.int32))
    np.testing.assert_allclose(np.asarray(logits[0, 0]), reference.logits(prompt + [token])[-1],
                               **TOLERANCE)


def test_cached_pad_key_stays_masked(config, cached_forward, reference):
    prompt = make_prompt(12, seed=7)
    prompt[3] = config.pad_token
    memory = init_memory(config, 1, config.sequence_len, F32)
    chunk_logits = []
    for part in (prompt[:8], prompt[8:]):
        tokens = np.zeros((1, 8), np.int32)
        tokens[0, :len(part)] = part
        logits, memory = cached_forward(tokens, memory, np.array([len(part)], np.int32))
        chunk_logits.append(np.asarray(logits[0, :len(part)]))
    np.testing.assert_allclose(np.concatenate(chunk_logits), reference.logits(prompt), **TOLERANCE)


def test_long_prompt_logprobs_and_echo_match_full_forward(runner, reference):
    prompt, max_len = make_prompt(20, seed=5), 12              # chunks of 16 and 4
    request = Request(prompt=prompt, temperature=0, max_tokens=max_len, logprobs=True, echo=True,
                      stop_tokens=[runner.config.eos_token])
    (got,) = run_all(new_generator(runner), request)
    out = got.output_ids
    assert len(out) == max_len and got.finish_reason == "length"
    logprobs = reference.logprobs(prompt + out)                 # [n + m, V]
    n = len(prompt)
    expected = [logprobs[n - 1 + i, t] for i, t in enumerate(out)]
    np.testing.assert_allclose(got.logprobs, expected, **TOLERANCE)
    for i, alternatives in enumerate(got.top_logprobs):
        ids, lps = zip(*alternatives)
        assert ids[0] == out[i]                                  # greedy: the chosen token
        assert list(lps) == sorted(lps, reverse=True)
        assert list(ids) == np.argsort(-logprobs[n - 1 + i])[:len(ids)].tolist()
        np.testing.assert_allclose(lps, logprobs[n - 1 + i, list(ids)], **TOLERANCE)
    assert len(got.prompt_logprobs) == n and got.prompt_logprobs[0] is None
    expected_prompt = [logprobs[k - 1, prompt[k]] for k in range(1, n)]
    np.testing.assert_allclose(got.prompt_logprobs[1:], expected_prompt, **TOLERANCE)


def test_sampled_logprobs_are_the_models(runner, reference):
    request = Request(prompt=make_prompt(20, seed=6), temperature=1.3, seed=3, max_tokens=10,
                      logprobs=True, stop_tokens=[runner.config.eos_token])
    (got,) = run_all(new_generator(runner), request)
    logprobs = reference.logprobs(list(request.prompt) + got.output_ids)
    n = len(request.prompt)
    assert len(got.output_ids) >= 5
    expected = [logprobs[n - 1 + i, t] for i, t in enumerate(got.output_ids)]
    np.testing.assert_allclose(got.logprobs, expected, **TOLERANCE)
    assert all([lp for _, lp in alt] == sorted([lp for _, lp in alt], reverse=True)
               for alt in got.top_logprobs)
    plain = dataclasses.replace(request, logprobs=False)
    (again,) = run_all(new_generator(runner), plain)
    assert again.output_ids == got.output_ids
    assert again.logprobs is None and again.top_logprobs is None and again.prompt_logprobs is None


# ---- stopping -------------------------------------------------------------------------------
def test_eos_stops_and_is_excluded(runner, alone, reference, eos_token):
    stopping = [(p, n) for p, n in MIXED if reference.greedy(p, n, {eos_token})[1] == "stop"]
    assert stopping, "no MIXED prompt reaches eos within max_len"
    for prompt, max_len in stopping:
        got = alone(Request(prompt=prompt, temperature=0, max_tokens=max_len))
        unstopped, _ = reference.greedy(prompt, max_len)
        assert got.finish_reason == "stop"
        assert eos_token not in got.output_ids
        assert len(got.output_ids) < max_len
        assert unstopped[len(got.output_ids)] == eos_token       # it stopped exactly there
        assert got.output_ids == unstopped[:len(got.output_ids)]


def test_stop_tokens_and_max_len(runner, alone, reference, eos_token):
    # a prompt whose 20 greedy tokens have no eos
    prompt = next(p for p in (make_prompt(21, seed) for seed in range(10, 40))
                  if len(reference.greedy(p, 20, {eos_token})[0]) == 20)
    free, _ = reference.greedy(prompt, 20, {eos_token})
    j = next(j for j in range(2, len(free)) if free[j] not in free[:j])
    got = alone(Request(prompt=prompt, temperature=0, max_tokens=20, stop_tokens=[free[j]]))
    assert (got.output_ids, got.finish_reason) == (free[:j], "stop")
    first = alone(Request(prompt=prompt, temperature=0, max_tokens=20, stop_tokens=[free[0]]))
    assert (first.output_ids, first.finish_reason, str(first)) == ([], "stop", "")
    for max_len in (1, j):
        got = alone(Request(prompt=prompt, temperature=0, max_tokens=max_len))
        assert (got.output_ids, got.finish_reason) == (free[:max_len], "length")


# ---- bad requests ---------------------------------------------------------------------------
BAD_FIELDS = [
    ("prompt", ""), ("prompt", []), ("prompt", [3, -1]), ("prompt", [3.0]), ("prompt", [True]),
    ("prompt", None), ("prompt", 5), ("prompt", np.zeros((2, 2), np.int32)),
    ("temperature", -0.5), ("temperature", float("nan")), ("temperature", float("inf")),
    ("temperature", True), ("temperature", "1"),
    ("top_p", 0), ("top_p", 1.5), ("top_p", float("nan")), ("top_p", False),
    ("seed", -1), ("seed", 2**32), ("seed", 1.5), ("seed", True),
    ("max_tokens", 0), ("max_tokens", -2), ("max_tokens", 2.0), ("max_tokens", None),
    ("top_k", -1), ("top_k", 1.5),
    ("stop_tokens", 5), ("stop_tokens", "ab"), ("stop_tokens", [-1]), ("stop_tokens", [1.5]),
    ("stream", 1), ("logprobs", "yes"), ("echo", None),
    ("request_id", 7), ("request_id", b"id"),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS)
def test_bad_request_field_names_it(field, value):
    fields = {"prompt": [5, 6]} if field != "prompt" else {}
    with pytest.raises(RequestError) as caught:
        Request(**fields, **{field: value})
    assert caught.value.field == field


def test_good_request_fields_are_normalised():
    request = Request(prompt=np.array([5, 6]), temperature=np.float32(0.5), seed=np.uint32(9),
                      max_tokens=np.int64(4), stop_tokens=np.array([2]))
    assert request.prompt == (5, 6) and request.stop_tokens == (2,)
    assert type(request.temperature) is float and type(request.seed) is int
    assert type(request.max_tokens) is int


def test_bad_requests_fail_alone(runner, alone, config):
    good = [Request(prompt=make_prompt(n, 40 + n), temperature=t, seed=n, max_tokens=m,
                    request_id=f"ok{n}") for n, t, m in ((4, 0.0, 9), (19, 1.0, 14), (30, 0.0, 7))]
    too_long = Request(prompt=make_prompt(100, 1), max_tokens=config.sequence_len - 99,
                       request_id="too_long")
    bad_id = Request(prompt=[5, config.vocab_size, 6], request_id="bad_vocab")
    gen = new_generator(runner)
    results = [gen.send(good[:2])]
    assert results[0].request_id == "ok4"                       # ok19 is still in flight
    results += run_all(gen, [too_long, "not a request", bad_id, {"prompt": "x"}, good[2]])
    done = by_id(results)
    errors = {k: v for k, v in done.items() if v.finish_reason == "error"}
    assert len(errors) == 4 and len(done) == 7
    assert "sequence_len" in errors["too_long"].error
    assert "vocabulary" in errors["bad_vocab"].error
    assert str(config.vocab_size) in errors["bad_vocab"].error
    wrong_type = sorted(v.error for k, v in errors.items() if k not in ("too_long", "bad_vocab"))
    assert wrong_type == ["expected a Request, got dict", "expected a Request, got str"]
    assert all(v.output_ids == [] and v == "" for v in errors.values())
    for r in good:
        assert done[r.request_id].finish_reason != "error"
        assert done[r.request_id].output_ids == alone(r).output_ids
    (after,) = run_all(gen, good[1])                            # still serving
    assert after.output_ids == alone(good[1]).output_ids


def test_duplicate_request_id_in_flight_is_refused(runner, alone):
    first = Request(prompt=make_prompt(9, 50), temperature=0, max_tokens=12, request_id="dup")
    second = Request(prompt=make_prompt(5, 51), temperature=0, max_tokens=3, request_id="dup")
    gen = new_generator(runner)
    results = run_all(gen, [first, second])
    assert [r.finish_reason for r in results] == ["error", alone(first).finish_reason]
    assert "already in flight" in results[0].error and results[1].finish_reason != "error"
    assert results[1].output_ids == alone(first).output_ids
    (again,) = run_all(gen, second)                      # the id is free once it finished
    assert again.output_ids == alone(second).output_ids


# ---- streaming ------------------------------------------------------------------------------
def test_streaming_order_tokens_and_text(runner, alone, eos_token, reference):
    stopping = next((p, n) for p, n in MIXED
                    if reference.greedy(p, n, {eos_token})[1] == "stop"
                    and reference.greedy(p, n, {eos_token})[0])
    requests = [
        Request(prompt=make_prompt(25, 3), temperature=1.0, seed=5, max_tokens=30, stream=True,
                logprobs=True, request_id="a"),
        Request(prompt=make_prompt(6, 4), temperature=0.8, seed=6, max_tokens=22, stream=True,
                request_id="b"),
        Request(prompt=stopping[0], temperature=0, max_tokens=stopping[1], stream=True,
                request_id="c"),
        Request(prompt=make_prompt(9, 8), temperature=0, max_tokens=15, request_id="quiet"),
        Request(prompt="caf\u00e9 \u00fcber", temperature=1.5, seed=2, max_tokens=26, stream=True,
                request_id="text"),
    ]
    results = run_all(new_generator(runner), requests)
    done = by_id(results)
    assert done["c"].finish_reason == "stop"
    held_back = 0
    for r in requests:
        positions = [i for i, e in enumerate(results)
                     if isinstance(e, TokenEvent) and e.request_id == r.request_id]
        events = [results[i] for i in positions]
        completion = done[r.request_id]
        assert completion.output_ids == alone(dataclasses.replace(r, stream=False)).output_ids
        if not r.stream:
            assert events == []
            continue
        assert max(positions) < next(i for i, e in enumerate(results) if e is completion)
        assert [e.index for e in events] == list(range(len(completion.output_ids)))
        assert [e.token_id for e in events] == completion.output_ids
        assert "".join(e.text for e in events) == completion.text == str(completion)
        if r.logprobs:
            assert [e.logprob for e in events] == completion.logprobs
        held_back += sum(e.text == "" for e in events)
    assert held_back > 0    # some tokens ended mid-character (their text came with a later one)


def ends_mid_character(request: Request, alone) -> tuple[Request, Request]:
    """Streaming variants of `request` whose output ends on a UTF-8 lead byte: cut by max_len,
    and stopped by a stop token right after it."""
    out = alone(request).output_ids
    lead = lambda t: 0xC2 <= t - NUM_SPECIAL <= 0xF4
    j = next(j for j in range(1, len(out) - 1) if lead(out[j]) and out[j + 1] not in out[:j + 1])
    return (dataclasses.replace(request, max_tokens=j + 1, stream=True, request_id="cut"),
            dataclasses.replace(request, stop_tokens=[out[j + 1]], stream=True, request_id="stop"))


def test_streaming_text_is_complete_when_ending_mid_character(runner, alone):
    base = next(r for r in (Request(prompt=make_prompt(7, seed), temperature=1.0, seed=seed,
                                    max_tokens=40) for seed in range(20))
                if any(0xC2 <= t - NUM_SPECIAL <= 0xF4 for t in alone(r).output_ids[1:-1]))
    requests = ends_mid_character(base, alone)
    results = run_all(new_generator(runner), list(requests))
    done = by_id(results)
    assert (done["cut"].finish_reason, done["stop"].finish_reason) == ("length", "stop")
    for r in requests:
        completion = done[r.request_id]
        assert completion.text.endswith("\ufffd")         # an unfinished character at the end
        events = [e for e in results if isinstance(e, TokenEvent) and e.request_id == r.request_id]
        assert [e.token_id for e in events] == completion.output_ids
        assert "".join(e.text for e in events) == completion.text


# ---- reference-style use --------------------------------------------------------------------
# runner1 (one slot, ModelRunner's own random init) compiles a runner of its own: slow. The same
# calls on `runner` run by default; the own-init path also builds test_prefix_cache's engine.
@pytest.mark.parametrize("runner_name", [pytest.param("runner1", marks=pytest.mark.slow), "runner"])
def test_sample_from_model_repeatedly(request, runner_name, reference, eos_token):
    runner = request.getfixturevalue(runner_name)
    gen = runner.run()
    calls = [("Hello", 6, 0.0), ("The quick brown fox jumps", 10, 0.8), ("a", 3, 1.3)]
    for prompt, max_len, temperature in calls:
        text = sample_from_model(gen, prompt, max_len, temperature)
        assert isinstance(text, str)
        same = Request(prompt=prompt, temperature=temperature, nucleus_p=1.0, rng_seed=42,
                       max_len=max_len)
        (expected,) = run_all(new_generator(runner), same)
        assert text == expected.text and text.output_ids == expected.output_ids
        if temperature == 0:
            ids, _ = reference.greedy(ByteTokenizer().encode(prompt), max_len, {eos_token})
            assert text.output_ids == ids and text == ByteTokenizer().decode(ids)


def test_completion_to_dict(runner, alone):
    got = alone(Request(prompt="hi", temperature=0, max_tokens=3, logprobs=True, request_id="d"))
    d = got.to_dict()
    assert d["request_id"] == "d" and d["prompt_ids"] == ByteTokenizer().encode("hi")
    assert d["output_ids"] == got.output_ids and d["text"] == str(got)
    assert d["logprobs"] == got.logprobs and "error" not in d and "prompt_logprobs" not in d


# ---- runtime config and the engine ----------------------------------------------------------
def test_runner_exposes_its_engine_and_resolved_runtime(runner):
    assert isinstance(runner.engine, Engine) and runner.engine.batch_size == runner.batch_size == 4
    runtime = runner.runtime
    assert (runtime.prefill_buckets, runtime.local_mesh_config, runtime.bs_per_device) == (PAD_SIZES, (2, 2), 1)
    assert runtime.activation_dtype == "float32"      # make_runner's runtime
    assert runner.pad_sizes == runner.engine.prefill_buckets == PAD_SIZES


def test_runtime_config_drives_the_runner(config, host_params):
    runtime = F32.replace(local_mesh_config=(1, 2), bs_per_device=1.5, prefill_buckets=(8, 4))
    ir = InferenceRunner(ModelRunner(config), runtime=runtime, tokenizer=ByteTokenizer(),
                         params=host_params, precompile=False)
    ir.initialize()
    assert ir.batch_size == 3 and ir.pad_sizes == (4, 8) and ir.runner.mesh.devices.shape == (1, 2)
    assert ir.engine.prefix_capacities == (4, 8, 16, 32, 64, 128)
    assert ir.params["language_model/in_out_embed"]["embeddings"].dtype == np.float32
    bad = InferenceRunner(ModelRunner(config), runtime=runtime, pad_sizes=(8, 0),
                          tokenizer=ByteTokenizer(), params=host_params, precompile=False)
    with pytest.raises(ValueError, match="pad_sizes"):
        bad.initialize()


# ---- cancel and stop strings through the real engine (scheduler level) ----------------------
def test_cancel_frees_slots_for_what_comes_next(runner, alone):
    from grok.serving.requests import Cancel

    requests = [Request(prompt=make_prompt(6 + i, 70 + i), temperature=0, max_tokens=40,
                        stream=True, request_id=f"c{i}") for i in range(runner.batch_size + 1)]
    gen = new_generator(runner)
    out, results = gen.send(requests), []
    while not (isinstance(out, TokenEvent) and out.request_id == "c0" and out.index >= 2):
        results.append(out)
        out = next(gen)
    results.append(out)
    results.append(gen.send(Cancel(requests[-1].request_id)))        # queued: ends at once
    results += run_all(gen, Cancel("c0"))                              # running: next step
    done = by_id(results)
    assert (done["c0"].finish_reason, done[requests[-1].request_id].finish_reason) == (
        "cancelled", "cancelled")
    full = alone(dataclasses.replace(requests[0], stream=False)).output_ids
    assert 3 <= len(done["c0"].output_ids) < len(full)
    assert done["c0"].output_ids == full[:len(done["c0"].output_ids)]
    for r in requests[1:-1]:
        assert done[r.request_id].output_ids == alone(dataclasses.replace(r, stream=False)).output_ids
    after = Request(prompt=[runner.config.pad_token, 5], temperature=0, max_tokens=6)
    (again,) = run_all(gen, after)                       # a reused slot: no stale keys
    assert again.output_ids == alone(after).output_ids


def test_stop_string_through_the_model(runner, alone):
    def clean_window(request):   # (its text, where 2 whole characters follow each other)
        text = alone(request).text
        return text, next((i for i in range(2, len(text) - 2)
                           if "\ufffd" not in text[i:i + 2]), None)

    base, (text, at) = next((r, w) for r in (
        Request(prompt=make_prompt(9, seed), temperature=1.0, seed=seed, max_tokens=30,
                stop_tokens=[1]) for seed in range(80, 140))
        if (w := clean_window(r))[1] is not None)
    stop = text[at:at + 2]
    request = dataclasses.replace(base, stop=[stop], stream=True, logprobs=True, request_id="st")
    results = run_all(new_generator(runner), request)
    (done,) = by_id(results).values()
    events = [e for e in results if isinstance(e, TokenEvent)]
    assert (done.text, done.finish_reason, done.stop_reason) == (
        text[:text.index(stop)], "stop", stop)
    assert "".join(e.text for e in events) == done.text
    assert [e.top_logprobs for e in events] == done.top_logprobs

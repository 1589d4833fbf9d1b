"""Logit processing before sampling (grok.engine.logits_processing) and its batch invariance.

1. `process_logits` against a NumPy reference of each definition (logit_bias, repetition
   penalty over prompt and outputs, frequency and presence penalties over outputs, the
   packed mask, min_p) on fixed logits; the engine marks a slot's prompt tokens.
2. The tiny engine: the processed decode step with neutral rows gives the plain step's tokens
   and logprobs bit for bit; through the Scheduler, unconstrained requests co-batched with
   constrained and processed ones are identical to alone, a constrained request is identical
   whatever its neighbours, and its output follows its grammar.
One engine is compiled for the module.
"""

import json
import re

import jax
import jax.numpy as jnp
import llguidance.numpy as llg_numpy
import numpy as np
import pytest

from grok import checkpoint
from grok.engine.api import GREEDY, SampleParams
from grok.engine.engine import JaxEngine
from grok.engine.logits_processing import (DISALLOWED_LOGIT, LogitControls, MAX_LOGIT_BIAS,
                                           mask_words, neutral_controls, process_logits)
from grok.engine.runner import ModelRunner
from grok.serving.runner import InferenceRunner
from grok.serving.requests import Request
from grok.serving.results import Completion
from grok.serving.scheduler import Scheduler
from grok.tokenizer import ByteTokenizer
from tiny_model import F32, SEED, make_prompt, tiny_config

V = 100


def reference(logits, bias, counts, prompt, mask_bits, min_p, presence, frequency, repetition,
              temp):
    """The definitions, one row at a time in NumPy (float64, then compared loosely): the
    repetition penalty (vLLM's) counts the prompt's tokens and the outputs', presence and
    frequency penalties (OpenAI's) the outputs' only."""
    out = logits.astype(np.float64).copy()
    for t, b in bias.items():
        out[t] += b
    seen = counts > 0
    repeated = seen.copy()
    repeated[list(prompt)] = True
    out = np.where(repeated, np.where(out > 0, out / repetition, out * repetition), out)
    out = out - frequency * counts - presence * seen
    out = np.where(mask_bits, out, DISALLOWED_LOGIT)
    if min_p > 0 and temp > 0:
        p = np.exp((out - out.max()) / temp)
        out = np.where(p >= min_p * p.max(), out, DISALLOWED_LOGIT)
    return out


def pack(bits: np.ndarray) -> np.ndarray:
    """[V] bool -> [W] int32 (llguidance's layout)."""
    padded = np.zeros(mask_words(len(bits)) * 32, np.uint8)
    padded[:len(bits)] = bits
    return np.packbits(padded, bitorder="little").view(np.int32)


def test_process_logits_matches_numpy_reference():
    rng = np.random.default_rng(0)
    b = 4
    logits = rng.normal(0, 3, (b, V)).astype(np.float32)
    counts = rng.integers(0, 3, (b, V)) * (rng.random((b, V)) < 0.2)
    prompts = [set(rng.integers(0, V, 12).tolist()) for _ in range(b)]
    prompt_tokens = np.zeros((b, V), bool)
    for i, tokens in enumerate(prompts):
        prompt_tokens[i, list(tokens)] = True
    bits = rng.random((b, V)) < 0.7
    bits[:, 0] = True
    settings = [  # bias, min_p, presence, frequency, repetition, temperature
        ({3: 5.0, 7: -100.0}, 0.0, 0.5, 0.3, 1.3, 1.0),
        ({}, 0.1, 0.0, 0.0, 1.0, 0.7),
        ({11: 2.5}, 0.05, -0.5, 1.0, 0.8, 1.0),
        ({}, 0.3, 0.0, 0.0, 1.0, 0.0),          # greedy: min_p has no effect
    ]
    c = neutral_controls(b, V)
    controls = LogitControls(*(np.array(a) for a in c))
    for i, (bias, min_p, pres, freq, rep, _) in enumerate(settings):
        for j, (t, v) in enumerate(bias.items()):
            controls.bias_ids[i, j], controls.bias_values[i, j] = t, v
        controls.allowed[i] = pack(bits[i])
        controls.min_p[i], controls.presence_penalty[i] = min_p, pres
        controls.frequency_penalty[i], controls.repetition_penalty[i] = freq, rep
        controls.processed[i] = True
    temps = np.array([s[5] for s in settings], np.float32)
    got = np.asarray(jax.jit(process_logits)(logits, controls, counts.astype(np.int32),
                                             prompt_tokens, temps))
    for i, (bias, min_p, pres, freq, rep, temp) in enumerate(settings):
        want = reference(logits[i], bias, counts[i], prompts[i], bits[i], min_p, pres, freq,
                         rep, temp)
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-4)
    # the packed mask means what llguidance means by it
    expect = logits.copy()
    llg_numpy.apply_token_bitmask_inplace(expect, np.asarray(controls.allowed))
    assert np.array_equal(np.isneginf(expect), ~bits)


def test_neutral_rows_are_bit_identical():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (3, V)).astype(np.float32)
    controls = neutral_controls(3, V)._replace(processed=np.array([False, True, False]),
                                               min_p=np.array([0.5, 0.5, 0.5], np.float32))
    got = np.asarray(process_logits(logits, controls, np.ones((3, V), np.int32),
                                    np.ones((3, V), bool), np.ones(3, np.float32)))
    assert got[[0, 2]].tobytes() == logits[[0, 2]].tobytes()
    assert (got[1] <= DISALLOWED_LOGIT).any()


# ---- the engine ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine():
    params = checkpoint.random_params(tiny_config(), SEED)
    runner = InferenceRunner(ModelRunner(tiny_config(), bs_per_device=4, rng_seed=SEED, runtime=F32),
                             local_mesh_config=(1, 1), pad_sizes=(16,),
                             tokenizer=ByteTokenizer(), params=params, precompile=False)
    runner.initialize()
    model = runner.runner
    return JaxEngine(runner.config, runner.runtime, model.mesh, model.forward, runner.params,
                     model.param_shardings, runner.batch_size)


def test_processed_step_with_neutral_rows_equals_plain_step(engine):
    sampled = SampleParams(temperature=0.9, top_p=0.9, seed=3)
    runs = []
    for processed in (False, True):
        state = engine.init_state()
        for slot, sample in ((0, GREEDY), (2, sampled)):
            prefix, result = engine.prefill(make_prompt(9 + slot, slot), sample)
            state = engine.insert(prefix, result.arm, state, slot)
        outs = []
        controls = neutral_controls(engine.batch_size, engine.vocab_size)
        for _ in range(6):
            state, handle = (engine.generate(state, controls=controls) if processed
                             else engine.generate(state))
            out = engine.read(handle)
            outs.append((out.token_ids[[0, 2]].tobytes(), out.logprobs[[0, 2]].tobytes()))
        runs.append(outs)
    assert runs[0] == runs[1]


def test_mark_prompt_marks_the_slots_prompt_and_insert_clears_it(engine):
    state = engine.init_state()
    prompt = make_prompt(9, 7)
    for slot in (1, 3):
        prefix, result = engine.prefill(prompt, GREEDY)
        state = engine.insert(prefix, result.arm, state, slot)
    state = engine.mark_prompt(state, 1, prompt)
    marked = np.asarray(state.prompt_tokens)
    assert set(np.flatnonzero(marked[1]).tolist()) == set(prompt)
    assert not marked[[0, 2, 3]].any()
    prefix, result = engine.prefill(prompt, GREEDY)
    state = engine.insert(prefix, result.arm, engine.release(state, 1), 1)
    assert not np.asarray(state.prompt_tokens).any()


def scheduler_run(engine, requests):
    scheduler = Scheduler(engine, ByteTokenizer())
    scheduler.submit(list(requests))
    events = []
    for _ in range(1000):
        if scheduler.idle():
            break
        events += scheduler.step()
    return {e.request_id: e for e in events if isinstance(e, Completion)}


def make(i, seed=0, temperature=1.0, max_tokens=24, **kw):
    # positional temperature, top_p, seed, max_tokens (names differ across vocabularies)
    return Request(make_prompt(6 + i, 100 + i), temperature, 1.0, seed, max_tokens,
                   request_id=f"q{i}", **kw)


def test_batch_invariance_through_the_scheduler(engine):
    plain = [make(0, seed=1), make(1, temperature=0.0)]
    constrained = make(2, seed=5, regex=r"[a-f]{3,6}-[0-9]{2}")
    alone = scheduler_run(engine, plain)
    alone_c = scheduler_run(engine, [constrained])
    together = scheduler_run(engine, plain + [constrained,
                                              make(3, seed=2, min_p=0.2, logit_bias={40: 3})])
    for r in plain:
        assert together[r.request_id].output_ids == alone[r.request_id].output_ids
        assert together[r.request_id].logprobs == alone[r.request_id].logprobs
    assert together["q2"].output_ids == alone_c["q2"].output_ids
    c = together["q2"]
    assert re.fullmatch(r"[a-f]{3,6}-[0-9]{2}", together["q2"].text), (c.output_ids, c.finish_reason, c.error)
    assert together["q2"].finish_reason == "stop"


def test_json_outputs_on_the_model_validate(engine):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "n": {"type": "integer"}},
              "required": ["ok", "n"], "additionalProperties": False}
    requests = [make(i % 4, seed=i, max_tokens=60, json_schema=schema) for i in range(4)]
    for i, r in enumerate(requests):
        requests[i] = Request(r.prompt, 1.0, 1.0, i, 60, request_id=f"j{i}", json_schema=schema)
    done = scheduler_run(engine, requests)
    for out in done.values():
        if out.finish_reason == "stop":
            value = json.loads(out.text)
            assert isinstance(value["ok"], bool) and isinstance(value["n"], int)
        else:
            assert out.finish_reason == "length", out.error
    assert any(out.finish_reason == "stop" for out in done.values())


def test_logit_bias_forces_a_token(engine):
    done = scheduler_run(engine, [make(0, temperature=0.0, max_tokens=5,
                                       logit_bias={ord("Z") + 3: 100})])
    assert done["q0"].text == "ZZZZZ"

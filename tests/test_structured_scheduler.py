"""Constrained and logit-processed requests in the Scheduler, on the fake engine (no JAX).

The fake engine picks its usual token when the step's mask allows it, else an allowed one, so
every constrained output must satisfy its grammar; unconstrained requests beside them must come
out exactly as alone; a multi-process follower replaying the leader's decisions derives the
same masks and outputs.
"""

import json
import re

import pytest

from fake_engine import FakeEngine
from grok.serving.decisions import decode, encode
from grok.serving.requests import Request
from grok.serving.results import Completion
from grok.serving.scheduler import Scheduler
from grok.tokenizer import ByteTokenizer

BYTES = ByteTokenizer()
EOS = 2
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                           "n": {"type": "integer", "minimum": 0,
                                                 "maximum": 999},
                                           "tag": {"enum": ["a", "b"]}},
          "required": ["ok", "n", "tag"], "additionalProperties": False}


def run(requests, engine=None, max_steps=2000):
    scheduler = Scheduler(engine or FakeEngine(batch_size=4), BYTES)
    scheduler.submit(list(requests))
    events = []
    for _ in range(max_steps):
        if scheduler.idle():
            return {e.request_id: e for e in events if isinstance(e, Completion)}, scheduler
        events += scheduler.step()
    raise AssertionError("the scheduler did not go idle")


def req(i, seed=None, max_tokens=100, **kw):
    """Request i (positional temperature, top_p, seed and max_tokens: their names differ
    between the reference's and OpenAI's vocabularies)."""
    return Request(BYTES.encode(f"prompt {i}: "), 1.0, 1.0, i if seed is None else seed,
                   max_tokens, request_id=f"r{i}", **kw)


@pytest.mark.parametrize("seed", range(20))
def test_json_schema_outputs_validate(seed):
    done, scheduler = run([req(seed, json_schema=SCHEMA)])
    out = done[f"r{seed}"]
    assert out.finish_reason == "stop", out
    value = json.loads(out.text)
    assert set(value) == {"ok", "n", "tag"} and isinstance(value["ok"], bool)
    assert 0 <= value["n"] <= 999 and value["tag"] in ("a", "b")
    assert scheduler.constrained_requests == 1


@pytest.mark.parametrize("seed", range(10))
def test_regex_choice_and_lark_outputs_match(seed):
    grammar = 'start: "(" NUM ("," NUM)* ")"\nNUM: /[0-9]{1,3}/\n'
    done, _ = run([req(0, regex=r"[a-c]{2,5}-[0-9]{3}", seed=seed),
                   req(1, choice=["yes", "no", "maybe"], seed=seed),
                   req(2, grammar=grammar, seed=seed)])
    assert re.fullmatch(r"[a-c]{2,5}-[0-9]{3}", done["r0"].text), done["r0"]
    assert done["r1"].text in ("yes", "no", "maybe")
    assert re.fullmatch(r"\([0-9]{1,3}(,[0-9]{1,3})*\)", done["r2"].text), done["r2"]
    assert {d.finish_reason for d in done.values()} <= {"stop", "length"}


def test_unconstrained_neighbours_unchanged():
    plain = [req(i) for i in range(3)]
    alone, _ = run(plain)
    together, _ = run(plain + [req(9, json_schema=SCHEMA), req(8, min_p=0.1)])
    for r in plain:
        assert together[r.request_id].output_ids == alone[r.request_id].output_ids


def test_constrained_request_same_whatever_neighbours():
    target = req(5, regex=r"[a-z]{3,8}")
    alone, _ = run([target])
    crowd, _ = run([req(1), req(2, choice=["x", "y"]), target, req(3, logit_bias={40: 5})])
    assert crowd["r5"].output_ids == alone["r5"].output_ids


def test_min_tokens_holds_back_eos():
    # a grammar that could end at once: min_tokens keeps EOS out until 4 tokens are out
    done, _ = run([req(0, regex=r"[0-9]{1,10}", min_tokens=4, max_tokens=12)])
    assert len(done["r0"].output_ids) >= 4


def test_max_tokens_ends_with_length():
    done, _ = run([req(0, regex=r"[a-z]{20}", max_tokens=5)])
    assert done["r0"].finish_reason == "length" and len(done["r0"].output_ids) == 5


def test_processed_rows_use_the_processed_step_only_while_running():
    engine = FakeEngine(batch_size=4)
    run([req(0), req(1, min_p=0.2)], engine)
    names = {name for name, _ in engine.calls}
    assert "generate_processed" in names and "slice_prefix" in names


def test_a_repetition_penalty_marks_the_whole_prompt():
    engine = FakeEngine(batch_size=4)
    done, _ = run([req(0), req(1, presence_penalty=0.5), req(2, repetition_penalty=1.2)], engine)
    marked = [args for name, args in engine.calls if name == "mark_prompt"]
    assert [tokens for _, tokens in marked] == [tuple(BYTES.encode("prompt 2: "))]
    assert all(done[f"r{i}"].finish_reason in ("stop", "length") for i in range(3))


def test_follower_replays_to_the_same_outputs():
    """Multi-host: a follower that replays the leader's published decisions builds the same
    grammars and masks from the same tokens, so its outputs equal the leader's."""
    requests = [req(0, json_schema=SCHEMA), req(1), req(2, regex=r"[0-9]{4}")]
    leader = Scheduler(FakeEngine(batch_size=4), BYTES)
    follower = Scheduler(FakeEngine(batch_size=4), BYTES)
    leader.submit(requests)
    mine, theirs = [], []
    for _ in range(500):
        if leader.idle():
            break
        decisions = leader._decide(mine)
        mine += leader.step(decode(encode(decisions)))
        theirs += follower.step(decode(encode(decisions)))
    texts = lambda events: {e.request_id: e.output_ids for e in events if isinstance(e, Completion)}
    assert texts(mine) == texts(theirs) and len(texts(mine)) == 3

"""The Scheduler (grok.serving.scheduler) against a fake engine (tests/fake_engine.py): no JAX
compilation, each test well under a second.

The fake's tokens depend only on a request's prompt, seed and position, so every request
must come out the same whatever its slot, its company and the interleaving.
"""

import copy
import pickle


from fake_engine import FailingTokenizer, FakeEngine, drain
from grok.serving.decisions import Decisions, decode, encode
from grok.serving.requests import Cancel, Request
from grok.serving.results import Completion, TokenEvent
from grok.serving.generator import serve
from grok.serving.scheduler import Scheduler
from grok.tokenizer import ByteTokenizer

BYTES = ByteTokenizer()
EOS = 2


def ids(text: str) -> list:
    return BYTES.encode(text)


def prompt(n: int, seed: int = 0) -> list:
    return [3 + (seed * 31 + i * 17) % 250 for i in range(n)]


def make(engine=None, tokenizer=BYTES, **kwargs) -> Scheduler:
    return Scheduler(engine or FakeEngine(), tokenizer, **kwargs)


def completions(events) -> dict:
    done = {e.request_id: e for e in events if isinstance(e, Completion)}
    assert len(done) == sum(isinstance(e, Completion) for e in events), "duplicate Completion"
    return done


def alone(request: Request, **engine_kwargs) -> Completion:
    scheduler = make(FakeEngine(**engine_kwargs))
    scheduler.submit(request)
    (done,) = completions(drain(scheduler)).values()
    return done


def all_slots_free(scheduler) -> bool:
    engine_free = all(s is None for s in scheduler.state["slots"])
    return engine_free and sorted(scheduler._free) == list(range(scheduler.engine.batch_size)) \
        and scheduler.num_running == 0 and scheduler.num_waiting == 0


# ---- admission, chunking, interleaving ------------------------------------------------------
def test_admission_order_and_slot_reuse():
    engine = FakeEngine(batch_size=2)
    scheduler = make(engine)
    requests = [Request(prompt=prompt(4, i), max_tokens=2 + i, request_id=f"r{i}") for i in range(4)]
    scheduler.submit(requests)
    assert (scheduler.num_waiting, scheduler.num_running) == (4, 0)
    scheduler.step()
    assert (scheduler.num_waiting, scheduler.num_running) == (2, 2)
    events = drain(scheduler)
    inserts = [detail for name, detail in engine.calls if name == "insert"]
    assert inserts == [0, 1, 0, 1]                       # first come, lowest free slot
    done = [e.request_id for e in events if isinstance(e, Completion)]
    assert done == ["r0", "r1", "r2", "r3"]
    for r in requests:
        assert len(completions(events)[r.request_id].output_ids) == r.max_tokens
    assert all_slots_free(scheduler)


def test_long_prompt_is_chunked_through_existing_prefix():
    engine = FakeEngine(buckets=(8, 16))
    scheduler = make(engine)
    long = Request(prompt=prompt(40), max_tokens=3, temperature=0)
    scheduler.submit(long)
    (done,) = completions(drain(scheduler)).values()
    assert [d for name, d in engine.calls if name == "prefill"] == [16, 16, 8]
    assert done.output_ids == alone(long, buckets=(64,)).output_ids   # same as one chunk
    assert done.prompt_ids == list(long.prompt)


def test_prefill_chunks_alternate_with_decode_steps():
    engine = FakeEngine(batch_size=3, buckets=(8, 16))
    scheduler = make(engine)
    streams = [Request(prompt=prompt(5, i), max_tokens=30, stream=True, request_id=f"s{i}")
               for i in range(2)]
    scheduler.submit(streams)
    for _ in range(3):
        scheduler.step()
    engine.calls.clear()
    scheduler.submit(Request(prompt=prompt(80, 9), max_tokens=5, request_id="long"))
    tokens_per_step = []
    for _ in range(6):
        events = scheduler.step()
        tokens_per_step.append(sum(isinstance(e, TokenEvent) for e in events))
    names = [name for name, _ in engine.calls]
    # 80 tokens = 5 chunks of 16, one per step, each followed by a decode step
    assert names == ["prefill", "generate"] * 4 + ["prefill", "insert", "generate", "generate"]
    assert tokens_per_step == [2] * 6                    # the streams never stall
    events = drain(scheduler)
    assert completions(events)["long"].output_ids == alone(Request(prompt=prompt(80, 9),
                                                                   max_tokens=5)).output_ids


def test_prefill_budget_and_batched_short_prompts():
    engine = FakeEngine(batch_size=4, buckets=(8, 16), batched=True)
    scheduler = make(engine, max_prefill_batch=4, prefill_budget=16)
    scheduler.submit(Request(prompt=prompt(3), max_tokens=20, request_id="running"))
    scheduler.step()
    engine.calls.clear()
    short = [Request(prompt=prompt(6, i), max_tokens=3, request_id=f"short{i}") for i in range(3)]
    scheduler.submit(short)
    scheduler.step()
    # 6 + 6 tokens fit the budget of 16 in one batched call; the third waits a step
    assert [c for c in engine.calls if c[0].startswith("prefill")] == [("prefill_batch", 2)]
    done = completions(drain(scheduler))
    for r in short:
        assert done[r.request_id].output_ids == alone(r).output_ids


# ---- stopping -------------------------------------------------------------------------------
def test_eos_and_stop_tokens():
    p = tuple(prompt(6))
    engine = FakeEngine(script={p: [10, 11, EOS, 12]})
    scheduler = make(engine)
    scheduler.submit([Request(prompt=p, request_id="eos"),
                      Request(prompt=p, stop_tokens=[11], request_id="tok"),
                      Request(prompt=p, stop_tokens=[10], request_id="first")])
    done = completions(drain(scheduler))
    assert (done["eos"].output_ids, done["eos"].finish_reason, done["eos"].stop_reason) \
        == ([10, 11], "stop", None)
    assert (done["tok"].output_ids, done["tok"].stop_reason) == ([10], 11)
    assert (done["first"].output_ids, str(done["first"])) == ([], "")
    assert all_slots_free(scheduler)


def scripted(text_out: str, **fields):
    p = tuple(ids("Q:"))
    engine = FakeEngine(script={p: ids(text_out) + [EOS]})
    return engine, Request(prompt=p, stream=True, request_id="x", **fields)


def run_one(engine, request, tokenizer=BYTES):
    scheduler = make(engine, tokenizer)
    scheduler.submit(request)
    events = drain(scheduler)
    done = completions(events)[request.request_id]
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert events[-1] is done
    assert "".join(e.text for e in tokens) == done.text == str(done)
    assert [e.token_id for e in tokens] == done.output_ids
    assert [e.index for e in tokens] == list(range(len(done.output_ids)))
    return done, tokens


def test_stop_string_split_over_three_tokens():
    engine, request = scripted("Hello END there", stop=["END"])
    done, tokens = run_one(engine, request)
    assert (done.text, done.finish_reason, done.stop_reason) == ("Hello ", "stop", "END")
    assert done.output_ids == ids("Hello END")            # the stop string's tokens are kept
    # "E" and "N" were held back (could start "END"), then dropped with it
    assert [e.text for e in tokens[-3:]] == ["", "", ""]


def test_stop_string_that_never_completes_is_released():
    engine, request = scripted("an ENd", stop=["END", "xyz"], max_tokens=50)
    done, tokens = run_one(engine, request)
    assert (done.text, done.finish_reason, done.stop_reason) == ("an ENd", "stop", None)
    texts = [e.text for e in tokens]
    assert texts[:3] == ["a", "n", " "] and texts[3:] == ["", "", "ENd"]


def test_stop_string_at_max_len_and_multibyte_characters():
    engine, request = scripted("caf\u00e9 \u20ac!", stop=["\u20ac"], max_tokens=4)
    done, tokens = run_one(engine, request)
    assert (done.text, done.finish_reason) == ("caf\ufffd", "length")   # cut inside "é"
    engine, request = scripted("caf\u00e9 \u20ac!", stop=["\u20ac"])
    done, tokens = run_one(engine, request)
    assert (done.text, done.stop_reason) == ("caf\u00e9 ", "\u20ac")
    assert [e.text for e in tokens[3:5]] == ["", "\u00e9"]       # held until complete


def test_first_stop_string_wins():
    engine, request = scripted("abcdef", stop=["cde", "bcx", "ef"])
    done, _ = run_one(engine, request)
    assert (done.text, done.stop_reason) == ("ab", "cde")


# ---- cancel ---------------------------------------------------------------------------------
def test_cancel_queued_running_and_unknown():
    engine = FakeEngine(batch_size=1)
    scheduler = make(engine)
    scheduler.submit([Request(prompt=prompt(4), max_tokens=50, stream=True, request_id="run"),
                      Request(prompt=prompt(5), max_tokens=5, request_id="queued")])
    streamed = [e for _ in range(4) for e in scheduler.step() if isinstance(e, TokenEvent)]
    assert scheduler.cancel("nobody") == []
    (queued,) = scheduler.cancel("queued")
    assert (queued.request_id, queued.finish_reason, queued.output_ids) == (
        "queued", "cancelled", [])
    assert scheduler.cancel("run") == []                  # ends at the next step
    events = scheduler.step()
    done = completions(events)["run"]
    assert done.finish_reason == "cancelled"
    assert done.output_ids == [e.token_id for e in streamed] + [
        e.token_id for e in events if isinstance(e, TokenEvent)]
    assert ("release", 0) in engine.calls
    drain(scheduler)
    assert all_slots_free(scheduler) and scheduler.cancel("run") == []


def test_cancel_while_prefilling_frees_the_slot():
    engine = FakeEngine(batch_size=2, buckets=(8,))
    scheduler = make(engine)
    scheduler.submit(Request(prompt=prompt(3), max_tokens=40, request_id="a"))
    scheduler.step()
    scheduler.submit(Request(prompt=prompt(60), max_tokens=4, request_id="long"))
    scheduler.step()
    assert scheduler.num_running == 2
    scheduler.cancel("long")
    (done,) = [e for e in scheduler.step() if isinstance(e, Completion)]
    assert (done.request_id, done.finish_reason) == ("long", "cancelled")
    assert ("insert", 1) not in engine.calls and 1 in scheduler._free
    scheduler.cancel("a")
    drain(scheduler)
    assert all_slots_free(scheduler)


def test_generator_protocol_with_cancel():
    scheduler = make(FakeEngine(batch_size=2))
    gen = serve(scheduler)
    assert next(gen) is None
    first = gen.send([Request(prompt=prompt(3), max_tokens=100, stream=True, request_id="a")])
    assert isinstance(first, TokenEvent) and first.index == 0
    out = gen.send(Cancel("a"))
    while not isinstance(out, Completion):
        out = next(gen)
    assert out.finish_reason == "cancelled" and len(out.output_ids) < 100
    assert next(gen) is None
    (again,) = [gen.send(Request(prompt=prompt(3), max_tokens=2))]
    assert isinstance(again, Completion) and len(again.output_ids) == 2


# ---- errors stay with their request ---------------------------------------------------------
def test_fault_in_prefill_and_in_token_handling_ends_that_request_alone():
    bad_token = 200
    engine = FakeEngine(batch_size=3, fail_prefill=250)
    good = [Request(prompt=prompt(n, n), max_tokens=6, stream=True, request_id=f"ok{n}")
            for n in (3, 20, 7)]
    p_decode = tuple(ids("zz"))
    engine.script[p_decode] = [70, 71, bad_token, 72]
    requests = [good[0], Request(prompt=[5, 250, 6], request_id="bad_prefill"), good[1],
                Request(prompt=p_decode, max_tokens=8, request_id="bad_decode"), good[2]]
    scheduler = make(engine, FailingTokenizer(BYTES, bad_token))
    scheduler.submit(requests)
    done = completions(drain(scheduler))
    assert done["bad_prefill"].finish_reason == "error"
    assert "injected prefill failure" in done["bad_prefill"].error
    assert done["bad_decode"].finish_reason == "error"
    assert "injected decode failure" in done["bad_decode"].error
    assert done["bad_decode"].output_ids == [70, 71, bad_token]
    for r in good:
        assert done[r.request_id].output_ids == alone(r).output_ids
    assert all_slots_free(scheduler)


def test_bad_requests_among_good_ones():
    engine = FakeEngine(batch_size=2, sequence_len=64)
    mutated = Request(prompt=prompt(4), max_tokens=5, request_id="mutated")
    object.__setattr__(mutated, "seed", -1)
    stops_none = Request(prompt=prompt(4), max_tokens=5, request_id="stops_none")
    object.__setattr__(stops_none, "stop_tokens", None)

    class Spy:  # refuses to tokenize: the long text must be refused before
        vocab_size = BYTES.vocab_size
        encode_calls = []

        def encode(self, text):
            self.encode_calls.append(len(text))
            return BYTES.encode(text)

        def decode(self, ids):
            return BYTES.decode(ids)

        def min_tokens(self, text):
            return BYTES.min_tokens(text)

    good = [Request(prompt=prompt(5, i), temperature=0.5, seed=i, max_tokens=5,
                    request_id=f"good{i}") for i in range(3)]
    bad = ["not a request", {"prompt": "x"}, mutated, stops_none,
           Request(prompt=prompt(4), top_k=10**6, max_tokens=5, request_id="top_k"),
           Request(prompt=[5, 259, 6], max_tokens=5, request_id="vocab"),
           Request(prompt=[0, 0, 0], max_tokens=5, request_id="pad_only"),
           Request(prompt="x" * 100_000, max_tokens=4, request_id="long_text"),
           Request(prompt=prompt(60), max_tokens=10, request_id="too_long"),
           Request(prompt=prompt(4), max_tokens=64, request_id="no_room"),
           Request(prompt=prompt(4), request_id="good0")]   # duplicate of an id in flight
    spy = Spy()
    scheduler = make(engine, spy)
    events = scheduler.submit([good[0], *bad[:5], good[1], *bad[5:], good[2]])
    events += drain(scheduler)
    completions_ = [e for e in events if isinstance(e, Completion)]
    errors = [e for e in completions_ if e.finish_reason == "error"]
    assert len(errors) == len(bad) and len(completions_) == len(bad) + len(good)
    messages = {e.request_id: e.error for e in errors}
    assert "seed" in messages["mutated"] and "stop_tokens" in messages["stops_none"]
    assert "top_k" in messages["top_k"] and "vocabulary" in messages["vocab"]
    assert "pad" in messages["pad_only"] and messages["pad_only"].startswith("prompt ")
    assert "too long" in messages["long_text"] and 100_000 not in spy.encode_calls
    assert "sequence_len" in messages["too_long"] and "sequence_len" in messages["no_room"]
    assert "already in flight" in messages["good0"]
    by_id = {e.request_id: e for e in completions_ if e.finish_reason != "error"}
    for r in good:
        assert by_id[r.request_id].output_ids == alone(r, sequence_len=64).output_ids
    assert all_slots_free(scheduler)


# ---- ids, results ---------------------------------------------------------------------------
def test_automatic_ids_never_collide():
    scheduler = make(FakeEngine(batch_size=4))
    anonymous = Request(prompt=prompt(3), max_tokens=3)
    scheduler.submit([anonymous, anonymous])
    auto = list(scheduler._waiting)
    assert len(set(auto)) == 2
    (dup,) = scheduler.submit(Request(prompt=prompt(3), request_id=auto[0]))
    assert "already in flight" in dup.error
    scheduler.submit([Request(prompt=prompt(3), max_tokens=3, request_id=f"req-{i}")
                      for i in range(3)])
    done = completions(drain(scheduler))
    assert len(done) == 5 and all(d.finish_reason == "length" for d in done.values())


def test_completion_pickles_and_deep_copies():
    scheduler = make()
    scheduler.submit(Request(prompt=prompt(4), max_tokens=3, logprobs=True, echo=True,
                             request_id="p"))
    (done,) = completions(drain(scheduler)).values()
    assert done.prompt_logprobs[0] is None and len(done.prompt_logprobs) == 4
    for copied in (pickle.loads(pickle.dumps(done)), copy.deepcopy(done), copy.copy(done),
                   pickle.loads(pickle.dumps(done, protocol=0))):
        assert type(copied) is Completion and copied == done and copied.text == done.text
        assert copied.fields() == done.fields()


def test_decisions_replay_gives_identical_device_calls():
    """A follower replaying the leader's published decisions makes the same engine calls."""

    class Log:
        def __init__(self):
            self.published = []

        def publish(self, decisions):
            self.published.append(encode(decisions))

    log = Log()
    leader_engine, follower_engine = FakeEngine(batch_size=2), FakeEngine(batch_size=2)
    leader = make(leader_engine, log=log)
    follower = make(follower_engine)
    leader.submit([Request(prompt="multi", max_tokens=9, stop=["zz"], request_id="a"),
                   Request(prompt=prompt(30), max_tokens=4, request_id="b"),
                   Request(prompt=prompt(6), max_tokens=30, request_id="c")])
    for i in range(6):
        leader.step()
    leader.cancel("c")
    drain(leader)
    for payload in log.published:
        follower.step(decode(payload))
    assert follower_engine.calls == leader_engine.calls
    assert decode(encode(Decisions([], ["x"]))) == Decisions([], ["x"])

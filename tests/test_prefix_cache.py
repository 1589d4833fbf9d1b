"""The prefix cache (grok.serving.prefix_cache) and its use by the Scheduler.

Host-level tests run on the fake engine (tests/fake_engine.py: a Prefix is its tuple of
token ids, so a wrong slice or a wrong continuation changes the outputs); the last ones run
the tiny random model (module-scoped, compiled once) with and without the cache.
"""

import random

import numpy as np
import pytest

from fake_engine import FakeEngine, FakePrefix, drain
from grok.runtime_config import RuntimeConfig
from grok.serving.decisions import Decisions
from grok.serving.prefix_cache import BLOCK_TOKENS, PrefixCache
from grok.serving.requests import Cancel, Request
from grok.serving.results import Completion
from grok.serving.scheduler import Scheduler
from grok.tokenizer import ByteTokenizer

BYTES = ByteTokenizer()


def ids(n: int, seed: int) -> list:
    rng = random.Random(seed)
    return [rng.randrange(3, 259) for _ in range(n)]


def fake_slice(prefix, length):
    return FakePrefix(prefix.tokens[:length])


def cache_with(budget: int, *prompts) -> PrefixCache:
    cache = PrefixCache(budget, fake_slice)
    for p in prompts:
        assert cache.insert(p, FakePrefix(tuple(p)), FakePrefix(tuple(p)).capacity)
    return cache


def outputs(events) -> dict:
    return {e.request_id: (e.output_ids, e.finish_reason, e.error)
            for e in events if isinstance(e, Completion)}


def prefilled_tokens(engine) -> int:
    return sum(n for name, n in engine.calls if name == "prefill")


# ---- the cache alone --------------------------------------------------------------------------
def test_longest_hit_mid_block_capped_and_exact():
    a, b = ids(40, 1), ids(20, 1) + ids(30, 2)            # b shares 20 ids with a
    cache = cache_with(1000, a, b)
    probe = a[:37] + ids(5, 3)                             # 37 = 2 blocks + 5: mid-block
    hit = cache.acquire(probe)
    assert (hit.length, hit.prefix.tokens) == (37, tuple(a[:37]))
    assert cache.acquire(a).length == len(a) - 1           # one token is always prefilled
    whole = cache.acquire(a + [5, 6])
    assert whole.length == 40 and whole.prefix.tokens == tuple(a)   # the entry itself
    assert cache.acquire(b[:25] + [7]).prefix.tokens == tuple(b[:25])
    assert cache.acquire(ids(40, 9)) is None               # nothing shared
    assert cache.acquire(a[:BLOCK_TOKENS - 1] + [1] * 20) is None   # less than one block
    assert not cache.insert(a[:BLOCK_TOKENS - 1], FakePrefix(()), 8)  # too short to find


def test_lru_eviction_never_takes_a_pinned_entry():
    prompts = [ids(30, i) for i in range(4)]               # capacity 32 each
    cache = cache_with(96, *prompts[:3])
    assert cache.used_tokens == 96
    pinned = cache.acquire(prompts[0] + [1])               # 0: pinned, and most recent
    cache.acquire(prompts[1] + [1])
    cache.release(cache.acquire(prompts[1] + [2]))         # 1 pinned once, 2 is LRU
    assert cache.insert(prompts[3], FakePrefix(tuple(prompts[3])), 32)
    assert cache.acquire(prompts[2] + [1]) is None          # evicted
    assert cache.evictions == 1 and cache.used_tokens == 96
    assert not cache.insert(ids(60, 7), FakePrefix(()), 64)  # pinned 0 and 1 leave no room
    assert cache.acquire(prompts[0] + [1]).length == 30
    cache.release(pinned)
    assert not cache.insert(ids(200, 8), FakePrefix(()), 256)  # more than the whole budget
    assert cache.used_tokens == 96


def test_a_longer_prompt_supersedes_its_prefix_and_duplicates_are_kept_once():
    first = ids(40, 1)
    cache = cache_with(1000, first)
    assert not cache.insert(first, FakePrefix(tuple(first)), 64)   # already there
    longer = first + ids(30, 2)
    assert cache.insert(longer, FakePrefix(tuple(longer)), 128)
    assert len(cache) == 1 and cache.used_tokens == 128


def test_an_oversized_prefix_is_compacted_before_it_is_kept():
    sliced = []
    cache = PrefixCache(100, lambda p, n: sliced.append(n) or fake_slice(p, n),
                        capacities=(16, 32, 64, 128))
    a, b = ids(40, 1), ids(20, 2)
    assert cache.insert(a, FakePrefix(tuple(a)), 128)     # a continued prefill's growth
    assert cache.insert(b, FakePrefix(tuple(b)), 32)      # already the smallest capacity
    assert (cache.used_tokens, sliced) == (96, [40])
    assert cache.acquire(a + [1]).prefix == FakePrefix(tuple(a))


def test_budget_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="prefix_cache_tokens"):
        PrefixCache(-1, fake_slice)
    with pytest.raises(ValueError, match="prefix_cache_tokens"):
        RuntimeConfig(prefix_cache_tokens=-5)
    assert RuntimeConfig().prefix_cache_tokens > 0


# ---- through the scheduler (fake engine) -------------------------------------------------------
def test_budget_holds_over_1000_requests_with_random_prefixes():
    """1,000 requests, each a random one of 40 shared prefixes plus a random tail: outputs
    equal the uncached scheduler's, the cache never holds more than its budget (checked after
    every step), it evicts, and it serves hits."""
    rng = random.Random(0)
    shared = [ids(rng.randrange(16, 70), 100 + i) for i in range(40)]
    requests = [Request(prompt=rng.choice(shared) + ids(rng.randrange(1, 12), i),
                        max_tokens=rng.randrange(1, 4), seed=i, request_id=f"r{i}")
                for i in range(1000)]
    budget = 512

    def within_budget(scheduler):
        cache = scheduler.prefix_cache
        assert cache.used_tokens <= budget
        assert cache.used_tokens == sum(cost for _, cost, _, _ in cache.snapshot())

    engine = FakeEngine(batch_size=4, buckets=(8, 16), sequence_len=128)
    cached = Scheduler(engine, BYTES, prefix_cache_tokens=budget)
    cached.submit(requests)
    got = outputs(drain(cached, each_step=within_budget))
    plain_engine = FakeEngine(batch_size=4, buckets=(8, 16), sequence_len=128)
    plain = Scheduler(plain_engine, BYTES)
    plain.submit(requests)
    assert got == outputs(drain(plain)) and len(got) == 1000
    cache = cached.prefix_cache
    assert cache.evictions > 50 and all(pins == 0 for *_, pins in cache.snapshot())
    assert cached.prefix_cache_hit_tokens > 5000
    assert cached.prefix_cache_query_tokens == sum(len(r.prompt) for r in requests)
    assert prefilled_tokens(engine) == (prefilled_tokens(plain_engine)
                                        - cached.prefix_cache_hit_tokens)


@pytest.mark.parametrize("keep_outputs", [True, False])
def test_interactive_turns_prefill_only_the_new_text(keep_outputs):
    """The conversation grows turn by turn as token ids (the last prompt + its answer + the
    new text, as the REPL sends it): with output KV kept, a later turn prefills only its new
    text, whether the last answer ended by EOS (turn 0, scripted) or by max_len; without, it
    also re-prefills the last answer."""
    opening = BYTES.encode("You are a helpful assistant. Hello there!")
    engine = FakeEngine(batch_size=2, buckets=(8, 16), sequence_len=256,
                        script={tuple(opening): [40, 41, 2]})          # "EF" then EOS
    scheduler = Scheduler(engine, BYTES, prefix_cache_tokens=1024,
                          prefix_cache_outputs=keep_outputs)
    conversation, answer, prefilled = list(opening), [], []
    for turn in range(5):
        before = prefilled_tokens(engine)
        scheduler.submit(Request(prompt=list(conversation), max_tokens=6, request_id=f"t{turn}"))
        (done,) = [e for e in drain(scheduler) if isinstance(e, Completion)]
        prefilled.append(prefilled_tokens(engine) - before)
        assert done.prompt_ids == conversation
        new_text = BYTES.encode(f"\nand turn {turn}?")
        want = len(new_text) + (0 if keep_outputs else len(answer))
        if turn:
            assert prefilled[-1] == want, (turn, prefilled)
        answer = list(done.output_ids)
        assert (done.finish_reason, len(answer)) == (("stop", 2) if turn == 0 else ("length", 6))
        conversation = done.prompt_ids + answer + new_text
    assert prefilled[0] == len(opening)
    assert len(scheduler.prefix_cache) == 1      # each turn's entry replaced the last
    stored = scheduler.prefix_cache.snapshot()[0][0]
    want_stored = conversation[:-len(new_text)] if keep_outputs else done.prompt_ids
    assert list(stored) == want_stored


class LineReader:
    """The REPL's stdin (not a terminal): each read first calls `on_read` (a turn has ended)."""

    def __init__(self, lines, on_read):
        self.lines, self.on_read = list(lines), on_read

    def isatty(self) -> bool:
        return False

    def readline(self) -> str:
        self.on_read()
        return self.lines.pop(0) + "\n" if self.lines else ""


class RecordingScheduler(Scheduler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent = []

    def submit(self, item):
        self.sent.append(item)
        return super().submit(item)


def test_repl_turns_prefill_only_the_new_line(capsys):
    """Five turns through grok.cli.repl.Repl on the fake engine: each later turn prefills
    exactly its new line's ids ("\n" + line), nothing of the previous answers (turn 0 ends by
    EOS, the others by max tokens); the prompt sent is the previous prompt + the answer's ids
    + the line's; the printed text is the answers' text; /clear starts a new conversation."""
    from types import SimpleNamespace

    from grok.cli.flags import build_parser
    from grok.cli.output import RunStats
    from grok.cli.repl import Repl, encode_continuation
    from grok.serving.generator import serve

    lines = ["Hello there, model.", "how are you?", "tell me more", "and more", "bye now",
             "/clear", "Hello there, model."]
    engine = FakeEngine(batch_size=1, buckets=(8, 16), sequence_len=512,
                        script={tuple(BYTES.encode(lines[0])): [40, 41, 2]})    # 2: EOS
    scheduler = RecordingScheduler(engine, BYTES, prefix_cache_tokens=2048)
    runner = SimpleNamespace(config=SimpleNamespace(sequence_len=512), tokenizer=BYTES,
                             batch_size=1, run=lambda: serve(scheduler))
    args = build_parser().parse_args(["--interactive", "--max-tokens", "6", "--temperature", "0",
                                      "--quiet"])
    marks = []
    stdin = LineReader(lines, lambda: marks.append(prefilled_tokens(engine)))
    assert Repl(runner, args, stdin, RunStats()).run() == 0
    prefilled = np.diff(marks).tolist()           # per turn; /clear prefills nothing
    new_lines = [len(encode_continuation(BYTES, "\n" + line)) for line in lines[1:5]]
    assert prefilled[1:5] == new_lines and prefilled[5] == 0, prefilled
    prompts = [list(r.prompt) for r in scheduler.sent]
    assert prompts[0] == prompts[5] == BYTES.encode(lines[0])    # /clear: a new conversation
    answers = []
    for turn in range(1, 5):
        answer = prompts[turn][len(prompts[turn - 1]):-new_lines[turn - 1]]
        assert len(answer) == (2 if turn == 1 else 6)        # the whole answer, no EOS
        answers.append(BYTES.decode(answer))
    printed = capsys.readouterr().out.splitlines()
    assert printed[:4] == answers and printed[0] == "%&"     # ids 40, 41: bytes 37, 38
    assert prefilled[6] == 1     # the old conversation's entry starts with the same line


def test_repl_ctrl_c_keeps_the_streamed_tokens(capsys):
    """Ctrl-C during an answer (here: the generator raising KeyboardInterrupt instead of
    yielding its third token): the next turn's prompt holds exactly the two tokens streamed
    and printed before it, then the new line."""
    from types import SimpleNamespace

    from grok.cli.flags import build_parser
    from grok.cli.output import RunStats
    from grok.cli.repl import Repl, encode_continuation
    from grok.serving.results import TokenEvent
    from grok.serving.generator import serve

    sent, events = [], []

    def run():
        gen = serve(Scheduler(FakeEngine(batch_size=1, sequence_len=256), BYTES,
                              prefix_cache_tokens=1024))
        out = next(gen)
        while True:
            incoming = yield out
            sent.extend([incoming] if isinstance(incoming, Request) else [])
            out = gen.send(incoming)
            if isinstance(out, TokenEvent):
                events.append(out)
                if len(sent) == 1 and len(events) == 3:
                    raise KeyboardInterrupt

    runner = SimpleNamespace(config=SimpleNamespace(sequence_len=256), tokenizer=BYTES,
                             batch_size=1, run=run)
    args = build_parser().parse_args(["--interactive", "--max-tokens", "6", "--quiet"])
    stdin = LineReader(["Hello there, model.", "go on"], lambda: None)
    assert Repl(runner, args, stdin, RunStats()).run() == 0
    streamed = [e.token_id for e in events[:2]]
    assert list(sent[1].prompt) == (list(sent[0].prompt) + streamed
                                    + encode_continuation(BYTES, "\ngo on"))
    assert capsys.readouterr().out.startswith(BYTES.decode(streamed) + "\n")


def test_a_hit_shared_by_several_slots_at_once():
    engine = FakeEngine(batch_size=4, buckets=(8, 16), sequence_len=128)
    scheduler = Scheduler(engine, BYTES, prefix_cache_tokens=1024)
    system = ids(37, 5)
    scheduler.submit(Request(prompt=system + [9], max_tokens=40, request_id="warm"))
    scheduler.step()                       # prefilled, stored, and decoding from now on
    requests = [Request(prompt=system + ids(3, i), max_tokens=4, request_id=f"s{i}")
                for i in range(3)]
    scheduler.submit(requests)
    mark = len(engine.calls)
    scheduler.step()                       # all three continue the system prompt's 37
    step_calls = engine.calls[mark:]       # positions and join "warm" in the slots
    assert step_calls.count(("slice_prefix", len(system))) == 3
    assert step_calls.count(("prefill", 3)) == 3
    assert sorted(d for name, d in step_calls if name == "insert") == [1, 2, 3]
    got = outputs(drain(scheduler))
    plain = Scheduler(FakeEngine(batch_size=4, buckets=(8, 16), sequence_len=128), BYTES)
    plain.submit(requests)
    assert {k: v for k, v in got.items() if k != "warm"} == outputs(drain(plain))
    assert scheduler.prefix_cache_hit_tokens == 3 * len(system)
    assert all(pins == 0 for *_, pins in scheduler.prefix_cache.snapshot())


def test_prompts_arriving_together_share_the_first_ones_prefill():
    """Admitted in one step, a prompt is looked up when its prefill starts: after the earlier
    prompt with the same start is kept (and a batched prefill stops before it)."""
    engine = FakeEngine(batch_size=4, buckets=(8, 64), sequence_len=128, batched=True)
    scheduler = Scheduler(engine, BYTES, prefix_cache_tokens=1024, max_prefill_batch=4)
    system = ids(40, 8)
    requests = [Request(prompt=system + ids(4, i), max_tokens=2, request_id=f"c{i}")
                for i in range(3)]
    requests.append(Request(prompt=ids(30, 9), max_tokens=2, request_id="other"))
    scheduler.submit(requests)
    got = outputs(drain(scheduler))
    plain = Scheduler(FakeEngine(batch_size=4, buckets=(8, 64), sequence_len=128, batched=True),
                      BYTES, max_prefill_batch=4)
    plain.submit(requests)
    assert got == outputs(drain(plain))
    assert scheduler.prefix_cache_hit_tokens == 2 * len(system)
    assert prefilled_tokens(engine) == 44 + 4 + 4 + 30


def test_echo_bypasses_and_cancel_unpins():
    engine = FakeEngine(batch_size=2, buckets=(8, 16), sequence_len=128)
    scheduler = Scheduler(engine, BYTES, prefix_cache_tokens=1024)
    base = ids(40, 3)
    scheduler.submit(Request(prompt=base, max_tokens=1, request_id="a"))
    drain(scheduler)
    scheduler.submit(Request(prompt=base + [7], max_tokens=1, echo=True, request_id="e"))
    (echo,) = [e for e in drain(scheduler) if isinstance(e, Completion)]
    assert len(echo.prompt_logprobs) == len(base) + 1 and scheduler.prefix_cache_hit_tokens == 0
    assert len(scheduler.prefix_cache) == 1                # the echo prompt was not stored
    scheduler.submit(Request(prompt=ids(5, 6), max_tokens=50, request_id="busy"))  # not stored
    scheduler.step()                                       # decoding from now on
    scheduler.submit(Request(prompt=base + ids(60, 4), max_tokens=3, request_id="long"))
    scheduler.step()                                       # admitted with a hit, one chunk in
    assert [p for *_, p in scheduler.prefix_cache.snapshot()] == [1]
    scheduler.submit(Cancel("long"))
    drain(scheduler)                                       # "busy" leaves its output's KV
    assert [p for *_, p in scheduler.prefix_cache.snapshot()] == [0, 0]


class ListLog:
    def __init__(self):
        self.published = []

    def publish(self, decisions: Decisions) -> None:
        self.published.append(decisions)


def test_every_process_evolves_the_same_cache():
    """A follower replaying the leader's decisions has the leader's cache after every step."""
    make = lambda log=None: Scheduler(FakeEngine(batch_size=3, buckets=(8, 16), sequence_len=128),
                                      BYTES, log=log, prefix_cache_tokens=256)
    log = ListLog()
    leader, follower = make(log), make()
    rng = random.Random(1)
    shared = [ids(rng.randrange(20, 50), 200 + i) for i in range(6)]
    pending = [Request(prompt=rng.choice(shared) + ids(rng.randrange(1, 9), i),
                       max_tokens=rng.randrange(1, 5), request_id=f"m{i}") for i in range(60)]
    steps = 0
    while pending or not leader.idle():
        n = rng.randrange(0, 4)
        leader.submit(pending[:n])
        del pending[:n]
        leader_events = leader.step()
        follower_events = follower.step(log.published[-1])
        assert outputs(leader_events) == outputs(follower_events)
        assert leader.prefix_cache.snapshot() == follower.prefix_cache.snapshot()
        steps += 1
    assert leader.prefix_cache_hit_tokens == follower.prefix_cache_hit_tokens > 0
    assert leader.prefix_cache.evictions > 0 and steps > 20


# ---- the tiny random model: the same outputs with and without the cache ------------------------
@pytest.fixture(scope="module")
def engine():
    """A JaxEngine over the tiny model, float32, 4 slots on one device, buckets (8, 16)."""
    from tiny_model import F32, PAD_SIZES, SEED, tiny_config
    from grok.engine.runner import ModelRunner
    from grok.serving.runner import InferenceRunner

    runner = InferenceRunner(ModelRunner(tiny_config(), bs_per_device=4, rng_seed=SEED, runtime=F32),
                             local_mesh_config=(1, 1), pad_sizes=PAD_SIZES,
                             tokenizer=BYTES, precompile=False)
    runner.initialize()
    return runner.engine


def run_requests(engine, requests, cache_tokens: int, warm=()) -> tuple[dict, Scheduler]:
    """Completions by id of `requests`, sent together after `warm` ran (one by one)."""
    scheduler = Scheduler(engine, BYTES, prefix_cache_tokens=cache_tokens)
    for request in warm:
        scheduler.submit(request)
        drain(scheduler)
    scheduler.submit(list(requests))
    done = {e.request_id: e for e in drain(scheduler) if isinstance(e, Completion)}
    return done, scheduler


@pytest.mark.slow
def test_tiny_model_outputs_equal_with_and_without_the_cache(engine):
    system = ids(37, 11)                                   # 37 = 2 blocks + 5
    aligned = ids(33, 12)
    warm = [Request(prompt=system + [40], max_tokens=1, request_id="w0"),
            Request(prompt=aligned, max_tokens=1, request_id="w1")]
    requests = [Request(prompt=system + ids(n, 20 + n), max_tokens=6, request_id=f"s{n}",
                        temperature=t, seed=n, logprobs=True)
                for n, t in ((3, 0.0), (5, 1.2), (9, 0.8))]      # prompts <= 64: P <= 64
    requests.append(Request(prompt=aligned[:32] + ids(8, 13), max_tokens=6, request_id="a",
                            logprobs=True))               # the hit ends at a chunk boundary
    cached, scheduler = run_requests(engine, requests, 4096, warm)
    plain, _ = run_requests(engine, requests, 0)
    # Hits: 37 positions (mid-block: a slice of a cached prompt) for each of the three, which
    # then decode in three slots at once; 32 (a chunk boundary, a slice of w1's) for "a".
    assert scheduler.prefix_cache_hit_tokens == 3 * 37 + 32
    for r in requests:
        got, want = cached[r.request_id], plain[r.request_id]
        assert got.error is None and got.output_ids == want.output_ids, r.request_id
        np.testing.assert_allclose(got.logprobs, want.logprobs, rtol=1e-5, atol=1e-5)
    # A hit at a chunk boundary replays the uncached chunks exactly: float32 bitwise.
    assert cached["a"].logprobs == plain["a"].logprobs
    assert cached["a"].top_logprobs == plain["a"].top_logprobs


def converse(engine, cache_tokens: int, keep_outputs: bool, turns: int = 4):
    """A conversation on the tiny model, turn by turn as the REPL sends it (the last prompt
    + its answer's ids + new ids); returns (Completions, the scheduler)."""
    scheduler = Scheduler(engine, BYTES, prefix_cache_tokens=cache_tokens,
                          prefix_cache_outputs=keep_outputs)
    conversation, done = ids(21, 30), []
    for turn in range(turns):
        scheduler.submit(Request(prompt=list(conversation), max_tokens=8, request_id=f"t{turn}",
                                 temperature=0.0 if turn % 2 else 0.9, seed=turn,
                                 logprobs=True))
        (completion,) = [e for e in drain(scheduler) if isinstance(e, Completion)]
        assert completion.error is None
        done.append(completion)
        conversation = list(completion.prompt_ids) + list(completion.output_ids) + ids(5, 40 + turn)
    return done, scheduler


def top_logprobs(completion) -> list:
    return [lp for row in completion.top_logprobs for _, lp in row]


@pytest.mark.slow
def test_tiny_model_conversation_equal_with_and_without_output_kv(engine):
    """Turns continuing the previous answer's decode-written KV (extract_prefix) sample the
    same tokens, with logprobs equal within 1e-5 (float32, not bitwise), as with prompt KV
    only and as with no cache at all; each later turn hits all of the previous prompt and
    answer (prompt KV only: the previous prompt)."""
    reused, scheduler = converse(engine, 4096, True)
    prompt_only, plain_scheduler = converse(engine, 4096, False)
    uncached, _ = converse(engine, 0, False)
    for got, prompt_kv, want in zip(reused, prompt_only, uncached):
        assert got.prompt_ids == want.prompt_ids and got.output_ids == want.output_ids
        assert prompt_kv.output_ids == want.output_ids
        # Not bitwise (about 5e-7 apart here): the positions after a hit are computed in
        # other chunks than without it, as after a prompt-KV hit that ends inside a chunk.
        for run in (got, prompt_kv):
            np.testing.assert_allclose(run.logprobs, want.logprobs, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(top_logprobs(run), top_logprobs(want),
                                       rtol=1e-5, atol=1e-5)
    held = [len(c.prompt_ids) + len(c.output_ids) for c in reused[:-1]]
    assert scheduler.prefix_cache_hit_tokens == sum(held)            # whole previous turns
    assert plain_scheduler.prefix_cache_hit_tokens == sum(len(c.prompt_ids) for c in reused[:-1])


def test_extract_prefix_copies_a_slots_first_positions(engine):
    """extract_prefix: a slot's first n positions as a Prefix of the smallest capacity holding
    them, equal to the Prefix inserted there (a copy: bitwise), the rest zero and invalid;
    the state is not donated."""
    prompt = ids(12, 50)
    prefix, result = engine.prefill(prompt)                    # capacity 16
    state = engine.insert(prefix, result.arm, engine.init_state(), 2)
    kept = engine.extract_prefix(state, 2, 9)
    assert kept.capacity == 16 and int(kept.length) == 9
    for got, want in ((kept.k, prefix.k), (kept.v, prefix.v)):
        got, want = np.asarray(got), np.asarray(want)
        assert np.array_equal(got[:, :, :, :9], want[:, :, :, :9])
        assert not got[:, :, :, 9:].any()
    assert np.asarray(kept.valid).tolist() == [[True] * 9 + [False] * 7]
    assert not state.memory.k.is_deleted()                     # only read
    with pytest.raises(ValueError, match="extract_prefix: length"):
        engine.extract_prefix(state, 2, engine.sequence_len + 1)

"""A fake of grok.engine.api.Engine for scheduler tests: host Python only, no JAX, no compile.

A prefix is the tuple of its tokens; a slot's next token is `next_token(sequence)`, a pure
function of the prompt and the tokens so far, so a request's output never depends on its slot
or its company (the property the scheduler must keep). `script` fixes outputs: a prompt
(tuple of ids) -> the tokens it produces (then `next_token` takes over). Every call is
recorded in `calls` as (name, detail); `fail_prefill` makes prefill raise for prompts holding
that token id (fault injection).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from grok.engine.api import Engine, SampleParams, TokenOutput

# Unscripted outputs are printable ASCII in the byte tokenizer's ids (bytes 32..126), so
# streamed text is never held back for an unfinished character.
PRINTABLE_FIRST, PRINTABLE_COUNT = 3 + 32, 95


class FakePrefix(NamedTuple):
    tokens: tuple

    @property
    def capacity(self) -> int:
        """Positions "held": the length rounded up to a power of two (>= 8), like the
        engine's capacity buckets (FakeEngine.prefix_capacities, for power-of-two lengths)."""
        return max(8, 1 << max(0, len(self.tokens) - 1).bit_length())


class FakeArm(NamedTuple):
    token: int
    seed: int


class FakeResult(NamedTuple):
    out: TokenOutput
    arm: FakeArm
    echo: Optional[np.ndarray]


class FakeHandle(NamedTuple):
    out: TokenOutput


def token_logprob(token: int) -> float:
    return -((token % 7) + 1) / 8


class FakeEngine(Engine):
    def __init__(self, batch_size=3, buckets=(8, 16), sequence_len=128, vocab_size=259,
                 eos_token=2, pad_token=0, script=None, fail_prefill=None, batched=False):
        self.batch_size = batch_size
        self.prefill_buckets = tuple(buckets)
        self.prefix_capacities = tuple(1 << i for i in range(3, sequence_len.bit_length())
                                       if 1 << i < sequence_len) + (sequence_len,)
        self.prefill_batch_sizes = (2, 4) if batched else ()   # (): no batched prefill
        self.sequence_len, self.vocab_size = sequence_len, vocab_size
        self.eos_token, self.pad_token = eos_token, pad_token
        self.script = {tuple(k): list(v) for k, v in (script or {}).items()}
        self.fail_prefill = fail_prefill
        self.calls: list = []

    # ---- the deterministic "model" --------------------------------------------------------
    def next_token(self, sequence: tuple, prompt_len: int, seed: int) -> int:
        produced = len(sequence) - prompt_len
        script = self.script.get(tuple(sequence[:prompt_len]))
        if script is not None and produced < len(script):
            return script[produced]
        mixed = sum(sequence) * 7 + len(sequence) * 13 + seed
        return PRINTABLE_FIRST + mixed % PRINTABLE_COUNT

    def _output(self, tokens: list) -> TokenOutput:
        ids = np.array(tokens, np.int64)
        return TokenOutput(ids, np.array([token_logprob(t) for t in tokens], np.float32),
                           np.stack([ids, ids + 1], axis=1),
                           np.array([[token_logprob(t), -9.0] for t in tokens], np.float32))

    # ---- the Engine API -------------------------------------------------------------------
    def init_state(self):
        self.calls.append(("init_state", None))
        return {"slots": [None] * self.batch_size}   # slot -> [sequence, prompt_len, seed]

    def prefill(self, tokens, sample: SampleParams, *, existing_prefix=None, echo=False,
                next_token=None):
        tokens = tuple(int(t) for t in tokens)
        assert 1 <= len(tokens) <= self.prefill_buckets[-1], len(tokens)
        assert isinstance(sample, SampleParams)
        before = existing_prefix.tokens if existing_prefix is not None else ()
        self.calls.append(("prefill", len(tokens)))
        if self.fail_prefill is not None and self.fail_prefill in tokens:
            raise RuntimeError(f"injected prefill failure (token {self.fail_prefill})")
        prefix = FakePrefix(before + tokens)
        first = self.next_token(prefix.tokens, len(prefix.tokens), sample.seed)
        echo_lps = None
        if echo:
            targets = list(tokens[1:]) + [next_token if next_token is not None else 0]
            echo_lps = self._output(targets)
        return prefix, FakeResult(self._output([first]), FakeArm(first, sample.seed), echo_lps)

    def prefill_batch(self, prompts, samples):
        self.calls.append(("prefill_batch", len(prompts)))
        saved, self.calls = self.calls, []
        try:
            return [self.prefill(p, s) for p, s in zip(prompts, samples)]
        finally:
            self.calls = saved

    def insert(self, prefix, arm, state, slot):
        assert state["slots"][slot] is None, f"insert into occupied slot {slot}"
        self.calls.append(("insert", slot))
        state["slots"][slot] = [prefix.tokens + (int(arm.token),), len(prefix.tokens), arm.seed]
        return state

    def mark_prompt(self, state, slot, tokens):
        assert state["slots"][slot] is not None, f"mark_prompt of empty slot {slot}"
        self.calls.append(("mark_prompt", (slot, tuple(tokens))))
        return state

    def generate(self, state, *, controls=None):
        active = [i for i, s in enumerate(state["slots"]) if s is not None]
        self.calls.append(("generate" if controls is None else "generate_processed",
                           tuple(active)))
        tokens = []
        for slot, entry in enumerate(state["slots"]):
            if entry is None:
                tokens.append(self.pad_token)
                continue
            sequence, prompt_len, seed = entry
            token = self.next_token(sequence, prompt_len, seed)
            if controls is not None and controls.processed[slot]:
                token = self._allowed(token, sequence, controls, slot)
            entry[0] = sequence + (token,)
            tokens.append(token)
        return state, FakeHandle(self._output(tokens))

    def _allowed(self, token: int, sequence: tuple, controls, slot: int) -> int:
        """`token` if the slot's mask allows it, else an allowed one picked by the sequence."""
        bits = np.unpackbits(np.asarray(controls.allowed[slot]).view(np.uint8),
                             bitorder="little")[:self.vocab_size]
        if bits[token]:
            return token
        allowed = np.flatnonzero(bits)
        return int(allowed[(sum(sequence) * 7 + len(sequence) * 13) % len(allowed)])

    def release(self, state, slot):
        self.calls.append(("release", slot))
        state["slots"][slot] = None
        return state

    def slice_prefix(self, prefix, length):
        assert 0 <= length <= len(prefix.tokens), (length, len(prefix.tokens))
        self.calls.append(("slice_prefix", length))
        return FakePrefix(prefix.tokens[:length])

    def extract_prefix(self, state, slot, length):
        """The slot's first `length` tokens; only those whose KV a real engine has written
        (every token but the last sampled one, which no step has fed yet)."""
        sequence = state["slots"][slot][0]
        assert 1 <= length <= len(sequence) - 1, (length, len(sequence))
        self.calls.append(("extract_prefix", length))
        return FakePrefix(sequence[:length])

    def read(self, handle) -> TokenOutput:
        return handle.out

    def read_echo(self, result) -> TokenOutput:
        return result.echo


class FailingTokenizer:
    """A tokenizer whose decode raises when the ids hold `bad_token` (fault injection)."""

    def __init__(self, inner, bad_token: int):
        self.inner, self.bad_token = inner, bad_token
        self.vocab_size = inner.vocab_size
        self.fingerprint = f"failing:{inner.fingerprint}"
        self.special_tokens = inner.special_tokens

    def token_text(self, token_id):
        return self.inner.token_text(token_id)

    def encode(self, text):
        return self.inner.encode(text)

    def decode(self, ids):
        if self.bad_token in list(ids):
            raise RuntimeError(f"injected decode failure (token {self.bad_token})")
        return self.inner.decode(ids)

    def min_tokens(self, text):
        return self.inner.min_tokens(text)


def drain(scheduler, max_steps: int = 100000, each_step=None) -> list:
    """Steps the scheduler until it is idle (at most max_steps); every event, in order.
    `each_step(scheduler)` runs after each step."""
    events = []
    for _ in range(max_steps):
        if scheduler.idle():
            return events
        events += scheduler.step()
        if each_step is not None:
            each_step(scheduler)
    raise AssertionError("the scheduler did not go idle")

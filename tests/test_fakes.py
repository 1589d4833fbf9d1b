"""The tests' fakes implement the seams they stand in for (so a fake never drifts from what
the code calls), checked with isinstance against each Protocol; and the scheduler's streams
are the narrow views the prefix cache's and structured decoding's hooks are typed with."""

from fake_engine import FailingTokenizer, FakeEngine
from server_fakes import FakeScheduler
from grok.engine.api import Engine
from grok.serving.interface import SchedulerAPI
from grok.serving.prefix_hooks import CachedStream
from grok.serving.requests import Request
from grok.serving.scheduler import Scheduler
from grok.serving.stream import Stream
from grok.serving.structured_decoding import StructuredStream
from grok.tokenizer import ByteTokenizer, Tokenizer


def test_fake_engine_is_an_engine():
    assert isinstance(FakeEngine(), Engine)
    assert isinstance(FakeEngine(batched=True), Engine)


def test_schedulers_are_scheduler_apis():
    assert isinstance(FakeScheduler(), SchedulerAPI)
    assert isinstance(Scheduler(FakeEngine(), ByteTokenizer()), SchedulerAPI)


def test_tokenizers_are_tokenizers():
    assert isinstance(ByteTokenizer(), Tokenizer)
    assert isinstance(FailingTokenizer(ByteTokenizer(), 5), Tokenizer)


def test_a_fake_missing_a_member_is_refused():
    class Partial:
        def encode(self, text):
            return []
    assert not isinstance(Partial(), Tokenizer)


def test_the_schedulers_streams_are_what_the_prefix_cache_sees():
    stream = Stream(Request(prompt=[5, 6]), "r", [5, 6], 0, None)
    assert isinstance(stream, CachedStream)


def test_the_schedulers_streams_are_what_structured_decoding_sees():
    stream = Stream(Request(prompt=[5, 6]), "r", [5, 6], 0, None)
    assert isinstance(stream, StructuredStream)

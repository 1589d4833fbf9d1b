"""What users send to the scheduler: `Request` (one prompt to continue) and `Cancel`.

`Request` speaks OpenAI's names from the HTTP body to the sampler: prompt, temperature, top_p,
seed, max_tokens (in the reference's positional order), then top_k, stop tokens, stop strings,
streaming, logprobs and echo scoring. The reference's keywords (nucleus_p, rng_seed, max_len)
are still accepted and mapped here, once. Every field is checked and normalised when the
request is made (Python values only, every number bounded): a bad one raises `RequestError`
(a ValueError) carrying the field's name and value as data, so each door (HTTP, CLI, grok.LLM)
names it in its own words without parsing the message. A Request is frozen; the scheduler
re-validates it when it admits it, so one changed behind the dataclass's back
(`object.__setattr__`) fails alone instead of reaching the device.

What depends on the model (top_k <= vocabulary, token ids in the vocabulary, a prompt of pad
ids only, the prompt's length against sequence_len) is checked at admission
(grok.serving.admission), which raises `RequestError` too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
from typing import Any, Optional, Sequence, Union

import numpy as np

from grok.serving.request_error import RequestError
from grok.serving.structured import fields

Prompt = Union[str, Sequence[int]]

MAX_INT32 = 2**31 - 1      # token ids, top_k and max_tokens travel to the device as int32
SEED_LIMIT = 2**32         # seeds are uint32 PRNG keys
DEFAULT_MAX_TOKENS = 100   # the reference's max_len
# List fields are bounded so the scheduler's per-token work for one request (stop checks) is
# bounded too, whatever a caller sends.
MAX_STOP_TOKENS = 1024     # stop_tokens entries
MAX_STOP_STRINGS = 32      # stop strings (the HTTP API takes 16, a chat template adds its own)
MAX_STOP_CHARS = 256       # characters in one stop string
MAX_CACHE_SALT_CHARS = 1024
_SEQUENCES = (list, tuple, np.ndarray)
# The reference's Request keywords -> the fields they fill.
REFERENCE_NAMES = {"nucleus_p": "top_p", "rng_seed": "seed", "max_len": "max_tokens"}


def _is_int(x) -> bool:
    """Python or NumPy integers, not bools."""
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _is_real(x) -> bool:
    """Python or NumPy real numbers, not bools."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _int_field(name: str, value, low: int, high: int, what: str) -> int:
    """`value` as a Python int in [low, high], else RequestError for `name`."""
    if not _is_int(value) or not low <= value <= high:
        raise RequestError(name, value, f"must be {what}, got {_short(value)}")
    return int(value)


def _float_field(name: str, value, ok, what: str) -> float:
    """`value` as a finite Python float with ok(value), else RequestError for `name`.

    Huge ints (10**400) overflow float(): that is the field's error too."""
    try:
        number = float(value) if _is_real(value) else None
    except OverflowError:
        number = None
    if number is None or not math.isfinite(number) or not ok(number):
        raise RequestError(name, value, f"must be {what}, got {_short(value)}")
    return number


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _valid_text(name: str, text: str) -> str:
    """Refuses text that is not valid Unicode (lone surrogates cannot reach a tokenizer)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(name, text, f"is not valid Unicode ({e.reason} at character "
                                       f"{e.start})") from None
    return text


def _token_ids(name: str, value, allow_empty: bool) -> tuple:
    """A sequence of token ids as a tuple of Python ints in [0, MAX_INT32]."""
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise RequestError(name, value, f"as token ids must be one-dimensional, got shape "
                                        f"{value.shape}")
    ids = list(value)
    if (not ids and not allow_empty) or not all(_is_int(t) and 0 <= t <= MAX_INT32 for t in ids):
        raise RequestError(name, value, f"must be a {'' if allow_empty else 'non-empty '}list "
                                        f"of token ids (ints in [0, 2**31)), got {_short(value)}")
    return tuple(int(t) for t in ids)


def stop_strings(stop) -> tuple:
    """One string or a sequence of them -> a tuple of non-empty, valid strings (RequestError
    for `stop` otherwise): the one check of stop strings, for every door."""
    items = (stop,) if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
        raise RequestError("stop", stop, f"must be a non-empty string or a list of them, "
                                         f"got {_short(stop)}")
    if len(items) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in items):
        raise RequestError("stop", len(items), f"takes at most {MAX_STOP_STRINGS} strings of "
                                               f"at most {MAX_STOP_CHARS} characters each")
    return tuple(_valid_text("stop", s) for s in items)


@dataclasses.dataclass(frozen=True)
class Request:
    prompt: Prompt                # text, or token ids (no BOS added in either case)
    temperature: float = 1.0      # 0 = greedy
    top_p: float = 1.0            # nucleus, in (0, 1]
    seed: int = 0                 # in [0, 2**32)
    max_tokens: int = DEFAULT_MAX_TOKENS   # new tokens at most, >= 1
    top_k: int = 0                # 0 = off; at most the vocabulary (checked at admission)
    stop_tokens: Sequence[int] = ()   # token ids that end the output (not included)
    stream: bool = False          # the generator also yields a TokenEvent per new token
    logprobs: bool = False        # per-token logprobs and top alternatives
    echo: bool = False            # also score the prompt: log p(token_t | tokens before t)
    request_id: Optional[str] = None  # None: the scheduler names it (never a caller's id)
    stop: Sequence[str] = ()      # stop strings: the text ends before the first one found
    cache_salt: Optional[str] = None  # prefix-cache namespace: only equal salts share cached KV
    ignore_eos: bool = False      # EOS does not end the output (kept as an ordinary token)
    min_tokens: int = 0           # EOS and stop tokens are not sampled before this many
    # Structured outputs (at most one) and logit processing: grok.serving.structured.fields
    json_schema: Optional[Union[str, dict]] = None   # the output is JSON matching this schema
    regex: Optional[str] = None   # the output matches this regular expression
    choice: Optional[Sequence[str]] = None   # the output is one of these strings
    grammar: Optional[str] = None  # the output follows this Lark or GBNF grammar
    logit_bias: Optional[object] = None   # {token id: bias in [-100, 100]}
    min_p: float = 0.0            # drop tokens below min_p x the top token's probability
    presence_penalty: float = 0.0   # [-2, 2]: minus this for every token already generated
    frequency_penalty: float = 0.0  # [-2, 2]: minus this x the token's count so far
    repetition_penalty: float = 1.0  # (0, 2]: generated tokens' logits / (or x) this
    _: dataclasses.KW_ONLY
    # The reference's keywords for top_p, seed and max_tokens: init-only (mapped in
    # __post_init__, never stored; the class attributes stay None for dataclasses.replace).
    nucleus_p: dataclasses.InitVar[Optional[float]] = None
    rng_seed: dataclasses.InitVar[Optional[int]] = None
    max_len: dataclasses.InitVar[Optional[int]] = None

    def __post_init__(self, nucleus_p, rng_seed, max_len):
        set_ = lambda name, value: object.__setattr__(self, name, value)
        self._map_reference_names(nucleus_p=nucleus_p, rng_seed=rng_seed, max_len=max_len)
        p = self.prompt
        if isinstance(p, str):
            if not p:
                raise RequestError("prompt", p, "is empty")
            _valid_text("prompt", p)
        elif isinstance(p, _SEQUENCES):
            set_("prompt", _token_ids("prompt", p, allow_empty=False))
        else:
            raise RequestError("prompt", p, f"must be a str or a list of token ids, "
                                            f"got {type(p).__name__}")
        set_("temperature", _float_field("temperature", self.temperature, lambda x: x >= 0,
                                         "a finite number >= 0"))
        set_("top_p", _float_field("top_p", self.top_p, lambda x: 0 < x <= 1, "in (0, 1]"))
        set_("seed", _int_field("seed", self.seed, 0, SEED_LIMIT - 1, "an int in [0, 2**32)"))
        set_("max_tokens", _int_field("max_tokens", self.max_tokens, 1, MAX_INT32,
                                      "an int >= 1"))
        set_("top_k", _int_field("top_k", self.top_k, 0, MAX_INT32, "an int >= 0 (0 = off)"))
        if not isinstance(self.stop_tokens, _SEQUENCES + (set, frozenset)):
            raise RequestError("stop_tokens", self.stop_tokens,
                               f"must be a list of token ids, got {_short(self.stop_tokens)}")
        if len(self.stop_tokens) > MAX_STOP_TOKENS:
            raise RequestError("stop_tokens", len(self.stop_tokens),
                               f"has {len(self.stop_tokens)} ids, more than {MAX_STOP_TOKENS}")
        stops = sorted(self.stop_tokens) if isinstance(self.stop_tokens, (set, frozenset)) \
            else self.stop_tokens
        set_("stop_tokens", _token_ids("stop_tokens", stops, allow_empty=True))
        set_("stop", stop_strings(self.stop))
        set_("min_tokens", _int_field("min_tokens", self.min_tokens, 0, self.max_tokens,
                                      "an int in [0, max_tokens]"))
        for name, value in (("stream", self.stream), ("logprobs", self.logprobs),
                            ("echo", self.echo), ("ignore_eos", self.ignore_eos)):
            if not isinstance(value, (bool, np.bool_)):
                raise RequestError(name, value, f"must be a bool, got {_short(value)}")
            set_(name, bool(value))
        if self.request_id is not None:
            if not isinstance(self.request_id, str) or not self.request_id:
                raise RequestError("request_id", self.request_id,
                                   f"must be a non-empty str or None, got {self.request_id!r}")
            _valid_text("request_id", self.request_id)
        if self.cache_salt is not None:
            if (not isinstance(self.cache_salt, str) or not self.cache_salt
                    or len(self.cache_salt) > MAX_CACHE_SALT_CHARS):
                raise RequestError("cache_salt", self.cache_salt,
                                   f"must be a non-empty str of at most {MAX_CACHE_SALT_CHARS} "
                                   f"characters or None, got {_short(self.cache_salt)}")
            _valid_text("cache_salt", self.cache_salt)
        fields.normalise(self, set_)

    def _map_reference_names(self, **given) -> None:
        """The reference's keywords fill OpenAI-named fields; both names with different values
        is an error naming the reference's."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for old, value in given.items():
            if value is None:
                continue
            new = REFERENCE_NAMES[old]
            current = getattr(self, new)
            if current != defaults[new] and current != value:
                raise RequestError(old, value, f"is the reference's name for {new}, which is "
                                               f"also given ({current!r}): give one of them")
            object.__setattr__(self, new, value)

    def validated(self) -> "Request":
        """A freshly validated copy: catches fields changed after construction."""
        return dataclasses.replace(self)


@dataclasses.dataclass(frozen=True)
class Cancel:
    """Ends the request `request_id` (queued or running) at the next step; its Completion has
    finish_reason "cancelled" and the tokens made so far. Unknown ids are ignored."""

    request_id: str

    def __post_init__(self):
        if not isinstance(self.request_id, str):
            raise RequestError("request_id", self.request_id,
                               f"must be a str, got {self.request_id!r}")


def request_seed(seed: int, index: int) -> int:
    """Request `index`'s seed: `seed` itself for 0, else a hash of (seed, index), so a single
    request samples as the reference's run.py does, and the streams of one run never repeat
    those of a run with another base seed (the CLI's --seed, grok.LLM's requests)."""
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % SEED_LIMIT

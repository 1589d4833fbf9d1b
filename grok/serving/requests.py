"""What users send to the scheduler: `Request` (one prompt to continue) and `Cancel`.

`Request` keeps the reference's fields (prompt, temperature, nucleus_p, rng_seed, max_len) and
adds top_k, stop tokens, stop strings, streaming, logprobs and echo scoring. Every field is
checked and normalised when the request is made (Python values only, every number bounded):
a bad one raises `ValueError` naming it, before it reaches the scheduler. A Request is frozen;
the scheduler re-validates it when it admits it, so one changed behind the dataclass's back
(`object.__setattr__`) fails alone instead of reaching the device.

What depends on the model (top_k <= vocabulary, token ids in the vocabulary, a prompt of pad
ids only, the prompt's length against sequence_len) is checked at admission
(grok.serving.admission).

The results (`Completion`, `TokenEvent`) live in grok.serving.results; they are re-exported
here because callers import all three from this module.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional, Sequence, Union

import numpy as np

from grok.serving.results import Completion, TokenEvent  # noqa: F401 (re-exported)
from grok.serving.structured import fields

Prompt = Union[str, Sequence[int]]

MAX_INT32 = 2**31 - 1      # token ids, top_k and max_len travel to the device as int32
SEED_LIMIT = 2**32         # seeds are uint32 PRNG keys
_SEQUENCES = (list, tuple, np.ndarray)


def _is_int(x) -> bool:
    """Python or NumPy integers, not bools."""
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _is_real(x) -> bool:
    """Python or NumPy real numbers, not bools."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _int_field(name: str, value, low: int, high: int, what: str) -> int:
    """`value` as a Python int in [low, high], else ValueError naming `Request.<name>`."""
    if not _is_int(value) or not low <= value <= high:
        raise ValueError(f"Request.{name} must be {what}, got {value!r}")
    return int(value)


def _float_field(name: str, value, ok, what: str) -> float:
    """`value` as a finite Python float with ok(value), else ValueError naming the field.

    Huge ints (10**400) overflow float(): that is the field's error too."""
    try:
        number = float(value) if _is_real(value) else None
    except OverflowError:
        number = None
    if number is None or not math.isfinite(number) or not ok(number):
        raise ValueError(f"Request.{name} must be {what}, got {_short(value)}")
    return number


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _valid_text(name: str, text: str) -> str:
    """Refuses text that is not valid Unicode (lone surrogates cannot reach a tokenizer)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"Request.{name} is not valid Unicode ({e.reason} at character "
                         f"{e.start})") from None
    return text


def _token_ids(name: str, value, allow_empty: bool) -> tuple:
    """A sequence of token ids as a tuple of Python ints in [0, MAX_INT32]."""
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise ValueError(f"Request.{name} as token ids must be one-dimensional, got shape "
                         f"{value.shape}")
    ids = list(value)
    if (not ids and not allow_empty) or not all(_is_int(t) and 0 <= t <= MAX_INT32 for t in ids):
        raise ValueError(f"Request.{name} must be a {'' if allow_empty else 'non-empty '}list of "
                         f"token ids (ints in [0, 2**31)), got {_short(value)}")
    return tuple(int(t) for t in ids)


@dataclasses.dataclass(frozen=True)
class Request:
    prompt: Prompt                # text, or token ids (no BOS added in either case)
    temperature: float = 1.0      # 0 = greedy
    nucleus_p: float = 1.0        # top-p, in (0, 1]
    rng_seed: int = 0             # in [0, 2**32)
    max_len: int = 100            # new tokens at most, >= 1
    top_k: int = 0                # 0 = off; at most the vocabulary (checked at admission)
    stop_tokens: Sequence[int] = ()   # token ids that end the output (not included)
    stream: bool = False          # the generator also yields a TokenEvent per new token
    logprobs: bool = False        # per-token logprobs and top alternatives
    echo: bool = False            # also score the prompt: log p(token_t | tokens before t)
    request_id: Optional[str] = None  # None: the scheduler names it (never a caller's id)
    stop: Sequence[str] = ()      # stop strings: the text ends before the first one found
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
    min_tokens: int = 0           # EOS and stop tokens are not sampled before this many

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)
        p = self.prompt
        if isinstance(p, str):
            if not p:
                raise ValueError("Request.prompt is empty")
            _valid_text("prompt", p)
        elif isinstance(p, _SEQUENCES):
            set_("prompt", _token_ids("prompt", p, allow_empty=False))
        else:
            raise ValueError(f"Request.prompt must be a str or a list of token ids, "
                             f"got {type(p).__name__}")
        set_("temperature", _float_field("temperature", self.temperature, lambda x: x >= 0,
                                         "a finite number >= 0"))
        set_("nucleus_p", _float_field("nucleus_p", self.nucleus_p, lambda x: 0 < x <= 1,
                                       "in (0, 1]"))
        set_("rng_seed", _int_field("rng_seed", self.rng_seed, 0, SEED_LIMIT - 1,
                                    "an int in [0, 2**32)"))
        set_("max_len", _int_field("max_len", self.max_len, 1, MAX_INT32, "an int >= 1"))
        set_("top_k", _int_field("top_k", self.top_k, 0, MAX_INT32, "an int >= 0 (0 = off)"))
        if not isinstance(self.stop_tokens, _SEQUENCES + (set, frozenset)):
            raise ValueError(f"Request.stop_tokens must be a list of token ids, "
                             f"got {_short(self.stop_tokens)}")
        stops = sorted(self.stop_tokens) if isinstance(self.stop_tokens, (set, frozenset)) \
            else self.stop_tokens
        set_("stop_tokens", _token_ids("stop_tokens", stops, allow_empty=True))
        set_("stop", self._stop_strings(self.stop))
        for name in ("stream", "logprobs", "echo"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"Request.{name} must be a bool, got {getattr(self, name)!r}")
            set_(name, bool(getattr(self, name)))
        if self.request_id is not None:
            if not isinstance(self.request_id, str) or not self.request_id:
                raise ValueError(f"Request.request_id must be a non-empty str or None, "
                                 f"got {self.request_id!r}")
            _valid_text("request_id", self.request_id)
        fields.normalise(self, set_)

    @staticmethod
    def _stop_strings(stop) -> tuple:
        """One string or a sequence of them -> a tuple of non-empty, valid strings."""
        items = (stop,) if isinstance(stop, str) else stop
        if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
            raise ValueError(f"Request.stop must be a non-empty string or a list of them, "
                             f"got {_short(stop)}")
        return tuple(_valid_text("stop", s) for s in items)

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
            raise ValueError(f"Cancel.request_id must be a str, got {self.request_id!r}")

"""What users send to the runner and what they get back.

`Request` keeps the reference's fields (prompt, temperature, nucleus_p, rng_seed, max_len) and
adds top_k, stop tokens, streaming, logprobs and echo scoring. Every field is checked when the
request is made: a bad one raises `ValueError` naming it, before it reaches the runner.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional, Sequence, Union

import numpy as np

Prompt = Union[str, Sequence[int]]


def _is_int(x) -> bool:
    """Python or NumPy integers, not bools."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    """Python or NumPy real numbers, not bools."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class Request:
    prompt: Prompt
    temperature: float = 1.0
    nucleus_p: float = 1.0
    rng_seed: int = 0
    max_len: int = 100
    top_k: int = 0
    stop_tokens: Sequence[int] = ()
    stream: bool = False          # the generator also yields a TokenEvent per new token
    logprobs: bool = False        # per-token logprobs and top alternatives in the Completion
    echo: bool = False            # also score the prompt: log p(token_t | tokens before t)
    request_id: Optional[str] = None

    def __post_init__(self):
        p = self.prompt
        if isinstance(p, str):
            if not p:
                raise ValueError("Request.prompt is empty")
        elif isinstance(p, (list, tuple, np.ndarray)):
            ids = [int(t) if _is_int(t) else t for t in list(p)]
            if not ids or not all(_is_int(t) and t >= 0 for t in ids):
                raise ValueError("Request.prompt as token ids must be a non-empty list of ints >= 0")
            object.__setattr__(self, "prompt", tuple(ids))
        else:
            raise ValueError(f"Request.prompt must be a str or a list of token ids, got {type(p).__name__}")
        if not _is_real(self.temperature) or not math.isfinite(self.temperature) \
                or self.temperature < 0:
            raise ValueError(f"Request.temperature must be a finite number >= 0, got {self.temperature!r}")
        if not _is_real(self.nucleus_p) or not 0 < self.nucleus_p <= 1:
            raise ValueError(f"Request.nucleus_p must be in (0, 1], got {self.nucleus_p!r}")
        if not _is_int(self.rng_seed) or not 0 <= self.rng_seed < 2**32:
            raise ValueError(f"Request.rng_seed must be an int in [0, 2**32), got {self.rng_seed!r}")
        if not _is_int(self.max_len) or self.max_len < 1:
            raise ValueError(f"Request.max_len must be an int >= 1, got {self.max_len!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"Request.top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        stops = (list(self.stop_tokens)
                 if isinstance(self.stop_tokens, (list, tuple, set, frozenset, np.ndarray)) else None)
        if stops is None or not all(_is_int(t) and t >= 0 for t in stops):
            raise ValueError(f"Request.stop_tokens must be a list of token ids, got {self.stop_tokens!r}")
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in stops))
        for name, kind in (("temperature", float), ("nucleus_p", float), ("rng_seed", int),
                           ("max_len", int), ("top_k", int)):  # NumPy scalars -> Python
            object.__setattr__(self, name, kind(getattr(self, name)))
        for name in ("stream", "logprobs", "echo"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Request.{name} must be a bool, got {getattr(self, name)!r}")
        if self.request_id is not None and not isinstance(self.request_id, str):
            raise ValueError(f"Request.request_id must be a str or None, got {self.request_id!r}")


@dataclasses.dataclass(frozen=True)
class TokenEvent:
    """One new token of a streaming request, yielded as soon as it is made — or, when it ends
    mid-character, with the token that completes the character (or at the request's end), so
    `text` is always final and the texts of a request's events add up to its Completion."""

    request_id: str
    index: int            # position in the output (0 = first new token)
    token_id: int
    text: str             # the text this token adds (may be "" mid-character)
    logprob: float


class Completion(str):
    """A finished request. It *is* its text (so reference-style code gets a string), with:

    request_id, prompt_ids, output_ids (new tokens, stop token excluded), finish_reason
    ("stop", "length" or "error"), error (message or None), logprobs (per output token, when
    asked), top_logprobs (per output token: [(token_id, logprob), ...]), prompt_logprobs
    (aligned with prompt_ids, None first, when echo was asked).
    """

    def __new__(cls, text: str, **fields):
        obj = super().__new__(cls, text)
        obj.text = text
        obj.request_id = fields.pop("request_id")
        obj.prompt_ids = list(fields.pop("prompt_ids", []))
        obj.output_ids = list(fields.pop("output_ids", []))
        obj.finish_reason = fields.pop("finish_reason", "stop")
        obj.error = fields.pop("error", None)
        obj.logprobs = fields.pop("logprobs", None)
        obj.top_logprobs = fields.pop("top_logprobs", None)
        obj.prompt_logprobs = fields.pop("prompt_logprobs", None)
        if fields:
            raise TypeError(f"Completion: unknown fields {sorted(fields)}")
        return obj

    def to_dict(self) -> dict:
        out = {"request_id": self.request_id, "prompt_ids": self.prompt_ids,
               "output_ids": self.output_ids, "text": self.text, "finish_reason": self.finish_reason}
        for name in ("error", "logprobs", "top_logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

"""What the scheduler gives back: a `TokenEvent` per streamed token, a `Completion` per request."""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

FINISH_REASONS = ("stop", "length", "cancelled", "error")

_COMPLETION_FIELDS = {           # name -> default (lists are copied per Completion)
    "request_id": None, "prompt_ids": (), "output_ids": (), "finish_reason": "stop",
    "stop_reason": None, "error": None, "logprobs": None, "top_logprobs": None,
    "prompt_logprobs": None, "prompt_top_logprobs": None,
}
_LIST_FIELDS = ("prompt_ids", "output_ids")


@dataclasses.dataclass(frozen=True)
class TokenEvent:
    """One new token of a streaming request.

    `text` is the text this token adds. It is final when sent: a token that leaves half a
    character, or text that could still be the start of a stop string, is sent with a later
    token (or at the end), so some events carry "" and the texts of a request's events always
    concatenate to its Completion's text. `top_logprobs` ([(token_id, logprob), ...]) is set
    when the request asked for logprobs.
    """

    request_id: str
    index: int            # position in the output (0 = first new token)
    token_id: int
    text: str
    logprob: float
    top_logprobs: Optional[list] = None


class Completion(str):
    """A finished request. It *is* its text (so reference-style code gets a string), with:

    request_id; prompt_ids; output_ids (new tokens; a stop token is excluded, the tokens of a
    stop string are included); finish_reason ("stop", "length", "cancelled" or "error");
    stop_reason (the stop string or stop token id that ended it; None for EOS and the other
    reasons, as OpenAI/vLLM); error (message or None); logprobs (per output token, when
    asked); top_logprobs (per output token: [(token_id, logprob), ...]); prompt_logprobs and
    prompt_top_logprobs (aligned with prompt_ids, None first, when echo was asked).

    Picklable and deep-copyable (a str subclass needs `__reduce__` for its attributes).
    """

    def __new__(cls, text: str, **fields):
        unknown = sorted(set(fields) - set(_COMPLETION_FIELDS))
        if unknown:
            raise TypeError(f"Completion: unknown fields {unknown}")
        if fields.get("request_id") is None:
            raise TypeError("Completion: request_id is required")
        obj = super().__new__(cls, text)
        obj.text = str(text)
        for name, default in _COMPLETION_FIELDS.items():
            value = fields.get(name, default)
            setattr(obj, name, list(value) if name in _LIST_FIELDS else value)
        return obj

    def fields(self) -> dict:
        """Every attribute but the text, as keyword arguments of `Completion(text, ...)`."""
        return {name: getattr(self, name) for name in _COMPLETION_FIELDS}

    def __reduce__(self):
        return (_rebuild_completion, (self.text, self.fields()))

    def to_dict(self) -> dict:
        out = {"request_id": self.request_id, "prompt_ids": self.prompt_ids,
               "output_ids": self.output_ids, "text": self.text,
               "finish_reason": self.finish_reason}
        for name in ("stop_reason", "error", "logprobs", "top_logprobs", "prompt_logprobs",
                     "prompt_top_logprobs"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def _rebuild_completion(text: str, fields: dict) -> Completion:
    return Completion(text, **fields)


Event = Union[Completion, TokenEvent]


def error_completion(request_id: str, message: str, prompt_ids=(), output_ids=(),
                     text: str = "") -> Completion:
    """The Completion of a request that failed: finish_reason "error" with the message."""
    return Completion(text, request_id=request_id, prompt_ids=prompt_ids, output_ids=output_ids,
                      finish_reason="error", error=message)

"""Admission checks: what a Request must satisfy for one model, and its prompt as token ids.

`Request` checks what it can alone; here come the checks that need the model (vocabulary,
sequence_len, pad id) and the tokenizer. Every failure is a `RequestError` carrying the
field; the scheduler turns it into that request's Completion with finish_reason "error".
"""

from __future__ import annotations

import dataclasses

from grok.serving.requests import Request, RequestError
from grok.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class ModelLimits:
    """What admission needs to know of the model (an Engine has these attributes)."""

    vocab_size: int
    sequence_len: int
    pad_token: int

    @classmethod
    def of(cls, engine) -> "ModelLimits":
        return cls(int(engine.vocab_size), int(engine.sequence_len), int(engine.pad_token))


def prepare(request: Request, tokenizer: Tokenizer, limits: ModelLimits) -> tuple[Request, list]:
    """(the request re-validated, its prompt as token ids), or RequestError for the field.

    A text prompt is refused before tokenizing when even a lower bound of its token count
    (`tokenizer.min_tokens`) leaves no room for max_tokens.
    """
    if not isinstance(request, Request):
        raise ValueError(f"expected a Request, got {type(request).__name__}")
    request = request.validated()      # fields changed after construction fail here
    if request.top_k > limits.vocab_size:
        raise RequestError("top_k", request.top_k, f"must be at most the vocabulary size "
                                                   f"{limits.vocab_size}, got {request.top_k}")
    outside = [t for t in request.stop_tokens if t >= limits.vocab_size]
    if outside:
        raise RequestError("stop_tokens", request.stop_tokens,
                           f"has {outside[0]}, outside the vocabulary [0, {limits.vocab_size})")
    room = limits.sequence_len - request.max_tokens   # prompt tokens that fit
    if room < 1:
        raise RequestError("max_tokens", request.max_tokens,
                           f"{request.max_tokens} leaves no room for a prompt in "
                           f"sequence_len {limits.sequence_len}")
    if isinstance(request.prompt, str):
        bound = tokenizer.min_tokens(request.prompt)
        if bound > room:
            raise RequestError("prompt", request.prompt,
                               f"is too long: at least {bound} tokens, plus "
                               f"max_tokens ({request.max_tokens}) is beyond sequence_len "
                               f"{limits.sequence_len}")
        try:
            ids = [int(t) for t in tokenizer.encode(request.prompt)]
        except ValueError as e:
            raise RequestError("prompt", request.prompt, f"cannot be tokenized: {e}") from None
    else:
        ids = list(request.prompt)
    if not ids:
        raise RequestError("prompt", request.prompt, "encodes to no tokens")
    bad = [t for t in ids if not 0 <= t < limits.vocab_size]
    if bad:
        raise RequestError("prompt", request.prompt, f"has token ids outside the vocabulary "
                                                     f"[0, {limits.vocab_size}): {bad[:5]}")
    if all(t == limits.pad_token for t in ids):
        raise RequestError("prompt", request.prompt, f"is only the pad id {limits.pad_token}: "
                           "a pad token is an invisible key, so there is nothing to continue")
    total = len(ids) + request.max_tokens
    if total > limits.sequence_len:
        raise RequestError("max_tokens", request.max_tokens,
                           f"{request.max_tokens} plus the prompt's {len(ids)} tokens is "
                           f"{total}, beyond sequence_len {limits.sequence_len}")
    return request, ids

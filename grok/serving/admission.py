"""Admission checks: what a Request must satisfy for one model, and its prompt as token ids.

`Request` checks what it can alone; here come the checks that need the model (vocabulary,
sequence_len, pad id) and the tokenizer. Every failure is a `ValueError` naming the field;
the scheduler turns it into that request's Completion with finish_reason "error".
"""

from __future__ import annotations

import dataclasses

from grok.serving.requests import Request


@dataclasses.dataclass(frozen=True)
class ModelLimits:
    """What admission needs to know of the model (an Engine has these attributes)."""

    vocab_size: int
    sequence_len: int
    pad_token: int

    @classmethod
    def of(cls, engine) -> "ModelLimits":
        return cls(int(engine.vocab_size), int(engine.sequence_len), int(engine.pad_token))


def prepare(request: Request, tokenizer, limits: ModelLimits) -> tuple[Request, list]:
    """(the request re-validated, its prompt as token ids), or ValueError naming the field.

    A text prompt is refused before tokenizing when even a lower bound of its token count
    (`tokenizer.min_tokens`, where the tokenizer has it) leaves no room for max_len.
    """
    if not isinstance(request, Request):
        raise ValueError(f"expected a Request, got {type(request).__name__}")
    request = request.validated()      # fields changed after construction fail here
    if request.top_k > limits.vocab_size:
        raise ValueError(f"Request.top_k must be at most the vocabulary size "
                         f"{limits.vocab_size}, got {request.top_k}")
    room = limits.sequence_len - request.max_len   # prompt tokens that fit
    if room < 1:
        raise ValueError(f"Request.max_len {request.max_len} leaves no room for a prompt in "
                         f"sequence_len {limits.sequence_len}")
    if isinstance(request.prompt, str):
        bound = getattr(tokenizer, "min_tokens", None)
        if bound is not None and bound(request.prompt) > room:
            raise ValueError(f"Request.prompt is too long: at least {bound(request.prompt)} "
                             f"tokens, plus max_len ({request.max_len}) is beyond sequence_len "
                             f"{limits.sequence_len}")
        ids = [int(t) for t in tokenizer.encode(request.prompt)]
    else:
        ids = list(request.prompt)
    if not ids:
        raise ValueError("Request.prompt encodes to no tokens")
    bad = [t for t in ids if not 0 <= t < limits.vocab_size]
    if bad:
        raise ValueError(f"Request.prompt has token ids outside the vocabulary "
                         f"[0, {limits.vocab_size}): {bad[:5]}")
    if all(t == limits.pad_token for t in ids):
        raise ValueError(f"Request.prompt is only the pad id {limits.pad_token}: a pad token is "
                         f"an invisible key, so there is nothing to continue")
    total = len(ids) + request.max_len
    if total > limits.sequence_len:
        raise ValueError(f"Request: prompt ({len(ids)} tokens) plus max_len ({request.max_len}) "
                         f"is {total}, beyond sequence_len {limits.sequence_len}")
    return request, ids

"""The Request fields of structured outputs and logit processing: checks and normal forms.

Constraints (at most one): `json_schema` (a dict or JSON text), `regex`, `choice` (a list of
strings), `grammar` (Lark or GBNF text). Logit processing: `logit_bias` ({token id: bias in
[-100, 100]}, at most MAX_LOGIT_BIAS entries), `min_p` in [0, 1], `presence_penalty` and
`frequency_penalty` in [-2, 2], `repetition_penalty` in (0, 2]... as OpenAI and vLLM bound
them, and `min_tokens` >= 0 (EOS and stop tokens are not sampled before that many tokens).

Every value is normalised to plain Python (JSON text, tuples) so a Request still travels as
JSON between the processes of a multi-host job; a bad one raises RequestError carrying the
field. Constraints are compiled here (grok.serving.structured.grammars, cached),
so a bad schema or grammar fails when the Request is made, before it is queued.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
from typing import Any, Iterator, Optional

from grok.engine.logits_processing import MAX_LOGIT_BIAS
from grok.serving.request_error import RequestError
from grok.serving.structured import grammars
from grok.serving.structured.grammars import Constraint

CONSTRAINT_FIELDS = ("json_schema", "regex", "choice", "grammar")
_KIND = {"json_schema": "json", "regex": "regex", "choice": "choice", "grammar": "grammar"}
MAX_BIAS = 100.0
MAX_REPETITION_PENALTY = 2.0     # vLLM's bound is (0, 2]
_PENALTY_RANGE = (-2.0, 2.0)     # OpenAI's presence/frequency penalty range


def _number(name: str, value, low: float, high: float, low_open: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    number = float(value) if ok else math.nan
    if not (math.isfinite(number) and (number > low if low_open else number >= low)
            and number <= high):
        bound = f"({low}" if low_open else f"[{low}"
        raise RequestError(name, value, f"must be a number in {bound}, {high}], got {value!r}")
    return number


def _logit_bias(value) -> tuple:
    """{token id (int or its decimal string): bias} or (id, bias) pairs -> sorted pairs."""
    if value is None:
        return ()
    items = value.items() if isinstance(value, dict) else value
    try:
        pairs = [(k, v) for k, v in items]
    except (TypeError, ValueError):
        raise RequestError("logit_bias", value,
                           f"must map token ids to biases, got {value!r}") from None
    if len(pairs) > MAX_LOGIT_BIAS:
        raise RequestError("logit_bias", len(pairs),
                           f"has {len(pairs)} entries, at most {MAX_LOGIT_BIAS}")
    out = {}
    for key, bias in pairs:
        token = int(key) if isinstance(key, str) and key.isdigit() else key
        if not isinstance(token, numbers.Integral) or isinstance(token, bool) or token < 0:
            raise RequestError("logit_bias", key,
                               f"keys must be token ids (ints >= 0), got {key!r}")
        out[int(token)] = _number("logit_bias", bias, -MAX_BIAS, MAX_BIAS)
    return tuple(sorted(out.items()))


@contextlib.contextmanager
def _as_field(name: str, value: Any) -> Iterator[None]:
    """A grammar library's ValueError ("<name> is not valid JSON: ...") as the field's
    RequestError."""
    try:
        yield
    except RequestError:
        raise
    except ValueError as e:
        raise RequestError(name, value, str(e).removeprefix(name).lstrip(": ")) from None


def normalise(request, set_) -> None:
    """Checks and normalises the fields of `request` (a Request in __post_init__) in place
    through `set_(name, value)`."""
    given = [f for f in CONSTRAINT_FIELDS if getattr(request, f) is not None]
    if len(given) > 1:
        raise RequestError(given[1], getattr(request, given[1]),
                           f"is one constraint too many: give at most one of "
                           f"{', '.join(CONSTRAINT_FIELDS)}; got {', '.join(given)}")
    if request.json_schema is not None:
        with _as_field("json_schema", request.json_schema):
            set_("json_schema", grammars.schema_text(request.json_schema, "json_schema"))
    if request.choice is not None:
        with _as_field("choice", request.choice):
            set_("choice", tuple(json.loads(grammars.choice_text(request.choice, "choice"))))
    for name in ("regex", "grammar"):
        value = getattr(request, name)
        if value is not None and not isinstance(value, str):
            raise RequestError(name, value, f"must be a string, got {type(value).__name__}")
    set_("logit_bias", _logit_bias(request.logit_bias))
    set_("min_p", _number("min_p", request.min_p, 0.0, 1.0))
    for name in ("presence_penalty", "frequency_penalty"):
        set_(name, _number(name, getattr(request, name), *_PENALTY_RANGE))
    set_("repetition_penalty", _number("repetition_penalty", request.repetition_penalty, 0.0,
                                       MAX_REPETITION_PENALTY, low_open=True))
    tokens = request.min_tokens
    if not isinstance(tokens, numbers.Integral) or isinstance(tokens, bool) or tokens < 0:
        raise RequestError("min_tokens", tokens, f"must be an int >= 0, got {tokens!r}")
    set_("min_tokens", int(tokens))
    constraint_of(request)      # compiles it: a bad schema or grammar fails here


def constraint_of(request) -> Optional[Constraint]:
    """The request's compiled constraint (cached), or None."""
    for name in CONSTRAINT_FIELDS:
        value = getattr(request, name)
        if value is not None:
            with _as_field(name, value):
                source = grammars.choice_text(value, name) if name == "choice" else value
                return grammars.check(_KIND[name], source, name)
    return None


def processes_logits(request) -> bool:
    """Whether the request needs the processed decode step (anything beyond plain sampling)."""
    return (constraint_of(request) is not None or bool(request.logit_bias)
            or request.min_p > 0 or request.presence_penalty != 0
            or request.frequency_penalty != 0 or request.repetition_penalty != 1
            or request.min_tokens > 0)

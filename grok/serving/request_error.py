"""RequestError: a bad request field as data, raised by the one validation of a request
(grok.serving.requests and the structured-output fields it checks) and read by every door."""

from __future__ import annotations

from typing import Any, Optional

class RequestError(ValueError):
    """A request field with a bad value, as data: `field` (the Request field, OpenAI's name),
    `value` (what was given) and `problem` ("must be in (0, 1], got 2"). The message is
    "<name> <problem>", where `name` is the field unless a door renamed it with `named` (the
    flag `--top-p`, the record key 'top_p', SamplingParams.top_p)."""

    def __init__(self, field: str, value: Any, problem: str, name: Optional[str] = None):
        self.field = field
        self.value = value
        self.problem = problem
        self.name = name or field
        super().__init__(f"{self.name} {problem}")

    def named(self, name: str) -> "RequestError":
        """The same error, its message naming the field as the door's user wrote it."""
        return RequestError(self.field, self.value, self.problem, name)

"""An OpenAI body's structured-output and logit-processing fields as Request fields.

One constraint at most per request, from whichever field the client used: chat's
`response_format` (json_object: any JSON object; json_schema: its `schema`), `tools` with
`tool_choice` (grok.serving.http.tools), or vLLM's `structured_outputs` (json, regex,
choice, grammar, json_object) on both endpoints. The constraint is compiled here, so a bad
schema or grammar is a 400 naming the field it came from (with llguidance's message) before
anything is queued; compiled grammars are cached, so the scheduler's Request check costs
nothing more.
"""

from __future__ import annotations

from typing import Optional

from grok.serving.http.errors import invalid
from grok.serving.http.protocol import ChatCompletionRequest
from grok.serving.http.tools import tool_grammar
from grok.serving.structured import grammars

# Request field -> the body field its errors name
def _checked(kind: str, source: str, field: str) -> None:
    try:
        grammars.check(kind, source, field)
    except ValueError as e:
        raise invalid(str(e), field) from None


def constraint_fields(body, chat: bool) -> tuple[dict, Optional[str]]:
    """(Request constraint fields, the body field they came from) of `body`."""
    given = []
    fmt = body.response_format if chat else None
    if fmt is not None and fmt.type != "text":
        given.append("response_format")
    tools_on = chat and body.tools and body.tool_choice != "none"
    if tools_on:
        given.append("tools")
    if body.structured_outputs is not None:
        given.append("structured_outputs")
    if len(given) > 1:
        raise invalid(f"give one of response_format, tools and structured_outputs, "
                      f"got {', '.join(given)}", given[1])
    if chat and body.tool_choice not in (None, "none") and not body.tools:
        raise invalid("tool_choice needs tools", "tool_choice")
    if not given:
        return {}, None
    field = given[0]
    if field == "response_format":
        schema = (fmt.json_schema.schema_ if fmt.type == "json_schema" else None)
        source = (grammars.ANY_JSON_OBJECT if schema is None
                  else _schema(schema, "response_format.json_schema.schema"))
        _checked("json", source, "response_format")
        return {"json_schema": source}, field
    if field == "tools":
        choice = body.tool_choice or "auto"
        if not isinstance(choice, str):
            names = [t.function.name for t in body.tools]
            if choice.function.name not in names:
                raise invalid(f"tool_choice names {choice.function.name!r}, which is not in "
                              f"tools ({', '.join(names)})", "tool_choice")
            choice = choice.model_dump()
        tools = [t.model_dump() for t in body.tools]
        source = tool_grammar(tools, choice, body.parallel_tool_calls is not False)
        _checked("grammar", source, "tools")
        return {"grammar": source}, field
    so = body.structured_outputs
    if so.json_ is not None:
        source = _schema(so.json_, "structured_outputs.json")
        _checked("json", source, "structured_outputs.json")
        return {"json_schema": source}, field
    if so.json_object:
        return {"json_schema": grammars.ANY_JSON_OBJECT}, field
    if so.regex is not None:
        _checked("regex", so.regex, "structured_outputs.regex")
        return {"regex": so.regex}, field
    if so.choice is not None:
        try:
            text = grammars.choice_text(so.choice, "structured_outputs.choice")
        except ValueError as e:
            raise invalid(str(e), "structured_outputs.choice") from None
        _checked("choice", text, "structured_outputs.choice")
        return {"choice": tuple(so.choice)}, field
    _checked("grammar", so.grammar, "structured_outputs.grammar")
    return {"grammar": so.grammar}, field


def _schema(schema, field: str) -> str:
    try:
        return grammars.schema_text(schema, field)
    except ValueError as e:
        raise invalid(str(e), field) from None


def sampling_fields(body) -> dict:
    """The Request's logit-processing fields (neutral where the body leaves them out)."""
    return {"logit_bias": dict(body.logit_bias or {}),
            "min_p": body.min_p or 0.0,
            "presence_penalty": body.presence_penalty or 0.0,
            "frequency_penalty": body.frequency_penalty or 0.0,
            "repetition_penalty": 1.0 if body.repetition_penalty is None
            else body.repetition_penalty,
            "min_tokens": body.min_tokens}


def tool_choice_forces_calls(body) -> bool:
    """Whether every answer is tool calls (tool_choice required or a named function)."""
    return bool(body.tools) and body.tool_choice not in (None, "none", "auto")


def uses_tools(body) -> bool:
    """Whether a chat body offers tools the answer may call (a completions body has none)."""
    return (isinstance(body, ChatCompletionRequest) and bool(body.tools)
            and body.tool_choice != "none")


"""Tool calling for a base model: how tools are shown, how a call is written, its grammar.

Grok-1 has no tool format of its own, so the chat template shows the functions in a system
message (the call format, then one compact signature line per function) and asks for calls
written as tagged JSON, one per line:

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

`tools_prompt` is that system message (prepended to the conversation unless tool_choice is
"none"); an assistant message with `tool_calls` is rendered as its calls in this form, and a
`tool` message as a "Tool" turn holding the tool's result.

The grammar (Lark, with each function's call as an embedded JSON schema: name a constant,
arguments the function's `parameters`) forces what tool_choice asks:
- "required": one call (or up to MAX_PARALLEL_CALLS, one per line, with parallel_tool_calls)
  to any function;
- {"type": "function", "function": {"name": N}}: calls to N only;
- "auto": text that does not start with "<", or calls (the model chooses);
- "none": no grammar, no tools shown.
grok.serving.http.tool_calls reads the calls back from the text, whole or as it streams.
"""

from __future__ import annotations

import json
from typing import Optional

from grok.serving.http.tool_signatures import signature
from grok.serving.structured.grammars import JSON_LAYOUT

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_PARALLEL_CALLS = 8       # calls in one answer at most (the grammar ends there)
EMPTY_PARAMETERS = {"type": "object", "properties": {}}

TOOLS_INTRO = ("Functions (to call one, answer "
               f'{OPEN}{{"name": ..., "arguments": {{...}}}}{CLOSE}; several: one per line):\n')


def function_of(tool: dict) -> dict:
    return tool["function"]


def tools_prompt(tools: list) -> str:
    """The system message that shows `tools` (OpenAI's function tools) to the model: the
    call format, then one signature line per function (grok.serving.http.tool_signatures)."""
    return TOOLS_INTRO + "\n".join(signature(function_of(t)) for t in tools)


def transcript(messages, tools: Optional[list], shown: bool) -> list[tuple[str, str]]:
    """Chat messages (protocol.ChatMessage) as the template's (role, text) turns: the tools'
    system message first when `shown`, assistant tool_calls as tagged calls, tool results
    as "tool" turns."""
    turns = [("system", tools_prompt([t.model_dump() for t in tools]))] if shown and tools else []
    for m in messages:
        text = m.text
        if m.role == "assistant" and m.tool_calls:
            calls = "\n".join(render_call(c.function.name, c.function.arguments)
                              for c in m.tool_calls)
            text = f"{text}\n{calls}" if text else calls
        turns.append((m.role, text))
    return turns


def render_call(name: str, arguments: str) -> str:
    """One call as the model writes it; `arguments` is OpenAI's JSON text of them."""
    try:
        args = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        args = arguments          # shown as given: history is not ours to fix
    return OPEN + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + CLOSE


def _call_rule(fn: dict) -> str:
    schema = {"type": "object",
              "properties": {"name": {"const": fn["name"]},
                             "arguments": fn.get("parameters") or EMPTY_PARAMETERS},
              "required": ["name", "arguments"], "additionalProperties": False,
              "x-guidance": JSON_LAYOUT}
    return f'"{OPEN}" %json {json.dumps(schema, ensure_ascii=False)} "{CLOSE}"'


def tool_grammar(tools: list, choice, parallel: bool) -> Optional[str]:
    """The Lark grammar tool_choice asks for (None for "none")."""
    if choice == "none":
        return None
    functions = [function_of(t) for t in tools]
    if isinstance(choice, dict):
        functions = [f for f in functions if f["name"] == choice["function"]["name"]]
    rules = [f"call_{i}: {_call_rule(fn)}" for i, fn in enumerate(functions)]
    call = "call: " + " | ".join(f"call_{i}" for i in range(len(functions)))
    n = MAX_PARALLEL_CALLS if parallel else 1
    more = [f'more_{k}: "\\n" call' + (f" more_{k + 1}?" if k + 1 < n else "")
            for k in range(1, n)]
    calls = "calls: call" + (" more_1?" if n > 1 else "")
    start = "start: calls | TEXT\nTEXT: /[^<](.|\\n)*/" if choice == "auto" else "start: calls"
    return "\n".join([start, calls] + more + [call] + rules) + "\n"

"""Tool calling for a base model: how tools are shown, how a call is written, its grammar.

Grok-1 has no tool format of its own, so the chat template shows the functions in a system
message and asks for calls written as tagged JSON, one per line:

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
`parse_calls` reads calls back from the text: OpenAI's `tool_calls` with fresh ids.
"""

from __future__ import annotations

import json
import secrets
from typing import Optional

from grok.serving.structured.grammars import JSON_LAYOUT

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_PARALLEL_CALLS = 8       # calls in one answer at most (the grammar ends there)
EMPTY_PARAMETERS = {"type": "object", "properties": {}}

TOOLS_INTRO = ("You can call these functions. To call one, answer with a line\n"
               f'{OPEN}{{"name": <function name>, "arguments": <arguments as JSON>}}{CLOSE}\n'
               "and nothing else (several calls: one such line each). The functions:\n")


def function_of(tool: dict) -> dict:
    return tool["function"]


def tools_prompt(tools: list) -> str:
    """The system message that shows `tools` (OpenAI's function tools) to the model."""
    lines = []
    for tool in tools:
        fn = function_of(tool)
        entry = {"name": fn["name"]}
        if fn.get("description"):
            entry["description"] = fn["description"]
        entry["parameters"] = fn.get("parameters") or EMPTY_PARAMETERS
        lines.append(json.dumps(entry, ensure_ascii=False))
    return TOOLS_INTRO + "\n".join(lines)


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


def parse_calls(text: str) -> Optional[list]:
    """OpenAI tool_calls from a text of tagged calls (one per line), or None when the text is
    not calls (with tool_choice "auto" the model may answer in words)."""
    calls = []
    for line in text.strip().split("\n"):
        if not (line.startswith(OPEN) and line.endswith(CLOSE)):
            return None
        try:
            call = json.loads(line[len(OPEN):-len(CLOSE)])
        except json.JSONDecodeError:
            return None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        calls.append({"id": f"call_{secrets.token_hex(12)}", "type": "function",
                      "function": {"name": call["name"],
                                   "arguments": json.dumps(call.get("arguments", {}),
                                                           ensure_ascii=False)}})
    return calls or None


def tool_call_deltas(calls: list) -> list:
    """Streamed `delta.tool_calls` entries as OpenAI sends them: per call, its id, type and
    name with empty arguments, then its arguments."""
    deltas = []
    for i, call in enumerate(calls):
        fn = call["function"]
        deltas.append({"index": i, "id": call["id"], "type": "function",
                       "function": {"name": fn["name"], "arguments": ""}})
        deltas.append({"index": i, "function": {"arguments": fn["arguments"]}})
    return deltas

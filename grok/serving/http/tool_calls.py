"""Tool calls read back from the generated text as it comes: `CallReader`.

The grammar (grok.serving.http.tools) has the model write each call as

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

one per line, in this exact layout (JSON written as Python writes it, properties in the
schema's order). The reader takes the text in pieces (each token's text while streaming, or
the whole answer at once) and gives OpenAI's chat deltas as soon as they are known, the way
OpenAI streams them:

- an answer whose first character is not "<" is text (tool_choice "auto"): `{"content": ...}`
  as it comes;
- for each call, once its name is written: `{"tool_calls": [{"index", "id", "type":
  "function", "function": {"name", "arguments": ""}}]}`; then its arguments' JSON text in
  fragments as they are generated: `{"tool_calls": [{"index", "function": {"arguments"}}]}`.

The non-streamed response reads its `tool_calls` from the same reader, so a streamed call
reassembles to exactly the call of the same request not streamed (arguments are the model's
JSON text, not re-serialised). An answer cut short (`max_tokens`) keeps the calls so far, the
last one's arguments as far as they were written, as OpenAI does.
"""

from __future__ import annotations

import secrets
from typing import Optional

from grok.serving.http.tools import CLOSE, OPEN

NAME_START = OPEN + '{"name": "'
ARGUMENTS_START = ', "arguments": '
CALL_END = "}" + CLOSE
SEPARATOR = "\n"


class CallReader:
    """One choice's answer read as text or tool calls; see the module docstring.

    `mode`: None until the first character, then "text" or "calls" ("broken" when the text
    leaves the call layout: nothing more is read from it). `calls`: OpenAI's tool_calls so far.
    """

    def __init__(self):
        self.mode: Optional[str] = None
        self.calls: list[dict] = []
        self._text = ""            # calls mode: text not consumed yet
        self._state = "open"       # open | name | arguments | end
        self._depth = 0            # arguments: brackets open (outside strings)
        self._in_string = False
        self._escaped = False

    def feed(self, text: str) -> list[dict]:
        """The chat deltas the next piece of text completes."""
        if self.mode is None and text:
            self.mode = "calls" if text.startswith("<") else "text"
        if self.mode == "text":
            return [{"content": text}] if text else []
        if self.mode != "calls":
            return []
        self._text += text
        deltas = []
        while True:
            delta, progressed = self._step()
            if delta is not None:
                deltas.append({"tool_calls": [delta]})
            if not progressed:
                return deltas

    def _expect(self, literal: str, state: str) -> bool:
        """Consumes `literal` when the text has it; "broken" when the text cannot be it."""
        if self._text.startswith(literal):
            self._text, self._state = self._text[len(literal):], state
            return True
        if not literal.startswith(self._text):
            self.mode, self._state = "broken", "broken"
        return False

    def _step(self) -> tuple[Optional[dict], bool]:
        """(a delta or None, whether anything was consumed)."""
        if self._state == "open":
            start = (SEPARATOR if self.calls else "") + NAME_START
            return None, self._expect(start, "name")
        if self._state == "name":
            return self._name()
        if self._state == "arguments":
            return self._arguments()
        if self._state == "end":
            return None, self._expect(CALL_END, "open")
        return None, False

    def _name(self) -> tuple[Optional[dict], bool]:
        end = self._text.find('"')        # function names hold no quotes or escapes
        if end < 0 or len(self._text) < end + 1 + len(ARGUMENTS_START):
            return None, False
        name, rest = self._text[:end], self._text[end + 1:]
        if not rest.startswith(ARGUMENTS_START):
            self.mode, self._state = "broken", "broken"
            return None, False
        self._text, self._state = rest[len(ARGUMENTS_START):], "arguments"
        call = {"id": f"call_{secrets.token_hex(12)}", "type": "function",
                "function": {"name": name, "arguments": ""}}
        self.calls.append(call)
        return {"index": len(self.calls) - 1, "id": call["id"], "type": "function",
                "function": {"name": name, "arguments": ""}}, True

    def _arguments(self) -> tuple[Optional[dict], bool]:
        """The arguments' JSON value up to its end or the text's, bracket depth tracked."""
        taken = 0
        for ch in self._text:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                if self._depth == 0:      # the call's own "}": a scalar's end
                    self._state = "end"
                    break
                self._depth -= 1
            taken += 1
            if self._depth == 0 and not self._in_string and ch in '}]"':
                self._state = "end"
                break
        if not taken:
            return None, self._state == "end"
        fragment, self._text = self._text[:taken], self._text[taken:]
        self.calls[-1]["function"]["arguments"] += fragment
        return {"index": len(self.calls) - 1, "function": {"arguments": fragment}}, True


def read_calls(text: str) -> Optional[list]:
    """OpenAI tool_calls of a whole answer, or None when it is text."""
    reader = CallReader()
    reader.feed(text)
    return reader.calls if reader.mode == "calls" else None

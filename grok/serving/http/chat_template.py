"""The chat template: how /v1/chat/completions turns `messages` into one prompt.

Grok-1 is a base model with no chat format of its own, so the default is a plain transcript
that a base model continues naturally:

    System: {content}

    User: {content}

    Assistant: {content}

    ...

    Assistant:

each message as its role's line (a "developer" message as a system one, a tool's result as
"Tool: ..."; grok.serving.http.tools shows tools and writes calls), blank lines
between, and the prompt ending with "Assistant:" for the model to continue. Generation stops
at "\\nUser:" (the model starting the user's next turn) besides the request's own `stop`.

`--chat-template FILE` replaces it with a JSON object of the same fields as `ChatTemplate`:
{"system": "...{content}...", "user": "...", "assistant": "...", "generation_prompt": "...",
 "stop": ["..."]}; each role's string must contain `{content}` once, which is replaced by the
message's text (no other braces are interpreted).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

PLACEHOLDER = "{content}"
ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"developer": "system"}   # OpenAI's newer name for the system role


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    system: str = "System: {content}\n\n"
    user: str = "User: {content}\n\n"
    assistant: str = "Assistant: {content}\n\n"
    tool: str = "Tool: {content}\n\n"     # a tool's result (see grok.serving.http.tools)
    generation_prompt: str = "Assistant:"
    stop: tuple[str, ...] = ("\nUser:",)

    def __post_init__(self):
        for role in ROLES:
            text = getattr(self, role)
            if not isinstance(text, str) or text.count(PLACEHOLDER) != 1:
                raise ValueError(f"chat template: '{role}' must be a string containing "
                                 f"{PLACEHOLDER} exactly once, got {text!r}")
        if not isinstance(self.generation_prompt, str):
            raise ValueError("chat template: 'generation_prompt' must be a string")
        stops = self.stop
        if isinstance(stops, str) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError("chat template: 'stop' must be a list of non-empty strings")
        object.__setattr__(self, "stop", tuple(stops))

    def render(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prompt for (role, text) messages, ending with the generation prompt."""
        parts = []
        for role, text in messages:
            role = ROLE_ALIASES.get(role, role)
            if role not in ROLES:
                raise ValueError(f"unknown chat role {role!r}")
            parts.append(getattr(self, role).replace(PLACEHOLDER, text))
        return "".join(parts) + self.generation_prompt

    @classmethod
    def load(cls, path: str) -> "ChatTemplate":
        """A template from a JSON file (see the module docstring); ValueError names the file."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"--chat-template {path}: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"--chat-template {path}: expected a JSON object")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"--chat-template {path}: unknown field(s) {unknown}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"--chat-template {path}: {e}") from None

"""A function tool as one compact line the base model reads: its signature, then what it does.

    get_weather(city: string, unit?: "c" | "f") - The weather in a city. city: a city name

Types are written TypeScript-like from the JSON schema of the parameters: `string`,
`integer`, `number`, `boolean`, `null`, `T[]` for arrays, `{a: T, b?: T}` for objects with
properties (`?`: not required), literal unions for `enum`, the literal for `const`, `A | B`
for `anyOf` / `oneOf` / a list of types, a `$ref`'s definition name, and `any` for the rest
(or past MAX_DEPTH). A line is a few times shorter than the schema's JSON, so tools cost
fewer tokens of every request's context; the grammar (grok.serving.http.tools) holds the
output to the full schema whatever the line leaves out.
"""

from __future__ import annotations

import json

MAX_DEPTH = 4            # nested schemas written out; deeper ones are `any`
SCALARS = ("string", "integer", "number", "boolean", "null")


def type_of(schema, depth: int = 0) -> str:
    """The TypeScript-like type of a JSON schema."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return "any"
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return " | ".join(type_of(s, depth + 1) for s in schema[key])
    if isinstance(schema.get("$ref"), str):
        return schema["$ref"].rsplit("/", 1)[-1] or "any"
    kind = schema.get("type")
    if isinstance(kind, list) and kind:
        return " | ".join(type_of({**schema, "type": k}, depth) for k in kind)
    if kind == "array":
        item = type_of(schema.get("items"), depth + 1)
        return f"({item})[]" if " | " in item else f"{item}[]"
    if kind == "object" or "properties" in schema:
        fields = _fields(schema, depth + 1)
        return "{" + ", ".join(fields) + "}" if fields else "object"
    return kind if kind in SCALARS else "any"


def _fields(schema: dict, depth: int) -> list[str]:
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return []
    required = schema.get("required") or ()
    return [f"{name}{'' if name in required else '?'}: {type_of(sub, depth)}"
            for name, sub in properties.items()]


def signature(function: dict) -> str:
    """One line for an OpenAI function (name, description, parameters)."""
    parameters = function.get("parameters") or {}
    line = f"{function['name']}({', '.join(_fields(parameters, 1))})"
    notes = [function["description"]] if function.get("description") else []
    properties = parameters.get("properties")
    if isinstance(properties, dict):
        notes += [f"{name}: {sub['description']}" for name, sub in properties.items()
                  if isinstance(sub, dict) and isinstance(sub.get("description"), str)]
    return line + (" - " + " ".join(" ".join(n.split()) for n in notes) if notes else "")

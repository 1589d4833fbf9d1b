"""A request's output constraint as an llguidance grammar, checked before it takes a slot.

Kinds (the names of vLLM's `structured_outputs`):
- "json": a JSON schema (text); OpenAI's `response_format` json_object is the schema
  {"type": "object"} (any object), json_schema its `schema`;
- "regex": a regular expression (Rust regex syntax) the whole output matches;
- "choice": the output is exactly one of a list of strings (JSON text of the list);
- "grammar": a Lark grammar (llguidance's dialect, which embeds JSON schemas with `%json`)
  or a GBNF one (llama.cpp's).

`check(kind, source, field)` compiles the grammar without a tokenizer and returns it, or
raises ValueError naming the field with llguidance's message. Compile work is bounded:
sources are at most MAX_SOURCE_CHARS, and llguidance's parser limits (fuel for building
the lexer, grammar size, items per step) stop a pathological grammar instead of running long;
verbose errors are off (they would echo grammar internals). Results are kept in a small LRU
cache (a tool schema sent with every request compiles once).
"""

from __future__ import annotations

import functools
import json
from typing import NamedTuple

import llguidance

KINDS = ("json", "regex", "choice", "grammar")
MAX_SOURCE_CHARS = 64 * 1024      # a schema or grammar's text
MAX_CHOICES = 1024                # strings in a "choice" list
ANY_JSON_OBJECT = '{"type": "object"}'
# JSON is written as Python's json.dumps writes it (", " and ": ", no other whitespace): a
# base model given free whitespace can pad forever. A schema's own "x-guidance" options win.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def parser_limits() -> llguidance.LLParserLimits:
    """llguidance's limits for our grammars: about 20 ms of lexer building at most
    (initial fuel 1M at ~50k/ms), 200k grammar symbols, and its per-step defaults."""
    return llguidance.LLParserLimits(initial_lexer_fuel=1_000_000, max_grammar_size=200_000,
                                     verbose_errors=False)


class Constraint(NamedTuple):
    """A checked constraint: its kind, its source text and the grammar llguidance runs."""

    kind: str
    source: str
    grammar: str


def _to_grammar(kind: str, source: str) -> str:
    if kind == "json":
        return llguidance.LLMatcher.grammar_from_json_schema(source, defaults=JSON_LAYOUT)
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(source)
    if kind == "choice":
        options = json.loads(source)
        return llguidance.LLMatcher.grammar_from_lark(
            "start: " + " | ".join(json.dumps(o, ensure_ascii=False) for o in options))
    return llguidance.grammar_from("grammar", source)   # Lark, or GBNF converted to Lark


@functools.lru_cache(maxsize=256)
def _compiled(kind: str, source: str) -> tuple[str, str]:
    """(grammar, error message or "")."""
    try:
        grammar = _to_grammar(kind, source)
    except ValueError as e:
        return "", str(e)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        grammar, None, limits=parser_limits())
    return grammar, (messages[0] if is_error else "")


def check(kind: str, source: str, field: str) -> Constraint:
    """The constraint `kind` of `source`, compiled and checked; ValueError naming `field`."""
    if kind not in KINDS:
        raise ValueError(f"{field}: unknown constraint kind {kind!r} (one of {KINDS})")
    if not isinstance(source, str) or not source:
        raise ValueError(f"{field} must be a non-empty string")
    if len(source) > MAX_SOURCE_CHARS:
        raise ValueError(f"{field} is too long: {len(source)} characters, at most "
                         f"{MAX_SOURCE_CHARS}")
    grammar, error = _compiled(kind, source)
    if error:
        raise ValueError(f"{field} is not a valid {_WHAT[kind]}: {error.strip()}")
    return Constraint(kind, source, grammar)


_WHAT = {"json": "JSON schema", "regex": "regular expression", "choice": "choice list",
         "grammar": "grammar"}


def schema_text(schema, field: str) -> str:
    """A JSON schema given as a dict or JSON text -> its JSON text (ValueError naming field)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"{field} is not valid JSON: {e}") from None
    if not isinstance(schema, (dict, bool)):
        raise ValueError(f"{field} must be a JSON schema (an object), got {type(schema).__name__}")
    return json.dumps(schema, ensure_ascii=False)   # key order kept: it orders the output


def choice_text(choices, field: str) -> str:
    """A list of strings -> its JSON text (ValueError naming field)."""
    if isinstance(choices, str) or not isinstance(choices, (list, tuple)) or not choices:
        raise ValueError(f"{field} must be a non-empty list of strings")
    if len(choices) > MAX_CHOICES or not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"{field} must be at most {MAX_CHOICES} non-empty strings")
    return json.dumps(list(choices), ensure_ascii=False)

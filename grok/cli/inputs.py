"""Requests from the command line and input files: `read_items` and `make_request`.

Every request gets a seed of its own: request 0 uses `--seed` itself (so a single prompt
samples like the reference's run.py), request i > 0 a seed hashed from (--seed, i), so the
streams of one run never repeat those of a run with another --seed. A bad field is the
Request's `RequestError`, renamed from its field to what the user typed: the flag (`--top-p`)
or the record key ('top_p').
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

from grok.cli.structured_flags import request_fields as structured_request_fields
from grok.cli.flags import FIELD_NAMES, RECORD_FIELDS, RECORD_KEYS
from grok.loading import UsageError
from grok.serving.requests import Request, RequestError, request_seed


@dataclasses.dataclass
class Item:
    """One input request: a Request, or the error that stopped it being one."""
    index: int
    label: str                      # the prompt as shown in text output
    request: Any = None             # grok.serving.requests.Request
    error: Optional[str] = None
    field: Optional[str] = None     # the Request field a bad record or flag set (error's field)
    user_id: Optional[str] = None   # the record's own request_id, echoed in JSON output



def make_request(record, args, index: int) -> Request:
    """A Request from a prompt string or an input object; a bad field is a RequestError
    naming the flag or record key that set it (other ValueErrors: a malformed record)."""
    if isinstance(record, str):
        record = {"prompt": record}
    if not isinstance(record, dict):
        raise ValueError(f"expected a prompt string or an object, got {type(record).__name__}")
    unknown = sorted(set(record) - RECORD_KEYS)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; known: {sorted(RECORD_KEYS)}")
    if ("prompt" in record) == ("prompt_ids" in record):
        raise ValueError("give exactly one of 'prompt' (text) and 'prompt_ids' (token ids)")
    key, kind = ("prompt", str) if "prompt" in record else ("prompt_ids", list)
    if not isinstance(record[key], kind):
        raise ValueError(f"'{key}' must be a {kind.__name__}, got {type(record[key]).__name__}")
    fields = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                  max_tokens=args.max_tokens, seed=request_seed(args.seed, index),
                  stop_tokens=tuple(args.stop_tokens), stop=tuple(args.stop),
                  logprobs=args.logprobs, echo=args.echo_logprobs)
    fields.update(structured_request_fields(args))
    from_record = {}
    for name, field in RECORD_FIELDS.items():
        if name in record:
            fields[field] = record[name]
            from_record[field] = repr(name)
    try:
        # stream=True always: the CLI times the first token and streams in input order.
        request = Request(prompt=record[key], request_id=str(index), stream=True, **fields)
    except RequestError as e:
        raise e.named(from_record.get(e.field) or FIELD_NAMES.get(e.field, (e.field,))[0]) \
            from None
    return request


def _read_records(path: str) -> list:
    """[(where, record or an Exception)] from a text, .jsonl or .json file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--input-file {path}: {e}") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"--input-file {path}: not valid JSON: {e}") from None
        if not isinstance(data, list):
            raise UsageError(f"--input-file {path}: expected a JSON list of prompts or objects")
        return [(f"{path}[{i}]", record) for i, record in enumerate(data)]
    lines = [(f"{path}:{n}", line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    return [(where, _json_record(line)) for where, line in lines] if path.endswith(".jsonl") \
        else lines


def _json_record(line: str):
    """A JSONL line's value, or the ValueError that its request will report."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        return ValueError(f"not valid JSON: {e}")
    except RecursionError:
        return ValueError("not valid JSON: nested too deeply")


def read_items(args, default_prompt: str) -> list[Item]:
    """Every request of this run, in input order (bad ones carry their error)."""
    records = [(f"--prompt {i + 1}", p) for i, p in enumerate(args.prompt or [])]
    if args.input_file is not None:
        from_file = _read_records(args.input_file)
        if not from_file:
            raise UsageError(f"--input-file {args.input_file}: no prompts in it (it is empty "
                             "or only blank lines)")
        records += from_file
    if not records:
        records = [("default prompt", default_prompt)]
    items = []
    for index, (where, record) in enumerate(records):
        fields = record if isinstance(record, dict) else {
            "prompt": record if isinstance(record, str) else where}
        item = Item(index, str(fields.get("prompt", fields.get("prompt_ids", where))))
        user_id = fields.get("request_id", fields.get("id"))
        item.user_id = None if user_id is None else str(user_id)
        try:
            if isinstance(record, Exception):
                raise record
            item.request = make_request(record, args, index)
        except RequestError as e:
            item.error, item.field = f"{where}: {e}", e.field
        except ValueError as e:
            item.error = f"{where}: {e}"
        items.append(item)
    return items

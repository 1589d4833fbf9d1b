"""Printing results: in input order, streamed text one request at a time, JSON that is always
valid JSON, and the run summary on stderr (stop strings are the scheduler's: its text never
holds one).

Streaming several requests: the first unfinished request (in input order) prints live; the
others' text is kept and printed when their turn comes, so each completion reads as one
piece under its own header instead of tokens interleaved line by line.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Optional

import jax

from grok.cli.inputs import Item
from grok.serving.results import Completion

STREAM_HEADER = "Output for prompt: {label} "


def finite_json(value: Any) -> tuple[Any, int]:
    """(value with every NaN/Infinity float replaced by None, how many were replaced)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, 1
    if isinstance(value, dict):
        pairs = [(k, finite_json(v)) for k, v in value.items()]
        return {k: v for k, (v, _) in pairs}, sum(n for _, (_, n) in pairs)
    if isinstance(value, (list, tuple)):
        pairs = [finite_json(v) for v in value]
        return [v for v, _ in pairs], sum(n for _, n in pairs)
    return value, 0


# jax.monitoring events whose durations add up to the time spent compiling a new shape.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
REPORTED_COMPILE_S = 0.05     # compiling while serving below this is not worth a mention


class RunStats:
    """Times of one run, from the events it saw; `summary()` is the line printed at the end.

    Shapes first met while serving (a batch of prompts no start-up compile covered) are
    compiled then; that time is counted apart (jax.monitoring's compile events), so prefill
    and decode figures are the model's own.
    """

    def __init__(self, load_s: Optional[float] = None, compile_s: Optional[float] = None):
        self.load_s, self.compile_s = load_s, compile_s
        self.start: Optional[float] = None
        self.first_token: Optional[float] = None
        self.end: Optional[float] = None
        self.output_tokens = self.prompt_tokens = self.requests = self.started = 0
        self.slots = self.first_wave = 0
        self.compiling_s = 0.0                 # compile time while serving
        self.compiling_before_first = 0.0      # ... of it before the first token
        self._listening = False

    def _on_event(self, event: str, duration: float, **_) -> None:
        if event in COMPILE_EVENTS:
            self.compiling_s += duration

    def begin(self, requests: int, slots: int) -> None:
        self.start, self.requests, self.slots = time.perf_counter(), requests, slots
        self.first_wave = min(requests, slots)
        if not self._listening:
            jax.monitoring.register_event_duration_secs_listener(self._on_event)
            self._listening = True

    def close(self) -> None:
        """Stops counting compile time (call when the run is over)."""
        if self._listening:
            jax.monitoring.unregister_event_duration_listener(self._on_event)
            self._listening = False

    def on_first_token(self) -> None:
        self.started += 1
        if self.first_token is None:
            self.first_token = time.perf_counter()
            self.compiling_before_first = self.compiling_s

    def on_result(self, completion: Completion) -> None:
        self.end = time.perf_counter()
        self.output_tokens += len(completion.output_ids)
        self.prompt_tokens += len(completion.prompt_ids)

    def summary(self) -> str:
        self.close()
        parts = []
        if self.load_s is not None:
            parts.append(f"load {self.load_s:.1f} s")
        if self.compile_s is not None:
            parts.append(f"compile {self.compile_s:.1f} s")
        if self.first_token is not None:
            prefill = self.first_token - self.start - self.compiling_before_first
            parts.append(f"prefill {1e3 * max(prefill, 0):.0f} ms (to the first token)")
            decoded = self.output_tokens - self.started
            seconds = ((self.end or self.first_token) - self.first_token
                       - (self.compiling_s - self.compiling_before_first))
            rate = f"{decoded / seconds:.1f} tokens/s" if seconds > 0 and decoded > 0 else "-"
            parts.append(f"decode {decoded} tokens in {max(seconds, 0):.2f} s = {rate}")
        if self.compiling_s >= REPORTED_COMPILE_S:
            parts.append(f"compiling new shapes while serving {self.compiling_s:.1f} s "
                         "(not in prefill or decode)")
        parts.append(f"{self.first_wave} of {self.slots} slots used")
        parts.append(f"{self.prompt_tokens} prompt + {self.output_tokens} generated tokens")
        return "Run summary: " + ", ".join(parts)


class ResultPrinter:
    """Prints results in input order as they complete, and streamed text as it arrives."""

    def __init__(self, args, items: list[Item], stats: RunStats):
        self.args, self.items, self.stats = args, items, stats
        self.results: dict[int, Any] = {}    # index -> Completion (None: an input error)
        self.buffers: dict[int, list] = {}   # streamed text waiting for its turn
        self.seen: set = set()
        self.next_index = 0
        self.header_printed: set = set()
        self.failed = False
        self.nonfinite = 0
        self.stream_file = sys.stderr if args.json else sys.stdout

    # ---- events -----------------------------------------------------------------------------
    def on_token(self, index: int, event) -> None:
        if index not in self.seen:
            self.seen.add(index)
            self.stats.on_first_token()
        if not self.args.stream:
            return
        text = event.text
        if index == self.next_index:
            self._write_stream(index, text)
        else:
            self.buffers.setdefault(index, []).append(text)

    def on_result(self, index: int, completion: Optional[Completion]) -> None:
        if completion is not None:
            self.stats.on_result(completion)
        self.results[index] = completion
        while self.next_index in self.results:
            index = self.next_index
            self._print(self.items[index], self.results.pop(index))
            self.next_index += 1
            if self.args.stream and self.buffers.get(self.next_index):
                self._write_stream(self.next_index, "".join(self.buffers.pop(self.next_index)))

    def finish(self) -> None:
        if self.nonfinite:
            print(f"note: {self.nonfinite} non-finite number(s) (NaN/Infinity) in the results "
                  "were written as null", file=sys.stderr)

    # ---- printing ---------------------------------------------------------------------------
    def _write_stream(self, index: int, text: str) -> None:
        out = self.stream_file
        if index not in self.header_printed:
            self.header_printed.add(index)
            out.write(STREAM_HEADER.format(label=self.items[index].label))
        out.write(text)
        out.flush()

    def _print(self, item: Item, completion: Optional[Completion]) -> None:
        error = item.error or (completion.error if completion is not None else None)
        self.failed |= error is not None
        if self.args.stream:
            if error is None:   # end this request's streamed piece
                self._write_stream(item.index, "".join(self.buffers.pop(item.index, [])) + "\n")
            elif item.index in self.header_printed:
                self.stream_file.write("\n")
        if self.args.json:
            record, replaced = finite_json(result_dict(item, completion, error))
            self.nonfinite += replaced
            print(json.dumps(record, allow_nan=False), flush=True)
        elif error is not None:
            print(f"Error for prompt {item.index}: {error}", flush=True)
        elif not self.args.stream:
            print(STREAM_HEADER.format(label=item.label) + completion.text, flush=True)
        if not self.args.json and error is None:
            for name in ("prompt_logprobs", "logprobs"):
                values = getattr(completion, name)
                if values:
                    print(f"  {name}: {[_rounded(v) for v in values]}")


def _rounded(value):
    return value if value is None or not math.isfinite(value) else round(value, 4)


def result_dict(item: Item, completion: Optional[Completion], error: Optional[str]) -> dict:
    """The JSON object printed for one request."""
    out = {"index": item.index, **(completion.to_dict() if completion is not None else {
        "prompt_ids": [], "output_ids": [], "text": "", "finish_reason": "error"})}
    out["request_id"] = item.user_id if item.user_id is not None else str(item.index)
    if item.request is not None and isinstance(item.request.prompt, str):
        out["prompt"] = item.request.prompt
    if error is not None:
        out.update(error=error, finish_reason="error")
    return out

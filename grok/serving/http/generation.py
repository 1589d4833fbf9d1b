"""POST /v1/completions and /v1/chat/completions: OpenAI bodies to scheduler requests and
their events back to OpenAI responses, whole or streamed as server-sent events.

Each choice (prompt x n) is one scheduler request. They are always streamed from the
scheduler (the server measures time to first token from them); a non-streaming response is
built from the Completions. Prompts are tokenized here so every length problem is a 400
naming the field before anything is queued. A streamed `echo` sends the prompt's text first,
without prompt logprobs (the engine scores the prompt with the last prefill chunk; the
non-streamed response has them).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from typing import Any, AsyncIterator, Union

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse

from grok.serving.http.responses import (
    CompletionLogprobs, chat_body, chat_choice, chat_chunk, chat_chunk_choice, chat_logprobs,
    completion_body, completion_choice, completion_chunk, new_id, usage)
from grok.serving.http.engine_loop import NotReady, QueueFull, is_completion
from grok.serving.http.errors import APIError, invalid
from grok.serving.http.protocol import MAX_SEED, ChatCompletionRequest, CompletionRequest
from grok.serving.http.structured_body import (API_FIELD, constraint_fields, sampling_fields,
                                               uses_tools)
from grok.serving.http.tools import parse_calls, tool_call_deltas
from grok.serving.admission import ModelLimits, prepare
from grok.serving.requests import Request
from grok.serving.http.streams import (CancellingStreamingResponse, RequestStream,
                                       collect_unless_disconnected)

DEFAULT_TEMPERATURE = 1.0       # OpenAI's defaults
DEFAULT_TOP_P = 1.0
# Request field (as admission's errors name it) -> the OpenAI field it came from.
REQUEST_TO_API_FIELD = {"max_len": "max_tokens", "top_k": "top_k", "temperature": "temperature",
                        "nucleus_p": "top_p", "rng_seed": "seed",
                        "stop_tokens": "stop_token_ids", "stop": "stop"}


@dataclasses.dataclass
class Choice:
    """One choice of a response: which scheduler request makes it, from which prompt."""

    index: int
    request_id: str
    prompt_index: int
    prompt_text: str                 # for echo
    sent: str = ""                   # text streamed so far
    tokens: int = 0                  # tokens streamed so far


@dataclasses.dataclass
class Job:
    """A validated generation request: its scheduler requests and how to answer."""

    response_id: str
    chat: bool
    body: Union[CompletionRequest, ChatCompletionRequest]
    prompt_ids: list[list[int]]
    choices: list[Choice]
    requests: list
    num_top: int                     # alternatives per token in logprobs
    logprobs: bool
    tool_calls: bool = False         # read tool calls from the text (chat with tools)


def prompt_token_ids(server, prompt: Union[str, list[int]], param: str) -> list[int]:
    """A prompt's token ids, checked against the vocabulary (400 naming `param`)."""
    backend = server.backend()
    try:
        ids = backend.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    except ValueError as e:   # e.g. a lone surrogate ("\ud800") in the JSON string
        raise invalid(f"{param} cannot be tokenized: {e}", param) from None
    if not ids:
        raise invalid(f"{param} encodes to no tokens", param)
    bad = [t for t in ids if not 0 <= t < backend.vocab_size]
    if bad:
        raise invalid(f"{param} has token ids outside the vocabulary [0, {backend.vocab_size}):"
                      f" {bad[:5]}", param)
    return ids


def build_job(server, body, prompts: list, chat: bool, extra_stops: tuple = ()) -> Job:
    """Validates lengths and settings and makes one scheduler request per choice."""
    backend = server.backend()
    param = "messages" if chat else "prompt"
    prompt_ids = [prompt_token_ids(server, p, param) for p in prompts]
    longest = max(map(len, prompt_ids))
    max_tokens = body.max_new_tokens if chat else body.max_tokens
    limit_param = ("max_completion_tokens" if chat and body.max_completion_tokens
                   else "max_tokens")
    if longest >= backend.sequence_len:
        raise invalid(f"{param} has {longest} tokens; this model's context is "
                      f"{backend.sequence_len} (prompt plus new tokens)", param)
    if max_tokens is None:                 # chat default: whatever the context leaves
        max_tokens = backend.sequence_len - longest
    if longest + max_tokens > backend.sequence_len:
        raise invalid(f"{limit_param} {max_tokens} plus the prompt's {longest} tokens is beyond "
                      f"this model's context of {backend.sequence_len} tokens", limit_param)
    if body.top_k > backend.vocab_size:
        raise invalid(f"top_k must be at most the vocabulary size {backend.vocab_size}", "top_k")
    for t in body.stop_token_ids or ():
        if t >= backend.vocab_size:
            raise invalid(f"stop_token_ids has {t}, outside the vocabulary", "stop_token_ids")
    if chat:
        logprobs, num_top, echo = body.logprobs, body.top_logprobs or 0, False
    else:
        logprobs, num_top = body.logprobs is not None, body.logprobs or 0
        echo = body.echo and logprobs
    response_id = new_id("chatcmpl" if chat else "cmpl")
    constraint, _ = constraint_fields(body, chat)
    extra_fields = {**constraint, **sampling_fields(body)}
    choices, requests = [], []
    for p, ids in enumerate(prompt_ids):
        for j in range(body.n):
            index = p * body.n + j
            seed = ((body.seed + j) % (MAX_SEED + 1) if body.seed is not None
                    else secrets.randbelow(MAX_SEED + 1))
            request_id = f"{response_id}-{index}"
            text = prompts[p] if isinstance(prompts[p], str) else backend.tokenizer.decode(ids)
            choices.append(Choice(index, request_id, p, text))
            requests.append(_admissible(backend, param, dict(
                prompt=ids, request_id=request_id, max_len=max_tokens,
                temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
                nucleus_p=DEFAULT_TOP_P if body.top_p is None else body.top_p,
                top_k=body.top_k, rng_seed=seed, stop_tokens=tuple(body.stop_token_ids or ()),
                stop=body.stop_strings + tuple(extra_stops), stream=True, logprobs=logprobs,
                echo=echo, **extra_fields)))
    return Job(response_id, chat, body, prompt_ids, choices, requests, num_top, logprobs,
               chat and uses_tools(body))


def _admissible(backend, prompt_param: str, fields: dict) -> Request:
    """The Request, checked now as the scheduler will check it at admission (so what it would
    refuse is a 400 naming the field, not a failed generation)."""
    try:
        request = Request(**fields)
        prepare(request, backend.tokenizer, ModelLimits(backend.vocab_size,
                                                        backend.sequence_len, backend.pad_token))
    except ValueError as e:
        message = str(e)
        name = message.removeprefix("Request.").split(" ")[0].split(":")[0]
        param = (prompt_param if name == "prompt"
                 else REQUEST_TO_API_FIELD.get(name, API_FIELD.get(name)))
        raise invalid(message, param) from None
    return request


def start(server, job: Job) -> RequestStream:
    stream = RequestStream(server.engine, job.requests, [c.request_id for c in job.choices])
    try:
        stream.submit()
    except QueueFull as e:
        raise APIError(503, str(e), code="queue_full") from None
    except NotReady as e:
        raise APIError(503, str(e), code="not_ready") from None
    return stream


# ---- whole responses ----------------------------------------------------------------------
async def respond(server, job: Job, http_request: HTTPRequest):
    stream = start(server, job)
    if job.body.stream:
        return CancellingStreamingResponse(_sse(server, job, stream), stream,
                                           media_type="text/event-stream",
                                           headers={"Cache-Control": "no-cache"})
    done = await collect_unless_disconnected(stream, http_request)
    if done is None:                 # the client has gone: nobody reads this
        return JSONResponse({}, status_code=499)
    completions = [done[c.request_id] for c in job.choices]
    for completion in completions:
        if completion.finish_reason == "error":
            status = 503 if "shutting down" in (completion.error or "") else 500
            raise APIError(status, f"generation failed: {completion.error}")
    tokenizer = server.backend().tokenizer
    choices = []
    for choice, completion in zip(job.choices, completions):
        reason = completion.finish_reason
        stop_reason = getattr(completion, "stop_reason", None)
        if job.chat:
            lp = (chat_logprobs(tokenizer, job.num_top, completion.output_ids,
                                completion.logprobs or [], completion.top_logprobs)
                  if job.logprobs else None)
            calls = parse_calls(completion.text) if job.tool_calls else None
            if calls is not None:
                choices.append(chat_choice(choice.index, None, "tool_calls", lp, stop_reason,
                                           calls))
                continue
            choices.append(chat_choice(choice.index, completion.text, reason, lp, stop_reason))
            continue
        text, lp = completion.text, None
        if job.body.echo:
            text = choice.prompt_text + text
        if job.logprobs:
            builder = CompletionLogprobs(tokenizer, job.num_top)
            lp = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            parts = []
            if job.body.echo:
                prompt_lps = completion.prompt_logprobs or [None] * len(completion.prompt_ids)
                parts.append(builder.build(completion.prompt_ids, prompt_lps))
            parts.append(builder.build(completion.output_ids, completion.logprobs or [],
                                       completion.top_logprobs))
            for part in parts:
                for key in lp:
                    lp[key] += part[key]
        choices.append(completion_choice(choice.index, text, reason, lp, stop_reason))
    use = _usage(job, completions)
    maker = chat_body if job.chat else completion_body
    return JSONResponse(maker(job.response_id, server.model_name, choices, use))


def _usage(job: Job, completions: list) -> dict:
    prompt = sum(len(ids) for ids in job.prompt_ids)
    return usage(prompt, sum(len(c.output_ids) for c in completions))


# ---- streamed responses --------------------------------------------------------------------
def _sse(server, job: Job, stream: RequestStream) -> AsyncIterator[str]:
    return _chat_events(server, job, stream) if job.chat else _completion_events(server, job,
                                                                                 stream)


def _data(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _error_event(message: str) -> str:
    return _data(APIError(500, message).body())


async def _choice_chunks(job: Job, stream: RequestStream, completions: list, text_chunk,
                         finish_chunk, logprobs_of) -> AsyncIterator[str]:
    """The SSE chunks of every choice's events, shared by completions and chat: each token's
    text (and logprobs, when asked) as it comes; at a choice's end the text not streamed yet
    and its finish; an error event for a choice that failed. Finished Completions are appended
    to `completions` (for usage). `text_chunk(choice, text, lp)`, `finish_chunk(choice,
    completion)` and `logprobs_of(choice, token_event)` make the endpoint's own chunks."""
    by_id = {c.request_id: c for c in job.choices}
    async for event in stream.events():
        choice = by_id[event.request_id]
        if is_completion(event):
            if event.finish_reason == "error":
                yield _error_event(f"generation failed: {event.error}")
                continue
            rest = _rest(choice, event)
            completions.append(event)
            if rest:
                yield text_chunk(choice, rest, None)
            yield finish_chunk(choice, event)
            continue
        lp = logprobs_of(choice, event) if job.logprobs else None
        choice.sent += event.text
        if event.text or lp is not None:
            yield text_chunk(choice, event.text, lp)


async def _completion_events(server, job: Job, stream: RequestStream) -> AsyncIterator[str]:
    created, model, usage_on = int(time.time()), server.model_name, job.body.include_usage
    tokenizer = server.backend().tokenizer
    builders = {c.index: CompletionLogprobs(tokenizer, job.num_top) for c in job.choices}

    def chunk(choice: Choice, text: str, reason=None, lp=None, stop_reason=None) -> str:
        return _data(completion_chunk(
            job.response_id, model, created,
            [completion_choice(choice.index, text, reason, lp, stop_reason)],
            None, usage_on))

    def finish(choice: Choice, completion) -> str:
        return chunk(choice, "", completion.finish_reason, None,
                     getattr(completion, "stop_reason", None))

    def logprobs_of(choice: Choice, event) -> Any:
        return builders[choice.index].build([event.token_id], [event.logprob],
                                            [getattr(event, "top_logprobs", None)])

    if job.body.echo:
        for choice in job.choices:
            builders[choice.index].offset = len(choice.prompt_text)
            yield chunk(choice, choice.prompt_text)
    completions = []
    async for data in _choice_chunks(job, stream, completions,
                                     lambda choice, text, lp: chunk(choice, text, lp=lp),
                                     finish, logprobs_of):
        yield data
    if usage_on:
        yield _data(completion_chunk(job.response_id, model, created, [],
                                     _usage(job, completions), True))
    yield "data: [DONE]\n\n"


async def _chat_events(server, job: Job, stream: RequestStream) -> AsyncIterator[str]:
    created, model, usage_on = int(time.time()), server.model_name, job.body.include_usage
    tokenizer = server.backend().tokenizer

    def chunk(choice: Choice, delta: dict, reason=None, lp=None) -> str:
        return _data(chat_chunk(job.response_id, model, created,
                                [chat_chunk_choice(choice.index, delta, reason, lp)],
                                None, usage_on))

    def logprobs_of(choice: Choice, event) -> Any:
        return chat_logprobs(tokenizer, job.num_top, [event.token_id], [event.logprob],
                             [getattr(event, "top_logprobs", None)])

    def text_chunk(choice: Choice, text: str, lp) -> str:
        if job.tool_calls:
            return ""    # held: the whole answer tells text from tool calls
        return chunk(choice, {"content": text}, lp=lp)

    def finish(choice: Choice, completion) -> str:
        if not job.tool_calls:
            return chunk(choice, {}, completion.finish_reason)
        calls = parse_calls(completion.text)
        if calls is None:
            return (chunk(choice, {"content": completion.text})
                    + chunk(choice, {}, completion.finish_reason))
        return "".join(chunk(choice, {"tool_calls": [delta]}) for delta in
                       tool_call_deltas(calls)) + chunk(choice, {}, "tool_calls")

    for choice in job.choices:
        yield chunk(choice, {"role": "assistant", "content": ""})
    completions = []
    async for data in _choice_chunks(job, stream, completions, text_chunk, finish, logprobs_of):
        if data:
            yield data
    if usage_on:
        yield _data(chat_chunk(job.response_id, model, created, [],
                               _usage(job, completions), True))
    yield "data: [DONE]\n\n"


def _rest(choice: Choice, completion) -> str:
    """Text of the Completion not streamed yet (none when the events carried it all)."""
    text = completion.text
    return text[len(choice.sent):] if text.startswith(choice.sent) else ""

"""POST /v1/completions and /v1/chat/completions: OpenAI bodies to scheduler requests and
their events back to OpenAI responses, whole or streamed as server-sent events.

Each choice (prompt x n) is one scheduler request. They are always streamed from the
scheduler (the server measures time to first token from them); a non-streaming response is
built from the Completions. Prompts are tokenized here, once, and each request goes through
admission's checks (grok.serving.admission) before anything is queued, so what the scheduler
would refuse is a 400 naming the field (from RequestError.field). A streamed `echo` sends the prompt's text first,
without prompt logprobs (the engine scores the prompt with the last prefill chunk; the
non-streamed response has them). `max_tokens: 0` with `echo` scores the prompt alone: the
request runs for one token, which the response leaves out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from typing import Any, AsyncIterator, Optional, Union

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse

from grok.serving.http.responses import (
    CompletionLogprobs, chat_body, chat_choice, chat_chunk, chat_chunk_choice, chat_logprobs,
    completion_body, completion_choice, completion_chunk, new_id, usage)
from grok.serving.http.engine_loop import NotReady, QueueFull, is_completion
from grok.serving.http.errors import APIError, invalid
from grok.serving.http.protocol import MAX_SEED, ChatCompletionRequest, CompletionRequest
from grok.serving.http.structured_body import constraint_fields, sampling_fields, uses_tools
from grok.serving.http.tool_calls import CallReader, read_calls
from grok.serving.admission import ModelLimits, prepare
from grok.serving.requests import Request, RequestError
from grok.serving.http.streams import (CancellingStreamingResponse, RequestStream,
                                       collect_unless_disconnected)
from grok.serving.http.workers import max_text_chars

logger = logging.getLogger(__name__)

DEFAULT_TEMPERATURE = 1.0       # OpenAI's defaults
DEFAULT_TOP_P = 1.0


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
    score_only: bool = False         # max_tokens 0: the prompt's scores, no new tokens
    tool_calls: bool = False         # read tool calls from the text (chat with tools)


def prompt_token_ids(server, prompt: Union[str, list[int]], param: str) -> list[int]:
    """A prompt's token ids (a text prompt tokenized here, once; admission checks them). A
    prompt longer than the context could hold is refused before the work of tokenizing it."""
    backend = server.backend()
    unit, limit = (("characters", max_text_chars(backend.sequence_len)) if isinstance(prompt, str)
                   else ("tokens", backend.sequence_len))
    if len(prompt) > limit:
        raise invalid(f"{param} has {len(prompt)} {unit}, more than this model's context of "
                      f"{backend.sequence_len} tokens can hold", param)
    if not isinstance(prompt, str):
        return list(prompt)
    try:
        return backend.tokenizer.encode(prompt)
    except ValueError as e:   # e.g. a lone surrogate ("\ud800") in the JSON string
        raise invalid(f"{param} cannot be tokenized: {e}", param) from None


def _prompts_ids(server, body, prompts: list, param: str) -> list[list[int]]:
    """Each prompt's token ids, BOS first when the body asks for special tokens."""
    prompt_ids = [prompt_token_ids(server, p, param) for p in prompts]
    bos = server.backend().tokenizer.special_tokens.get("bos")
    if body.add_special_tokens and bos is not None:
        prompt_ids = [ids if ids[:1] == [bos[0]] else [bos[0]] + ids for ids in prompt_ids]
    return prompt_ids


def build_job(server, body, prompts: list, chat: bool, extra_stops: tuple = (),
              cache_salt: Optional[str] = None) -> Job:
    """Validates lengths and settings and makes one scheduler request per choice (work
    proportional to the prompts: run it on a worker, grok.serving.http.workers)."""
    backend = server.backend()
    param = "messages" if chat else "prompt"
    prompt_ids = _prompts_ids(server, body, prompts, param)
    longest = max(map(len, prompt_ids))
    max_tokens = body.max_new_tokens if chat else body.max_tokens
    score_only = max_tokens == 0            # (only the completions body allows 0)
    if score_only and not (body.echo and not body.stream):
        raise invalid("max_tokens 0 (scoring the prompt only) needs echo: true and no stream",
                      "max_tokens")
    if score_only:
        max_tokens = 1
    if longest >= backend.sequence_len:
        raise invalid(f"{param} has {longest} tokens; this model's context is "
                      f"{backend.sequence_len} (prompt plus new tokens)", param)
    if max_tokens is None:                 # chat default: whatever the context leaves
        max_tokens = backend.sequence_len - longest
    # Request field -> the body field that set it (where the names differ).
    api_field = {"prompt": param, "stop_tokens": "stop_token_ids",
                 "max_tokens": ("max_completion_tokens" if chat and body.max_completion_tokens
                                else "max_tokens")}
    if chat:
        logprobs, num_top, echo = body.logprobs, body.top_logprobs or 0, False
    else:
        logprobs, num_top = body.logprobs is not None, body.logprobs or 0
        echo = body.echo and logprobs
    response_id = new_id("chatcmpl" if chat else "cmpl")
    limits = ModelLimits(backend.vocab_size, backend.sequence_len, backend.pad_token)
    constraint, constraint_param = constraint_fields(body, chat)
    extra_fields = {**constraint, **sampling_fields(body)}
    api_field.update({name: constraint_param for name in constraint})
    choices, requests = [], []
    for p, ids in enumerate(prompt_ids):
        for j in range(body.n):
            index = p * body.n + j
            seed = ((body.seed + j) % (MAX_SEED + 1) if body.seed is not None
                    else secrets.randbelow(MAX_SEED + 1))
            request_id = f"{response_id}-{index}"
            try:
                request, _ = prepare(Request(
                    prompt=ids, request_id=request_id, max_tokens=max_tokens,
                    temperature=DEFAULT_TEMPERATURE if body.temperature is None
                    else body.temperature,
                    top_p=DEFAULT_TOP_P if body.top_p is None else body.top_p,
                    top_k=body.top_k, seed=seed, stop_tokens=tuple(body.stop_token_ids or ()),
                    stop=body.stop_strings + tuple(extra_stops), stream=True,
                    logprobs=logprobs, echo=echo, cache_salt=cache_salt,
                    ignore_eos=body.ignore_eos, **extra_fields), backend.tokenizer, limits)
            except RequestError as e:   # what admission would refuse: a 400 naming the field
                name = api_field.get(e.field, e.field)
                raise invalid(str(e.named(name)), name) from None
            text = prompts[p] if isinstance(prompts[p], str) else backend.tokenizer.decode(ids)
            choices.append(Choice(index, request_id, p, text))
            requests.append(request)
    return Job(response_id, chat, body, prompt_ids, choices, requests, num_top, logprobs,
               score_only, chat and uses_tools(body))


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
            raise generation_failure(completion)
    if job.score_only:
        completions = [_scores_only(c) for c in completions]
    tokenizer = server.backend().tokenizer
    choices = []
    for choice, completion in zip(job.choices, completions):
        reason = completion.finish_reason
        stop_reason = completion.stop_reason
        generated = completion.text + _stop_text(job, completion)
        if job.chat:
            lp = (chat_logprobs(tokenizer, job.num_top, completion.output_ids,
                                completion.logprobs or [], completion.top_logprobs)
                  if job.logprobs else None)
            calls = read_calls(completion.text) if job.tool_calls else None
            if calls is not None:
                choices.append(chat_choice(choice.index, None, _calls_reason(reason), lp,
                                           stop_reason, calls))
                continue
            choices.append(chat_choice(choice.index, generated, reason, lp, stop_reason))
            continue
        text = choice.prompt_text + generated if job.body.echo else generated
        lp = _completion_logprobs(tokenizer, job, choice, completion) if job.logprobs else None
        choices.append(completion_choice(choice.index, text, reason, lp, stop_reason))
    use = _usage(job, completions)
    maker = chat_body if job.chat else completion_body
    return JSONResponse(maker(job.response_id, server.model_name, choices, use))


def _scores_only(completion):
    """A max_tokens 0 request's Completion: the prompt and its scores, no new token."""
    fields = dict(completion.fields(), output_ids=[], finish_reason="length", stop_reason=None)
    fields.update(logprobs=[] if completion.logprobs is not None else None,
                  top_logprobs=[] if completion.top_logprobs is not None else None)
    return type(completion)("", **fields)


def _stop_text(job: Job, completion) -> str:
    """The stop string that ended the output, when include_stop_str_in_output asks for it."""
    if job.body.include_stop_str_in_output and isinstance(completion.stop_reason, str):
        return completion.stop_reason
    return ""


def _completion_logprobs(tokenizer, job: Job, choice: Choice, completion) -> dict:
    """A whole choice's logprobs; with echo the prompt's tokens first (the first one has no
    logprob), each with its top alternatives, text offsets into the echoed text."""
    lp: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                           "text_offset": []}
    parts = []
    if job.body.echo:
        prompt = completion.prompt_ids
        parts.append(CompletionLogprobs(tokenizer, job.num_top).build(
            prompt, completion.prompt_logprobs or [None] * len(prompt),
            completion.prompt_top_logprobs))
    builder = CompletionLogprobs(tokenizer, job.num_top, completion.prompt_ids,
                                 len(choice.prompt_text) if job.body.echo else 0)
    parts.append(builder.build(completion.output_ids, completion.logprobs or [],
                               completion.top_logprobs))
    for part in parts:
        for key in lp:
            lp[key] += part[key]
    return lp


def _usage(job: Job, completions: list) -> dict:
    prompt = sum(len(ids) for ids in job.prompt_ids)
    return usage(prompt, sum(len(c.output_ids) for c in completions))


# ---- streamed responses --------------------------------------------------------------------
def _sse(server, job: Job, stream: RequestStream) -> AsyncIterator[str]:
    return _chat_events(server, job, stream) if job.chat else _completion_events(server, job,
                                                                                 stream)


def _data(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def generation_failure(completion) -> APIError:
    """The error a failed choice answers with: 503 when the server is shutting down, else 500
    without the internal text (logged here instead: it may hold paths, shapes, other state)."""
    if "shutting down" in (completion.error or ""):
        return APIError(503, "the server is shutting down", code="shutting_down")
    logger.error("request %s failed: %s", completion.request_id, completion.error)
    return APIError(500, f"generation failed: an internal error (request {completion.request_id}"
                    f"; the server log has the details)")


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
                yield _data(generation_failure(event).body())
                continue
            rest = _rest(choice, event) + _stop_text(job, event)
            completions.append(event)
            if rest:
                yield text_chunk(choice, rest, None)
            yield finish_chunk(choice, event)
            continue
        lp = logprobs_of(choice, event) if job.logprobs else None
        choice.sent += event.text
        choice.tokens += 1
        if event.text or lp is not None:
            yield text_chunk(choice, event.text, lp)


async def _completion_events(server, job: Job, stream: RequestStream) -> AsyncIterator[str]:
    created, model, usage_on = int(time.time()), server.model_name, job.body.include_usage
    tokenizer = server.backend().tokenizer
    builders = {c.index: CompletionLogprobs(tokenizer, job.num_top, job.prompt_ids[c.prompt_index],
                                            len(c.prompt_text) if job.body.echo else 0)
                for c in job.choices}

    def chunk(choice: Choice, text: str, reason=None, lp=None, stop_reason=None) -> str:
        return _data(completion_chunk(
            job.response_id, model, created,
            [completion_choice(choice.index, text, reason, lp, stop_reason)],
            _usage_so_far(job), usage_on or job.body.continuous_usage))

    def finish(choice: Choice, completion) -> str:
        return chunk(choice, "", completion.finish_reason, None,
                     completion.stop_reason)

    def logprobs_of(choice: Choice, event) -> Any:
        return builders[choice.index].build([event.token_id], [event.logprob],
                                            [event.top_logprobs])

    if job.body.echo:
        for choice in job.choices:
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
                                _usage_so_far(job), usage_on or job.body.continuous_usage))

    def logprobs_of(choice: Choice, event) -> Any:
        return chat_logprobs(tokenizer, job.num_top, [event.token_id], [event.logprob],
                             [event.top_logprobs])

    readers = {c.index: CallReader() for c in job.choices} if job.tool_calls else {}

    def text_chunk(choice: Choice, text: str, lp) -> str:
        if not job.tool_calls:
            return chunk(choice, {"content": text}, lp=lp)
        # text or tool calls, as soon as the reader knows (a call's logprobs are not streamed)
        return "".join(chunk(choice, delta, lp=lp if "content" in delta else None)
                       for delta in readers[choice.index].feed(text))

    def finish(choice: Choice, completion) -> str:
        reason = completion.finish_reason
        if job.tool_calls and readers[choice.index].mode == "calls":
            reason = _calls_reason(reason)
        return chunk(choice, {}, reason)

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


def _calls_reason(reason: str) -> str:
    """The finish_reason of an answer of tool calls: "tool_calls" when it ended on its own,
    else why it was cut ("length")."""
    return "tool_calls" if reason == "stop" else reason


def _usage_so_far(job: Job) -> Optional[dict]:
    """vLLM's continuous usage stats: the prompt tokens and every choice's tokens so far
    (None unless asked: include_usage alone puts null in the chunks, as OpenAI does)."""
    if not job.body.continuous_usage:
        return None
    return usage(sum(len(ids) for ids in job.prompt_ids), sum(c.tokens for c in job.choices))


def _rest(choice: Choice, completion) -> str:
    """Text of the Completion not streamed yet (none when the events carried it all)."""
    text = completion.text
    return text[len(choice.sent):] if text.startswith(choice.sent) else ""

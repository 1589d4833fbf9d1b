"""OpenAI response bodies built from the scheduler's Completions and token events.

Completions API (`text_completion`) and chat API (`chat.completion`, `.chunk`), their
logprobs in each API's format, and usage. Token texts in logprobs are the token's own piece
(a SentencePiece piece with its leading space; a byte that is not a whole UTF-8 character is
written `bytes:\\xNN`, as vLLM does), so alternatives that are not in the text can be shown.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Optional, Sequence

from grok.serving.text import Detokenizer


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class CompletionLogprobs:
    """The completions API's logprobs: tokens, token_logprobs, top_logprobs, text_offset.

    A token's text_offset is where its text starts in the choice's returned text: the text is
    built by incremental detokenization (grok.serving.text), so a SentencePiece piece's
    leading space counts only where the text has it (not at the start of the text).
    `prompt_ids` are the tokens before the first one built (context only); `offset` the text
    before it.
    """

    def __init__(self, tokenizer, num_top: int, prompt_ids: Sequence[int] = (), offset: int = 0):
        self.tokenizer = tokenizer
        self.num_top = num_top
        self.detokenizer = Detokenizer(tokenizer, prompt_ids)
        self.offset = offset     # text_offset of the next token

    def build(self, token_ids: Sequence[int], logprobs: Sequence[Optional[float]],
              tops: Optional[Sequence[Optional[Sequence]]] = None) -> dict:
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                "text_offset": []}
        for i, (token, lp) in enumerate(zip(token_ids, logprobs)):
            text = self.tokenizer.token_text(int(token))
            top = tops[i] if tops is not None and i < len(tops) else None
            out["tokens"].append(text)
            out["token_logprobs"].append(lp)
            out["text_offset"].append(self.offset)
            if lp is None:
                out["top_logprobs"].append(None)
            else:
                alternatives = {self.tokenizer.token_text(int(t)): float(v)
                                for t, v in list(top or [])[:self.num_top]}
                alternatives.setdefault(text, float(lp))
                out["top_logprobs"].append(alternatives)
            self.offset += len(self.detokenizer.add(int(token)))
        return out


def chat_logprobs(tokenizer, num_top: int, token_ids: Sequence[int], logprobs: Sequence[float],
                  tops: Optional[Sequence[Sequence]] = None) -> dict:
    """The chat API's logprobs: {"content": [{token, logprob, bytes, top_logprobs}, ...]}."""
    def entry(token: int, lp: float) -> dict:
        text = tokenizer.token_text(int(token))
        return {"token": text, "logprob": float(lp), "bytes": list(text.encode("utf-8"))}

    content = []
    for i, (token, lp) in enumerate(zip(token_ids, logprobs)):
        top = tops[i] if tops is not None and i < len(tops) else []
        content.append({**entry(token, lp), "top_logprobs": [entry(t, v) for t, v in
                                                             list(top or [])[:num_top]]})
    return {"content": content}


def completion_body(response_id: str, model: str, choices: list, usage_: dict) -> dict:
    return {"id": response_id, "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage_}


def completion_choice(index: int, text: str, finish_reason: Optional[str],
                      logprobs: Optional[dict] = None, stop_reason: Any = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason,
            "stop_reason": stop_reason}


def completion_chunk(response_id: str, model: str, created: int, choices: list,
                     usage_: Optional[dict] = None, with_usage: bool = False) -> dict:
    out = {"id": response_id, "object": "text_completion", "created": created, "model": model,
           "choices": choices}
    if with_usage:
        out["usage"] = usage_
    return out


def chat_body(response_id: str, model: str, choices: list, usage_: dict) -> dict:
    return {"id": response_id, "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage_}


def chat_choice(index: int, text: Optional[str], finish_reason: Optional[str],
                logprobs: Optional[dict] = None, stop_reason: Any = None,
                tool_calls: Optional[list] = None) -> dict:
    message = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": logprobs,
            "finish_reason": finish_reason, "stop_reason": stop_reason}


def chat_chunk(response_id: str, model: str, created: int, choices: list,
               usage_: Optional[dict] = None, with_usage: bool = False) -> dict:
    out = {"id": response_id, "object": "chat.completion.chunk", "created": created,
           "model": model, "choices": choices}
    if with_usage:
        out["usage"] = usage_
    return out


def chat_chunk_choice(index: int, delta: dict, finish_reason: Optional[str] = None,
                      logprobs: Optional[dict] = None) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}

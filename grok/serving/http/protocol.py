"""The OpenAI request bodies the server accepts, validated by pydantic.

Field names, types and ranges are OpenAI's. Models are strict (a string is not a number, 1 is
not `true`) and forbid unknown fields, as OpenAI's API does, so a typo is an error naming the
field instead of a silently ignored setting. OpenAI fields this engine does not implement
(penalties, logit_bias, best_of, tools, ...) are accepted only at their neutral values.
Extras beyond OpenAI's (vLLM's names): `top_k`, `stop_token_ids`, `cache_salt`, and those of
grok.serving.http.client_fields (with the OpenAI fields accepted without an effect here).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from grok.engine.sampling import NUM_ALTERNATIVES
from grok.serving.requests import MAX_CACHE_SALT_CHARS, MAX_STOP_CHARS, MAX_STOP_TOKENS
from grok.serving.http.client_fields import OpenAINoEffect, StreamOptions, VLLMExtras

MAX_SEED = 2**32 - 1        # Request.seed is a uint32
MAX_STOP_STRINGS = 16       # OpenAI allows 4; a few more cost nothing here
MAX_CHOICES = 16            # n: each choice takes a slot, so bound what one request can hold
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for the completions API's `logprobs`
MAX_CHAT_TOP_LOGPROBS = NUM_ALTERNATIVES   # the engine reports this many per token
# Every list a body may hold is bounded (a 400 naming the field beyond it), so the work a
# request causes is bounded before any of it is done.
MAX_PROMPTS = 2048           # prompts in one completions request (OpenAI's limit)
MAX_TOKEN_LIST = 2**20       # ids in one token-id list (a prompt, /detokenize)
MAX_MESSAGES = 4096          # chat messages
MAX_CONTENT_PARTS = 256      # content parts in one message
MAX_LIST_ENTRIES = 1024      # tools, logit_bias entries

TokenIds = Annotated[list[int], Field(max_length=MAX_TOKEN_LIST)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _neutral(value, neutral, name: str):
    """OpenAI fields the engine does not implement: only their no-op value is accepted."""
    if value is not None and value != neutral:
        raise ValueError(f"{name} is not supported by this server (only {neutral!r})")
    return value


class _Sampling(VLLMExtras):
    """Fields shared by completions and chat completions."""

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    top_k: int = Field(0, ge=0)                 # extra (vLLM): 0 = off
    stop_token_ids: Optional[list[int]] = Field(None, max_length=MAX_STOP_TOKENS)  # extra (vLLM)
    # extra (vLLM): only requests with the same salt share prefix-cache entries
    cache_salt: Optional[str] = Field(None, min_length=1, max_length=MAX_CACHE_SALT_CHARS)
    # OpenAI fields without an implementation here: neutral values only.
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, float]] = Field(None, max_length=MAX_LIST_ENTRIES)

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v, info):
        return _neutral(v, 0.0, info.field_name)

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v):
        return _neutral(v or None, None, "logit_bias")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop strings must be at most {MAX_STOP_CHARS} characters")
        return v

    @field_validator("stop_token_ids")
    @classmethod
    def _stop_ids(cls, v):
        if v is not None and any(t < 0 for t in v):
            raise ValueError("token ids must be >= 0")
        return v

    @model_validator(mode="after")
    def _options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """vLLM's stream_options.continuous_usage_stats: usage so far in every chunk."""
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: Union[str, TokenIds, Annotated[list[str], Field(max_length=MAX_PROMPTS)],
                  Annotated[list[TokenIds], Field(max_length=MAX_PROMPTS)]]
    max_tokens: Optional[int] = Field(16, ge=0)      # OpenAI's default; 0 only with echo
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False
    best_of: Optional[int] = None
    suffix: Optional[str] = None

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, v):
        return _neutral(v, 1, "best_of")

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v):
        return _neutral(v, None, "suffix")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        if isinstance(v, list) and any(isinstance(p, list) and not p for p in v):
            raise ValueError("a token-id prompt must not be empty")
        return v

    def prompts(self) -> list[Union[str, TokenIds]]:
        """The batch: one prompt per entry (a str, or a list of token ids)."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, Annotated[list[dict[str, Any]], Field(max_length=MAX_CONTENT_PARTS)]]
    name: Optional[str] = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, v):
        if isinstance(v, list):   # OpenAI content parts: only text here
            for part in v:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts ({'type': 'text', 'text': ...}) "
                                     "are supported")
        return v

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content)


class ChatCompletionRequest(_Sampling, OpenAINoEffect):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_CHAT_TOP_LOGPROBS)
    tools: Optional[list] = Field(None, max_length=MAX_LIST_ENTRIES)
    tool_choice: Optional[Union[str, dict]] = None
    response_format: Optional[dict] = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v):
        return _neutral(v or None, None, "tools")

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, v):
        return _neutral(v if v != "none" else None, None, "tool_choice")

    @field_validator("response_format")
    @classmethod
    def _text_format(cls, v):
        if v is not None and v.get("type") != "text":
            raise ValueError("only response_format {'type': 'text'} is supported")
        return v

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def max_new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens


class TokenizeRequest(_Body):
    """POST /tokenize: a prompt, or chat messages through the chat template."""

    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = Field(None, max_length=MAX_MESSAGES)
    add_special_tokens: bool = False      # vLLM's: BOS first
    return_token_strs: bool = False       # vLLM's: each token's text too

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


class DetokenizeRequest(_Body):
    """POST /detokenize."""

    model: Optional[str] = None
    tokens: TokenIds

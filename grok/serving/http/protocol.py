"""The OpenAI request bodies the server accepts, validated by pydantic.

Field names, types and ranges are OpenAI's. Models are strict (a string is not a number, 1 is
not `true`) and forbid unknown fields, as OpenAI's API does, so a typo is an error naming the
field instead of a silently ignored setting. OpenAI fields this engine does not implement
(best_of, suffix) are accepted only at their neutral values.
Extras beyond OpenAI's (vLLM's names): `top_k`, `stop_token_ids`, `cache_salt`, `min_p`,
`repetition_penalty`, `structured_outputs`, and those of grok.serving.http.client_fields (with
the OpenAI fields accepted without an effect here). Structured outputs and tools:
grok.serving.http.structured_body and grok.serving.http.tools.
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


class StructuredOutputs(_Body):
    """vLLM's `structured_outputs`: one constraint on the output."""

    json_: Optional[Union[dict, str]] = Field(None, alias="json")   # a JSON schema
    regex: Optional[str] = None
    choice: Optional[list[str]] = None
    grammar: Optional[str] = None               # Lark or GBNF
    json_object: Optional[bool] = None          # any JSON object

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("json_", "regex", "choice", "grammar", "json_object")
                 if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of json, regex, choice, grammar, json_object; "
                             f"got {given or 'none'}")
        return self


class JsonSchemaFormat(_Body):
    name: str
    description: Optional[str] = None
    schema_: Optional[dict] = Field(None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Body):
    """OpenAI's response_format: text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None

    @model_validator(mode="after")
    def _schema_given(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is needed with (and only with) type json_schema")
        return self


class FunctionDefinition(_Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: Optional[str] = None
    parameters: Optional[dict] = None
    strict: Optional[bool] = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: FunctionName


class FunctionCall(_Body):
    name: str
    arguments: str


class ToolCall(_Body):
    id: str
    type: Literal["function"]
    function: FunctionCall


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
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    # token id (as a string) -> [-100, 100]
    logit_bias: Optional[dict[str, float]] = Field(None, max_length=MAX_LIST_ENTRIES)
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)              # extra (vLLM)
    repetition_penalty: Optional[float] = Field(None, gt=0.0, le=2.0)  # extra (vLLM)
    structured_outputs: Optional[StructuredOutputs] = None            # extra (vLLM)

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
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # null only in an assistant message (one that makes tool calls)
    content: Optional[Union[str, Annotated[list[dict[str, Any]],
                                           Field(max_length=MAX_CONTENT_PARTS)]]] = Field(None, validate_default=True)
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None      # assistant messages
    tool_call_id: Optional[str] = None               # tool messages

    @field_validator("content")
    @classmethod
    def _text_parts(cls, v, info):
        if v is None and info.data.get("role") != "assistant":
            raise ValueError("content is required (null only in an assistant message)")
        if isinstance(v, list):   # OpenAI content parts: only text here
            for part in v:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts ({'type': 'text', 'text': ...}) "
                                     "are supported")
        return v

    @property
    def text(self) -> str:
        if isinstance(self.content, str) or self.content is None:
            return self.content or ""
        return "".join(part["text"] for part in self.content)


class ChatCompletionRequest(_Sampling, OpenAINoEffect):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_CHAT_TOP_LOGPROBS)
    tools: Optional[list[Tool]] = Field(None, max_length=MAX_LIST_ENTRIES)
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[ResponseFormat] = None

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

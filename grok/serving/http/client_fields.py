"""Request fields real clients send beyond the ones that steer generation here.

Two groups, mixed into the request bodies of grok.serving.http.protocol:

- `OpenAINoEffect`: fields OpenAI's chat API documents that change nothing for this engine
  (billing, storage, routing and caching hints, reasoning settings of other models). They are
  accepted with OpenAI's types and ignored, so an unmodified client is not refused; a field no
  API defines is still a 400. The README lists them.
- `VLLMExtras`: vLLM's common extras (benchmarks and evaluation harnesses send them), each
  implemented: `ignore_eos`, `min_tokens`, `include_stop_str_in_output`,
  `add_special_tokens`; `skip_special_tokens` is accepted with either value and changes
  nothing, because special tokens (pad, BOS, EOS) decode to no text in either tokenizer.

`StreamOptions` is OpenAI's plus vLLM's `continuous_usage_stats` (usage in every chunk);
`include_obfuscation` is accepted and ignored (it pads chunks against length side channels,
which matters for OpenAI's service, not a self-hosted server).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False     # vLLM: usage so far in every chunk
    include_obfuscation: Optional[bool] = None   # OpenAI: no effect here


class OpenAINoEffect(_Strict):
    """OpenAI chat fields accepted and ignored (see the module docstring)."""

    store: Optional[bool] = None
    metadata: Optional[dict[str, str]] = None
    service_tier: Optional[Literal["auto", "default", "flex", "scale", "priority"]] = None
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high"]] = None
    verbosity: Optional[Literal["low", "medium", "high"]] = None
    prompt_cache_key: Optional[str] = None
    safety_identifier: Optional[str] = None
    prediction: Optional[dict] = None            # a hint for speculative decoding only
    modalities: Optional[list[Literal["text"]]] = None   # text is all this engine makes


class VLLMExtras(_Strict):
    """vLLM's extras (both endpoints)."""

    ignore_eos: bool = False                 # EOS does not end the output
    min_tokens: int = Field(0, ge=0)         # EOS and stop tokens end it only after this many
    include_stop_str_in_output: bool = False  # the stop string that ended it stays in the text
    add_special_tokens: bool = False         # a text prompt starts with BOS
    skip_special_tokens: bool = True         # special tokens have no text here either way


# The names a user can look up in one place (README, tests).
OPENAI_NO_EFFECT_FIELDS = tuple(OpenAINoEffect.model_fields)
VLLM_EXTRA_FIELDS = tuple(VLLMExtras.model_fields)

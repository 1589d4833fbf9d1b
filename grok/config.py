"""Model architecture: frozen dataclasses with Grok-1's field names (bound to a checkpoint).

`GROK_1` is the released model. `load_config` reads a JSON file laid out like
`LanguageModelConfig` with the transformer fields nested under `"model"` (the layout of
`fixtures/tiny-grok-a/config.json`). Every number the forward pass uses lives here: the
expert count, the rope base, the attention soft cap and the norm epsilon are fields, never
constants elsewhere. How the model is run (MoE implementation, activation dtype, mesh,
slots, buckets) is a `grok.runtime_config.RuntimeConfig`, not part of these.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Mapping

from grok.runtime_config import RUNTIME_FIELDS_IN_CONFIG

logger = logging.getLogger(__name__)


def ffn_size(emb_size: int, widening_factor: float) -> int:
    """Grok-1's FFN width: round_up_to_8(int(widening_factor * D) * 2 // 3)."""
    size = int(widening_factor * emb_size) * 2 // 3
    return size + (-size) % 8


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """The decoder stack (`model` in the reference's `LanguageModelConfig`)."""

    emb_size: int
    key_size: int
    num_q_heads: int
    num_kv_heads: int
    num_layers: int
    widening_factor: float = 8.0
    attn_output_multiplier: float = 1.0
    num_experts: int = 8
    num_selected_experts: int = 2
    rope_base: float = 10000.0
    attn_logit_soft_cap: float = 30.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("emb_size", "key_size", "num_q_heads", "num_kv_heads", "num_layers",
                     "num_experts", "num_selected_experts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(
                f"TransformerConfig: num_q_heads={self.num_q_heads} is not divisible by "
                f"num_kv_heads={self.num_kv_heads}")
        if self.key_size % 2:
            raise ValueError(f"TransformerConfig.key_size must be even for RoPE, got {self.key_size}")
        if self.num_selected_experts > self.num_experts:
            raise ValueError(
                f"TransformerConfig: num_selected_experts={self.num_selected_experts} is larger "
                f"than num_experts={self.num_experts}")
        if not self.widening_factor > 0:
            raise ValueError(f"TransformerConfig.widening_factor must be > 0, got {self.widening_factor}")
        for name in ("rope_base", "attn_logit_soft_cap", "norm_eps", "attn_output_multiplier"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"TransformerConfig.{name} must be a finite number > 0, got {value!r}")

    @property
    def ffn_size(self) -> int:
        return ffn_size(self.emb_size, self.widening_factor)

    @property
    def q_per_kv(self) -> int:
        return self.num_q_heads // self.num_kv_heads


@dataclasses.dataclass(frozen=True)
class LanguageModelConfig:
    """Embedding, output head, vocabulary and context length around a `TransformerConfig`."""

    model: TransformerConfig
    vocab_size: int
    pad_token: int = 0
    eos_token: int = 2
    sequence_len: int = 8192
    embedding_multiplier_scale: float = 1.0
    output_multiplier_scale: float = 1.0

    def __post_init__(self):
        if not isinstance(self.model, TransformerConfig):
            raise ValueError("LanguageModelConfig.model must be a TransformerConfig")
        for name in ("vocab_size", "sequence_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LanguageModelConfig.{name} must be a positive int, got {value!r}")
        for name in ("pad_token", "eos_token"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"LanguageModelConfig.{name}={value!r} is not a token id below "
                    f"vocab_size={self.vocab_size}")

    def replace(self, **changes) -> "LanguageModelConfig":
        """A copy with fields changed; transformer fields may be given at top level too."""
        model_fields = {f.name for f in dataclasses.fields(TransformerConfig)}
        model_changes = {k: changes.pop(k) for k in list(changes) if k in model_fields}
        model = dataclasses.replace(self.model, **model_changes)
        return dataclasses.replace(self, model=model, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The architecture as a JSON-able dict (config.json's layout; no runtime options)."""
        return dataclasses.asdict(self)


GROK_1 = LanguageModelConfig(
    vocab_size=128 * 1024,
    pad_token=0,
    eos_token=2,
    sequence_len=8192,
    embedding_multiplier_scale=78.38367176906169,
    output_multiplier_scale=0.5773502691896257,
    model=TransformerConfig(
        emb_size=48 * 128,
        widening_factor=8,
        key_size=128,
        num_q_heads=48,
        num_kv_heads=8,
        num_layers=64,
        attn_output_multiplier=0.08838834764831845,
        num_experts=8,
        num_selected_experts=2,
    ),
)


def config_from_dict(data: Mapping[str, Any]) -> LanguageModelConfig:
    """Builds a config from a mapping laid out like `LanguageModelConfig`, `model` nested."""
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping):
        raise ValueError("config: expected an object with a nested 'model' object")
    lm_fields = {f.name for f in dataclasses.fields(LanguageModelConfig)} - {"model"}
    tf_fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    top, nested = dict(data), dict(data["model"])
    # Runtime choices in an old config.json are not architecture: ignored, said once here, so
    # the caller's choice (--dtype, --moe, RuntimeConfig) is what runs.
    for old, value in ((k, d.pop(k)) for d in (top, nested) for k in list(d)
                       if k in RUNTIME_FIELDS_IN_CONFIG):
        logger.warning("config: ignoring %s=%r: it is a runtime choice, not architecture; set "
                       "RuntimeConfig.%s instead", old, value, RUNTIME_FIELDS_IN_CONFIG[old])
    unknown = (set(top) - lm_fields - {"model"}) | (set(nested) - tf_fields)
    if unknown:
        raise ValueError(f"config: unknown field(s) {sorted(unknown)}")
    try:
        model = TransformerConfig(**nested)
        return LanguageModelConfig(model=model, **{k: top[k] for k in top if k != "model"})
    except TypeError as e:  # a missing required field
        raise ValueError(f"config: {e}") from None


def load_config(path: str | os.PathLike) -> LanguageModelConfig:
    """Reads a JSON config file (see module docstring)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"config file {os.fspath(path)!r}: {e}") from None
    try:
        return config_from_dict(data)
    except ValueError as e:
        raise ValueError(f"config file {os.fspath(path)!r}: {e}") from None

"""Checks of a model's small files before anything is built from them: config.json and
tokenizer.model are untrusted input, like the tensor files.

Each file's size is bounded before it is read. config.json must be JSON without repeated
keys, and every architecture field is checked for its type, for being
finite and for a sane range (`FIELD_RANGES`), and the model they describe for a bounded size,
before a layout, a mesh or an array is made from it: a value that would make the loader
allocate without bound is refused at once. The tokenizer's piece count is checked against
the model's vocabulary: a vocabulary may be the tokenizer's padded up (`VOCAB_PAD_MULTIPLE`),
no more. Every failure is a `ValueError` naming the file and the field; the CLI prints it and
exits 2. (The tensor files' headers are checked against the config before any weight is read:
grok.checkpoint.validation and grok.checkpoint.loader.)
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any, Mapping, Optional

from grok.config import LanguageModelConfig, config_from_dict, ffn_size

MAX_CONFIG_BYTES = 1 << 20          # config.json: a few hundred bytes in practice
MAX_TOKENIZER_BYTES = 64 << 20      # tokenizer.model: Grok-1's is about 2 MB
VOCAB_PAD_MULTIPLE = 1024           # a vocabulary may be the tokenizer's rounded up to this
MAX_PARAMETERS = 1 << 42            # about 4.4e12: beyond any model this engine could hold

# field -> (number kind, lowest, highest); floats must also be finite and > lowest.
FIELD_RANGES: dict[str, tuple[type, float, float]] = {
    "vocab_size": (int, 1, 1 << 22),
    "pad_token": (int, 0, (1 << 22) - 1),
    "eos_token": (int, 0, (1 << 22) - 1),
    "sequence_len": (int, 1, 1 << 20),
    "embedding_multiplier_scale": (float, 0.0, 1e6),
    "output_multiplier_scale": (float, 0.0, 1e6),
    "model.emb_size": (int, 1, 1 << 16),
    "model.key_size": (int, 2, 1024),
    "model.num_q_heads": (int, 1, 1024),
    "model.num_kv_heads": (int, 1, 1024),
    "model.num_layers": (int, 1, 1024),
    "model.widening_factor": (float, 0.0, 64.0),
    "model.attn_output_multiplier": (float, 0.0, 1e4),
    "model.num_experts": (int, 1, 1024),
    "model.num_selected_experts": (int, 1, 1024),
    "model.rope_base": (float, 1.0, 1e12),
    "model.attn_logit_soft_cap": (float, 0.0, 1e6),
    "model.norm_eps": (float, 0.0, 1.0),
}


def read_bounded(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; ValueError naming it otherwise
    (the size is checked before reading, and the read stops past the limit)."""
    path = os.fspath(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{what} {path!r} is not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{what} {path!r} is {info.st_size} bytes, more than the "
                             f"{limit} a {what} may be")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ValueError(f"{what} {path!r}: {e.strerror or e}") from None
    if len(data) > limit:
        raise ValueError(f"{what} {path!r} grew past {limit} bytes while it was read")
    return data


def _no_repeats(pairs: list) -> dict:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"field {repeated[0]!r} is given more than once")
    return dict(pairs)


def _check_field(name: str, value: Any) -> None:
    kind, low, high = FIELD_RANGES[name]
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind is int:
        if not is_int:
            raise ValueError(f"{name} must be an integer, got {_short(value)}")
        if not low <= value <= high:
            raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
        return
    if not (is_int or isinstance(value, float)):
        raise ValueError(f"{name} must be a number, got {_short(value)}")
    if not (math.isfinite(value) and low < value <= high):
        raise ValueError(f"{name} must be a finite number in ({low:g}, {high:g}], got {value!r}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_config_fields(data: Mapping[str, Any]) -> None:
    """The fields config.json gives (top level and `model`), each checked for type, finiteness
    and range; ValueError naming the first bad one."""
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping):
        raise ValueError("expected an object with a nested 'model' object")
    given = {**{k: v for k, v in data.items() if k != "model"},
             **{f"model.{k}": v for k, v in data["model"].items()}}
    for name, value in given.items():
        if name in FIELD_RANGES:
            _check_field(name, value)


def parameter_count(config: LanguageModelConfig) -> int:
    """About how many weights `config` describes (embedding, attention, experts, router)."""
    m = config.model
    attention = m.emb_size * m.key_size * (2 * m.num_q_heads + 2 * m.num_kv_heads)
    experts = m.num_experts * 3 * m.emb_size * ffn_size(m.emb_size, m.widening_factor)
    return config.vocab_size * m.emb_size + m.num_layers * (attention + experts
                                                            + m.emb_size * m.num_experts)


def check_config(config: LanguageModelConfig) -> None:
    """Every architecture field in range and the model's size bounded (ValueError naming the
    field): a config made in Python is held to what a config.json is."""
    check_config_fields({**{k: v for k, v in config.to_dict().items() if k != "model"},
                         "model": config.to_dict()["model"]})
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise ValueError(f"the fields describe about {count:.3g} weights, more than "
                         f"{MAX_PARAMETERS:.3g}: model.num_layers, model.emb_size, "
                         f"model.num_experts or vocab_size is far too large")


def load_config_file(path: str | os.PathLike) -> LanguageModelConfig:
    """config.json, bounded in size and checked field by field before it is used; ValueError
    'config file PATH: FIELD ...'."""
    where = f"config file {os.fspath(path)!r}"
    try:
        raw = read_bounded(path, MAX_CONFIG_BYTES, "config file")
        # NaN and Infinity parse (Python's json accepts them) and fail their field's check
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_repeats)
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply") from None
    except ValueError as e:     # JSONDecodeError included
        message = str(e)
        raise ValueError(message if message.startswith("config file") else
                         f"{where}: {message}") from None
    try:
        check_config_fields(data)
        config = config_from_dict(data)
        check_config(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    return config


def check_tokenizer_file(path: str | os.PathLike) -> None:
    """A tokenizer model file is a regular file of bounded size (checked before the
    SentencePiece library reads it)."""
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except OSError as e:
        raise ValueError(f"tokenizer {path!r}: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"tokenizer {path!r} is not a regular file")
    if info.st_size > MAX_TOKENIZER_BYTES:
        raise ValueError(f"tokenizer {path!r} is {info.st_size} bytes, more than the "
                         f"{MAX_TOKENIZER_BYTES} a tokenizer model may be")


def check_vocabulary(pieces: int, vocab_size: int, tokenizer: str,
                     config_source: Optional[str] = None) -> None:
    """The tokenizer's piece count fits the model's vocab_size: at most it, and the vocabulary
    at most the pieces padded up to VOCAB_PAD_MULTIPLE (ValueError naming both)."""
    config = f" ({config_source})" if config_source else ""
    if pieces > vocab_size:
        raise ValueError(f"the tokenizer {tokenizer} has {pieces} pieces but the model's "
                         f"vocab_size{config} is {vocab_size}: pass the matching --tokenizer")
    padded = -(-pieces // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE
    if vocab_size > padded:
        raise ValueError(f"the tokenizer {tokenizer} has {pieces} pieces but the model's "
                         f"vocab_size{config} is {vocab_size}, more than padding (to a multiple "
                         f"of {VOCAB_PAD_MULTIPLE}) explains: ids from {pieces} on would decode "
                         f"to nothing. Pass the model's own --tokenizer")

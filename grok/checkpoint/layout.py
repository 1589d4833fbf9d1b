"""Where each parameter of a config lies in a `ckpt-0` checkpoint (spec/checkpoint.md).

Files hold one tensor per layer (`transformer/decoder_layer_{l}/...`, numbered in string order);
the model stacks each per-layer parameter on a leading [L] axis under `transformer/decoder_layer/`.

Glossary: L layers, E experts, D emb_size, F ffn_size, V vocab, Hd/Kd = q/kv heads × key_size;
a quantized weight is int8 [*lead, In, Out] with scales [*lead, G, Out], G groups dividing In.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import ml_dtypes
import numpy as np

from grok.config import LanguageModelConfig

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16))
SCALES_DTYPE = np.dtype(ml_dtypes.bfloat16)  # the model's, whatever float the file stores
# The release has G = 8 where In was sharded 8 ways when it was written, else G = 1.
_GROUPED_BY_8 = ("multi_head_attention/linear", "moe/linear_1")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One checkpoint file: its shape, and where it goes in the stacked parameter tree."""

    index: int                     # N in tensorNNNNN_000
    ckpt_path: str                 # e.g. transformer/decoder_layer_0/moe/linear/w
    shape: tuple[int, ...]         # per-file shape (the int8 weight's, for quantized tensors)
    quantized: bool                # QuantizedWeight8bit (int8 + scales) or a float array
    module: str                    # stacked module path, e.g. transformer/decoder_layer/moe/linear
    name: str                      # 'w', 'scale' or 'embeddings'
    layer: Optional[int]           # decoder layer, None outside the stack
    release_groups: Optional[int]  # G the release uses (quantize_tensors' default); None if float

    def file_name(self) -> str:
        return f"tensor{self.index:05d}_000"


def _layer_tensors(config: LanguageModelConfig) -> list[tuple[str, str, tuple, Optional[int]]]:
    """(module suffix, name, per-file shape, release G or None if float) per layer tensor."""
    c = config.model
    e, d, f = c.num_experts, c.emb_size, c.ffn_size
    hd, kd = c.num_q_heads * c.key_size, c.num_kv_heads * c.key_size
    projections = {"moe/linear": (e, d, f), "moe/linear_1": (e, f, d), "moe/linear_v": (e, d, f),
                   "multi_head_attention/query": (d, hd), "multi_head_attention/key": (d, kd),
                   "multi_head_attention/value": (d, kd), "multi_head_attention/linear": (hd, d)}
    norms = ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3")
    return ([(module, "w", shape, 8 if module in _GROUPED_BY_8 and shape[-2] % 8 == 0 else 1)
             for module, shape in projections.items()]
            + [(norm, "scale", (d,), None) for norm in norms] + [("router", "w", (d, e), None)])


def checkpoint_layout(config: LanguageModelConfig) -> list[TensorSpec]:
    """Every checkpoint file of `config`, in index order (Haiku's sorted-key flattening)."""
    d = config.model.emb_size
    specs = [TensorSpec(0, "language_model/in_out_embed/embeddings", (config.vocab_size, d), False,
                        "language_model/in_out_embed", "embeddings", None, None),
             TensorSpec(0, "language_model/rms_norm/scale", (d,), False, "language_model/rms_norm",
                        "scale", None, None)]
    for layer in range(config.model.num_layers):
        for suffix, name, shape, groups in _layer_tensors(config):
            specs.append(TensorSpec(0, f"transformer/decoder_layer_{layer}/{suffix}/{name}", shape,
                                    groups is not None, f"transformer/decoder_layer/{suffix}",
                                    name, layer, groups))
    # jax flattens a dict of dicts by sorted module key, then sorted parameter name.
    specs.sort(key=lambda spec: (spec.ckpt_path.rsplit("/", 1)[0], spec.name))
    return [dataclasses.replace(spec, index=index) for index, spec in enumerate(specs)]


def leaf_groups(layout: list[TensorSpec]) -> dict[tuple[str, str], list[TensorSpec]]:
    """(stacked module, name) -> the specs of its files, in layer order."""
    groups: dict[tuple[str, str], list[TensorSpec]] = {}  # (stacked module, name) -> specs
    for spec in sorted(layout, key=lambda s: -1 if s.layer is None else s.layer):  # layer order
        groups.setdefault((spec.module, spec.name), []).append(spec)
    return groups

"""Reading and writing the Grok-1 `ckpt-0` checkpoint format (spec/checkpoint.md).

Files hold one tensor per layer (`transformer/decoder_layer_{l}/...`, numbered in string order);
the model stacks each per-layer parameter on a leading [L] axis under `transformer/decoder_layer/`.
Files are untrusted: grok.checkpoint.tensor_file reads them without running anything they name.
The parts: layout (which file holds what), validation (against the config), loader (onto
devices); this module stacks host tensors, reads and writes whole checkpoints, makes random ones.
Written files are byte-identical to the release's.

Glossary: L layers, E experts, D emb_size, F ffn_size, V vocab, Hd/Kd = q/kv heads × key_size;
a quantized weight is int8 [*lead, In, Out] with scales [*lead, G, Out], G groups dividing In.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax
import numpy as np

from grok.checkpoint.layout import (FLOAT_DTYPES, SCALES_DTYPE, TensorSpec, checkpoint_layout,
                                    leaf_groups)
from grok.checkpoint.loader import load_checkpoint
from grok.checkpoint.tensor_file import (CheckpointError, read_tensor_file, write_tensor_file)
from grok.checkpoint.validation import (ConfigMismatchError, check_files, check_keys,
                                        check_same_groups, check_tensor, checkpoint_dir)
from grok.config import LanguageModelConfig
from grok.ops.quantization import quantize

__all__ = ["CheckpointError", "ConfigMismatchError", "FLOAT_DTYPES", "SCALES_DTYPE", "TensorSpec",
           "checkpoint_layout", "check_tensor", "load_checkpoint", "read_checkpoint_tensors",
           "read_tensor_file", "write_tensor_file", "save_checkpoint", "stack_params",
           "quantize_tensors", "random_tensors", "random_params"]


def stack_params(tensors: Mapping[str, Any], config: LanguageModelConfig) -> dict:
    """Per-layer host tensors (ckpt_path -> array / QuantizedWeight8bit) -> stacked model tree."""
    layout = checkpoint_layout(config)
    check_keys(tensors, layout)
    params: dict[str, dict] = {}
    for (module, name), specs in leaf_groups(layout).items():
        checked = [check_tensor(spec, tensors[spec.ckpt_path], "tensors") for spec in specs]
        check_same_groups(specs, checked, ["tensors"] * len(specs))
        if specs[0].layer is not None:  # decoder layers: one leaf [L, ...] in layer order
            checked = [jax.tree.map(lambda *layers: np.stack(layers), *checked)]
        params.setdefault(module, {})[name] = checked[0]
    return params


def read_checkpoint_tensors(directory: str | os.PathLike, config: LanguageModelConfig) -> dict:
    """Every file of a checkpoint, validated, as ckpt_path -> host tensor (tests, conversion)."""
    ckpt_dir, layout = checkpoint_dir(directory), checkpoint_layout(config)
    check_files(ckpt_dir, layout, config)
    tensors = {}
    for spec in layout:
        path = os.path.join(ckpt_dir, spec.file_name())
        what = f"tensor {spec.index}: {spec.ckpt_path}"
        tensors[spec.ckpt_path] = tensor = check_tensor(spec, read_tensor_file(path, what), path)
        for label, array in ([("scales", tensor.scales)] if spec.quantized else [("", tensor)]):
            nonfinite = array.size - np.count_nonzero(np.isfinite(array))
            if nonfinite:
                raise CheckpointError(f"{path} ({what}{f', {label}' if label else ''}): "
                                      f"{nonfinite} non-finite values (NaN or Inf): the weights "
                                      f"are damaged")
    return tensors


def save_checkpoint(tensors: Mapping[str, Any], directory: str | os.PathLike,
                    config: LanguageModelConfig) -> str:
    """Writes `directory/ckpt-0/tensorNNNNN_000` (floats as float32, scales as bfloat16, like the
    release) from ckpt_path -> float array / QuantizedWeight8bit; returns the ckpt-0 path."""
    layout = checkpoint_layout(config)
    check_keys(tensors, layout)
    checked = [check_tensor(spec, tensors[spec.ckpt_path], "tensors") for spec in layout]
    ckpt_dir = os.path.join(os.fspath(directory), "ckpt-0")
    os.makedirs(ckpt_dir, exist_ok=True)
    for spec, tensor in zip(layout, checked):
        write_tensor_file(os.path.join(ckpt_dir, spec.file_name()), tensor)
    return ckpt_dir


def quantize_tensors(float_tensors: Mapping[str, np.ndarray], config: LanguageModelConfig,
                     groups: Optional[Mapping[str, int]] = None) -> dict:
    """Float tensors (ckpt_path -> array) with projections quantized, others float32.

    G defaults to TensorSpec.release_groups; `groups` maps a path suffix ("moe/linear_1") to G."""
    layout = checkpoint_layout(config)
    check_keys(float_tensors, layout)
    out = {}
    for spec in layout:
        value = np.asarray(float_tensors[spec.ckpt_path], np.float32)
        if spec.quantized:
            # The first `groups` key that ends the path, with or without its '/w', sets G.
            matches = [g for suffix, g in (groups or {}).items() if f"/{spec.ckpt_path}".endswith(
                (f"/{suffix.strip('/')}", f"/{suffix.strip('/')}/w"))]
            try:
                value = quantize(value, (matches or [spec.release_groups])[0])
            except ValueError as e:
                raise ValueError(f"{spec.ckpt_path}: {e}") from None
        out[spec.ckpt_path] = value
    return out


def random_tensors(config: LanguageModelConfig, seed: int = 0, *, embed_std: float = 0.15,
                   norm_std: float = 0.1, weight_gain: float = 1.0) -> dict:
    """Deterministic random float32 weights, ckpt_path -> array. Projections and router are
    N(0, weight_gain²/In) so activations keep their scale; norm scales 1 + N(0, norm_std²)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out = {}
    for spec in checkpoint_layout(config):  # index order, so each tensor's draws are fixed
        normal = rng.standard_normal(spec.shape, dtype=np.float32)
        fan_in = spec.shape[-2] if len(spec.shape) > 1 else 1  # In, for projections and router
        std = {"embeddings": embed_std, "scale": norm_std}.get(spec.name, weight_gain / fan_in**0.5)
        out[spec.ckpt_path] = (1.0 if spec.name == "scale" else 0.0) + normal * np.float32(std)
    return out


def random_params(config: LanguageModelConfig, seed: int = 0, **kwargs) -> dict:
    """Random quantized host params in the model's stacked tree (release scale groups)."""
    return stack_params(quantize_tensors(random_tensors(config, seed, **kwargs), config), config)

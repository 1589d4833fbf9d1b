"""Checking a checkpoint against its config: files present and regular, dtypes, shapes, groups.

The checks look only at dtype and shape, so they run alike on arrays in memory and on
StoredArrays (still in their files). A checkpoint written for another config (other shapes, more
or fewer layers) raises ConfigMismatchError, which says so.
"""

from __future__ import annotations

import collections
import os
import stat
from typing import Any, Mapping, Optional

import numpy as np

from grok.checkpoint.layout import FLOAT_DTYPES, SCALES_DTYPE, TensorSpec
from grok.checkpoint.stored_array import CheckpointError, StoredArray, describe_path
from grok.config import LanguageModelConfig
from grok.ops.quantization import QuantizedWeight8bit


class ConfigMismatchError(CheckpointError):
    """The files are well-formed but not the config's: other shapes, fewer or more layers."""


def _config_summary(config: LanguageModelConfig) -> str:
    c = config.model
    return (f"vocab_size={config.vocab_size}, emb_size={c.emb_size}, num_layers={c.num_layers}, "
            f"num_experts={c.num_experts}, num_q_heads={c.num_q_heads}, "
            f"num_kv_heads={c.num_kv_heads}, key_size={c.key_size}")


def config_mismatch(message: str, config: LanguageModelConfig) -> ConfigMismatchError:
    """`message`, then that the checkpoint does not match the config (and what that config is)."""
    return ConfigMismatchError(f"{message}: the checkpoint does not match the config "
                               f"({_config_summary(config)})")


def _check_array(arr, shape, dtypes, spec: TensorSpec, where: str, label: str):
    what = f"tensor {spec.index} ({spec.ckpt_path}) in {where}: {label}"
    if not isinstance(arr, (np.ndarray, StoredArray)):
        raise CheckpointError(f"{what} is a {type(arr).__name__}, expected a numpy array")
    if arr.dtype.newbyteorder("=") not in dtypes:
        raise CheckpointError(f"{what} dtype expected {' or '.join(map(str, dtypes))}, "
                              f"found {arr.dtype}")
    if shape is not None and arr.shape != tuple(shape):
        raise ConfigMismatchError(f"{what} shape expected {tuple(shape)}, found {arr.shape}: the "
                                  f"checkpoint does not match the config")
    return arr


def check_kind(spec: TensorSpec, value, where: str):
    """`value` (numpy arrays or StoredArrays) checked against its spec (kind, dtype, shape,
    scale groups), not converted."""
    if not spec.quantized:
        return _check_array(value, spec.shape, FLOAT_DTYPES, spec, where, "array")
    if not isinstance(value, QuantizedWeight8bit):  # a float array where int8 is expected
        value = QuantizedWeight8bit(value, None)
    weight = _check_array(value.weight, spec.shape, (np.dtype(np.int8),), spec, where, "weight")
    scales = _check_array(value.scales, None, FLOAT_DTYPES, spec, where, "scales")
    *lead, contracting, out = spec.shape
    groups = scales.shape[-2] if len(scales.shape) >= 2 else 0  # a wrong ndim fails below
    if groups < 1 or contracting % groups:
        raise CheckpointError(f"tensor {spec.index} ({spec.ckpt_path}) in {where}: scales "
                              f"{scales.shape}: G={groups} does not divide In={contracting}")
    _check_array(scales, (*lead, groups, out), FLOAT_DTYPES, spec, where, "scales")
    return QuantizedWeight8bit(weight, scales)


def check_tensor(spec: TensorSpec, value, where: str) -> np.ndarray | QuantizedWeight8bit:
    """Validates one per-layer tensor against its spec; floats → float32, scales → bfloat16."""
    value = check_kind(spec, value, where)
    if not spec.quantized:
        return value.astype(np.float32, copy=False)  # no copy of a float32 embedding table
    return QuantizedWeight8bit(value.weight, value.scales.astype(SCALES_DTYPE, copy=False))


def check_same_groups(specs: list[TensorSpec], tensors: list, wheres: list[str]) -> None:
    """The layers of one stacked quantized leaf share one scales array [L, *lead, G, Out]: the
    error names a layer whose G differs from the most common one (on a tie, the release's G)."""
    if not specs[0].quantized:
        return
    shapes = [tensor.scales.shape for tensor in tensors]
    counts = collections.Counter(shapes)
    common = max(counts, key=lambda shape: (counts[shape],
                                            shape[-2] == specs[0].release_groups))
    count = counts[common]
    for spec, shape, where in zip(specs, shapes, wheres):
        if shape != common:
            raise CheckpointError(f"tensor {spec.index} ({spec.ckpt_path}) in {where}: scales "
                                  f"{shape} (G={shape[-2]}), but {count} of the {len(specs)} "
                                  f"layers have {common} (G={common[-2]}): layers of one leaf "
                                  f"need the same G")


def check_keys(tensors: Mapping[str, Any], layout: list[TensorSpec]) -> None:
    """In-memory tensors (ckpt_path -> tensor) are exactly the layout's."""
    expected = {spec.ckpt_path for spec in layout}
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise CheckpointError(f"tensors do not match the config: missing {missing[:4]}"
                              f"{'...' if len(missing) > 4 else ''}, unexpected {extra[:4]}")


def checkpoint_dir(directory: str | os.PathLike) -> str:
    """`directory/ckpt-0`, or `directory` itself, whichever holds tensor00000_000."""
    directory = os.fspath(directory)
    for candidate in (os.path.join(directory, "ckpt-0"), directory):
        if os.path.exists(os.path.join(candidate, "tensor00000_000")):
            return candidate
    raise CheckpointError(f"no checkpoint in {directory} (looked for ckpt-0/tensor00000_000)")


def _is_regular(path: str) -> Optional[bool]:
    """True for a regular file (or a symlink to one), False for anything else, None if missing."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False if os.path.lexists(path) else None  # a dangling symlink: not missing
    except OSError:
        return False


def check_files(ckpt_dir: str, layout: list[TensorSpec], config: LanguageModelConfig) -> None:
    """Fails before reading anything if a file is missing, not a regular file, or there are
    more: files missing only at the end, or more files, mean another config's checkpoint."""
    paths = [os.path.join(ckpt_dir, spec.file_name()) for spec in layout]
    found = [_is_regular(path) for path in paths]
    for spec, path, regular in zip(layout, paths, found):
        if regular is False:
            raise CheckpointError(f"{path} (tensor {spec.index}: {spec.ckpt_path}): is "
                                  f"{describe_path(path)}, not a regular file; only regular files "
                                  f"(or symlinks to them) are read")
    present = sum(1 for regular in found if regular)
    if present < len(layout) and all(found[:present]):  # 0..present-1 exist, the rest do not
        spec = layout[present]
        raise config_mismatch(f"{ckpt_dir} has {present} tensor files (tensor00000_000 to "
                              f"{layout[present - 1].file_name() if present else '-'}) but the "
                              f"config needs {len(layout)} (the first missing: "
                              f"{spec.file_name()}, tensor {spec.index}: {spec.ckpt_path})", config)
    for spec, path, regular in zip(layout, paths, found):
        if regular is None:
            raise CheckpointError(f"missing checkpoint file {path} (tensor {spec.index}: "
                                  f"{spec.ckpt_path})")
    # Without this a 64-layer checkpoint read with num_layers=2 would load layers 0, 1 and 10.
    extra = os.path.join(ckpt_dir, f"tensor{len(layout):05d}_000")
    if os.path.lexists(extra):
        raise config_mismatch(f"{extra} exists but the config has only {len(layout)} tensors "
                              f"(another num_layers?)", config)

"""Reading and writing the Grok-1 `ckpt-0` checkpoint format (spec/checkpoint.md).

Files hold one tensor per layer (`transformer/decoder_layer_{l}/...`, numbered in string order);
the model stacks each per-layer parameter on a leading [L] axis under `transformer/decoder_layer/`.
Files are untrusted: grok.checkpoint.tensor_file reads them without running anything they name. Loading
validates every file's header first, then each process reads only the blocks of the files that
its own devices hold. Written files are byte-identical to the release's.

Glossary: L layers, E experts, D emb_size, F ffn_size, V vocab, Hd/Kd = q/kv heads × key_size;
a quantized weight is int8 [*lead, In, Out] with scales [*lead, G, Out], G groups dividing In.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import stat
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from grok.config import LanguageModelConfig
from grok.ops.quantization import QuantizedWeight8bit, quantize
from grok.checkpoint.tensor_file import (CheckpointError, StoredArray, describe_path,
                                        locate_tensor_file, read_tensor_file, write_tensor_file)

__all__ = ["CheckpointError", "ConfigMismatchError", "TensorSpec", "checkpoint_layout", "check_tensor", "load_checkpoint",
           "read_checkpoint_tensors", "read_tensor_file", "write_tensor_file", "save_checkpoint",
           "stack_params", "quantize_tensors", "random_tensors", "random_params"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16))
SCALES_DTYPE = np.dtype(ml_dtypes.bfloat16)  # the model's, whatever float the file stores
# The release has G = 8 where In was sharded 8 ways when it was written, else G = 1.
_GROUPED_BY_8 = ("multi_head_attention/linear", "moe/linear_1")


class ConfigMismatchError(CheckpointError):
    """The files are well-formed but not the config's: other shapes, fewer or more layers."""


def _config_summary(config: LanguageModelConfig) -> str:
    c = config.model
    return (f"vocab_size={config.vocab_size}, emb_size={c.emb_size}, num_layers={c.num_layers}, "
            f"num_experts={c.num_experts}, num_q_heads={c.num_q_heads}, "
            f"num_kv_heads={c.num_kv_heads}, key_size={c.key_size}")


def _mismatch(message: str, config: LanguageModelConfig) -> ConfigMismatchError:
    return ConfigMismatchError(f"{message}: the checkpoint does not match the config "
                               f"({_config_summary(config)})")


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


# Validation and stacking, shared by the loader and stack_params. The checks look only at dtype
# and shape, so they run alike on arrays in memory and on StoredArrays (still in their files).

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


def _checked(spec: TensorSpec, value, where: str):
    """`value` (numpy arrays or StoredArrays) checked against its spec, not converted."""
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
    value = _checked(spec, value, where)
    if not spec.quantized:
        return value.astype(np.float32, copy=False)  # no copy of a float32 embedding table
    return QuantizedWeight8bit(value.weight, value.scales.astype(SCALES_DTYPE, copy=False))


def _check_same_groups(specs: list[TensorSpec], tensors: list, wheres: list[str]) -> None:
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
                                  f"{shape} (G={shape[-2]}), but {count} of the {len(specs)} layers "
                                  f"have {common} (G={common[-2]}): layers of one leaf need the "
                                  f"same G")


def _leaf_groups(layout: list[TensorSpec]) -> dict[tuple[str, str], list[TensorSpec]]:
    groups: dict[tuple[str, str], list[TensorSpec]] = {}  # (stacked module, name) -> specs
    for spec in sorted(layout, key=lambda s: -1 if s.layer is None else s.layer):  # layer order
        groups.setdefault((spec.module, spec.name), []).append(spec)
    return groups


def _check_keys(tensors: Mapping[str, Any], layout: list[TensorSpec]) -> None:
    expected = {spec.ckpt_path for spec in layout}
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise CheckpointError(f"tensors do not match the config: missing {missing[:4]}"
                              f"{'...' if len(missing) > 4 else ''}, unexpected {extra[:4]}")


def stack_params(tensors: Mapping[str, Any], config: LanguageModelConfig) -> dict:
    """Per-layer host tensors (ckpt_path -> array / QuantizedWeight8bit) -> stacked model tree."""
    layout = checkpoint_layout(config)
    _check_keys(tensors, layout)
    params: dict[str, dict] = {}
    for (module, name), specs in _leaf_groups(layout).items():
        checked = [check_tensor(spec, tensors[spec.ckpt_path], "tensors") for spec in specs]
        _check_same_groups(specs, checked, ["tensors"] * len(specs))
        if specs[0].layer is not None:  # decoder layers: one leaf [L, ...] in layer order
            checked = [jax.tree.map(lambda *layers: np.stack(layers), *checked)]
        params.setdefault(module, {})[name] = checked[0]
    return params


# Loading.

def _checkpoint_dir(directory: str | os.PathLike) -> str:
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


def _check_files(ckpt_dir: str, layout: list[TensorSpec], config: LanguageModelConfig) -> None:
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
        raise _mismatch(f"{ckpt_dir} has {present} tensor files (tensor00000_000 to "
                        f"{layout[present - 1].file_name() if present else '-'}) but the config "
                        f"needs {len(layout)} (the first missing: {spec.file_name()}, tensor "
                        f"{spec.index}: {spec.ckpt_path})", config)
    for spec, path, regular in zip(layout, paths, found):
        if regular is None:
            raise CheckpointError(f"missing checkpoint file {path} (tensor {spec.index}: "
                                  f"{spec.ckpt_path})")
    # Without this a 64-layer checkpoint read with num_layers=2 would load layers 0, 1 and 10.
    extra = os.path.join(ckpt_dir, f"tensor{len(layout):05d}_000")
    if os.path.lexists(extra):
        raise _mismatch(f"{extra} exists but the config has only {len(layout)} tensors (another "
                        f"num_layers?)", config)


@dataclasses.dataclass(frozen=True)
class _StoredLeaf:
    """One model array still in its files: one file's array, or (`stacked`) one per layer on a
    leading [L] axis; `dtype` is the model's (float32, int8, or bfloat16 for scales)."""

    parts: tuple[StoredArray, ...]
    stacked: bool
    dtype: np.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.parts),) * self.stacked + self.parts[0].shape

    def pieces(self, box: tuple[slice, ...]) -> list[tuple[StoredArray, tuple, Any]]:
        """(file's array, its block, where in the leaf's block) per file the block `box` needs."""
        box = tuple(slice(*axis.indices(n)[:2]) for axis, n in zip(box, self.shape))
        if not self.stacked:
            return [(self.parts[0], box, ...)]
        layers = range(box[0].start, box[0].stop)
        return [(self.parts[layer], box[1:], n) for n, layer in enumerate(layers)]

    def bytes_to_read(self, box: tuple[slice, ...]) -> int:
        return sum(part.bytes_to_read(block) for part, block, _ in self.pieces(box))


def _results(futures: list[Future], on_result: Callable[[Any], Any] = lambda _: None) -> list:
    """The futures' results in order; after an error, those not started yet are cancelled."""
    try:
        results = []
        for future in futures:
            results.append(future.result())  # re-raises a worker's CheckpointError
            on_result(results[-1])
        return results
    finally:
        for future in futures:
            future.cancel()


def _locate(ckpt_dir: str, layout: list[TensorSpec], pool: ThreadPoolExecutor) -> dict:
    """(module, name) -> _StoredLeaf (or a QuantizedWeight8bit of two): every file's header read
    and checked, in parallel, before any array data is read."""
    def locate(spec: TensorSpec):
        path = os.path.join(ckpt_dir, spec.file_name())
        return _checked(spec, locate_tensor_file(path, f"tensor {spec.index}: {spec.ckpt_path}"),
                        path)

    located = dict(zip(layout, _results([pool.submit(locate, spec) for spec in layout])))
    leaves = {}
    for key, specs in _leaf_groups(layout).items():
        tensors, stacked = [located[spec] for spec in specs], specs[0].layer is not None
        _check_same_groups(specs, tensors, [os.path.join(ckpt_dir, s.file_name()) for s in specs])
        if specs[0].quantized:
            leaves[key] = QuantizedWeight8bit(
                _StoredLeaf(tuple(t.weight for t in tensors), stacked, np.dtype(np.int8)),
                _StoredLeaf(tuple(t.scales for t in tensors), stacked, SCALES_DTYPE))
        else:
            leaves[key] = _StoredLeaf(tuple(tensors), stacked, np.dtype(np.float32))
    return leaves


def _process_block(shape: tuple[int, ...], sharding) -> tuple[slice, ...]:
    """The smallest block holding every shard this process's devices keep: the whole array on
    one host; on a host of a multi-host job, usually just its part."""
    indices = sharding.addressable_devices_indices_map(shape).values()
    bounds = [[axis.indices(n)[:2] for axis, n in zip(index, shape)] for index in indices]
    if not bounds:
        return tuple(slice(0, 0) for _ in shape)
    return tuple(slice(min(b[axis][0] for b in bounds), max(b[axis][1] for b in bounds))
                 for axis in range(len(shape)))


def _plan(leaf, sharding) -> list[tuple[_StoredLeaf, Any, tuple[slice, ...]]]:
    """(array, sharding, this process's block) for a leaf's array, or its weight and scales."""
    if isinstance(leaf, QuantizedWeight8bit):
        sharding = sharding or QuantizedWeight8bit(None, None)
        if not isinstance(sharding, QuantizedWeight8bit):
            raise ValueError("a quantized leaf needs a QuantizedWeight8bit of two shardings")
        return _plan(leaf.weight, sharding.weight) + _plan(leaf.scales, sharding.scales)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return [(leaf, sharding, _process_block(leaf.shape, sharding))]


def _read_leaf_block(leaf: _StoredLeaf, box: tuple[slice, ...], pool: ThreadPoolExecutor,
                     on_read: Callable[[int], Any] = lambda _: None) -> np.ndarray:
    """The block `box` of `leaf`, in the model's dtype: each file's part of it read in parallel
    (only those bytes); `on_read` gets each file's count of bytes read."""
    block = np.empty([len(range(*axis.indices(n))) for axis, n in zip(box, leaf.shape)], leaf.dtype)
    _results([pool.submit(part.read_into, block[where], part_box)
              for part, part_box, where in leaf.pieces(box)], on_read)
    return block


def _nonfinite_per_row(x: jax.Array) -> jax.Array:
    """[M, ...] -> [M] int32: how many NaN/Inf values each index of axis 0 holds (a reduction,
    no reshape: a sharded axis is summed where it lies)."""
    return jnp.sum(~jnp.isfinite(x), axis=tuple(range(1, x.ndim)), dtype=jnp.int32)


def _check_finite(leaf: _StoredLeaf, placed: jax.Array) -> None:
    """Raises a CheckpointError naming the file and tensor if the placed float `leaf` holds a
    NaN or Inf (one jitted pass over it, on its devices: at HBM speed, cheap next to reading)."""
    if not jnp.issubdtype(placed.dtype, jnp.floating):
        return  # int8 weights are finite; their scales are checked
    sharding = placed.sharding  # replicated counts: every process can read them
    out = (jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
           if isinstance(sharding, jax.sharding.NamedSharding) else None)
    rows = placed if placed.ndim else placed.reshape(1)
    counts = np.asarray(jax.jit(_nonfinite_per_row, out_shardings=out)(rows))  # [shape[0]]
    bad = np.flatnonzero(counts)
    if not bad.size:
        return
    if leaf.stacked:  # one row per layer, one file per layer
        part, where = leaf.parts[bad[0]], ""
        if bad.size > 1:
            where = f" (and {bad.size - 1} more layers' files: {leaf.parts[bad[1]].path}, ...)"
        found = f"{counts[bad[0]]} non-finite values (NaN or Inf){where}"
    else:
        part = leaf.parts[0]
        found = (f"{counts.sum()} non-finite values (NaN or Inf), the first in row {bad[0]} of "
                 f"{rows.shape[0]}")
    raise CheckpointError(f"{part.where}: {found}: the weights are damaged")


def _read_and_place(leaf: _StoredLeaf, sharding, box: tuple[slice, ...],
                    pool: ThreadPoolExecutor, on_read: Callable[[int], Any]) -> jax.Array:
    """Reads this process's block of `leaf`, places its shards and checks them finite."""
    block = _read_leaf_block(leaf, box, pool, on_read)

    def shard(index: tuple[slice, ...]) -> np.ndarray:  # called for this process's devices only
        bounds = [axis.indices(n)[:2] for axis, n in zip(index, leaf.shape)]
        return block[tuple(slice(a - b.start, z - b.start) for (a, z), b in zip(bounds, box))]

    placed = jax.make_array_from_callback(leaf.shape, sharding, shard)
    _check_finite(leaf, placed)
    return placed


def load_checkpoint(directory: str | os.PathLike, config: LanguageModelConfig, shardings=None, *,
                    max_workers: int = 8, progress: bool = True) -> dict:
    """Reads `directory/ckpt-0` (or `directory` itself) into the model's stacked param tree.

    `shardings`: None (default device) or a tree like the params with a Sharding per array
    (a QuantizedWeight8bit of two for quantized leaves). Every file's header is read and checked
    first. Then, one leaf at a time, the block of it that this process's devices hold is read
    (only those byte ranges, its files in parallel) into one host buffer, placed, and freed:
    peak host memory is about the largest leaf's block, not the checkpoint. (Placing per layer
    and stacking on device would need twice the leaf in device memory, the scarcer one.)"""
    ckpt_dir, layout = _checkpoint_dir(directory), checkpoint_layout(config)
    _check_files(ckpt_dir, layout, config)
    params: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        plans = {(module, name): _plan(leaf, None if shardings is None else shardings[module][name])
                 for (module, name), leaf in _locate(ckpt_dir, layout, pool).items()}
        total = sum(leaf.bytes_to_read(box) for plan in plans.values() for leaf, _, box in plan)
        with tqdm(total=total, unit="B", unit_scale=True, desc="loading checkpoint",
                  file=sys.stderr, disable=not progress) as bar:
            for (module, name), plan in plans.items():
                placed = [_read_and_place(*array, pool, bar.update) for array in plan]
                params.setdefault(module, {})[name] = (
                    QuantizedWeight8bit(*placed) if len(placed) == 2 else placed[0])
    return params


def read_checkpoint_tensors(directory: str | os.PathLike, config: LanguageModelConfig) -> dict:
    """Every file of a checkpoint, validated, as ckpt_path -> host tensor (tests, conversion)."""
    ckpt_dir, layout = _checkpoint_dir(directory), checkpoint_layout(config)
    _check_files(ckpt_dir, layout, config)
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
    _check_keys(tensors, layout)
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
    _check_keys(float_tensors, layout)
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

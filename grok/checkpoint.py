"""Reading and writing the Grok-1 `ckpt-0` checkpoint format (spec/checkpoint.md).

Files hold one tensor per layer (`transformer/decoder_layer_{l}/...`, numbered in string order);
the model stacks each per-layer parameter on a leading [L] axis under `transformer/decoder_layer/`.
Files are untrusted: an allow-list unpickler builds arrays from validated state and never calls
what the stream names. Written files are byte-identical to the release's.

Glossary: L layers, E experts, D emb_size, F ffn_size, V vocab, Hd/Kd = q/kv heads × key_size;
a quantized weight is int8 [*lead, In, Out] with scales [*lead, G, Out], G groups dividing In.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import reprlib
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Optional

import jax
import ml_dtypes
import numpy as np
from numpy._core.multiarray import _reconstruct as _np_reconstruct
from tqdm.auto import tqdm

from grok.config import LanguageModelConfig
from grok.quantization import QuantizedWeight8bit, quantize

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16))
# The release has G = 8 where In was sharded 8 ways when it was written, else G = 1.
_GROUPED_BY_8 = ("multi_head_attention/linear", "moe/linear_1")


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, refused as unsafe, or does not fit the config."""


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


# Safe unpickling. find_class hands out only the stand-ins below, never a real callable: arrays
# and dtypes are built here from validated state, so a crafted stream can't make numpy allocate
# huge buffers, mutate dtype singletons, or unpickle object arrays.

class _Refused(Exception):
    """Raised inside the unpickler; read_tensor_file names the file."""


class _ShortRepr(reprlib.Repr):
    """Untrusted state in error messages, never in full: it may hold gigabytes of bytes."""

    def repr_bytes(self, obj, level):
        return f"<{len(obj)} bytes>"

    repr_bytearray = repr_bytes


_short = _ShortRepr().repr


class _Guard:
    """A stand-in for an allowed global; no __dict__, no BUILD: a file can't alter later loads."""

    __slots__ = ("label", "fn")

    def __init__(self, label, fn=None):
        self.label, self.fn = label, fn

    def __call__(self, *args):
        if self.fn is None:
            raise _Refused(f"calling {self.label} is not allowed")
        return self.fn(*args)

    def __setstate__(self, state):
        raise _Refused(f"setting state on {self.label} is not allowed")


_NDARRAY, _BFLOAT16 = _Guard("numpy.ndarray"), _Guard("ml_dtypes.bfloat16")
# Plain numeric dtypes only; the layout check then says which one each tensor needs.
_DTYPE_CODES = frozenset("b1 i1 u1 i2 u2 i4 u4 i8 u8 f2 f4 f8".split())


class _DtypeStub:
    """What `numpy.dtype(spec, align, copy)` becomes; its BUILD may set the byte order only."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)
                and state[5] in (-1, self.dtype.itemsize) and state[8:] in ((), (None,))):
            raise _Refused(f"unsupported numpy.dtype state for {self.dtype}: {_short(state)}")
        self.dtype = self.dtype.newbyteorder(state[1] if state[1] in "<>" else "=")


def _make_dtype(spec, align=False, copy=False) -> _DtypeStub:
    if spec is _BFLOAT16:
        return _DtypeStub(np.dtype(ml_dtypes.bfloat16))
    if isinstance(spec, str) and spec in _DTYPE_CODES:
        return _DtypeStub(np.dtype(spec))
    why = " (object arrays would unpickle arbitrary objects)" if str(spec)[:1] == "O" else ""
    raise _Refused(f"refused numpy.dtype({_short(spec)}){why}")


class _ArrayStub:
    """What `_reconstruct(ndarray, (0,), b'b')` becomes; its BUILD gives shape, dtype, bytes."""

    array: Optional[np.ndarray] = None

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]  # (version, shape, dtype, fortran, raw); older files omit version
        if not (isinstance(state, tuple) and len(state) == 4) or self.array is not None:
            raise _Refused(f"unsupported numpy.ndarray state {_short(state)}")
        shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and len(shape) <= 8
                and all(isinstance(n, int) and n >= 0 for n in shape) and isinstance(fortran, bool)
                and isinstance(dtype, _DtypeStub) and isinstance(raw, (bytes, bytearray))):
            raise _Refused(f"bad numpy.ndarray state {_short(state)}")  # e.g. object array
        count = math.prod(shape)
        if len(raw) != count * dtype.dtype.itemsize:
            raise _Refused(f"{len(raw)} data bytes do not fit shape {shape} {dtype.dtype}")
        flat = np.frombuffer(raw, dtype.dtype, count=count)  # a view: no copy of the payload
        self.array = flat.reshape(shape, order="F" if fortran else "C")


def _reconstruct(subtype, shape, code) -> _ArrayStub:
    if subtype is not _NDARRAY or shape != (0,) or code not in (b"b", "b"):
        raise _Refused("numpy _reconstruct accepts only (numpy.ndarray, (0,), b'b')")
    return _ArrayStub()


class _QuantizedWeightStub:
    """`__main__.QuantizedWeight8bit` as the stream names it (NEWOBJ, then BUILD a dict)."""

    def __setstate__(self, state):
        if not (isinstance(state, dict) and set(state) == {"weight", "scales"}
                and all(isinstance(v, _ArrayStub) and v.array is not None for v in state.values())):
            raise _Refused(f"QuantizedWeight8bit state must be {{weight: array, scales: array}}, "
                           f"got {_short(state)}")
        self.weight, self.scales = state["weight"].array, state["scales"].array


_RECONSTRUCT = _Guard("numpy.core.multiarray._reconstruct", _reconstruct)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 1.x writers
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 2.x writers
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Guard("numpy.dtype", _make_dtype),
    ("ml_dtypes", "bfloat16"): _BFLOAT16,
    ("__main__", "QuantizedWeight8bit"): _QuantizedWeightStub,
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the globals of spec/checkpoint.md, to the stand-ins above."""

    def find_class(self, module, name):
        if module.startswith("ml_dtypes.") and name == "bfloat16":  # other ml_dtypes versions
            module = "ml_dtypes"
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _Refused(f"refused global '{module}.{name}' (not on the checkpoint allow-list)")
        return _ALLOWED_GLOBALS[(module, name)]


def read_tensor_file(path: str | os.PathLike, what: str = "") -> np.ndarray | QuantizedWeight8bit:
    """Safely unpickles one file: a numpy array, or a QuantizedWeight8bit of numpy arrays."""
    where = f"{os.fspath(path)}{f' ({what})' if what else ''}"
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f).load()
            trailing = f.read(1)
    except _Refused as e:
        raise CheckpointError(f"{where}: {e}; nothing from this file was executed") from None
    except Exception as e:  # unreadable, truncated or corrupt input raises many types
        raise CheckpointError(f"{where}: truncated or corrupt ({type(e).__name__}: {e})") from None
    if trailing:
        raise CheckpointError(f"{where}: corrupt file (bytes after the end of the pickle)")
    if isinstance(obj, _ArrayStub) and obj.array is not None:
        return obj.array
    if isinstance(obj, _QuantizedWeightStub) and "weight" in vars(obj):
        return QuantizedWeight8bit(weight=obj.weight, scales=obj.scales)
    raise CheckpointError(f"{where}: holds a {type(obj).__name__}, expected an array or a "
                          f"QuantizedWeight8bit")


# Validation and stacking, shared by the loader and stack_params.

def _check_array(arr, shape, dtypes, spec: TensorSpec, where: str, label: str) -> np.ndarray:
    what = f"tensor {spec.index} ({spec.ckpt_path}) in {where}: {label}"
    if not isinstance(arr, np.ndarray):
        raise CheckpointError(f"{what} is a {type(arr).__name__}, expected a numpy array")
    if arr.dtype.newbyteorder("=") not in dtypes:
        raise CheckpointError(f"{what} dtype expected {' or '.join(map(str, dtypes))}, "
                              f"found {arr.dtype}")
    if shape is not None and arr.shape != tuple(shape):
        raise CheckpointError(f"{what} shape expected {tuple(shape)}, found {arr.shape}")
    return arr


def check_tensor(spec: TensorSpec, value, where: str) -> np.ndarray | QuantizedWeight8bit:
    """Validates one per-layer tensor against its spec; floats → float32, scales → bfloat16."""
    if not spec.quantized:
        value = _check_array(value, spec.shape, FLOAT_DTYPES, spec, where, "array")
        return value.astype(np.float32, copy=False)  # no copy of a float32 embedding table
    if not isinstance(value, QuantizedWeight8bit):  # a float array where int8 is expected
        value = QuantizedWeight8bit(value, None)
    weight = _check_array(value.weight, spec.shape, (np.dtype(np.int8),), spec, where, "weight")
    scales = _check_array(value.scales, None, FLOAT_DTYPES, spec, where, "scales")
    *lead, contracting, out = spec.shape
    groups = scales.shape[-2] if scales.ndim >= 2 else 0  # a wrong ndim fails the shape check
    if groups < 1 or contracting % groups:
        raise CheckpointError(f"tensor {spec.index} ({spec.ckpt_path}) in {where}: scales "
                              f"{scales.shape}: G={groups} does not divide In={contracting}")
    _check_array(scales, (*lead, groups, out), FLOAT_DTYPES, spec, where, "scales")
    return QuantizedWeight8bit(weight, scales.astype(ml_dtypes.bfloat16, copy=False))


class _LeafAssembler:
    """Builds one model leaf from its per-layer tensors, in any order, from any thread: a
    stacked leaf is preallocated [L, ...] and each layer copied into its slice on arrival, so
    the host never holds the layers twice. Scales [L, *lead, G, Out] wait for the first G."""

    def __init__(self, specs: list[TensorSpec]):
        self.lock, first = threading.Lock(), specs[0]
        self.stacked, self.value = first.layer is not None, None
        stacked_shape = (len(specs), *first.shape)  # [L, *per-file shape]
        if self.stacked:
            self.value = (QuantizedWeight8bit(np.empty(stacked_shape, np.int8), None)
                          if first.quantized else np.empty(stacked_shape, np.float32))

    def put(self, spec: TensorSpec, tensor, where: str) -> None:
        tensor = check_tensor(spec, tensor, where)
        if not self.stacked:
            self.value = tensor
        elif not spec.quantized:
            self.value[spec.layer] = tensor
        else:
            with self.lock:
                if self.value.scales is None:
                    shape = (len(self.value.weight), *tensor.scales.shape)
                    self.value.scales = np.empty(shape, ml_dtypes.bfloat16)
            if self.value.scales.shape[1:] != tensor.scales.shape:
                raise CheckpointError(f"tensor {spec.index} ({spec.ckpt_path}) in {where}: scales "
                                      f"{tensor.scales.shape}: layers of one leaf need the same G")
            self.value.weight[spec.layer] = tensor.weight
            self.value.scales[spec.layer] = tensor.scales


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
        leaf = _LeafAssembler(specs)
        for spec in specs:
            leaf.put(spec, tensors[spec.ckpt_path], "tensors")
        params.setdefault(module, {})[name] = leaf.value
    return params


# Loading.

def _checkpoint_dir(directory: str | os.PathLike) -> str:
    directory = os.fspath(directory)
    for candidate in (os.path.join(directory, "ckpt-0"), directory):
        if os.path.exists(os.path.join(candidate, "tensor00000_000")):
            return candidate
    raise CheckpointError(f"no checkpoint in {directory} (looked for ckpt-0/tensor00000_000)")


def _check_files(ckpt_dir: str, layout: list[TensorSpec]) -> int:
    """Total bytes; fails before reading anything if a file is missing or there are more."""
    total_bytes = 0
    for spec in layout:
        path = os.path.join(ckpt_dir, spec.file_name())
        if not os.path.isfile(path):
            raise CheckpointError(f"missing checkpoint file {path} (tensor {spec.index}: "
                                  f"{spec.ckpt_path})")
        total_bytes += os.path.getsize(path)
    # Without this a 64-layer checkpoint read with num_layers=2 would load layers 0, 1 and 10.
    extra = os.path.join(ckpt_dir, f"tensor{len(layout):05d}_000")
    if os.path.exists(extra):
        raise CheckpointError(f"{extra} exists but the config has only {len(layout)} tensors: "
                              f"the checkpoint was written for another config (num_layers?)")
    return total_bytes


def _place(host, sharding):
    """Host array (or QuantizedWeight8bit) -> jax Array(s) with the given sharding(s)."""
    if isinstance(host, QuantizedWeight8bit):
        sharding = sharding or QuantizedWeight8bit(None, None)
        if not isinstance(sharding, QuantizedWeight8bit):
            raise ValueError("a quantized leaf needs a QuantizedWeight8bit of two shardings")
        return QuantizedWeight8bit(_place(host.weight, sharding.weight),
                                   _place(host.scales, sharding.scales))
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    # The callback is asked only for this process's shards, so multi-process jobs work too.
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def load_checkpoint(directory: str | os.PathLike, config: LanguageModelConfig, shardings=None, *,
                    max_workers: int = 8, progress: bool = True) -> dict:
    """Reads `directory/ckpt-0` (or `directory` itself) into the model's stacked param tree.

    `shardings`: None (default device) or a tree like the params with a Sharding per array
    (a QuantizedWeight8bit of two for quantized leaves). One leaf at a time, its files are read
    in parallel into one host buffer, placed, and freed: peak host memory is about the largest
    leaf plus `max_workers` files, not the checkpoint. (Placing per layer and stacking on
    device would need twice the leaf in device memory, the scarcer one.)"""
    ckpt_dir, layout = _checkpoint_dir(directory), checkpoint_layout(config)
    bar = tqdm(total=_check_files(ckpt_dir, layout), unit="B", unit_scale=True,
               desc="loading checkpoint", file=sys.stderr, disable=not progress)

    def read_into(leaf: _LeafAssembler, spec: TensorSpec) -> int:
        path = os.path.join(ckpt_dir, spec.file_name())
        leaf.put(spec, read_tensor_file(path, f"tensor {spec.index}: {spec.ckpt_path}"), path)
        return os.path.getsize(path)

    params: dict[str, dict] = {}
    with bar, ThreadPoolExecutor(max_workers=max_workers) as pool:
        for (module, name), specs in _leaf_groups(layout).items():
            leaf = _LeafAssembler(specs)
            futures = [pool.submit(read_into, leaf, spec) for spec in specs]
            try:
                for future in futures:
                    bar.update(future.result())  # re-raises a worker's CheckpointError
            finally:
                for future in futures:
                    future.cancel()  # after an error, skip the files not started yet
            sharding = None if shardings is None else shardings[module][name]
            params.setdefault(module, {})[name] = _place(leaf.value, sharding)
            del leaf  # frees the host buffer (on accelerators) before the next leaf is read
    return params


def read_checkpoint_tensors(directory: str | os.PathLike, config: LanguageModelConfig) -> dict:
    """Every file of a checkpoint, validated, as ckpt_path -> host tensor (tests, conversion)."""
    ckpt_dir, layout = _checkpoint_dir(directory), checkpoint_layout(config)
    _check_files(ckpt_dir, layout)
    tensors = {}
    for spec in layout:
        path = os.path.join(ckpt_dir, spec.file_name())
        tensor = read_tensor_file(path, f"tensor {spec.index}: {spec.ckpt_path}")
        tensors[spec.ckpt_path] = check_tensor(spec, tensor, path)
    return tensors


# Writing, in the release's exact byte format.

class _ReleasePickler(pickle._Pickler):
    """Names globals like the release (numpy 1.x readers need `numpy.core.multiarray`; the
    reference, `__main__.QuantizedWeight8bit`). Pure-Python: the C pickler can't rename."""

    _RENAMED = {id(_np_reconstruct): ("numpy.core.multiarray", "_reconstruct"),
                id(QuantizedWeight8bit): ("__main__", "QuantizedWeight8bit")}

    def save_global(self, obj, name=None):
        if id(obj) not in self._RENAMED:
            return super().save_global(obj, name)
        for part in self._RENAMED[id(obj)]:
            self.save(part)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def write_tensor_file(path: str | os.PathLike, tensor: np.ndarray | QuantizedWeight8bit) -> None:
    """Writes one tensor file (pickle protocol 4) atomically: a temp file, then a rename."""
    obj = jax.tree.map(np.ascontiguousarray, tensor)  # a QuantizedWeight8bit is a pytree
    directory, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            _ReleasePickler(f, protocol=4).dump(obj)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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

"""Loading a checkpoint onto devices: headers first, then each process's blocks, checked finite
and not all zero.

Every file's header is read and checked before any array data; then, one leaf at a time, the
block of it that this process's devices hold is read (only those byte ranges, its files in
parallel), placed, and checked on the devices: finite, and no file's tensor entirely zero (the
zero-filled hole of a partly downloaded file; no Grok-1 weight is all zero by its role, so
`ZERO_ALLOWED` is empty). Every file must stay the one whose header was read until the load
ends (grok.checkpoint.stored_array): a file rewritten or replaced meanwhile is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from grok.checkpoint.layout import SCALES_DTYPE, TensorSpec, checkpoint_layout, leaf_groups
from grok.checkpoint.stored_array import CheckpointError, StoredArray
from grok.checkpoint.tensor_file import locate_tensor_file
from grok.checkpoint.validation import (check_files, check_kind, check_same_groups,
                                        checkpoint_dir)
from grok.config import LanguageModelConfig
from grok.ops.quantization import QuantizedWeight8bit


@dataclasses.dataclass(frozen=True)
class _StoredLeaf:
    """One model array still in its files: one file's array, or (`stacked`) one per layer on a
    leading [L] axis; `dtype` is the model's (float32, int8, or bfloat16 for scales)."""

    parts: tuple[StoredArray, ...]
    stacked: bool
    dtype: np.dtype
    may_be_zero: bool = False    # its role allows an all-zero tensor (ZERO_ALLOWED)

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
        return check_kind(spec, locate_tensor_file(path, f"tensor {spec.index}: {spec.ckpt_path}"),
                        path)

    located = dict(zip(layout, _results([pool.submit(locate, spec) for spec in layout])))
    leaves = {}
    for key, specs in leaf_groups(layout).items():
        tensors, stacked = [located[spec] for spec in specs], specs[0].layer is not None
        check_same_groups(specs, tensors, [os.path.join(ckpt_dir, s.file_name()) for s in specs])
        zero_ok = specs[0].name in ZERO_ALLOWED
        if specs[0].quantized:
            leaves[key] = QuantizedWeight8bit(
                _StoredLeaf(tuple(t.weight for t in tensors), stacked, np.dtype(np.int8), zero_ok),
                _StoredLeaf(tuple(t.scales for t in tensors), stacked, SCALES_DTYPE, zero_ok))
        else:
            leaves[key] = _StoredLeaf(tuple(tensors), stacked, np.dtype(np.float32), zero_ok)
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


def _finite_rows(x: jax.Array) -> jax.Array:
    """[M, ...] -> [M] bool: whether each index of axis 0 holds only finite values (a reduction,
    no reshape: a sharded axis is reduced where it lies; `all` is several times faster than
    counting on CPU)."""
    return jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim)))


def _nonfinite_per_row(x: jax.Array) -> jax.Array:
    """[M, ...] -> [M] int32: how many NaN/Inf values each index of axis 0 holds (for the
    message, once a row is known to hold some)."""
    return jnp.sum(~jnp.isfinite(x), axis=tuple(range(1, x.ndim)), dtype=jnp.int32)


@functools.lru_cache(maxsize=None)
def _jitted(fn: Callable, out_sharding) -> Callable[[jax.Array], jax.Array]:
    """`fn` jitted once per output sharding (a new jit per call would trace again)."""
    return jax.jit(fn, out_shardings=out_sharding)


def _check_finite(leaf: _StoredLeaf, placed: jax.Array) -> None:
    """Raises a CheckpointError naming the file and tensor if the placed float `leaf` holds a
    NaN or Inf: one jitted pass over it on its devices (at HBM speed, cheap next to reading
    the file), a second only to describe what it found."""
    if not jnp.issubdtype(placed.dtype, jnp.floating):
        return  # int8 weights are finite; their scales are checked
    sharding = placed.sharding  # replicated results: every process can read them
    out = (jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
           if isinstance(sharding, jax.sharding.NamedSharding) else None)
    rows = placed if placed.ndim else placed.reshape(1)
    if np.asarray(_jitted(_finite_rows, out)(rows)).all():
        return
    counts = np.asarray(_jitted(_nonfinite_per_row, out)(rows))  # [shape[0]]
    bad = np.flatnonzero(counts)
    if leaf.stacked:  # one row per layer, one file per layer
        part, others = leaf.parts[bad[0]], ""
        if bad.size > 1:
            others = f" (and {bad.size - 1} more layers' files: {leaf.parts[bad[1]].path}, ...)"
        found = f"{counts[bad[0]]} non-finite values (NaN or Inf){others}"
    else:
        part = leaf.parts[0]
        found = (f"{counts.sum()} non-finite values (NaN or Inf), the first in row {bad[0]} of "
                 f"{rows.shape[0]}")
    raise CheckpointError(f"{part.where}: {found}: the weights are damaged")


# Tensor names (TensorSpec.name) that may legitimately be all zero: none in Grok-1's layout.
ZERO_ALLOWED: frozenset[str] = frozenset()


def _nonzero_rows(x: jax.Array) -> jax.Array:
    """[M, ...] -> [M] bool: whether each index of axis 0 holds a value other than zero."""
    return jnp.any(x != 0, axis=tuple(range(1, x.ndim)))


def _check_not_zero(leaf: _StoredLeaf, placed: jax.Array) -> None:
    """Raises a CheckpointError naming the file if one file's part of `leaf` (a layer of a
    stacked leaf, else the whole leaf) is entirely zero: a payload that was never written."""
    if leaf.may_be_zero:
        return
    sharding = placed.sharding
    out = (jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
           if isinstance(sharding, jax.sharding.NamedSharding) else None)
    if not leaf.stacked:
        rows = placed.reshape(1) if not placed.ndim else placed
        if np.asarray(_jitted(_nonzero_rows, out)(rows)).any():
            return
        part = leaf.parts[0]
    else:
        nonzero = np.asarray(_jitted(_nonzero_rows, out)(placed))   # [L]
        if nonzero.all():
            return
        part = leaf.parts[int(np.flatnonzero(~nonzero)[0])]
    raise CheckpointError(f"{part.where}: every value is zero: the file's data was never "
                          f"written (a partly downloaded or zero-filled file?)")


def _check_unchanged(plans: dict) -> None:
    """Every file is still the one whose header was read (one replaced after its data was read
    would leave weights of two versions)."""
    seen = set()
    for plan in plans.values():
        for leaf, _, _ in plan:
            for part in leaf.parts:
                if part.path not in seen:
                    seen.add(part.path)
                    part.check_unchanged()


def _read_and_place(leaf: _StoredLeaf, sharding, box: tuple[slice, ...],
                    pool: ThreadPoolExecutor, on_read: Callable[[int], Any]) -> jax.Array:
    """Reads this process's block of `leaf`, places its shards and checks them finite."""
    block = _read_leaf_block(leaf, box, pool, on_read)

    def shard(index: tuple[slice, ...]) -> np.ndarray:  # called for this process's devices only
        bounds = [axis.indices(n)[:2] for axis, n in zip(index, leaf.shape)]
        return block[tuple(slice(a - b.start, z - b.start) for (a, z), b in zip(bounds, box))]

    placed = jax.make_array_from_callback(leaf.shape, sharding, shard)
    _check_finite(leaf, placed)
    _check_not_zero(leaf, placed)
    return placed


def load_checkpoint(directory: str | os.PathLike, config: LanguageModelConfig, shardings=None, *,
                    max_workers: int = 8, progress: bool = True) -> dict:
    """Reads `directory/ckpt-0` (or `directory` itself) into the model's stacked param tree.

    `shardings`: None (default device) or a tree like the params with a Sharding per array
    (a QuantizedWeight8bit of two for quantized leaves). Every file's header is read and checked
    first. Then, one leaf at a time, the block of it that this process's devices hold is read
    (only those byte ranges, its files in parallel) into one host buffer, placed, and freed:
    peak host memory is about the largest leaf's block, not the checkpoint. (Placing per layer
    and stacking on device would need twice the leaf in device memory, the scarcer one.) Each
    placed float leaf is checked finite on its devices; every process gets the same verdict.

    Raises CheckpointError naming the file and tensor (ConfigMismatchError where the files are
    another config's: other shapes, fewer or more layers)."""
    ckpt_dir, layout = checkpoint_dir(directory), checkpoint_layout(config)
    check_files(ckpt_dir, layout, config)
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
    _check_unchanged(plans)
    return params

"""One tensor file of a `ckpt-0` checkpoint (spec/checkpoint.md): located, read in blocks, written.

A file is a pickle (protocol 4) of one numpy array or one `__main__.QuantizedWeight8bit` of two.
Files are untrusted: locating one reads only its header, through the allow-list unpickler of
`safe_unpickle`, which never calls what the stream names. The result, `StoredArray`s, says where
each array's bytes lie, so a process can read only the block its devices hold. Only regular files
are read. Written files are byte-identical to the release's.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile

import numpy as np
from numpy._core.multiarray import _reconstruct as _np_reconstruct

from grok.checkpoint.safe_unpickle import locate_arrays
from grok.checkpoint.stored_array import (CheckpointError, StoredArray, describe_path,
                                          file_identity, open_regular)
from grok.ops.quantization import QuantizedWeight8bit

__all__ = ["CheckpointError", "StoredArray", "describe_path", "locate_tensor_file",
           "open_regular", "read_tensor_file", "write_tensor_file"]


def locate_tensor_file(path: str | os.PathLike,
                       what: str = "") -> StoredArray | QuantizedWeight8bit:
    """Where the arrays of one file lie (a StoredArray, or a QuantizedWeight8bit of two), from
    its header alone: payloads are skipped, checked only to lie within the file. `what` names
    the tensor in error messages and in the StoredArrays ("tensor 7: .../moe/linear/w")."""
    path = os.fspath(path)
    with open_regular(path, f"{path} ({what})" if what else path) as f:
        info = os.fstat(f.fileno())
        located = locate_arrays(f, info.st_size, path, what)
    identity = file_identity(info)      # every later read checks the file is still this one
    if isinstance(located, QuantizedWeight8bit):
        return QuantizedWeight8bit(dataclasses.replace(located.weight, identity=identity),
                                   dataclasses.replace(located.scales, identity=identity))
    return dataclasses.replace(located, identity=identity)


def read_tensor_file(path: str | os.PathLike, what: str = "") -> np.ndarray | QuantizedWeight8bit:
    """Safely reads one whole file: a numpy array, or a QuantizedWeight8bit of numpy arrays."""
    located = locate_tensor_file(path, what)
    if isinstance(located, QuantizedWeight8bit):
        return QuantizedWeight8bit(located.weight.read(), located.scales.read())
    return located.read()


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
    if isinstance(tensor, QuantizedWeight8bit):
        obj = QuantizedWeight8bit(np.ascontiguousarray(tensor.weight),
                                  np.ascontiguousarray(tensor.scales))
    else:
        obj = np.ascontiguousarray(tensor)
    directory, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            _ReleasePickler(f, protocol=4).dump(obj)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

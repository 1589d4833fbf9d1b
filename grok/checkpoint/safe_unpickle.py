"""The allow-list unpickler of tensor files: a file's arrays located, nothing it names called.

A file is a pickle (protocol 4) of one numpy array or one `__main__.QuantizedWeight8bit` of two.
Its opcodes are walked first: each bytes payload (array data) is noted by file offset and length
and skipped, not read; the rest, a few hundred bytes, goes to an unpickler that resolves only the
globals of spec/checkpoint.md, to stand-ins built from validated state. Opcodes that would reach
objects without the allow-list (persistent ids, copyreg extension codes) are refused.
"""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
import pickletools
import struct
from typing import Optional

import ml_dtypes
import numpy as np

from grok.checkpoint.stored_array import CheckpointError, StoredArray, short_repr as _short
from grok.ops.quantization import QuantizedWeight8bit


# Safe unpickling. find_class hands out only the stand-ins below, never a real callable: arrays
# and dtypes are described from validated state, so a crafted stream can't make numpy allocate
# huge buffers, mutate dtype singletons, or unpickle object arrays.

class _Refused(Exception):
    """Raised inside the walk or the unpickler; locate_arrays names the file."""


class _Corrupt(Exception):
    """A malformed stream, found by the opcode walk; the message is the whole complaint."""


class _Payload:
    """A bytes payload left in the file: its offset and length (and the bytes, if tiny)."""

    __slots__ = ("offset", "length", "data")

    def __init__(self, offset: int, length: int, data: Optional[bytes]):
        self.offset, self.length, self.data = offset, length, data

    def __repr__(self):  # untrusted state in error messages, never in full
        return f"<{self.length} bytes>"

    def __setstate__(self, state):  # BUILD would move the bytes after the walk checked them
        raise _Refused("setting state on an array payload is not allowed (it would change where "
                       "the array is read from)")


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
    """What `_reconstruct(ndarray, (0,), b'b')` becomes; its BUILD gives shape, dtype, payload."""

    array: Optional[StoredArray] = None  # its path is filled in by locate_tensor_file

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]  # (version, shape, dtype, fortran, raw); older files omit version
        if not (isinstance(state, tuple) and len(state) == 4) or self.array is not None:
            raise _Refused(f"unsupported numpy.ndarray state {_short(state)}")
        shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and len(shape) <= 8
                and all(isinstance(n, int) and n >= 0 for n in shape) and isinstance(fortran, bool)
                and isinstance(dtype, _DtypeStub) and isinstance(raw, _Payload)):
            raise _Refused(f"bad numpy.ndarray state {_short(state)}")  # e.g. object array
        if raw.length != math.prod(shape) * dtype.dtype.itemsize:
            raise _Refused(f"{raw.length} data bytes do not fit shape {shape} {dtype.dtype}")
        self.array = StoredArray("", raw.offset, dtype.dtype, shape, fortran and len(shape) > 1)


def _reconstruct(subtype, shape, code) -> _ArrayStub:
    code = code.data if isinstance(code, _Payload) else code
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
    """Resolves only the globals of spec/checkpoint.md, to the stand-ins above. Runs on the
    walked stream, whose only persistent ids are the walk's payload numbers."""

    def __init__(self, stream: bytes, payloads: list[_Payload]):
        super().__init__(io.BytesIO(stream))
        self.payloads = payloads

    def persistent_load(self, pid):
        return self.payloads[pid]

    def find_class(self, module, name):
        if module.startswith("ml_dtypes.") and name == "bfloat16":  # other ml_dtypes versions
            module = "ml_dtypes"
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _Refused(f"refused global '{module}.{name}' (not on the checkpoint allow-list)")
        return _ALLOWED_GLOBALS[(module, name)]


# The opcode walk: every opcode is copied except FRAME (framing is optional) and bytes payloads,
# which become BININT k, BINPERSID, so the unpickler sees payloads[k] and never the bytes.

_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_PAYLOAD_OPCODES = {"SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8"}
_LENGTH_PREFIX = {pickletools.TAKEN_FROM_ARGUMENT1: "<B", pickletools.TAKEN_FROM_ARGUMENT4: "<i",
                  pickletools.TAKEN_FROM_ARGUMENT4U: "<I", pickletools.TAKEN_FROM_ARGUMENT8U: "<Q"}
_MAX_HEADER_BYTES = 1 << 20  # all but the payloads; the release's files have ~300 bytes
_KEPT_PAYLOAD_BYTES = 16     # tiny payloads are kept too: _reconstruct's b'b' is one
# CPython returns a cached copyreg extension without calling find_class: never allowed.
_EXTENSION_OPCODES = frozenset({"EXT1", "EXT2", "EXT4"})


class _Walk:
    """Reads a pickle stream op by op, within the file's size and the header budget."""

    def __init__(self, f, size: int):
        self.f, self.size, self.out, self.payloads = f, size, io.BytesIO(), []

    def take(self, n: int) -> bytes:
        if n < 0 or self.out.tell() + n > _MAX_HEADER_BYTES:
            raise _Corrupt(f"corrupt file (a {n}-byte pickle argument; only array payloads may "
                           f"be large)")
        data = self.f.read(n)
        if len(data) != n:
            raise _Corrupt(f"truncated or corrupt (the pickle ends at byte {self.f.tell()})")
        return data

    def line(self) -> bytes:
        data = self.f.readline(_MAX_HEADER_BYTES - self.out.tell())
        if not data.endswith(b"\n"):
            raise _Corrupt("truncated or corrupt (an unterminated or overlong pickle text line)")
        return data

    def argument(self, op) -> bytes:
        """The raw bytes of op's argument (for payload opcodes, only the length prefix)."""
        if op.arg is None:
            return b""
        if op.arg.n >= 0:
            return self.take(op.arg.n)
        if op.arg.n == pickletools.UP_TO_NEWLINE:
            return self.line() + (self.line() if op.name in ("GLOBAL", "INST") else b"")
        fmt = _LENGTH_PREFIX[op.arg.n]
        prefix = self.take(struct.calcsize(fmt))
        if op.name in _PAYLOAD_OPCODES:
            return prefix
        return prefix + self.take(struct.unpack(fmt, prefix)[0])

    def payload(self, op, prefix: bytes) -> None:
        """Notes the payload that follows and skips it; the stream gets its persistent id."""
        length, offset = struct.unpack(_LENGTH_PREFIX[op.arg.n], prefix)[0], self.f.tell()
        if offset + length > self.size:
            raise _Corrupt(f"truncated or corrupt (a {length}-byte payload at byte {offset} runs "
                           f"past the end of the {self.size}-byte file)")
        data = self.f.read(length) if length <= _KEPT_PAYLOAD_BYTES else None
        self.f.seek(offset + length)
        self.out.write(pickle.BININT + struct.pack("<i", len(self.payloads)) + pickle.BINPERSID)
        self.payloads.append(_Payload(offset, length, data))


def _walk(f, size: int) -> tuple[bytes, list[_Payload]]:
    """The stream with payloads replaced by persistent ids, and the payloads, of file `f`."""
    walk = _Walk(f, size)
    while True:
        code = walk.take(1)
        op = _OPCODES.get(code)
        if op is None:
            raise _Corrupt(f"truncated or corrupt (invalid pickle opcode {code!r} at byte "
                           f"{f.tell() - 1})")
        if op.name in ("PERSID", "BINPERSID"):
            raise _Corrupt("corrupt file (persistent ids are not part of the format)")
        if op.name in _EXTENSION_OPCODES:
            raise _Refused(f"refused opcode {op.name} (a copyreg extension code names a global "
                           f"that the unpickler would not check against the allow-list)")
        argument = walk.argument(op)
        if op.name in _PAYLOAD_OPCODES:
            walk.payload(op, argument)
        elif op.name == "FRAME":
            if f.tell() + struct.unpack("<Q", argument)[0] > size:
                raise _Corrupt("truncated or corrupt (a pickle frame runs past the end of file)")
        else:
            walk.out.write(code + argument)
        if op.name == "STOP":
            if f.tell() != size:
                raise _Corrupt("corrupt file (bytes after the end of the pickle)")
            return walk.out.getvalue(), walk.payloads


def locate_arrays(f, size: int, path: str, what: str) -> StoredArray | QuantizedWeight8bit:
    """The arrays (StoredArrays, each within the file) that the open file `f` of `size` bytes
    holds; a CheckpointError naming `path` and `what` if it is refused, corrupt or truncated."""
    where = f"{path} ({what})" if what else path
    try:
        stream, payloads = _walk(f, size)
        obj = _SafeUnpickler(stream, payloads).load()
    except _Refused as e:
        raise CheckpointError(f"{where}: {e}; nothing from this file was executed") from None
    except _Corrupt as e:
        raise CheckpointError(f"{where}: {e}") from None
    except Exception as e:  # unreadable, truncated or corrupt input raises many types
        raise CheckpointError(f"{where}: truncated or corrupt ({type(e).__name__}: {e})"
                              ) from None
    if isinstance(obj, _ArrayStub) and obj.array is not None:
        located = dataclasses.replace(obj.array, path=path, what=what)
    elif isinstance(obj, _QuantizedWeightStub) and "weight" in vars(obj):
        label = f"{what}, " if what else ""
        located = QuantizedWeight8bit(
            weight=dataclasses.replace(obj.weight, path=path, what=f"{label}weight"),
            scales=dataclasses.replace(obj.scales, path=path, what=f"{label}scales"))
    else:
        raise CheckpointError(f"{where}: holds a {type(obj).__name__}, expected an array or a "
                              f"QuantizedWeight8bit")
    for array in (located.weight, located.scales) if isinstance(located, QuantizedWeight8bit) \
            else (located,):
        array.check_extent(size)  # the walk checked each payload; this checks what uses them
    return located

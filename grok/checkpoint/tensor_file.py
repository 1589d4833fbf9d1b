"""One tensor file of a `ckpt-0` checkpoint (spec/checkpoint.md): located, read in blocks, written.

A file is a pickle (protocol 4) of one numpy array or one `__main__.QuantizedWeight8bit` of two.
Files are untrusted. Reading one first walks its opcodes: each bytes payload (array data) is
noted by file offset and length and skipped, not read; the rest, a few hundred bytes, goes to an
allow-list unpickler that builds stand-ins from validated state and never calls what the stream
names. The result, `StoredArray`s, says where each array's bytes lie, so a process can read only
the block its devices hold. Written files are byte-identical to the release's.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import os
import pickle
import pickletools
import reprlib
import stat
import struct
import tempfile
from typing import Optional

import ml_dtypes
import numpy as np
from numpy._core.multiarray import _reconstruct as _np_reconstruct

from grok.ops.quantization import QuantizedWeight8bit


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, refused as unsafe, or does not fit the config."""


# Opening: regular files only.

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))
# A FIFO must not block the open (no writer would ever come); harmless on a regular file.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def describe_path(path: str) -> str:
    """What `path` is, for a message saying why it was not read: "missing", "a directory",
    "a symlink to /dev/zero (a character device)", ... ("a regular file" if it is one)."""
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"not examinable ({e.strerror})"
    if not stat.S_ISLNK(link.st_mode):
        return "a regular file" if stat.S_ISREG(link.st_mode) else _kind(link.st_mode)
    try:
        target = os.readlink(path)
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"a symlink to {target}, which is missing"
    except OSError as e:
        return f"a symlink that cannot be followed ({e.strerror})"
    return f"a symlink to {target} ({'a regular file' if stat.S_ISREG(mode) else _kind(mode)})"


def _not_regular(path: str, where: str) -> CheckpointError:
    what = describe_path(path)
    if what == "missing":
        return CheckpointError(f"{where}: missing (no such file)")
    return CheckpointError(f"{where}: is {what}, not a regular file; only regular files (or "
                           f"symlinks to them) are read")


def open_regular(path: str, where: str, buffering: int = -1):
    """`path` opened for binary reading if it is a regular file (or a symlink to one); else a
    CheckpointError saying what it is. A FIFO or device is never opened: stat first, then the
    opened file's own fstat (the path may change in between)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise _not_regular(path, where)
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise _not_regular(path, where) from None
    except OSError as e:
        raise CheckpointError(f"{where}: cannot open ({e.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_regular(path, where)
    except BaseException:
        os.close(fd)
        raise
    return open(fd, "rb", buffering=buffering)


# Where arrays lie, and reading blocks of them.

# A run shorter than this costs a page read anyway: read whole rows of the axis above instead.
_MIN_RUN_BYTES = 4096


def _read_exact(f, offset: int, buffer: memoryview, where: str) -> int:
    """Fills `buffer` from `offset` of the open file `f`; the one place file data is read."""
    f.seek(offset)
    done = 0
    while done < len(buffer):
        n = f.readinto(buffer[done:])  # may be short (e.g. Linux caps one read near 2 GiB)
        if not n:
            raise CheckpointError(f"{where}: truncated (file ends before byte "
                                  f"{offset + len(buffer)} of an array)")
        done += n
    return done


@dataclasses.dataclass(frozen=True)
class StoredArray:
    """One array in a tensor file: its bytes lie at `offset`, in C order unless `fortran`.
    Every read re-checks that they lie within the file, whoever made this description."""

    path: str
    offset: int
    dtype: np.dtype              # as stored, any byte order
    shape: tuple[int, ...]
    fortran: bool = False
    what: str = ""               # the tensor, for messages: "tensor 7: .../moe/linear/w, scales"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def where(self) -> str:
        """The file and the tensor, to begin an error message."""
        return f"{self.path} ({self.what})" if self.what else str(self.path)

    def check_extent(self, file_size: int) -> None:
        """Raises a CheckpointError unless offset, shape and dtype are well-typed and the
        array's bytes lie within a file of `file_size` bytes."""
        if not (type(self.offset) is int and self.offset >= 0 and isinstance(self.shape, tuple)
                and all(type(n) is int and n >= 0 for n in self.shape)
                and isinstance(self.dtype, np.dtype)):
            raise CheckpointError(f"{self.where}: corrupt array location (offset "
                                  f"{_short(self.offset)}, shape {_short(self.shape)}, dtype "
                                  f"{_short(self.dtype)})")
        if self.offset + self.nbytes > file_size:
            raise CheckpointError(f"{self.where}: truncated or corrupt (a {self.nbytes}-byte array "
                                  f"at byte {self.offset} runs past the end of the {file_size}-byte "
                                  f"file)")

    def _open(self):
        """The file, opened unbuffered, once this array is known to lie within it."""
        f = open_regular(self.path, self.where, buffering=0)
        try:
            self.check_extent(os.fstat(f.fileno()).st_size)
        except BaseException:
            f.close()
            raise
        return f

    def _c_order(self, box):
        """(the same bytes as a C-order array of rank >= 1, (start, stop) per axis in it):
        Fortran order is C order of the reversed shape; a scalar is one item."""
        bounds = _bounds(box, self.shape)
        if not self.shape:
            return dataclasses.replace(self, shape=(1,)), [(0, 1)]
        if not self.fortran:
            return self, bounds
        return dataclasses.replace(self, shape=self.shape[::-1], fortran=False), bounds[::-1]

    def bytes_to_read(self, box=None) -> int:
        """How many bytes `read_into(out, box)` reads."""
        array, bounds = self._c_order(box)
        if any(a == b for a, b in bounds):
            return 0
        _, count, run_shape, _ = _runs(array, bounds)
        return count * math.prod(run_shape) * array.dtype.itemsize

    def read(self, box=None) -> np.ndarray:
        """The block `box` (None: all) as a new array of the stored dtype."""
        with self._open() as f:  # checked before allocating: a 200-byte file can't claim 4 TB
            out = np.empty([stop - start for start, stop in _bounds(box, self.shape)], self.dtype)
            self._read_open(f, out, box)
        return out

    def read_into(self, out: np.ndarray, box=None) -> int:
        """Fills `out` (the block's shape, any numeric dtype: values are cast) with the block
        `box` (a tuple of step-1 slices, None: all) of this array, reading only the bytes of the
        block (rounded up to whole rows where its rows are under a page); returns bytes read."""
        with self._open() as f:
            return self._read_open(f, out, box)

    def _read_open(self, f, out: np.ndarray, box) -> int:
        array, bounds = self._c_order(box)
        if out.shape != tuple(b - a for a, b in _bounds(box, self.shape)):
            raise ValueError(f"a {out.shape} buffer for a {box} block of an array {self.shape}")
        direct = not self.fortran and out.dtype == self.dtype and out.flags.c_contiguous
        block = out.reshape([b - a for a, b in bounds]) if direct else np.empty(
            [b - a for a, b in bounds], array.dtype)
        try:
            done = _read_block(f, array, bounds, block)
        except OSError as e:  # an I/O error, a file on a dropped network mount, ...
            raise CheckpointError(f"{self.where}: read failed ({e})") from None
        if not direct:
            out[...] = block.T if self.fortran else block.reshape(out.shape)
        return done


def _bounds(box, shape) -> list[tuple[int, int]]:
    """(start, stop) per axis of a tuple of step-1 slices (None: the whole array)."""
    box = tuple(box or ())
    if len(box) > len(shape) or any(not isinstance(s, slice) or s.step not in (None, 1)
                                    for s in box):
        raise ValueError(f"a block of an array {shape} is a tuple of step-1 slices, got {box}")
    box += (slice(None),) * (len(shape) - len(box))
    return [s.indices(n)[:2] for s, n in zip(box, shape)]


def _runs(array: StoredArray, bounds):
    """(file offsets, how many, run shape, axis) of the reads of a block of a C-order array:
    one per index of the block's axes before `axis`, each the block's range on `axis` with all
    later axes whole. `axis` is the last axis the block does not cover whole, or an earlier one
    where that would make runs shorter than a page."""
    shape, item = array.shape, array.dtype.itemsize
    extent = [stop - start for start, stop in bounds]
    axis = len(shape)
    while axis > 0 and bounds[axis - 1] == (0, shape[axis - 1]):
        axis -= 1
    axis = max(axis - 1, 0)
    while axis > 0 and extent[axis] * math.prod(shape[axis + 1:]) * item < _MIN_RUN_BYTES:
        axis -= 1
    strides = [math.prod(shape[a + 1:]) * item for a in range(len(shape))]
    start = array.offset + bounds[axis][0] * strides[axis]
    outer = itertools.product(*[range(a, b) for a, b in bounds[:axis]])
    offsets = (start + sum(i * s for i, s in zip(index, strides)) for index in outer)
    return offsets, math.prod(extent[:axis]), (extent[axis], *shape[axis + 1:]), axis


def _read_block(f, array: StoredArray, bounds, out: np.ndarray) -> int:
    """Reads the block `bounds` of a C-order `array` into `out` (C-contiguous, stored dtype)."""
    if out.size == 0:
        return 0
    offsets, _, run_shape, axis = _runs(array, bounds)
    rows = out.reshape(-1, *out.shape[axis:])  # one row per run, in run order
    # Axes after `axis` that the block does not cover whole were read whole: cut them out.
    cut = (slice(None), *[slice(a, b) for a, b in bounds[axis + 1:]])
    exact = tuple(run_shape) == rows.shape[1:]
    scratch = None if exact else np.empty(run_shape, array.dtype)
    done = 0
    for row, offset in zip(rows, offsets):
        target = row if exact else scratch
        done += _read_exact(f, offset, memoryview(target.reshape(-1).view(np.uint8)),
                            array.where)
        if not exact:
            row[...] = scratch[cut]
    return done


# Safe unpickling. find_class hands out only the stand-ins below, never a real callable: arrays
# and dtypes are described from validated state, so a crafted stream can't make numpy allocate
# huge buffers, mutate dtype singletons, or unpickle object arrays.

class _Refused(Exception):
    """Raised inside the unpickler; locate_tensor_file names the file."""


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


class _ShortRepr(reprlib.Repr):
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


def locate_tensor_file(path: str | os.PathLike,
                       what: str = "") -> StoredArray | QuantizedWeight8bit:
    """Where the arrays of one file lie (a StoredArray, or a QuantizedWeight8bit of two), from
    its header alone: payloads are skipped, checked only to lie within the file."""
    path = os.fspath(path)
    where = f"{path}{f' ({what})' if what else ''}"
    with open_regular(path, where) as f:
        size = os.fstat(f.fileno()).st_size
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

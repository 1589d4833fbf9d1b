"""Where an array lies in a tensor file, and reading blocks of it (regular files only).

A `StoredArray` says where one array's bytes lie in its file; reading a block reads only the
bytes of that block, after checking that the array lies within the file, whoever described it.
Files are opened only if they are regular files (or symlinks to them): a FIFO, a directory or a
device is reported as what it is, and never opened.

A file must not change while it is read: a StoredArray remembers its file's `identity` (device,
inode, size, modification time) from when its header was read, and every read checks the open
file against it before and after reading, so a file being rewritten, replaced or still
downloading is refused instead of giving weights of neither version.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import reprlib
import stat

import numpy as np


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, refused as unsafe, or does not fit the config."""


# Opening: regular files only.

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))
# A FIFO must not block the open (no writer would ever come); harmless on a regular file.
# (getattr: the os module has these flags only on platforms that define them.)
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
        return open(fd, "rb", buffering=buffering)  # the file object now owns fd
    except BaseException:
        os.close(fd)
        raise


def file_identity(info: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file is rewritten or replaced: (device, inode, size, mtime ns)."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def changed_error(where: str) -> CheckpointError:
    return CheckpointError(f"{where}: the file changed while the checkpoint was being read "
                           f"(its size, modification time or inode differ from when its header "
                           f"was read): is it still being written or copied? Load it once it "
                           f"is complete")


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
    identity: tuple = ()         # file_identity when the header was read (): not checked

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
        if not (type(self.offset) is int and 0 <= self.offset < 2**63
                and isinstance(self.shape, tuple)
                and all(type(n) is int and 0 <= n < 2**63 for n in self.shape)
                and isinstance(self.dtype, np.dtype)):
            raise CheckpointError(f"{self.where}: corrupt array location (offset "
                                  f"{short_repr(self.offset)}, shape {short_repr(self.shape)}, "
                                  f"dtype {short_repr(self.dtype)})")
        if self.offset + self.nbytes > file_size:
            raise CheckpointError(f"{self.where}: truncated or corrupt (a {self.nbytes}-byte "
                                  f"array at byte {self.offset} runs past the end of the "
                                  f"{file_size}-byte file)")

    def _open(self):
        """The file, opened unbuffered, once this array is known to lie within it."""
        f = open_regular(self.path, self.where, buffering=0)
        try:
            self.check_extent(os.fstat(f.fileno()).st_size)   # a shortened file says so
            self.check_unchanged(f)
        except BaseException:
            f.close()
            raise
        return f

    def check_unchanged(self, f=None) -> None:
        """Raises a CheckpointError if the file (the open `f`, else the path now) is not the
        one whose header described this array."""
        if not self.identity:
            return
        try:
            info = os.fstat(f.fileno()) if f is not None else os.stat(self.path)
        except OSError:
            raise changed_error(self.where) from None
        if file_identity(info) != self.identity:
            raise changed_error(self.where)

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
            self.check_unchanged(f)
        return out

    def read_into(self, out: np.ndarray, box=None) -> int:
        """Fills `out` (the block's shape, any numeric dtype: values are cast) with the block
        `box` (a tuple of step-1 slices, None: all) of this array, reading only the bytes of the
        block (rounded up to whole rows where its rows are under a page); returns bytes read."""
        with self._open() as f:
            done = self._read_open(f, out, box)
            self.check_unchanged(f)
            return done

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



# Untrusted state in error messages, never in full.

class _ShortRepr(reprlib.Repr):
    def repr_bytes(self, obj, level):
        return f"<{len(obj)} bytes>"

    def repr_int(self, obj, level):
        if obj.bit_length() > 128:   # too long to print (Python refuses past 4300 digits)
            return f"<a {obj.bit_length()}-bit integer>"
        return super().repr_int(obj, level)

    repr_bytearray = repr_bytes


short_repr = _ShortRepr().repr

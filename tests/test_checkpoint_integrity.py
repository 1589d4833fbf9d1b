"""Weights are what the files said: a file that changes while the checkpoint loads is refused,
and so is a file whose payload is all zero (the hole of a partly downloaded file)."""

import os

import numpy as np
import pytest

from grok import checkpoint as ckpt
from grok import demo
from grok.checkpoint import loader
from grok.checkpoint.layout import checkpoint_layout
from grok.checkpoint.tensor_file import locate_tensor_file, read_tensor_file, write_tensor_file
from grok.ops.quantization import QuantizedWeight8bit

CONFIG = demo.DEMO


@pytest.fixture()
def directory(tmp_path):
    return demo.write_demo_checkpoint(str(tmp_path / "demo"))


def _file(directory, index: int) -> str:
    return os.path.join(directory, "ckpt-0", checkpoint_layout(CONFIG)[index].file_name())


def _arrays(path):
    located = locate_tensor_file(path)
    return [located.weight, located.scales] if isinstance(located, QuantizedWeight8bit) \
        else [located]


def _zero_payload(path, which: int = 0) -> None:
    array = _arrays(path)[which]
    with open(path, "r+b") as f:
        f.seek(array.offset)
        f.write(b"\0" * array.nbytes)


def test_the_demo_checkpoint_loads(directory):
    params = ckpt.load_checkpoint(directory, CONFIG, progress=False)
    assert np.asarray(params["language_model/in_out_embed"]["embeddings"]).any()


@pytest.mark.parametrize("index,which", [(0, 0), (3, 0), (3, 1)],
                         ids=["embedding", "int8-weight", "scales"])
def test_a_zero_filled_payload_is_refused(directory, index, which):
    path = _file(directory, index)
    if which and not isinstance(locate_tensor_file(path), QuantizedWeight8bit):
        pytest.skip("tensor 3 is not quantized in this layout")
    _zero_payload(path, which)
    with pytest.raises(ckpt.CheckpointError, match="every value is zero") as error:
        ckpt.load_checkpoint(directory, CONFIG, progress=False)
    assert path in str(error.value)


def _rewrite(path, how: str) -> None:
    """Changes a tensor file as a download or copy in progress would."""
    if how == "replaced":         # a new file renamed over it (another inode)
        tensor = read_tensor_file(path)
        if isinstance(tensor, QuantizedWeight8bit):
            tensor = QuantizedWeight8bit(-tensor.weight, tensor.scales)
        else:
            tensor = tensor + 1
        write_tensor_file(path, tensor)
    else:                         # rewritten in place (same inode and size)
        array = _arrays(path)[0]
        with open(path, "r+b") as f:
            f.seek(array.offset)
            f.write(b"\x01" * min(array.nbytes, 64))
        info = os.stat(path)     # a later mtime even where timestamps are coarse
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))


@pytest.mark.parametrize("how", ["replaced", "in-place"])
@pytest.mark.parametrize("when", ["before-its-read", "after-its-read"])
def test_a_file_changed_during_the_load_is_refused(directory, monkeypatch, how, when):
    """One file changes while others are being read: before its data is read (caught when it
    is opened) or after (caught by the check at the end of the load)."""
    layout = checkpoint_layout(CONFIG)
    target = _file(directory, 0 if when == "after-its-read" else len(layout) - 1)
    original = loader._read_leaf_block
    calls = []

    def read_then_change(leaf, box, pool, on_read=lambda _: None):
        block = original(leaf, box, pool, on_read)
        calls.append(1)
        if len(calls) == 2:          # after the first leaves, before the last ones
            _rewrite(target, how)
        return block

    monkeypatch.setattr(loader, "_read_leaf_block", read_then_change)
    with pytest.raises(ckpt.CheckpointError, match="changed while") as error:
        ckpt.load_checkpoint(directory, CONFIG, progress=False)
    assert target in str(error.value)


def test_a_dimension_too_long_to_print_still_names_the_file():
    from grok.checkpoint.stored_array import StoredArray

    huge = StoredArray("/data/ckpt-0/tensor00007_000", 0, np.dtype(np.float32), (10**5000,),
                       what="tensor 7: x/w")
    with pytest.raises(ckpt.CheckpointError, match=r"tensor00007_000 \(tensor 7: x/w\)") as e:
        huge.check_extent(100)
    assert "bit integer" in str(e.value)

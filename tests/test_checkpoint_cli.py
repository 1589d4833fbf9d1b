"""Broken or hostile checkpoints through run.py: exit status 2, the file (and tensor) named.

Two cases run `python run.py` as a subprocess; the rest call `grok.cli.main(argv)` in-process,
the function run.py calls (loading fails before anything compiles, so each costs a load only).
The EXT-opcode case, which needs a process with a copyreg extension, is in
test_checkpoint_security.py.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from grok import cli, demo
from grok.checkpoint import store as ckpt
from grok.ops.quantization import QuantizedWeight8bit

REPO_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# Three layers, so one layer's scale groups can differ from the two others'.
CONFIG = dataclasses.replace(demo.DEMO, model=dataclasses.replace(demo.DEMO.model, num_layers=3))
LAYOUT = {spec.ckpt_path: spec for spec in ckpt.checkpoint_layout(CONFIG)}


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """(DIR holding ckpt-0 and config.json, its quantized tensors)."""
    directory = str(tmp_path_factory.mktemp("good"))
    demo.write_demo_checkpoint(directory, CONFIG)
    tensors = demo.demo_tensors(CONFIG, demo.DEMO_SEED)
    return directory, tensors


@pytest.fixture
def checkpoint(good_checkpoint, tmp_path):
    """A fresh copy of the good checkpoint, to break: (DIR, tensors)."""
    directory, tensors = good_checkpoint
    shutil.copytree(directory, tmp_path / "ckpt")
    return str(tmp_path / "ckpt"), tensors


def file_of(directory, path):
    return os.path.join(directory, "ckpt-0", LAYOUT[path].file_name())


def argv(directory, config=None):
    return ["--checkpoint", directory, "--config", config or os.path.join(directory, "config.json"),
            "--tokenizer", "bytes", "--mesh", "1,1", "--prompt", "x"]


def run_main(capsys, directory, config=None):
    capsys.readouterr()
    status = cli.main(argv(directory, config))
    return status, capsys.readouterr().err


def run_subprocess(directory):
    return subprocess.run([sys.executable, os.path.join(REPO_DIR, "run.py"), *argv(directory)],
                          capture_output=True, text=True, timeout=300, cwd=directory,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def with_nan(tensor, where, value=np.nan):
    """A copy of a float array (or of a quantized weight's scales) with `value` at `where`."""
    if isinstance(tensor, QuantizedWeight8bit):
        return QuantizedWeight8bit(tensor.weight, with_nan(tensor.scales, where, value))
    tensor = np.array(tensor)
    tensor[where] = value
    return tensor


def payload_moved_to_offset_0(array: np.ndarray) -> bytes:
    """`array` pickled, with BUILD (None, {"offset": 0}) applied to its data payload: the old
    reader read the pickle header as weights and exited 0."""
    data = pickle_protocol_3(array)
    end = data.rindex(array.tobytes()) + array.nbytes
    return data[:end] + b"N}X\x06\x00\x00\x00offsetK\x00s\x86b" + data[end:]


def pickle_protocol_3(array):
    import pickle
    return pickle.dumps(array, protocol=3)


@pytest.mark.slow
def test_run_py_refuses_a_payload_moved_by_build(checkpoint):
    directory, tensors = checkpoint
    path = file_of(directory, "language_model/rms_norm/scale")
    with open(path, "wb") as f:
        f.write(payload_moved_to_offset_0(tensors["language_model/rms_norm/scale"]))
    run = run_subprocess(directory)
    assert run.returncode == 2, run.stderr
    assert path in run.stderr and "language_model/rms_norm/scale" in run.stderr
    assert "setting state on an array payload is not allowed" in run.stderr


@pytest.mark.slow
def test_run_py_refuses_nan_scales(checkpoint):
    directory, tensors = checkpoint
    name = "transformer/decoder_layer_1/moe/linear_1/w"
    ckpt.write_tensor_file(file_of(directory, name), with_nan(tensors[name], (...,)))
    run = run_subprocess(directory)
    assert run.returncode == 2, run.stderr
    assert file_of(directory, name) in run.stderr and f"{name}, scales" in run.stderr
    assert "non-finite" in run.stderr


@pytest.mark.parametrize("name, where, value", [
    ("transformer/decoder_layer_2/multi_head_attention/value/w", (0, 3), np.inf),   # one scale
    ("language_model/in_out_embed/embeddings", (42,), np.nan),                       # one row
])
def test_non_finite_weights_exit_2_naming_the_tensor(checkpoint, capsys, name, where, value):
    directory, tensors = checkpoint
    ckpt.write_tensor_file(file_of(directory, name), with_nan(tensors[name], where, value))
    status, err = run_main(capsys, directory)
    assert status == 2 and file_of(directory, name) in err and name in err, err
    assert "non-finite" in err


@pytest.mark.parametrize("make, words", [
    (os.mkfifo, "a FIFO"), (os.mkdir, "a directory"),
    (lambda path: os.symlink("/dev/zero", path), "a symlink to /dev/zero (a character device)"),
])
def test_a_non_regular_file_exits_2_saying_what_it_is(checkpoint, capsys, make, words):
    directory, _ = checkpoint
    path = file_of(directory, "transformer/decoder_layer_0/router/w")
    os.remove(path)
    make(path)
    status, err = run_main(capsys, directory)
    assert status == 2 and path in err and words in err and "missing" not in err, err


def test_a_group_mismatch_exits_2_blaming_the_layer_that_differs(checkpoint, capsys):
    directory, _ = checkpoint
    name = "transformer/decoder_layer_0/moe/linear_1/w"        # G=8 in the release
    shape = LAYOUT[name].shape
    odd = QuantizedWeight8bit(np.ones(shape, np.int8),
                              np.ones((shape[0], 4, shape[-1]), ml_dtypes.bfloat16))
    ckpt.write_tensor_file(file_of(directory, name), odd)
    status, err = run_main(capsys, directory)
    assert status == 2 and file_of(directory, name) in err and "G=4" in err, err
    assert "decoder_layer_1" not in err and "decoder_layer_2" not in err


@pytest.mark.parametrize("change", [{"num_layers": 4}, {"num_layers": 2}, {"key_size": 16}])
def test_a_config_that_does_not_match_names_config(checkpoint, capsys, tmp_path, change):
    directory, _ = checkpoint
    other = dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model, **change))
    config_path = tmp_path / "other.json"
    config_path.write_text(json.dumps(other.to_dict()))
    status, err = run_main(capsys, directory, str(config_path))
    assert status == 2, err
    for fragment in ("does not match the config", "--config",
                     os.path.join(directory, "config.json")):
        assert fragment in err, (fragment, err)

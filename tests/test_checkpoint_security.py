"""The checkpoint unpickler is an allow-list: crafted files are refused and run nothing."""

import io
import os
import pickle

import ml_dtypes
import numpy as np
import pytest

from grok.checkpoint import store as ckpt, tensor_file
from grok.ops.quantization import QuantizedWeight8bit


def call(module: str, name: str, *args) -> bytes:
    """Pickle opcodes (no PROTO/STOP) that call module.name(*args) when loaded."""
    return b"c" + f"{module}\n{name}\n".encode() + pickle.dumps(args, protocol=3)[2:-1] + b"R"


def stream(body: bytes) -> bytes:
    return b"\x80\x03" + body + b"."


def quantized_weight_with(weight_body: bytes) -> bytes:
    """`__main__.QuantizedWeight8bit` (NEWOBJ, BUILD) whose state's "weight" is `weight_body`."""
    return stream(b"c__main__\nQuantizedWeight8bit\n)\x81}(X\x06\x00\x00\x00weight" + weight_body
                  + b"ub")


class Exploit:
    """What an attacker would pickle: `os.system(command)` on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a payload ran"


def load_refused(tmp_path, data: bytes, *fragments):
    path = tmp_path / "tensor00000_000"
    path.write_bytes(data)
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.read_tensor_file(path)
    message = str(info.value)
    for fragment in (str(path), *fragments):
        assert fragment in message, (fragment, message)
    return message


@pytest.mark.parametrize("module, name, args", [
    ("os", "system", ("touch {marker}",)),
    ("posix", "system", ("touch {marker}",)),
    ("builtins", "eval", ("open({marker!r}, 'w').close()",)),
    ("builtins", "exec", ("open({marker!r}, 'w').close()",)),
    ("subprocess", "Popen", (["touch", "{marker}"],)),
    ("numpy", "load", ("{marker}",)),
    ("numpy", "frombuffer", (b"\x00" * 8,)),
    ("numpy.core.multiarray", "scalar", ()),
    ("copyreg", "_reconstructor", (1, 2, 3)),
    ("ml_dtypes", "finfo", ()),
    ("__main__", "Exploit", ()),
    ("grok.checkpoint", "_reconstruct", ()),
    ("grok.checkpoint.tensor_file", "_reconstruct", ()),
    ("grok.checkpoint.tensor_file", "locate_tensor_file", ("{marker}",)),
])
def test_foreign_globals_are_refused(tmp_path, marker, module, name, args):
    args = tuple(a.format(marker=str(marker)) if isinstance(a, str) else
                 [x.format(marker=str(marker)) for x in a] if isinstance(a, list) else a
                 for a in args)
    load_refused(tmp_path, stream(call(module, name, *args)), f"'{module}.{name}'", "refused")


def test_the_payloads_are_live_under_plain_pickle(tmp_path):
    """So the marker checks mean something: plain pickle.loads does run these payloads."""
    ran_system, ran_eval = str(tmp_path / "ran_system"), str(tmp_path / "ran_eval")
    pickle.loads(stream(call("os", "system", f"touch {ran_system}")))
    pickle.loads(stream(call("builtins", "eval", f"open({ran_eval!r}, 'w').close()")))
    assert os.path.exists(ran_system) and os.path.exists(ran_eval)


def test_a_real_exploit_pickle_is_refused(tmp_path, marker):
    data = pickle.dumps(Exploit(os.system, f"touch {marker}"), protocol=4)
    load_refused(tmp_path, data, f"{os.system.__module__}.system")


def test_foreign_global_nested_in_a_quantized_weight(tmp_path, marker):
    data = quantized_weight_with(call("os", "system", f"touch {marker}"))
    load_refused(tmp_path, data, "'os.system'")


def test_object_arrays_are_refused(tmp_path, marker):
    data = pickle.dumps(np.array([1, Exploit(os.system, f"touch {marker}")], dtype=object),
                        protocol=4)
    load_refused(tmp_path, data, "numpy.dtype('O8')", "object arrays")
    load_refused(tmp_path, pickle.dumps(np.array([1, "x"], dtype=object), protocol=4), "'O8'")


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_structured_and_subclass_arrays_are_refused(tmp_path):
    load_refused(tmp_path, pickle.dumps(np.zeros(2, dtype=[("a", "f4")]), protocol=4),
                 "numpy.dtype('V4')")
    load_refused(tmp_path, pickle.dumps(np.matrix([[1.0]]), protocol=4), "'numpy.matrix'")


def test_quantized_weight_state_must_be_exactly_two_arrays(tmp_path):
    w, s = np.zeros((4, 2), np.int8), np.ones((1, 2), ml_dtypes.bfloat16)
    extra = QuantizedWeight8bit(w, s)
    extra.extra = np.zeros(1, np.int8)
    for bad in (extra, QuantizedWeight8bit(w, [1.0, 2.0]), QuantizedWeight8bit(w, None)):
        buffer = io.BytesIO()
        tensor_file._ReleasePickler(buffer, protocol=4).dump(bad)   # as the release names the class
        assert b"__main__" in buffer.getvalue()
        load_refused(tmp_path, buffer.getvalue(), "QuantizedWeight8bit state must be")


def test_top_level_object_must_be_an_array_or_quantized_weight(tmp_path):
    load_refused(tmp_path, pickle.dumps({"weight": 1}, protocol=4), "holds a dict")
    load_refused(tmp_path, pickle.dumps(7, protocol=4), "holds a int")


def test_calling_or_building_the_allowed_names_is_refused(tmp_path):
    # REDUCE on numpy.ndarray (could allocate anything) and BUILD on an allowed global (could
    # change how later files are read) are both refused.
    load_refused(tmp_path, stream(call("numpy", "ndarray", (10 ** 12,))), "calling numpy.ndarray")
    load_refused(tmp_path, stream(b"cnumpy\ndtype\nN}X\x02\x00\x00\x00fnK\x01s\x86b"),
                 "setting state on numpy.dtype")
    load_refused(tmp_path, stream(call("numpy.core.multiarray", "_reconstruct", 1, (5,), b"b")),
                 "_reconstruct accepts only")
    # ... and the guards still work afterwards.
    path = tmp_path / "ok"
    ckpt.write_tensor_file(path, np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(ckpt.read_tensor_file(path), [0, 1, 2])


def test_array_payload_size_must_match_shape(tmp_path):
    data = pickle.dumps(np.arange(4, dtype=np.float32), protocol=4)
    data = data.replace(b"K\x04\x85", b"K\x05\x85", 1)          # claim shape (5,)
    load_refused(tmp_path, data, "16 data bytes do not fit shape (5,)")


def test_persistent_ids_are_refused(tmp_path):
    load_refused(tmp_path, b"\x80\x02X\x01\x00\x00\x00x\x94Q.", "corrupt")


def test_trailing_bytes_are_refused(tmp_path):
    data = pickle.dumps(np.arange(4, dtype=np.float32), protocol=4) + b"junk"
    load_refused(tmp_path, data, "bytes after the end")


def test_legitimate_variants_still_load(tmp_path):
    """numpy 2 names (numpy._core), big-endian, Fortran order, an ml_dtypes submodule."""
    path = tmp_path / "t"
    cases = [np.arange(6, dtype=np.float32).reshape(2, 3),
             np.arange(6, dtype=">f4").reshape(2, 3),
             np.asfortranarray(np.arange(6, dtype=np.float16).reshape(2, 3))]
    for array in cases:
        path.write_bytes(pickle.dumps(array, protocol=4))
        np.testing.assert_array_equal(ckpt.read_tensor_file(path), array)
    bf16 = np.arange(4).astype(ml_dtypes.bfloat16)
    data = pickle.dumps(bf16, protocol=3)                        # GLOBAL opcodes, no framing
    assert b"cml_dtypes\nbfloat16\n" in data
    path.write_bytes(data.replace(b"cml_dtypes\n", b"cml_dtypes._ml_dtypes_ext\n"))
    loaded = ckpt.read_tensor_file(path)
    assert loaded.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(loaded.astype(np.float32), [0, 1, 2, 3])


def test_loader_reports_refusals_with_the_tensor(tmp_path, marker):
    """Through load_checkpoint: the error names the file, index, parameter path and global."""
    from grok.config import LanguageModelConfig, TransformerConfig
    config = LanguageModelConfig(model=TransformerConfig(
        emb_size=16, key_size=4, num_q_heads=2, num_kv_heads=1, num_layers=1, num_experts=2,
        num_selected_experts=1), vocab_size=32)
    tensors = ckpt.quantize_tensors(ckpt.random_tensors(config), config)
    ckpt_dir = ckpt.save_checkpoint(tensors, tmp_path, config)
    spec = ckpt.checkpoint_layout(config)[4]
    with open(os.path.join(ckpt_dir, spec.file_name()), "wb") as f:
        f.write(quantized_weight_with(call("subprocess", "Popen", ["touch", str(marker)])))
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_checkpoint(tmp_path, config, progress=False)
    for fragment in ("'subprocess.Popen'", spec.ckpt_path, f"tensor {spec.index}", spec.file_name()):
        assert fragment in str(info.value)


def test_error_messages_never_repr_the_payload(tmp_path):
    data = pickle.dumps(np.zeros(2 ** 18, np.float32), protocol=3)   # 1 MiB, no framing
    payload_header = b"\x89B\x00\x00\x10\x00"                     # False (fortran), BINBYTES
    assert data.count(payload_header) == 1
    message = load_refused(tmp_path, data.replace(payload_header, b"K\x00B\x00\x00\x10\x00"),
                           "bad numpy.ndarray state", "<1048576 bytes>")
    assert len(message) < 1000


def test_only_array_payloads_may_be_large(tmp_path):
    """Everything but bytes payloads is read into memory: a huge string is refused unread."""
    big = 2 ** 21
    data = b"\x80\x04X" + big.to_bytes(4, "little") + b"x" * big + b"."
    load_refused(tmp_path, data, f"a {big}-byte pickle argument")


def test_payloads_past_the_end_of_the_file_are_refused(tmp_path):
    data = pickle.dumps(np.arange(64, dtype=np.float32), protocol=4)
    load_refused(tmp_path, data.replace(b"B\x00\x01\x00\x00", b"B\x00\x01\x01\x00", 1),
                 "truncated or corrupt", "65792-byte payload")


def test_payload_bytes_are_never_unpickled(tmp_path, marker):
    """A payload holding a pickle of os.system is data: it loads as the array's bytes."""
    evil = pickle.dumps(Exploit(os.system, f"touch {marker}"), protocol=4)
    array = np.frombuffer(evil + b"\x00" * (-len(evil) % 4), np.uint8)
    path = tmp_path / "t"
    ckpt.write_tensor_file(path, array)
    np.testing.assert_array_equal(ckpt.read_tensor_file(path), array)


# --- a file must not move where its arrays are read from (issue 8, item 1) ---------------------

def pickle_with_payload_build(array: np.ndarray, state: bytes, shape: bytes = b"") -> bytes:
    """`array` pickled (protocol 3, no framing) with `BUILD (None, state)` applied to its data
    payload right after the payload is pushed; `shape`, if given, replaces the shape tuple."""
    data = pickle.dumps(array, protocol=3)
    payload = array.tobytes()
    end = data.rindex(payload) + len(payload)
    data = data[:end] + b"N" + state + b"\x86b" + data[end:]
    if shape:
        old_shape = b"K" + bytes([array.size]) + b"\x85"
        assert data.count(old_shape) == 1
        data = data.replace(old_shape, shape)
    return data


def slot_state(**fields) -> bytes:
    """A pickled {name: value} dict, the slot state BUILD sets with setattr."""
    return pickle.dumps(fields, protocol=3)[2:-1]


TERABYTES_4 = 4 * 2 ** 40


@pytest.mark.parametrize("fields, shape", [
    ({"offset": 0}, b""),                                    # would read the pickle header
    ({"offset": -8}, b""),
    ({"offset": 2 ** 62}, b""),
    ({"offset": "0"}, b""),
    ({"length": TERABYTES_4}, b"\x8a\x06" + (TERABYTES_4 // 4).to_bytes(6, "little") + b"\x85"),
])
def test_build_on_an_array_payload_is_refused(tmp_path, fields, shape):
    """BUILD on the payload stand-in would rewrite its offset/length after the walk checked
    them: a 200-byte file could claim a 4 TB array, or have its header read as weights."""
    data = pickle_with_payload_build(np.arange(64, dtype=np.float32), slot_state(**fields), shape)
    load_refused(tmp_path, data, "setting state on an array payload is not allowed")


def test_the_payload_build_stream_is_otherwise_valid(tmp_path):
    """So the refusal above is for BUILD: with the state left out the crafted file loads."""
    array = np.arange(64, dtype=np.float32)
    data = pickle.dumps(array, protocol=3)
    end = data.rindex(array.tobytes()) + array.nbytes
    path = tmp_path / "t"
    path.write_bytes(data[:end] + b"N0" + data[end:])   # push None, pop it: a no-op
    np.testing.assert_array_equal(ckpt.read_tensor_file(path), array)


# --- copyreg extension codes skip find_class (issue 8, item 2) --------------------------------

EXT_CODE = 240
EXT_SCRIPT = r"""
import copyreg, json, os, pickle, runpy, sys
marker, live_marker, ckpt_dir, config, repo = sys.argv[1:]
copyreg.add_extension("os", "system", {code})
assert pickle.loads(b"\x80\x02\x82\xf0.") is os.system          # registered and used: cached
def system_call(path):                                          # EXT1 240, (cmd,), REDUCE
    cmd = f"touch {{path}}".encode()
    return b"\x80\x02\x82\xf0X" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R."
pickle.loads(system_call(live_marker))                          # the payload is live
target = os.path.join(ckpt_dir, "ckpt-0", "tensor00001_000")
with open(target, "wb") as f:
    f.write(system_call(marker))
sys.path.insert(0, repo)
from grok.checkpoint import CheckpointError, tensor_file
try:
    tensor_file.read_tensor_file(target)
    read_error = None
except CheckpointError as e:
    read_error = str(e)
sys.argv = ["run.py", "--checkpoint", ckpt_dir, "--config", config, "--tokenizer", "bytes",
            "--mesh", "1,1", "--prompt", "x"]
try:
    runpy.run_path(os.path.join(repo, "run.py"), run_name="__main__")
    status = 0
except SystemExit as e:
    status = e.code
print(json.dumps({{"read_error": read_error, "status": status}}))
""".format(code=EXT_CODE)


@pytest.mark.slow
def test_ext_opcodes_are_refused_with_the_extension_registered(tmp_path):
    """In a process where copyreg maps code 240 to os.system (and has used it), a checkpoint
    naming it by EXT1 is refused by the reader and by run.py (exit 2), and runs nothing."""
    import json
    import subprocess
    import sys

    from grok import demo
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ckpt_dir = demo.write_demo_checkpoint(str(tmp_path / "demo"))
    marker, live = tmp_path / "pwned", tmp_path / "live"
    run = subprocess.run(
        [sys.executable, "-c", EXT_SCRIPT, str(marker), str(live), ckpt_dir,
         os.path.join(ckpt_dir, "config.json"), repo],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert live.exists(), run.stderr                   # plain pickle did run the payload
    assert not marker.exists(), "the checkpoint ran os.system"
    result = json.loads(run.stdout.strip().splitlines()[-1])
    target = os.path.join(ckpt_dir, "ckpt-0", "tensor00001_000")
    assert "refused opcode EXT1" in result["read_error"] and target in result["read_error"]
    assert result["status"] == 2, run.stderr
    assert "refused opcode EXT1" in run.stderr and target in run.stderr


@pytest.mark.parametrize("opcode", [b"\x82\xf0", b"\x83\xf0\x00", b"\x84\xf0\x00\x00\x00"])
def test_ext_opcodes_are_refused_when_unregistered(tmp_path, opcode):
    load_refused(tmp_path, b"\x80\x02" + opcode + b".", "refused opcode EXT",
                 "nothing from this file was executed")

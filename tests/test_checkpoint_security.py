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

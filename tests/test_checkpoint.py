"""grok.checkpoint: layout, stacking, writer/loader round trip, shardings, and error reports."""

import json
import os
import pickletools
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from grok.checkpoint import store as ckpt
from grok.config import GROK_1, LanguageModelConfig, TransformerConfig, load_config
from grok.ops.quantization import QuantizedWeight8bit, dequantize

NUM_LAYERS = 11  # > 10, so the files' string order (0, 1, 10, 2, ...) differs from layer order


def tiny_config(num_layers=NUM_LAYERS, key_size=8, num_q_heads=4):
    model = TransformerConfig(emb_size=32, key_size=key_size, num_q_heads=num_q_heads,
                              num_kv_heads=2, num_layers=num_layers, num_experts=4,
                              num_selected_experts=2)
    return LanguageModelConfig(model=model, vocab_size=256, sequence_len=64)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A random tiny checkpoint on disk: (directory, config, per-layer quantized tensors)."""
    config = tiny_config()
    tensors = ckpt.quantize_tensors(ckpt.random_tensors(config, seed=1), config)
    directory = tmp_path_factory.mktemp("tiny")
    ckpt.save_checkpoint(tensors, directory, config)
    return directory, config, tensors


@pytest.fixture
def damaged(written, tmp_path):
    """A fresh copy of the written checkpoint, to break: (ckpt-0 dir, config, layout by path)."""
    directory, config, _ = written
    shutil.copytree(directory / "ckpt-0", tmp_path / "ckpt-0")
    layout = {spec.ckpt_path: spec for spec in ckpt.checkpoint_layout(config)}
    return tmp_path / "ckpt-0", config, layout


def leaf_of(params, spec):
    """The slice of the stacked model leaf that holds `spec`'s file."""
    leaf = params[spec.module][spec.name]
    return leaf if spec.layer is None else jax.tree.map(lambda x: x[spec.layer], leaf)


def assert_same_tensor(loaded, expected):
    if isinstance(expected, QuantizedWeight8bit):
        assert isinstance(loaded, QuantizedWeight8bit)
        assert np.asarray(loaded.weight).dtype == np.int8
        np.testing.assert_array_equal(np.asarray(loaded.weight), expected.weight)
        assert np.asarray(loaded.scales).dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(np.asarray(loaded.scales).view(np.uint16),
                                      expected.scales.view(np.uint16))
    else:
        assert np.asarray(loaded).dtype == np.float32
        np.testing.assert_array_equal(np.asarray(loaded), expected)


# --- layout ---------------------------------------------------------------------------------

def test_layout_matches_fixture_manifest(fixture_dir):
    config = load_config(os.path.join(fixture_dir, "config.json"))
    with open(os.path.join(fixture_dir, "manifest.json")) as f:
        manifest = json.load(f)
    layout = ckpt.checkpoint_layout(config)
    assert len(layout) == len(manifest) == 26
    for spec, entry in zip(layout, manifest):
        assert spec.index == entry["index"]
        assert "params/" + spec.ckpt_path == entry["path"]
        assert list(spec.shape) == entry["shape"]
        kind = "f32" if not spec.quantized else f"int8 G={spec.release_groups}"
        assert kind == entry["kind"]


def test_layout_grok1_matches_spec_table():
    layout = ckpt.checkpoint_layout(GROK_1)
    assert len(layout) == 770
    assert [s.index for s in layout] == list(range(770))
    assert (layout[0].ckpt_path, layout[0].shape) == (
        "language_model/in_out_embed/embeddings", (131072, 6144))
    assert (layout[1].ckpt_path, layout[1].shape) == ("language_model/rms_norm/scale", (6144,))
    table = [("moe/linear/w", (8, 6144, 32768), 1), ("moe/linear_1/w", (8, 32768, 6144), 8),
             ("moe/linear_v/w", (8, 6144, 32768), 1), ("multi_head_attention/key/w", (6144, 1024), 1),
             ("multi_head_attention/linear/w", (6144, 6144), 8),
             ("multi_head_attention/query/w", (6144, 6144), 1),
             ("multi_head_attention/value/w", (6144, 1024), 1), ("rms_norm/scale", (6144,), None),
             ("rms_norm_1/scale", (6144,), None), ("rms_norm_2/scale", (6144,), None),
             ("rms_norm_3/scale", (6144,), None), ("router/w", (6144, 8), None)]
    layers_in_string_order = sorted(range(64), key=str)
    assert layers_in_string_order[:4] == [0, 1, 10, 11]
    for j, layer in enumerate(layers_in_string_order):
        for k, (suffix, shape, groups) in enumerate(table):
            spec = layout[2 + 12 * j + k]
            assert spec.ckpt_path == f"transformer/decoder_layer_{layer}/{suffix}"
            assert (spec.shape, spec.release_groups, spec.layer) == (shape, groups, layer)
            assert spec.module == "transformer/decoder_layer/" + suffix.rsplit("/", 1)[0]


def test_layout_order_is_jax_flattening_order():
    # The index is the position in the flattened Haiku tree: check against jax itself.
    layout = ckpt.checkpoint_layout(tiny_config())
    tree = {}
    for spec in layout:
        tree.setdefault(spec.ckpt_path.rsplit("/", 1)[0], {})[spec.name] = spec.index
    assert jax.tree.leaves(tree) == list(range(len(layout)))


def test_release_groups_fall_back_to_one_when_8_does_not_divide():
    config = tiny_config(key_size=6, num_q_heads=2)  # attention `linear` contracts over 12
    specs = {s.ckpt_path: s for s in ckpt.checkpoint_layout(config)}
    assert specs["transformer/decoder_layer_0/multi_head_attention/linear/w"].release_groups == 1
    assert specs["transformer/decoder_layer_0/moe/linear_1/w"].release_groups == 8


# --- random weights and quantization --------------------------------------------------------

def test_random_tensors_are_deterministic_and_scaled():
    config = tiny_config(num_layers=2)
    a, b = ckpt.random_tensors(config, 3), ckpt.random_tensors(config, 3)
    c = ckpt.random_tensors(config, 4)
    for path in a:
        np.testing.assert_array_equal(a[path], b[path])
        assert a[path].dtype == np.float32
    assert not np.array_equal(a["language_model/in_out_embed/embeddings"],
                              c["language_model/in_out_embed/embeddings"])
    down = a["transformer/decoder_layer_0/moe/linear_1/w"]          # [E, F, D]
    assert abs(down.std() * np.sqrt(down.shape[-2]) - 1) < 0.1
    assert abs(a["transformer/decoder_layer_0/rms_norm/scale"].mean() - 1) < 0.1


def test_quantize_tensors_groups_default_and_override():
    config = tiny_config(num_layers=2)
    floats = ckpt.random_tensors(config, 0)
    default = ckpt.quantize_tensors(floats, config)
    custom = ckpt.quantize_tensors(floats, config, groups={"moe/linear_1": 4, "query/w": 2})
    path = "transformer/decoder_layer_1/{}/w".format
    assert default[path("moe/linear_1")].num_groups == 8
    assert default[path("multi_head_attention/linear")].num_groups == 8
    assert default[path("moe/linear")].num_groups == 1
    assert custom[path("moe/linear_1")].num_groups == 4
    assert custom[path("multi_head_attention/query")].num_groups == 2
    assert custom[path("multi_head_attention/key")].num_groups == 1
    w = floats[path("moe/linear_1")]
    error = np.abs(np.asarray(dequantize(custom[path("moe/linear_1")])) - w).max()
    assert error <= np.abs(w).max() / 127
    with pytest.raises(ValueError, match="moe/linear/w"):
        ckpt.quantize_tensors(floats, config, groups={"moe/linear": 5})


# --- write, read back -----------------------------------------------------------------------

def test_round_trip_is_exact(written):
    directory, config, tensors = written
    params = ckpt.load_checkpoint(directory, config, progress=False)
    specs = ckpt.checkpoint_layout(config)
    assert set(params) == {s.module for s in specs}
    for spec in specs:
        assert_same_tensor(leaf_of(params, spec), tensors[spec.ckpt_path])
    qw = params["transformer/decoder_layer/moe/linear_1"]["w"]
    assert qw.weight.shape == (NUM_LAYERS, 4, 176, 32) and qw.scales.shape == (NUM_LAYERS, 4, 8, 32)
    layer10 = tensors["transformer/decoder_layer_10/moe/linear_1/w"]
    np.testing.assert_array_equal(np.asarray(dequantize(jax.tree.map(lambda x: x[10], qw))),
                                  np.asarray(dequantize(layer10)))


def test_load_accepts_the_ckpt0_directory_itself(written):
    directory, config, tensors = written
    params = ckpt.load_checkpoint(directory / "ckpt-0", config, progress=False, max_workers=2)
    spec = ckpt.checkpoint_layout(config)[5]
    assert_same_tensor(leaf_of(params, spec), tensors[spec.ckpt_path])


def test_stack_params_equals_loaded_params(written):
    directory, config, tensors = written
    stacked = ckpt.stack_params(tensors, config)
    loaded = ckpt.load_checkpoint(directory, config, progress=False)
    assert jax.tree.structure(stacked) == jax.tree.structure(loaded)
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(loaded)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


def test_loaded_params_run_the_model_with_non_degenerate_logits(written):
    from grok.model.transformer import build_forward
    directory, config, _ = written
    params = ckpt.load_checkpoint(directory, config, progress=False)
    tokens = jnp.array([[5, 17, 99, 3, 200, 42, 7, 1]], jnp.int32)
    logits, _ = build_forward(config)(params, tokens)
    logits = np.asarray(logits, np.float32)[0]                          # [T, V]
    assert np.isfinite(logits).all()
    assert logits.std(axis=-1).min() > 0.05
    assert len(set(logits.argmax(-1).tolist())) > 1


def test_progress_bar_goes_to_stderr(written, capsys):
    directory, config, _ = written
    ckpt.load_checkpoint(directory, config, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "loading checkpoint" in err
    ckpt.load_checkpoint(directory, config, progress=False)
    assert capsys.readouterr().err == ""


def test_float16_bfloat16_and_float32_scales_are_accepted(damaged):
    ckpt_dir, config, layout = damaged
    norm, qw = (layout["transformer/decoder_layer_3/rms_norm_2/scale"],
                layout["transformer/decoder_layer_3/moe/linear/w"])
    norm_value = np.linspace(0.5, 1.5, 32).astype(ml_dtypes.bfloat16)
    weight = np.full(qw.shape, -7, np.int8)
    scales = np.full((4, 1, 176), 0.375, np.float32)
    ckpt.write_tensor_file(ckpt_dir / norm.file_name(), norm_value)
    ckpt.write_tensor_file(ckpt_dir / qw.file_name(), QuantizedWeight8bit(weight, scales))
    params = ckpt.load_checkpoint(ckpt_dir, config, progress=False)
    np.testing.assert_array_equal(np.asarray(leaf_of(params, norm)), norm_value.astype(np.float32))
    loaded = leaf_of(params, qw)
    assert loaded.scales.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(np.asarray(dequantize(loaded)), np.full(qw.shape, -2.625))
    ckpt.write_tensor_file(ckpt_dir / norm.file_name(), norm_value.astype(np.float16))
    params = ckpt.load_checkpoint(ckpt_dir, config, progress=False)
    np.testing.assert_array_equal(np.asarray(leaf_of(params, norm)), norm_value.astype(np.float32))


# --- byte compatibility with the release ----------------------------------------------------

def test_writer_is_byte_identical_to_the_fixture(fixture_dir, tmp_path):
    config = load_config(os.path.join(fixture_dir, "config.json"))
    tensors = ckpt.read_checkpoint_tensors(fixture_dir, config)
    ckpt.save_checkpoint(tensors, tmp_path, config)
    names = sorted(os.listdir(os.path.join(fixture_dir, "ckpt-0")))
    assert sorted(os.listdir(tmp_path / "ckpt-0")) == names          # no temp files left
    for name in names:
        with open(os.path.join(fixture_dir, "ckpt-0", name), "rb") as f:
            expected = f.read()
        assert (tmp_path / "ckpt-0" / name).read_bytes() == expected, name


def _globals_named(data: bytes) -> list[str]:
    """module.name of every STACK_GLOBAL in a protocol-4 pickle, in stream order."""
    strings, names = [], []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE"):
            strings.append(arg)
        elif opcode.name == "BINGET":
            strings.append(None)  # a memo reference; resolved below by position
        elif opcode.name == "STACK_GLOBAL":
            names.append(strings[-2:])
    return names


def test_writer_names_the_release_globals(written):
    directory, config, _ = written
    layout = {s.ckpt_path: s for s in ckpt.checkpoint_layout(config)}
    spec = layout["transformer/decoder_layer_0/moe/linear_1/w"]
    data = (directory / "ckpt-0" / spec.file_name()).read_bytes()
    ops = [op.name for op, _, _ in pickletools.genops(data)]
    assert ops[:2] == ["PROTO", "FRAME"] and data[:2] == b"\x80\x04"
    globals_ = _globals_named(data)
    assert globals_[:3] == [["__main__", "QuantizedWeight8bit"],
                            ["numpy.core.multiarray", "_reconstruct"], ["numpy", "ndarray"]]
    assert ["ml_dtypes", "bfloat16"] in globals_
    assert b"numpy._core" not in data
    # NEWOBJ with empty args, then BUILD with the {"weight", "scales"} dict.
    assert ops[ops.index("STACK_GLOBAL") + 2: ops.index("STACK_GLOBAL") + 5] == [
        "EMPTY_TUPLE", "NEWOBJ", "MEMOIZE"]
    assert ops[-3:] == ["SETITEMS", "BUILD", "STOP"]


# --- sharded placement ----------------------------------------------------------------------

def _partition(shape):
    """'model' on the last axis and 'data' on the one before, where they divide."""
    axes = [None] * len(shape)
    if shape[-1] % 4 == 0:
        axes[-1] = "model"
    if len(shape) >= 2 and shape[-2] % 2 == 0:
        axes[-2] = "data"
    return P(*axes)


def test_load_with_shardings_on_a_2x4_mesh(written):
    directory, config, tensors = written
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    host = ckpt.stack_params(tensors, config)
    shardings = jax.tree.map(lambda x: NamedSharding(mesh, _partition(x.shape)), host)
    assert isinstance(shardings["transformer/decoder_layer/moe/linear"]["w"], QuantizedWeight8bit)
    params = ckpt.load_checkpoint(directory, config, shardings, progress=False)
    for loaded, expected, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(host),
                                          jax.tree.leaves(shardings)):
        assert loaded.sharding == sharding
        np.testing.assert_array_equal(np.asarray(loaded).view(np.uint8), expected.view(np.uint8))
    weight = params["transformer/decoder_layer/moe/linear"]["w"].weight     # [L, E, D, F]
    assert weight.addressable_shards[0].data.shape == (NUM_LAYERS, 4, 16, 44)
    assert len({s.device for s in weight.addressable_shards}) == 8


# --- errors ---------------------------------------------------------------------------------

def _expect_error(ckpt_dir, config, spec, *fragments):
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_checkpoint(ckpt_dir, config, progress=False)
    message = str(info.value)
    for fragment in (spec.ckpt_path, f"tensor {spec.index}", spec.file_name(), *fragments):
        assert fragment in message, (fragment, message)
    return message


def test_truncated_file(damaged):
    ckpt_dir, config, layout = damaged
    spec = layout["transformer/decoder_layer_10/moe/linear_v/w"]
    path = ckpt_dir / spec.file_name()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _expect_error(ckpt_dir, config, spec, "truncated or corrupt")


def test_garbage_file(damaged):
    ckpt_dir, config, layout = damaged
    spec = layout["language_model/rms_norm/scale"]
    (ckpt_dir / spec.file_name()).write_bytes(b"\x80\x04this is not a pickle")
    _expect_error(ckpt_dir, config, spec, "corrupt")


def test_wrong_shape(damaged):
    ckpt_dir, config, layout = damaged
    spec = layout["transformer/decoder_layer_2/multi_head_attention/key/w"]
    bad = QuantizedWeight8bit(np.zeros((32, 8), np.int8), np.ones((1, 8), ml_dtypes.bfloat16))
    ckpt.write_tensor_file(ckpt_dir / spec.file_name(), bad)
    _expect_error(ckpt_dir, config, spec, "shape expected (32, 16)", "found (32, 8)")


@pytest.mark.parametrize("path, bad, found", [
    ("transformer/decoder_layer_1/rms_norm_1/scale", np.ones(32, np.float64), "float64"),
    ("transformer/decoder_layer_1/router/w", np.ones((32, 4), np.int8), "int8"),
    ("transformer/decoder_layer_1/moe/linear/w",
     QuantizedWeight8bit(np.zeros((4, 32, 176), np.int16), np.ones((4, 1, 176), np.float32)), "int16"),
    ("transformer/decoder_layer_1/moe/linear/w",
     QuantizedWeight8bit(np.zeros((4, 32, 176), np.int8), np.ones((4, 1, 176), np.int32)), "int32"),
    ("transformer/decoder_layer_1/moe/linear/w", np.zeros((4, 32, 176), np.float32),
     "float32"),
])
def test_wrong_dtype_or_kind(damaged, path, bad, found):
    ckpt_dir, config, layout = damaged
    spec = layout[path]
    ckpt.write_tensor_file(ckpt_dir / spec.file_name(), bad)
    _expect_error(ckpt_dir, config, spec, "expected", found)


def test_missing_file(damaged):
    ckpt_dir, config, layout = damaged
    spec = layout["transformer/decoder_layer_7/router/w"]
    os.remove(ckpt_dir / spec.file_name())
    _expect_error(ckpt_dir, config, spec, "missing")


def test_groups_must_divide_the_contracting_size(damaged):
    ckpt_dir, config, layout = damaged
    spec = layout["transformer/decoder_layer_4/multi_head_attention/linear/w"]   # In = 32
    bad = QuantizedWeight8bit(np.zeros(spec.shape, np.int8), np.ones((3, 32), ml_dtypes.bfloat16))
    ckpt.write_tensor_file(ckpt_dir / spec.file_name(), bad)
    _expect_error(ckpt_dir, config, spec, "G=3", "In=32")


def test_any_dividing_group_count_loads_if_layers_agree(damaged):
    ckpt_dir, config, layout = damaged
    spec = layout["transformer/decoder_layer_4/multi_head_attention/linear/w"]
    ok = QuantizedWeight8bit(np.ones(spec.shape, np.int8), np.ones((4, 32), ml_dtypes.bfloat16))
    ckpt.write_tensor_file(ckpt_dir / spec.file_name(), ok)
    _expect_error(ckpt_dir, config, spec, "need the same G")   # the others have G=8
    for layer in range(NUM_LAYERS):
        other = layout[f"transformer/decoder_layer_{layer}/multi_head_attention/linear/w"]
        ckpt.write_tensor_file(ckpt_dir / other.file_name(), ok)
    params = ckpt.load_checkpoint(ckpt_dir, config, progress=False)
    assert params["transformer/decoder_layer/multi_head_attention/linear"]["w"].scales.shape == (
        NUM_LAYERS, 4, 32)


def test_checkpoint_with_more_layers_than_the_config(written):
    directory, _, _ = written
    with pytest.raises(ckpt.CheckpointError, match="tensor00026_000 exists"):
        ckpt.load_checkpoint(directory, tiny_config(num_layers=2), progress=False)


def test_no_checkpoint_directory(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path, tiny_config(), progress=False)


def test_save_rejects_incomplete_or_invalid_tensors(written, tmp_path):
    _, config, tensors = written
    partial = dict(tensors)
    del partial["transformer/decoder_layer_3/router/w"]
    with pytest.raises(ckpt.CheckpointError, match="decoder_layer_3/router/w"):
        ckpt.save_checkpoint(partial, tmp_path, config)
    bad = dict(tensors, **{"language_model/rms_norm/scale": np.ones(31, np.float32)})
    with pytest.raises(ckpt.CheckpointError, match="tensor 1 "):
        ckpt.save_checkpoint(bad, tmp_path, config)
    assert not (tmp_path / "ckpt-0").exists()        # validated before anything was written


# --- issue 8: the blame for a G mismatch, config mismatches, non-finite weights -------------------

def test_a_group_mismatch_blames_the_layer_that_differs(damaged):
    """Layer 0 is the first in layer order: the old check blamed layer 1, which is unmodified."""
    ckpt_dir, config, layout = damaged
    spec = layout["transformer/decoder_layer_0/multi_head_attention/linear/w"]
    odd = QuantizedWeight8bit(np.ones(spec.shape, np.int8), np.ones((4, 32), ml_dtypes.bfloat16))
    ckpt.write_tensor_file(ckpt_dir / spec.file_name(), odd)
    message = _expect_error(ckpt_dir, config, spec, "G=4", "need the same G")
    assert "decoder_layer_1/" not in message


def test_a_shape_the_config_does_not_have_says_the_config_does_not_match(damaged):
    ckpt_dir, config, layout = damaged
    wider = tiny_config(key_size=16)                       # the attention shapes differ
    spec = {s.ckpt_path: s for s in ckpt.checkpoint_layout(wider)}[
        "transformer/decoder_layer_0/multi_head_attention/key/w"]
    with pytest.raises(ckpt.ConfigMismatchError) as info:
        ckpt.load_checkpoint(ckpt_dir, wider, progress=False)
    for fragment in (spec.ckpt_path, spec.file_name(), "does not match the config"):
        assert fragment in str(info.value), str(info.value)


def test_a_config_with_more_layers_says_the_config_does_not_match(written):
    directory, _, _ = written
    with pytest.raises(ckpt.ConfigMismatchError) as info:
        ckpt.load_checkpoint(directory, tiny_config(num_layers=NUM_LAYERS + 2), progress=False)
    message = str(info.value)
    files = len(ckpt.checkpoint_layout(tiny_config()))
    for fragment in (f"has {files} tensor files", f"needs {files + 24}",
                     "does not match the config", f"num_layers={NUM_LAYERS + 2}"):
        assert fragment in message, message


def test_a_file_missing_in_the_middle_is_still_missing(damaged):
    ckpt_dir, config, layout = damaged
    spec = layout["transformer/decoder_layer_7/router/w"]
    os.remove(ckpt_dir / spec.file_name())
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_checkpoint(ckpt_dir, config, progress=False)
    assert not isinstance(info.value, ckpt.ConfigMismatchError)
    assert "missing" in str(info.value)


def test_a_non_regular_file_in_the_checkpoint_is_named(damaged):
    ckpt_dir, config, layout = damaged
    spec = layout["transformer/decoder_layer_3/rms_norm/scale"]
    os.remove(ckpt_dir / spec.file_name())
    os.mkfifo(ckpt_dir / spec.file_name())
    message = _expect_error(ckpt_dir, config, spec, "a FIFO", "not a regular file")
    assert "missing" not in message


def with_non_finite(tensor, where, value):
    """A copy of a float array, or of a QuantizedWeight8bit with scales changed, with `value`
    at `where`."""
    if isinstance(tensor, QuantizedWeight8bit):
        return QuantizedWeight8bit(tensor.weight, with_non_finite(tensor.scales, where, value))
    tensor = np.array(tensor)
    tensor[where] = value
    return tensor


NON_FINITE_CASES = [
    ("transformer/decoder_layer_10/moe/linear_1/w", (...,), np.nan, "scales"),  # all NaN scales
    ("transformer/decoder_layer_2/multi_head_attention/query/w", (0, 5), np.inf, "scales"),
    ("language_model/in_out_embed/embeddings", (7,), np.nan, "row 7"),
    ("transformer/decoder_layer_0/rms_norm_2/scale", (3,), -np.inf, "1 non-finite"),
]


@pytest.mark.parametrize("path, where, value, words", NON_FINITE_CASES)
def test_non_finite_weights_are_refused_naming_the_tensor(written, damaged, path, where, value,
                                                          words):
    """Checked on the device as placed (load_checkpoint) and on the host (read level)."""
    _, _, tensors = written
    ckpt_dir, config, layout = damaged
    spec = layout[path]
    damaged_tensor = with_non_finite(tensors[path], where, value)
    ckpt.write_tensor_file(ckpt_dir / spec.file_name(), damaged_tensor)
    message = _expect_error(ckpt_dir, config, spec, "non-finite", words)
    assert str(ckpt_dir / spec.file_name()) in message
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.read_checkpoint_tensors(ckpt_dir, config)
    for fragment in (spec.ckpt_path, str(ckpt_dir / spec.file_name()), "non-finite"):
        assert fragment in str(info.value), str(info.value)


def test_non_finite_scales_are_found_on_a_sharded_mesh(written, damaged):
    """The check runs where the shards lie (a 2x4 mesh) and still names the layer's file."""
    _, _, tensors = written
    ckpt_dir, config, layout = damaged
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    shardings = jax.tree.map(lambda x: NamedSharding(mesh, _partition(x.shape)),
                             ckpt.stack_params(tensors, config))
    path = "transformer/decoder_layer_10/moe/linear/w"                 # one layer of eleven
    spec = layout[path]
    ckpt.write_tensor_file(ckpt_dir / spec.file_name(),
                           with_non_finite(tensors[path], (2, 0, 40), np.nan))
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_checkpoint(ckpt_dir, config, shardings, progress=False)
    for fragment in (str(ckpt_dir / spec.file_name()), f"{path}, scales", "1 non-finite"):
        assert fragment in str(info.value), str(info.value)

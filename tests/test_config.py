"""Config presets, validation and JSON loading; sharding rules."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from grok.parallel import sharding
from grok.config import GROK_1, LanguageModelConfig, TransformerConfig, config_from_dict, load_config
from grok.model.transformer import abstract_params
from grok.runtime_config import RuntimeConfig


def test_grok1_preset_matches_spec():
    m = GROK_1.model
    assert (GROK_1.vocab_size, m.emb_size, m.num_q_heads, m.num_kv_heads, m.key_size) == (131072, 6144, 48, 8, 128)
    assert (m.num_layers, m.num_experts, m.num_selected_experts, m.ffn_size) == (64, 8, 2, 32768)
    assert GROK_1.sequence_len == 8192 and GROK_1.eos_token == 2 and GROK_1.pad_token == 0


def test_load_fixture_config(fixture_dir):
    config = load_config(f"{fixture_dir}/config.json")
    assert config.model.ffn_size == 344 and config.model.num_layers == 2
    assert config.embedding_multiplier_scale == 8.0


@pytest.mark.parametrize("changes, message", [
    (dict(num_q_heads=6, num_kv_heads=4), "not divisible"),
    (dict(num_selected_experts=9), "larger than num_experts"),
    (dict(key_size=7), "even"),
    (dict(num_layers=0), "num_layers"),
    (dict(rope_base=float("nan")), "rope_base"),
])
def test_transformer_config_errors(changes, message):
    fields = dict(emb_size=32, key_size=8, num_q_heads=4, num_kv_heads=2, num_layers=1)
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**{**fields, **changes})


def test_language_model_config_errors(tmp_path):
    model = TransformerConfig(emb_size=32, key_size=8, num_q_heads=4, num_kv_heads=2, num_layers=1)
    with pytest.raises(ValueError, match="eos_token"):
        LanguageModelConfig(model=model, vocab_size=16, eos_token=16)
    with pytest.raises(ValueError, match="unknown field"):
        config_from_dict({"vocab_size": 16, "modle": 1, "model": {}})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_config(bad)


def test_config_round_trips_through_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(GROK_1.to_dict()))
    assert load_config(path) == GROK_1


@pytest.mark.parametrize("changes, message", [
    (dict(moe_impl="fast"), "moe_impl"),
    (dict(activation_dtype="int8"), "activation_dtype"),
    (dict(moe_block_rows=0), "moe_block_rows"),
    (dict(prefill_buckets=()), "prefill_buckets"),
    (dict(prefill_buckets=(8, 0)), "prefill_buckets"),
    (dict(local_mesh_config=(1, 0)), "local_mesh_config"),
    (dict(between_hosts_config=(1,)), "between_hosts_config"),
    (dict(bs_per_device=float("inf")), "bs_per_device"),
    (dict(prefill_chunk_tokens=-1), "prefill_chunk_tokens"),
    (dict(max_prefill_batch=0), "max_prefill_batch"),
])
def test_runtime_config_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        RuntimeConfig(**changes)


def test_runtime_config_normalises():
    runtime = RuntimeConfig(prefill_buckets=[16, 8, 16], local_mesh_config=[2, 4])
    assert runtime.prefill_buckets == (8, 16) and runtime.local_mesh_config == (2, 4)
    assert runtime.chunk_tokens == 16 and runtime.replace(prefill_chunk_tokens=40).chunk_tokens == 40
    assert json.loads(json.dumps(runtime.to_dict()))["prefill_buckets"] == [8, 16]


def test_runtime_choices_in_an_old_config_are_ignored_with_one_warning(tmp_path, caplog):
    """A config.json that still carries runtime choices loads as the same architecture, with
    a warning naming each and the RuntimeConfig field (and flag) that sets it."""
    data = GROK_1.to_dict()
    assert not {"fprop_dtype", "moe_impl", "moe_block_rows"} & (set(data) | set(data["model"]))
    data["fprop_dtype"] = "float32"
    data["model"]["moe_impl"] = "fast"          # not even valid: it is not read
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    config = load_config(path)
    assert "fprop_dtype" in caplog.text and "activation_dtype (--dtype)" in caplog.text
    assert "moe_impl" in caplog.text
    assert config == GROK_1 and config.to_dict() == GROK_1.to_dict()   # the same architecture
    with pytest.raises(TypeError):
        GROK_1.replace(fprop_dtype="float32")   # runtime choices are RuntimeConfig's alone
    assert GROK_1.sequence_len == 8192 and GROK_1.eos_token == 2 and GROK_1.pad_token == 0


def test_dtype_flag_wins_over_an_old_config_fprop_dtype(tmp_path, monkeypatch):
    """--dtype float32 with a config.json saying fprop_dtype bfloat16 runs float32."""
    from grok.engine.engine import JaxEngine
    from grok.loading import ModelOptions, load_model

    # what is checked is the dtype the engine is built with, not its compiled programs
    monkeypatch.setattr(JaxEngine, "precompile", lambda self: None)

    model = TransformerConfig(emb_size=32, key_size=8, num_q_heads=4, num_kv_heads=2, num_layers=1,
                              num_experts=2, num_selected_experts=1, widening_factor=1)
    data = LanguageModelConfig(model=model, vocab_size=259, sequence_len=16).to_dict()
    data["fprop_dtype"] = "bfloat16"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    monkeypatch.chdir(tmp_path)            # no ./checkpoints here: random weights
    for dtype in ("float32", "bfloat16"):
        runner, _ = load_model(ModelOptions(config=str(path), tokenizer="bytes", dtype=dtype,
                                            mesh=(1, 1), slots=1, pad_sizes=(8,), quiet=True))
        assert runner.runtime.activation_dtype == dtype
        assert runner.engine.init_state().memory.k.dtype == np.dtype(dtype)


def test_grok1_partition_rules_on_8_devices():
    mesh = sharding.make_mesh((1, 8))
    shardings = sharding.param_shardings(abstract_params(GROK_1), mesh)
    layer = "transformer/decoder_layer/"
    assert shardings[layer + "multi_head_attention/query"]["w"].weight.spec == P(None, None, "model")
    assert shardings[layer + "moe/linear_1"]["w"].weight.spec == P(None, None, "model", None)
    # scales follow the output axis, replicated along the group axis
    assert shardings[layer + "moe/linear"]["w"].scales.spec == P(None, None, None, "model")
    # the table is split over V (the residual stream stays replicated over "model")
    assert shardings["language_model/in_out_embed"]["embeddings"].spec == P("model", None)
    mesh = sharding.make_mesh((2, 4))
    shardings = sharding.param_shardings(abstract_params(GROK_1), mesh)
    assert shardings[layer + "moe/linear"]["w"].weight.spec == P(None, None, "data", "model")
    assert shardings["language_model/in_out_embed"]["embeddings"].spec == P("model", "data")


def test_axes_that_do_not_divide_are_dropped():
    mesh = sharding.make_mesh((2, 4))
    assert sharding.fit_spec((6, 12), ("data", "model"), mesh) == P("data", "model")
    assert sharding.fit_spec((3, 2), ("data", "model"), mesh) == P(None, None)
    assert sharding.fit_spec((4, 8), (None, ("data", "model")), mesh) == P(None, ("data", "model"))
    assert sharding.fit_spec((4, 6), (None, ("data", "model")), mesh) == P(None, "data")


def test_unmatched_parameter_is_an_error():
    mesh = sharding.make_mesh((1, 2))
    params = {"transformer/decoder_layer/mystery": {"w": jax.ShapeDtypeStruct((2, 4), np.float32)}}
    with pytest.raises(ValueError, match="no partition rule matches.*mystery"):
        sharding.param_shardings(params, mesh)


def test_mesh_errors():
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh((2, 8))
    with pytest.raises(ValueError, match="local_mesh_config"):
        sharding.make_mesh((0, 1))
    with pytest.raises(ValueError, match="spans 2 processes"):
        sharding.make_mesh((1, 4), (2, 1))


def test_package_exports_resolve_lazily():
    """`import grok` starts no JAX; every public name resolves from the package."""
    import subprocess
    import sys

    import grok

    code = "import sys, grok; grok.RuntimeConfig; grok.GROK_1; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    for name in grok.__all__:
        assert getattr(grok, name) is not None, name
    assert grok.RuntimeConfig is RuntimeConfig and grok.GROK_1 is GROK_1
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        grok.Nope

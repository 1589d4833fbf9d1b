"""Config presets, validation and JSON loading; sharding rules."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from grok.parallel import sharding
from grok.config import GROK_1, LanguageModelConfig, TransformerConfig, config_from_dict, load_config
from grok.model.transformer import abstract_params


def test_grok1_preset_matches_spec():
    m = GROK_1.model
    assert (GROK_1.vocab_size, m.emb_size, m.num_q_heads, m.num_kv_heads, m.key_size) == (131072, 6144, 48, 8, 128)
    assert (m.num_layers, m.num_experts, m.num_selected_experts, m.ffn_size) == (64, 8, 2, 32768)
    assert GROK_1.sequence_len == 8192 and GROK_1.eos_token == 2 and GROK_1.pad_token == 0


def test_load_fixture_config(fixture_dir):
    config = load_config(f"{fixture_dir}/config.json")
    assert config.model.ffn_size == 344 and config.model.num_layers == 2
    assert config.embedding_multiplier_scale == 8.0 and config.fprop_dtype == "bfloat16"


@pytest.mark.parametrize("changes, message", [
    (dict(num_q_heads=6, num_kv_heads=4), "not divisible"),
    (dict(num_selected_experts=9), "larger than num_experts"),
    (dict(key_size=7), "even"),
    (dict(num_layers=0), "num_layers"),
    (dict(rope_base=float("nan")), "rope_base"),
    (dict(moe_impl="fast"), "moe_impl"),
])
def test_transformer_config_errors(changes, message):
    fields = dict(emb_size=32, key_size=8, num_q_heads=4, num_kv_heads=2, num_layers=1)
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**{**fields, **changes})


def test_language_model_config_errors(tmp_path):
    model = TransformerConfig(emb_size=32, key_size=8, num_q_heads=4, num_kv_heads=2, num_layers=1)
    with pytest.raises(ValueError, match="eos_token"):
        LanguageModelConfig(model=model, vocab_size=16, eos_token=16)
    with pytest.raises(ValueError, match="fprop_dtype"):
        LanguageModelConfig(model=model, vocab_size=16, fprop_dtype="int8")
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

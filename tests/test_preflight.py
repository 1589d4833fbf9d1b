"""Hostile config.json and tokenizer.model files: each is refused before anything is built
from it, with exit status 2 naming the file and the field, within seconds and bounded memory
(grok.checkpoint.preflight)."""

import json
import os
import resource
import time

import pytest

from grok import cli, demo
from grok.checkpoint.preflight import (MAX_CONFIG_BYTES, MAX_TOKENIZER_BYTES, check_config,
                                       check_vocabulary, load_config_file)
from grok.config import GROK_1

SHARED_TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "grok1",
                                "tokenizer.model")


def config_with(**changes) -> dict:
    data = demo.DEMO.to_dict()
    for name, value in changes.items():
        if name.startswith("model."):
            data["model"][name.removeprefix("model.")] = value
        else:
            data[name] = value
    return data


# (what the file holds, the words the error must hold besides the file name)
HOSTILE_CONFIGS = [
    (config_with(**{"model.num_layers": 10**7}), "model.num_layers"),
    (config_with(**{"model.emb_size": 2**40}), "model.emb_size"),
    (config_with(vocab_size=10**9), "vocab_size"),
    (config_with(sequence_len=2**40), "sequence_len"),
    (config_with(**{"model.num_experts": 10**6}), "model.num_experts"),
    (config_with(**{"model.key_size": 10**5}), "model.key_size"),
    (config_with(**{"model.num_q_heads": 0}), "model.num_q_heads"),
    (config_with(**{"model.widening_factor": 1e6}), "model.widening_factor"),
    (config_with(**{"model.widening_factor": True}), "model.widening_factor"),
    (config_with(**{"model.num_layers": 2.0}), "model.num_layers"),
    (config_with(**{"model.num_layers": "2"}), "model.num_layers"),
    (config_with(output_multiplier_scale="0.5"), "output_multiplier_scale"),
    (config_with(**{"model.rope_base": -1.0}), "model.rope_base"),
    (config_with(**{"model.norm_eps": 0}), "model.norm_eps"),
    (config_with(**{"model.num_selected_experts": 9}), "num_selected_experts"),
    (config_with(pad_token=10**6), "pad_token"),
    (config_with(frobnicate=1), "frobnicate"),
    (config_with(**{"model.num_layers": 1024, "model.emb_size": 65536,
                    "model.num_experts": 1024}), "weights"),
    ('{"vocab_size": 259, "model": {"emb_size": 8}}', "key_size"),          # missing fields
    (json.dumps(config_with(embedding_multiplier_scale=float("nan"))),       # NaN literal
     "embedding_multiplier_scale"),
    (json.dumps(config_with(output_multiplier_scale=12345.5)).replace("12345.5", "1e999"),
     "output_multiplier_scale"),
    ('{"vocab_size": 259, "vocab_size": 1000, "model": {}}', "vocab_size"),  # repeated
    ("[" * 100000 + "]" * 100000, "nested"),
    ("[1, 2]", "model"),
    (b"\xff\xfe{}", "UTF-8"),
    (" " * (MAX_CONFIG_BYTES + 1) + "{}", "bytes"),                        # far too large
]


@pytest.fixture(autouse=True)
def never_build(monkeypatch):
    """A file that passed by mistake fails the test at once instead of building a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built from a hostile file")
    monkeypatch.setattr("grok.loading.InferenceRunner", refuse)


def _status(capsys, argv) -> tuple[int, str]:
    status = cli.main(argv)
    return status, capsys.readouterr().err


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.parametrize("content,field", HOSTILE_CONFIGS,
                         ids=[f"{i}-{f}" for i, (_, f) in enumerate(HOSTILE_CONFIGS)])
def test_hostile_config_refused_with_file_and_field(tmp_path, capsys, content, field):
    path = tmp_path / "config.json"
    if isinstance(content, dict):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before, start = _peak_rss(), time.monotonic()
    status, err = _status(capsys, ["--config", str(path), "--mesh", "1,1", "--prompt", "x"])
    assert status == 2, err
    assert time.monotonic() - start < 5
    assert _peak_rss() - before < 256 * 2**20         # nothing was allocated for it
    assert str(path) in err and field in err, err
    assert "Traceback" not in err


def test_a_good_config_still_loads(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_with()))
    assert load_config_file(path) == demo.DEMO
    check_config(GROK_1)


def test_config_beside_the_checkpoint_names_its_file(tmp_path, capsys):
    ckpt = demo.write_demo_checkpoint(str(tmp_path / "ckpt"))
    config = os.path.join(ckpt, "config.json")
    with open(config, "w") as f:
        json.dump(config_with(embedding_multiplier_scale=float("inf")), f)
    status, err = _status(capsys, ["--checkpoint", ckpt, "--mesh", "1,1", "--prompt", "x"])
    assert status == 2 and config in err and "embedding_multiplier_scale" in err, err


def test_oversized_tokenizer_refused_before_reading(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(config_with(vocab_size=4096)))
    big = tmp_path / "tokenizer.model"
    with open(big, "wb") as f:           # sparse: nothing is written, nothing may be read
        f.truncate(MAX_TOKENIZER_BYTES + 1)
    start = time.monotonic()
    status, err = _status(capsys, ["--config", str(config), "--tokenizer", str(big),
                                   "--mesh", "1,1", "--prompt", "x"])
    assert status == 2 and str(big) in err and "bytes" in err, err
    assert time.monotonic() - start < 5


def test_tokenizer_vocabulary_mismatch_names_both(tmp_path, capsys):
    if not os.path.isfile(SHARED_TOKENIZER):
        pytest.skip("../shared/grok1/tokenizer.model is absent")
    for vocab, words in ((4096, "131072 pieces"), (2 * 131072, "more than padding")):
        config = tmp_path / f"config{vocab}.json"
        config.write_text(json.dumps(config_with(vocab_size=vocab)))
        status, err = _status(capsys, ["--config", str(config), "--tokenizer", SHARED_TOKENIZER,
                                       "--mesh", "1,1", "--prompt", "x"])
        assert status == 2, err
        assert words in err and str(vocab) in err and SHARED_TOKENIZER in err, err


def test_vocabulary_padding_rule():
    check_vocabulary(131072, 131072, "t")
    check_vocabulary(50000, 50176, "t")                 # padded to a multiple of 1024
    with pytest.raises(ValueError, match="50000 pieces.*52000"):
        check_vocabulary(50000, 52000, "t")
    with pytest.raises(ValueError, match="300 pieces.*259"):
        check_vocabulary(300, 259, "t")

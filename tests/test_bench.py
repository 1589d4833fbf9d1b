"""grok.bench: one tiny sweep end to end (every metric, sparse == dense tokens), and its helpers.

No timing is asserted: only that the numbers exist, are sane, and that both MoE paths agree.
"""

import json
import math

import numpy as np
import pytest

import jax.numpy as jnp

from grok.benchmarks import decode as bench
from grok.benchmarks import traffic, weights
from grok.model.transformer import abstract_params
from grok.parallel import sharding
from grok.runtime_config import RuntimeConfig

TINY_ARGS = ["--vocab", "256", "--emb", "32", "--q-heads", "4", "--kv-heads", "2", "--key-size", "8",
             "--layers", "2", "--experts", "4", "--widening", "2", "--mesh", "1,2",
             "--prompt-len", "8", "--new-tokens", "3"]
NEW_TOKENS = 3


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    """One sweep, sparse and dense at 2 slots, read back from its JSON file."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    bench.main(TINY_ARGS + ["--moe", "sparse,dense", "--batch-size", "2", "--json", str(path),
                            "--dump-hlo", str(path.parent / "hlo")])
    return json.loads(path.read_text())


def _runs_by_moe(report):
    return {run["moe"]: run for run in report["runs"]}


@pytest.mark.slow
def test_json_has_every_metric_positive_and_finite(tiny_report):
    assert set(_runs_by_moe(tiny_report)) == {"sparse", "dense"}
    for run in tiny_report["runs"]:
        assert run["layers"] == 2 and run["batch_size"] == 2 and run["dtype"] == "float32"
        assert set(run["compile_s"]) == {"new_memory", "prefill_8", "sample_step"}
        for key in bench.RESULT_KEYS + ("compile_cpu_s", "weight_read_gb_per_s"):
            values = run[key].values() if isinstance(run[key], dict) else [run[key]]
            assert all(math.isfinite(v) and v > 0 for v in values), (run["moe"], key, run[key])
        assert run["decode_tokens_per_s"] == pytest.approx(2e3 / run["decode_step_ms"])
        assert run["decode_step_ms_min"] <= run["decode_step_ms"]
        assert run["kv_len"] == 128 and run["sequence_len"] == 128 and run["experts"] == 4
        # every step ran through the engine's own variant for the live context
        assert run["kv_len_steps"] == {"128": bench.WARMUP_STEPS + NEW_TOKENS}
        assert 0 < run["of_bandwidth"] and run["useful_gb_per_s"] > run["weight_read_gb_per_s"]
    assert tiny_report["bandwidth_gb_per_s"] > 0
    assert tiny_report["command"].startswith("python -m grok.bench --vocab 256")


@pytest.mark.slow
def test_sparse_and_dense_decode_the_same_greedy_tokens(tiny_report):
    runs = _runs_by_moe(tiny_report)
    sparse, dense = runs["sparse"]["tokens"], runs["dense"]["tokens"]
    assert len(sparse) == 2 and all(len(t) == 1 + bench.WARMUP_STEPS + NEW_TOKENS for t in sparse)
    assert sparse == dense
    assert len({t for slot in sparse for t in slot}) > 2  # not one token repeated: a real test


@pytest.mark.slow
def test_comparisons_give_the_sparse_over_dense_speed(tiny_report):
    runs = _runs_by_moe(tiny_report)
    [ratio] = [c for c in tiny_report["comparisons"] if c["what"].startswith("decode_tokens_per_s")]
    assert ratio["batch_size"] == 2 and ratio["layers"] == 2
    expected = runs["sparse"]["decode_tokens_per_s"] / runs["dense"]["decode_tokens_per_s"]
    assert ratio["ratio"] == pytest.approx(expected)


@pytest.mark.slow
def test_dumped_hlo_has_no_all_reduce_in_the_layer_loop(tiny_report, tmp_path_factory):
    """2 slots on (1, 2): the residual stream's rows are split over the model axis, so
    attention's output projection and the MoE end in a reduce-scatter each, not an
    all-reduce; each sub-layer's normed rows are all-gathered, and so are the router's
    choices for a device's own rows (gates and expert ids) that the MoE takes for all rows.
    (The dense MoE, a reference path, ends in an all-reduce.)"""
    for run in tiny_report["runs"]:
        assert run["hlo"]["collectives_per_layer"] <= 6 and run["hlo"]["conditionals"] == 0
    [sparse] = [r for r in tiny_report["runs"] if r["moe"] == "sparse"]
    collectives = sparse["hlo"]["layer_collectives"]
    assert collectives.count("reduce-scatter") == 2 and "all-reduce" not in collectives
    assert sparse["hlo"]["file"].endswith(".sample_step.txt")


def test_expert_and_cache_length_ratios():
    def run(experts, seq, ms):
        return {"layers": 2, "experts": experts, "moe": "sparse", "batch_size": 1,
                "dtype": "float32", "sequence_len": seq, "decode_step_ms": ms,
                "decode_tokens_per_s": 1e3 / ms}
    out = bench.comparisons([run(2, 512, 10.0), run(8, 512, 11.0), run(2, 8192, 12.0),
                             run(8, 8192, 13.0)])
    by_what = {(c["what"], c.get("sequence_len"), c.get("experts")): c["ratio"] for c in out}
    assert by_what[("decode_step_ms experts 8 / 2", 512, None)] == pytest.approx(1.1)
    assert by_what[("decode_step_ms sequence_len 8192 / 512", None, 8)] == pytest.approx(13 / 11)
    assert len(out) == 4


def test_layers_fit_extrapolates_the_compiled_memory(monkeypatch):
    measured = {2: 1000, 3: 1300}   # bytes: 400 fixed + 300 per layer
    monkeypatch.setattr(traffic, "decode_memory_bytes",
                        lambda config, runtime, batch, mesh: measured[config.model.num_layers])
    config = bench.base_config(bench.parse_args(TINY_ARGS))
    assert traffic.layers_that_fit(config, RuntimeConfig(), 1, None, budget_bytes=400 + 300 * 7 + 299) == 7
    with pytest.raises(ValueError, match="not even one layer fits"):
        traffic.layers_that_fit(config, RuntimeConfig(), 1, None, budget_bytes=650)


def test_the_embedding_table_is_counted_in_the_activation_dtype():
    config = bench.base_config(bench.parse_args(TINY_ARGS))
    mesh = sharding.make_mesh((1, 1))
    shardings = sharding.param_shardings(abstract_params(config), mesh)
    params = weights.synthetic_params(config, shardings, table_dtype=jnp.bfloat16)
    table = params["language_model/in_out_embed"]["embeddings"]
    assert table.dtype == jnp.bfloat16
    as_f32 = {**params, "language_model/in_out_embed": {"embeddings": table.astype(jnp.float32)}}
    saved = (traffic.weight_bytes_per_step(as_f32, config, "dense", 1)
             - traffic.weight_bytes_per_step(params, config, "dense", 1))
    assert saved == 2 * table.size


def test_layer_sweep_reports_compile_ratios():
    def run(layers, seconds):
        return {"layers": layers, "moe": "sparse", "batch_size": 1, "dtype": "float32",
                "decode_tokens_per_s": 1.0, "compile_s": {"new_memory": 1.0, "sample_step": seconds},
                "compile_cpu_s": {"new_memory": 1.0, "sample_step": seconds / 2}}
    out = bench.comparisons([run(4, 10.0), run(32, 12.0)])
    by_what = {c["what"]: c["ratio"] for c in out}
    assert by_what == {"compile_s[sample_step] 32 / 4 layers": pytest.approx(1.2),
                       "compile_cpu_s[sample_step] 32 / 4 layers": pytest.approx(1.2)}


def test_weight_bytes_count_only_the_selected_experts():
    args = bench.parse_args(TINY_ARGS)
    config = bench.base_config(args)
    params = abstract_params(config)
    moe_bytes = sum(traffic.nbytes(leaf) for module, leaves in params.items() if "/moe/" in module
                    for w in leaves.values() for leaf in (w.weight, w.scales))
    dense = traffic.weight_bytes_per_step(params, config, "dense", 1)
    sparse = traffic.weight_bytes_per_step(params, config, "sparse", 1)
    e, k = config.model.num_experts, config.model.num_selected_experts
    assert dense - sparse == pytest.approx(moe_bytes * (e - k) / e)
    assert traffic.weight_bytes_per_step(params, config, "sparse", 1000) == pytest.approx(dense)


def test_hashed_int8_is_symmetric_deterministic_and_spread():
    w = np.asarray(weights.hashed_int8((3, 64, 128), seed=1))
    assert w.dtype == np.int8 and w.min() >= -127 and w.max() == 127
    assert abs(w.mean()) < 1.0 and w.std() == pytest.approx(weights.INT8_UNIFORM_STD, rel=0.02)
    assert np.array_equal(w, np.asarray(weights.hashed_int8((3, 64, 128), seed=1)))
    other = np.asarray(weights.hashed_int8((3, 64, 128), seed=2))
    assert np.mean(w == other) < 0.02                  # seeds give unrelated weights
    assert np.mean(w[0] == w[1]) < 0.02                 # so do layers (leading index)


@pytest.mark.parametrize("argv, message", [
    (["--moe", "sparse,fast"], "['fast'] not allowed"),
    (["--batch-size", "1,0"], "[0] not allowed"),
    (["--mesh", "1,2,3"], "--mesh is DATA,MODEL"),
    (["--checkpoint", "/nowhere", "--layers", "4"], "--layers cannot change a checkpoint"),
    (["--new-tokens", "0"], "--new-tokens must be >= 1"),
    (["--kv-len", "half"], "invalid choice: 'half'"),
    (["--experts", "2,0"], "[0] not allowed"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_run_longer_than_the_cache_is_refused():
    args = bench.parse_args(TINY_ARGS + ["--sequence-len", "12"])
    with pytest.raises(ValueError, match="exceeds sequence_len 12"):
        bench.base_config(bench.parse_args(TINY_ARGS + ["--sequence-len", "512,12"]))
    with pytest.raises(ValueError, match="exceeds sequence_len 12"):
        bench.base_config(args)

"""`python -m grok.bench structured` runs end to end (byte vocabulary, a few steps) and
reports every case, the mask-fill time and the tool-schema compile time."""

import pytest

from grok import bench

pytestmark = pytest.mark.slow   # compiles a model (about 20 s on 2 cores)


def test_structured_benchmark_runs(tmp_path):
    out = bench.main(["structured", "--tokenizer", "bytes", "--slots", "2", "--steps", "2",
                      "--emb", "32", "--layers", "1", "--json", str(tmp_path / "r.json")])
    assert set(out["ms_per_step"]) == {"plain", "processed, none constrained",
                                       "all constrained (JSON schema)"}
    assert out["ratio_to_plain"]["plain"] == 1.0
    assert out["mask_fill_ms"] >= 0 and out["tool_schema_compile_ms"] > 0
    assert (tmp_path / "r.json").exists()

"""grok/benchmarks/gpu_decode.sh, the script for a short GPU loan: its --dry-run on CPU (tiny
width, 2 layers) runs every phase and leaves every output the loan is for."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "grok", "benchmarks", "gpu_decode.sh")


def test_the_script_parses():
    subprocess.run(["bash", "-n", SCRIPT], check=True)


@pytest.mark.slow       # ~2 minutes: four Python processes, two compiles of the step
def test_dry_run_leaves_every_output(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(SCRIPT) + "/../..",
                                                        os.environ.get("PYTHONPATH", "")])}
    env.pop("XLA_FLAGS", None)         # the tests' 8 virtual devices: the script's run is 1 device
    done = subprocess.run(["bash", SCRIPT, "--dry-run", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    status = (tmp_path / "status.txt").read_text()
    assert done.returncode == 0, status + done.stderr[-3000:]
    assert [line.split()[0] for line in status.splitlines()] == ["env", "calibrate", "decode", "check"]
    assert "jax:" in (tmp_path / "env.txt").read_text()               # print_environment_info
    figures = json.loads((tmp_path / "calibration.json").read_text())["figures"]
    assert {"copy", "gemv_plain", "gemv_stacked", "gemv_reduce", "gemv_moe_kernel"} <= set(figures)
    runs = json.loads((tmp_path / "decode.json").read_text())["runs"]  # one process, both batches
    assert [r["batch_size"] for r in runs] == [1, 4]
    assert all(r["cost_analysis_mb_per_step"] > 0 and r["sequence_len"] == 64 for r in runs)
    assert any(files for _, _, files in os.walk(tmp_path / "profile"))  # the trace
    optimised = [n for n in os.listdir(tmp_path / "xla_dump") if n.endswith("after_optimizations.txt")]
    assert optimised and all("jit_sample_step" in n for n in optimised), optimised   # XLA's dump
    assert len(os.listdir(tmp_path / "hlo")) == 2

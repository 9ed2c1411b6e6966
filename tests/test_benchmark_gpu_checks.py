"""benchmarks/gpu_checks.py (the prepared GPU run) works end to end at a tiny size, on JAX, without TensorFlow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BENCHMARKS

ROOT = Path(__file__).resolve().parents[1]
# The GPU machine has no TensorFlow: block it, as there, then run the script.
RUNNER = ("import runpy, sys; sys.modules['tensorflow'] = None; sys.argv = sys.argv[1:]; "
          "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.slow
def test_gpu_checks_tiny_run_writes_every_check(tmp_path):
    out = tmp_path / "gpu_checks.json"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(BENCHMARKS / "gpu_checks.py"), "--tiny",
                           "--json", str(out)], capture_output=True, text=True, timeout=1800, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    nan = result["nan"]
    assert list(nan)[:2] == ["b0_bf16", "b0_float32"]  # RESULTS.md's order
    assert all("error" not in r and r["steps_run"] == 3 and r["all_finite"] for r in nan.values())
    assert {r["spec"]["encoder"] for r in nan.values()} == {"tiny"}
    rows = result["throughput"]
    assert len(rows) == 2 and all(set(r["variants"]) == {"a", "b"} and r["b_over_a"] > 0 for r in rows)
    assert result["scan"]["images_per_s"] > 0 and result["scan"]["batch"] == 16

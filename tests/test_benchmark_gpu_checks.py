"""benchmarks/gpu_checks.py (the prepared GPU run) works end to end at a tiny size, on JAX, without TensorFlow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BENCHMARKS, load_benchmark

ROOT = Path(__file__).resolve().parents[1]
# The GPU machine has no TensorFlow: block it, as there, then run the script.
RUNNER = ("import runpy, sys; sys.modules['tensorflow'] = None; sys.argv = sys.argv[1:]; "
          "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.slow
def test_gpu_checks_tiny_run_writes_every_check(tmp_path):
    out = tmp_path / "gpu_checks.json"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(BENCHMARKS / "gpu_checks.py"), "--tiny", "--all-nan",
                           "--json", str(out)], capture_output=True, text=True, timeout=1800, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    nan = result["nan"]
    assert list(nan)[:3] == ["b0_bf16", "b0_bf16_old_l2", "b0_float32"]  # --all-nan: every check, in order
    assert len(nan) == 12 and nan["b0_bf16_autotune0"]["spec"]["xla_flags"] == "--xla_gpu_autotune_level=0"
    assert all("error" not in r and r["steps_run"] == 3 and r["all_finite"] for r in nan.values())
    assert {r["spec"]["encoder"] for r in nan.values()} == {"tiny"}
    rows = result["throughput"]
    assert len(rows) == 2 and all(set(r["variants"]) == {"a", "b"} and r["b_over_a"] > 0 for r in rows)
    assert result["scan"]["images_per_s"] > 0 and result["scan"]["batch"] == 16
    assert result["nan_reading"].startswith("finite for 3 steps with and without the l2_normalize fix")


def _record(finite, step=None, tensor=None, steps=30):
    return {"all_finite": finite, "steps_run": steps if finite else step, "first_nonfinite_step": step,
            "first_nonfinite_tensor": tensor, "losses": []}


def test_nan_plan_attributes_a_finite_step_and_diagnoses_the_rest():
    gpu, hunt = load_benchmark("gpu_checks"), load_benchmark("nan_hunt")
    checks = [gpu.FIRST_CHECK] + gpu.ATTRIBUTE_CHECKS + gpu.DIAGNOSE_CHECKS
    assert len({name for name, *_ in checks}) == len(checks)
    overridable = set(hunt.BASELINE) | {"encoder"}
    assert all(variant in hunt.VARIANTS and set(extra) <= overridable for _, variant, extra in checks)
    assert gpu.nan_plan(_record(True)) == gpu.ATTRIBUTE_CHECKS
    assert gpu.nan_plan(_record(False, 3)) == gpu.DIAGNOSE_CHECKS
    assert gpu.nan_plan({"error": "timed out after 120 s"}) == gpu.DIAGNOSE_CHECKS  # says nothing of the fix
    assert gpu.nan_plan(_record(True), all_checks=True) == gpu.ATTRIBUTE_CHECKS + gpu.DIAGNOSE_CHECKS


def test_nan_reading_names_the_cure_or_the_single_changes_that_cure():
    gpu = load_benchmark("gpu_checks")
    cured = {"b0_bf16": _record(True), "b0_bf16_old_l2": _record(False, 3, "grad of dense")}
    assert gpu.nan_reading(cured).startswith("the l2_normalize fix is the cure: finite for 30 steps with it, "
                                             "non-finite from step 3 without it (grad of dense)")
    same = {"b0_bf16": _record(True), "b0_bf16_old_l2": _record(True)}
    assert "did not reproduce" in gpu.nan_reading(same)
    assert "did not finish" in gpu.nan_reading({"b0_bf16": _record(True), "b0_bf16_old_l2": {"error": "x"}})
    diagnosed = {"b0_bf16": _record(False, 3, "stem_conv"), "b0_float32": _record(True),
                 "b0_bf16_highest": _record(False, 4), "b0_bf16_autotune0": _record(True),
                 "tiny_bf16": {"error": "timed out"}}
    assert gpu.nan_reading(diagnosed) == ("non-finite from step 3 (stem_conv) with the l2_normalize fix; finite "
                                          "when one thing changes: b0_float32, b0_bf16_autotune0; still "
                                          "non-finite: b0_bf16_highest")
    assert gpu.nan_reading({"b0_bf16": {"error": "timed out after 120 s"}}).startswith("b0_bf16 did not finish")


def test_a_checks_xla_flags_reach_its_interpreter_after_the_users():
    hunt = load_benchmark("nan_hunt")
    spec = dict(hunt.BASELINE, xla_flags="--xla_gpu_autotune_level=0")
    env = hunt.child_env(spec, {"XLA_FLAGS": "--xla_dump_to=/tmp/d", "PYTHONPATH": "/x"})
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/d --xla_gpu_autotune_level=0"
    assert env["KERAS_BACKEND"] == "jax" and env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/x"]
    accumulate = hunt.child_env(dict(hunt.BASELINE, emulate="bf16_accumulation"), {})
    assert accumulate["XLA_FLAGS"] == "--xla_allow_excess_precision=false"

"""Bad DATA ends in one line and exit code 2, and no run directory is created."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv", [
    ["pretrain", "{missing}", "--run-dir", "{run}"],
    ["fit", "{missing}/*.tfrecord*", "--run-dir", "{run}"],
    ["finetune", "{run}", "{missing}", "--mode", "supervised", "--labels-fraction", "0.5", "--epochs", "1"],
])
def test_unreadable_data_leaves_no_run_dir(tmp_path, argv):
    run = tmp_path / "run"
    args = [a.format(missing=tmp_path / "missing", run=run) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "kerasssl", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kerasssl")]
    assert len(errors) == 1 and "missing" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not run.exists()

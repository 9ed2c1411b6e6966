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


@pytest.mark.parametrize("command", ["pretrain", "fit"])
@pytest.mark.parametrize("layout", ["flat", "folders"])
def test_one_class_data_is_refused_at_the_split_before_any_training(tmp_path, command, layout):
    from conftest import write_class_folders, write_hst_folder

    if layout == "flat":  # DeepLense HST layout without any nl_* file: lenses only
        data = write_hst_folder(tmp_path / "data", 8, 0, size=16)
        needle = "only class 'lens' has images (images per class: nonlens 0, lens 8)"
    else:
        data = write_class_folders(tmp_path / "data", {"lenses": 8}, size=16)
        needle = "only class 'lenses' has images (images per class: lenses 8)"
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "kerasssl", command, str(data), "--run-dir", str(run),
                           "--encoder", "tiny", "--epochs", "1", "--batch-size", "4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kerasssl")]
    assert len(errors) == 1 and needle in errors[0] and str(data) in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # Refused when the split was made: nothing of a split, a preprocessing or a training exists.
    for name in ("split.json", "preprocess.json", "checkpoints", "history.json", "encoder.keras",
                 "classifier.keras", "report.json"):
        assert not (run / name).exists(), name

"""Bad DATA ends in one line and exit code 2, and no run directory is created;
stderr carries kerasssl's lines only unless -v."""

import os
import subprocess
import sys

import pytest

from conftest import write_hst_folder


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


# -- a quiet CLI: kerasssl's own lines only, TensorFlow's with -v ---------------------


def user_env():
    """The environment a user has: no TF_CPP_MIN_LOG_LEVEL of the test suite's."""
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def test_a_bad_method_prints_exactly_one_stderr_line(tmp_path):
    data = write_hst_folder(tmp_path / "hst", 4, 4, size=16)
    run = tmp_path / "bad"
    proc = subprocess.run([sys.executable, "-m", "kerasssl", "pretrain", str(data), "--run-dir", str(run),
                           "--method", "nope"], capture_output=True, text=True, timeout=300, env=user_env())
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kerasssl: error: unknown method 'nope'")
    assert not run.exists()


def _message(line):
    """A native log line without its timestamp / thread prefix ("I0000 00:00:17.. 123 port.cc:153] ...")."""
    return line.split("] ", 1)[-1]


def test_verbose_lets_tensorflows_lines_through(tmp_path):
    bare = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                          timeout=300, env=user_env())
    native = {_message(line) for line in bare.stderr.splitlines() if line.strip()}
    if not native:
        pytest.skip("this TensorFlow prints nothing when imported: nothing to let through")
    data = write_hst_folder(tmp_path / "hst", 4, 4, size=16)
    proc = subprocess.run([sys.executable, "-m", "kerasssl", "-v", "pretrain", str(data), "--run-dir",
                           str(tmp_path / "bad"), "--method", "nope"],
                          capture_output=True, text=True, timeout=300, env=user_env())
    assert proc.returncode == 2
    shown = {_message(line) for line in proc.stderr.splitlines()}
    assert native <= shown, proc.stderr
    assert any(line.startswith("kerasssl: error: unknown method") for line in proc.stderr.splitlines())


def test_native_stderr_is_hidden_and_pythons_is_kept(tmp_path):
    """NativeStderrHidden, on a stand-in package that writes to fd 2 (as TF's C++ does) when imported."""
    (tmp_path / "noisy_native").mkdir()
    (tmp_path / "noisy_native" / "__init__.py").write_text(
        "import os, sys\nos.write(2, b'native start-up chatter\\n')\nprint('python warning', file=sys.stderr)\n")
    code = ("import logging, os, sys\n"
            "from kerasssl.cli.quiet import NativeStderrHidden\n"
            "with NativeStderrHidden():\n"
            "    import noisy_native\n"
            "    logging.basicConfig(format='%(message)s')\n"
            "    logging.warning('kerasssl warning')\n"
            "os.write(2, b'native after\\n')\n"
            "logging.warning('logged after')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["python warning", "kerasssl warning", "native after", "logged after"]


@pytest.mark.parametrize("argv, count", [
    (["pretrain", "-v"], 0),  # a sub-command's own option, not the group's
    (["-v", "pretrain"], 1),
    (["-vv", "fit"], 2),
    (["--verbose", "-v", "fit", "-v"], 2),
    ([], 0),
])
def test_verbosity_is_read_from_the_group_options(argv, count):
    from kerasssl.cli.quiet import verbosity

    assert verbosity(argv) == count

"""`kerasssl inspect`: JSON and table output, user errors as one line with exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli

from kerasssl.data.load import load_images


def test_json_for_the_hst_layout_matches_the_data(hst_folder, capsys):
    code, out, err = run_cli(["inspect", str(hst_folder), "--json"], capsys)
    assert code == 0
    summary = json.loads(out)  # exactly one JSON object on stdout
    data = load_images(hst_folder)
    finite = data.images[np.isfinite(data.images)]
    assert summary["format"] == "hst"
    assert summary["n_images"] == 36
    assert summary["classes"] == {"nonlens": 12, "lens": 24}
    assert summary["shape"] == [32, 32, 1]
    assert summary["dtype"] == "float32" and summary["stored_shapes"] == [[32, 32]]
    assert summary["nan_pixels"] == 12 and summary["files_with_nan"] == 4
    assert summary["value_range"] == [pytest.approx(finite.min()), pytest.approx(finite.max())]
    per_class_nan = sum(c["nan_pixels"] for c in summary["per_class"].values())
    assert per_class_nan == 12
    assert summary["band_mean"] == [pytest.approx(float(finite.astype(np.float64).mean()))]


def test_table_for_channels_first_class_folders(three_band_folder, capsys):
    code, out, _ = run_cli(["inspect", str(three_band_folder)], capsys)
    assert code == 0
    assert "format   folders" in out
    assert "[H, W, C] = [32, 32, 3]" in out and "stored as 3x32x32 float32" in out
    table = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert table["nonlenses"][1] == "16" and table["lenses"][1] == "20"
    assert table["total"][1:3] == ["36", "0"]


def test_crop_and_pickle_options(tmp_path, capsys):
    root = tmp_path / "sim"
    for name in ("axion", "cdm"):
        (root / name).mkdir(parents=True)
    image = np.random.default_rng(0).normal(size=(20, 20))
    np.save(root / "axion" / "0.npy", np.array([image, 1e-23], dtype=object), allow_pickle=True)
    np.save(root / "cdm" / "0.npy", np.ones((18, 18), np.float64))

    code, _, err = run_cli(["inspect", str(root)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("kerasssl: error: ") and "0.npy: holds an object array" in err

    code, out, _ = run_cli(["inspect", str(root), "--json", "--allow-pickle", "--image-size",
                            "16"], capsys)
    summary = json.loads(out)
    assert code == 0 and summary["shape"] == [16, 16, 1]
    assert summary["classes"] == {"axion": 1, "cdm": 1}
    assert summary["dtype"] == "float64"
    assert summary["per_class"]["cdm"]["min"] == summary["per_class"]["cdm"]["max"] == 1.0


@pytest.mark.parametrize("argv_tail, message", [
    (["missing"], "no such file or folder"),
    (["empty"], "no images"),
])
def test_bad_data_is_one_line_and_exit_2_with_nothing_on_stdout(tmp_path, capsys, argv_tail,
                                                                 message):
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(["inspect", str(tmp_path / argv_tail[0])], capsys)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


def test_inspect_does_not_load_tensorflow(hst_folder):
    script = (
        "import sys\n"
        "from kerasssl.cli import main\n"
        "try:\n"
        f"    main(['inspect', {str(hst_folder)!r}, '--json'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "print('TF', 'tensorflow' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert "TF False" in done.stderr, done.stderr[-1000:]
    assert json.loads(done.stdout)["n_images"] == 36


def test_help_is_useful(capsys):
    code, out, _ = run_cli(["inspect", "--help"], capsys)
    assert code == 0
    for option in ("--json", "--allow-pickle", "--image-size", "nl_", "[H, W, C]"):
        assert option in out

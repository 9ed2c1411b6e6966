"""`kerasssl simulate` through the real entry point: output, summary line, exit codes."""

import csv

import numpy as np
import pytest

pytest.importorskip("lenstronomy")

from kerasssl.cli import main  # noqa: E402


def run(argv, capsys):
    """Run the console entry point; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_simulate_writes_a_loadable_three_band_set(tmp_path, capsys):
    out = tmp_path / "3b"
    code, stdout, stderr = run(["simulate", str(out), "--format", "three-band", "--n-lenses", "3",
                                "--n-nonlenses", "2", "--size", "16", "--seed", "1",
                                "--nan-fraction", "0.5"], capsys)
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    assert "5 images (3 lenses, 2 non-lenses" in lines[0] and "images/s" in lines[0]
    assert "3 files with NaN" in lines[0]  # round(1.5) + round(1.0) = 2 + 1
    assert sorted(p.name for p in (out / "lenses").iterdir()) == \
        [f"lens_{i}.npy" for i in range(3)]
    assert np.load(out / "nonlenses" / "nonlens_1.npy").shape == (3, 16, 16)
    with open(out / "metadata.csv") as f:
        assert len(list(csv.DictReader(f))) == 5


def test_simulate_output_is_read_by_the_loader(tmp_path, capsys):
    load = pytest.importorskip("kerasssl.data.load")
    out = tmp_path / "hst"
    code, _, stderr = run(["simulate", str(out), "--n-lenses", "3", "--n-nonlenses", "2",
                           "--size", "16", "--seed", "2", "--nan-fraction", "0.4"], capsys)
    assert code == 0, stderr
    images = load.load_images(out)
    assert images.format == "hst"
    assert images.class_names == ["nonlens", "lens"]
    assert images.images.shape == (5, 16, 16, 1)
    assert sorted(images.labels.tolist()) == [0, 0, 1, 1, 1]
    assert np.isnan(images.images).any(axis=(1, 2, 3)).sum() == 2


@pytest.mark.parametrize("args, message", [
    (["--format", "jpeg"], "--format: unknown format 'jpeg'"),
    (["--n-lenses", "-2"], "--n-lenses"),
    (["--nan-fraction", "2"], "--nan-fraction"),
    (["--size", "4"], "--size"),
    (["--workers", "0"], "--workers"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code, stdout, stderr = run(["simulate", str(out), "--n-lenses", "1", "--n-nonlenses", "1",
                                "--size", "16", *args], capsys)
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("kerasssl: error: ")
    assert message in stderr and "Traceback" not in stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_simulate_writes_an_unlabeled_pool(tmp_path, capsys):
    out = tmp_path / "pool"
    code, stdout, stderr = run(["simulate", str(out), "--format", "pool", "--n", "10",
                                "--lens-fraction", "0.2", "--size", "16", "--seed", "1"],
                               capsys)
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and "unlabeled pool of 10 images (2 lenses, 8 non-lenses" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == \
        ["metadata.csv"] + [f"pool_{i:06d}.npy" for i in range(10)]
    assert np.load(out / "pool_000003.npy").shape == (3, 16, 16)
    with open(out / "metadata.csv") as f:
        assert sorted(r["is_lens"] for r in csv.DictReader(f)) == ["0"] * 8 + ["1"] * 2


@pytest.mark.parametrize("args, message", [
    (["--n", "0", "--lens-fraction", "0.1"], "--n: must be a whole number >= 1, got 0"),
    (["--n", "10", "--lens-fraction", "1.5"], "--lens-fraction: must be in [0, 1], got 1.5"),
    (["--n", "10"], "--lens-fraction: required with --format pool"),
    (["--lens-fraction", "0.1"], "--n: required with --format pool"),
    (["--n", "10", "--lens-fraction", "0.1", "--bands", "2"], "--bands: must be 1 or 3"),
    (["--n", "10", "--lens-fraction", "0.1", "--n-lenses", "3"],
     "--n-lenses / --n-nonlenses: not used with --format pool"),
])
def test_bad_pool_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code, stdout, stderr = run(["simulate", str(out), "--format", "pool", "--size", "16", *args],
                               capsys)
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("kerasssl: error: ")
    assert message in stderr and "Traceback" not in stderr
    assert stdout == "" and list(tmp_path.iterdir()) == []


def test_pool_options_are_refused_for_labelled_formats(tmp_path, capsys):
    code, _, stderr = run(["simulate", str(tmp_path / "out"), "--format", "three-band",
                           "--n", "10", "--bands", "1"], capsys)
    assert code == 2
    assert stderr.strip() == "kerasssl: error: --n / --bands: only with --format pool " \
                             "(use --n-lenses / --n-nonlenses)"
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_and_left_untouched(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "0_hst.npy").write_bytes(b"precious")
    code, _, stderr = run(["simulate", str(out), "--n-lenses", "1", "--n-nonlenses", "1",
                           "--size", "16"], capsys)
    assert code == 2
    assert stderr.strip() == f"kerasssl: error: {out}: already exists and is not empty " \
                             "(choose a new output folder)"
    assert [p.name for p in out.iterdir()] == ["0_hst.npy"]
    assert (out / "0_hst.npy").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_help_names_the_formats(capsys):
    code, stdout, _ = run(["simulate", "--help"], capsys)
    assert code == 0
    for word in ("three-band", "nl_<n>_hst.npy", "--nan-fraction", "--workers", "metadata.csv",
                 "pool", "--lens-fraction", "--unlabeled"):
        assert word in stdout

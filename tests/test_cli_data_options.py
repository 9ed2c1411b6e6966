"""--allow-pickle and --channels-first/--channels-last: one decorator, on every command that reads data."""

import json
import subprocess
import sys

import numpy as np
import pytest

from kerasssl.cli import main

READERS = ["pretrain", "finetune", "fit", "evaluate", "inspect", "convert", "predict"]


def cli(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.mark.parametrize("command", READERS)
def test_every_data_reading_command_has_both_options(command, capsys):
    code, out, _ = cli([command, "--help"], capsys)
    assert code == 0
    assert "--channels-first / --channels-last" in out and "data.channel_axis" in out
    assert "--allow-pickle" in out


def write_cubes(root):
    """A flat folder of 3x3x3 arrays: the band axis cannot be told, only given."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(4):
        np.save(root / f"{i}.npy", rng.normal(size=(3, 3, 3)).astype(np.float32))
        np.save(root / f"nl_{i}.npy", rng.normal(size=(3, 3, 3)).astype(np.float32))
    return root


@pytest.fixture
def seen(monkeypatch):
    """Replace each command's library call by one that records the config it was given."""
    import kerasssl.evaluate
    import kerasssl.finetune
    import kerasssl.fit
    import kerasssl.pretrain

    configs = {}

    def record(name, result):
        def call(cfg, *args, **kwargs):
            configs[name] = kwargs.get("cfg", cfg)
            return result
        return call

    monkeypatch.setattr(kerasssl.pretrain, "pretrain", record("pretrain", {"loss": [1.0]}))
    monkeypatch.setattr(kerasssl.fit, "fit", record("fit", {}))
    monkeypatch.setattr(kerasssl.fit, "summary_lines", lambda summary: [])
    monkeypatch.setattr(kerasssl.finetune, "finetune", record("finetune", {
        "mode": "linear", "n_labeled": 1, "labels_fraction": 1.0, "class_weight": None,
        "best_val_roc_auc": None, "model": "m.keras"}))

    def evaluate_run(model, data, run_dir, **kwargs):
        configs["evaluate"] = kwargs["cfg"]
        return {"roc_auc_ci": [0, 1], "roc_auc": 0.5, "pr_auc": 0.5, "accuracy": 0.5, "n_test": 1,
                "split": "test", "class_counts": {}}

    monkeypatch.setattr(kerasssl.evaluate, "evaluate_run", evaluate_run)
    return configs


def argv_of(command, data, run, model):
    return {
        "pretrain": ["pretrain", data, "--run-dir", run],
        "fit": ["fit", data, "--run-dir", run],
        "finetune": ["finetune", run, data],
        "evaluate": ["evaluate", model, data, "--run-dir", run],
    }[command]


@pytest.mark.parametrize("command", ["pretrain", "finetune", "fit", "evaluate"])
def test_training_commands_put_the_flags_into_the_run_config(command, tmp_path, seen, capsys):
    data = write_cubes(tmp_path / "cubes")
    model = tmp_path / "m.keras"
    model.write_bytes(b"")
    argv = argv_of(command, data, tmp_path / "run", model)
    code, _, err = cli(argv, capsys)
    assert code == 0, err
    cfg = seen.pop(command)
    assert (cfg.data.allow_pickle, cfg.data.channel_axis) == (False, "auto")  # not given: config's
    code, _, err = cli(argv + ["--channels-last", "--allow-pickle"], capsys)
    assert code == 0, err
    cfg = seen.pop(command)
    assert (cfg.data.allow_pickle, cfg.data.channel_axis) == (True, "last")
    code, _, err = cli(argv + ["--channels-first"], capsys)
    assert code == 0, err
    assert seen.pop(command).data.channel_axis == "first"


def test_pretrain_on_data_with_an_unclear_band_axis_asks_for_the_flag(tmp_path):
    data = write_cubes(tmp_path / "cubes")
    proc = subprocess.run([sys.executable, "-m", "kerasssl", "pretrain", str(data), "--run-dir",
                           str(tmp_path / "run"), "--encoder", "tiny", "--epochs", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kerasssl")]
    assert len(errors) == 1 and "pass --channels-first or --channels-last" in errors[0]
    assert not (tmp_path / "run" / "split.json").exists()


def test_convert_records_the_given_axis(tmp_path, capsys):
    data = write_cubes(tmp_path / "cubes")
    code, _, err = cli(["convert", data, tmp_path / "rec", "--no-progress"], capsys)
    assert code == 2 and "--channels-first or --channels-last" in err
    code, _, err = cli(["convert", data, tmp_path / "rec", "--no-progress", "--channels-first"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "rec" / "manifest.json").read_text())["channel_axis"] == "first"


def test_predict_takes_the_flags_for_one_file(tmp_path, capsys):
    from test_export import make_classifier

    model = make_classifier(size=3, channels=3)
    model.save(tmp_path / "clf.keras")
    cube = np.random.default_rng(0).normal(size=(3, 3, 3)).astype(np.float32)
    cube[0] *= 10  # the two readings give different probabilities
    cube[:, 0] += 5
    np.save(tmp_path / "cube.npy", cube)
    argv = ["predict", tmp_path / "clf.keras", tmp_path / "cube.npy", "--json"]
    code, _, err = cli(argv, capsys)
    assert code == 2 and "cube.npy: cannot tell which axis" in err
    got = {}
    for flag, image in (("--channels-first", np.moveaxis(cube, 0, -1)), ("--channels-last", cube)):
        code, out, err = cli(argv + [flag], capsys)
        assert code == 0, err
        got[flag] = json.loads(out)["predictions"][0]["lens_probability"]
        assert got[flag] == pytest.approx(
            float(np.asarray(model(image[None], training=False))[0, 1]), abs=1e-5)
    assert abs(got["--channels-first"] - got["--channels-last"]) > 0.01

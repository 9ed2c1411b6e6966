"""`kerasssl pretrain`: flags -> config.yaml, --config replay, --resume, one-line errors (exit 2)."""

import json

import pytest
from conftest import run_cli

from kerasssl.config import RunConfig


def test_pretrain_cli_config_replay_and_resume(hst_folder, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["pretrain", str(hst_folder), "--run-dir", str(run), "--method", "vicreg", "--encoder", "tiny",
            "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--steps-per-epoch", "1",
            "--precision", "float32", "--seed", "3"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "pretrained tiny with vicreg for 1 epoch(s)" in out
    cfg = RunConfig.load(run / "config.yaml")
    assert (cfg.pretrain.method, cfg.pretrain.encoder, cfg.data.image_size, cfg.pretrain.batch_size,
            cfg.pretrain.steps_per_epoch, cfg.seed, cfg.data.seed) == ("vicreg", "tiny", 32, 8, 1, 3, 3)
    assert (run / "runs.jsonl").exists() and (run / "encoder.keras").exists()
    # The run's record: what the command read and wrote, and the config it ran with.
    entry = json.loads((run / "runs.jsonl").read_text().splitlines()[-1])
    assert entry["command"] == "pretrain" and entry["argv"] == ["kerasssl", *argv]
    assert entry["reads"] == {"data": str(hst_folder)} and str(run / "encoder.keras") in entry["writes"]
    assert RunConfig.from_dict(entry["config"]) == cfg

    # --resume: the saved config, only --epochs may change.
    code, out, err = run_cli(["pretrain", str(hst_folder), "--run-dir", str(run), "--resume", "--epochs", "2"], capsys)
    assert code == 0, err
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 2
    assert RunConfig.load(run / "config.yaml").pretrain.epochs == 2
    code, _, err = run_cli(["pretrain", str(hst_folder), "--run-dir", str(run), "--resume", "--method", "byol"], capsys)
    assert code == 2 and err.count("\n") == 1 and "only --epochs" in err

    # --config replays the run; flags override it.
    run2 = tmp_path / "run2"
    code, _, err = run_cli(["pretrain", str(hst_folder), "--run-dir", str(run2), "--config", str(run / "config.yaml"),
                         "--epochs", "1"], capsys)
    assert code == 0, err
    replay = RunConfig.load(run2 / "config.yaml")
    assert replay == RunConfig.load(run / "config.yaml").with_overrides({"pretrain.epochs": 1})


COMMON = ["--epochs", "1", "--batch-size", "4", "--image-size", "32", "--encoder", "tiny"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (COMMON + ["--method", "no_such_method"], "unknown method"),
        (COMMON + ["--encoder", "vgg"], "unknown encoder"),
        (COMMON + ["--encoder", "efficientnetb0", "--image-size", "16"], "at least 32 pixels"),
        (["--resume"], "nothing to resume"),
    ],
)
def test_pretrain_cli_bad_input_is_one_line_exit_2(hst_folder, tmp_path, capsys, extra, message):
    run = tmp_path / "bad"
    code, _, err = run_cli(["pretrain", str(hst_folder), "--run-dir", str(run), *extra], capsys)
    assert code == 2
    assert err.startswith("kerasssl: error:") and err.count("\n") == 1 and message in err
    assert not (run / "encoder.keras").exists()
    if message.startswith("unknown"):  # rejected before anything is written
        assert not run.exists()

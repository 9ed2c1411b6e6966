"""A rejected pretrain / fit / finetune writes nothing: no run dir is created, and the
run dir of another run stays byte-identical (its runs.jsonl is not appended to)."""

import hashlib
import shutil

import pytest
import yaml

from conftest import run_cli, write_class_folders, write_hst_folder
from kerasssl.cli import main

TINY = {
    "data": {"seed": 1},
    "pretrain": {"method": "simclr", "encoder": "tiny", "epochs": 1, "batch_size": 16,
                 "steps_per_epoch": 1, "knn_monitor": False},
    "finetune": {"mode": "linear", "epochs": 1, "batch_size": 16},
    "evaluate": {"bootstrap": 20},
    "export": {"enabled": False},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """DATA, a copy with one corrupt file, other data, a config, and a finished run."""
    root = tmp_path_factory.mktemp("reject")
    data = write_class_folders(root / "data", {"lenses": 24, "nonlenses": 18}, size=16)
    bad = root / "bad"
    shutil.copytree(data, bad)
    victim = sorted((bad / "lenses").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated .npy
    other_data = write_hst_folder(root / "hst", 10, 10, size=16)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    zero_size = root / "zero.yaml"
    zero_size.write_text(yaml.safe_dump({**TINY, "data": {"seed": 1, "image_size": 0}}))
    run = root / "other_run"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", str(data), "--run-dir", str(run), "--config", str(config)])
    assert exit_info.value.code == 0
    for name in ("runs.jsonl", "config.yaml", "split.json", "encoder.keras", "classifier.keras"):
        assert (run / name).exists(), name
    return {"data": data, "bad": bad, "other_data": other_data, "config": config,
            "zero_size": zero_size, "run": run}


def snapshot(folder):
    """Every file under ``folder`` -> its SHA-256 (folders too, as None)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


# (argv with {data} {bad} {other_data} {config} {zero_size} {run}, part of the error line)
FRESH_OR_EXISTING = {
    # (In another run's dir the run-dir check comes first: "already holds".)
    "pretrain-bad-file": (["pretrain", "{bad}", "--run-dir", "{run}", "--config", "{config}"],
                          "not a valid .npy file|already holds"),
    "pretrain-image-size-0": (["pretrain", "{data}", "--run-dir", "{run}", "--config", "{config}",
                               "--image-size", "0"], "image_size"),
    "fit-bad-file": (["fit", "{bad}", "--run-dir", "{run}", "--config", "{config}"], "not a valid .npy file"),
    "fit-labels-fraction-0": (["fit", "{data}", "--run-dir", "{run}", "--config", "{config}",
                               "--labels-fraction", "0"], "fraction"),
    "fit-image-size-0": (["fit", "{data}", "--run-dir", "{run}", "--config", "{config}", "--image-size", "0"],
                         "image_size"),
    "fit-finetune-epochs--1": (["fit", "{data}", "--run-dir", "{run}", "--config", "{config}",
                                "--finetune-epochs", "-1"], "epochs"),
    "finetune-bad-file": (["finetune", "{run}", "{bad}", "--mode", "supervised", "--config", "{config}"],
                          "not a valid .npy file"),
    "finetune-labels-fraction-0": (["finetune", "{run}", "{data}", "--mode", "supervised", "--config",
                                    "{config}", "--labels-fraction", "0"], "fraction"),
    "finetune-image-size-0": (["finetune", "{run}", "{data}", "--mode", "supervised", "--config",
                               "{zero_size}"], "image_size"),
    "finetune-epochs--1": (["finetune", "{run}", "{data}", "--mode", "supervised", "--config", "{config}",
                            "--epochs", "-1"], "epochs"),
}
EXISTING_ONLY = {
    # The run dir already holds a pretraining (of the same data).
    "pretrain-into-another-run": (["pretrain", "{data}", "--run-dir", "{run}", "--config", "{config}"],
                                  "already holds"),
    # ... pretrained with other settings.
    "fit-into-another-run": (["fit", "{data}", "--run-dir", "{run}", "--config", "{config}", "--method", "byol"],
                             "already holds"),
    # ... split from other data.
    "finetune-other-data": (["finetune", "{run}", "{other_data}", "--mode", "supervised"], "absent from"),
    "fit-other-data": (["fit", "{other_data}", "--run-dir", "{run}", "--config", "{config}",
                        "--mode", "supervised"], "absent from"),
    # Resuming the run (all its epochs done, encoder written) on a bad file.
    "pretrain-resume-bad-file": (["pretrain", "{bad}", "--run-dir", "{run}", "--resume", "--epochs", "2"],
                                 "not a valid .npy file"),
}


def _reject(world, argv, message, run, capsys):
    args = [a.format(run=run, **{k: v for k, v in world.items() if k != "run"}) for a in argv]
    code, out, err = run_cli(args, capsys)
    errors = [line for line in err.splitlines() if line.startswith("kerasssl")]
    assert code == 2, err
    assert len(errors) == 1 and any(m in errors[0] for m in message.split("|")), err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", sorted(FRESH_OR_EXISTING))
def test_rejected_command_creates_no_run_dir(world, tmp_path, capsys, case):
    argv, message = FRESH_OR_EXISTING[case]
    run = tmp_path / "new_run"
    _reject(world, argv, message.split("|")[0], run, capsys)
    assert not run.exists()


@pytest.mark.parametrize("case", sorted(FRESH_OR_EXISTING) + sorted(EXISTING_ONLY))
def test_rejected_command_leaves_another_run_byte_identical(world, tmp_path, capsys, case):
    argv, message = {**FRESH_OR_EXISTING, **EXISTING_ONLY}[case]
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    before = snapshot(run)
    _reject(world, argv, message, run, capsys)
    assert snapshot(run) == before

"""`kerasssl fit`, `finetune` and `evaluate` from the command line, end to end on tiny data."""

import json

import numpy as np
import pytest
import yaml

from conftest import run_cli, write_class_folders

TINY = {
    "data": {"seed": 1},
    "pretrain": {"method": "simclr", "encoder": "tiny", "epochs": 1, "batch_size": 16,
                 "knn_monitor": False},
    "finetune": {"mode": "linear", "epochs": 2, "batch_size": 16},
    "evaluate": {"bootstrap": 50},
    "export": {"enabled": False},
}


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    return write_class_folders(tmp_path_factory.mktemp("fit") / "data",
                               {"lenses": 24, "nonlenses": 18}, size=16)


def write_config(path, **sections):
    cfg = json.loads(json.dumps(TINY))
    for key, value in sections.items():
        cfg[key].update(value)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_fit_runs_the_whole_job(tmp_path, data16, capsys):
    cfg = write_config(tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    code, out, err = run_cli(["fit", data16, "--run-dir", run, "--config", cfg, "--seed", 3], capsys)
    assert code == 0, err
    for name in ("config.yaml", "split.json", "encoder.keras", "classifier.keras", "report.json",
                 "roc.png", "runs.jsonl"):
        assert (run / name).exists(), name
    report = json.loads((run / "report.json").read_text())
    for key in ("roc_auc", "roc_auc_ci", "pr_auc", "accuracy", "n_test", "class_counts",
                "labels_fraction", "mode"):
        assert key in report, key
    assert report["mode"] == "linear" and report["labels_fraction"] == 1.0
    assert report["overlap"] is None and report["split"] == "test"
    low, high = report["roc_auc_ci"]
    assert low <= report["roc_auc"] <= high
    split = json.loads((run / "split.json").read_text())
    assert report["n_test"] == len(split["test"]) == sum(report["class_counts"].values())
    from kerasssl.evaluate import training_overlap

    # Pretraining saw the whole train split: the guard covers its unlabelled files too.
    assert set(training_overlap(split["train"], run)) >= {"pretrain"}
    assert training_overlap(split["test"] + split["val"], run) == {}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["seed"] == 3 and saved["finetune"]["seed"] == 3  # --seed reaches every stage
    assert "ROC-AUC" in out and str(run / "roc.png") in out


def test_finetune_then_evaluate_commands_and_honesty_guard(tmp_path, data16, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(["finetune", run, data16, "--mode", "supervised", "--labels-fraction", 0.5,
                              "--epochs", 2, "--batch-size", 16, "--encoder", "tiny"], capsys)
    assert code == 0, err
    model = run / "classifier.keras"
    assert model.exists() and "classifier" in out

    # The labelled training files are refused, one line, exit 2, nothing written.
    code, out, err = run_cli(["evaluate", model, data16, "--run-dir", run, "--split", "labeled",
                              "--report", tmp_path / "bad.json", "--plot", tmp_path / "bad.png"], capsys)
    assert code == 2 and "--allow-overlap" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.json").exists() and not (tmp_path / "bad.png").exists()

    code, out, err = run_cli(["evaluate", model, data16, "--run-dir", run, "--split", "labeled",
                              "--allow-overlap", "--report", tmp_path / "ov.json",
                              "--plot", tmp_path / "ov.png"], capsys)
    assert code == 0, err
    assert "WARNING" in out and (tmp_path / "ov.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "ov.json").read_text())
    assert report["mode"] == "supervised" and report["labels_fraction"] == 0.5
    overlap = report["overlap"]
    labeled = json.loads((run / "finetune.json").read_text())["models"]["classifier.keras"]["labeled_files"]
    assert overlap["allowed"] and overlap["finetune"]["n_files"] == len(labeled)
    # Unlabelled training files never trained a supervised model (no pretraining in this run).
    from kerasssl.evaluate import training_overlap

    split = json.loads((run / "split.json").read_text())
    assert split["unlabeled"] and training_overlap(split["unlabeled"], run) == {}


def test_multiclass_fit_supervised(tmp_path, capsys):
    data = write_class_folders(tmp_path / "sim", {"axion": 14, "cdm": 14, "no_sub": 14},
                               size=16, channels=1, channels_first=False)
    cfg = write_config(tmp_path / "mc.yaml", finetune={"mode": "supervised"})
    code, out, err = run_cli(["fit", data, "--run-dir", tmp_path / "run", "--config", cfg], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["class_names"] == ["axion", "cdm", "no_sub"]
    assert report["roc_auc_average"] == "macro one-vs-rest"
    assert np.isclose(report["roc_auc"], np.mean(list(report["roc_auc_per_class"].values())))
    assert len(report["confusion_matrix"]) == 3
    assert not (tmp_path / "run" / "encoder.keras").exists()  # supervised skips pretraining


@pytest.mark.parametrize("args, message", [
    (["--config", "missing.yaml"], "missing.yaml"),
    (["--labels-fraction", "0"], "fraction"),
    (["--prevalence", "2"], "evaluate.prevalence (--prevalence) must be a fraction in (0, 1)"),
])
def test_fit_bad_input_is_one_line_exit_2(tmp_path, data16, capsys, args, message):
    code, out, err = run_cli(["fit", data16, "--run-dir", tmp_path / "run", *args], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_fit_reuses_resumes_or_refuses_an_existing_pretraining(tmp_path):
    from kerasssl.config import RunConfig
    from kerasssl.errors import KerassslError
    from kerasssl.fit import _pretraining_state

    cfg = RunConfig.from_dict(TINY)
    assert _pretraining_state(tmp_path, None, cfg) == "new"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "meta.json").write_text("{}")
    longer = cfg.with_overrides({"pretrain.epochs": 5})
    assert _pretraining_state(tmp_path, cfg, longer) == "resume"  # interrupted: more epochs is fine
    (tmp_path / "encoder.keras").write_bytes(b"")
    assert _pretraining_state(tmp_path, cfg, cfg) == "done"
    for other in (longer, cfg.with_overrides({"pretrain.method": "byol"}),
                  cfg.with_overrides({"data.normalization": "zscore"})):
        with pytest.raises(KerassslError, match="new --run-dir"):
            _pretraining_state(tmp_path, cfg, other)


def test_fit_on_tfrecord_shards_end_to_end(tmp_path, data16, capsys):
    # DATA as a glob of shards, the form `pretrain` and `inspect` take (it used
    # to end in "data folder not found" because fit checked Path.exists()).
    code, out, err = run_cli(["convert", data16, tmp_path / "rec", "--to", "tfrecord", "--shards", 2,
                              "--no-progress"], capsys)
    assert code == 0, err
    cfg = write_config(tmp_path / "tiny.yaml", pretrain={"steps_per_epoch": 2}, finetune={"epochs": 1})
    run = tmp_path / "run"
    code, out, err = run_cli(["fit", f"{tmp_path / 'rec'}/*.tfrecord*", "--run-dir", run, "--config", cfg],
                             capsys)
    assert code == 0, err
    for name in ("encoder.keras", "classifier.keras", "report.json", "split.json"):
        assert (run / name).exists(), name
    split = json.loads((run / "split.json").read_text())
    # The shards keep the folder's file names, so the split names the same images.
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(
        str(p.relative_to(data16)) for p in data16.rglob("*.npy"))
    assert json.loads((run / "report.json").read_text())["n_test"] == len(split["test"])


def test_fit_again_finishes_a_pretraining_killed_before_its_encoder(tmp_path, data16, capsys):
    cfg = write_config(tmp_path / "tiny.yaml", pretrain={"steps_per_epoch": 1}, finetune={"epochs": 1})
    run = tmp_path / "run"
    code, out, err = run_cli(["fit", data16, "--run-dir", run, "--config", cfg], capsys)
    assert code == 0, err
    history = json.loads((run / "history.json").read_text())
    (run / "encoder.keras").unlink()  # killed after the last checkpoint, before the encoder
    code, out, err = run_cli(["fit", data16, "--run-dir", run, "--config", cfg], capsys)
    assert code == 0, err
    assert "(resuming)" in out and (run / "encoder.keras").exists()
    assert json.loads((run / "history.json").read_text()) == history  # finished, not retrained


def write_simulator_metadata(data, lens_radius):
    """A metadata.csv as `kerasssl simulate` writes it (its columns), for conftest's fake folders."""
    import csv

    rows = []
    for path in sorted(data.rglob("*.npy")):
        name = str(path.relative_to(data))
        lens = name.startswith("lenses/")
        index = int(path.stem.rsplit("_", 1)[1])
        rows.append({"filename": name, "class": path.parent.name, "label": int(lens),
                     "psf_fwhm_g": 1.0, "psf_fwhm_r": 0.8,
                     "einstein_radius": lens_radius(index) if lens else "",
                     "arc_snr_g": 3.0 + index if lens else "", "arc_snr_r": 4.0 + index if lens else "",
                     "confuser": "none"})
    with open(data / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_fit_report_has_lens_finder_metrics_and_completeness(tmp_path, capsys):
    data = write_class_folders(tmp_path / "sim", {"lenses": 24, "nonlenses": 18}, size=16)
    write_simulator_metadata(data, lambda i: 0.5 + 0.1 * i)
    cfg = write_config(tmp_path / "tiny.yaml", finetune={"mode": "supervised"})
    run = tmp_path / "run"
    code, out, err = run_cli(["fit", data, "--run-dir", run, "--config", cfg, "--prevalence", 0.01], capsys)
    assert code == 0, err
    report = json.loads((run / "report.json").read_text())
    assert list(report["tpr_at_fpr"]) == ["1e-2", "1e-3"]
    n_neg = report["class_counts"]["nonlenses"]
    for metric in (*report["tpr_at_fpr"].values(), report["tpr0"], report["tpr10"]):
        assert metric["n_negatives"] == n_neg
    for metric in (*report["tpr_at_fpr"].values(), report["tpr0"], report["tpr10"],
                   report["precision_at_prevalence"]):
        # A value with its CI, or none with the reason (this test split has a few negatives only).
        assert (metric["value"] is None) == (not metric["estimable"]) == (metric["reason"] is not None)
    assert not report["tpr_at_fpr"]["1e-3"]["estimable"] and "1000 negatives" in report["tpr_at_fpr"]["1e-3"]["reason"]
    assert report["tpr0"]["estimable"] and 0.0 <= report["tpr0"]["value"] <= 1.0
    assert report["precision_at_prevalence"]["prevalence"] == 0.01  # --prevalence reached the report
    assert report["lens_finder"]["n_negatives"] == n_neg
    # Completeness per bin at the thresholds chosen on val, and its PNG beside roc.png.
    binned = report["completeness"]
    assert binned["metadata"] == str(data / "metadata.csv")
    assert binned["columns"] == ["einstein_radius", "radius_over_psf", "arc_snr", "psf_fwhm"]
    youden = binned["at"]["youden"]
    assert youden["chosen_on"] == "val" and youden["threshold"] == report["youden"]["threshold"]
    bins = youden["columns"]["einstein_radius"]["bins"]
    assert sum(b["n"] for b in bins) == report["class_counts"]["lenses"] and all("tpr" in b for b in bins)
    assert binned["at"]["fpr_1e-2"]["threshold"] is None and "negatives" in binned["at"]["fpr_1e-2"]["reason"]
    assert (run / "completeness.png").read_bytes()[:4] == b"\x89PNG" and binned["plot"] == str(run / "completeness.png")
    assert "TPR at FPR 1e-2" in out and "TPR0" in out and "TPR10" in out
    assert f"completeness plot: {run / 'completeness.png'}" in out

    # A metadata.csv that is not the simulator's is skipped (and said so), not an error.
    (data / "metadata.csv").write_text("object,ra,dec\nA,1.0,2.0\n")
    code, out, err = run_cli(["evaluate", run / "classifier.keras", data, "--run-dir", run,
                              "--report", tmp_path / "other.json", "--plot", tmp_path / "other.png"], capsys)
    assert code == 0, err
    other = json.loads((tmp_path / "other.json").read_text())
    assert "no 'filename' column" in other["completeness"]["skipped"] and "tpr0" in other
    assert not (tmp_path / "completeness.png").exists()

"""kerasssl.evaluate: the report, the ROC plot, the honesty guard (the metrics: test_metrics.py)."""

import json

import numpy as np
import pytest
from conftest import binary_probs, mann_whitney_auc

from kerasssl import evaluate as ev
from kerasssl.errors import KerassslError


def test_multiclass_report_is_macro_one_vs_rest():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 90)
    logits = rng.normal(0, 1, (90, 3)) + 1.2 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref = np.mean([mann_whitney_auc((labels == k).astype(int), probs[:, k]) for k in range(3)])
    report = ev.metrics_report(labels, probs, ["axion", "cdm", "no_sub"], bootstrap=50)
    assert report["roc_auc"] == pytest.approx(ref)
    assert report["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))
    assert sum(map(sum, report["confusion_matrix"])) == 90
    assert report["class_counts"] == {n: int(np.sum(labels == k)) for k, n in enumerate(["axion", "cdm", "no_sub"])}


def test_binary_report_thresholds_and_confusion(scored):
    labels, scores = scored
    val_labels = np.array([0, 0, 1, 1])
    val_scores = np.array([0.1, 0.2, 0.3, 0.9])  # Youden on val: 0.3
    report = ev.metrics_report(labels, binary_probs(scores), ["nonlens", "lens"],
                               val_labels=val_labels, val_probs=binary_probs(val_scores),
                               bootstrap=50)
    assert report["youden"]["chosen_on"] == "val"
    assert report["youden"]["threshold"] == pytest.approx(0.3)
    assert report["youden"]["accuracy"] == pytest.approx(np.mean((scores >= 0.3) == labels))
    assert report["accuracy"] == pytest.approx(np.mean((scores >= 0.5) == labels))
    tn = int(np.sum((scores < 0.5) & (labels == 0)))
    tp = int(np.sum((scores >= 0.5) & (labels == 1)))
    cm = report["confusion_matrix"]
    assert cm[0][0] == tn and cm[1][1] == tp and cm[0][0] + cm[0][1] == 40
    assert report["n_test"] == 100 and report["class_counts"] == {"nonlens": 40, "lens": 60}
    json.dumps(report)  # JSON-ready
    no_val = ev.metrics_report(labels, binary_probs(scores), ["nonlens", "lens"], bootstrap=20)
    assert no_val["youden"]["chosen_on"] != "val"


def test_report_rejects_class_count_mismatch(scored):
    labels, scores = scored
    with pytest.raises(KerassslError):
        ev.metrics_report(labels, binary_probs(scores), ["a", "b", "c"], bootstrap=10)


def test_plot_roc_writes_png_with_baseline(tmp_path, scored):
    labels, scores = scored
    probs = binary_probs(scores)
    baseline = {"labels": labels, "probs": binary_probs(scores[::-1].copy()), "auc": 0.5,
                "ci": [0.4, 0.6], "name": "supervised"}
    out = ev.plot_roc(tmp_path / "roc.png", labels, probs, ["nonlens", "lens"], auc=0.8,
                      ci=[0.7, 0.9], baseline=baseline)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert list(tmp_path.iterdir()) == [out]  # no temporary left behind


def test_training_overlap_reads_the_run_dir(tmp_path):
    split = {"train": ["a", "b", "c"], "val": ["v"], "test": ["t1", "t2"],
             "labeled": ["a"], "unlabeled": ["b", "c"]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    assert ev.training_overlap(["t1", "t2"], tmp_path) == {}
    assert ev.training_overlap(["a", "t1"], tmp_path) == {"finetune": ["a"]}
    # A pretrained encoder in the run means the train split was seen too.
    (tmp_path / "encoder.keras").write_bytes(b"")
    assert ev.training_overlap(["b", "t1"], tmp_path) == {"pretrain": ["b"]}
    (tmp_path / "finetune.json").write_text(json.dumps({"models": {"c.keras": {"labeled_files": ["t2"]}}}))
    assert ev.training_overlap(["t2"], tmp_path) == {"finetune": ["t2"]}


# -- the guard across runs: the model's own fingerprints ---------------------------


def test_evaluate_refuses_another_runs_training_images_copied_under_other_names(tmp_path_factory, tmp_path,
                                                                              capsys):
    """Run A trained on folder X; run B is a fresh split of copies of X's files under other names."""
    import shutil

    from kerasssl.cli import main
    from kerasssl.config import RunConfig
    from kerasssl.data.load import load_images
    from kerasssl.data.split import load_or_create_split
    from test_classifier import fit_run

    data, run_a = fit_run(tmp_path_factory)
    copies = tmp_path / "copies"
    for f in sorted(data.rglob("*.npy")):
        (copies / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, copies / f.parent.name / f"copy_{f.name}")
    run_b = tmp_path / "run_b"
    split_b = load_or_create_split(run_b, load_images(copies), RunConfig.from_dict({"data": {"seed": 7}}).data)
    a = json.loads((run_a / "split.json").read_text())
    sources = [name.replace("copy_", "") for name in split_b.test]
    want = {"pretrain": sum(s in a["train"] for s in sources), "finetune": sum(s in a["labeled"] for s in sources)}
    assert want["pretrain"] > 0 and want["finetune"] > 0  # the case this test is about
    args = ["evaluate", str(run_a / "classifier.keras"), str(copies), "--run-dir", str(run_b), "--bootstrap", "20",
            "--report", str(tmp_path / "report.json"), "--plot", str(tmp_path / "roc.png")]

    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "Traceback" not in err, err
    assert f"{want['pretrain']} used for pretrain" in err and f"{want['finetune']} used for finetune" in err, err
    assert f"contains {want['pretrain']} of {len(split_b.test)} image(s)" in err and "--allow-overlap" in err
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "roc.png").exists()

    with pytest.raises(SystemExit) as e:
        main(args + ["--allow-overlap"])
    assert e.value.code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["overlap"]["allowed"] is True
    assert {k: report["overlap"][k]["n_files"] for k in want} == want
    carried = report["overlap_guard"]["training_fingerprints"][str(run_a / "classifier.keras")]
    assert carried == {"pretrain": len(a["train"]), "finetune": len(a["labeled"])}
    # The accepted command is in run B's record, with the files it wrote; the refused one is not.
    entries = [json.loads(line) for line in (run_b / "runs.jsonl").read_text().splitlines()]
    assert [e["command"] for e in entries] == ["evaluate"] and entries[0]["argv"][-1] == "--allow-overlap"
    assert entries[0]["writes"] == [str(tmp_path / "report.json"), str(tmp_path / "roc.png")]
    assert entries[0]["reads"]["model"] == str(run_a / "classifier.keras")


def test_too_few_bootstrap_resamples_are_refused_by_the_config(tmp_path_factory, tmp_path, capsys):
    from kerasssl.cli import main
    from test_classifier import fit_run

    data, run = fit_run(tmp_path_factory)
    before = (run / "runs.jsonl").read_bytes()
    with pytest.raises(KerassslError, match=r"evaluate.bootstrap \(--bootstrap\) must be an integer of at least 10"):
        ev.evaluate_run(run / "classifier.keras", data, run, bootstrap=5, report_path=tmp_path / "r.json")
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(run / "classifier.keras"), str(data), "--run-dir", str(run), "--bootstrap", "5",
              "--report", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("kerasssl: error: evaluate.bootstrap") and "\n" not in err, err
    assert not (tmp_path / "r.json").exists() and (run / "runs.jsonl").read_bytes() == before


def test_a_model_without_fingerprints_is_guarded_by_file_names_only_and_says_so(tmp_path, caplog):
    import keras

    path = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]).save(path)
    images = np.zeros((3, 2, 2, 1), np.float32)
    with caplog.at_level("WARNING"):
        found, carried = ev.fingerprint_overlap([path], images, ["a", "b", "c"])
    assert found == {} and carried == {str(path): None}
    assert "carries no training fingerprints" in caplog.text


def test_binary_report_has_lens_finder_metrics_and_completeness_at_val_thresholds(scored):
    from kerasssl import metrics as m
    from kerasssl.completeness import operating_thresholds

    labels, scores = scored
    rng = np.random.default_rng(7)
    val_labels = np.r_[np.ones(30, int), np.zeros(30, int)]
    val_scores = np.clip(0.3 * val_labels + rng.uniform(0, 0.7, 60), 0, 1)
    meta = {"einstein_radius": np.where(labels == 1, np.linspace(0.5, 2.0, 100), np.nan)}
    report = ev.metrics_report(labels, binary_probs(scores), ["nonlens", "lens"], val_labels=val_labels,
                               val_probs=binary_probs(val_scores), bootstrap=50, prevalence=0.01,
                               metadata=meta, metadata_source="meta.csv")
    lens = m.lens_finder_report(labels, scores, prevalence=0.01, bootstrap=50, seed=0)
    for key in ("tpr_at_fpr", "tpr0", "tpr10", "precision_at_prevalence"):
        assert report[key] == lens[key], key
    assert report["lens_finder"]["n_negatives"] == 40 and report["lens_finder"]["ci_method"] == lens["ci_method"]
    binned = report["completeness"]
    assert binned["at"]["youden"]["threshold"] == operating_thresholds(val_labels, val_scores)["youden"]["threshold"]
    assert binned["at"]["youden"]["threshold"] == report["youden"]["threshold"]  # the one the report states
    assert binned["metadata"] == "meta.csv" and binned["columns"] == ["einstein_radius"]
    assert sum(b["n"] for b in binned["at"]["youden"]["columns"]["einstein_radius"]["bins"]) == 60
    json.dumps(report, allow_nan=False)
    # No val split: chosen on the evaluated split, and the report says so.
    no_val = ev.metrics_report(labels, binary_probs(scores), ["nonlens", "lens"], bootstrap=20, metadata=meta)
    assert no_val["completeness"]["at"]["youden"]["chosen_on"].startswith("evaluated split (optimistic")
    assert "completeness" not in ev.metrics_report(labels, binary_probs(scores), ["nonlens", "lens"], bootstrap=20)


def test_multiclass_report_says_lens_finder_metrics_need_a_binary_set():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 60)
    report = ev.metrics_report(labels, rng.dirichlet(np.ones(3), 60), ["a", "b", "c"], bootstrap=20,
                               metadata={"einstein_radius": np.ones(60)})
    assert report["lens_finder"]["estimable"] is False and "binary" in report["lens_finder"]["reason"]
    assert "tpr0" not in report and "completeness" not in report

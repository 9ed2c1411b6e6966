"""Honest evaluation of a classifier: ROC-AUC with a bootstrap CI, PR-AUC, a ROC plot.

Binary sets: the positive class is label 1 (the lens class, see
docs/ARCHITECTURE.md) and the score is column 1 of the softmax output.
Multi-class sets (e.g. no_sub / cdm / axion): macro one-vs-rest ROC-AUC and
macro average precision; accuracy is the arg-max accuracy.

The Youden threshold (max TPR - FPR) is chosen on the validation split when
it is given, and applied to the test split; otherwise it is chosen on the test
split itself, which is optimistic, and the report says which it was.

Binary sets also get the numbers lens finders read (:mod:`kerasssl.metrics`):
TPR at FPR 1e-2 and 1e-3, TPR0, TPR10 (bootstrap CIs, or "not estimable" with
the reason) and the precision of the top of a survey at a stated prevalence
(``evaluate.prevalence``, ``--prevalence``). When the data folder holds the
simulator's ``metadata.csv``, completeness per bin of Einstein radius, radius /
PSF and arc S/N at the Youden and FPR 1e-2 thresholds (both chosen on val;
:mod:`kerasssl.completeness`) goes into the report and ``completeness.png``
beside the ROC plot.

Honesty guard: an image that trained the model is refused unless
``allow_overlap`` is set, and then the report says so. Two sources, joined:

- the model's own record (:mod:`kerasssl.fingerprints`): the content hashes of
  every image that pretrained its encoder or fine-tuned it, stored inside the
  ``.keras`` file, so the check holds whatever run dir or data folder is given,
  and a copied or renamed file is still caught (:func:`fingerprint_overlap`);
- the run directory's file names (``split.json``; ``finetune.json``;
  :func:`training_overlap`).

Example:
    >>> report = evaluate_classifier(model, images, labels, ["nonlens", "lens"],
    ...                              plot_path="roc.png")
    >>> report["roc_auc"], report["roc_auc_ci"]
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from kerasssl import metrics
from kerasssl.errors import DataError, KerassslError
from kerasssl.models import check_keras_archive
from kerasssl.rundir import COMPLETENESS_PLOT, RunDir, replacing, write_json_atomic

log = logging.getLogger(__name__)


# -- predictions -------------------------------------------------------------
def predict_probabilities(model, images, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, K) from a classifier taking raw pixels.

    Args:
        model: a Keras classifier (raw images in, softmax out).
        images: float32 array (N, H, W, C) of raw pixels.
        batch_size: prediction batch size.
    """
    from kerasssl.distribute import predict_rows  # any split size, also under JAX DataParallel (fit)

    probs = np.asarray(predict_rows(model, np.asarray(images, np.float32), batch_size), np.float64)
    if probs.ndim != 2:
        raise KerassslError(f"classifier output has shape {probs.shape}; expected (N, classes)")
    return probs


# -- the report ----------------------------------------------------------------
def metrics_report(labels, probs, class_names: Sequence[str], *, val_labels=None,
                   val_probs=None, bootstrap: int = 1000, seed: int = 0,
                   prevalence: float = metrics.DEFAULT_PREVALENCE, metadata=None,
                   metadata_source: Optional[str] = None) -> dict:
    """All metrics for one split as a JSON-ready dict.

    Args:
        labels: true labels (N,) of the evaluated split.
        probs: predicted probabilities (N, K).
        class_names: names by label index.
        val_labels / val_probs: the validation split, used to choose the
            Youden threshold and completeness's thresholds (binary only).
            Without them they are chosen on the evaluated split and the
            report says so.
        bootstrap: resamples for the ROC-AUC confidence interval (and the
            lens-finder metrics' CIs).
        seed: bootstrap seed.
        prevalence: lenses per survey image, for ``precision_at_prevalence``.
        metadata: ``{column: values (N,)}`` of the evaluated images
            (``completeness.completeness_columns(read_metadata(...))``) for
            the completeness bins (binary only); None: no completeness.
        metadata_source: where ``metadata`` came from (recorded).

    Returns:
        For binary sets, besides the AUCs: ``tpr_at_fpr`` (``"1e-2"``,
        ``"1e-3"``), ``tpr0``, ``tpr10``, ``precision_at_prevalence`` (see
        :func:`kerasssl.metrics.lens_finder_report`), ``lens_finder`` (counts,
        CI method) and, with metadata, ``completeness``.
    """
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    n_classes = len(class_names)
    if probs.shape != (len(labels), n_classes):
        raise KerassslError(
            f"classifier gives {probs.shape[1]} classes, data has {n_classes} ({list(class_names)})"
        )
    counts = np.bincount(labels, minlength=n_classes)
    if np.any(counts == 0):
        missing = [class_names[k] for k in np.flatnonzero(counts == 0)]
        raise KerassslError(f"the evaluated split has no image of class(es) {missing}: ROC-AUC undefined")
    report = {
        "n_test": int(len(labels)),
        "class_names": list(class_names),
        "class_counts": {name: int(c) for name, c in zip(class_names, counts)},
        "roc_auc": metrics.roc_auc(labels, probs),
        "roc_auc_ci": metrics.bootstrap_auc_ci(labels, probs, bootstrap, seed),
        "roc_auc_ci_method": f"percentile bootstrap, {bootstrap} resamples, seed {seed}, 95%",
        "pr_auc": metrics.pr_auc(labels, probs),
    }
    if n_classes == 2:
        scores = probs[:, 1]
        at_half = (scores >= 0.5).astype(np.int64)
        if val_labels is not None and len(np.unique(val_labels)) == 2:
            threshold = metrics.youden_threshold(val_labels, np.asarray(val_probs)[:, 1])
            source = "val"
        else:
            threshold = metrics.youden_threshold(labels, scores)
            source = "evaluated split (optimistic: no validation split given)"
        at_youden = (scores >= threshold).astype(np.int64)
        lens_finder = metrics.lens_finder_report(labels, scores, prevalence=prevalence,
                                                 bootstrap=bootstrap, seed=seed)
        report.update({key: lens_finder.pop(key) for key in
                       ("tpr_at_fpr", "tpr0", "tpr10", "precision_at_prevalence")})
        report["lens_finder"] = lens_finder
        if metadata is not None:
            from kerasssl import completeness

            on_val = source == "val"
            thresholds = completeness.operating_thresholds(
                val_labels if on_val else labels, np.asarray(val_probs)[:, 1] if on_val else scores,
                chosen_on="val" if on_val else source)
            report["completeness"] = completeness.completeness_report(labels, scores, metadata, thresholds,
                                                                      source=metadata_source)
        report.update(
            positive_class=class_names[1],
            accuracy=float(np.mean(at_half == labels)),
            accuracy_threshold=0.5,
            confusion_matrix=metrics.confusion(labels, at_half, 2),
            youden={
                "threshold": threshold,
                "chosen_on": source,
                "accuracy": float(np.mean(at_youden == labels)),
                "confusion_matrix": metrics.confusion(labels, at_youden, 2),
            },
        )
    else:
        predictions = np.argmax(probs, axis=1)
        report["lens_finder"] = {"estimable": False, "reason": "lens-finder metrics and completeness need "
                                 "a binary set (lens vs non-lens)"}
        report.update(
            roc_auc_average="macro one-vs-rest",
            roc_auc_per_class=metrics.per_class_auc(labels, probs, class_names),
            accuracy=float(np.mean(predictions == labels)),
            accuracy_threshold="argmax",
            confusion_matrix=metrics.confusion(labels, predictions, n_classes),
        )
    report["confusion_matrix_axes"] = "rows: true class, columns: predicted class"
    return report


# -- plot ----------------------------------------------------------------------
def plot_roc(path, labels, probs, class_names: Sequence[str], *, auc: float, ci,
             baseline: Optional[dict] = None, title: Optional[str] = None) -> Path:
    """Write a ROC curve PNG: labelled axes, AUC with CI in the legend, chance line.

    Args:
        path: output PNG path (written atomically).
        labels / probs: evaluated labels (N,) and probabilities (N, K).
        class_names: names by label index; more than two draws one curve per class.
        auc / ci: the ROC-AUC and its ``[low, high]`` interval for the legend.
        baseline: optional ``{"labels", "probs", "auc", "ci", "name"}`` of a
            baseline model on the same split, drawn dashed.
        title: plot title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels)
    probs = np.asarray(probs)
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=120)
    if probs.shape[1] == 2:
        fpr, tpr, _ = roc_curve(labels == 1, probs[:, 1])
        ax.plot(fpr, tpr, lw=2, color="C0",
                label=f"model: AUC {auc:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f})")
    else:
        ax.plot([], [], " ", label=f"macro OvR AUC {auc:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f})")
        for k, name in enumerate(class_names):
            if 0 < np.sum(labels == k) < len(labels):
                fpr, tpr, _ = roc_curve(labels == k, probs[:, k])
                ax.plot(fpr, tpr, lw=1.5, label=f"{name} vs rest")
    if baseline is not None:
        b_probs = np.asarray(baseline["probs"])
        b_labels = np.asarray(baseline["labels"])
        name = baseline.get("name", "baseline")
        if b_probs.shape[1] == 2:
            fpr, tpr, _ = roc_curve(b_labels == 1, b_probs[:, 1])
            b_ci = baseline["ci"]
            ax.plot(fpr, tpr, lw=1.5, ls="--", color="C3",
                    label=f"{name}: AUC {baseline['auc']:.3f} ({b_ci[0]:.3f}-{b_ci[1]:.3f})")
        else:
            ax.plot([], [], " ", label=f"{name}: macro AUC {baseline['auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="chance (AUC 0.5)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    positive = class_names[1] if len(class_names) == 2 else "class"
    ax.set_xlabel("False positive rate")
    ax.set_ylabel(f"True positive rate ({positive})" if len(class_names) == 2 else "True positive rate")
    ax.set_title(title or "ROC curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path


# -- one model on arrays -------------------------------------------------------
def evaluate_classifier(model, images, labels, class_names, *, val_images=None,
                        val_labels=None, bootstrap: int = 1000, seed: int = 0,
                        baseline=None, plot_path=None, batch_size: int = 256,
                        title: Optional[str] = None, prevalence: float = metrics.DEFAULT_PREVALENCE,
                        metadata=None, metadata_source: Optional[str] = None,
                        completeness_plot_path=None) -> dict:
    """Evaluate a classifier on arrays; optionally write the ROC and completeness plots.

    Args:
        model: Keras classifier, raw pixels in, probabilities out.
        images / labels: the evaluated split (raw float32 (N, H, W, C), int (N,)).
        class_names: names by label index.
        val_images / val_labels: validation split for the Youden threshold.
        bootstrap / seed: bootstrap resamples and seed of the AUC CI.
        baseline: optional baseline Keras classifier, evaluated on the same
            images and drawn in the plot; its metrics go under ``"baseline"``.
        plot_path: where to write the ROC PNG (skipped when None).
        batch_size: prediction batch size.
        title: plot title.
        prevalence / metadata / metadata_source: see :func:`metrics_report`.
        completeness_plot_path: where to write the completeness PNG when the
            report has completeness bins (skipped when None).

    Returns:
        The report dict (see :func:`metrics_report`).

    Example:
        >>> rep = evaluate_classifier(model, x_test, y_test, ["nonlens", "lens"],
        ...                           val_images=x_val, val_labels=y_val)
    """
    probs = predict_probabilities(model, images, batch_size)
    val_probs = None
    if val_images is not None and len(val_images):
        val_probs = predict_probabilities(model, val_images, batch_size)
    else:
        val_labels = None
    report = metrics_report(labels, probs, class_names, val_labels=val_labels,
                            val_probs=val_probs, bootstrap=bootstrap, seed=seed, prevalence=prevalence,
                            metadata=metadata, metadata_source=metadata_source)
    baseline_curve = None
    if baseline is not None:
        b_probs = predict_probabilities(baseline, images, batch_size)
        b_auc = metrics.roc_auc(labels, b_probs)
        b_ci = metrics.bootstrap_auc_ci(labels, b_probs, bootstrap, seed)
        report["baseline"] = {"roc_auc": b_auc, "roc_auc_ci": b_ci,
                              "pr_auc": metrics.pr_auc(labels, b_probs)}
        if len(class_names) == 2:
            b_lens = metrics.lens_finder_report(labels, b_probs[:, 1], prevalence=prevalence,
                                                bootstrap=bootstrap, seed=seed)
            report["baseline"].update({key: b_lens[key] for key in
                                       ("tpr_at_fpr", "tpr0", "tpr10", "precision_at_prevalence")})
        baseline_curve = {"labels": labels, "probs": b_probs, "auc": b_auc, "ci": b_ci,
                          "name": "baseline"}
    if plot_path is not None:
        plot_roc(plot_path, labels, probs, class_names, auc=report["roc_auc"],
                 ci=report["roc_auc_ci"], baseline=baseline_curve, title=title)
    binned = report.get("completeness") or {}
    if completeness_plot_path is not None and binned.get("columns"):
        from kerasssl.completeness import missing_curves, plot_curves
        from kerasssl.plots import plot_completeness

        curves = plot_curves(binned)
        if curves:
            plot_completeness(completeness_plot_path, curves, columns=binned["columns"],
                              title=None if title is None else title.replace("ROC", "Completeness", 1),
                              note="; ".join(missing_curves(binned)) or None)
            binned["plot"] = str(completeness_plot_path)
    return report


# -- honesty guard -------------------------------------------------------------
def training_files(run_dir) -> dict:
    """Files that trained the models of a run, by stage, from the run directory.

    - ``finetune``: the labelled files of every classifier recorded in
      ``RUN/finetune.json`` and the ``labeled`` list of ``RUN/split.json``.
    - ``pretrain``: the files pretraining saw: the list it recorded in
      ``RUN/history.json`` (key ``files``) if any, else the whole train split,
      when the run holds a pretrained encoder.
    """
    run = RunDir(run_dir)
    split = run.read_json(run.split, "split file", missing_ok=True) or {}
    used = {"finetune": set(split.get("labeled") or [])}
    for record in run.finetune_records().values():
        used["finetune"] |= set(record.get("labeled_files") or [])
    pretrained = run.encoder.exists() or run.history.exists()
    if pretrained:
        history = run.read_json(run.history, "pretraining history", missing_ok=True) or {}
        files = history.get("files") if isinstance(history, dict) else None
        if isinstance(files, list) and files:
            used["pretrain"] = set(files)
        else:
            used["pretrain"] = set(split.get("train") or []) | set(split.get("labeled") or []) \
                | set(split.get("unlabeled") or [])
    return used


def training_overlap(eval_files: Sequence[str], run_dir) -> dict:
    """``{stage: sorted overlapping files}`` for stages that share files with eval_files."""
    eval_set = set(eval_files)
    return {stage: sorted(eval_set & files)
            for stage, files in training_files(run_dir).items() if eval_set & files}


def fingerprint_overlap(model_paths, images, files):
    """Images that trained the given ``.keras`` models, by the fingerprints stored inside them.

    Args:
        model_paths: the model files.
        images: the images to be evaluated (N, H, W, C), as the model takes them.
        files: their names, in the same order.

    Returns:
        ``({stage: sorted files}, {model path: {stage: count} or None})``; None
        for a model that carries no fingerprints (logged: then only the run
        dir's file names guard it).
    """
    from kerasssl.fingerprints import TrainingFingerprints, fingerprints

    found, carried = {}, {}
    candidates = None
    for path in model_paths:
        stored = TrainingFingerprints.read(path)
        carried[str(path)] = None if stored is None else stored.counts()
        if stored is None:
            log.warning("%s carries no training fingerprints (saved before kerasssl recorded them, or "
                        "re-saved by Keras): only the run directory's file names guard against overlap", path)
            continue
        if candidates is None:
            candidates = fingerprints(images)
        for stage, hits in stored.overlap(candidates).items():
            found[stage] = sorted(set(found.get(stage, [])) | {files[i] for i in hits})
    return found, carried


# -- the `kerasssl evaluate` job -----------------------------------------------
def evaluate_run(model_path, data_path, run_dir, *, split: Optional[str] = None, report_path=None,
                 plot_path=None, cfg=None, allow_overlap: Optional[bool] = None,
                 baseline_path=None, bootstrap: Optional[int] = None, image_set=None,
                 prevalence: Optional[float] = None, completeness_plot_path=None) -> dict:
    """Evaluate a saved classifier on one split of DATA recorded in RUN/split.json.

    Args:
        model_path: a ``.keras`` classifier (raw pixels in, probabilities out).
        data_path: the data folder the run was split from.
        run_dir: run directory holding ``split.json`` (and ``config.yaml``).
        split: one of :data:`kerasssl.config.EVALUATE_SPLITS` (test, val, train,
            labeled, unlabeled, all); default ``cfg.evaluate.split``.
        report_path: where to write the JSON report (atomically).
        plot_path: where to write the ROC PNG.
        cfg: a RunConfig; default ``RUN/config.yaml`` or the defaults.
        allow_overlap: evaluate even on files used in training (reported);
            default ``cfg.evaluate.allow_overlap``.
        baseline_path: optional second classifier drawn as the baseline.
        bootstrap: resamples for the CI (at least 10); default ``cfg.evaluate.bootstrap``.
        image_set: the data already loaded from ``data_path`` (saves re-reading it).
        prevalence: lenses per survey image for ``precision_at_prevalence``;
            default ``cfg.evaluate.prevalence``.
        completeness_plot_path: the completeness PNG, written when DATA holds
            the simulator's ``metadata.csv``; default ``completeness.png``
            beside ``plot_path``.

    Returns:
        The report dict, also written to ``report_path``.
    """
    from kerasssl.config import RunConfig

    run = RunDir(run_dir)
    run_dir = run.path
    if cfg is None:
        cfg = RunConfig.from_run(run) or RunConfig()
    cfg.validate()
    given = {"split": split, "bootstrap": bootstrap, "allow_overlap": allow_overlap, "prevalence": prevalence}
    settings = dataclasses.replace(cfg.evaluate, **{k: v for k, v in given.items() if v is not None})  # checked
    split, bootstrap, allow_overlap = settings.split, settings.bootstrap, settings.allow_overlap
    prevalence = settings.prevalence
    split_path = run.split
    if not split_path.exists():
        raise KerassslError(f"{split_path}: no split recorded; run `kerasssl finetune` or `fit` first")
    if image_set is None:
        from kerasssl.data.load import check_data_path

        check_data_path(data_path)  # the same answer for DATA as every other command, before the model
    model_path = check_keras_archive(model_path)
    if baseline_path:
        baseline_path = check_keras_archive(baseline_path)

    from kerasssl.data.load import load_images
    from kerasssl.data.split import Split

    if image_set is None:
        image_set = load_images(data_path, **cfg.data.read_options())
    recorded = Split.load(split_path)
    if split == "all":
        idx = np.arange(len(image_set.files))
    else:
        idx = np.asarray(recorded.indices(image_set, split), np.int64)
    if len(idx) == 0:
        raise KerassslError(f"{split_path}: split {split!r} is empty")
    eval_files = [image_set.files[i] for i in idx]

    overlap = training_overlap(eval_files, run_dir)
    models = [model_path] + ([baseline_path] if baseline_path else [])
    by_content, carried = fingerprint_overlap(models, image_set.images[idx], eval_files)
    for stage, files in by_content.items():
        overlap[stage] = sorted(set(overlap.get(stage, [])) | set(files))
    if overlap and not allow_overlap:
        n_images = len(set().union(*overlap.values()))
        stages = ", ".join(f"{len(v)} used for {k}" for k, v in overlap.items())
        raise KerassslError(
            f"{split_path}: split {split!r} contains {n_images} of {len(idx)} image(s) that trained "
            f"{'the models' if baseline_path else model_path.name} ({stages}; matched by content and file name); "
            "pass --allow-overlap to evaluate anyway (the report will say so)"
        )
    val_images = val_labels = None
    if split != "val" and getattr(recorded, "val", None):
        v_idx = np.asarray(recorded.indices(image_set, "val"), np.int64)
        val_images, val_labels = image_set.images[v_idx], image_set.labels[v_idx]

    model = _load_classifier(model_path)
    baseline = _load_classifier(baseline_path) if baseline_path else None
    for path, m in ((model_path, model), (baseline_path, baseline)):
        expected = tuple(m.input_shape[1:]) if m is not None else None
        if expected is not None and expected != tuple(image_set.image_shape):
            raise KerassslError(f"{path}: the model takes images {expected}, the data gives "
                                f"{tuple(image_set.image_shape)} (data.image_size of the run?)")
    metadata, metadata_source, skipped = _completeness_metadata(data_path, eval_files, len(image_set.class_names))
    if completeness_plot_path is None and plot_path is not None:
        completeness_plot_path = Path(plot_path).with_name(COMPLETENESS_PLOT)  # beside the ROC plot
    # Mode and labels of this classifier, as recorded when it was fine-tuned.
    finetune_record = run.finetune_records().get(model_path.name, {})
    report = evaluate_classifier(
        model, image_set.images[idx], image_set.labels[idx], image_set.class_names,
        val_images=val_images, val_labels=val_labels, bootstrap=bootstrap,
        seed=cfg.seed, baseline=baseline, plot_path=plot_path,
        title=_plot_title(finetune_record, split), prevalence=prevalence,
        metadata=metadata, metadata_source=metadata_source, completeness_plot_path=completeness_plot_path,
    )
    if skipped is not None:
        report["completeness"] = skipped
    report.update(
        split=split,
        model=str(model_path),
        data=str(data_path),
        run_dir=str(run_dir),
        mode=finetune_record.get("mode"),
        labels_fraction=finetune_record.get("labels_fraction"),
        n_labeled=finetune_record.get("n_labeled"),
        class_weight=finetune_record.get("class_weight"),
        imbalance_handling=finetune_record.get("imbalance_handling"),
        overlap={"allowed": True, **{k: {"n_files": len(v), "files": v[:20]}
                                     for k, v in overlap.items()}} if overlap else None,
        overlap_guard={
            "training_fingerprints": carried,
            "file_names_from": str(run_dir),
            "note": "images that trained the model, by content hash (stored in the model file) "
                    "and by file name (recorded in the run dir)",
        },
    )
    if baseline_path:
        report["baseline"]["model"] = str(baseline_path)
    if report_path is not None:
        write_json_atomic(report_path, report)
    return report


def _completeness_metadata(data_path, files, n_classes):
    """``(metadata of files, its source, None)``, or ``(None, None, why skipped or None)``.

    metadata.csv is optional: a folder without one gets no completeness, and
    one that is not the simulator's (no ``filename`` column, other files) is
    skipped with a warning and the reason in the report, not refused: the
    classifier's evaluation does not depend on it.
    """
    from kerasssl.completeness import completeness_columns, metadata_path, read_metadata

    path = metadata_path(data_path)
    if path is None or n_classes != 2:
        return None, None, None
    try:
        return completeness_columns(read_metadata(path, files)), str(path), None
    except DataError as e:
        log.warning("no completeness: %s", e)
        return None, None, {"metadata": str(path), "skipped": str(e)}


def _plot_title(record, split):
    mode = record.get("mode")
    frac = record.get("labels_fraction")
    if mode is None:
        return f"ROC on the {split} split"
    return f"ROC on the {split} split ({mode}, {100 * frac:g}% of the training labels)"


def _load_classifier(path):
    from kerasssl.classifier import check_classifier
    from kerasssl.models import load_model

    model = load_model(path)
    check_classifier(model, path)
    return model

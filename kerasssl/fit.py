"""The whole job in one call: split -> pretrain -> fine-tune -> evaluate -> export.

``fit(cfg, data_path, run_dir)`` is what ``kerasssl fit`` runs. Every stage
writes into the run directory (:class:`kerasssl.rundir.RunDir`), so each can be
inspected or re-run on its own with the step-by-step commands:

- ``RUN/config.yaml`` (the full config, replayable with ``--config``),
  ``RUN/split.json`` (file names per split);
- ``RUN/encoder.keras`` + ``RUN/preprocess.json`` (pretraining; skipped for
  ``finetune.mode: supervised``, which trains from random weights), and with
  unlabeled pools (``pretrain.unlabeled``) ``RUN/pools.json``: pretraining
  streams the pools with the train split, the leak guard leaves out pool images
  equal to a val/test image, and ``report.json`` says how many of each were used;
- ``RUN/classifier.keras`` + ``RUN/finetune.json`` (fine-tuning);
- ``RUN/report.json`` + ``RUN/roc.png`` (evaluation on ``evaluate.split``;
  ``RUN/completeness.png`` too when DATA holds the simulator's ``metadata.csv``);
- ``RUN/saved_models/<name>/<version>/`` when ``export.enabled``.

Example:
    >>> from kerasssl.config import RunConfig
    >>> summary = fit(RunConfig.load("examples/quick.yaml"), "/tmp/f/3b", "/tmp/f/run")
    >>> print("\\n".join(summary_lines(summary)))
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Optional

from kerasssl.errors import KerassslError
from kerasssl.rundir import RunDir

log = logging.getLogger(__name__)


def fit(cfg, data_path, run_dir, *, progress: Optional[Callable[[str], None]] = None,
        verbose: int = 0, on_accepted: Optional[Callable[[Path], None]] = None) -> dict:
    """Run split, pretraining, fine-tuning, evaluation and export for one run.

    Every check comes first (:func:`check_fit`): config values, DATA (every
    pixel read), the run directory and what each stage will need. A refused
    job writes nothing: no run directory, or another run's left as it was.

    Args:
        cfg: a ``kerasssl.config.RunConfig``.
        data_path: the data folder or TFRecord shards (any form ``check_data_path`` accepts).
        run_dir: the run directory (created; existing files are replaced stage by stage).
        progress: called with a one-line message as each stage starts
            (e.g. ``click.echo``); None logs them instead.
        verbose: Keras verbosity for the training stages.
        on_accepted: called with the run directory once the job is accepted,
            before the first write (the CLI records its command line there).

    Returns:
        ``{"report": dict, "paths": {...}, "seconds": {...}}``.
    """
    from kerasssl.data.split import load_or_create_split
    from kerasssl.evaluate import evaluate_run
    from kerasssl.finetune import finetune

    say = progress or log.info
    run = RunDir(run_dir)
    run_dir = run.path
    mode = cfg.finetune.mode
    seconds = {}

    t = time.perf_counter()
    say(f"[1/5] split: reading {data_path}")
    state, image_set, split, plan = check_fit(cfg, data_path, run_dir, progress=say)
    # Accepted: from here on the job writes.
    if on_accepted is not None:
        on_accepted(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run.save_config(cfg)
    split = load_or_create_split(run, image_set, cfg.data, labels_fraction=cfg.finetune.labels_fraction)
    say(f"      {len(image_set)} images {image_set.image_shape}, classes {image_set.class_counts()}; "
        f"train {len(split.train)} / val {len(split.val)} / test {len(split.test)}")
    seconds["split"] = time.perf_counter() - t

    t = time.perf_counter()
    if mode == "supervised":
        say("[2/5] pretrain: skipped (supervised baseline from random weights)"
            + ("; the unlabeled pools are not used" if cfg.pretrain.unlabeled else ""))
    else:
        from kerasssl.pretrain import pretrain

        if state == "done":
            say(f"[2/5] pretrain: reusing {run.encoder} (same data and pretrain config)")
        else:
            say(f"[2/5] pretrain: {cfg.pretrain.method} on {cfg.pretrain.encoder}, "
                f"{cfg.pretrain.epochs} epochs" + (" (resuming)" if state == "resume" else "")
                + (f", on {plan.pools.n_unlabeled} unlabeled pool + {len(plan.train_idx)} train-split images"
                   if plan is not None and plan.pools is not None else ""))
            pretrain(cfg, data_path, run_dir, resume=state == "resume", verbose=2 if progress else 0,
                     image_set=image_set, plan=plan)
    seconds["pretrain"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"[3/5] finetune: {mode}, {100 * cfg.finetune.labels_fraction:g}% of the training labels, "
        f"{cfg.finetune.epochs} epochs")
    record = finetune(cfg, data_path, run_dir, image_set=image_set, verbose=verbose)
    seconds["finetune"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"[4/5] evaluate: {cfg.evaluate.split} split")
    report_path, plot_path = run.report, run.roc_plot
    report = evaluate_run(record["model"], data_path, run_dir, split=cfg.evaluate.split,
                          report_path=report_path, plot_path=plot_path, cfg=cfg, image_set=image_set)
    if mode != "supervised" and cfg.pretrain.unlabeled:
        report = _add_pool_usage(report, report_path, run_dir)
    seconds["evaluate"] = time.perf_counter() - t

    paths = {"run_dir": str(run_dir), "report": str(report_path), "plot": str(plot_path),
             "model": record["model"], "split": str(run.split), "config": str(run.config)}
    if (report.get("completeness") or {}).get("plot"):
        paths["completeness_plot"] = report["completeness"]["plot"]
    t = time.perf_counter()
    if cfg.export.enabled:
        say("[5/5] export: SavedModel (TF Serving layout)"
            + (f" + TFLite {cfg.export.tflite}" if cfg.export.tflite else ""))
        exported = _export(record["model"], run_dir, data_path, cfg.export)
        if exported is not None:
            paths["saved_model"] = str(exported)
    else:
        say("[5/5] export: disabled in the config")
    seconds["export"] = time.perf_counter() - t
    return {"report": report, "paths": paths, "seconds": seconds}


def _add_pool_usage(report, report_path, run_dir) -> dict:
    """Say in RUN/report.json what pretraining took from the pools (from RUN/pools.json)."""
    from kerasssl.poolplan import recorded_pools
    from kerasssl.rundir import RunDir, write_json_atomic

    record = recorded_pools(run_dir)
    if record is None:
        return report
    guard = record.get("leak_guard", {})
    report = dict(report)
    report["pretraining_data"] = {
        "unlabeled_images": record.get("unlabeled_images"),
        "train_split_images": record.get("train_split_images"),
        "pools": [p["path"] for p in record.get("pools", [])],
        "leak_guard_excluded": guard.get("excluded"),
        "leak_guard_reference_images": guard.get("reference_images"),
        "skipped_files": len(record.get("skipped_files", [])),
        "record": str(RunDir(run_dir).pools),
    }
    write_json_atomic(report_path, report)
    return report


def check_fit(cfg, data_path, run_dir, progress=None):
    """Every check :func:`fit` makes before it writes anything; writes nothing.

    0. the data-parallel engine is set up (before any TensorFlow op, so an API
    user gets what the CLI gets); 1. config values, section by section
    (``RunConfig.validate``), the method and encoder names, and, with
    ``export.enabled``, a backend that can export; 2. DATA (the one
    shared check, then every pixel is read); 3. the run directory: an existing
    pretraining is reused, resumed or refused (:func:`_pretraining_state`), and
    its split must fit the data; 4. what the stages need: the pretraining plan
    (checkpoint, batch size) and an encoder that takes the images.

    Args:
        progress: called with one-line messages about the pools' checks.

    Returns:
        ``(state, image_set, split, plan)``: the pretraining state ("new",
        "resume", "done", or None for a supervised job), the data, the split to
        record, and the ``PretrainingPlan`` for the pretraining stage (or None).

    Raises:
        KerassslError: the one-line reason the job is refused.

    Example:
        >>> state, image_set, split, plan = check_fit(cfg, "data/3b", "runs/a")
    """
    from kerasssl.data.load import check_data_path, load_images
    from kerasssl.data.split import check_split
    from kerasssl.pretrain import check_components, plan_pretraining, setup_distribution

    run_dir = Path(run_dir)
    ft = cfg.finetune
    # Before any TF op (reading TFRecord DATA is one): logical CPUs / collectives are configured only then.
    dist = setup_distribution(cfg)
    check_components(cfg)  # every section; the encoder name is used by supervised jobs too
    _check_export_backend(cfg.export, run_dir)
    check_data_path(data_path)  # a folder or TFRecord shards (a glob is no path that exists)
    # Decide about an existing pretraining before config.yaml is replaced.
    previous = _previous_config(run_dir)
    if ft.mode == "supervised":
        state = None
        if previous is not None and previous.data != cfg.data:
            raise KerassslError(f"{run_dir}: already holds a run with other data settings; "
                                "use a new --run-dir")
    else:
        state = _pretraining_state(run_dir, previous, cfg)
    image_set = load_images(data_path, **cfg.data.read_options())
    split = check_split(run_dir, image_set, cfg.data, labels_fraction=ft.labels_fraction)
    plan = None
    if state in ("new", "resume"):
        plan = plan_pretraining(cfg, data_path, run_dir, resume=state == "resume", image_set=image_set, dist=dist,
                                progress=progress)
    elif state == "done" and cfg.pretrain.unlabeled:
        from kerasssl.poolplan import check_pools_unchanged

        # Reusing the encoder: its pools must be the ones it was trained on.
        check_pools_unchanged(cfg.pretrain.unlabeled, run_dir, skip_bad=cfg.pretrain.skip_bad)
    if state != "done":
        _check_encoder_takes(cfg.pretrain.encoder, image_set.image_shape)
    return state, image_set, split, plan


def _check_export_backend(export_cfg, run_dir):
    """Refuse, before training, an export stage that the backend cannot run (SavedModel needs TF)."""
    if export_cfg.enabled:
        from kerasssl.export import check_backend

        check_backend(f"fit ends with that export: pass --no-export (export.enabled: false), then "
                      f"`kerasssl export {RunDir(run_dir).classifier} --name {export_cfg.name}` with "
                      f"KERAS_BACKEND=tensorflow; or fit with KERAS_BACKEND=tensorflow")


def _check_encoder_takes(name, image_shape):
    """Refuse an encoder that cannot take these images (e.g. EfficientNet below 32 px)
    now rather than after the split: building it is the check (a second or so)."""
    from kerasssl.encoders import build_encoder

    build_encoder(name, image_shape)


def _previous_config(run_dir):
    """The config a run directory already holds (None for a fresh one)."""
    from kerasssl.config import RunConfig

    return RunConfig.from_run(run_dir)


def _pretraining_state(run_dir, previous, cfg) -> str:
    """"done" (reuse RUN/encoder.keras), "resume" (interrupted, same config) or "new".

    Reuse needs the same data and pretraining settings (epochs aside for a
    resume); a run dir pretrained differently is refused rather than mixed.
    """
    run = RunDir(run_dir)
    has_encoder, has_checkpoints = run.encoder.exists(), run.has_checkpoints()
    if not (has_encoder or has_checkpoints):
        return "new"
    same = previous is not None and previous.data == cfg.data and previous.seed == cfg.seed
    # How often it checkpointed does not change what was trained.
    before = dataclasses.replace(previous.pretrain, checkpoint_every=cfg.pretrain.checkpoint_every) \
        if previous is not None else None
    if same and has_encoder and before == cfg.pretrain:
        return "done"
    if same and has_checkpoints and not has_encoder \
            and dataclasses.replace(before, epochs=cfg.pretrain.epochs) == cfg.pretrain:
        return "resume"
    raise KerassslError(
        f"{run_dir}: already holds a pretraining run with other data/pretrain settings; "
        "use a new --run-dir (or `kerasssl finetune` to reuse its encoder)"
    )


def _export(model_path, run_dir, data_path, export_cfg) -> Optional[Path]:
    """Export with ``kerasssl.export`` when that module is installed; otherwise say so."""
    try:
        from kerasssl.export import export_saved_model
    except ImportError as e:
        log.warning("export skipped: kerasssl.export is not available (%s)", e)
        return None
    base_dir = Path(export_cfg.base_dir) if export_cfg.base_dir else RunDir(run_dir).saved_models
    # The run's split tells export which images calibrate int8 and check parity.
    return Path(export_saved_model(str(model_path), base_dir, export_cfg.name, tflite=export_cfg.tflite,
                                   run_dir=run_dir, data=data_path))


def summary_lines(summary: dict) -> list:
    """The short end-of-job summary: AUC with CI, PR-AUC, accuracy, where the files are."""
    r = summary["report"]
    p = summary["paths"]
    low, high = r["roc_auc_ci"]
    kind = "ROC-AUC" if len(r["class_names"]) == 2 else "macro OvR ROC-AUC"
    lines = [
        f"{kind} {r['roc_auc']:.3f} (95% CI {low:.3f}-{high:.3f}) on {r['n_test']} {r['split']} "
        f"images {r['class_counts']}",
        f"PR-AUC {r['pr_auc']:.3f}, accuracy {r['accuracy']:.3f} at {r['accuracy_threshold']}"
        + (f", {r['youden']['accuracy']:.3f} at the Youden threshold {r['youden']['threshold']:.3f} "
           f"(chosen on {r['youden']['chosen_on']})" if "youden" in r else ""),
        f"mode {r['mode']}, {100 * r['labels_fraction']:g}% of the training labels ({r['n_labeled']} images), "
        f"imbalance: {r['imbalance_handling']}",
        f"report: {p['report']}",
        f"ROC plot: {p['plot']}",
        f"classifier: {p['model']}",
    ]
    if "tpr_at_fpr" in r:
        from kerasssl.metrics import lens_finder_summary

        lines.insert(2, lens_finder_summary(r))
    if "completeness_plot" in p:
        lines.insert(lines.index(f"ROC plot: {p['plot']}") + 1, f"completeness plot: {p['completeness_plot']}")
    if "saved_model" in p:
        lines.append(f"SavedModel: {p['saved_model']}")
    used = r.get("pretraining_data")
    if used:
        lines.insert(3, f"pretrained on {used['unlabeled_images']} unlabeled pool images + "
                        f"{used['train_split_images']} train-split images; the leak guard left out "
                        f"{used['leak_guard_excluded']} pool image(s) equal to val/test images"
                        + (f"; {used['skipped_files']} bad file(s) skipped" if used["skipped_files"] else ""))
    total = sum(summary.get("seconds", {}).values())
    if total:
        lines.append(f"took {total:.0f} s (" + ", ".join(
            f"{k} {v:.0f} s" for k, v in summary["seconds"].items()) + ")")
    return lines

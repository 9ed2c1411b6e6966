"""The TFX Trainer's ``run_fn``: kerasssl's pretrain + fine-tune on the examples ExampleGen wrote.

A TFX ``Trainer(run_fn="kerasssl.pipelines.tfx_trainer.run_fn", ...)`` calls
:func:`run_fn` with its ``fn_args``. ExampleGen's output is GZIP TFRecords of
the same ``tf.Example`` records ``kerasssl convert`` writes
(``Split-train/data_tfrecord-00000-of-00001.gz``), which every kerasssl reader
takes as a glob, so ``fn_args.train_files`` is DATA for :func:`kerasssl.fit.fit`
as it is: split, pretrain (SSL), fine-tune, evaluate, export, in a run
directory under ``fn_args.model_run_dir``. The exported SavedModel (kerasssl's
signatures: ``serving_default``, ``predict_examples``, ``embed``) is copied to
``fn_args.serving_model_dir``, where the Pusher takes it from. The classifier
is then evaluated on ExampleGen's eval split (``fn_args.eval_files``, images the
run never saw) into ``model_run_dir/eval_split_report.json``.

Nothing here imports TFX: the module runs (and is tested) without it.

``fn_args.custom_config`` (the Trainer's ``custom_config``, JSON):

- ``config``: a kerasssl config, as a YAML path or a dict (default: kerasssl's defaults);
- ``overrides``: dotted keys over it, e.g. ``{"pretrain.epochs": 1}``.

Training length comes from the config (``pretrain.epochs``, ``finetune.epochs``);
the Trainer's ``train_args.num_steps`` is not used.

Example:
    >>> tfx.components.Trainer(run_fn="kerasssl.pipelines.tfx_trainer.run_fn",
    ...                        examples=example_gen.outputs["examples"],
    ...                        custom_config={"config": "examples/quick.yaml"})
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kerasssl.errors import KerassslError

log = logging.getLogger(__name__)

#: The run directory inside the Trainer's ``model_run_dir``.
RUN_DIR_NAME = "kerasssl_run"
EVAL_REPORT = "eval_split_report.json"


def trainer_config(custom_config):
    """The kerasssl RunConfig from the Trainer's ``custom_config`` (see the module docstring)."""
    from kerasssl.config import RunConfig

    custom = dict(custom_config or {})
    unknown = sorted(set(custom) - {"config", "overrides"})
    if unknown:
        raise KerassslError(f"unknown custom_config key(s) {unknown}; expected 'config' and 'overrides'")
    given = custom.get("config")
    if given is None:
        cfg = RunConfig()
    elif isinstance(given, dict):
        cfg = RunConfig.from_dict(given, source="custom_config")
    else:
        cfg = RunConfig.load(given)
    # The Pusher needs a SavedModel: export is part of the job here.
    overrides = {**dict(custom.get("overrides") or {}), "export.enabled": True}
    return cfg.with_overrides(overrides).validate()


def one_pattern(files, split) -> str:
    """The one glob a split's ``fn_args.*_files`` list holds (ExampleGen gives one per split)."""
    files = [files] if isinstance(files, str) else list(files or [])
    if len(files) != 1:
        raise KerassslError(f"the Trainer gave {len(files)} file patterns for the {split} split; "
                            f"kerasssl's run_fn takes one (one ExampleGen split)")
    return files[0]


def run_fn(fn_args) -> dict:
    """Pretrain + fine-tune on ``fn_args.train_files``; the SavedModel to ``fn_args.serving_model_dir``.

    Returns:
        ``{"run_dir", "saved_model", "serving_model_dir", "report", "eval_report"}``.
    """
    from kerasssl.fit import fit

    cfg = trainer_config(getattr(fn_args, "custom_config", None))
    train = one_pattern(fn_args.train_files, "train")
    run_dir = Path(fn_args.model_run_dir) / RUN_DIR_NAME
    summary = fit(cfg, train, run_dir, progress=log.info)
    exported = summary["paths"].get("saved_model")
    if exported is None:
        raise KerassslError("fit exported no SavedModel (kerasssl.export unavailable?): nothing for the Pusher")
    copy_tree(exported, fn_args.serving_model_dir)
    result = {"run_dir": str(run_dir), "saved_model": exported, "serving_model_dir": str(fn_args.serving_model_dir),
              "report": summary["report"]}
    eval_files = getattr(fn_args, "eval_files", None)
    if eval_files:
        report = evaluate_split(summary["paths"]["model"], one_pattern(eval_files, "eval"), cfg)
        path = Path(fn_args.model_run_dir) / EVAL_REPORT
        path.write_text(json.dumps(report, indent=1, default=float))
        result["eval_report"] = report
    return result


def evaluate_split(model_path, pattern, cfg) -> dict:
    """The classifier's report on every example of one split (ExampleGen's eval split)."""
    import keras

    from kerasssl.classifier import image_shape_of
    from kerasssl.data.load import load_images
    from kerasssl.evaluate import evaluate_classifier

    model = keras.models.load_model(model_path)
    height = image_shape_of(model)[0]
    images = load_images(pattern, image_size=height, allow_pickle=cfg.data.allow_pickle,
                         channel_axis=cfg.data.channel_axis)
    report = evaluate_classifier(model, images.images, images.labels, images.class_names,
                                 bootstrap=cfg.evaluate.bootstrap, seed=cfg.seed,
                                 prevalence=cfg.evaluate.prevalence)
    report["examples"] = pattern
    report["n_images"] = int(len(images))
    return report


def copy_tree(source, destination) -> None:
    """Copy a folder's files with ``tf.io.gfile`` (TFX's model dirs may be ``gs://``)."""
    import tensorflow as tf

    source, destination = str(source).rstrip("/"), str(destination).rstrip("/")
    for folder, _, files in tf.io.gfile.walk(source):
        target = destination + folder[len(source):]
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(f"{folder}/{name}", f"{target}/{name}", overwrite=True)

"""Fine-tuning: a pretrained encoder (or a random one) becomes a lens classifier.

The classifier is ONE Keras model, saved as ``RUN/classifier.keras``::

    raw pixels (N, H, W, C) -> Preprocess -> [light augmentation] -> encoder
        -> feature standardisation (fixed, from the training images) -> Dense softmax

so ``predict``, ``evaluate`` and the exported SavedModel apply exactly the
training transform. The augmentation is identity at inference. Output: softmax
probabilities over the data's classes (binary sets: 2 columns, column 1 = lens).

Modes (all three use the same split and the same labelled subset, so they compare):

- ``linear``: frozen encoder (BatchNorm in inference mode) + a trained head.
- ``full``: every encoder weight trains at ``learning_rate * encoder_lr_scale``
  (per-variable learning-rate multipliers, :class:`kerasssl.optimizers.ScaledAdamW`); BatchNorm
  keeps its pretrained statistics (inference mode), as tiny labelled batches
  would otherwise overwrite them with noise.
- ``supervised``: the same architecture from random weights, everything
  trained at ``learning_rate`` with BatchNorm in training mode.

Class imbalance: class weights ``n / (K * n_k)`` over the labelled subset
("balanced"), recorded in ``RUN/finetune.json``. The epoch with the best
validation ROC-AUC is kept (:class:`kerasssl.callbacks.BestValAUC`).

Example:
    >>> from kerasssl.config import RunConfig
    >>> result = finetune(RunConfig(), "data/", "run/", mode="linear", labels_fraction=0.1)
    >>> result["model"]
    'run/classifier.keras'
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from pathlib import Path
from typing import Callable, Optional

import keras
import numpy as np

from kerasssl.batchnorm import batch_norm_layers, recalibrate_batch_norm
from kerasssl.callbacks import BestValAUC
from kerasssl.classifier import build_classifier, classifier_parts  # noqa: F401 - build_classifier: its home
from kerasssl.errors import KerassslError
from kerasssl.optimizers import ScaledAdamW
from kerasssl.rundir import RunDir, save_keras_atomic

log = logging.getLogger(__name__)


# -- model -----------------------------------------------------------------------
def feature_statistics(encoder, preprocess, images, batch_size: int = 256):
    """Per-feature mean and variance of ``encoder(preprocess(images))`` (inference mode).

    Pretrained features come at arbitrary scales (a pooled ReLU map can be all
    tiny or all large), which makes a linear head slow to train and sensitive to
    the learning rate. Standardising them with statistics of the *training
    images* (no labels involved) is the usual linear-probe normalisation, and
    unlike a BatchNorm in the head it is not noisy on tiny labelled batches.
    """
    inputs = keras.Input(shape=tuple(images.shape[1:]))
    probe = keras.Model(inputs, encoder(preprocess(inputs)))
    from kerasssl.distribute import predict_rows

    features = np.asarray(predict_rows(probe, np.asarray(images, np.float32), batch_size), np.float64)
    if not np.all(np.isfinite(features)):
        raise KerassslError("the encoder gives non-finite features on the training images")
    return features.mean(axis=0).astype(np.float32), np.maximum(features.var(axis=0), 1e-6).astype(np.float32)


def with_dtype_policy(model, policy: str):
    """A copy of ``model`` (fresh variables, same weights) whose layers compute under ``policy``.

    A saved encoder records each layer's dtype policy (float32, as pretraining
    saves it), so loading it under a mixed global policy still computes in
    float32; the copy's serialized policies are rewritten instead. Building the
    copy inside a ``tf.distribute`` scope also gives it mirrored variables.

    Args:
        model: a Keras model (e.g. ``RUN/encoder.keras`` loaded).
        policy: "float32", "mixed_float16" or "mixed_bfloat16".

    Example:
        >>> half = with_dtype_policy(encoder, "mixed_bfloat16")
        >>> half.layers[-1].compute_dtype
        'bfloat16'
    """
    copy = keras.saving.deserialize_keras_object(_set_dtype_policies(keras.saving.serialize_keras_object(model),
                                                                     policy))
    copy.set_weights(model.get_weights())
    return copy


def _set_dtype_policies(config, policy: str):
    """``config`` (a serialized Keras object) with every dtype policy set to ``policy``, in place."""
    if isinstance(config, dict):
        if str(config.get("class_name", "")).endswith("DTypePolicy") and isinstance(config.get("config"), dict):
            config["config"]["name"] = policy
        for value in config.values():
            _set_dtype_policies(value, policy)
    elif isinstance(config, list):
        for value in config:
            _set_dtype_policies(value, policy)
    return config


def build_classifier_in_scope(encoder, preprocess, n_classes: int, *, input_shape, mode: str,
                              augment_seed: Optional[int] = None, feature_stats=None,
                              precision: str = "float32", dist=None):
    """:func:`build_classifier` under ``precision``, with every variable made in ``dist.scope()``.

    The encoder is copied (:func:`with_dtype_policy`) inside the scope, since a
    loaded one has ordinary variables; the augmentation (its seed generators)
    is made there too. The head, its softmax and the feature standardisation
    stay float32. The global dtype policy is left as it was.

    Args:
        encoder / preprocess / n_classes / input_shape / mode / feature_stats:
            as :func:`build_classifier`.
        augment_seed: seed of the fine-tuning augmentation, None for none.
        precision: dtype policy of the encoder (``finetune.precision``).
        dist: a :class:`kerasssl.distribute.Distribution` (None: default device).

    Returns:
        ``(classifier, encoder)``: the encoder is the copy inside the classifier.

    Example:
        >>> model, enc = build_classifier_in_scope(encoder, Preprocess(), 2, input_shape=(16, 16, 1),
        ...                                        mode="full", precision="mixed_bfloat16")
    """
    from kerasssl.pretrain import set_precision

    previous = keras.mixed_precision.dtype_policy()
    set_precision(precision)
    try:
        with dist.scope() if dist is not None else contextlib.nullcontext():
            encoder = with_dtype_policy(encoder, precision)
            augmentation = _augmentation(augment_seed) if augment_seed is not None else None
            model = build_classifier(encoder, preprocess, n_classes, input_shape=input_shape, mode=mode,
                                     augmentation=augmentation, feature_stats=feature_stats)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    return model, encoder


def balanced_class_weights(labels, n_classes: int) -> dict:
    """``{k: n / (K * n_k)}`` so every class carries the same total weight."""
    counts = np.bincount(np.asarray(labels), minlength=n_classes)
    if np.any(counts == 0):
        raise KerassslError(
            f"the labelled subset misses class(es) {np.flatnonzero(counts == 0).tolist()}; "
            "use a larger --labels-fraction"
        )
    return {k: float(len(labels) / (n_classes * c)) for k, c in enumerate(counts)}


def train_classifier(model, encoder, x_train, y_train, *, x_val=None, y_val=None, mode: str,
                     epochs: int, batch_size: int, learning_rate: float, encoder_lr_scale: float,
                     weight_decay: float, class_weight: Optional[dict], seed: int = 0,
                     patience: Optional[int] = None, jit_compile=False, verbose: int = 0,
                     precision: str = "float32", dist=None) -> dict:
    """Compile and fit a classifier from :func:`build_classifier` on arrays.

    Args:
        model / encoder: the classifier and the encoder inside it.
        x_train / y_train: labelled training images (raw) and labels.
        x_val / y_val: validation split for best-epoch selection (optional; it
            needs both classes).
        mode: "linear", "full" or "supervised".
        epochs / batch_size: passes over the labelled subset and batch size.
        learning_rate: head (and supervised) learning rate, cosine-decayed.
        encoder_lr_scale: encoder learning-rate factor in "full" mode.
        weight_decay: decoupled weight decay on kernels.
        class_weight: ``{label: weight}`` or None.
        seed: shuffling seed.
        patience: early-stopping patience on validation ROC-AUC (None: all epochs).
        jit_compile: XLA (off on CPU, where it is slower).
        verbose: Keras fit verbosity.
        precision: the policy the model was built under (mixed_float16 wraps the
            optimizer in a ``LossScaleOptimizer``).
        dist: the :class:`kerasssl.distribute.Distribution` the model was built
            in; it is compiled in its scope and Keras splits each global batch.

    Returns:
        ``{"loss": [...], "val_roc_auc": [...], "best_epoch", "best_val_roc_auc"}``.
    """
    n = len(y_train)
    steps = max(1, math.ceil(n / batch_size)) * epochs
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=0.01)
    multipliers = None
    if mode == "full":
        encoder_vars = {id(v) for v in encoder.trainable_variables}
        multipliers = [encoder_lr_scale if id(v) in encoder_vars else 1.0
                       for v in model.trainable_variables]
    # The optimizer's variables (iterations, loss scale) belong to the strategy too.
    with dist.scope() if dist is not None else contextlib.nullcontext():
        optimizer = ScaledAdamW(schedule, lr_multipliers=multipliers, weight_decay=weight_decay)
        if precision == "mixed_float16":
            # As in pretraining: a modest start for the dynamic loss scale (Keras's 2**15
            # skips the first steps as overflows); it grows when it can.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**8)
        model.compile(
            optimizer=optimizer,
            # The head's softmax is float32; the loss is too, whatever the policy.
            loss=keras.losses.SparseCategoricalCrossentropy(dtype="float32"),
            jit_compile=jit_compile,
        )
    x_train, y_train = _trim_for_devices(np.asarray(x_train, np.float32), np.asarray(y_train, np.int64),
                                         batch_size, seed)
    callbacks = []
    best = None
    preprocess, recalibrate = classifier_parts(model).preprocess, None
    if any(layer.trainable for layer in batch_norm_layers(encoder)):  # "supervised": BatchNorm trains
        # A few hundred labels make a few hundred steps: the moving averages still lag the
        # weights (a B0 gave every image one feature vector). Validate and ship the model
        # with them recomputed over the labelled images (kerasssl.batchnorm).
        recalibrate = (encoder, preprocess, x_train, batch_size)
    if x_val is not None and len(x_val) and len(np.unique(y_val)) > 1:
        # About 50 checks per run at most, whatever the number of epochs.
        best = BestValAUC(x_val, y_val, patience=patience, every=max(1, epochs // 50),
                          recalibrate=recalibrate)
        callbacks.append(best)
    # The labelled subset is small and in memory: Keras shuffles it each epoch
    # (seeded by keras.utils.set_random_seed), no tf.data pipeline needed.
    keras.utils.set_random_seed(seed)
    history = model.fit(x_train, y_train,
                        batch_size=batch_size, epochs=epochs, shuffle=True, class_weight=class_weight,
                        callbacks=callbacks, verbose=verbose)
    if recalibrate is not None and (best is None or best.best_epoch is None):  # nothing validated: the last
        recalibrate_batch_norm(encoder, x_train, preprocess=preprocess, batch_size=batch_size, seed=seed)
    losses = [float(v) for v in history.history.get("loss", [])]
    if not all(np.isfinite(losses)):
        raise KerassslError("fine-tuning diverged (loss is NaN/Inf); lower the learning rate")
    return {
        "loss": losses,
        "val_roc_auc": list(best.history) if best else [],
        "val_epochs": list(best.epochs_checked) if best else [],
        "best_epoch": None if best is None or best.best_epoch is None else best.best_epoch + 1,
        "best_val_roc_auc": None if best is None or best.best_epoch is None else float(best.best_auc),
    }


def _trim_for_devices(x, y, batch_size, seed):
    """Under JAX ``DataParallel`` the last batch must split evenly over the devices too:
    leave out (seeded) the fewer-than-devices rows that would not. Elsewhere unchanged."""
    from kerasssl.distribute import sharded_batch_multiple

    extra = len(y) % batch_size % sharded_batch_multiple()
    if not extra:
        return x, y
    log.warning("fine-tuning leaves out %d of %d labelled images so that every batch splits over the devices",
                extra, len(y))
    keep = np.sort(np.random.default_rng(seed).permutation(len(y))[extra:])
    return x[keep], y[keep]


# -- run directory helpers -------------------------------------------------------
def load_pretrained_encoder(run_dir, image_shape):
    """``RUN/encoder.keras``, checked against the images' (H, W, C)."""
    path = RunDir(run_dir).encoder
    if not path.exists():
        raise KerassslError(f"{path}: no pretrained encoder; run `kerasssl pretrain` first "
                            "(or use --mode supervised)")
    from kerasssl.models import load_model

    encoder = load_model(path)
    expected = tuple(encoder.input_shape[1:])
    if tuple(image_shape) != expected:
        raise KerassslError(f"{path}: encoder expects images {expected}, the data gives "
                            f"{tuple(image_shape)} (set data.image_size as in pretraining)")
    return encoder


def save_model_atomic(model, path, fingerprints=None) -> Path:
    """Save an uncompiled copy of ``model`` (no optimizer state) so a crash never
    leaves a half-written file and loading needs no custom optimizer.

    Args:
        model: the classifier (a :class:`kerasssl.classifier.LensClassifier`
            stays one, with its parts).
        path: the ``.keras`` file to write.
        fingerprints: optional :class:`kerasssl.fingerprints.TrainingFingerprints`
            of the images that trained it, stored inside the file.
    """
    from kerasssl.classifier import LensClassifier

    if isinstance(model, LensClassifier):
        # float32 whatever it trained under (as the encoder is saved): predict, export and TFLite see one dtype.
        inference = LensClassifier.from_config(_set_dtype_policies(model.get_config(), "float32"))
        inference.set_weights(model.get_weights())
    else:
        inference = keras.Model(model.inputs, model.outputs, name=model.name)
    return save_keras_atomic(inference, path, finish=None if fingerprints is None
                             else lambda tmp: fingerprints.write(tmp, role="classifier"))


def training_fingerprints(mode, encoder_path, labeled_images, pretrain_images):
    """What trained a classifier: its labelled images, plus its encoder's pretraining images.

    The pretraining fingerprints are the ones stored in ``encoder.keras``; an
    encoder saved without them (an older run) is taken to have seen
    ``pretrain_images`` (the run's train split, which pretraining reads).
    """
    from kerasssl.fingerprints import TrainingFingerprints, fingerprints

    own = TrainingFingerprints({"finetune": fingerprints(labeled_images)})
    if mode == "supervised":
        return own
    stored = TrainingFingerprints.read(encoder_path)
    if stored is None:
        log.info("%s carries no fingerprints: recording the train split as its pretraining images", encoder_path)
        stored = TrainingFingerprints({"pretrain": fingerprints(pretrain_images)})
    return stored.union(own)


# -- the `kerasssl finetune` job -------------------------------------------------
def finetune(cfg, data_path, run_dir, *, mode: Optional[str] = None,
             labels_fraction: Optional[float] = None, epochs: Optional[int] = None,
             batch_size: Optional[int] = None, output=None, patience: Optional[int] = None,
             image_set=None, verbose: int = 0,
             on_accepted: Optional[Callable[[Path], None]] = None) -> dict:
    """Fine-tune on a labelled fraction of the run's training split; save the classifier.

    Reads (or, for a fresh supervised run, creates) ``RUN/split.json``,
    ``RUN/preprocess.json`` and ``RUN/config.yaml``; writes ``RUN/classifier.keras`` (or ``output``) and
    ``RUN/finetune.json`` (per classifier file: mode, labels, class weights,
    labelled file names, history; see :meth:`kerasssl.rundir.RunDir.add_finetune_record`).

    Args:
        cfg: a ``kerasssl.config.RunConfig`` (``finetune`` and ``data`` sections used).
        data_path: the data folder.
        run_dir: the run directory (holding ``encoder.keras`` unless supervised).
        mode / labels_fraction / epochs / batch_size: override ``cfg.finetune``.
        output: classifier path (default ``RUN/classifier.keras``).
        patience: early-stopping patience in epochs on validation ROC-AUC
            (default: max(10, epochs // 2)); the best epoch is restored either way.
        image_set: the data already loaded from ``data_path`` (saves re-reading it).
        verbose: Keras fit verbosity.
        on_accepted: called with the run directory once every check passed, before
            the first write (the CLI records its command line there). A refused
            fine-tune writes nothing.

    Returns:
        A summary dict (also in ``RUN/finetune.json``) with ``"model"``, the path.
    """
    from kerasssl.data.load import check_data_path, load_images
    from kerasssl.data.split import check_split, load_or_create_split
    from kerasssl.layers.preprocess import load_or_create_preprocess

    from kerasssl.pretrain import setup_distribution

    # Every check first: a refused fine-tune writes nothing (no run dir, no runs.jsonl).
    cfg.validate()
    # Before any TF op (reading TFRecord DATA is one); `fit` set up the same engine already.
    dist = setup_distribution(cfg)
    overrides = {"mode": mode, "labels_fraction": labels_fraction, "epochs": epochs, "batch_size": batch_size}
    ft = dataclasses.replace(cfg.finetune, **{k: v for k, v in overrides.items() if v is not None})  # checked
    mode, labels_fraction, epochs, batch_size = ft.mode, float(ft.labels_fraction), int(ft.epochs), int(ft.batch_size)
    if dist.distribution is not None and batch_size % dist.num_replicas:
        # keras.distribution.DataParallel shards each batch evenly over the devices.
        raise KerassslError(f"fine-tuning batch size {batch_size} must be a multiple of the {dist.num_replicas} "
                            "devices under JAX DataParallel (finetune.batch_size)")
    run = RunDir(run_dir)
    run_dir = run.path
    if mode == "supervised":
        from kerasssl.encoders import available

        if str(cfg.pretrain.encoder).lower() not in available():
            raise KerassslError(f"unknown encoder {cfg.pretrain.encoder!r}; choose from {', '.join(available())}")
    elif not run.encoder.exists():
        raise KerassslError(f"{run.encoder}: no pretrained encoder; run "
                            "`kerasssl pretrain` first (or use --mode supervised)")
    if image_set is None:
        check_data_path(data_path)
        image_set = load_images(data_path, **cfg.data.read_options())
    split = check_split(run_dir, image_set, cfg.data, labels_fraction=labels_fraction)
    labeled = np.asarray(split.indices(image_set, "labeled"), np.int64)
    val = np.asarray(split.indices(image_set, "val"), np.int64)
    train = np.asarray(split.indices(image_set, "train"), np.int64)
    if len(labeled) == 0:
        raise KerassslError(f"labels fraction {labels_fraction} leaves no labelled image")
    n_classes = len(image_set.class_names)
    seed = ft.seed
    keras.utils.set_random_seed(seed)
    # float32 whatever finetune.precision: the encoder casts to its compute dtype itself.
    preprocess, new_preprocess = load_or_create_preprocess(run.preprocess, cfg.data, image_set.images[train],
                                                           dtype="float32")
    shape = image_set.image_shape
    if mode == "supervised":
        from kerasssl.encoders import build_encoder

        encoder = build_encoder(cfg.pretrain.encoder, shape)
        encoder_source = f"random init ({cfg.pretrain.encoder})"
    else:
        encoder = load_pretrained_encoder(run, shape)
        encoder_source = str(run.encoder)

    # Accepted: from here on the run writes.
    if on_accepted is not None:
        on_accepted(run_dir)
    if dist.is_chief:  # other workers (multiworker) train the same but write only a private copy
        run_dir.mkdir(parents=True, exist_ok=True)
        if not run.config.exists():  # a fresh (supervised) run: its config, replayable with --config
            run.save_config(cfg)
        load_or_create_split(run, image_set, cfg.data, labels_fraction=labels_fraction)  # the split checked above
        if new_preprocess:
            preprocess.preprocess_to_json(run.preprocess)
    x, y = image_set.images[labeled], image_set.labels[labeled]
    class_weight = balanced_class_weights(y, n_classes) if ft.class_weight == "balanced" else None

    # Standardise pretrained features on the whole training split (its images, not its labels).
    # Not a supervised encoder's: trained from random weights, its features move away from the
    # random-init statistics (scales of ~1e-3 there gave the head a x1000 gain, and fp16 TFLite
    # overflowed).
    stats = None if mode == "supervised" else feature_statistics(encoder, preprocess, image_set.images[train])
    model, encoder = build_classifier_in_scope(encoder, preprocess, n_classes, input_shape=shape, mode=mode,
                                               augment_seed=seed if ft.augment else None, feature_stats=stats,
                                               precision=ft.precision, dist=dist)
    # Per-replica Dropout masks; global-batch statistics where BatchNorm trains (supervised).
    dist.prepare(model, sync_batchnorm=cfg.pretrain.sync_batchnorm)
    if patience is None:
        patience = max(10, epochs // 2)
    log.info("fine-tuning (%s, %s, %s) on %d labelled images, %d epochs", mode, ft.precision, dist.describe(),
             len(labeled), epochs)
    history = train_classifier(
        model, encoder, x, y, x_val=image_set.images[val], y_val=image_set.labels[val], mode=mode,
        epochs=epochs, batch_size=batch_size, learning_rate=ft.learning_rate,
        encoder_lr_scale=ft.encoder_lr_scale, weight_decay=ft.weight_decay,
        class_weight=class_weight, seed=seed, patience=patience, verbose=verbose, precision=ft.precision,
        dist=dist,
    )
    trained_on = training_fingerprints(mode, run.encoder, x, image_set.images[train])
    out = save_model_atomic(model, dist.write_path(output or run.classifier), fingerprints=trained_on)
    counts = np.bincount(y, minlength=n_classes)
    record = {
        "model": str(out),
        "mode": mode,
        "encoder": encoder_source,
        "labels_fraction": labels_fraction,
        "n_labeled": int(len(labeled)),
        "labeled_counts": {n: int(c) for n, c in zip(image_set.class_names, counts)},
        "class_names": list(image_set.class_names),
        "class_weight": None if class_weight is None else
        {image_set.class_names[k]: w for k, w in class_weight.items()},
        "imbalance_handling": "class weights n / (K * n_k) on the labelled subset"
        if class_weight else "none",
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": ft.learning_rate,
        "encoder_lr_scale": ft.encoder_lr_scale if mode == "full" else None,
        "seed": seed,
        "precision": ft.precision,
        "distribution": dist.describe(),
        "selection": "epoch with the best validation ROC-AUC" if history["best_epoch"] else "last epoch",
        **history,
        "labeled_files": [image_set.files[i] for i in labeled],
    }
    if dist.is_chief:
        run.add_finetune_record(record)
    dist.cleanup()
    return record


#: Light, lossless augmentation for supervised fine-tuning: the 8 symmetries of the square.
FINETUNE_VIEW = {"dihedral": True}


def _augmentation(seed):
    """The fine-tuning augmentation pipeline (:data:`FINETUNE_VIEW`)."""
    from kerasssl.layers.views import build_view_pipeline

    return build_view_pipeline(FINETUNE_VIEW, seed=seed)

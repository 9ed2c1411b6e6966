"""Self-supervised pretraining, orchestrated: data -> split -> preprocess -> method -> fit -> run dir.

``pretrain(cfg, data_path, run_dir, resume=False)`` writes into ``RUN/``:

- ``config.yaml``: the full resolved :class:`kerasssl.config.RunConfig`;
- ``split.json`` (via :mod:`kerasssl.data.split`): pretraining sees the
  TRAIN split's images only; validation feeds the kNN probe; test is never read;
- ``preprocess.json``: the in-model NaN repair + normalisation;
- ``checkpoints/``: one atomic checkpoint per good epoch (see
  :class:`kerasssl.callbacks.EpochCheckpoint`);
- ``history.json``: per-epoch ``loss``, ``embedding_std``, ``learning_rate``,
  ``val_knn_auc`` (lists), rewritten after each checkpoint;
- ``tensorboard/``: the same scalars for TensorBoard;
- ``encoder.keras``: the backbone alone (float32 policy), which takes
  *preprocessed* images (classifier = Preprocess -> encoder -> head).

``resume=True`` restores the last checkpoint (weights, optimizer state,
augmentation RNG state, epoch, history) and continues to ``epochs``; a crash
or ``kill -9`` loses at most the epoch in progress. A NaN/Inf loss stops the
run with a one-line :class:`KerassslError` and leaves the last good checkpoint.

:func:`build_pretraining_model` holds model construction + compile in one
place, so a ``tf.distribute`` scope can wrap it.

Example:
    >>> cfg = RunConfig.from_dict({"pretrain": {"method": "byol", "epochs": 5, "encoder": "tiny"}})
    >>> history = pretrain(cfg, "data/3b", "runs/byol")
    >>> history["loss"][-1] < history["loss"][0]
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path

import numpy as np

from kerasssl.config import RunConfig
from kerasssl.errors import KerassslError
from kerasssl.runinfo import write_json_atomic

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
CONFIG_FILE = "config.yaml"


def set_precision(precision):
    """Set the global Keras dtype policy (call BEFORE building models)."""
    import keras

    if precision not in PRECISIONS:
        raise KerassslError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    keras.mixed_precision.set_dtype_policy(precision)


def resolve_jit_compile(value):
    """"auto" -> XLA on accelerators (and always under JAX, whose trainer needs jit), off on CPU."""
    import keras

    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    if text != "auto":
        raise KerassslError(f"jit_compile must be auto, true or false, got {value!r}")
    if keras.backend.backend() == "jax":
        return True
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))
    return False


def method_options(cfg, method_cls, total_steps):
    """The method's keyword options from ``cfg.pretrain.method_options`` (checked)."""
    options = dict(cfg.pretrain.method_options or {})
    params = inspect.signature(method_cls.__init__).parameters
    allowed = {n for n in params if n not in ("self", "encoder", "preprocess", "view1", "view2", "kwargs")}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise KerassslError(
            f"pretrain.method_options: unknown option(s) {unknown} for {cfg.pretrain.method}; "
            f"known: {sorted(allowed)}"
        )
    if method_cls.needs_total_steps:
        options.setdefault("total_steps", int(total_steps))
    return options


def build_pretraining_model(cfg: RunConfig, input_shape, preprocess, steps_per_epoch=None):
    """Build and compile the method model (encoder, views, heads, optimizer).

    Sets the dtype policy first, so encoder and heads run under it; the loss
    is computed in float32 and, for mixed_float16, the optimizer is wrapped
    in a ``LossScaleOptimizer`` with a modest initial scale. Wrap the call in a strategy
    scope to distribute it.

    Args:
        cfg: the run config (pretrain + seed sections are used).
        input_shape: (H, W, C) of the raw images.
        preprocess: the :class:`kerasssl.layers.Preprocess` layer (raw -> normalised).
        steps_per_epoch: optimizer steps per epoch (for the LR schedule and
            BYOL's momentum); default ``cfg.pretrain.steps_per_epoch`` or 1.

    Returns:
        A compiled :class:`kerasssl.methods.SSLMethod`.

    Example:
        >>> model = build_pretraining_model(cfg, (32, 32, 3), Preprocess(), steps_per_epoch=10)
    """
    import keras

    from kerasssl import methods
    from kerasssl.encoders import build_encoder
    from kerasssl.layers.views import build_view_pair
    from kerasssl.schedules import WarmupCosine

    p = cfg.pretrain
    set_precision(p.precision)
    spe = int(steps_per_epoch or p.steps_per_epoch or 1)
    total_steps = max(int(p.epochs) * spe, 1)
    method_cls = methods.get(p.method)
    options = method_options(cfg, method_cls, total_steps)
    encoder = build_encoder(p.encoder, input_shape, weights=p.encoder_weights)
    view1, view2 = build_view_pair(method_cls.method_name, p.augment or None, seed=cfg.seed)
    try:
        model = method_cls(encoder, preprocess, view1, view2, **options)
    except (TypeError, ValueError) as e:
        raise KerassslError(f"pretrain.method_options for {p.method}: {e}") from None
    schedule = WarmupCosine(
        p.learning_rate, warmup_steps=int(round(p.warmup_epochs * spe)), total_steps=total_steps
    )
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=p.weight_decay)
    # No decay on biases and BatchNorm scales/offsets (standard for SSL).
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if keras.config.dtype_policy().name == "mixed_float16":
        # Keras starts the dynamic loss scale at 2**15 and halves it per overflowing
        # step. SSL losses are O(1-1000) (Barlow Twins ~500), so that start overflows
        # float16 gradients for the first ~10-20 steps, all skipped: a short run would
        # barely train. 2**8 leaves headroom; the scale still grows when it can.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**8)
    model.compile(optimizer=optimizer, jit_compile=resolve_jit_compile(p.jit_compile))
    return model


def check_config(cfg):
    """Raise a one-line KerassslError for pretrain settings that cannot work."""
    p = cfg.pretrain
    for name in ("epochs", "batch_size"):
        value = getattr(p, name)
        if not isinstance(value, int) or value < 1:
            raise KerassslError(f"pretrain.{name} must be a positive integer, got {value!r}")
    if p.steps_per_epoch is not None and (not isinstance(p.steps_per_epoch, int) or p.steps_per_epoch < 1):
        raise KerassslError(f"pretrain.steps_per_epoch must be a positive integer, got {p.steps_per_epoch!r}")
    if not (p.learning_rate > 0 and math.isfinite(p.learning_rate)):
        raise KerassslError(f"pretrain.learning_rate must be > 0, got {p.learning_rate!r}")
    if p.precision not in PRECISIONS:
        raise KerassslError(f"unknown precision {p.precision!r}; choose from {', '.join(PRECISIONS)}")
    from kerasssl import methods
    from kerasssl.encoders import available

    methods.get(p.method)
    if p.encoder.lower() not in available():
        raise KerassslError(f"unknown encoder {p.encoder!r}; choose from {', '.join(available())}")


def resume_config(run_dir, epochs=None):
    """The config of an existing run for ``--resume``: saved config, only ``epochs`` may rise.

    Args:
        run_dir: the run directory (must hold config.yaml and checkpoints).
        epochs: new total epoch count, or None to keep the saved one.

    Example:
        >>> cfg = resume_config("runs/a", epochs=20)
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise KerassslError(f"{path}: nothing to resume (no config.yaml in the run directory)")
    cfg = RunConfig.load(path)
    if epochs is not None:
        if epochs < cfg.pretrain.epochs:
            raise KerassslError(
                f"--epochs {epochs} is below the run's {cfg.pretrain.epochs}; on resume epochs may only be raised"
            )
        cfg = cfg.with_overrides({"pretrain.epochs": int(epochs)})
    return cfg


def _train_val(image_set, split):
    train = split.indices(image_set, "train")
    val = split.indices(image_set, "val")
    return train, val


def _make_preprocess(cfg, run_dir, train_images, resume):
    from kerasssl.data.clean import band_stats
    from kerasssl.layers.preprocess import Preprocess, load_preprocess

    path = Path(run_dir) / "preprocess.json"
    if resume and path.exists():
        return load_preprocess(path, dtype="float32")
    stats = band_stats(train_images) if cfg.data.normalization == "dataset" else None
    # float32: the views augment normalised pixels in full precision; the
    # encoder casts to the compute dtype itself.
    layer = Preprocess.from_data_config(cfg.data, stats=stats, dtype="float32")
    layer.preprocess_to_json(path)
    return layer


def _probe_callback(cfg, image_set, split, train_idx, val_idx):
    from kerasssl.callbacks import KNNProbe

    if not cfg.pretrain.knn_monitor or len(val_idx) < 2 or len(image_set.class_names) < 2:
        return None
    labelled = split.indices(image_set, "labeled") if split.labeled else train_idx
    labels = image_set.labels
    if len(np.unique(labels[val_idx])) < 2 or len(np.unique(labels[labelled])) < 2:
        return None
    return KNNProbe(image_set.images[labelled], labels[labelled], image_set.images[val_idx], labels[val_idx],
                    seed=cfg.seed)


def save_encoder(model, cfg, input_shape, path, train_images=None):
    """Save the backbone alone under the float32 policy (``RUN/encoder.keras``), atomically.

    With ``train_images`` (the images pretraining saw), their content
    fingerprints go inside the file (:mod:`kerasssl.fingerprints`): every
    classifier fine-tuned from this encoder carries them, so ``evaluate``
    refuses them in any run.
    """
    import keras

    from kerasssl.encoders import build_encoder
    from kerasssl.fingerprints import TrainingFingerprints, fingerprints

    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        encoder = build_encoder(cfg.pretrain.encoder, input_shape)
        encoder.set_weights(model.encoder.get_weights())
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.keras")
    encoder.save(tmp)
    if train_images is not None:
        TrainingFingerprints({"pretrain": fingerprints(train_images)}).write(tmp, role="encoder")
    tmp.replace(path)
    return encoder


def pretrain(cfg: RunConfig, data_path, run_dir, resume=False, verbose=1):
    """Pretrain ``cfg.pretrain.encoder`` with ``cfg.pretrain.method`` on DATA's train split.

    Args:
        cfg: the resolved run config (with ``resume``, pass :func:`resume_config`'s).
        data_path: the data folder/file (anything ``load_images`` reads).
        run_dir: the run directory (created).
        resume: continue from ``RUN/checkpoints``.
        verbose: Keras progress output (1 = progress bar, 2 = one line per epoch, 0 = none).

    Returns:
        The history dict (per-epoch lists), as written to ``RUN/history.json``.

    Raises:
        KerassslError: bad config or data, nothing to resume, or a NaN/Inf loss.

    Example:
        >>> history = pretrain(cfg, "data/3b", "runs/simclr")
    """
    import keras

    from kerasssl import distribute
    from kerasssl.callbacks import (
        NONFINITE_HINT,
        EpochCheckpoint,
        LearningRateLogger,
        NonFiniteLossGuard,
        ScalarEventWriter,
        load_checkpoint_meta,
        restore_checkpoint,
    )
    from kerasssl.data.load import load_images
    from kerasssl.data.pipeline import make_dataset
    from kerasssl.data.split import load_or_create_split

    check_config(cfg)
    # Data parallelism (tf.distribute / keras.distribution) before any TF op.
    dist = distribute.setup(cfg.pretrain.strategy, cfg.pretrain.cpu_devices)
    run_dir = _worker_run_dir(dist, Path(run_dir), resume)
    ckpt_dir = run_dir / "checkpoints"
    meta = load_checkpoint_meta(ckpt_dir) if resume else None
    if resume and meta is None:
        raise KerassslError(f"{ckpt_dir}: no checkpoint to resume from; start without --resume")
    if not resume and meta is None and load_checkpoint_meta(ckpt_dir) is not None:
        raise KerassslError(f"{run_dir}: already holds a pretraining run; use --resume or a new --run-dir")
    done = int(meta["epoch"]) if meta else 0
    p = cfg.pretrain
    if done >= p.epochs:
        raise KerassslError(f"{run_dir}: already trained {done} epoch(s); raise --epochs to continue")

    image_set = load_images(data_path, image_size=cfg.data.image_size, allow_pickle=cfg.data.allow_pickle)
    run_dir.mkdir(parents=True, exist_ok=True)
    split = load_or_create_split(run_dir, image_set, cfg.data)
    train_idx, val_idx = _train_val(image_set, split)
    if len(train_idx) < 2:
        raise KerassslError(f"{data_path}: the train split has {len(train_idx)} image(s); need at least 2")
    train_images = image_set.images[train_idx]
    input_shape = tuple(train_images.shape[1:])
    batch_size = p.batch_size
    if batch_size > len(train_images):
        log.warning("batch size %d > %d training images: using %d", batch_size, len(train_images), len(train_images))
        batch_size = len(train_images)
    if dist.distribution is not None and batch_size % dist.num_replicas:
        # keras.distribution.DataParallel shards each batch evenly over the devices.
        raise KerassslError(f"--batch-size {batch_size} must be a multiple of the {dist.num_replicas} "
                            "devices of --strategy mirrored under JAX")
    steps_per_epoch = p.steps_per_epoch or max(len(train_images) // batch_size, 1)
    cfg.save(run_dir / CONFIG_FILE)

    keras.utils.set_random_seed(cfg.seed)
    preprocess = _make_preprocess(cfg, run_dir, train_images, resume)
    with dist.scope():  # variables mirrored / sharded; Keras then splits each global batch
        model = build_pretraining_model(cfg, input_shape, preprocess, steps_per_epoch=steps_per_epoch)
        if dist.num_replicas > 1 and p.sync_batchnorm:
            distribute.synchronize_batchnorm(model)  # global-batch BN statistics (TF)
        history = {}
        if meta:
            meta = restore_checkpoint(model, ckpt_dir)
            history = {k: list(v) for k, v in meta["history"].items()}
            log.info("resuming %s after epoch %d", run_dir, done)

    # Full batches only (BatchNorm and the contrastive losses dislike a tiny
    # last batch); repeat so steps_per_epoch may exceed one pass. The shuffle
    # seed moves with the epoch so a resumed run sees fresh orders.
    dataset = make_dataset(train_images, batch_size=batch_size, shuffle=True, seed=cfg.seed + 1000 * done,
                           repeat=True, drop_remainder=True)

    def write_history(epoch, hist):
        write_json_atomic(run_dir / "history.json", hist)

    guard = NonFiniteLossGuard()
    callbacks = [LearningRateLogger()]
    probe = _probe_callback(cfg, image_set, split, train_idx, val_idx)
    if probe is not None:
        callbacks.append(probe)
    callbacks += [
        guard,
        EpochCheckpoint(ckpt_dir, history=history, on_saved=write_history),
        ScalarEventWriter(run_dir / "tensorboard"),
    ]
    model.fit(dataset, epochs=p.epochs, initial_epoch=done, steps_per_epoch=steps_per_epoch,
              callbacks=callbacks, verbose=verbose, shuffle=False)
    if guard.failure:
        last = load_checkpoint_meta(ckpt_dir)
        kept = f"last good checkpoint: epoch {last['epoch']}" if last else "no checkpoint was written"
        raise KerassslError(f"pretraining stopped: {guard.failure}; {kept}; {NONFINITE_HINT}")
    save_encoder(model, cfg, input_shape, run_dir / "encoder.keras", train_images=train_images)
    write_json_atomic(run_dir / "history.json", history)
    dist.cleanup()
    return history


def _worker_run_dir(dist, run_dir, resume):
    """The run directory this process writes: RUN for the chief, a private copy otherwise.

    Under multiworker every worker runs the same code (saving reads variables
    that need all workers), but only the chief may write RUN; the others
    write into a temporary folder (removed at the end) that starts as a copy
    of RUN's records when resuming, so they restore the same checkpoint.
    """
    if dist.is_chief:
        return run_dir
    private = dist.write_path(run_dir)
    if resume and run_dir.exists():
        import shutil

        shutil.copytree(run_dir, private, ignore=shutil.ignore_patterns("tensorboard", "*.tmp*"))
    return private

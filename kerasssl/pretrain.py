"""Self-supervised pretraining, orchestrated: data -> split -> preprocess -> method -> fit -> run dir.

``pretrain(cfg, data_path, run_dir, resume=False)`` writes into ``RUN/``:

- ``config.yaml``: the full resolved :class:`kerasssl.config.RunConfig`;
- ``split.json`` (via :mod:`kerasssl.data.split`): pretraining sees the
  TRAIN split's images only; validation feeds the kNN probe; test is never read;
- ``preprocess.json``: the in-model NaN repair + normalisation;
- ``checkpoints/``: one atomic checkpoint per good epoch, the last two kept
  (see :class:`kerasssl.callbacks.EpochCheckpoint`);
- ``history.json``: per-epoch ``loss``, ``embedding_std``, ``learning_rate``,
  ``val_knn_auc`` (lists), rewritten after each checkpoint;
- ``tensorboard/``: the same scalars for TensorBoard;
- ``encoder.keras``: the backbone alone (float32 policy), which takes
  *preprocessed* images (classifier = Preprocess -> encoder -> head).

Nothing is written before every check passed (:func:`plan_pretraining`):
a refused run creates no run directory and leaves another run's as it was.

``resume=True`` restores the newest readable checkpoint (weights, optimizer
state, augmentation RNG state, epoch, history; a truncated newest one is
skipped with a warning) and continues to ``epochs``; a crash or ``kill -9``
loses at most the epoch in progress, and a run killed after its last
checkpoint only gets ``encoder.keras`` written. A NaN/Inf loss stops the run
with a one-line :class:`KerassslError` (what to try, see
:func:`kerasssl.callbacks.nonfinite_hint`) and leaves the last good checkpoint.

:func:`build_pretraining_model` holds model construction + compile in one
place, so a ``tf.distribute`` scope can wrap it.

Example:
    >>> cfg = RunConfig.from_dict({"pretrain": {"method": "byol", "epochs": 5, "encoder": "tiny"}})
    >>> history = pretrain(cfg, "data/3b", "runs/byol")
    >>> history["loss"][-1] < history["loss"][0]
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from pathlib import Path
from typing import Callable, Optional

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
    view1, view2 = build_view_pair(method_cls.default_views, p.augment or None, seed=cfg.seed,
                                   name=method_cls.method_name)
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
    """Raise a one-line KerassslError for data or pretrain settings that cannot work."""
    from kerasssl.runcheck import check_data_config

    check_data_config(cfg.data)
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


def _make_preprocess(cfg, run_dir, train_images, resume):
    """The run's Preprocess layer and whether it is new (to be saved once the run is accepted)."""
    from kerasssl.data.clean import band_stats
    from kerasssl.layers.preprocess import Preprocess, load_preprocess

    path = Path(run_dir) / "preprocess.json"
    if resume and path.exists():
        return load_preprocess(path, dtype="float32"), False
    stats = band_stats(train_images) if cfg.data.normalization == "dataset" else None
    # float32: the views augment normalised pixels in full precision; the
    # encoder casts to the compute dtype itself.
    return Preprocess.from_data_config(cfg.data, stats=stats, dtype="float32"), True


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


@dataclasses.dataclass
class PretrainingPlan:
    """What :func:`plan_pretraining` found: all that :func:`pretrain` needs before its first write.

    Args:
        run_dir: the directory this process writes (RUN, or a worker's private copy).
        image_set / split: the data and the split the run will record.
        train_idx / val_idx: rows of the train and validation splits.
        checkpoint: the checkpoint to resume from (:func:`kerasssl.callbacks.load_checkpoint`), or None.
        done: epochs already trained.
        finish_only: every epoch is trained but ``encoder.keras`` was never written
            (killed after the last checkpoint): only the encoder and history are left to write.
        batch_size / steps_per_epoch: as the run will use them.
    """

    run_dir: Path
    image_set: object
    split: object
    train_idx: np.ndarray
    val_idx: np.ndarray
    checkpoint: Optional[dict]
    done: int
    finish_only: bool
    batch_size: int
    steps_per_epoch: int


def plan_pretraining(cfg: RunConfig, data_path, run_dir, *, resume=False, image_set=None, dist=None):
    """Every check :func:`pretrain` makes before it writes anything; writes nothing.

    Config values, the run directory (another pretraining there, or nothing to
    resume), the checkpoint (the newest readable one), DATA (every pixel is read)
    and the split. ``kerasssl fit`` calls it before its own first write too.

    Args:
        cfg / data_path / run_dir / resume: as for :func:`pretrain`.
        image_set: DATA already loaded (saves reading it again).
        dist: the :func:`kerasssl.distribute.setup` result (default: set up from the config).

    Returns:
        A :class:`PretrainingPlan`.

    Raises:
        KerassslError: the one-line reason the run is refused.

    Example:
        >>> plan = plan_pretraining(cfg, "data/3b", "runs/a")
        >>> plan.done, len(plan.train_idx)
        (0, 252)
    """
    from kerasssl import distribute
    from kerasssl.callbacks import has_checkpoint, load_checkpoint
    from kerasssl.data.load import check_data_path, load_images
    from kerasssl.runcheck import check_split

    check_config(cfg)
    if dist is None:
        dist = distribute.setup(cfg.pretrain.strategy, cfg.pretrain.cpu_devices)
    p = cfg.pretrain
    run_dir = _worker_run_dir(dist, Path(run_dir), resume)
    ckpt_dir = run_dir / "checkpoints"
    has_encoder = (run_dir / "encoder.keras").exists()
    checkpoint, done = None, 0
    if resume:
        checkpoint = load_checkpoint(ckpt_dir)  # the newest readable one (one warning if it skipped one)
        if checkpoint is None:
            raise KerassslError(f"{ckpt_dir}: no checkpoint to resume from; start without --resume")
        done = int(checkpoint["meta"]["epoch"])
        if done > p.epochs or (done == p.epochs and has_encoder):
            raise KerassslError(f"{run_dir}: already trained {done} epoch(s); raise --epochs to continue")
    elif has_checkpoint(ckpt_dir) or has_encoder:
        raise KerassslError(f"{run_dir}: already holds a pretraining run; use --resume or a new --run-dir")

    if image_set is None:
        check_data_path(data_path)
        image_set = load_images(data_path, **cfg.data.read_options())
    split = check_split(run_dir, image_set, cfg.data)
    train_idx = split.indices(image_set, "train")
    val_idx = split.indices(image_set, "val")
    if len(train_idx) < 2:
        raise KerassslError(f"{data_path}: the train split has {len(train_idx)} image(s); need at least 2")
    batch_size = p.batch_size
    if batch_size > len(train_idx):
        log.warning("batch size %d > %d training images: using %d", batch_size, len(train_idx), len(train_idx))
        batch_size = len(train_idx)
    if dist.distribution is not None and batch_size % dist.num_replicas:
        # keras.distribution.DataParallel shards each batch evenly over the devices.
        raise KerassslError(f"--batch-size {batch_size} must be a multiple of the {dist.num_replicas} "
                            "devices of --strategy mirrored under JAX")
    steps_per_epoch = p.steps_per_epoch or max(len(train_idx) // batch_size, 1)
    return PretrainingPlan(run_dir=run_dir, image_set=image_set, split=split, train_idx=train_idx,
                           val_idx=val_idx, checkpoint=checkpoint, done=done,
                           finish_only=resume and done == p.epochs, batch_size=batch_size,
                           steps_per_epoch=steps_per_epoch)


def pretrain(cfg: RunConfig, data_path, run_dir, resume=False, verbose=1, *, image_set=None,
             on_accepted: Optional[Callable[[Path], None]] = None, plan: Optional[PretrainingPlan] = None):
    """Pretrain ``cfg.pretrain.encoder`` with ``cfg.pretrain.method`` on DATA's train split.

    Nothing is written until every check passed (:func:`plan_pretraining`, then
    the model is built and the checkpoint restored): a refused run leaves no
    run directory, or another run's directory as it was.

    Args:
        cfg: the resolved run config (with ``resume``, pass :func:`resume_config`'s).
        data_path: the data folder or TFRecord shards (anything ``check_data_path`` accepts).
        run_dir: the run directory (created).
        resume: continue from ``RUN/checkpoints`` (the newest readable checkpoint);
            a run killed after its last checkpoint only gets its encoder written.
        verbose: Keras progress output (1 = progress bar, 2 = one line per epoch, 0 = none).
        image_set: DATA already loaded (saves reading it again).
        on_accepted: called with the run directory once the run is accepted,
            before the first write (the CLI records its command line there).
        plan: what :func:`plan_pretraining` returned for these same arguments
            (``fit`` checks before its own writes and passes it on, so each check
            and warning happens once); default: plan here.

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
        EpochCheckpoint,
        LearningRateLogger,
        NonFiniteLossGuard,
        ScalarEventWriter,
        load_checkpoint_meta,
        nonfinite_hint,
        restore_checkpoint,
    )
    from kerasssl.data.pipeline import make_dataset
    from kerasssl.data.split import load_or_create_split

    check_config(cfg)
    # Data parallelism (tf.distribute / keras.distribution) before any TF op.
    dist = distribute.setup(cfg.pretrain.strategy, cfg.pretrain.cpu_devices)
    if plan is None:
        plan = plan_pretraining(cfg, data_path, run_dir, resume=resume, image_set=image_set, dist=dist)
    run_dir, image_set = plan.run_dir, plan.image_set
    ckpt_dir = run_dir / "checkpoints"
    p = cfg.pretrain
    train_images = image_set.images[plan.train_idx]
    input_shape = tuple(train_images.shape[1:])

    keras.utils.set_random_seed(cfg.seed)
    preprocess, new_preprocess = _make_preprocess(cfg, run_dir, train_images, resume)
    with dist.scope():  # variables mirrored / sharded; Keras then splits each global batch
        model = build_pretraining_model(cfg, input_shape, preprocess, steps_per_epoch=plan.steps_per_epoch)
        if dist.num_replicas > 1 and p.sync_batchnorm:
            distribute.synchronize_batchnorm(model)  # global-batch BN statistics (TF)
        history = {}
        if plan.checkpoint:
            meta = restore_checkpoint(model, ckpt_dir, checkpoint=plan.checkpoint)
            plan.checkpoint = None  # its arrays are in the model now
            history = {k: list(v) for k, v in meta["history"].items()}

    # Accepted: from here on the run writes.
    if on_accepted is not None:
        on_accepted(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    split = load_or_create_split(run_dir, image_set, cfg.data)
    cfg.save(run_dir / CONFIG_FILE)
    if new_preprocess:
        preprocess.preprocess_to_json(run_dir / "preprocess.json")
    if plan.finish_only:
        log.info("%s: all %d epochs are checkpointed; writing the encoder", run_dir, plan.done)
        return _finish(model, cfg, input_shape, run_dir, history, dist, train_images)
    if plan.done:
        log.info("resuming %s after epoch %d", run_dir, plan.done)

    # Full batches only (BatchNorm and the contrastive losses dislike a tiny
    # last batch); repeat so steps_per_epoch may exceed one pass. The shuffle
    # seed moves with the epoch so a resumed run sees fresh orders.
    dataset = make_dataset(train_images, batch_size=plan.batch_size, shuffle=True,
                           seed=cfg.seed + 1000 * plan.done, repeat=True, drop_remainder=True)

    def write_history(epoch, hist):
        write_json_atomic(run_dir / "history.json", hist)

    guard = NonFiniteLossGuard()
    callbacks = [LearningRateLogger()]
    probe = _probe_callback(cfg, image_set, split, plan.train_idx, plan.val_idx)
    if probe is not None:
        callbacks.append(probe)
    callbacks += [
        guard,
        EpochCheckpoint(ckpt_dir, history=history, on_saved=write_history),
        ScalarEventWriter(run_dir / "tensorboard"),
    ]
    model.fit(dataset, epochs=p.epochs, initial_epoch=plan.done, steps_per_epoch=plan.steps_per_epoch,
              callbacks=callbacks, verbose=verbose, shuffle=False)
    if guard.failure:
        last = load_checkpoint_meta(ckpt_dir)
        kept = f"last good checkpoint: epoch {last['epoch']}" if last else "no checkpoint was written"
        hint = nonfinite_hint(train_images, cfg.data.normalization)
        raise KerassslError(f"pretraining stopped: {guard.failure}; {kept}; {hint}")
    return _finish(model, cfg, input_shape, run_dir, history, dist, train_images)


def _finish(model, cfg, input_shape, run_dir, history, dist, train_images):
    """The end of every run: RUN/encoder.keras (with what trained it) and the final RUN/history.json."""
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

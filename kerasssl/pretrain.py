"""Self-supervised pretraining, orchestrated: data -> split -> preprocess -> method -> fit -> run dir.

``pretrain(cfg, data_path, run_dir, resume=False)`` writes into ``RUN/``:

- ``config.yaml``: the full resolved :class:`kerasssl.config.RunConfig`;
- ``split.json`` (via :mod:`kerasssl.data.split`): pretraining sees the
  TRAIN split's images only; validation feeds the kNN probe; test is never read;
- with unlabeled pools (``pretrain.unlabeled``, ``--unlabeled``; DATA then
  optional): ``pools.json`` (+ ``skipped_files.txt``, see :mod:`kerasssl.poolplan`).
  The pools are streamed with the train split (:mod:`kerasssl.data.poolstream`),
  never loaded whole; pool images equal to a val/test image are left out (leak guard);
- ``preprocess.json``: the in-model NaN repair + normalisation;
- ``checkpoints/``: one atomic checkpoint per good epoch, and with
  ``pretrain.checkpoint_every`` (``--checkpoint-every N``) one every N steps
  within an epoch, the last two kept (see :mod:`kerasssl.checkpoints`);
- ``history.json``: per-epoch ``loss``, ``embedding_std``, ``learning_rate``,
  ``val_knn_auc`` (lists) and ``step_loss`` (per epoch, the list of its
  steps' losses), rewritten after each epoch;
- ``tensorboard/``: the same scalars for TensorBoard;
- ``encoder.keras``: the backbone alone (float32 policy), which takes
  *preprocessed* images (classifier = Preprocess -> encoder -> head).

Nothing is written before every check passed (:func:`plan_pretraining`):
a refused run creates no run directory and leaves another run's as it was.
The run directory's files are named by :class:`kerasssl.rundir.RunDir`.

``resume=True`` restores the newest readable checkpoint (weights, optimizer
state, the method's state, augmentation RNG state, epoch, step, history; a
truncated newest one is skipped with a warning) and continues to ``epochs``;
a crash or ``kill -9`` loses at most the steps since the last checkpoint (the
epoch in progress without ``checkpoint_every``), and a run killed after its
last checkpoint only gets ``encoder.keras`` written. Each epoch's data order
follows from ``(seed, epoch)`` alone (:func:`kerasssl.data.pipeline.epoch_batches`)
and a resumed epoch skips the batches its checkpoint had trained, so a resumed
run sees the batches an uninterrupted one would: its loss curve continues the
same (exactly, on CPU; tested). A NaN/Inf loss stops the run
with a one-line :class:`KerassslError` (what to try, see
:func:`kerasssl.callbacks.nonfinite_hint`) and leaves the last good checkpoint;
with ``pretrain.debug_nans`` (``--debug-nans``) every tensor of each step is
checked and the error names the first non-finite one (:mod:`kerasssl.nandebug`).

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
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from kerasssl.config import PRECISIONS, RunConfig, parse_jit_compile
from kerasssl.errors import KerassslError
from kerasssl.rundir import RunDir, save_keras_atomic, write_json_atomic

log = logging.getLogger(__name__)


def set_precision(precision):
    """Set the global Keras dtype policy (call BEFORE building models)."""
    import keras

    if precision not in PRECISIONS:
        raise KerassslError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    keras.mixed_precision.set_dtype_policy(precision)


def resolve_jit_compile(value):
    """"auto" -> XLA on accelerators (and always under JAX, whose trainer needs jit), off on CPU."""
    import keras

    value = parse_jit_compile(value)
    if value != "auto":
        return value
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


def check_components(cfg):
    """Check the config (every section's ``validate``) and that its method and encoder exist.

    The names are looked up in the registries here, not in :mod:`kerasssl.config`,
    which stays free of Keras.

    Raises:
        KerassslError: one line naming the key or the unknown name.
    """
    from kerasssl import methods
    from kerasssl.encoders import available

    cfg.validate()
    p = cfg.pretrain
    methods.get(p.method)
    if p.encoder.lower() not in available():
        raise KerassslError(f"unknown encoder {p.encoder!r}; choose from {', '.join(available())}")


def setup_distribution(cfg):
    """The data-parallel engine ``cfg.pretrain`` asks for, set up (:func:`kerasssl.distribute.setup`).

    :func:`plan_pretraining` (so :func:`pretrain`) and :func:`kerasssl.fit.fit` call
    it before they read any data: logical CPU devices and collective ops can only
    be configured before the first TensorFlow op. Repeated calls with the same
    settings return the same object.
    """
    from kerasssl import distribute

    return distribute.setup(cfg.pretrain.strategy, cfg.pretrain.cpu_devices)


def resume_config(run_dir, epochs=None, given=None):
    """The config of an existing run for ``--resume``: saved config, only ``epochs`` may rise.

    Args:
        run_dir: the run directory (must hold config.yaml and checkpoints).
        epochs: new total epoch count, or None to keep the saved one.
        given: other settings the caller was given, ``{name: value}`` (None =
            not given; the CLI names its flags): any given one is refused, as
            a resumed run keeps its saved config.

    Example:
        >>> cfg = resume_config("runs/a", epochs=20)
    """
    changed = [name for name, value in (given or {}).items() if value is not None]
    if changed:
        raise KerassslError(f"with --resume the run's saved config is used; only --epochs may be given "
                            f"(got {', '.join(changed)})")
    cfg = RunConfig.from_run(run_dir)
    if cfg is None:
        path = RunDir(run_dir).config
        raise KerassslError(f"{path}: nothing to resume (no {path.name} in the run directory)")
    if epochs is not None:
        if epochs < cfg.pretrain.epochs:
            raise KerassslError(
                f"--epochs {epochs} is below the run's {cfg.pretrain.epochs}; on resume epochs may only be raised"
            )
        cfg = cfg.with_overrides({"pretrain.epochs": int(epochs)})
    return cfg


def _probe_callback(cfg, image_set, split, train_idx, val_idx):
    from kerasssl.callbacks import KNNProbe

    if not cfg.pretrain.knn_monitor or len(val_idx) < 2 or len(image_set.class_names) < 2:
        return None
    labelled = split.indices(image_set, "labeled") if split.labeled else train_idx
    labels = image_set.labels
    if len(np.unique(labels[val_idx])) < 2 or len(np.unique(labels[labelled])) < 2:
        return None
    return KNNProbe(image_set.images[labelled], labels[labelled], image_set.images[val_idx], labels[val_idx],
                    seed=cfg.seed, recalibrate=cfg.pretrain.recalibrate_batchnorm,
                    batch_size=cfg.pretrain.batch_size)


def save_encoder(model, cfg, input_shape, path, train_images=None, pool_fingerprints=None,
                 calibration_images=None):
    """Save the backbone alone under the float32 policy (``RUN/encoder.keras``), atomically.

    With ``train_images`` (the images pretraining saw), their content
    fingerprints go inside the file (:mod:`kerasssl.fingerprints`): every
    classifier fine-tuned from this encoder carries them, so ``evaluate``
    refuses them in any run. ``pool_fingerprints`` (uint8 (N, 16)) are those of
    the unlabeled pool images it saw, stored with them (16 bytes per image).
    With ``calibration_images`` (raw training images), the saved encoder's
    BatchNorm statistics are recomputed over them first
    (:func:`kerasssl.batchnorm.recalibrate_batch_norm`, through ``model.preprocess``).
    """
    import keras

    from kerasssl.batchnorm import recalibrate_batch_norm
    from kerasssl.encoders import build_encoder
    from kerasssl.fingerprints import TrainingFingerprints, fingerprints

    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        encoder = build_encoder(cfg.pretrain.encoder, input_shape)
        encoder.set_weights(model.encoder.get_weights())
        if calibration_images is not None:
            done = recalibrate_batch_norm(encoder, calibration_images, preprocess=model.preprocess,
                                          batch_size=cfg.pretrain.batch_size, seed=cfg.seed)
            if done:
                log.info("BatchNorm statistics of the encoder recomputed over %(images)d training image(s) "
                         "(%(layers)d layer(s))", done)
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    rows = [fingerprints(train_images)] if train_images is not None and len(train_images) else []
    if pool_fingerprints is not None:
        rows.append(np.asarray(pool_fingerprints, np.uint8))
    trained_on = TrainingFingerprints({"pretrain": np.concatenate(rows)}) if rows else None
    save_keras_atomic(encoder, path, finish=None if trained_on is None
                      else lambda tmp: trained_on.write(tmp, role="encoder"))
    return encoder


@dataclasses.dataclass
class PretrainingPlan:
    """What :func:`plan_pretraining` found: all that :func:`pretrain` needs before its first write.

    Args:
        run_dir: the :class:`kerasssl.rundir.RunDir` this process writes (RUN, or a
            worker's private copy).
        image_set / split: the data and the split the run will record.
        train_idx / val_idx: rows of the train and validation splits.
        checkpoint: the checkpoint to resume from (:func:`kerasssl.checkpoints.load_checkpoint`), or None.
        done: epochs already trained.
        step: steps of the next epoch already trained (a mid-epoch checkpoint), else 0.
        finish_only: every epoch is trained but ``encoder.keras`` was never written
            (killed after the last checkpoint): only the encoder and history are left to write.
        batch_size / steps_per_epoch: as the run will use them.
        dist: the :class:`kerasssl.distribute.Distribution` it runs under.
        pools: the unlabeled pools (:class:`kerasssl.poolplan.PoolPlan`), or None.
        input_shape: (H, W, C) of the images pretraining takes.
    """

    run_dir: RunDir
    image_set: object
    split: object
    train_idx: np.ndarray
    val_idx: np.ndarray
    checkpoint: Optional[dict]
    done: int
    finish_only: bool
    batch_size: int
    steps_per_epoch: int
    dist: object = None
    pools: Optional[object] = None
    input_shape: Optional[tuple] = None
    step: int = 0


def plan_pretraining(cfg: RunConfig, data_path, run_dir, *, resume=False, image_set=None, dist=None,
                     progress=None):
    """Every check :func:`pretrain` makes before it writes anything; writes nothing.

    Config values, the run directory (another pretraining there, or nothing to
    resume), the checkpoint (the newest readable one), DATA (every pixel is read)
    and the split, and the unlabeled pools (:func:`kerasssl.poolplan.plan_pools`:
    listings, headers, the content pass, the leak guard; on resume, a changed
    pool is refused). ``kerasssl fit`` calls it before its own first write too.

    Args:
        cfg / data_path / run_dir / resume: as for :func:`pretrain` (``data_path``
            may be None when ``cfg.pretrain.unlabeled`` names pools).
        image_set: DATA already loaded (saves reading it again).
        dist: the :func:`setup_distribution` result (default: set up here, before DATA is read).
        progress: called with one-line messages about the pools (default: logged).

    Returns:
        A :class:`PretrainingPlan`.

    Raises:
        KerassslError: the one-line reason the run is refused.

    Example:
        >>> plan = plan_pretraining(cfg, "data/3b", "runs/a")
        >>> plan.done, len(plan.train_idx)
        (0, 252)
    """
    from kerasssl.checkpoints import has_checkpoint, load_checkpoint
    from kerasssl.data.load import check_data_path, load_images
    from kerasssl.data.split import check_split

    check_components(cfg)
    if dist is None:
        dist = setup_distribution(cfg)
    p = cfg.pretrain
    run_dir = _worker_run_dir(dist, RunDir(run_dir), resume)
    ckpt_dir = run_dir.checkpoints
    has_encoder = run_dir.encoder.exists()
    checkpoint, done, step = None, 0, 0
    if resume:
        checkpoint = load_checkpoint(ckpt_dir)  # the newest readable one (one warning if it skipped one)
        if checkpoint is None:
            raise KerassslError(f"{ckpt_dir}: no checkpoint to resume from; start without --resume")
        done, step = int(checkpoint["meta"]["epoch"]), int(checkpoint["meta"].get("step") or 0)
        if done > p.epochs or (done == p.epochs and has_encoder):
            raise KerassslError(f"{run_dir}: already trained {done} epoch(s); raise --epochs to continue")
    elif has_checkpoint(ckpt_dir) or has_encoder:
        raise KerassslError(f"{run_dir}: already holds a pretraining run; use --resume or a new --run-dir")

    if data_path is None and image_set is None:
        if resume and run_dir.split.exists():  # else it would go on without DATA's train split
            raise KerassslError(f"{run_dir}: this run pretrained on DATA's train split too "
                                f"({run_dir.split.name}); give DATA to resume it")
        if not p.unlabeled:
            raise KerassslError("nothing to pretrain on: give DATA or --unlabeled POOL (pretrain.unlabeled)")
        split, train_idx, val_idx = None, np.zeros(0, np.int64), np.zeros(0, np.int64)
    else:
        if image_set is None:
            check_data_path(data_path)
            image_set = load_images(data_path, **cfg.data.read_options())
        split = check_split(run_dir, image_set, cfg.data)
        train_idx = split.indices(image_set, "train")
        val_idx = split.indices(image_set, "val")
        if len(train_idx) < 2 and not p.unlabeled:
            raise KerassslError(f"{data_path}: the train split has {len(train_idx)} image(s); need at least 2")
    pools = None
    if p.unlabeled:
        from kerasssl.poolplan import plan_pools

        pools = plan_pools(cfg, run_dir, image_set=image_set, split=split, resume=resume, progress=progress)
    n_images = len(train_idx) + (pools.n_unlabeled if pools is not None else 0)
    if n_images < 2:
        raise KerassslError(f"{data_path or ', '.join(p.unlabeled)}: {n_images} image(s) to pretrain on; "
                            "need at least 2")
    input_shape = tuple(image_set.image_shape) if image_set is not None else tuple(pools.image_shape)
    batch_size = p.batch_size
    if batch_size > n_images:
        log.warning("batch size %d > %d training images: using %d", batch_size, n_images, n_images)
        batch_size = n_images
    if dist.distribution is not None and batch_size % dist.num_replicas:
        # keras.distribution.DataParallel shards each batch evenly over the devices.
        raise KerassslError(f"--batch-size {batch_size} must be a multiple of the {dist.num_replicas} "
                            "devices of --strategy mirrored under JAX")
    if dist.name == "multiworker" and batch_size % dist.num_replicas:
        # Each worker feeds its replicas per-replica batches of global batch / replicas.
        raise KerassslError(f"--batch-size {batch_size} must be a multiple of the {dist.num_replicas} "
                            "replicas of --strategy multiworker")
    steps_per_epoch = p.steps_per_epoch or max(n_images // batch_size, 1)
    saved_spe = checkpoint["meta"].get("steps_per_epoch") if checkpoint is not None else None
    if step and saved_spe != steps_per_epoch:
        raise KerassslError(f"{checkpoint['path']}: taken at step {step} of a {saved_spe}-step epoch; "
                            f"this run has {steps_per_epoch} steps per epoch")
    return PretrainingPlan(run_dir=run_dir, image_set=image_set, split=split, train_idx=train_idx,
                           val_idx=val_idx, checkpoint=checkpoint, done=done,
                           finish_only=resume and done == p.epochs, batch_size=batch_size,
                           steps_per_epoch=steps_per_epoch, dist=dist, pools=pools, input_shape=input_shape,
                           step=step)


def pretrain(cfg: RunConfig, data_path, run_dir, resume=False, verbose=1, *, image_set=None,
             on_accepted: Optional[Callable[[Path], None]] = None, plan: Optional[PretrainingPlan] = None,
             progress: Optional[Callable[[str], None]] = None):
    """Pretrain ``cfg.pretrain.encoder`` with ``cfg.pretrain.method`` on DATA's train split
    (and the unlabeled pools of ``cfg.pretrain.unlabeled``, streamed).

    Nothing is written until every check passed (:func:`plan_pretraining`, then
    the model is built and the checkpoint restored): a refused run leaves no
    run directory, or another run's directory as it was.

    Args:
        cfg: the resolved run config (with ``resume``, pass :func:`resume_config`'s).
        data_path: the data folder or TFRecord shards (anything ``check_data_path`` accepts),
            or None to pretrain on the pools alone (no split, no kNN probe).
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
        progress: called with one-line messages about the pools' checks (default: logged).

    Returns:
        The history dict (per-epoch lists), as written to ``RUN/history.json``.

    Raises:
        KerassslError: bad config or data, nothing to resume, or a NaN/Inf loss.

    Example:
        >>> history = pretrain(cfg, "data/3b", "runs/simclr")
    """
    import keras

    from kerasssl import distribute
    from kerasssl.callbacks import LearningRateLogger, NonFiniteLossGuard, ScalarEventWriter, nonfinite_hint
    from kerasssl.checkpoints import EpochCheckpoint, load_checkpoint_meta, restore_checkpoint
    from kerasssl.data.pipeline import make_dataset
    from kerasssl.data.split import load_or_create_split
    from kerasssl.layers.preprocess import load_or_create_preprocess
    from kerasssl.nandebug import NaNDebugReport

    if plan is None:  # sets up data parallelism (tf.distribute / keras.distribution) before any TF op
        plan = plan_pretraining(cfg, data_path, run_dir, resume=resume, image_set=image_set, progress=progress)
    else:
        check_components(cfg)
    run_dir, image_set, pools = plan.run_dir, plan.image_set, plan.pools
    dist = plan.dist or setup_distribution(cfg)
    ckpt_dir = run_dir.checkpoints
    p = cfg.pretrain
    train_images = image_set.images[plan.train_idx] if image_set is not None else None
    input_shape = tuple(plan.input_shape)
    # What the statistics (and the NaN hint) look at: the train split, plus the pools' seeded sample.
    seen = _stats_images(train_images, pools, input_shape)

    keras.utils.set_random_seed(cfg.seed)
    # float32: the views augment normalised pixels in full precision; the encoder
    # casts to the compute dtype itself. A new one is saved once the run is accepted.
    preprocess, new_preprocess = load_or_create_preprocess(run_dir.preprocess, cfg.data, seen,
                                                           reuse=resume, dtype="float32")
    with dist.scope():  # variables mirrored / sharded; Keras then splits each global batch
        model = build_pretraining_model(cfg, input_shape, preprocess, steps_per_epoch=plan.steps_per_epoch)
        model.debug_nans = bool(p.debug_nans)  # before fit() traces the step
        dist.prepare(model, sync_batchnorm=p.sync_batchnorm)  # per-replica draws, global-batch BN (TF)
        history = {}
        checkpoint = EpochCheckpoint(ckpt_dir, history=history, every_steps=p.checkpoint_every,
                                     steps_per_epoch=plan.steps_per_epoch,
                                     data_position=lambda epoch, step: _data_position(cfg, plan, epoch, step))
        if plan.checkpoint:
            meta = restore_checkpoint(model, ckpt_dir, checkpoint=plan.checkpoint)
            history.update({k: list(v) for k, v in meta["history"].items()})
            checkpoint.resume_from(plan.checkpoint)  # the epoch's metric sums and step losses (mid-epoch)
            plan.checkpoint = None  # its arrays are in the model now

    # Accepted: from here on the run writes.
    if on_accepted is not None:
        on_accepted(run_dir.path)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    split = load_or_create_split(run_dir, image_set, cfg.data) if image_set is not None else None
    run_dir.save_config(cfg)
    if new_preprocess:
        preprocess.preprocess_to_json(run_dir.preprocess)
    if pools is not None:
        pools.write(run_dir.path, _normalization_sample(cfg, train_images, pools))
    if plan.finish_only:
        log.info("%s: all %d epochs are checkpointed; writing the encoder", run_dir, plan.done)
        return _finish(model, cfg, input_shape, run_dir, history, dist, train_images, pools)
    if plan.done or plan.step:
        log.info("resuming %s after epoch %d, step %d", run_dir, plan.done, plan.step)

    # Full batches only (BatchNorm and the contrastive losses dislike a tiny
    # last batch); repeat so steps_per_epoch may exceed one pass. Each epoch's
    # stream is seeded by (seed, epoch): the same batches in a resumed run.
    stream_errors = None
    if pools is not None:
        from kerasssl.data.poolstream import StreamErrors, make_pretraining_dataset

        stream_errors = StreamErrors()

        def make(seed, shard, batch_size):  # one input pipeline's part (all of it on one worker)
            return make_pretraining_dataset(
                pools.scans, train_images, batch_size=batch_size, seed=seed,
                image_size=cfg.data.image_size, allow_pickle=cfg.data.allow_pickle,
                shuffle_buffer=p.shuffle_buffer, errors=stream_errors, shard=shard)
    else:
        def make(seed, shard, batch_size):
            rows = train_images if shard.whole else train_images[shard.rows(len(train_images))]
            return make_dataset(rows, batch_size=batch_size, shuffle=True, seed=seed + 104729 * shard.index,
                                repeat=True, drop_remainder=True)

    checkpoint.on_saved = lambda epoch, hist: write_json_atomic(run_dir.history, hist)
    guard = NonFiniteLossGuard()
    # First: it takes the debug step's entries out of the logs the others see.
    nan_report = NaNDebugReport(initial_step=plan.done * plan.steps_per_epoch) if p.debug_nans else None
    callbacks = ([nan_report] if nan_report is not None else []) + [LearningRateLogger()]
    probe = _probe_callback(cfg, image_set, split, plan.train_idx, plan.val_idx) if image_set is not None else None
    if probe is not None:
        callbacks.append(probe)
    events = ScalarEventWriter(run_dir.tensorboard)
    callbacks += [guard, checkpoint, events]
    # One fit per epoch, over that epoch's own stream (a resumed epoch: the steps left);
    # one callback list across them, so the progress bar counts all epochs.
    callback_list = keras.callbacks.CallbackList(callbacks, add_history=True, add_progbar=verbose != 0,
                                                 verbose=verbose, epochs=p.epochs, steps=plan.steps_per_epoch,
                                                 model=model)
    try:
        for epoch in range(plan.done, p.epochs):
            first = checkpoint.step_offset
            # Each worker (input pipeline) streams its own part: distribute.epoch_input.
            dataset = distribute.epoch_input(dist, make, cfg.seed, epoch, plan.steps_per_epoch, plan.batch_size,
                                             start_step=first)
            model.fit(dataset, epochs=epoch + 1, initial_epoch=epoch, steps_per_epoch=plan.steps_per_epoch - first,
                      callbacks=callback_list, verbose=verbose, shuffle=False)
            if guard.failure or model.stop_training:
                break
    except Exception as e:  # noqa: BLE001 - a pool file that changed mid-run: one line, not TF's traceback
        if stream_errors is None:
            raise
        if stream_errors.error is not None:
            raise stream_errors.error from None
        import tensorflow as tf

        if not isinstance(e, tf.errors.OpError):
            raise
        from kerasssl.errors import first_line

        last = load_checkpoint_meta(ckpt_dir)
        kept = _last_good(last)
        raise KerassslError(f"{', '.join(p.unlabeled)}: reading the pool failed during pretraining "
                            f"({first_line(e)}): did a file change since the run checked it? {kept}") from None
    finally:
        events.close()
    # The debug report names the first non-finite tensor (maybe a gradient, a step before the loss).
    failure = (nan_report.failure if nan_report is not None else None) or guard.failure
    if failure:
        last = load_checkpoint_meta(ckpt_dir)
        kept = _last_good(last)
        hint = nonfinite_hint(seen, cfg.data.normalization)
        raise KerassslError(f"pretraining stopped: {failure}; {kept}; {hint}")
    return _finish(model, cfg, input_shape, run_dir, history, dist, train_images, pools)


def _data_position(cfg, plan, epoch, step):
    """Where a checkpoint stands in the input stream (its record's ``data``): a resume rebuilds
    epoch ``epoch``'s (0-based) stream from its seed and skips ``batches_consumed`` batches."""
    from kerasssl.data.pipeline import epoch_seed

    return {"epoch": epoch, "batches_consumed": step, "epoch_seed": epoch_seed(cfg.seed, epoch),
            "global_batch": epoch * plan.steps_per_epoch + step, "batch_size": plan.batch_size}


def _last_good(meta):
    """The last good checkpoint, in words (for a stopped run's one-line error)."""
    if not meta:
        return "no checkpoint was written"
    return f"last good checkpoint: epoch {meta['epoch']}" + (f", step {meta['step']}" if meta.get("step") else "")


def _stats_images(train_images, pools, input_shape):
    """The train split and, with pools, their seeded sample (what ``dataset`` statistics see)."""
    parts = [x for x in (train_images, pools.sample() if pools is not None else None)
             if x is not None and len(x)]
    return np.concatenate(parts) if parts else np.zeros((0,) + tuple(input_shape), np.float32)


def _normalization_sample(cfg, train_images, pools):
    """How ``dataset`` statistics were drawn (for ``RUN/pools.json``), or None for other normalisations."""
    if cfg.data.normalization != "dataset":
        return None
    return {"train_split_images": 0 if train_images is None else int(len(train_images)),
            "pool_images": int(sum(len(s.sample) for s in pools.scans)),
            "leak_guard": "images the leak guard left out are not in the sample",
            "seed": pools.seed, "how": "seeded positions in each pool (seed + pool index), "
                                       "at most 4096 images or 256 MiB per pool"}


def _finish(model, cfg, input_shape, run_dir, history, dist, train_images, pools=None):
    """The end of every run: RUN/encoder.keras (with what trained it) and the final RUN/history.json."""
    calibration = _stats_images(train_images, pools, input_shape) if cfg.pretrain.recalibrate_batchnorm else None
    save_encoder(model, cfg, input_shape, run_dir.encoder, train_images=train_images,
                 pool_fingerprints=pools.fingerprints() if pools is not None else None,
                 calibration_images=calibration)
    write_json_atomic(run_dir.history, history)
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
    private = dist.write_path(run_dir.path)
    if resume and run_dir.path.exists():
        import shutil

        shutil.copytree(run_dir.path, private, ignore=shutil.ignore_patterns(run_dir.tensorboard.name, "*.tmp*"))
    return RunDir(private)

"""Data-parallel training through the engines that already exist.

TensorFlow backend: ``tf.distribute`` strategies. JAX backend:
``keras.distribution.DataParallel``. Nothing home-made: this module only
chooses, configures and describes the engine, so the training code stays
one path::

    dist = distribute.setup("mirrored", cpu_devices=2)
    with dist.scope():
        model = build_pretraining_model(cfg, input_shape, preprocess)
    model.fit(dataset)                    # Keras splits each global batch
    if dist.is_chief:
        write_run_files()

Strategies (``pretrain.strategy`` / ``--strategy``):

- ``none``: the default device.
- ``mirrored``: TF ``MirroredStrategy`` over the local GPUs; on a machine
  without GPU, over ``cpu_devices`` logical CPU devices (the CPU split with
  ``tf.config.set_logical_device_configuration`` before TF initialises its
  devices). JAX: ``DataParallel`` over all local devices (``cpu_devices``
  sets JAX's CPU device count, before JAX initialises).
- ``multiworker``: TF ``MultiWorkerMirroredStrategy`` configured from the
  ``TF_CONFIG`` environment variable (every worker runs the same command).

Input: :func:`epoch_input` gives ``fit`` one epoch's batches. Under
``multiworker`` each worker builds its own pipeline through
``strategy.distribute_datasets_from_function``: its own files / shard files /
train rows (:mod:`kerasssl.data.inputshard`, by ``InputContext.input_pipeline_id``
of ``num_input_pipelines``), batched to the per-replica batch (global batch /
replicas), so TF shards nothing again and no image is read by two workers in
an epoch. Under JAX with one process (``DataParallel`` over local devices) the
one process feeds every device: Keras splits each global batch, there is
nothing to shard. With multi-process JAX (``jax.process_count() > 1``, after
``jax.distributed.initialize``) each process reads its own part the same way
(``jax.process_index()``), in per-process batches, and Keras's own
element-level sharding is turned off (``auto_shard_dataset=False``).

SimCLR's negatives come from the whole global batch: :func:`gather_replicas`
all-gathers projections inside a ``tf.distribute`` replica context
(``ReplicaContext.all_gather`` is differentiable: its gradient all-reduces
the incoming gradient and hands each replica its own slice, so the summed
per-replica gradients equal the one-device gradient). Under JAX the step
already sees the global (sharded) batch, so nothing needs gathering.

Example:
    >>> dist = setup("mirrored", cpu_devices=2)
    >>> dist.num_replicas
    2
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
from keras import ops

from kerasssl.config import STRATEGIES
from kerasssl.errors import KerassslError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Device set-up (must happen before the backend initialises its devices)
# ---------------------------------------------------------------------------
def configure_cpu_devices(n):
    """Split the host CPU into ``n`` logical devices for the current backend.

    TensorFlow: ``tf.config.set_logical_device_configuration`` on the physical
    CPU. JAX: ``jax_num_cpu_devices``. Either only works before the backend has
    initialised its devices; if it already has, the call succeeds only when the
    device count already equals ``n``.

    Args:
        n: number of logical CPU devices (>= 1).

    Returns:
        The names of the logical CPU devices.

    Example:
        >>> configure_cpu_devices(2)
        ['/device:CPU:0', '/device:CPU:1']
    """
    n = int(n)
    if n < 1:
        raise KerassslError(f"--cpu-devices must be >= 1, got {n}")
    if keras.backend.backend() == "jax":
        return _configure_jax_cpus(n)
    if keras.backend.backend() != "tensorflow":
        raise KerassslError(f"--cpu-devices needs the tensorflow or jax backend, not {keras.backend.backend()}")
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        # TF already initialised its devices (something ran a TF op first).
        have = tf.config.list_logical_devices("CPU")
        if len(have) != n:
            raise KerassslError(
                f"cannot split the CPU into {n} devices: TensorFlow already initialised "
                f"{len(have)}; set it up before any TensorFlow work"
            ) from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _configure_jax_cpus(n):
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        pass  # backend already up: check the count below
    cpus = jax.devices("cpu")
    if len(cpus) != n:
        raise KerassslError(
            f"cannot split the CPU into {n} devices: JAX already initialised {len(cpus)}; "
            "set it up before any JAX work"
        )
    return [str(d) for d in cpus]


def read_tf_config(environ=None):
    """Parse and check ``TF_CONFIG`` (cluster + this task) for multiworker.

    Args:
        environ: mapping to read from (default ``os.environ``).

    Returns:
        The parsed dict with ``cluster`` and ``task``.

    Example:
        >>> read_tf_config({"TF_CONFIG": '{"cluster": {"worker": ["h:1", "h:2"]},'
        ...                 ' "task": {"type": "worker", "index": 0}}'})["task"]["index"]
        0
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG")
    if not raw:
        raise KerassslError("--strategy multiworker needs TF_CONFIG (cluster and task) in the environment")
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as e:
        raise KerassslError(f"TF_CONFIG is not valid JSON ({e.msg})") from None
    cluster = conf.get("cluster") if isinstance(conf, dict) else None
    task = conf.get("task") if isinstance(conf, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise KerassslError("TF_CONFIG has no 'cluster' mapping of job name -> addresses")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise KerassslError("TF_CONFIG has no 'task' with 'type' and 'index'")
    jobs = cluster.get(task["type"])
    if not isinstance(jobs, list) or not 0 <= int(task["index"]) < len(jobs):
        raise KerassslError(f"TF_CONFIG task {task['type']}:{task['index']} is not in the cluster")
    return conf


def _is_chief_task(conf):
    task_type, index = conf["task"]["type"], int(conf["task"]["index"])
    if "chief" in conf["cluster"]:
        return task_type == "chief"
    return task_type == "worker" and index == 0


# ---------------------------------------------------------------------------
# The set-up object the training code uses
# ---------------------------------------------------------------------------
@dataclass
class Distribution:
    """What :func:`setup` chose: engine, replica count, whether this process writes.

    Args:
        name: "none", "mirrored" or "multiworker".
        backend: Keras backend name.
        strategy: the ``tf.distribute.Strategy`` (TF backend), else None.
        distribution: the ``keras.distribution.Distribution`` (JAX), else None.
        num_replicas: replicas that share each global batch.
        is_chief: whether this process writes checkpoints and run files.
        task_id: this worker's index (multiworker) or JAX process, else 0.

    Example:
        >>> dist = setup("none")
        >>> with dist.scope():
        ...     model = build_model()
    """

    name: str = "none"
    backend: str = "tensorflow"
    strategy: Any = None
    distribution: Any = None
    num_replicas: int = 1
    is_chief: bool = True
    task_id: int = 0
    _temp_dirs: list = field(default_factory=list, repr=False)

    def scope(self):
        """Context in which to build and compile the model (variables placed/mirrored)."""
        if self.strategy is not None:
            return self.strategy.scope()
        return contextlib.nullcontext()

    def prepare(self, model, sync_batchnorm=True):
        """Adapt a model built in :meth:`scope` to its replicas; nothing to do on one.

        Every random Keras layer draws its own numbers per replica
        (:func:`draw_per_replica`) and, with ``sync_batchnorm``, BatchNorm uses
        global-batch statistics (:func:`synchronize_batchnorm`).

        Args:
            model: the model about to train.
            sync_batchnorm: all-reduce BatchNorm moments (``pretrain.sync_batchnorm``).

        Returns:
            ``{"random_layers": n, "batchnorm": m}``: what was switched.

        Example:
            >>> with dist.scope():
            ...     model = build_pretraining_model(cfg, (64, 64, 3), preprocess)
            >>> dist.prepare(model)
            {'random_layers': 9, 'batchnorm': 50}
        """
        if self.num_replicas == 1:
            return {"random_layers": 0, "batchnorm": 0}
        return {"random_layers": draw_per_replica(model),
                "batchnorm": synchronize_batchnorm(model) if sync_batchnorm else 0}

    def write_path(self, path):
        """Where this process should write ``path``.

        The chief writes the real path. Other workers must still run the same
        save code (saving can read variables that need every worker) but into a
        private temporary folder, removed by :meth:`cleanup`.

        Args:
            path: the run-directory path the chief writes.

        Example:
            >>> model.save(dist.write_path(run.encoder))
        """
        path = Path(path)
        if self.is_chief:
            return path
        tmp = Path(tempfile.mkdtemp(prefix=f"kerasssl-worker{self.task_id}-"))
        self._temp_dirs.append(tmp)
        return tmp / path.name

    def cleanup(self):
        """Remove the temporary folders non-chief workers wrote into."""
        while self._temp_dirs:
            shutil.rmtree(self._temp_dirs.pop(), ignore_errors=True)

    def describe(self):
        """A one-line summary for logs and the run record."""
        return f"{self.name} ({self.backend}, {self.num_replicas} replica(s), chief={self.is_chief})"


def setup(name="none", cpu_devices=None):
    """Choose and configure the data-parallel engine for the current backend.

    Call this before any other TensorFlow/JAX work in the process when
    ``cpu_devices`` is given (logical CPU devices must be set up before the
    backend initialises). Under JAX a multi-device ``DataParallel`` is set as
    the global Keras distribution (``keras.distribution.set_distribution``),
    since the JAX trainer reads it both when variables are created and when
    batches are sharded.

    Args:
        name: "none", "mirrored" or "multiworker".
        cpu_devices: split the CPU into this many logical devices (for
            ``mirrored`` on a machine without GPU, and for tests).

    Returns:
        A :class:`Distribution`.

    Example:
        >>> dist = setup("mirrored", cpu_devices=2)
        >>> dist.num_replicas
        2
    """
    name = str(name or "none").lower()
    if name not in STRATEGIES:
        raise KerassslError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    backend = keras.backend.backend()
    key = (backend, name, None if cpu_devices is None else int(cpu_devices))
    # A CLI sets the engine up first thing (before any TF op: logical devices
    # and collective ops can only be configured then); the library's later
    # call for the same settings gets the same object.
    if _ACTIVE.get("key") == key:
        return _ACTIVE["dist"]
    if cpu_devices is not None and int(cpu_devices) > 1 and name == "none":
        log.warning("--cpu-devices %s has no effect with --strategy none", cpu_devices)
    if backend == "jax":
        dist = _setup_jax(name, cpu_devices)
    elif backend == "tensorflow":
        dist = _setup_tf(name, cpu_devices)
    else:
        raise KerassslError(f"distribution needs the tensorflow or jax backend, not {backend}")
    _ACTIVE.update(key=key, dist=dist)
    return dist


# The Distribution made by the last setup() call and its settings.
_ACTIVE = {}


def _setup_tf(name, cpu_devices):
    import tensorflow as tf

    if name == "none":
        return Distribution("none", "tensorflow")
    if name == "multiworker":
        conf = read_tf_config()
        # The cluster resolver reads TF_CONFIG itself; collectives over gRPC.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _fix_keras_multiworker_metric_reduce()
        _fix_multiworker_structure_reduce(strategy)
        dist = Distribution(
            "multiworker",
            "tensorflow",
            strategy=strategy,
            num_replicas=strategy.num_replicas_in_sync,
            is_chief=_is_chief_task(conf),
            task_id=int(conf["task"]["index"]),
        )
        log.info("distribution: %s", dist.describe())
        return dist
    # mirrored: the local GPUs, else the (logical) CPUs.
    if cpu_devices is not None:
        configure_cpu_devices(cpu_devices)
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) == 1:
        log.warning("--strategy mirrored found one device (%s); use --cpu-devices N to split a CPU", devices[0])
    # CPU replicas cannot use NCCL; the default (NCCL) is right for GPUs.
    cross = None if gpus else tf.distribute.ReductionToOneDevice(reduce_to_device=devices[0])
    strategy = tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=cross)
    dist = Distribution("mirrored", "tensorflow", strategy=strategy, num_replicas=strategy.num_replicas_in_sync)
    log.info("distribution: %s over %s", dist.describe(), ", ".join(devices))
    return dist


def _fix_keras_multiworker_metric_reduce():
    """Work around Keras 3 ``fit`` failing under MultiWorkerMirroredStrategy.

    Keras's TF trainer reduces each step's metric values across workers with
    ``strategy.reduce("MEAN", v, axis=0)``; the values are scalars, so every
    multi-worker ``fit`` fails with "Invalid reduction dimension 0 for input
    with 0 dimensions" (tensorflow/tensorflow#72388). Scalars are reduced with
    ``axis=None`` (an all-reduce mean over the workers) instead; everything
    else goes to Keras unchanged. A worker with one replica gets plain tensors
    back from ``strategy.run``; fed by ``distribute_datasets_from_function`` they
    may carry no device, which ``strategy.reduce`` needs: they are placed on the
    worker's device first.
    """
    import tensorflow as tf
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_kerasssl_fixed", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            flat = tree.flatten(values)
            if all(getattr(v, "shape", None) is not None and v.shape.rank == 0 for v in flat):
                device = strategy.extended.worker_devices[0]

                def mean(v):
                    if not isinstance(v, tf.distribute.DistributedValues) and not getattr(v, "device", ""):
                        with tf.device(device):
                            v = tf.identity(v)
                    return strategy.reduce("MEAN", v, axis=None)

                return tree.map_structure(mean, values)
        return original(values, strategy, reduction)

    reduce_per_replica._kerasssl_fixed = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def _fix_multiworker_structure_reduce(strategy):
    """Let ``strategy.reduce`` take a structure of per-replica values under multiworker.

    Keras's TF ``fit`` reduces the first distributed batch, ``(x, y, sample_weight)``,
    with one ``strategy.reduce("MEAN", batch, axis=None)`` to build the model; the
    multi-worker strategy only reduces single values and fails converting the tuple
    ("Attempt to convert a value (PerReplica ...)"), so fine-tuning (arrays with
    labels) could not start, while pretraining (a batch of images alone) could.
    Each leaf is reduced on its own instead, in the same order on every worker.
    """
    from keras import tree

    original = strategy.reduce
    if getattr(original, "_kerasssl_fixed", False):
        return

    def reduce(reduce_op, value, axis):
        if isinstance(value, (tuple, list, dict)):
            return tree.map_structure(lambda v: original(reduce_op, v, axis), value)
        return original(reduce_op, value, axis)

    reduce._kerasssl_fixed = True
    strategy.reduce = reduce


def _setup_jax(name, cpu_devices):
    import jax

    if name == "multiworker":
        raise KerassslError(
            "--strategy multiworker uses TF_CONFIG and tf.distribute: run it with KERAS_BACKEND=tensorflow"
        )
    if name == "none":
        return Distribution("none", "jax")
    if cpu_devices is not None:
        configure_cpu_devices(cpu_devices)
    devices = keras.distribution.list_devices()
    if len(devices) == 1:
        log.warning("--strategy mirrored found one JAX device; use --cpu-devices N to split a CPU")
        return Distribution("mirrored", "jax")
    # Several processes: each feeds its own part (epoch_input), so Keras must not shard again.
    processes = jax.process_count()
    distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=processes == 1)
    keras.distribution.set_distribution(distribution)
    dist = Distribution("mirrored", "jax", distribution=distribution, num_replicas=len(devices),
                        is_chief=jax.process_index() == 0, task_id=jax.process_index())
    log.info("distribution: %s", dist.describe())
    return dist


# ---------------------------------------------------------------------------
# Input: one epoch of batches, each input pipeline reading its own part
# ---------------------------------------------------------------------------
def input_shard(dist):
    """The input pipeline this process is, outside ``distribute_datasets_from_function``.

    Multi-process JAX: ``jax.process_index()`` of ``jax.process_count()``. Anything
    else (one device, ``mirrored``, one JAX process): the only pipeline. (Under
    ``multiworker`` the strategy hands each worker its ``InputContext``; see
    :func:`epoch_input`.)

    Example:
        >>> input_shard(setup("none"))
        InputShard(index=0, count=1)
    """
    from kerasssl.data.inputshard import InputShard

    if dist is not None and dist.backend == "jax" and dist.distribution is not None:
        import jax

        return InputShard(jax.process_index(), jax.process_count())
    return InputShard()


def epoch_input(dist, make, seed, epoch, steps_per_epoch, global_batch, start_step=0):
    """What ``model.fit`` gets for one epoch: each input pipeline's own batches.

    ``make(seed, shard, batch_size)`` builds an endless, deterministic dataset of
    ``batch_size`` batches of the part of the data that ``shard``
    (:class:`kerasssl.data.inputshard.InputShard`) reads. Every pipeline takes its
    ``steps_per_epoch`` batches of the epoch from ``make(epoch_seed(seed, epoch), ...)``
    and skips the ``start_step`` already trained
    (:func:`kerasssl.data.pipeline.epoch_batches`): the resume semantics hold per worker.

    - ``multiworker``: ``strategy.distribute_datasets_from_function``; each worker
      batches ``per-replica batch x local replicas`` (= global batch / workers) and
      splits it into per-replica batches (``rebatch``), so one step takes one batch
      from each worker and the workers' images are disjoint;
    - multi-process JAX: this process's part, in batches of global batch / processes
      (Keras assembles the global batch across processes);
    - otherwise: the whole data in global batches (Keras splits them over local replicas).

    Args:
        dist: the :class:`Distribution` (None: one device).
        make: ``fn(seed, shard, batch_size) -> tf.data.Dataset`` of batches, endless.
        seed: the run's data seed.
        epoch: 0-based epoch.
        steps_per_epoch: global steps per epoch.
        global_batch: images per step, all replicas together.
        start_step: steps of the epoch already trained.

    Example:
        >>> ds = epoch_input(dist, lambda s, shard, b: make_pretraining_dataset(
        ...     scans, x, batch_size=b, seed=s, shard=shard), 0, epoch, 100, 64)
        >>> model.fit(ds, steps_per_epoch=100)
    """
    from kerasssl.data import pipeline
    from kerasssl.data.inputshard import InputShard

    global_batch = int(global_batch)
    if dist is not None and dist.name == "multiworker" and dist.strategy is not None:
        def dataset_fn(context):
            shard = InputShard.from_input_context(context)
            per_replica = context.get_per_replica_batch_size(global_batch)
            local = context.num_replicas_in_sync // context.num_input_pipelines
            log.info("%s: per-replica batch %d, %d local replica(s)", shard, per_replica, local)
            ds = pipeline.epoch_batches(lambda s: make(s, shard, per_replica * local), seed, epoch,
                                        steps_per_epoch, start_step)
            return ds.rebatch(per_replica) if local > 1 else ds

        return dist.strategy.distribute_datasets_from_function(dataset_fn)
    shard = input_shard(dist)
    if global_batch % shard.count:
        raise KerassslError(f"--batch-size {global_batch} must be a multiple of the {shard.count} processes")
    return pipeline.epoch_batches(lambda s: make(s, shard, global_batch // shard.count), seed, epoch,
                                  steps_per_epoch, start_step)


# ---------------------------------------------------------------------------
# Helpers used inside the training step (backend-agnostic callers)
# ---------------------------------------------------------------------------
def _tf_replica_context():
    """The TF replica context when the step runs replicated (>1 replica), else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return None
    return ctx


def num_replicas_in_step():
    """Replicas sharing the current step's global batch (1 outside tf.distribute)."""
    ctx = _tf_replica_context()
    return 1 if ctx is None else int(ctx.num_replicas_in_sync)


def gather_replicas(*tensors):
    """All-gather tensors along axis 0 across the replicas of the current step.

    Inside a ``tf.distribute`` replica context with more than one replica this
    returns the global tensors (replica order) and the row offset of this
    replica's own rows in them. Elsewhere (one device, or JAX where the step
    already sees the global sharded batch) it returns ``None`` for every
    tensor and offset 0, meaning "the local tensors are the global ones".

    The gather is differentiable (TF's ``all_gather`` has a custom gradient
    that all-reduces and slices), so a loss that uses the gathered tensors
    gets the same summed gradient as on one device.

    Args:
        *tensors: tensors with the same leading (batch) dimension.

    Returns:
        (list of gathered tensors or Nones, offset scalar).

    Example:
        >>> (all_z1, all_z2), offset = gather_replicas(z1, z2)
        >>> loss = losses.nt_xent(z1, z2, 0.2, all_z1=all_z1, all_z2=all_z2, offset=offset)
    """
    ctx = _tf_replica_context()
    if ctx is None:
        return [None] * len(tensors), 0
    import tensorflow as tf

    gathered = ctx.all_gather(list(tensors), axis=0)
    # Offset of this replica's rows = sum of the batch sizes of the replicas
    # before it (sizes gathered too, so uneven final batches stay right).
    sizes = ctx.all_gather(tf.shape(tensors[0])[:1], axis=0)
    offset = tf.reduce_sum(sizes[: ctx.replica_id_in_sync_group])
    return list(gathered), offset


def scale_loss_for_replicas(loss):
    """Divide a per-replica loss by the replica count inside tf.distribute.

    Keras's TF trainer sums gradients over replicas and multiplies the logged
    loss back by the replica count, so a model that overrides
    ``compute_loss`` must return ``loss / num_replicas`` (what Keras's own
    ``compute_loss`` does) for gradients and logs to match one device.

    Args:
        loss: scalar loss of this replica's part of the batch.

    Example:
        >>> return scale_loss_for_replicas(loss)
    """
    n = num_replicas_in_step()
    if n == 1:
        return loss
    return ops.multiply(loss, ops.cast(1.0 / n, loss.dtype))


def synchronize_batchnorm(model):
    """Make every BatchNormalization layer of ``model`` use global-batch statistics.

    Under ``tf.distribute`` each replica otherwise normalises with its local
    batch's mean and variance (SimCLR's "global BN" fixes an information leak
    through per-device statistics). Keras's ``synchronized=True`` all-reduces
    the moments; it exists on the TensorFlow backend only. Under JAX
    ``DataParallel`` the moments are already global, so this is a no-op there.

    Args:
        model: a built or unbuilt Keras model/layer.

    Returns:
        The number of BatchNormalization layers switched.

    Example:
        >>> synchronize_batchnorm(model)
        12
    """
    if keras.backend.backend() != "tensorflow":
        return 0
    count = 0
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            count += 1
    return count


def draw_per_replica(model):
    """Make every Keras random layer of ``model`` draw its own numbers on each replica.

    kerasssl's augmentation layers already do (:class:`kerasssl.layers.base.ReplicaSeedGenerator`);
    Keras's own random layers hold plain ``SeedGenerator`` s, whose state every
    ``tf.distribute`` replica copies, so all replicas draw the same numbers:
    EfficientNet's stochastic-depth ``Dropout`` dropped the same blocks for the
    same rows on every replica. Each such generator becomes a
    ``ReplicaSeedGenerator`` in place: the same state variable (checkpoints and
    ``get_config`` are unchanged) and, on replica 0 and a single device, the
    same stream. JAX ``DataParallel`` draws one global mask, so this is a no-op there.

    Args:
        model: a Keras model or layer, built or not.

    Returns:
        The number of seed generators switched.

    Example:
        >>> with dist.scope():
        ...     model = build_pretraining_model(cfg, (64, 64, 3), preprocess)
        >>> draw_per_replica(model)  # EfficientNetB0: its 9 stochastic-depth Dropouts
        9
    """
    if keras.backend.backend() != "tensorflow":
        return 0
    from kerasssl.layers.base import ReplicaSeedGenerator

    count = 0
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in layer._seed_generators:
            if type(generator) is keras.random.SeedGenerator:
                # ReplicaSeedGenerator only overrides next(): no new state to make or restore.
                generator.__class__ = ReplicaSeedGenerator
                count += 1
    return count


def sharded_batch_multiple():
    """Rows every batch must be a multiple of: the devices of an active JAX ``DataParallel``, else 1."""
    if keras.backend.backend() != "jax":
        return 1
    active = keras.distribution.distribution()
    if not isinstance(active, keras.distribution.DataParallel):
        return 1
    return max(1, int(active.device_mesh.devices.size))


def predict_rows(model, images, batch_size):
    """``model.predict`` on any number of rows, also under JAX ``DataParallel``.

    ``DataParallel`` shards every batch evenly over the devices, so a last
    batch (or a whole set) of another size fails; the rows are padded with
    copies of the last one to a multiple of the devices, the batch size
    rounded down to one, and the padding's predictions dropped.

    Args:
        model: a Keras model.
        images: array (N, ...).
        batch_size: prediction batch size.

    Example:
        >>> probs = predict_rows(classifier, x_val, 256)
    """
    multiple = sharded_batch_multiple()
    n = len(images)
    if multiple == 1 or n == 0:
        return model.predict(images, batch_size=batch_size, verbose=0)
    import numpy as np

    pad = -n % multiple
    padded = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)]) if pad else images
    batch = max(multiple, int(batch_size) // multiple * multiple)
    return model.predict(padded, batch_size=batch, verbose=0)[:n]

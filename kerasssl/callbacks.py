"""Training monitors and safety nets, as Keras callbacks.

Order matters: the loggers add keys to the epoch's ``logs`` dict, which
Keras hands to every callback in turn, so put them before the checkpoint
and TensorBoard callbacks (``kerasssl.pretrain`` does):

- :class:`LearningRateLogger`: ``learning_rate`` at the end of each epoch.
- :class:`KNNProbe`: ``val_knn_auc``, ROC-AUC of a kNN vote on frozen,
  L2-normalised encoder features (labelled train subset -> validation).
- :class:`NonFiniteLossGuard`: stops at the first NaN/Inf batch loss.
- :class:`ScalarEventWriter`: the epoch scalars as TensorBoard event files
  (written directly as Event protos, so the ``tensorboard`` package that
  ``tf.summary`` needs is not required).
- :class:`kerasssl.checkpoints.EpochCheckpoint` (its own module): weights +
  optimizer state + epoch + RNG state + history, written atomically to
  ``RUN/checkpoints`` after each good epoch (and every N steps).

Fine-tuning: :class:`BestValAUC` (validation ROC-AUC each epoch, the best
epoch's weights kept, early stopping).

Example:
    >>> guard = NonFiniteLossGuard()
    >>> model.fit(ds, epochs=10, callbacks=[LearningRateLogger(), guard, EpochCheckpoint(run / "checkpoints")])
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Optional

import keras
import numpy as np

from kerasssl import metrics

log = logging.getLogger(__name__)


def _current_lr(optimizer):
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to the epoch logs as ``learning_rate``.

    Example:
        >>> model.fit(ds, callbacks=[LearningRateLogger()])
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.model.optimizer is not None:
            logs["learning_rate"] = _current_lr(self.model.optimizer)


def extract_features(encoder, preprocess, images, batch_size=256):
    """Frozen features: ``encoder(preprocess(images), training=False)`` as float32 NumPy.

    Args:
        encoder: the backbone.
        preprocess: raw -> normalised layer (or None).
        images: raw (N, H, W, C) array.
        batch_size: inference batch size.

    Example:
        >>> feats = extract_features(model.encoder, model.preprocess, val_images)
    """
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        if preprocess is not None:
            x = preprocess(x)
        out.append(np.asarray(keras.ops.convert_to_numpy(encoder(x, training=False)), dtype=np.float32))
    if not out:
        return np.zeros((0, int(encoder.output_shape[-1])), np.float32)
    return np.concatenate(out)


def knn_scores(train_features, train_labels, query_features, k=20, temperature=0.1, num_classes=None):
    """Cosine kNN class scores (InstDisc-style weighted vote, exp(sim / T)).

    Args:
        train_features: (N, D) reference features.
        train_labels: (N,) int labels.
        query_features: (M, D) features to score.
        k: neighbours (capped at N).
        temperature: vote weight temperature.
        num_classes: number of classes (default max label + 1).

    Returns:
        (M, num_classes) scores summing to 1 per row.

    Example:
        >>> scores = knn_scores(f_train, y_train, f_val, k=20)
    """
    def unit(f):
        f = np.nan_to_num(np.asarray(f, np.float64))
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    a, b = unit(train_features), unit(query_features)
    labels = np.asarray(train_labels, np.int64)
    num_classes = int(num_classes or labels.max() + 1)
    k = min(int(k), len(a))
    sim = b @ a.T
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(sim, nearest, axis=1) / temperature)
    scores = np.zeros((len(b), num_classes))
    for c in range(num_classes):
        scores[:, c] = np.sum(weights * (labels[nearest] == c), axis=1)
    return scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-300)


class KNNProbe(keras.callbacks.Callback):
    """kNN probe ROC-AUC on frozen features, logged as ``val_knn_auc`` each epoch.

    Reference set: labelled training images; queries: the validation split.
    Features are ``encoder(preprocess(x), training=False)``; no training. With
    ``recalibrate``, the encoder's BatchNorm statistics are recomputed over the
    reference images for the probe and restored after it
    (:func:`kerasssl.batchnorm.recalibrated_batch_norm`): the probe then sees
    the encoder as pretraining saves it, not the lagging moving averages.

    Args:
        train_images, train_labels: raw labelled reference images (N, H, W, C), (N,).
        val_images, val_labels: raw validation images and labels.
        k: neighbours.
        every: probe every this many epochs (others log nothing).
        max_reference: subsample the reference set to at most this many images
            (seeded) to bound the per-epoch cost.
        recalibrate: recompute BatchNorm statistics for the probe (as
            ``pretrain.recalibrate_batchnorm`` does for the saved encoder).
        batch_size: the recalibration's batch size (the training batch size).

    Example:
        >>> probe = KNNProbe(x_train, y_train, x_val, y_val, k=20)
        >>> model.fit(ds, callbacks=[probe])  # history["val_knn_auc"]
    """

    def __init__(self, train_images, train_labels, val_images, val_labels, k=20, every=1, max_reference=2000, seed=0,
                 recalibrate=False, batch_size=64):
        super().__init__()
        self.recalibrate, self.batch_size, self.seed = bool(recalibrate), int(batch_size), seed
        if len(train_images) > max_reference:
            keep = np.sort(np.random.default_rng(seed).choice(len(train_images), max_reference, replace=False))
            train_images, train_labels = train_images[keep], train_labels[keep]
        self.train_images, self.train_labels = train_images, np.asarray(train_labels)
        self.val_images, self.val_labels = val_images, np.asarray(val_labels)
        self.num_classes = int(max(self.train_labels.max(), self.val_labels.max()) + 1)
        self.k = k
        self.every = max(int(every), 1)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        if not np.isfinite(logs.get("loss", 0.0)):
            return
        from kerasssl.batchnorm import recalibrated_batch_norm

        encoder, preprocess = self.model.encoder, getattr(self.model, "preprocess", None)
        probed = (recalibrated_batch_norm(encoder, self.train_images, preprocess=preprocess,
                                          batch_size=self.batch_size, seed=self.seed)
                  if self.recalibrate else contextlib.nullcontext())
        with probed:
            logs["val_knn_auc"] = self.evaluate(encoder, preprocess)

    def evaluate(self, encoder, preprocess):
        """The probe's ROC-AUC for an encoder (also used on a random baseline)."""
        f_train = extract_features(encoder, preprocess, self.train_images)
        f_val = extract_features(encoder, preprocess, self.val_images)
        scores = knn_scores(f_train, self.train_labels, f_val, k=self.k, num_classes=self.num_classes)
        # Over the classes present: a small val split may lack one (then NaN with < 2).
        return metrics.roc_auc(self.val_labels, scores, classes="present")


class BestValAUC(keras.callbacks.Callback):
    """Track validation ROC-AUC each epoch, keep the best weights, stop when it stalls.

    Args:
        images / labels: the validation split (raw pixels, int labels).
        patience: epochs without improvement before stopping (None: never stop).
        batch_size: prediction batch size.
        every: check every this many epochs (and at the last one): tiny
            labelled sets have one-step epochs, where a check per epoch would
            cost more than the training.
        recalibrate: ``(encoder, preprocess, images, batch_size)`` to check, and
            keep, each epoch's model with the encoder's trainable BatchNorm
            statistics recomputed over ``images`` (the labelled training images;
            :func:`kerasssl.batchnorm.recalibrated_batch_norm`). The kept weights
            hold those statistics, so the model returned is the one validated;
            training continues on its own moving averages. None: as trained.

    Example:
        >>> best = BestValAUC(x_val, y_val, patience=5)
        >>> model.fit(ds, epochs=50, callbacks=[best]); best.best_auc
    """

    def __init__(self, images, labels, patience: Optional[int] = None, batch_size: int = 256,
                 every: int = 1, recalibrate=None):
        super().__init__()
        self.recalibrate = recalibrate
        self.every = max(1, int(every))
        self.images = np.asarray(images, np.float32)
        self.labels = np.asarray(labels)
        self.patience = patience
        self.batch_size = batch_size
        self.history = []
        self.epochs_checked = []
        self.best_auc = -np.inf
        self.best_epoch = None
        self._best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every and not last:
            return

        from kerasssl.batchnorm import recalibrated_batch_norm
        from kerasssl.distribute import predict_rows

        if self.recalibrate is None:
            checked = contextlib.nullcontext()
        else:
            encoder, preprocess, images, batch_size = self.recalibrate
            checked = recalibrated_batch_norm(encoder, images, preprocess=preprocess, batch_size=batch_size,
                                              seed=epoch)
        with checked:
            probs = np.asarray(predict_rows(self.model, self.images, self.batch_size), np.float64)
            auc = metrics.roc_auc(self.labels, probs) if np.all(np.isfinite(probs)) else float("nan")
            better = np.isfinite(auc) and auc > self.best_auc
            if better:  # the weights as checked (recomputed statistics included)
                self._best_weights = self.model.get_weights()
        self.history.append(auc)
        self.epochs_checked.append(epoch + 1)
        if logs is not None:
            logs["val_roc_auc"] = auc
        if better:
            self.best_auc, self.best_epoch = auc, epoch
        elif self.patience is not None and self.best_epoch is not None \
                and epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)


# Every option and config key named here exists (a test checks them against the
# pretrain/fit CLI and RunConfig): pretrain has no --learning-rate flag.
NONFINITE_HINT = (
    "likely causes: a learning rate too high (lower pretrain.learning_rate or raise "
    "pretrain.warmup_epochs in the --config file), float16 overflow (try --precision float32 "
    "or mixed_bfloat16), or NaN/Inf pixels that were not repaired (check data.nan_policy)"
)

# Raw pixels beyond this, fed to the encoder unscaled, are the usual cause of a
# NaN loss (DeepLense cutouts reach ~100; survey counts reach many thousands).
RAW_PIXEL_LIMIT = 1000.0


def peak_pixel(images, chunk=256) -> float:
    """The finite pixel of largest magnitude (sign kept), 0.0 if none; in chunks, no big copies."""
    peak = 0.0
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk], np.float32)
        finite = np.where(np.isfinite(block), block, 0.0)
        if finite.size:
            at = np.unravel_index(np.argmax(np.abs(finite)), finite.shape)
            if abs(float(finite[at])) > abs(peak):
                peak = float(finite[at])
    return peak


def nonfinite_hint(images=None, normalization=None) -> str:
    """What to try after a NaN/Inf loss, naming real options only.

    Leads with the common cause when the data shows it: raw pixel values in the
    thousands reaching the encoder with ``data.normalization: none``.

    Args:
        images: the training images (raw), or None.
        normalization: the run's ``data.normalization``.

    Example:
        >>> nonfinite_hint(np.full((1, 4, 4, 1), 12345.0), "none")[:58]
        'the training images reach 12,345 with data.normalization: '
    """
    if normalization == "none" and images is not None and len(images):
        peak = peak_pixel(images)
        if abs(peak) >= RAW_PIXEL_LIMIT:
            return (f"the training images reach {peak:,.0f} with data.normalization: none; use asinh or "
                    "dataset (data.normalization in the --config file); other " + NONFINITE_HINT[len("likely "):])
    return NONFINITE_HINT


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first NaN/Inf batch loss and remembers where.

    ``kerasssl.pretrain`` turns ``guard.failure`` into a one-line
    KerassslError; :class:`EpochCheckpoint` skips the failed epoch, so the
    last good checkpoint survives.

    Example:
        >>> guard = NonFiniteLossGuard(); model.fit(..., callbacks=[guard])
        >>> guard.failure  # None, or "non-finite loss (nan) at epoch 3, batch 12"
    """

    def __init__(self):
        super().__init__()
        self.failure = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        value = float(np.asarray(keras.ops.convert_to_numpy(loss)))
        if not math.isfinite(value):
            self.failure = f"non-finite loss ({value}) at epoch {self._epoch + 1}, batch {batch + 1}"
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.failure is None and not math.isfinite(float(logs.get("loss", 0.0))):
            self.failure = f"non-finite loss at epoch {epoch + 1}"
            self.model.stop_training = True


class ScalarEventWriter(keras.callbacks.Callback):
    """Write each epoch's scalar logs to a TensorBoard event file in ``log_dir``.

    ``keras.callbacks.TensorBoard`` needs the ``tensorboard`` package (for
    ``tf.summary``), which is not a dependency. The event format is a TFRecord
    of ``Event`` protos, which TensorFlow itself provides; ``tensorboard
    --logdir RUN/tensorboard`` reads the result. A resumed run appends a new
    file; steps are epoch numbers (1-based). Without TensorFlow (e.g. a
    JAX-only machine) nothing is written and a warning is logged once.

    Args:
        log_dir: e.g. ``RUN/tensorboard``; files go to ``log_dir/train``.

    Example:
        >>> model.fit(ds, callbacks=[LearningRateLogger(), ScalarEventWriter(run / "tensorboard")])
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = Path(log_dir) / "train"
        self._writer = None
        self._disabled = False

    def _open(self):
        import socket
        import time

        try:
            import tensorflow as tf
            from tensorflow.core.util import event_pb2
        except ImportError:
            log.warning("TensorFlow is not installed: no TensorBoard event files")
            self._disabled = True
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        path = self.log_dir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.kerasssl"
        self._writer = tf.io.TFRecordWriter(str(path))
        self._writer.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())

    def on_epoch_end(self, epoch, logs=None):
        if self._disabled:
            return
        if self._writer is None:
            self._open()
            if self._disabled:
                return
        import time

        from tensorflow.core.framework import summary_pb2
        from tensorflow.core.util import event_pb2

        values = []
        for key, value in (logs or {}).items():
            try:
                number = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
            values.append(summary_pb2.Summary.Value(tag=f"epoch_{key}", simple_value=number))
        event = event_pb2.Event(wall_time=time.time(), step=epoch + 1, summary=summary_pb2.Summary(value=values))
        self._writer.write(event.SerializeToString())
        self._writer.flush()

    def on_train_end(self, logs=None):
        # Not closed: pretraining runs one ``fit`` per epoch and keeps one file; ``close`` ends it.
        if self._writer is not None:
            self._writer.flush()

    def close(self):
        """Close the event file (the next epoch would open a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

"""BatchNorm statistics of a trained network: freeze them, or recompute them.

A Keras ``BatchNormalization`` layer normalises with the batch's statistics in
training and with moving averages of them (momentum 0.99) in inference. After
a short training run the averages are still mostly their initial values (mean
0, variance 1) and lag weights that have moved since. A deep network then
computes garbage in inference mode: measured here, EfficientNet-B0 after 50
SimCLR steps (500 images, 32x32x3) mapped every image to nearly the same
feature vector (feature std 3e-6, every cosine similarity > 0.99999), so a
linear probe, ``kerasssl index`` and ``similar`` saw no signal.

:func:`recalibrate_batch_norm` recomputes them ("precise BatchNorm", Wu &
Johnson 2021, *Rethinking "Batch" in BatchNorm*): exact averages of the batch
statistics over batches of the training images, with the final weights and
dropout off, which is the network inference will run. It needs no labels and
no gradients: one forward pass over at most a few thousand images.

:func:`freeze_batch_norm` keeps them fixed while the rest of a network trains
(full fine-tuning of a pretrained encoder).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import keras
import numpy as np

log = logging.getLogger(__name__)

# PreciseBN's estimates settle within a few thousand images (Wu & Johnson 2021, fig. 4).
RECALIBRATION_IMAGES = 4096


def batch_norm_layers(model) -> list:
    """Every ``keras.layers.BatchNormalization`` inside ``model`` (nested models included)."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def freeze_batch_norm(model) -> int:
    """Put every BatchNormalization layer inside ``model`` in inference mode.

    A pretrained encoder keeps its BatchNorm statistics during full fine-tuning.
    (Calling the encoder with ``training=False`` inside a functional model does
    not do this in Keras 3: ``fit`` overrides the recorded flag.) A
    non-trainable Keras BatchNormalization always uses its moving statistics,
    and ``trainable`` is saved with the model. Returns how many were frozen.
    """
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.trainable = False
    return len(layers)


def recalibrate_batch_norm(model, images, *, preprocess=None, batch_size: int = 64,
                           max_images: int = RECALIBRATION_IMAGES, seed: int = 0) -> Optional[dict]:
    """Replace the moving statistics of ``model``'s BatchNorm layers by exact averages over ``images``.

    Each batch runs through ``model`` in training mode (so every layer
    normalises with that batch's statistics, as in training) with dropout
    off; each trainable BatchNorm layer's moving mean and variance become the
    average of its batch means and variances. Frozen (non-trainable) layers
    keep theirs. Nothing else changes: no weight moves.

    Args:
        model: a Keras model (e.g. an encoder) with BatchNorm layers.
        images: array (N, ...) of the model's inputs, or of ``preprocess``'s.
            Use training images only.
        preprocess: optional layer applied (inference mode) to each batch first.
        batch_size: images per batch; use the training batch size, whose
            statistics the weights were trained with. A smaller N shrinks it.
        max_images: at most this many images, drawn at random (``seed``).
        seed: the draw's seed.

    Returns:
        ``{"layers", "images", "batches", "batch_size"}``, or None when there is
        nothing to do (no trainable BatchNorm layer, or fewer than 2 images).

    Example:
        >>> encoder = build_encoder("tiny", (32, 32, 3))
        >>> recalibrate_batch_norm(encoder, np.random.rand(256, 32, 32, 3).astype("float32"))
        {'layers': 3, 'images': 256, 'batches': 4, 'batch_size': 64}
    """
    layers = [layer for layer in batch_norm_layers(model) if layer.trainable]
    n = min(len(images), int(max_images))
    if not layers or n < 2:
        return None
    batch_size = max(2, min(int(batch_size), n))  # a batch of 1 has no variance
    # Shuffled: batches of one class (data stored class by class) would understate the variance.
    order = np.random.default_rng(seed).permutation(len(images))[:n]
    batches = n // batch_size  # full batches only, as training saw
    dropouts = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
                if isinstance(layer, keras.layers.Dropout)]
    # Momentum 0: each training-mode call leaves exactly that batch's statistics in the
    # moving variables; they are summed here and their mean assigned at the end.
    momenta, saved = [layer.momentum for layer in layers], _statistics(layers)
    rates = [layer.rate for layer in dropouts]
    sums = [[np.zeros(layer.moving_mean.shape, np.float64), np.zeros(layer.moving_variance.shape, np.float64)]
            for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        for layer in dropouts:
            layer.rate = 0.0
        for k in range(batches):
            x = np.asarray(images[order[k * batch_size:(k + 1) * batch_size]], np.float32)
            if preprocess is not None:
                x = preprocess(x, training=False)
            model(x, training=True)
            for total, (mean, variance) in zip(sums, _statistics(layers)):
                total[0] += mean
                total[1] += variance
    except BaseException:
        _assign(layers, saved)
        raise
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate
    _assign(layers, [(mean / batches, variance / batches) for mean, variance in sums])
    summary = {"layers": len(layers), "images": batches * batch_size, "batches": batches, "batch_size": batch_size}
    log.debug("BatchNorm statistics recomputed: %(layers)d layer(s), %(images)d image(s) in %(batches)d "
              "batch(es) of %(batch_size)d", summary)
    return summary


@contextlib.contextmanager
def recalibrated_batch_norm(model, images, **options):
    """Within the block, ``model``'s BatchNorm statistics are recomputed over ``images``; after it, restored.

    For a look at a model mid-training as it will be saved (pretraining's kNN
    monitor), without touching the training run's moving averages.

    Args:
        model, images, **options: as :func:`recalibrate_batch_norm`.

    Example:
        >>> with recalibrated_batch_norm(encoder, train_images, preprocess=preprocess):
        ...     features = encoder(preprocess(val_images), training=False)
    """
    layers = batch_norm_layers(model)
    saved = _statistics(layers)
    try:
        yield recalibrate_batch_norm(model, images, **options)
    finally:
        _assign(layers, saved)


def _statistics(layers) -> list:
    """``(moving_mean, moving_variance)`` of each layer, as float64 NumPy copies."""
    value = keras.ops.convert_to_numpy
    return [(np.array(value(layer.moving_mean), np.float64), np.array(value(layer.moving_variance), np.float64))
            for layer in layers]


def _assign(layers, statistics) -> None:
    for layer, (mean, variance) in zip(layers, statistics):
        layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))

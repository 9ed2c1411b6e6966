"""tf.data input pipelines of raw images (and labels) that never starve training.

In-memory arrays are fed by shuffling *indices* and gathering a whole batch
with one ``tf.gather``: one memcpy per batch instead of one dataset element
per image, so the pipeline runs at memory bandwidth (see
``benchmarks/pipeline.py``). Pixels stay raw; the model's ``Preprocess``
layer repairs and normalises them.

Works for the TensorFlow and JAX backends (Keras consumes tf.data on both).

Example:
    >>> ds = make_dataset(data.images, data.labels, batch_size=64, seed=0, repeat=True)
    >>> model.fit(ds, steps_per_epoch=len(data) // 64, epochs=10)
"""

from __future__ import annotations

import numpy as np

from kerasssl.errors import KerassslError

DEFAULT_SHUFFLE_BUFFER = 10_000


def make_dataset(
    images,
    labels=None,
    *,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
    cache: bool = True,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
):
    """A batched, prefetched ``tf.data.Dataset`` of raw images (and labels).

    Args:
        images: float (N, H, W, C) array, or a ``tf.data.Dataset`` of single
            images or ``(image, label)`` pairs (e.g. decoded TFRecords).
        labels: optional (N,) integer labels for an array; the dataset then
            yields ``(images, labels)`` with int64 labels.
        batch_size: images per batch.
        shuffle: reshuffle every epoch (full shuffle for arrays, a
            ``shuffle_buffer`` window for datasets), seeded by ``seed``.
        seed: shuffle seed; the same seed gives the same batches.
        repeat: repeat forever (use ``steps_per_epoch``); batches then span
            epoch boundaries, so every batch is full.
        drop_remainder: drop a last partial batch.
        cache: for a ``tf.data.Dataset`` input, cache decoded elements in memory
            after the first epoch. An array is already in memory: no-op.
        shuffle_buffer: shuffle window for dataset inputs.

    Returns:
        ``tf.data.Dataset`` yielding float32 (B, H, W, C) batches, or
        ``(images, labels)`` batches, prefetched with AUTOTUNE.

    Raises:
        KerassslError: bad shapes, label count, or batch size.

    Example:
        >>> ds = make_dataset(train.images, train.labels, batch_size=32, seed=1)
        >>> images, labels = next(iter(ds))
    """
    import tensorflow as tf

    if int(batch_size) != batch_size or batch_size < 1:
        raise KerassslError(f"batch size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    if isinstance(images, tf.data.Dataset):
        if labels is not None:
            raise KerassslError("pass labels inside the dataset as (image, label) pairs")
        return _from_dataset(images, batch_size, shuffle, seed, repeat, drop_remainder, cache,
                             shuffle_buffer)

    images = np.asarray(images)
    if images.ndim != 4:
        raise KerassslError(f"expected images of shape (N, H, W, C), got {images.shape}")
    n = len(images)
    if n == 0:
        raise KerassslError("no images to make a dataset from")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise KerassslError(f"{labels.shape[0] if labels.ndim else 0} labels for {n} images")
        labels = labels.astype(np.int64)

    # Keep the source arrays in host memory (not on the accelerator) whatever runs the model.
    with tf.device("/cpu:0"):
        source_images = tf.constant(images.astype(np.float32, copy=False))
        source_labels = None if labels is None else tf.constant(labels)

    if shuffle and repeat:  # endless (pretraining): the order follows from the seed alone
        ds = seeded_order(n, seed)
    else:  # one pass per iterator: Keras makes one per epoch, and each reshuffles
        ds = tf.data.Dataset.range(n)
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def gather(idx):
        if source_labels is None:
            return tf.gather(source_images, idx)
        return tf.gather(source_images, idx), tf.gather(source_labels, idx)

    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _from_dataset(ds, batch_size, shuffle, seed, repeat, drop_remainder, cache, shuffle_buffer):
    import tensorflow as tf

    def as_float32(*element):
        if len(element) == 1:
            return tf.cast(element[0], tf.float32)
        image, label = element
        return tf.cast(image, tf.float32), tf.cast(label, tf.int64)

    ds = ds.map(as_float32, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def seeded_order(n: int, seed: int):
    """Indices ``0..n-1`` forever, each pass in its own order: a function of ``(seed, pass)`` only.

    ``Dataset.shuffle(reshuffle_each_iteration=True)`` draws a new order for every
    iterator made from the dataset, so what a run trains on would depend on how
    many iterators were made before, e.g. by Keras's ``fit`` under a
    ``tf.distribute`` strategy, which made 2-replica pretraining differ from run
    to run. Here each pass is a stateless permutation (``index_shuffle``), and no
    shuffle buffer is held.

    Args:
        n: how many indices (> 0).
        seed: integer seed.

    Returns:
        An endless ``tf.data.Dataset`` of int64 indices.

    Example:
        >>> order = seeded_order(5, seed=0)
        >>> [int(i) for i in order.take(10)]  # two passes, each a permutation of 0..4
    """
    import tensorflow as tf

    n, seed = int(n), tf.constant(int(seed), tf.int64)

    def one_pass(p):
        key = tf.stack([seed, p])
        return tf.data.Dataset.range(n).map(lambda i: tf.random.experimental.index_shuffle(i, key, n - 1))

    return tf.data.Dataset.counter().flat_map(one_pass)


def epoch_seed(seed: int, epoch: int) -> int:
    """The data seed of one epoch, derived from the run's seed and the epoch (0-based) alone.

    Every epoch's order follows from ``(seed, epoch)``, not from the epochs
    before it, so a resumed run rebuilds any epoch's stream as it was.

    Example:
        >>> epoch_seed(0, 3) == epoch_seed(0, 3) != epoch_seed(0, 4)
        True
    """
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(1)[0] & 0x7FFFFFFF)


def epoch_batches(make, seed: int, epoch: int, steps_per_epoch: int, start_step: int = 0):
    """Epoch ``epoch``'s batches from step ``start_step`` on: reproducible and positionable.

    ``make(seed)`` builds an endless, deterministic dataset of batches (e.g.
    :func:`make_dataset` with ``repeat=True``, or the pools'
    ``make_pretraining_dataset``); the epoch uses ``make(epoch_seed(seed,
    epoch))``'s first ``steps_per_epoch`` batches. A resumed epoch skips the
    ``start_step`` batches its checkpoint had trained: ``Dataset.skip`` reads
    and decodes them without training (for in-memory arrays a gather each;
    for pools the reads of those images, about ``start_step`` steps of the
    input pipeline alone, which runs several times faster than the steps).

    Args:
        make: ``fn(seed) -> tf.data.Dataset`` of batches, endless.
        seed: the run's data seed.
        epoch: 0-based epoch.
        steps_per_epoch: batches per epoch.
        start_step: batches of the epoch already trained.

    Returns:
        A dataset of exactly ``steps_per_epoch - start_step`` batches.

    Example:
        >>> ds = epoch_batches(lambda s: make_dataset(x, batch_size=8, seed=s, repeat=True), 0, 2, 10, start_step=4)
    """
    start_step, steps_per_epoch = int(start_step), int(steps_per_epoch)
    if not 0 <= start_step < steps_per_epoch:
        raise KerassslError(f"step {start_step} is outside an epoch of {steps_per_epoch} steps")
    ds = make(epoch_seed(seed, epoch))
    if start_step:
        ds = ds.skip(start_step)
    return ds.take(steps_per_epoch - start_step)

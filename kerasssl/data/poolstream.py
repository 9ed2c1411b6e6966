"""The pretraining stream: unlabeled pools plus the labelled train split, one tf.data pipeline.

Memory is bounded by the shuffle buffer and the prefetch, not by the pools:

- **folder pools**: a file-list dataset. The order of the usable files is a
  seeded permutation drawn afresh each epoch by
  ``tf.random.experimental.index_shuffle`` (no buffer at all), and files are
  read in parallel. When every file is a plain ``.npy`` with one header length,
  dtype and shape (a survey pool; :func:`kerasssl.data.pool.read_stored`)
  they are read and decoded in TF ops (``read_file`` + ``decode_raw``: no
  Python, no GIL); otherwise by a ``tf.numpy_function`` running the content
  pass's reader (:func:`kerasssl.data.pool.read_pool_file`). Either way the
  stream yields exactly the images that were fingerprinted and checked (tested);
- **shard pools**: shards shuffled each epoch and interleaved (parallel
  reads); records the content pass took out (``--skip-bad``, the leak guard)
  are filtered by id; a shuffle buffer of ``pretrain.shuffle_buffer`` records;
  parallel decode and centre crop in TF ops, a block of records at a time when
  all share one stored shape (:mod:`kerasssl.data.tfrecord`);
- **the train split**: from memory (the labelled set is small), reshuffled each epoch.

With several input pipelines (multi-worker, multi-process JAX) each builds
this stream for its own :class:`kerasssl.data.inputshard.InputShard`: its own
files, shard files (or, with fewer shards than pipelines, records) and train
rows, chosen before any read; see :mod:`kerasssl.data.inputshard`.

The sources are mixed in proportion to their sizes (seeded), batched into full
batches and prefetched. Pixels stay raw: the model's ``Preprocess`` layer
repairs and normalises them, as for in-memory data.

Example:
    >>> ds = make_pretraining_dataset(plan.scans, train_images, batch_size=64, seed=0,
    ...                               image_size=32)
    >>> model.fit(ds, steps_per_epoch=100, epochs=10)
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from kerasssl.data.inputshard import RECORDS, InputShard, folder_ids, pipeline_ids, shard_reads
from kerasssl.data.pipeline import seeded_order
from kerasssl.data.pool import RECORD_BITS, read_pool_file
from kerasssl.data.poolscan import PoolScan
from kerasssl.errors import DataError, KerassslError

DEFAULT_SHUFFLE_BUFFER = 2048

log = logging.getLogger(__name__)


class StreamErrors:
    """The first :class:`DataError` a reader thread met, so the run can stop with one line.

    A file that changed after the content pass raises inside tf.data, where
    Keras sees only an op error; ``pretrain`` re-raises this instead.
    """

    def __init__(self):
        self.error: Optional[DataError] = None
        self._lock = threading.Lock()

    def record(self, error: DataError) -> None:
        with self._lock:
            if self.error is None:
                self.error = error


def folder_stream(scan: PoolScan, *, image_size=None, allow_pickle=False, seed=0,
                  errors: Optional[StreamErrors] = None, shard: InputShard = InputShard()) -> tf.data.Dataset:
    """Single (H, W, C) images of a folder pool's usable files (``shard``'s part), forever,
    reshuffled each epoch."""
    if scan.files.kind != "folder":
        raise KerassslError(f"{scan.files.path}: not a folder pool")
    root = Path(scan.files.root)
    # The file list is sharded before any read: a pipeline opens only its own files.
    paths = [str(root / scan.files.files[i]) for i in folder_ids(scan, shard)]
    n = len(paths)
    if not n:
        raise DataError(scan.files.path, "no image of the pool is left to pretrain on"
                        + ("" if shard.whole else f" for {shard}"))
    shape = tuple(scan.image_shape)
    axis = scan.layout.axis
    errors = errors if errors is not None else StreamErrors()
    with tf.device("/cpu:0"):
        names = tf.constant(paths)

    def read(path):
        name = path.decode("utf-8", "surrogateescape")
        try:
            image, _, _ = read_pool_file(name, axis, image_size, allow_pickle)
            if image.shape != shape:
                raise DataError(name, f"changed since the pool was checked: now {image.shape}")
        except DataError as e:
            errors.record(e)
            raise
        return image

    def load(i):
        image = tf.numpy_function(read, [tf.gather(names, i)], tf.float32, stateful=False)
        return tf.ensure_shape(image, shape)

    if scan.raw_layout is not None:
        offset, dtype, stored = scan.raw_layout

        def load(i):  # noqa: F811 - the TF-op reader replaces the NumPy one
            data = tf.io.read_file(tf.gather(names, i))
            raw = _decode_raw(tf.strings.substr(data, offset, _nbytes(dtype, stored)), dtype, stored)
            return tf.ensure_shape(_model_image(raw, stored, axis, shape), shape)

    return seeded_order(n, seed).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


_TF_DTYPES = {"f2": tf.float16, "f4": tf.float32, "f8": tf.float64, "i1": tf.int8, "i2": tf.int16,
              "i4": tf.int32, "i8": tf.int64, "u1": tf.uint8, "u2": tf.uint16}


def _nbytes(dtype: str, stored) -> int:
    return int(np.prod(stored)) * np.dtype(dtype).itemsize


def _decode_raw(data, dtype: str, stored, batched=False):
    """Raw bytes of one stored array (or a batch of them) -> float32 in its stored shape."""
    flat = tf.io.decode_raw(data, _TF_DTYPES[dtype[1:]], little_endian=dtype[0] != ">")
    return tf.reshape(tf.cast(flat, tf.float32), ([-1] if batched else []) + list(stored))


def _model_image(array, stored, axis, shape):
    """Stored array(s) (..., *stored) -> (..., H, W, C) as ``pool.model_image`` makes them: bands last, crop."""
    height, width, _ = shape
    if len(stored) == 2:
        array = array[..., None]
    elif axis == "first":
        rank = len(array.shape)
        array = tf.transpose(array, list(range(rank - 3)) + [rank - 2, rank - 1, rank - 3])
    h, w = array.shape[-3], array.shape[-2]
    top, left = (h - height) // 2, (w - width) // 2
    return array[..., top:top + height, left:left + width, :]


def shard_stream(scan: PoolScan, *, image_size=None, seed=0, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                 shard: InputShard = InputShard()) -> tf.data.Dataset:
    """Single (H, W, C) images of a shard pool's usable records (``shard``'s part), forever
    (bounded shuffle)."""
    from kerasssl.data.imageset import center_crop_tensor as center_crop
    from kerasssl.data.tfrecord.records import IMAGE_FEATURES, decode_image
    from kerasssl.data.tfrecord.shards import compression_of

    if scan.files.kind != "tfrecord":
        raise KerassslError(f"{scan.files.path}: not a TFRecord pool")
    reads = shard_reads(scan, shard)  # this pipeline's shard files, chosen before the interleave
    if not len(reads.ids):
        raise DataError(scan.files.path, "no record of the pool is left to pretrain on"
                        + ("" if shard.whole else f" for {shard}"))
    shards = [scan.files.files[k] for k in reads.shards]
    height, width, channels = (int(d) for d in scan.image_shape)
    channels_first = scan.layout.axis == "first"
    removed = _removed_ids(scan)
    # k stays the shard's position in the whole pool: record ids are the same for every pipeline.
    with tf.device("/cpu:0"):
        paths, ks = tf.constant(shards), tf.constant(reads.shards, tf.int64)
        compressions = tf.constant([compression_of(s) for s in shards])
        # A shard whose framing breaks (skipped by the content pass) is read up to the break only.
        ends = tf.constant([scan.shard_ends.get(int(k), -1) for k in reads.shards], tf.int64)
    files = seeded_order(len(shards), seed).map(
        lambda j: (tf.gather(paths, j), tf.gather(ks, j), tf.gather(compressions, j), tf.gather(ends, j)))

    def read(path, k, compression, end):
        records = tf.data.TFRecordDataset(path, compression_type=compression).take(end)
        return records.enumerate().map(lambda i, r: (tf.bitwise.left_shift(k, RECORD_BITS) + i, r))

    records = files.interleave(read, cycle_length=min(len(shards), 16), block_length=1,
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if removed:  # skipped and leak-guarded records: few, so the table is small
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(removed, tf.int64), tf.ones(len(removed), tf.int64)), 0)
        records = records.filter(lambda i, r: tf.equal(table.lookup(i), 0))
    if reads.mode == RECORDS:  # fewer shards than pipelines: keep this pipeline's records
        log.warning("%s: %d shard file(s) cannot give each of %d input pipelines its own: sharding by "
                    "record (each worker reads every shard and keeps 1/%d of the records)",
                    scan.files.path, len(shards), shard.count, shard.count)
        count, index = tf.constant(shard.count, tf.int64), tf.constant(shard.index, tf.int64)
        low = tf.constant((1 << RECORD_BITS) - 1, tf.int64)

        def owned(i, r):
            owner = (tf.bitwise.right_shift(i, RECORD_BITS) + tf.bitwise.bitwise_and(i, low)) % count
            return tf.equal(owner, index)

        records = records.filter(owned)
    # One endless stream per epoch (epoch_batches rebuilds it with the epoch's seed):
    # reshuffling per iterator would only make the run depend on how many were made.
    records = records.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=False)
    if scan.raw_layout is not None:  # one stored shape: parse and decode a block at a time
        stored = tuple(scan.raw_layout[2])

        def decode_block(i, block):
            parsed = tf.io.parse_example(block, IMAGE_FEATURES)
            raw = _decode_raw(parsed["image"], "<f4", stored, batched=True)
            return _model_image(raw, stored, scan.layout.axis, (height, width, channels))

        return records.batch(256).map(decode_block, num_parallel_calls=tf.data.AUTOTUNE,
                                      deterministic=True).unbatch()

    def decode(i, record):
        example = tf.io.parse_single_example(record, IMAGE_FEATURES)
        shape = tf.sparse.to_dense(example["shape"])
        image = decode_image(example["image"], shape, channels_first)
        image = center_crop(image, height, width)
        return tf.ensure_shape(image, [height, width, channels])

    return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _removed_ids(scan: PoolScan):
    """Ids of the records the stream must drop: the leak guard's and the skipped ones."""
    ids = scan.ids[scan.excluded].tolist()
    index = {path: k for k, path in enumerate(scan.files.files)}
    for name, _ in scan.skipped:
        shard, _, record = name.rpartition(" record ")
        if shard in index and record.isdigit():
            ids.append((index[shard] << RECORD_BITS) | int(record))
    return ids


def array_stream(images, *, seed=0) -> tf.data.Dataset:
    """Single images of an in-memory array (the labelled train split), forever, reshuffled each epoch."""
    images = np.asarray(images, np.float32)
    with tf.device("/cpu:0"):
        source = tf.constant(images)
    return seeded_order(len(images), seed).map(lambda i: tf.gather(source, i), num_parallel_calls=tf.data.AUTOTUNE,
                                               deterministic=True)


def make_pretraining_dataset(scans: Sequence[PoolScan], train_images=None, *, batch_size: int,
                             seed: int = 0, image_size=None, allow_pickle: bool = False,
                             shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                             errors: Optional[StreamErrors] = None,
                             shard: InputShard = InputShard()) -> tf.data.Dataset:
    """Full batches of raw images from the pools (and the train split), mixed by size, forever.

    Args:
        scans: the pools after their content pass (:func:`kerasssl.data.pool.scan_pool`),
            leak guard applied.
        train_images: the labelled train split (N, H, W, C), or None.
        batch_size: images per batch (every batch is full): the pipeline's own
            batch when there are several (the global batch / pipelines).
        seed: orders, shuffles and the mix; the same seed gives the same batches.
        image_size: the centre crop (``data.image_size``), as in the content pass.
        allow_pickle: as in the content pass.
        shuffle_buffer: records in each shard pool's shuffle buffer.
        errors: collects a reader's DataError (see :class:`StreamErrors`).
        shard: the input pipeline this stream feeds (default: the only one): it
            reads its own files / shard files / train rows only
            (:mod:`kerasssl.data.inputshard`), mixed by its own counts.

    Returns:
        ``tf.data.Dataset`` of float32 (batch_size, H, W, C), prefetched; use ``steps_per_epoch``.

    Raises:
        KerassslError: nothing at all for this pipeline to read.

    Example:
        >>> ds = make_pretraining_dataset(scans, x_train, batch_size=64, seed=1)
        >>> ds_worker1 = make_pretraining_dataset(scans, x_train, batch_size=32, seed=1,
        ...                                       shard=InputShard(index=1, count=2))
    """
    # Pipelines differ in their seeds too (one pipeline: unchanged); each is still a
    # function of (seed, pipeline) alone, so a resumed worker rebuilds its own stream.
    seed = int(seed) + 104729 * shard.index
    sources, weights = [], []
    for k, scan in enumerate(scans):
        source_seed = seed + 7919 * (k + 1)
        n_mine = len(pipeline_ids(scan, shard)) if not shard.whole else scan.n_used
        if not n_mine:  # a pool smaller than the number of pipelines: the others read it
            log.warning("%s: %d usable image(s), fewer than the %d input pipelines: none for %s",
                        scan.files.path, scan.n_used, shard.count, shard)
            continue
        if scan.files.kind == "folder":
            ds = folder_stream(scan, image_size=image_size, allow_pickle=allow_pickle,
                               seed=source_seed, errors=errors, shard=shard)
        else:
            ds = shard_stream(scan, image_size=image_size, seed=source_seed,
                              shuffle_buffer=shuffle_buffer, shard=shard)
        sources.append(ds)
        weights.append(n_mine)
    if train_images is not None and len(train_images):
        rows = shard.rows(len(train_images))
        if len(rows):
            sources.append(array_stream(train_images if shard.whole else np.asarray(train_images)[rows],
                                        seed=seed))
            weights.append(len(rows))
    if not sources:
        raise KerassslError("nothing to pretrain on: no pool and no train split"
                            + ("" if shard.whole else f" for {shard}"))
    if len(sources) == 1:
        stream = sources[0]
    else:
        total = float(sum(weights))
        stream = tf.data.Dataset.sample_from_datasets(
            sources, weights=[w / total for w in weights], seed=seed)
    return stream.batch(int(batch_size), drop_remainder=True).prefetch(tf.data.AUTOTUNE)

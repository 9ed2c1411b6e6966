"""Stream TFRecord shards through tf.data, for data that do not fit in memory.

Example:
    >>> ds = make_tfrecord_dataset("rec/*.tfrecord*", 64, files=split.train, repeat=True)
    >>> model.fit(ds, steps_per_epoch=100, epochs=10)
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from kerasssl.data.arrays import channel_layout, hwc_shape
from kerasssl.data.imageset import center_crop_tensor
from kerasssl.data.tfrecord.records import FEATURES, IMAGE_FEATURES, example_problem, parse_record
from kerasssl.data.tfrecord.shards import (compression_of, find_shards, manifest_shapes,
                                           read_manifest, record_dataset, shard_layout)
from kerasssl.errors import DataError, KerassslError


def make_tfrecord_dataset(pattern, batch_size: int, *, image_size: Optional[int] = None,
                          labels: bool = True, files=None, shuffle: bool = True, seed: int = 0,
                          repeat: bool = False, drop_remainder: bool = False,
                          shuffle_buffer: int = 2048, channel_axis: str = "auto"):
    """A streaming tf.data pipeline over TFRecord shards, for data that do not fit in memory.

    Shards are read in parallel (interleaved, shard order shuffled per epoch
    when ``shuffle``), records are shuffled in a bounded buffer, decoded to the
    loader's (H, W, C) layout and centre-cropped in parallel. Pixels stay raw:
    the model's ``Preprocess`` layer repairs and normalises them, as for
    in-memory data. Bad records raise TensorFlow errors during iteration; run
    :func:`check_shards` first to get a DataError naming the record.

    Args:
        pattern: glob, one shard, a folder of shards, or a list of these.
        batch_size: images per batch.
        image_size: centre-crop size; needed when stored sizes differ.
        labels: yield ``(images, labels)`` instead of images only.
        files: optional iterable of ``filename`` values to keep (e.g. a split's
            ``train`` list from ``split.json``); others are skipped.
        shuffle / seed: shuffle shards and records (seeded).
        repeat: repeat forever.
        drop_remainder: drop a last partial batch.
        shuffle_buffer: records held in the shuffle buffer.
        channel_axis: "auto" (the manifest's, else from its shapes or the
            first record), "first" or "last".

    Returns:
        ``tf.data.Dataset`` of float32 [batch, H, W, C] (and int64 [batch] labels).

    Example:
        >>> ds = make_tfrecord_dataset("rec/*.tfrecord*", 64, files=split.train, repeat=True)
        >>> model.fit(ds, steps_per_epoch=100, epochs=10)
    """
    shards = find_shards(pattern)
    manifest, _ = read_manifest(shards)
    height, width, channels, channels_first = _stream_shape(shards, manifest, image_size,
                                                            pattern, channel_axis)

    records = record_dataset(shards, shuffle=shuffle, seed=seed)
    if files is not None:
        keep = sorted({str(f) for f in files})
        if not keep:
            raise KerassslError("make_tfrecord_dataset: `files` is empty")
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keep, tf.ones(len(keep), tf.int64)), 0)
        filename_only = {"filename": FEATURES["filename"]}
        records = records.filter(lambda _p, _i, r: tf.equal(
            table.lookup(tf.io.parse_single_example(r, filename_only)["filename"]), 1))
    if shuffle:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        records = records.repeat()

    def decode(_shard, _index, record):
        # Images only: the image features, so an unlabeled pool's shards stream too.
        example = parse_record(record, channels_first, features=None if labels else IMAGE_FEATURES)
        image = center_crop_tensor(example["image"], height, width)
        image = tf.ensure_shape(image, [height, width, channels])
        return (image, example["label"]) if labels else image

    # deterministic: a seed gives the same order every run.
    records = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return records.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def _stream_shape(shards, manifest, image_size, pattern, channel_axis="auto"):
    """(H, W, C, channels_first) the streaming pipeline yields: from the manifest,
    else the first record."""
    stored = manifest_shapes(manifest)
    if not stored:
        first = next(iter(tf.data.TFRecordDataset(shards[0], compression_of(shards[0]))), None)
        if first is None:
            raise DataError(shards[0], "holds no records")
        problem = example_problem(first.numpy())
        if problem:
            raise DataError(shards[0], f"record 0: {problem}")
        example = tf.train.Example.FromString(first.numpy())
        stored = [tuple(example.features.feature["shape"].int64_list.value)]
    layout = shard_layout(channel_axis, manifest, pattern) or channel_layout(stored, source=pattern)
    hwc = {hwc_shape(s, layout.axis, pattern) for s in stored}
    if len({c for _, _, c in hwc}) > 1:
        raise DataError(pattern, f"images have different band counts {sorted(hwc)}")
    channels = next(iter(hwc))[2]
    if image_size is None:
        if len(hwc) > 1:
            raise DataError(pattern, f"images differ in size {sorted(hwc)}; pass image_size")
        height, width, _ = next(iter(hwc))
        return height, width, channels, layout.axis == "first"
    small = [s for s in hwc if s[0] < image_size or s[1] < image_size]
    if small:
        raise DataError(pattern, f"images of size {small[0][0]}x{small[0][1]} are smaller "
                                 f"than the crop size {image_size}")
    return int(image_size), int(image_size), channels, layout.axis == "first"

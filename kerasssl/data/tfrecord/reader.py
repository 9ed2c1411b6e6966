"""Read TFRecord shards into memory: an :class:`~kerasssl.data.imageset.ImageSet`, as ``load_images``.

Images get the loader's layout and centre crop, ``files`` are the records'
``filename`` features (so a split of shards is the split of the folder), and
every record is held to the folder loader's checks. A failed parallel read is
re-read sequentially (:func:`kerasssl.data.tfrecord.shards.check_shards`) so
that the error names the shard and the record.

Example:
    >>> data = load_tfrecords("rec/*.tfrecord*", image_size=32)
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from kerasssl.data.arrays import channel_layout, check_finite_bands
from kerasssl.data.imageset import ImageSet, check_image_size, crop_to_size, shape_mismatch
from kerasssl.data.tfrecord.records import parse_record
from kerasssl.data.tfrecord.shards import (check_shards, expected_counts, find_shards,
                                           read_manifest, record_dataset, shard_layout)
from kerasssl.errors import DataError, first_line

logger = logging.getLogger(__name__)


def load_tfrecords(pattern, *, image_size: Optional[int] = None,
                   channel_axis: str = "auto") -> ImageSet:
    """Read TFRecord shards of :data:`FEATURES` into an ImageSet, like ``load_images``.

    A tf.data read: interleaved across shards, parallel parse and decode.
    Images get the loader's layout and centre crop; ``files`` are the
    ``filename`` features (the source files' relative paths), so splits are
    those of the original folder. Class names come from ``manifest.json``
    beside the shards, else from the ``class_name`` features.

    Args:
        pattern: glob (``"rec/*.tfrecord*"``), one shard, or a folder of shards.
        image_size: centre-crop every image to ``image_size`` square; smaller
            images are refused (never padded). None keeps the stored size,
            which must then be the same for all.
        channel_axis: "auto" (the manifest's, else decided from all stored
            shapes), "first" or "last".

    Returns:
        :class:`kerasssl.data.imageset.ImageSet` with format "tfrecord";
        ``meta["channel_layout"]`` as for folders.

    Raises:
        DataError: no shards, corrupt or truncated shard, a record missing a
            feature (naming the shard and record index), images of different
            sizes or channels, an all-NaN band, duplicate filenames.

    Example:
        >>> data = load_tfrecords("rec/*.tfrecord*", image_size=32)
        >>> data.images.shape, data.class_names
        ((400, 32, 32, 3), ['nonlenses', 'lenses'])
    """
    check_image_size(image_size)
    shards = find_shards(pattern)
    manifest, manifest_path = read_manifest(shards)
    if manifest is not None and manifest.get("labeled") is False:
        raise DataError(pattern, "holds an unlabeled pool (records without labels, written by "
                                 "`convert --unlabeled`); use it with --unlabeled, or `inspect --unlabeled`")
    layout = shard_layout(channel_axis, manifest, pattern)
    expected = expected_counts(manifest)
    known = [expected.get(os.path.basename(s)) for s in shards]
    # Preallocate when the manifest gives the count (no 2x peak from np.stack).
    total = sum(known) if None not in known else None

    channels_first = None if layout is None else layout.axis == "first"

    def parse(shard, index, record):
        return {"shard": shard, "index": index, **parse_record(record, channels_first)}

    records = record_dataset(shards).map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                         deterministic=True)
    records = records.prefetch(tf.data.AUTOTUNE)

    images, labels, files, record_shapes = None, [], [], []
    first_shape = None
    names_by_label, where = {}, {}
    per_shard = collections.Counter()
    try:
        for rec in records.as_numpy_iterator():
            shard, index = rec["shard"].decode(), int(rec["index"])
            per_shard[shard] += 1
            want = expected.get(os.path.basename(shard))
            if want is not None and per_shard[shard] > want:
                raise DataError(shard, f"holds more records than the {want} the manifest lists "
                                       "(replaced shard?)")
            filename = rec["filename"].decode("utf-8", "replace")
            at = f"record {index} ({filename})"
            if filename in where:
                raise DataError(shard, f"{at}: filename also in {where[filename]}; "
                                       "each record needs a unique filename")
            where[filename] = f"{shard} record {index}"
            image = crop_to_size(rec["image"], image_size, shard, where=f"{at}: ")
            if first_shape is None:
                first_shape = image.shape
                images = np.empty((total,) + image.shape, np.float32) if total else []
            elif image.shape != first_shape:
                raise DataError(shard, f"{at}: " + shape_mismatch(image.shape, first_shape, files[0],
                                                                   image_size))
            check_finite_bands(image, f"{shard}: {at}")
            label, name = int(rec["label"]), rec["class_name"].decode("utf-8", "replace")
            if names_by_label.setdefault(label, name) != name:
                raise DataError(shard, f"{at}: class_name {name!r} but label {label} is "
                                       f"{names_by_label[label]!r} elsewhere")
            record_shapes.append(tuple(int(d) for d in rec["shape"]))
            if isinstance(images, list):
                images.append(image)
            else:
                images[len(files)] = image
            labels.append(label)
            files.append(filename)
    except tf.errors.OpError as e:
        # The parallel read cannot say where; a sequential pass can.
        check_shards(shards, manifest)
        raise DataError(pattern, f"cannot read TFRecord data ({first_line(e)})") from None

    for shard in shards:
        want = expected.get(os.path.basename(shard))
        if want is not None and per_shard[shard] != want:
            raise DataError(shard, f"holds {per_shard[shard]} records but the manifest lists "
                                   f"{want} (truncated or replaced shard)")
    if not files:
        raise DataError(pattern, "the TFRecord files hold no records")
    if layout is None:
        # Decided per record; the same rule over all shapes refuses a set whose records disagree.
        layout = channel_layout(record_shapes, source=pattern, files=files)
    class_names = _class_names(manifest, manifest_path, names_by_label, pattern)
    return ImageSet(
        images=np.stack(images) if isinstance(images, list) else images,
        labels=np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        files=files,
        format="tfrecord",
        root=str(pattern),
        meta={
            "stored_dtypes": ["float32"],
            "stored_shapes": sorted(list(s) for s in set(record_shapes)),
            "channel_layout": layout.to_dict(),
            "shards": len(shards),
            "manifest": manifest_path,
            "source": (manifest or {}).get("source"),
        },
    )


def _class_names(manifest, manifest_path, names_by_label, pattern) -> list:
    """Class names in label order: the manifest's, checked against the records."""
    if manifest and manifest.get("class_names"):
        names = [str(n) for n in manifest["class_names"]]
        for label, name in sorted(names_by_label.items()):
            if not 0 <= label < len(names) or names[label] != name:
                raise DataError(manifest_path, f"records have label {label} = {name!r}, "
                                               f"which does not match class_names {names}")
        return names
    if any(label < 0 for label in names_by_label):
        raise DataError(pattern, f"negative label {min(names_by_label)} in the records")
    names = [names_by_label.get(k) for k in range(max(names_by_label) + 1)]
    if None in names:
        missing = [k for k, n in enumerate(names) if n is None]
        logger.warning("%s: no manifest and no records for label(s) %s; naming them class_<k>",
                       pattern, missing)
        names = [n if n is not None else f"class_{k}" for k, n in enumerate(names)]
    return names

"""TFRecord shards as files: their names, compression, the manifest beside them, their check.

A converted data set is a folder of ``data-0000i-of-0000N.tfrecord[.gz]``
shards and a ``manifest.json`` (class names, counts per shard, stored shapes,
band axis); shards from elsewhere (TFX ExampleGen's ``data_tfrecord-*.gz``)
work without one. Local paths and any ``tf.io.gfile`` file system (``gs://``).
The records inside are :mod:`kerasssl.data.tfrecord.records`.

Example:
    >>> shards = find_shards("rec/*.tfrecord*")
    >>> manifest, path = read_manifest(shards)
    >>> check_shards(shards, manifest)   # DataError naming the first bad record
"""

from __future__ import annotations

import json
import os
import re

import tensorflow as tf

from kerasssl.data.arrays import ChannelLayout, channel_layout
from kerasssl.data.tfrecord.records import example_problem
from kerasssl.errors import DataError, KerassslError, first_line

MANIFEST_NAME = "manifest.json"
#: --compression choice -> TFRecord compression type.
COMPRESSIONS = {"none": "", "gzip": "GZIP"}


def shard_name(index: int, shards: int, compression: str = "none") -> str:
    """File name of shard ``index`` of ``shards``, e.g. ``data-00000-of-00004.tfrecord``.

    Args:
        index: 0-based shard index.
        shards: number of shards.
        compression: "none" or "gzip" (adds ``.gz``).

    Example:
        >>> shard_name(0, 4, "gzip")
        'data-00000-of-00004.tfrecord.gz'
    """
    suffix = ".gz" if compression == "gzip" else ""
    return f"data-{index:05d}-of-{shards:05d}.tfrecord{suffix}"


def compression_of(path) -> str:
    """The TFRecord compression type of one shard: "GZIP" for a ``.gz`` name, else ""."""
    # Our shards and TFX ExampleGen's end in .gz when GZIP-compressed.
    return "GZIP" if str(path).endswith(".gz") else ""


def find_shards(pattern) -> list:
    """The TFRecord files that ``pattern`` names, sorted.

    Args:
        pattern: a glob (``"rec/*.tfrecord*"``), one shard, or a folder of shards
            (local or any ``tf.io.gfile`` file system, e.g. ``gs://``); or a list
            of these (e.g. a TFX Trainer's ``fn_args.train_files``).

    Raises:
        DataError: a pattern matches nothing.

    Example:
        >>> find_shards("rec/*.tfrecord*")[:1]
        ['rec/data-00000-of-00004.tfrecord']
    """
    if isinstance(pattern, (list, tuple)):
        if not pattern:
            raise KerassslError("no TFRecord patterns given")
        return sorted({shard for p in pattern for shard in find_shards(p)})
    pattern = str(pattern)
    if tf.io.gfile.isdir(pattern):
        # Ours: data-*.tfrecord[.gz]; TFX ExampleGen's: data_tfrecord-*.gz.
        pattern = pattern.rstrip("/") + "/*tfrecord*"
        shards = tf.io.gfile.glob(pattern)
    else:
        shards = tf.io.gfile.glob(pattern)
    # `rec/*` also matches our manifest.json: not a shard.
    shards = sorted(p for p in shards
                    if os.path.basename(p) != MANIFEST_NAME and not tf.io.gfile.isdir(p))
    if not shards:
        raise DataError(pattern, "no TFRecord files match")
    return shards


def read_manifest(shards) -> tuple:
    """The manifest written beside the shards by :func:`write_tfrecords`, if any.

    Args:
        shards: shard paths (from :func:`find_shards`).

    Returns:
        ``(manifest dict or None, its path or None)``; looked for in the first
        shard's folder.

    Raises:
        DataError: the manifest exists but is not a JSON object.

    Example:
        >>> manifest, path = read_manifest(find_shards("rec"))
        >>> manifest["class_names"]
        ['nonlenses', 'lenses']
    """
    folder = os.path.dirname(shards[0])
    path = os.path.join(folder, MANIFEST_NAME) if folder else MANIFEST_NAME
    if not tf.io.gfile.exists(path):
        return None, None
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            manifest = json.load(f)
    except (ValueError, tf.errors.OpError) as e:
        raise DataError(path, f"not a valid manifest ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("class_names", []), list):
        raise DataError(path, "not a valid manifest (expected a JSON object with class_names)")
    return manifest, path


def expected_counts(manifest) -> dict:
    """Shard file name -> the record count the manifest lists ({} without a usable manifest)."""
    if not manifest:
        return {}
    files, counts = manifest.get("files"), manifest.get("records_per_shard")
    if not isinstance(files, list) or not isinstance(counts, list) or len(files) != len(counts):
        return {}
    return dict(zip(files, counts))


def manifest_shapes(manifest) -> list:
    """The stored shapes a manifest lists (its ``shapes`` keys, e.g. ``"3x64x64"``), as tuples."""
    return [tuple(map(int, key.split("x"))) for key in (manifest or {}).get("shapes") or {}]


def shard_layout(channel_axis, manifest, source):
    """The band axis of shards: given, else the manifest's, else from its shapes.

    None when nothing tells before reading (no manifest): records are then
    decoded one by one and the whole set is checked afterwards.
    """
    if channel_axis != "auto":
        return channel_layout([], channel_axis, source=source)
    manifest = manifest or {}
    if manifest.get("channel_axis") in ("first", "last"):
        return ChannelLayout(manifest["channel_axis"],
                             f"{manifest['channel_axis']}, recorded in {MANIFEST_NAME} by convert")
    shapes = manifest_shapes(manifest)
    return channel_layout(shapes, source=source) if shapes else None


def record_dataset(shards, *, shuffle=False, seed=0, cycle_length=None):
    """A tf.data.Dataset of (shard path, record index in its shard, serialized record).

    Interleaved across shards (at most 16 read at once), in a fixed order;
    with ``shuffle`` the shard order is shuffled each epoch (seeded).
    """
    compressions = [compression_of(p) for p in shards]
    files = tf.data.Dataset.from_tensor_slices((shards, compressions))
    if shuffle:
        files = files.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)

    def read(path, compression):
        records = tf.data.TFRecordDataset(path, compression_type=compression)
        return records.enumerate().map(lambda i, record: (path, i, record))

    return files.interleave(
        read, cycle_length=cycle_length or min(len(shards), 16), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def record_read_problem(error) -> str:
    """TensorFlow's TFRecord read error in a few plain words, e.g. ``"truncated at byte 4096"``.

    The reader reports byte offsets ("truncated record at 4096' failed with Read
    less bytes than requested", "corrupted record at 0 (Is this even a TFRecord
    file?)") inside graph-function prefixes; a message naming a record index
    beside them must say which number is which.

    Example:
        >>> record_read_problem(tf.errors.DataLossError(None, None, "corrupted record at 12"))
        'corrupt record framing at byte 12'
    """
    message = first_line(error)
    truncated = re.search(r"truncated record at (\d+)", message)
    if truncated:
        return f"truncated at byte {truncated.group(1)}"
    corrupted = re.search(r"corrupted record at (\d+)", message)
    if corrupted:
        hint = "; not a TFRecord file?" if "Is this even a TFRecord" in message else ""
        return f"corrupt record framing at byte {corrupted.group(1)}{hint}"
    return message


def read_records(shard, expected=None):
    """Yield ``(index, serialized record)`` of one shard in order, sequentially.

    A corrupt or truncated shard is one DataError naming the record where
    reading stopped; with ``expected`` (the manifest's count) a shard that
    ends with another count is one too.

    Example:
        >>> for index, record in read_records("rec/shard-00000-of-00001.tfrecord"):
        ...     problem = example_problem(record)
    """
    iterator = iter(tf.data.TFRecordDataset(shard, compression_type=compression_of(shard)))
    index = 0
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            break
        except tf.errors.OpError as e:
            raise DataError(shard, f"corrupt or truncated TFRecord at record {index} "
                                   f"({record_read_problem(e)})") from None
        yield index, record.numpy()
        index += 1
    if expected is not None and index != expected:
        raise DataError(shard, f"holds {index} records but the manifest lists {expected} "
                               "(truncated or replaced shard)")


def check_shards(shards, manifest=None) -> None:
    """Read every record of every shard in order and raise on the first bad one.

    Slow (sequential, one pass over the data); used to name the culprit after
    the fast parallel read failed, and by streaming users who want to validate
    data before a long training run.

    Args:
        shards: shard paths.
        manifest: optional manifest; shards with fewer records than it lists
            are reported as truncated.

    Raises:
        DataError: naming the shard and the record index.

    Example:
        >>> check_shards(find_shards("rec/*.tfrecord*"))
    """
    expected = expected_counts(manifest)
    for shard in shards:
        for index, record in read_records(shard, expected.get(os.path.basename(shard))):
            problem = example_problem(record)
            if problem:
                raise DataError(shard, f"record {index}: {problem}")

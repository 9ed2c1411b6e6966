"""Sharded TFRecord files of ``tf.Example``: the format, its writer and its readers.

One record per image file. :data:`FEATURES` is the single definition of the
record format (every reader and the writer use it):

- ``image``: bytes, the array exactly as read from the file (same layout, NaN
  kept) as raw little-endian float32;
- ``shape``: int64 list, that array's shape (e.g. ``[3, 64, 64]`` or ``[334, 334]``);
- ``label``: int64, index into the class names;
- ``class_name``: bytes (UTF-8);
- ``filename``: bytes, the file's path relative to the data folder. Splits hash
  these names, so a split of TFRecord data is the split of the folder.

Shards of an *unlabeled pool* (``convert --unlabeled``) hold the same records
without ``label`` and ``class_name`` (:data:`UNLABELED_FEATURES`; manifest
``"labeled": false``). The pool reader (:mod:`kerasssl.data.pool`) and the
image-only readers (``parse_examples_to_images``, ``make_tfrecord_dataset(labels=False)``)
take both kinds; ``load_tfrecords`` needs labels and refuses pool shards in one line.

Readers apply the loader's layout rule (``kerasssl.data.load.to_hwc``: 2-D gets
one channel, channels-first ``(C, H, W)`` is transposed; the band axis of a
whole set is given, recorded in the manifest by ``convert``, or decided from
all stored shapes by ``kerasssl.data.load.channel_layout``) and the loader's
centre crop, in TensorFlow ops, so the same code serves
``load_tfrecords``, the streaming ``make_tfrecord_dataset`` and the exported
SavedModel's ``predict_examples`` signature (:func:`parse_examples_to_images`).

Example:
    >>> manifest = write_tfrecords("data/3b", "data/rec", shards=4)
    >>> image_set = load_tfrecords("data/rec/*.tfrecord*")
    >>> images = parse_examples_to_images(serialized, (64, 64, 3))
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import re
import shutil
import sys
import types
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from kerasssl.errors import DataError, KerassslError
from kerasssl.runinfo import write_json_atomic

logger = logging.getLogger(__name__)

#: The ``tf.Example`` features of one record, as ``tf.io.parse_example`` specs.
#: ``shape`` is variable length because files may be 2-D or 3-D.
FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "shape": tf.io.VarLenFeature(tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "class_name": tf.io.FixedLenFeature([], tf.string),
    "filename": tf.io.FixedLenFeature([], tf.string),
}

#: The features a model needs to predict: clients of the serving signature may
#: leave out label, class_name and filename.
IMAGE_FEATURES = {name: FEATURES[name] for name in ("image", "shape")}

#: The features of an unlabeled pool's records (``convert --unlabeled``).
UNLABELED_FEATURES = {name: FEATURES[name] for name in ("image", "shape", "filename")}

def encode_example(array, label, class_name, filename) -> bytes:
    """One image file's array -> a serialized ``tf.Example`` of :data:`FEATURES`.

    Args:
        array: the array exactly as read (any layout, NaN kept); stored as
            little-endian float32 with its shape.
        label: int class index, or None for an unlabeled pool's record
            (:data:`UNLABELED_FEATURES`: no label, no class_name).
        class_name: the class's name (ignored without a label).
        filename: the file's path relative to the data folder (POSIX form).

    Returns:
        The serialized ``tf.Example`` (bytes).

    Example:
        >>> record = encode_example(np.load("d/lenses/a.npy"), 1, "lenses", "lenses/a.npy")
    """
    array = np.ascontiguousarray(array, dtype="<f4")
    feature = tf.train.Feature
    features = {
        "image": feature(bytes_list=tf.train.BytesList(value=[array.tobytes()])),
        "shape": feature(int64_list=tf.train.Int64List(value=list(array.shape))),
        "filename": feature(bytes_list=tf.train.BytesList(value=[str(filename).encode()])),
    }
    if label is not None:
        features["label"] = feature(int64_list=tf.train.Int64List(value=[int(label)]))
        features["class_name"] = feature(bytes_list=tf.train.BytesList(value=[str(class_name).encode()]))
    example = tf.train.Example(features=tf.train.Features(feature=features))
    # deterministic: the feature map in key order, so one array gives the same
    # bytes in every process (otherwise the order follows a per-process hash
    # seed) and converted shards are byte-identical run to run.
    return example.SerializeToString(deterministic=True)


def decode_image(image_bytes, shape, channels_first=None):
    """One record's raw bytes and stored shape -> float32 (H, W, C) tensor (pure TF).

    Applies the loader's layout rule (``kerasssl.data.load.to_hwc``): a 2-D
    array gets one channel; a 3-D array is transposed from ``(C, H, W)`` when
    ``channels_first`` is True, kept when it is False, and with None (one
    record on its own) transposed when its first axis is smaller than the
    other two, as ``to_hwc`` decides for one shape. Other ranks, or a byte
    count that does not match the shape, raise ``tf.errors.InvalidArgumentError``.

    Args:
        image_bytes: scalar string tensor, raw little-endian float32.
        shape: int64 vector, the stored array's shape.
        channels_first: python bool for a data set whose band axis is known,
            or None to decide per record.

    Returns:
        float32 tensor of shape (H, W, C), NaN kept.

    Example:
        >>> decode_image(tf.constant(np.zeros((3, 8, 8), "<f4").tobytes()), [3, 8, 8]).shape
        TensorShape([8, 8, 3])
    """
    flat = tf.io.decode_raw(image_bytes, tf.float32, little_endian=True)
    shape = tf.cast(shape, tf.int32)
    rank = tf.size(shape)
    # Explicit control dependencies so the clear message wins over reshape's.
    checks = [
        tf.debugging.assert_equal(
            tf.logical_or(tf.equal(rank, 2), tf.equal(rank, 3)), True,
            message="image must be 2-D or 3-D"),
        tf.debugging.assert_equal(
            tf.size(flat), tf.reduce_prod(shape),
            message="image bytes do not match the stored shape"),
    ]
    with tf.control_dependencies(checks):
        flat = tf.identity(flat)

    def from_2d():
        return tf.reshape(flat, tf.concat([shape, [1]], axis=0))

    def from_3d():
        array = tf.reshape(flat, shape)
        if channels_first is not None:
            return tf.transpose(array, [1, 2, 0]) if channels_first else array
        c, h, w = shape[0], shape[1], shape[2]
        # load.to_hwc's rule for one shape: the bands are on the smallest axis.
        return tf.cond(tf.logical_and(c < h, c < w),
                       lambda: tf.transpose(array, [1, 2, 0]),
                       lambda: array)

    image = tf.cond(tf.equal(rank, 2), from_2d, from_3d)
    return tf.ensure_shape(image, [None, None, None])


def center_crop(image, height, width):
    """Centre-crop an (H, W, C) tensor like ``kerasssl.data.clean.center_crop``.

    The crop starts at ``((H - height) // 2, (W - width) // 2)``.

    Args:
        image: (H, W, C) tensor with ``H >= height`` and ``W >= width``.
        height, width: python ints, the size to keep.

    Returns:
        (height, width, C) tensor. A smaller image raises InvalidArgumentError.

    Example:
        >>> center_crop(tf.zeros((9, 9, 1)), 4, 4).shape
        TensorShape([4, 4, 1])
    """
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    message = f"image is smaller than the crop size {height}x{width}"
    checks = [tf.debugging.assert_greater_equal(h, height, message=message),
              tf.debugging.assert_greater_equal(w, width, message=message)]
    with tf.control_dependencies(checks):
        top, left = (h - height) // 2, (w - width) // 2
    return image[top:top + height, left:left + width, :]


def parse_examples_to_images(serialized, image_shape):
    """Serialized ``tf.Example`` protos -> float32 [batch, H, W, C] raw images (pure TF).

    The body of the SavedModel's ``predict_examples`` signature: parses the
    ``image`` and ``shape`` features of :data:`FEATURES` (other features may be
    absent), applies the loader's layout rule (:func:`decode_image`) and, where
    the stored image is larger than the model input, the loader's centre crop.
    Pixels stay raw (NaN kept): the model's ``Preprocess`` layer repairs them.

    Args:
        serialized: string tensor [batch] of serialized ``tf.Example``.
        image_shape: the model input ``(H, W, C)`` (python ints).

    Returns:
        float32 tensor [batch, H, W, C]. Wrong channel count, an image smaller
        than the input, or a missing ``image``/``shape`` feature raise
        ``tf.errors.InvalidArgumentError``.

    Example:
        >>> images = parse_examples_to_images(tf.constant([example_bytes]), (32, 32, 3))
        >>> model(images)
    """
    height, width, channels = (int(d) for d in image_shape)
    serialized = tf.convert_to_tensor(serialized, dtype=tf.string)
    parsed = tf.io.parse_example(tf.reshape(serialized, [-1]), IMAGE_FEATURES)
    # Each example may have its own stored shape, so decode one at a time.
    shapes = tf.sparse.to_dense(parsed["shape"])
    lengths = tf.math.bincount(
        tf.cast(parsed["shape"].indices[:, 0], tf.int32),
        minlength=tf.shape(shapes)[0], maxlength=tf.shape(shapes)[0])

    def one(args):
        image_bytes, padded_shape, rank = args
        image = decode_image(image_bytes, padded_shape[:rank])
        check = tf.debugging.assert_equal(
            tf.shape(image)[2], channels,
            message=f"image channels differ from the model input's {channels}")
        with tf.control_dependencies([check]):
            image = center_crop(image, height, width)
        return tf.ensure_shape(image, [height, width, channels])

    return tf.map_fn(
        one, (parsed["image"], shapes, lengths),
        fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))


# -- files: shard names, compression, manifest --------------------------------

MANIFEST_NAME = "manifest.json"
#: --compression choice -> TFRecord compression type.
COMPRESSIONS = {"none": "", "gzip": "GZIP"}
#: Human description of each feature, written into the manifest.
FEATURE_DOCS = {
    "image": "bytes: the array exactly as read from the file (same layout, NaN kept), "
             "raw little-endian float32",
    "shape": "int64 list: that array's shape",
    "label": "int64: index into class_names",
    "class_name": "bytes: UTF-8 class name",
    "filename": "bytes: path of the source file relative to the data folder",
}


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


def _compression_of(path: str) -> str:
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


# -- writing ------------------------------------------------------------------


def write_tfrecords(data_path, out_dir, *, shards: int = 1, compression: str = "none",
                    allow_pickle: bool = False, progress: bool = True,
                    channel_axis: str = "auto", unlabeled_files=None) -> dict:
    """Convert a data folder to sharded TFRecord files of ``tf.Example`` plus a manifest.

    Streams: one source file is in memory at a time. Record ``k`` (in the
    loader's order) goes to shard ``k % shards``, so every shard mixes the
    classes and the output is the same each time. Everything is written into
    a hidden temporary folder beside ``out_dir`` that is renamed to
    ``out_dir`` only when complete; the data folder is only read.

    Args:
        data_path: a data folder ``kerasssl.data.load.scan`` reads.
        out_dir: new (or empty) folder for ``data-0000i-of-0000N.tfrecord[.gz]``
            and ``manifest.json``; must not lie inside ``data_path``.
        shards: number of shard files (1 .. number of images).
        compression: "none" or "gzip".
        allow_pickle: read object arrays (element 0); trusted files only.
        progress: show a tqdm progress bar on stderr.
        channel_axis: "auto", "first" or "last": the band axis of the folder's
            files, decided as ``load_images`` does; recorded in the manifest
            so that readers of the shards use the same.
        unlabeled_files: ``data_path`` is an unlabeled pool and these are its
            image files (relative paths, as the pool's listing gives them;
            ``kerasssl.data.pool.convert_pool`` passes them): records without
            label / class_name, manifest ``"labeled": false``.

    Returns:
        The manifest (also written as ``out_dir/manifest.json``): counts per
        class, class_names in label order, stored shape(s), channel_axis,
        dtype, shard files and their record counts, compression, source,
        kerasssl version.

    Raises:
        DataError: bad data file, ``out_dir`` exists and is not empty, or lies
            inside the data folder.
        KerassslError: bad ``shards`` or ``compression``.

    Example:
        >>> manifest = write_tfrecords("data/3b", "data/rec", shards=4, compression="gzip")
        >>> manifest["counts"]
        {'nonlenses': 200, 'lenses': 200}
    """
    from kerasssl import __version__
    from kerasssl.data.load import (channel_layout, check_finite_bands, read_array, scan,
                                    stored_shape, to_hwc)

    if compression not in COMPRESSIONS:
        raise KerassslError(
            f"compression must be one of {sorted(COMPRESSIONS)}, got {compression!r}")
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise KerassslError(f"shards must be a positive integer, got {shards!r}")
    shards = int(shards)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(out, "already exists and is not an empty folder; choose a new output folder")

    unlabeled = unlabeled_files is not None
    if unlabeled:
        root = Path(data_path)
        listing = types.SimpleNamespace(root=str(root), format="pool", class_names=[],
                                        entries=[(str(rel), None) for rel in unlabeled_files])
    else:
        listing = scan(data_path)
        root = Path(listing.root)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise DataError(out, f"is inside the data folder {root}; write the shards elsewhere")
    n = len(listing.entries)
    if shards > n:
        raise KerassslError(f"--shards {shards} is more than the {n} images in {root}")
    # The band axis of the whole folder, from the headers (as load_images decides it).
    layout = channel_layout([stored_shape(root / rel, allow_pickle) for rel, _ in listing.entries],
                            channel_axis, source=root, files=[rel for rel, _ in listing.entries])

    out.parent.mkdir(parents=True, exist_ok=True)
    # Hidden sibling of OUT (same file system, so the final rename is atomic).
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    names = [shard_name(i, shards, compression) for i in range(shards)]
    options = tf.io.TFRecordOptions(compression_type=COMPRESSIONS[compression])
    records_per_shard = [0] * shards
    counts = [0] * len(listing.class_names)
    shapes = collections.Counter()
    try:
        writers = [tf.io.TFRecordWriter(str(tmp / name), options) for name in names]
        try:
            bar = tqdm(listing.entries, desc="convert", unit="file", file=sys.stderr,
                       disable=not progress, dynamic_ncols=True)
            for k, (rel, label) in enumerate(bar):
                file = root / rel
                array = read_array(file, allow_pickle=allow_pickle)
                # Refuse here what the loader would refuse later, naming the source file.
                check_finite_bands(to_hwc(array, file, layout.axis or "last"), file)
                record = encode_example(array, label, None if label is None else
                                        listing.class_names[label], rel)
                writers[k % shards].write(record)
                records_per_shard[k % shards] += 1
                if label is not None:
                    counts[label] += 1
                shapes[tuple(int(d) for d in array.shape)] += 1
        finally:
            for writer in writers:
                writer.close()
        common = next(iter(shapes)) if len(shapes) == 1 else None
        manifest = {
            "format": "tfrecord",
            "features": {k: v for k, v in FEATURE_DOCS.items()
                         if not unlabeled or k in UNLABELED_FEATURES},
            "labeled": not unlabeled,
            "num_records": n,
            "class_names": list(listing.class_names),
            "counts": ({"unlabeled": n} if unlabeled else
                       {name: counts[i] for i, name in enumerate(listing.class_names)}),
            "shape": list(common) if common else None,
            "shapes": {"x".join(map(str, s)): c for s, c in sorted(shapes.items())},
            "channel_axis": layout.axis,  # "first" | "last" | None (2-D images)
            "dtype": "float32",
            "shards": shards,
            "compression": compression,
            "files": names,
            "records_per_shard": records_per_shard,
            "source": str(root.resolve()),
            "source_format": listing.format,
            "kerasssl_version": __version__,
        }
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %d records in %d shard(s) to %s", n, shards, out)
    return manifest


# -- reading ------------------------------------------------------------------


def _record_dataset(shards, *, shuffle=False, seed=0, cycle_length=None):
    """(shard path, record index in its shard, serialized record), interleaved across shards."""
    compressions = [_compression_of(p) for p in shards]
    files = tf.data.Dataset.from_tensor_slices((shards, compressions))
    if shuffle:
        files = files.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)

    def read(path, compression):
        records = tf.data.TFRecordDataset(path, compression_type=compression)
        return records.enumerate().map(lambda i, record: (path, i, record))

    return files.interleave(
        read, cycle_length=cycle_length or min(len(shards), 16), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _parse_record(path, index, record, channels_first=None, features=None):
    """One record -> dict of its decoded image and the ``features`` parsed (default :data:`FEATURES`)."""
    example = tf.io.parse_single_example(record, FEATURES if features is None else features)
    shape = tf.sparse.to_dense(example.pop("shape"))
    return {
        "shard": path,
        "index": index,
        **example,
        "image": decode_image(example["image"], shape, channels_first),
        "shape": shape,
    }


def example_problem(serialized: bytes, labeled: bool = True):
    """What is wrong with one serialized record, or None if it is a valid Example of FEATURES.

    Args:
        serialized: one TFRecord record.
        labeled: check :data:`FEATURES`; False: only the image features (a pool's
            record, with or without a label).

    Example:
        >>> example_problem(b"garbage")
        'not a tf.Example protocol buffer'
    """
    example = tf.train.Example()
    try:
        example.ParseFromString(serialized)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError differs across builds
        return "not a tf.Example protocol buffer"
    feature = example.features.feature
    for name, spec in (FEATURES if labeled else IMAGE_FEATURES).items():
        kind = "bytes_list" if spec.dtype == tf.string else "int64_list"
        if name not in feature:
            return f"missing feature {name!r}"
        if feature[name].WhichOneof("kind") != kind:
            return f"feature {name!r} is not a {kind}"
        values = getattr(feature[name], kind).value
        if isinstance(spec, tf.io.FixedLenFeature) and len(values) != 1:
            return f"feature {name!r} has {len(values)} values, expected 1"
    shape = list(feature["shape"].int64_list.value)
    if len(shape) not in (2, 3) or min(shape) < 1:
        return f"shape {shape} is not a 2-D or 3-D image shape"
    size = len(feature["image"].bytes_list.value[0])
    if size != 4 * int(np.prod(shape)):
        return f"image has {size} bytes but shape {shape} needs {4 * int(np.prod(shape))}"
    return None


def decode_record_array(serialized: bytes, where) -> np.ndarray:
    """One serialized record -> its stored array (float32, stored shape), in NumPy.

    The pool's content pass reads records this way, so each image gets the
    labelled data's per-file rules (``kerasssl.data.arrays.to_hwc``). Records
    with or without a label are read alike.

    Raises:
        DataError: naming ``where`` (e.g. ``"shard: record 3"``) and what is wrong.
    """
    problem = example_problem(serialized, labeled=False)
    if problem:
        raise DataError(where, problem)
    feature = tf.train.Example.FromString(serialized).features.feature
    shape = tuple(int(d) for d in feature["shape"].int64_list.value)
    return np.frombuffer(feature["image"].bytes_list.value[0], "<f4").reshape(shape)


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
    expected = _expected_counts(manifest)
    for shard in shards:
        index = 0
        records = tf.data.TFRecordDataset(shard, compression_type=_compression_of(shard))
        iterator = iter(records)
        while True:
            try:
                record = next(iterator)
            except StopIteration:
                break
            except tf.errors.OpError as e:
                raise DataError(shard, f"corrupt or truncated TFRecord at record {index} "
                                       f"({_first_line(e)})") from None
            problem = example_problem(record.numpy())
            if problem:
                raise DataError(shard, f"record {index}: {problem}")
            index += 1
        want = expected.get(os.path.basename(shard))
        if want is not None and index != want:
            raise DataError(shard, f"holds {index} records but the manifest lists {want} "
                                   "(truncated or replaced shard)")


def _expected_counts(manifest) -> dict:
    if not manifest:
        return {}
    files, counts = manifest.get("files"), manifest.get("records_per_shard")
    if not isinstance(files, list) or not isinstance(counts, list) or len(files) != len(counts):
        return {}
    return dict(zip(files, counts))


def _first_line(error) -> str:
    """TensorFlow's error message without its op/function-node decorations."""
    message = getattr(error, "message", None) or str(error)
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    message = re.sub(r"\s*\[Op:[^\]]*\].*", "", message, flags=re.S)
    message = message.strip().splitlines()[0][:200] if message.strip() else ""
    return message or type(error).__name__


def _shard_layout(channel_axis, manifest, source):
    """The band axis of shards: given, else the manifest's, else from its shapes.

    None when nothing tells before reading (no manifest): records are then
    decoded one by one and the whole set is checked afterwards.
    """
    from kerasssl.data.load import ChannelLayout, channel_layout

    if channel_axis != "auto":
        return channel_layout([], channel_axis, source=source)
    manifest = manifest or {}
    if manifest.get("channel_axis") in ("first", "last"):
        return ChannelLayout(manifest["channel_axis"],
                             f"{manifest['channel_axis']}, recorded in {MANIFEST_NAME} by convert")
    shapes = [tuple(map(int, s.split("x"))) for s in manifest.get("shapes") or {}]
    return channel_layout(shapes, source=source) if shapes else None


def _channels_first(layout):
    return None if layout is None else layout.axis == "first"


def load_tfrecords(pattern, *, image_size: Optional[int] = None,
                   channel_axis: str = "auto") -> "ImageSet":
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
        ``kerasssl.data.load.ImageSet`` with format "tfrecord";
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
    from kerasssl.data.clean import center_crop as np_center_crop
    from kerasssl.data.load import ImageSet, channel_layout, check_finite_bands

    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise KerassslError(f"image size must be a positive integer, got {image_size!r}")
    shards = find_shards(pattern)
    manifest, manifest_path = read_manifest(shards)
    if manifest is not None and manifest.get("labeled") is False:
        raise DataError(pattern, "holds an unlabeled pool (records without labels, written by "
                                 "`convert --unlabeled`); use it with --unlabeled, or `inspect --unlabeled`")
    layout = _shard_layout(channel_axis, manifest, pattern)
    expected = _expected_counts(manifest)
    known = [expected.get(os.path.basename(s)) for s in shards]
    # Preallocate when the manifest gives the count (no 2x peak from np.stack).
    total = sum(known) if None not in known else None

    channels_first = _channels_first(layout)
    records = _record_dataset(shards).map(
        functools.partial(_parse_record, channels_first=channels_first),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
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
            image = rec["image"]
            if image_size is not None:
                h, w = image.shape[:2]
                if h < image_size or w < image_size:
                    raise DataError(shard, f"{at}: image is {h}x{w}, smaller than the crop size "
                                           f"{image_size} (images are cropped, never padded)")
                image = np_center_crop(image, image_size)
            if first_shape is None:
                first_shape = image.shape
                images = np.empty((total,) + image.shape, np.float32) if total else []
            elif image.shape != first_shape:
                raise DataError(shard, _mismatch(at, image.shape, first_shape, files[0],
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
        raise DataError(pattern, f"cannot read TFRecord data ({_first_line(e)})") from None

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


def _mismatch(at, shape, expected, first_file, image_size) -> str:
    (h, w, c), (eh, ew, ec) = shape, expected
    if c != ec:
        return f"{at}: has {c} band(s) but {first_file} has {ec}; all images need the same bands"
    hint = "" if image_size else "; pass --image-size (image_size=) to centre-crop all to one size"
    return f"{at}: image is {h}x{w} but {first_file} is {eh}x{ew}{hint}"


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


# -- streaming ----------------------------------------------------------------


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

    records = _record_dataset(shards, shuffle=shuffle, seed=seed)
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

    def decode(path, index, record):
        # Images only: the image features, so an unlabeled pool's shards stream too.
        example = _parse_record(path, index, record, channels_first,
                                features=None if labels else IMAGE_FEATURES)
        image = center_crop(example["image"], height, width)
        image = tf.ensure_shape(image, [height, width, channels])
        return (image, example["label"]) if labels else image

    # deterministic: a seed gives the same order every run.
    records = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return records.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def _stream_shape(shards, manifest, image_size, pattern, channel_axis="auto"):
    """(H, W, C, channels_first) the streaming pipeline yields: from the manifest,
    else the first record."""
    from kerasssl.data.load import channel_layout, hwc_shape

    stored = [tuple(map(int, s.split("x"))) for s in (manifest or {}).get("shapes", {})]
    if not stored:
        first = next(iter(tf.data.TFRecordDataset(shards[0], _compression_of(shards[0]))), None)
        if first is None:
            raise DataError(shards[0], "holds no records")
        problem = example_problem(first.numpy())
        if problem:
            raise DataError(shards[0], f"record 0: {problem}")
        example = tf.train.Example.FromString(first.numpy())
        stored = [tuple(example.features.feature["shape"].int64_list.value)]
    layout = _shard_layout(channel_axis, manifest, pattern) or channel_layout(stored, source=pattern)
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

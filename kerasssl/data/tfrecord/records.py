"""The record format: one ``tf.Example`` per image file, encoded, checked and decoded.

:data:`FEATURES` is the single definition of the record format (every reader,
the writer and the SavedModel's ``predict_examples`` signature use it):

- ``image``: bytes, the array exactly as read from the file (same layout, NaN
  kept) as raw little-endian float32;
- ``shape``: int64 list, that array's shape (e.g. ``[3, 64, 64]`` or ``[334, 334]``);
- ``label``: int64, index into the class names;
- ``class_name``: bytes (UTF-8);
- ``filename``: bytes, the file's path relative to the data folder. Splits hash
  these names, so a split of TFRecord data is the split of the folder.

Decoding applies the loader's layout rule (``kerasssl.data.arrays.to_hwc``:
2-D gets one channel, channels-first ``(C, H, W)`` is transposed) in
TensorFlow ops, so the same code serves the readers and the exported model.
This module knows nothing of files: shards and the manifest are
:mod:`kerasssl.data.tfrecord.shards`.

Example:
    >>> record = encode_example(np.load("d/lenses/a.npy"), 1, "lenses", "lenses/a.npy")
    >>> images = parse_examples_to_images(tf.constant([record]), (64, 64, 3))
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerasssl.data.imageset import center_crop_tensor
from kerasssl.errors import DataError

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

#: The features of an unlabeled pool's records (``convert --unlabeled``): no label, no class_name.
UNLABELED_FEATURES = {name: FEATURES[name] for name in ("image", "shape", "filename")}

#: Human description of each feature, written into the manifest.
FEATURE_DOCS = {
    "image": "bytes: the array exactly as read from the file (same layout, NaN kept), "
             "raw little-endian float32",
    "shape": "int64 list: that array's shape",
    "label": "int64: index into class_names",
    "class_name": "bytes: UTF-8 class name",
    "filename": "bytes: path of the source file relative to the data folder",
}


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


def parse_record(record, channels_first=None, features=None) -> dict:
    """One serialized record -> its features, the image decoded by :func:`decode_image` (pure TF).

    Args:
        record: scalar string tensor, one serialized ``tf.Example`` of :data:`FEATURES`.
        channels_first: as for :func:`decode_image`.
        features: the features to parse (default :data:`FEATURES`; :data:`IMAGE_FEATURES`
            reads a labelled or an unlabeled pool's record alike).

    Returns:
        dict of tensors: ``image`` (H, W, C) float32, ``shape`` (the stored
        shape) and the other parsed features (``label``, ``class_name``, ``filename``).
    """
    example = tf.io.parse_single_example(record, FEATURES if features is None else features)
    shape = tf.sparse.to_dense(example.pop("shape"))
    return {**example, "image": decode_image(example["image"], shape, channels_first), "shape": shape}


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
            image = center_crop_tensor(image, height, width)
        return tf.ensure_shape(image, [height, width, channels])

    return tf.map_fn(
        one, (parsed["image"], shapes, lengths),
        fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))


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

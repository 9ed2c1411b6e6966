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

Readers apply the loader's layout rule (``kerasssl.data.load.to_hwc``: 2-D gets
one channel, channels-first ``(C, H, W)`` with ``C <= 4 < H`` is transposed)
and the loader's centre crop, in TensorFlow ops, so the same code serves
``load_tfrecords``, the streaming ``make_tfrecord_dataset`` and the exported
SavedModel's ``predict_examples`` signature (:func:`parse_examples_to_images`).

Example:
    >>> manifest = write_tfrecords("data/3b", "data/rec", shards=4)
    >>> image_set = load_tfrecords("data/rec/*.tfrecord*")
    >>> images = parse_examples_to_images(serialized, (64, 64, 3))
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

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

#: Largest channel count of a channels-first array (the loader's rule C <= 4 < H).
MAX_CHANNELS_FIRST = 4


def encode_example(array, label, class_name, filename) -> bytes:
    """One image file's array -> a serialized ``tf.Example`` of :data:`FEATURES`.

    Args:
        array: the array exactly as read (any layout, NaN kept); stored as
            little-endian float32 with its shape.
        label: int class index.
        class_name: the class's name.
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
        "label": feature(int64_list=tf.train.Int64List(value=[int(label)])),
        "class_name": feature(bytes_list=tf.train.BytesList(value=[str(class_name).encode()])),
        "filename": feature(bytes_list=tf.train.BytesList(value=[str(filename).encode()])),
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString()


def decode_image(image_bytes, shape):
    """One record's raw bytes and stored shape -> float32 (H, W, C) tensor (pure TF).

    Applies the loader's layout rule: a 2-D array gets one channel; a 3-D array
    ``(C, H, W)`` with ``C <= 4 < H`` is transposed to ``(H, W, C)``; any other
    3-D array is taken as ``(H, W, C)``. Other ranks, or a byte count that
    does not match the shape, raise ``tf.errors.InvalidArgumentError``.

    Args:
        image_bytes: scalar string tensor, raw little-endian float32.
        shape: int64 vector, the stored array's shape.

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
        channels_first = tf.logical_and(
            shape[0] <= MAX_CHANNELS_FIRST, shape[1] > MAX_CHANNELS_FIRST)
        return tf.cond(channels_first,
                       lambda: tf.transpose(array, [1, 2, 0]),
                       lambda: array)

    image = tf.cond(tf.equal(rank, 2), from_2d, from_3d)
    return tf.ensure_shape(image, [None, None, None])


def center_crop(image, height, width):
    """Centre-crop an (H, W, C) tensor like the loader (offset ``(H - height) // 2``).

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

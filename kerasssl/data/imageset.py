"""A data set in memory (:class:`ImageSet`) and the shape rules every reader applies.

Every reader (folders in :mod:`kerasssl.data.load`, TFRecord shards in
:mod:`kerasssl.data.tfrecord.reader`) returns an :class:`ImageSet` and holds
its images to the same rules, stated once here:

- ``image_size`` is a positive integer (:func:`check_image_size`);
- an image is centre-cropped to ``image_size`` square as it is read, and one
  *smaller* than that is refused, never padded (:func:`crop_to_size`):
  reflection or zero padding would invent structure (mirrored arcs, sharp
  edges) that a lens finder can learn;
- all images of a set have one (H, W, C) (:func:`shape_mismatch` says how
  one differs).

The crop itself exists twice, side by side, because it runs in two worlds:
:func:`center_crop` on NumPy arrays (readers, ``predict``) and
:func:`center_crop_tensor` on TensorFlow tensors (the TFRecord stream and the
SavedModel's ``predict_examples`` signature). Both cut at
``((H - h) // 2, (W - w) // 2)``; tests check they agree.

Leaf module: it imports nothing of kerasssl but :mod:`kerasssl.errors`.

Example:
    >>> image = crop_to_size(image, 32, "a.npy")     # (32, 32, C), or a DataError
    >>> data = ImageSet(images, labels, ["nonlens", "lens"], files, "hst", "data/hst")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from kerasssl.errors import DataError, KerassslError


@dataclass
class ImageSet:
    """Images of one data folder, raw (NaN kept), with labels and file ids.

    Args:
        images: float32 (N, H, W, C), raw pixel values, NaN/Inf kept.
        labels: int64 (N,), index into ``class_names``.
        class_names: class name per label.
        files: path of each image relative to ``root`` (``/`` separators);
            the stable ids recorded in ``split.json``.
        format: "hst" | "folders" | "fits" | "tfrecord".
        root: the data folder (or pattern) the images came from.
        meta: optional facts about the source files (e.g. ``stored_dtypes``,
            ``stored_shapes``, ``channel_layout``) for ``kerasssl inspect``.

    Example:
        >>> lenses = data.subset(np.flatnonzero(data.labels == 1))
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: List[str]
    files: List[str]
    format: str
    root: str
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(int(s) for s in self.images.shape[1:])

    def class_counts(self) -> dict:
        """Class name -> number of images (every class listed, zeros too)."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(counts[i]) for i, name in enumerate(self.class_names)}

    def subset(self, indices) -> "ImageSet":
        """A new ImageSet holding the rows ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            images=self.images[indices],
            labels=self.labels[indices],
            class_names=list(self.class_names),
            files=[self.files[i] for i in indices],
            format=self.format,
            root=self.root,
            meta=dict(self.meta),
        )


def check_image_size(image_size) -> None:
    """Refuse an ``image_size`` that is not None or a positive integer (KerassslError).

    Example:
        >>> check_image_size(0)
        Traceback (most recent call last):
        kerasssl.errors.KerassslError: image size must be a positive integer, got 0
    """
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise KerassslError(f"image size must be a positive integer, got {image_size!r}")


def center_crop(images, size):
    """Centre-crop NumPy (H, W, C) or (N, H, W, C) images to ``size`` (int or (h, w)).

    The crop starts at ``(H - h) // 2``. Images smaller than ``size`` are
    refused (KerassslError), never padded. The TensorFlow twin is
    :func:`center_crop_tensor`.

    Example:
        >>> center_crop(np.zeros((5, 5, 1)), 3).shape
        (3, 3, 1)
    """
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise KerassslError(f"expected images of shape (N, H, W, C) or (H, W, C), got {x.shape}")
    height, width = x.shape[-3], x.shape[-2]
    if height < h or width < w:
        raise KerassslError(f"image is {height}x{width}, smaller than the crop size {h}x{w}")
    top, left = (height - h) // 2, (width - w) // 2
    return x[..., top:top + h, left:left + w, :]


def center_crop_tensor(image, height, width):
    """Centre-crop one (H, W, C) TensorFlow tensor, as :func:`center_crop` does an array.

    For graphs (tf.data, a SavedModel signature) where H and W are known only
    at run time. The crop starts at ``((H - height) // 2, (W - width) // 2)``.

    Args:
        image: (H, W, C) tensor with ``H >= height`` and ``W >= width``.
        height, width: python ints, the size to keep.

    Returns:
        (height, width, C) tensor. A smaller image raises InvalidArgumentError.

    Example:
        >>> center_crop_tensor(tf.zeros((9, 9, 1)), 4, 4).shape
        TensorShape([4, 4, 1])
    """
    import tensorflow as tf  # only graph code calls this: NumPy readers stay TF-free

    h, w = tf.shape(image)[0], tf.shape(image)[1]
    message = f"image is smaller than the crop size {height}x{width}"
    checks = [tf.debugging.assert_greater_equal(h, height, message=message),
              tf.debugging.assert_greater_equal(w, width, message=message)]
    with tf.control_dependencies(checks):
        top, left = (h - height) // 2, (w - width) // 2
    return image[top:top + height, left:left + width, :]


def crop_to_size(image: np.ndarray, image_size: Optional[int], path, where: str = "") -> np.ndarray:
    """One (H, W, C) image as a reader keeps it: centre-cropped to ``image_size`` square.

    Args:
        image: (H, W, C) array.
        image_size: the crop size, or None to keep the image as it is.
        path: what the error names (a file, or a shard).
        where: prefix inside the shard, e.g. ``"record 3 (lenses/a.npy): "``.

    Raises:
        DataError: the image is smaller than ``image_size`` (never padded).

    Example:
        >>> crop_to_size(np.zeros((9, 9, 1)), 10, "b.npy")
        Traceback (most recent call last):
        kerasssl.errors.DataError: b.npy: image is 9x9, smaller than the crop size 10 (images are cropped, never padded)
    """
    if image_size is None:
        return image
    h, w = image.shape[:2]
    if h < image_size or w < image_size:
        raise DataError(path, f"{where}image is {h}x{w}, smaller than the crop size {image_size} "
                              "(images are cropped, never padded)")
    return center_crop(image, image_size)


def shape_mismatch(shape, expected, first: str, image_size: Optional[int]) -> str:
    """Why an (H, W, C) image does not join a set whose first image, ``first``, is ``expected``.

    Different band counts cannot be fixed by a crop; different sizes can,
    so then the message points to ``--image-size``, unless one is already set.

    Example:
        >>> shape_mismatch((12, 12, 3), (10, 10, 3), "a.npy", None)
        'image is 12x12 but a.npy is 10x10; pass --image-size (image_size=) to centre-crop all to one size'
    """
    (h, w, c), (eh, ew, ec) = shape, expected
    if c != ec:
        return f"has {c} band(s) but {first} has {ec}; all images need the same number of bands"
    hint = "" if image_size else "; pass --image-size (image_size=) to centre-crop all to one size"
    return f"image is {h}x{w} but {first} is {eh}x{ew}{hint}"

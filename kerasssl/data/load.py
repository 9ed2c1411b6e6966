"""Read a data path (a folder of images, or TFRecord shards) into one float32 (N, H, W, C) array.

DATA is a folder of ``.npy``/FITS images in one of the layouts of
:mod:`kerasssl.data.folders` (flat ``nl_``-prefixed, or class sub-folders),
or TFRecord shards (a glob, a ``*.tfrecord*`` path, or a folder holding only
shards), whose reading is delegated to :mod:`kerasssl.data.tfrecord.reader`.

Arrays may be (H, W), (H, W, C) or channels-first (C, H, W); they are returned
as (H, W, C). Which axis holds the bands is decided once for the whole data set
from every file's stored shape (read from the headers before any pixel is
read; see :func:`channel_layout`), or set with ``channel_axis`` ("first" /
"last"; ``data.channel_axis``, ``--channels-first/--channels-last``).
``.npy`` headers are checked against the file size before anything is
allocated. The per-file readers and the band-axis rule live in
:mod:`kerasssl.data.arrays`, the listing of a folder in
:mod:`kerasssl.data.folders`, :class:`ImageSet` and the crop rules in
:mod:`kerasssl.data.imageset`; all are importable from here too. Pixels are
kept raw (NaN/Inf included): repair and normalisation happen in
:class:`kerasssl.layers.preprocess.Preprocess` (NumPy reference in
:mod:`kerasssl.data.clean`). Input files are only ever read.

Cropping: with ``image_size`` every image is centre-cropped to
``image_size x image_size`` as it is read (so only one full-size file is in
memory at a time). An image *smaller* than ``image_size`` is refused with a
DataError rather than padded (:func:`kerasssl.data.imageset.crop_to_size`).

Example:
    >>> data = load_images("deeplense/hst", image_size=224)
    >>> data.images.shape, data.class_names
    ((215, 224, 224, 1), ['nonlens', 'lens'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

# Re-exported: load is where readers of DATA look first (load_images returns an
# ImageSet; predict and inspect use the per-file readers and suffixes).
from kerasssl.data.arrays import (  # noqa: F401
    CHANNEL_AXES,
    FITS_SUFFIXES,
    ChannelLayout,
    as_float32,
    channel_layout,
    check_channel_axis,
    check_finite_bands,
    hwc_shape,
    read_array,
    read_stored,
    shape_text,
    stored_shape,
    to_hwc,
)
from kerasssl.data.folders import (  # noqa: F401
    NPY_SUFFIXES,
    SIDECAR_FILES,
    Listing,
    is_tfrecord_path,
    scan,
    tfrecord_pattern,
)
from kerasssl.data.imageset import ImageSet, check_image_size, crop_to_size, shape_mismatch
from kerasssl.errors import DataError


def check_data_path(path) -> str:
    """The one check of a DATA argument: what it names, or a one-line :class:`DataError`.

    Every command that takes DATA (pretrain, finetune, fit, evaluate, inspect)
    accepts the same forms, decided here as :func:`load_images` decides them:
    a data folder (flat ``nl_``-prefixed or class sub-folders), or TFRecord
    shards as a glob, one shard, or a folder holding only shards. Cheap (lists
    files, reads no pixels), so a command calls it before it creates or writes
    into a run directory.

    Returns:
        ``"folder"`` or ``"tfrecord"``.

    Raises:
        DataError: nothing there, a glob that matches no shard, a single image
            file (training needs a folder: the classes come from the layout),
            or a folder without images.

    Example:
        >>> check_data_path("data/hst")          # a folder: scanned
        'folder'
        >>> check_data_path("rec/*.tfrecord*")   # shards: found
        'tfrecord'
    """
    pattern = tfrecord_pattern(path)
    if pattern is not None:
        # Imported here: reading folders needs no TensorFlow.
        from kerasssl.data.tfrecord.shards import find_shards

        find_shards(pattern)
        return "tfrecord"
    scan(path)
    return "folder"


def load_images(path, *, image_size: Optional[int] = None, allow_pickle: bool = False,
                channel_axis: str = "auto") -> ImageSet:
    """Read every image of a data folder (or TFRecord shards) into one array.

    Two passes: the headers of all files first (shape checks, the band axis
    of the whole set by :func:`channel_layout`; no pixels read), then the
    pixels, one file at a time, cropped as they are read.

    Args:
        path: a data folder (flat ``nl_``-prefixed or class sub-folders), a glob,
            or a ``*.tfrecord*`` path.
        image_size: centre-crop every image to this size (square) as it is read;
            needed when the files differ in size. Images smaller than this are
            refused (never padded).
        allow_pickle: read object arrays (element 0 is the image); trusted files only.
        channel_axis: "auto" (decide from all files), "first" (C, H, W) or
            "last" (H, W, C); ``data.channel_axis``.

    Returns:
        :class:`ImageSet` with raw float32 (N, H, W, C) images, NaN kept;
        ``meta["channel_layout"]`` says which axis held the bands and why.

    Raises:
        DataError: bad file (corrupt, empty, a header claiming more than the
            file holds, .npz, object array without opt-in, 1-D or 4-D, all-NaN
            band, wrong size / channel count), unclear band axis, empty class
            folder, folder without images.

    Example:
        >>> data = load_images("sim/3b")
        >>> data.images.shape, data.class_counts()
        ((60, 64, 64, 3), {'nonlenses': 30, 'lenses': 30})
    """
    pattern = tfrecord_pattern(path)
    if pattern is not None:
        from kerasssl.data.tfrecord.reader import load_tfrecords  # here: folders need no TF

        return load_tfrecords(pattern, image_size=image_size, channel_axis=channel_axis)
    check_image_size(image_size)
    check_channel_axis(channel_axis)

    listing = scan(path)
    root = Path(listing.root)
    n = len(listing.entries)
    # Pass 1, headers only: a bad file or an unclear layout is refused before
    # any pixel is read, and the band axis is the same for every file.
    shapes = [stored_shape(root / rel, allow_pickle) for rel, _ in listing.entries]
    layout = channel_layout(shapes, channel_axis, source=root,
                            files=[rel for rel, _ in listing.entries])
    axis = layout.axis or "last"  # None: all 2-D, nothing to transpose
    images = None
    first_file = None
    stored_dtypes = set()
    for i, (rel, _) in enumerate(listing.entries):
        file = root / rel
        raw = read_stored(file, allow_pickle)
        stored_dtypes.add(str(raw.dtype))
        raw = as_float32(raw, file)
        if tuple(raw.shape) != shapes[i]:  # e.g. replaced between the two passes
            raise DataError(file, f"holds a {shape_text(raw.shape)} array but its header said "
                                  f"{shape_text(shapes[i])}")
        image = crop_to_size(to_hwc(raw, file, axis), image_size, file)
        if images is None:
            # Allocate once: a few thousand 3x239x239 files fit, cropping as we go.
            images = np.empty((n,) + image.shape, dtype=np.float32)
            first_file = file
        elif image.shape != images.shape[1:]:
            raise DataError(file, shape_mismatch(image.shape, images.shape[1:], first_file.name,
                                                 image_size))
        check_finite_bands(image, file)
        images[i] = image

    labels = np.array([label for _, label in listing.entries], dtype=np.int64)
    return ImageSet(
        images=images,
        labels=labels,
        class_names=list(listing.class_names),
        files=[rel for rel, _ in listing.entries],
        format=listing.format,
        root=str(root),
        meta={
            "stored_dtypes": sorted(stored_dtypes),
            "stored_shapes": sorted(list(s) for s in set(shapes)),
            "channel_layout": layout.to_dict(),
        },
    )

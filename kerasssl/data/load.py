"""Read DeepLense-style image folders into one float32 (N, H, W, C) array.

Layouts (detected, never configured):

- **flat folder** (format ``"hst"``): image files directly in DATA; a file named
  ``nl_*`` is a non-lens, anything else a lens. Classes ``["nonlens", "lens"]``.
- **class folders** (format ``"folders"``): one sub-folder per class, files
  directly inside it. Classes are the folder names; a binary lens set
  (``nonlenses``/``lenses``, ``nonlens``/``lens``, ``non_X``/``X``) puts the
  non-lens class at label 0, any other set is sorted by name.
- either layout with FITS files only (format ``"fits"``).
- a glob or ``*.tfrecord*`` path, or a folder holding only TFRecord shards
  (format ``"tfrecord"``): delegated to :mod:`kerasssl.data.tfrecord`.

Arrays may be (H, W), (H, W, C) or channels-first (C, H, W); they are returned
as (H, W, C). Which axis holds the bands is decided once for the whole data set
from every file's stored shape (read from the headers before any pixel is
read; see :func:`channel_layout`), or set with ``channel_axis`` ("first" /
"last"; ``data.channel_axis``, ``--channels-first/--channels-last``).
``.npy`` headers are checked against the file size before anything is
allocated. The per-file readers and the band-axis rule live in
:mod:`kerasssl.data.arrays` (and are importable from here). Pixels are kept raw (NaN/Inf included): repair and normalisation
happen in :class:`kerasssl.layers.preprocess.Preprocess` (NumPy reference in
:mod:`kerasssl.data.clean`). Input files are only ever read.

Cropping: with ``image_size`` every image is centre-cropped to
``image_size x image_size`` as it is read (so only one full-size file is in
memory at a time). An image *smaller* than ``image_size`` is refused with a
DataError rather than padded: reflection or zero padding would invent
structure (mirrored arcs, sharp edges) that a lens finder can learn.

Example:
    >>> data = load_images("deeplense/hst", image_size=224)
    >>> data.images.shape, data.class_names
    ((215, 224, 224, 1), ['nonlens', 'lens'])
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from kerasssl.data.arrays import (  # noqa: F401 - read_array, to_hwc, ... are load's API too
    CHANNEL_AXES,
    FITS_SUFFIXES,
    NPZ_PROBLEM,
    ChannelLayout,
    _as_float32,
    _is_fits,
    _read_raw,
    _shape_text,
    channel_layout,
    check_channel_axis,
    check_finite_bands,
    hwc_shape,
    read_array,
    stored_shape,
    to_hwc,
)
from kerasssl.data.clean import center_crop
from kerasssl.errors import DataError, KerassslError

logger = logging.getLogger(__name__)

NPY_SUFFIXES = (".npy",)
NPZ_SUFFIX = ".npz"
NONLENS_PREFIX = "nl_"
_GLOB_CHARS = set("*?[")


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


@dataclass
class Listing:
    """What :func:`scan` found: the files and labels of a data folder, no pixels.

    Args:
        root: the data folder.
        format: "hst" | "folders" | "fits".
        class_names: class name per label.
        entries: (relative path, label) per image, in load order.
    """

    root: str
    format: str
    class_names: List[str]
    entries: List[Tuple[str, int]]

    def paths(self) -> List[Path]:
        """Absolute paths of the entries, in order."""
        root = Path(self.root)
        return [root / rel for rel, _ in self.entries]


# -- format detection ---------------------------------------------------------


def is_tfrecord_path(path) -> bool:
    """True for a glob pattern or a path naming TFRecord shards."""
    text = str(path)
    return bool(_GLOB_CHARS & set(text)) or ".tfrecord" in Path(text).name


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(NPY_SUFFIXES) or name.endswith(FITS_SUFFIXES)


def _natural_key(text: str):
    # "2_hst.npy" before "10_hst.npy": numbers compare as numbers.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _visible(children):
    return [c for c in children if not c.name.startswith(".")]


# Files kerasssl itself writes beside images (simulate, convert): expected, not warned about.
SIDECAR_FILES = {"metadata.csv", "manifest.json"}


def _warn_skipped(folder: Path, skipped: Sequence[Path]) -> None:
    sidecars = [p for p in skipped if p.name in SIDECAR_FILES and p.is_file()]
    if sidecars:
        logger.debug("%s: not images, ignored: %s", folder, ", ".join(p.name for p in sidecars))
    skipped = [p for p in skipped if p not in sidecars]
    if not skipped:
        return
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    one = len(skipped) == 1
    logger.warning(
        "%s: skipped %d entr%s that %s not .npy/.fits images: %s%s",
        folder, len(skipped), "y" if one else "ies", "is" if one else "are", names, more,
    )


def _refuse_npz(folder: Path, children) -> None:
    """An .npz archive where images are expected: say so, instead of skipping it."""
    archives = [c for c in children if c.is_file() and c.name.lower().endswith(NPZ_SUFFIX)]
    if archives:
        more = f" (and {len(archives) - 1} more .npz in {folder})" if len(archives) > 1 else ""
        raise DataError(archives[0], NPZ_PROBLEM + more)


def _binary_lens_order(names: List[str]) -> Optional[List[str]]:
    """[non-lens, lens] if two folder names differ by a "non" ("lenses" /
    "nonlenses", "lens" / "non_lens", "train_lenses" / "train_nonlenses")."""
    if len(names) != 2:
        return None
    a, b = names
    for neg, pos in ((a, b), (b, a)):
        low_neg, low_pos = neg.lower(), pos.lower()
        for marker in ("non_", "non-", "non"):
            at = low_neg.find(marker)
            if at >= 0 and low_neg[:at] + low_neg[at + len(marker):] == low_pos:
                return [neg, pos]
    return None


def scan(path) -> Listing:
    """List the images of a data folder and their labels without reading pixels.

    Args:
        path: a flat folder (``nl_`` prefix = non-lens) or a folder of class
            sub-folders.

    Returns:
        A :class:`Listing` in load order: by label, then file name (numbers
        compared as numbers).

    Raises:
        DataError: missing folder, a folder with no images, an empty class
            folder, a ``.npz`` archive among the images, or a TFRecord path
            (read those with ``load_images``).

    Example:
        >>> listing = scan("data/3b")
        >>> listing.class_names, listing.entries[0]
        (['nonlenses', 'lenses'], ('nonlenses/nonlenses_0.npy', 0))
    """
    root = Path(path)
    if is_tfrecord_path(root):
        raise DataError(root, "is TFRecord data; scan() lists folders of .npy/.fits files")
    if not root.exists():
        raise DataError(root, "no such file or folder")
    if not root.is_dir():
        raise DataError(root, "is a file; expected a folder of .npy/.fits images")

    children = sorted(_visible(root.iterdir()), key=lambda p: _natural_key(p.name))
    _refuse_npz(root, children)
    top_images = [c for c in children if c.is_file() and _is_image_file(c)]
    subdirs = [c for c in children if c.is_dir()]

    if top_images:
        # Flat, prefix-labelled folder (DeepLense HST layout).
        _warn_skipped(root, [c for c in children if not (c.is_file() and _is_image_file(c))])
        class_names = ["nonlens", "lens"]
        entries = [
            (p.name, 0 if p.name.lower().startswith(NONLENS_PREFIX) else 1) for p in top_images
        ]
        entries.sort(key=lambda e: (e[1], _natural_key(e[0])))
        files = top_images
        fmt = "hst"
    elif subdirs:
        _warn_skipped(root, [c for c in children if c.is_file()])
        names = [d.name for d in subdirs]
        class_names = _binary_lens_order(names) or sorted(names)
        entries, files = [], []
        for label, name in enumerate(class_names):
            folder = root / name
            inner = sorted(_visible(folder.iterdir()), key=lambda p: _natural_key(p.name))
            _refuse_npz(folder, inner)
            images = [c for c in inner if c.is_file() and _is_image_file(c)]
            _warn_skipped(folder, [c for c in inner if not (c.is_file() and _is_image_file(c))])
            if not images:
                raise DataError(folder, "empty class folder: no .npy/.fits images in it")
            entries.extend((f"{name}/{p.name}", label) for p in images)
            files.extend(images)
        fmt = "folders"
    else:
        raise DataError(root, "no images: expected .npy/.fits files or one sub-folder per class")

    if all(_is_fits(p) for p in files):
        fmt = "fits"
    return Listing(root=str(root), format=fmt, class_names=class_names, entries=entries)


def _tfrecord_pattern(path) -> Optional[str]:
    """A shard pattern if ``path`` is TFRecord data (glob, shard, or folder of shards)."""
    if is_tfrecord_path(path):
        return str(path)
    root = Path(path)
    if root.is_dir():
        names = [c.name for c in _visible(root.iterdir()) if c.is_file()]
        has_images = any(_is_image_file(root / n) for n in names)
        has_subdirs = any(c.is_dir() for c in _visible(root.iterdir()))
        if not has_images and not has_subdirs and any(".tfrecord" in n for n in names):
            return str(root)  # load_tfrecords takes a folder of shards
    return None


# -- the whole folder ---------------------------------------------------------


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
    pattern = _tfrecord_pattern(path)
    if pattern is not None:
        from kerasssl.data.tfrecord import find_shards

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
    pattern = _tfrecord_pattern(path)
    if pattern is not None:
        from kerasssl.data.tfrecord import load_tfrecords

        return load_tfrecords(pattern, image_size=image_size, channel_axis=channel_axis)
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise KerassslError(f"image size must be a positive integer, got {image_size!r}")
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
        raw = _read_raw(file, allow_pickle)
        stored_dtypes.add(str(raw.dtype))
        raw = _as_float32(raw, file)
        if tuple(raw.shape) != shapes[i]:  # e.g. replaced between the two passes
            raise DataError(file, f"holds a {_shape_text(raw.shape)} array but its header said "
                                  f"{_shape_text(shapes[i])}")
        image = to_hwc(raw, file, axis)
        if image_size is not None:
            h, w = image.shape[:2]
            if h < image_size or w < image_size:
                raise DataError(
                    file,
                    f"image is {h}x{w}, smaller than the crop size {image_size} "
                    "(images are cropped, never padded)",
                )
            image = center_crop(image, image_size)
        if images is None:
            # Allocate once: a few thousand 3x239x239 files fit, cropping as we go.
            images = np.empty((n,) + image.shape, dtype=np.float32)
            first_file = file
        elif image.shape != images.shape[1:]:
            raise DataError(file, _shape_mismatch(image.shape, images.shape[1:], first_file,
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


def _shape_mismatch(shape, expected, first_file, image_size) -> str:
    h, w, c = shape
    eh, ew, ec = expected
    if c != ec:
        return (f"has {c} band(s) but {first_file.name} has {ec}; all images need the "
                "same number of bands")
    hint = "" if image_size else "; pass --image-size (image_size=) to centre-crop all to one size"
    return f"image is {h}x{w} but {first_file.name} is {eh}x{ew}{hint}"


"""What a data folder holds: its layout, classes and image files, found without reading a pixel.

Layouts (detected, never configured):

- **flat folder** (format ``"hst"``): image files directly in DATA; a file named
  ``nl_*`` is a non-lens, anything else a lens. Classes ``["nonlens", "lens"]``.
- **class folders** (format ``"folders"``): one sub-folder per class, files
  directly inside it. Classes are the folder names; a binary lens set
  (``nonlenses``/``lenses``, ``nonlens``/``lens``, ``non_X``/``X``) puts the
  non-lens class at label 0, any other set is sorted by name.
- either layout with FITS files only (format ``"fits"``).

A glob, a ``*.tfrecord*`` path, or a folder holding only TFRecord shards is
TFRecord data (:func:`tfrecord_pattern`), read by :mod:`kerasssl.data.tfrecord`.
:mod:`kerasssl.data.load` reads the pixels of what :func:`scan` lists; the
TFRecord writer converts what it lists. Files are only ever read.

Example:
    >>> listing = scan("data/3b")
    >>> listing.class_names, listing.entries[0]
    (['nonlenses', 'lenses'], ('nonlenses/nonlenses_0.npy', 0))
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from kerasssl.data.arrays import FITS_SUFFIXES, NPZ_PROBLEM, is_fits
from kerasssl.errors import DataError

logger = logging.getLogger(__name__)

NPY_SUFFIXES = (".npy",)
NPZ_SUFFIX = ".npz"
NONLENS_PREFIX = "nl_"
_GLOB_CHARS = set("*?[")


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

    if all(is_fits(p) for p in files):
        fmt = "fits"
    return Listing(root=str(root), format=fmt, class_names=class_names, entries=entries)


def tfrecord_pattern(path) -> Optional[str]:
    """A shard pattern if ``path`` is TFRecord data (glob, shard, or folder of shards), else None.

    Example:
        >>> tfrecord_pattern("rec/*.tfrecord*"), tfrecord_pattern("data/hst")
        ('rec/*.tfrecord*', None)
    """
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

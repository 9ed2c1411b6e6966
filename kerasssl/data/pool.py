"""Unlabeled pools of survey cutouts: listing, header checks, and reading one file as the model takes it.

A pool (``--unlabeled PATH``, ``pretrain.unlabeled``) is a folder of
``.npy``/FITS cutouts at any depth, whose folder names carry no class meaning,
or TFRecord shards (a glob, one shard, or a folder of shards), written with or
without a label (labels are ignored). Before the first training step each
pool goes through, in this order:

1. :func:`list_pool`: names and sizes only, and a *listing fingerprint*
   (blake2b over every name, size and mtime) that ``--resume`` compares;
2. :func:`check_headers` (folders): every ``.npy``/FITS header, with the
   labelled data's checks (:mod:`kerasssl.data.arrays`), and the band axis
   decided once from all stored shapes. A truncated file among 10^5 fails in
   seconds, before any pixel is read;
3. the content pass and the leak guard (:mod:`kerasssl.data.poolscan`), which
   read each file with :func:`read_stored` / :func:`model_image`, as the
   training stream (:mod:`kerasssl.data.poolstream`) does.

Bad files: strict by default (one line naming the file, exit 2); with
``skip_bad`` they are skipped, counted and listed. Files are only ever read.
``kerasssl convert POOL OUT --unlabeled`` is :func:`convert_pool`.

Example:
    >>> files, skipped = list_pool("survey/pool")
    >>> layout = check_headers(files, image_size=32, skipped=skipped)
    >>> layout.image_shape, len(layout.index)
    ((32, 32, 3), 3000)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from kerasssl.data.arrays import (
    FITS_SUFFIXES,
    NPZ_PROBLEM,
    ChannelLayout,
    shape_text,
    channel_layout,
    check_finite_bands,
    hwc_shape,
    stored_shape,
    to_hwc,
)
from kerasssl.data.imageset import center_crop
from kerasssl.errors import DataError, KerassslError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".npy",) + FITS_SUFFIXES
#: Files kerasssl writes beside images (simulate, convert): not images, not warned about.
SIDECAR_FILES = {"metadata.csv", "manifest.json"}
#: Images kept from the content pass for ``dataset`` normalisation statistics (and the NaN hint).
_GLOB_CHARS = set("*?[")
#: A TFRecord image's id: shard index << 32 | record index in its shard.
RECORD_BITS = 32


@dataclasses.dataclass
class PoolFiles:
    """One pool as listed (no file opened).

    Args:
        path: the path as given (``--unlabeled``).
        kind: "folder" or "tfrecord".
        root: the folder, or the shard pattern.
        files: image paths relative to ``root`` (folder), or shard paths (tfrecord), sorted.
        sizes: bytes of each file.
        listing_fingerprint: blake2b-128 (hex) over every file's name, size and mtime.
        ignored: files that are neither images nor kerasssl's own sidecar files.
        manifest: the shards' ``manifest.json`` (tfrecord), or None.
    """

    path: str
    kind: str
    root: str
    files: List[str]
    sizes: List[int]
    listing_fingerprint: str
    ignored: int = 0
    manifest: Optional[dict] = None

    @property
    def bytes(self) -> int:
        return int(sum(self.sizes))


def is_tfrecord_pool(path) -> bool:
    """True for a glob, a ``*.tfrecord*`` path, or a folder holding shards and no images."""
    text = str(path)
    if _GLOB_CHARS & set(text) or ".tfrecord" in Path(text).name:
        return True
    root = Path(text)
    if not root.is_dir():
        return False
    names = [c.name for c in root.iterdir() if not c.name.startswith(".")]
    return (any(".tfrecord" in n for n in names)
            and not any(n.lower().endswith(IMAGE_SUFFIXES) or (root / n).is_dir() for n in names))


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _listing_fingerprint(rows) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, size, mtime_ns in rows:
        h.update(f"{name}\0{size}\0{mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def list_folder_pool(path, *, skip_bad: bool = False) -> Tuple[PoolFiles, list]:
    """Every ``.npy``/FITS file under ``path`` at any depth (hidden entries skipped), sorted.

    Folder names carry no class meaning. An ``.npz`` archive is refused by
    name, as in labelled data (with ``skip_bad``: skipped and reported).

    Returns:
        ``(PoolFiles, skipped)``, ``skipped`` a list of ``(relative path, problem)``.

    Raises:
        DataError: no such folder, a file where a folder is expected, no images,
            an ``.npz`` (strict).

    Example:
        >>> files, _ = list_folder_pool("survey/pool")
        >>> files.files[:2]
        ['pool_000000.npy', 'pool_000001.npy']
    """
    root = Path(path)
    if not root.exists():
        raise DataError(root, "no such file or folder")
    if not root.is_dir():
        raise DataError(root, "is a file; an unlabeled pool is a folder of .npy/.fits images "
                              "(at any depth) or TFRecord shards")
    found, skipped, ignored = [], [], 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            low = name.lower()
            rel = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
            if low.endswith(IMAGE_SUFFIXES):
                found.append(rel)
            elif low.endswith(".npz"):
                if not skip_bad:
                    raise DataError(root / rel, NPZ_PROBLEM)
                skipped.append((rel, NPZ_PROBLEM))
            elif name not in SIDECAR_FILES:
                ignored += 1
    if not found:
        raise DataError(root, "no .npy/.fits images in this folder or below it")
    if ignored:
        log.warning("%s: ignored %d file(s) that are not .npy/.fits images", root, ignored)
    found.sort(key=_natural_key)
    rows, sizes = [], []
    for rel in found:
        try:
            st = os.stat(root / rel)
        except OSError as e:
            raise DataError(root / rel, f"cannot read file ({e.strerror or e})") from None
        rows.append((rel, st.st_size, st.st_mtime_ns))
        sizes.append(int(st.st_size))
    return PoolFiles(path=str(path), kind="folder", root=str(root), files=found, sizes=sizes,
                     listing_fingerprint=_listing_fingerprint(rows), ignored=ignored), skipped


def list_tfrecord_pool(pattern) -> PoolFiles:
    """The shards of a TFRecord pool (glob, shard, folder of shards), with their manifest if any."""
    import tensorflow as tf

    from kerasssl.data.tfrecord import find_shards, read_manifest

    shards = find_shards(pattern)
    manifest, _ = read_manifest(shards)
    rows, sizes = [], []
    for shard in shards:
        st = tf.io.gfile.stat(shard)
        rows.append((shard, st.length, st.mtime_nsec))
        sizes.append(int(st.length))
    return PoolFiles(path=str(pattern), kind="tfrecord", root=str(pattern), files=list(shards),
                     sizes=sizes, listing_fingerprint=_listing_fingerprint(rows), manifest=manifest)


def list_pool(path, *, skip_bad: bool = False) -> Tuple[PoolFiles, list]:
    """List one pool, folder or shards: ``(PoolFiles, skipped)`` (see :func:`list_folder_pool`)."""
    if is_tfrecord_pool(path):
        return list_tfrecord_pool(path), []
    return list_folder_pool(path, skip_bad=skip_bad)


# -- headers (folders) -----------------------------------------------------------------


@dataclasses.dataclass
class PoolLayout:
    """What the headers said: usable files, the band axis, the image shape as the model takes it.

    Args:
        files: the listing.
        index: rows of ``files.files`` that passed the header checks.
        layout: the band axis of the pool (None for shards without a manifest:
            decided in the content pass).
        image_shape: (H, W, C) after the crop, or None until the content pass (shards).
        skipped: ``(name, problem)`` of files refused so far (``skip_bad``).
    """

    files: PoolFiles
    index: np.ndarray
    layout: Optional[ChannelLayout]
    image_shape: Optional[Tuple[int, int, int]]
    skipped: list


def check_headers(files: PoolFiles, *, image_size=None, channel_axis="auto", allow_pickle=False,
                  skip_bad=False, expected_shape=None, skipped=()) -> PoolLayout:
    """Check a pool's headers (no pixel read) and decide its band axis and image shape.

    For a folder: every file's header (:func:`kerasssl.data.arrays.stored_shape`),
    the band axis from all shapes (:func:`kerasssl.data.arrays.channel_layout`),
    each image's (H, W, C) after the crop. For shards: the manifest's axis and
    shapes when there is one (otherwise the content pass decides).

    Args:
        files: from :func:`list_pool`.
        image_size: centre-crop size (``data.image_size``); None keeps the files' size.
        channel_axis: "auto", "first" or "last" (``data.channel_axis``).
        allow_pickle: read object arrays (element 0); trusted files only.
        skip_bad: skip and report bad files instead of refusing the pool.
        expected_shape: (H, W, C) the pool must match (the labelled images'), or None.
        skipped: problems already found (by the listing), carried on.

    Raises:
        DataError: a bad file (strict), an unclear band axis, sizes that differ
            without ``image_size``, a pool whose images do not match ``expected_shape``,
            no usable file.
    """
    skipped = list(skipped)
    if files.kind == "tfrecord":
        from kerasssl.data.tfrecord.shards import shard_layout

        layout = shard_layout(channel_axis, files.manifest, files.root)
        shape = None
        stored = [tuple(map(int, s.split("x"))) for s in (files.manifest or {}).get("shapes") or {}]
        if layout is not None and stored:
            shapes = {_cropped(hwc_shape(s, layout.axis, files.root), image_size) for s in stored}
            shapes.discard(None)
            if len(shapes) == 1:
                shape = next(iter(shapes))
                _check_expected(files.root, shape, expected_shape)
        return PoolLayout(files, np.arange(len(files.files)), layout, shape, skipped)

    root = Path(files.root)
    shapes, good = [], []
    for k, rel in enumerate(files.files):
        try:
            shapes.append(stored_shape(root / rel, allow_pickle))
            good.append(k)
        except DataError as e:
            if not skip_bad:
                raise
            skipped.append((rel, e.problem))
    if not good:
        raise DataError(root, f"no readable images ({len(skipped)} bad file(s) skipped)")
    layout = channel_layout(shapes, channel_axis, source=root, files=[files.files[k] for k in good])
    hwc = [hwc_shape(s, layout.axis, root) for s in shapes]
    cropped = [_cropped(s, image_size) for s in hwc]
    sizes = {}
    for s in cropped:
        if s is not None:
            sizes[s] = sizes.get(s, 0) + 1
    if not sizes:
        raise DataError(root, f"every image is smaller than the crop size {image_size} "
                              "(images are cropped, never padded)")
    common = max(sizes, key=sizes.get)
    if expected_shape is None and len({s[:2] for s in sizes}) > 1 and image_size is None:
        examples = ", ".join(f"{files.files[good[i]]} {s[0]}x{s[1]}" for i, s in
                             enumerate(cropped) if s is not None and s != common)
        raise DataError(root, f"images differ in size ({examples.split(', ')[0]}, most are "
                              f"{common[0]}x{common[1]}); pass --image-size (data.image_size) to "
                              "centre-crop all to one size")
    _check_expected(root, common, expected_shape)
    target = tuple(expected_shape) if expected_shape is not None else common
    index = []
    for k, s, raw in zip(good, cropped, hwc):
        problem = None
        if s is None:
            problem = (f"image is {raw[0]}x{raw[1]}, smaller than the crop size {image_size} "
                       "(images are cropped, never padded)")
        elif s != target:
            problem = f"image is {shape_text(s)} (H x W x C) but the pool's are {shape_text(target)}"
        if problem is None:
            index.append(k)
        elif skip_bad:
            skipped.append((files.files[k], problem))
        else:
            raise DataError(root / files.files[k], problem)
    return PoolLayout(files, np.asarray(index, np.int64), layout, tuple(target), skipped)


def _cropped(hwc, image_size):
    """(H, W, C) after the centre crop, or None if the image is smaller than the crop."""
    if image_size is None:
        return tuple(hwc)
    if hwc[0] < image_size or hwc[1] < image_size:
        return None
    return (int(image_size), int(image_size), int(hwc[2]))


def _check_expected(root, shape, expected):
    if expected is None or tuple(shape) == tuple(expected):
        return
    if shape[2] != expected[2]:
        raise DataError(root, f"pool images have {shape[2]} band(s) but the labelled images have "
                              f"{expected[2]}; pretraining needs the same bands")
    raise DataError(root, f"pool images are {shape[0]}x{shape[1]} but the labelled images are "
                          f"{expected[0]}x{expected[1]}; set --image-size (data.image_size) to crop both")


def id_name(files: PoolFiles, image_id: int) -> str:
    if files.kind == "folder":
        return files.files[image_id]
    shard, index = image_id >> RECORD_BITS, image_id & ((1 << RECORD_BITS) - 1)
    return f"{files.files[shard]} record {index}"




def model_image(array, name, axis, image_size) -> np.ndarray:
    """One stored array -> the (H, W, C) float32 image the model takes (layout, crop, finite bands).

    Raises:
        DataError: naming ``name``.
    """
    image = to_hwc(np.asarray(array, np.float32), name, axis or "last")
    if image_size is not None:
        h, w = image.shape[:2]
        if h < image_size or w < image_size:
            raise DataError(name, f"image is {h}x{w}, smaller than the crop size {image_size} "
                                  "(images are cropped, never padded)")
        image = center_crop(image, int(image_size))
    check_finite_bands(image, name)
    return np.ascontiguousarray(image)


def read_pool_file(path, axis, image_size, allow_pickle=False) -> Tuple[np.ndarray, str, tuple]:
    """(image as the model takes it, stored dtype, stored shape) of one pool file."""
    raw, _ = read_stored(path, allow_pickle)
    return model_image(raw, path, axis, image_size), str(raw.dtype), tuple(raw.shape)


def read_stored(path, allow_pickle=False) -> Tuple[np.ndarray, Optional[tuple]]:
    """The stored array of one pool file, and ``(data offset, dtype str, shape)`` for the stream.

    The second is None unless the file is a C-order ``.npy`` of a dtype in
    :data:`RAW_DTYPES`: what the stream needs to read it in TF ops
    (``read_file`` + ``decode_raw``). A plain numeric ``.npy`` is read in one
    go with its header parsed once (a pool has millions: this is 3x the
    general reader here); anything else (FITS, object arrays, a header that
    claims more than the file holds, ...) goes through the labelled data's
    reader and its checks and messages (:mod:`kerasssl.data.arrays`).
    """
    from kerasssl.data.arrays import check_numeric
    from kerasssl.data.arrays import read_stored as read_array_as_stored

    path = Path(path)
    if path.name.lower().endswith(".npy"):
        try:
            data = path.read_bytes()
            stream = io.BytesIO(data)
            version = np.lib.format.read_magic(stream)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(stream)
            offset, count = stream.tell(), math.prod(shape)
            plain = (not dtype.hasobject and count * dtype.itemsize <= len(data) - offset
                     and (np.issubdtype(dtype, np.number) or dtype == bool))
        except (OSError, ValueError, SyntaxError, EOFError):
            plain = False
        if plain:
            check_numeric(dtype, shape, path)
            array = np.frombuffer(data, dtype, count=count, offset=offset).reshape(
                shape, order="F" if fortran else "C")
            raw = None if fortran or dtype.str[1:] not in RAW_DTYPES else (offset, dtype.str, tuple(shape))
            return array, raw
    return read_array_as_stored(path, allow_pickle), None


#: Stored dtypes the stream can decode in TF ops (``tf.io.decode_raw``), without Python.
RAW_DTYPES = ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2")



def check_pool_paths(paths) -> List[str]:
    """``pretrain.unlabeled`` as a list of path strings, or a one-line KerassslError."""
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, (list, tuple)) or not all(isinstance(p, (str, os.PathLike)) and str(p)
                                                       for p in paths):
        raise KerassslError(f"pretrain.unlabeled must be a list of folders or TFRecord globs, got {paths!r}")
    paths = [str(p) for p in paths]
    if len(set(paths)) != len(paths):
        raise KerassslError(f"pretrain.unlabeled names a pool twice: {paths}")
    return paths


def check_pools_disjoint(pools) -> None:
    """Refuse two pools that read the same files: each image would be streamed twice an epoch.

    Folder pools overlap when one's folder is, or is inside, the other's (both
    list every image below them); shard pools when they share a shard. Paths
    are compared resolved, so ``pool``, ``pool/`` and a symlink to it are one.
    Cheap: folders are compared by root, never file by file.

    Args:
        pools: the :class:`PoolFiles` of every ``--unlabeled`` pool.

    Raises:
        DataError: the later pool, and the earlier one it overlaps.
    """
    def resolved(path):
        return path if "://" in path else os.path.realpath(path)

    folders, shards = [], {}
    for pool in pools:
        if pool.kind == "folder":
            root = resolved(pool.root)
            for other, other_root in folders:
                if root == other_root or root.startswith(other_root + os.sep) or other_root.startswith(root + os.sep):
                    how = "is the same folder as" if root == other_root else "overlaps"
                    raise DataError(pool.path, f"{how} the pool {other}: its images would be streamed twice; "
                                               "give each pool once")
            folders.append((pool.path, root))
            continue
        for shard in pool.files:
            other = shards.setdefault(resolved(shard), pool.path)
            if other != pool.path:
                raise DataError(pool.path, f"reads the shard {shard}, which the pool {other} reads too: its "
                                           "records would be streamed twice; give each pool once")


def convert_pool(path, out_dir, **options) -> dict:
    """``kerasssl convert POOL OUT --unlabeled``: a folder pool -> TFRecord shards without labels.

    The files are those :func:`list_folder_pool` lists (any depth); records hold
    ``image``, ``shape`` and ``filename`` (see ``kerasssl.data.tfrecord.UNLABELED_FEATURES``).

    Args:
        path: the pool folder.
        out_dir: the new folder of shards.
        options: ``shards``, ``compression``, ``allow_pickle``, ``progress``, ``channel_axis``
            of ``kerasssl.data.tfrecord.write_tfrecords``.

    Returns:
        The manifest (``"labeled": false``, ``counts {"unlabeled": n}``).

    Example:
        >>> convert_pool("survey/pool", "survey/poolrec", shards=8)["num_records"]
        3000
    """
    from kerasssl.data.tfrecord import write_tfrecords

    files, _ = list_folder_pool(path)
    return write_tfrecords(files.root, out_dir, unlabeled_files=files.files, **options)

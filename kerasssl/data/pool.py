"""Unlabeled pools of survey cutouts: listing, checks, the content pass, the leak guard, the record.

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
3. :func:`scan_pool`, the *content pass*: every image read once, in parallel,
   exactly as the model will take it (band axis, centre crop), its bands
   checked for finite pixels, its content fingerprint
   (:func:`kerasssl.fingerprints.fingerprint`) taken and NaN/Inf counted.
   Memory: 24 bytes per image (fingerprint + id) and a bounded sample.

The **leak guard** (:func:`leak_guard`) compares those fingerprints with the
labelled set's val/test images: a survey pool usually contains the known
lenses, and pretraining on a test image would flatter the evaluation. Equal
images are left out of pretraining, counted, and recorded (``RUN/pools.json``).

Why a content pass before training rather than hashing inside the training
stream: the leak guard's count, the skipped files (``--skip-bad``) and the
pool's content fingerprint are then complete and recorded before the first
step, whatever ``--steps-per-epoch`` later reaches; a file with unrepairable
pixels stops the run (or is skipped) now, not hours in; and the stream stays a
plain read (TF ops for shards, no Python hash per record in the hot loop),
filtering by id. The cost is one extra read of the pool, the I/O of one epoch
without any compute.

Bad files: strict by default (one line naming the file, exit 2); with
``skip_bad`` they are skipped, counted and listed (``RUN/skipped_files.txt``).
Files are only ever read. The training stream itself is
:mod:`kerasssl.data.poolstream`.

Example:
    >>> files = list_pool("survey/pool")
    >>> scan = scan_pool(files, image_size=32)
    >>> guard = leak_guard([scan], fingerprints(x_test), test_files)
    >>> guard.excluded, scan.n_used
    (12, 2988)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from kerasssl.data.arrays import (
    FITS_SUFFIXES,
    NPZ_PROBLEM,
    ChannelLayout,
    _shape_text,
    channel_layout,
    check_finite_bands,
    hwc_shape,
    read_array,
    stored_shape,
    to_hwc,
)
from kerasssl.data.clean import center_crop
from kerasssl.errors import DataError, KerassslError
from kerasssl.fingerprints import DIGEST_SIZE, fingerprint

log = logging.getLogger(__name__)

POOLS_FILE = "pools.json"
SKIPPED_FILE = "skipped_files.txt"
IMAGE_SUFFIXES = (".npy",) + FITS_SUFFIXES
#: Files kerasssl writes beside images (simulate, convert): not images, not warned about.
SIDECAR_FILES = {"metadata.csv", "manifest.json"}
#: Images kept from the content pass for ``dataset`` normalisation statistics (and the NaN hint).
SAMPLE_IMAGES = 4096
SAMPLE_BYTES = 256 * 2 ** 20
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
        from kerasssl.data.tfrecord import _shard_layout

        layout = _shard_layout(channel_axis, files.manifest, files.root)
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
            problem = f"image is {_shape_text(s)} (H x W x C) but the pool's are {_shape_text(target)}"
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


# -- the content pass ----------------------------------------------------------------------


@dataclasses.dataclass
class PoolScan:
    """A pool after its content pass: what pretraining will stream from it.

    Args:
        files: the listing.
        layout: the band axis.
        image_shape: (H, W, C) of every image, as the model takes it.
        ids: int64 ids of the usable images (folder: row in ``files.files``;
            shards: shard index << 32 | record index), in listing order.
        fingerprints: uint8 (len(ids), 16) content fingerprints, same order.
        skipped: ``(name, problem)`` of every bad file or record skipped.
        n_images: images found (usable + skipped).
        stats: pixel statistics for ``inspect`` (see :func:`describe_pool`).
        sample_images: up to :data:`SAMPLE_IMAGES` images at seeded positions (float32).
        sample_rows: their rows in ``ids``.
        raw_layout: ``(data offset, dtype str, stored shape)`` shared by every usable
            file (:func:`npy_data_layout`; shards: ``(None, "<f4", shape)`` when all
            records have one shape), so the stream decodes in TF ops; None otherwise.
        excluded: rows of ``ids`` the leak guard took out (set by :func:`leak_guard`).
    """

    files: PoolFiles
    layout: ChannelLayout
    image_shape: Tuple[int, int, int]
    ids: np.ndarray
    fingerprints: np.ndarray
    skipped: list
    n_images: int
    stats: dict
    sample_images: np.ndarray
    sample_rows: np.ndarray
    raw_layout: Optional[tuple] = None
    excluded: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def sample(self) -> np.ndarray:
        """The seeded sample without the leak guard's exclusions (what ``dataset`` statistics see)."""
        return self.sample_images[~np.isin(self.sample_rows, self.excluded)]

    @property
    def used_ids(self) -> np.ndarray:
        """Ids of the images pretraining streams (the leak guard's exclusions removed)."""
        return np.delete(self.ids, self.excluded)

    @property
    def used_fingerprints(self) -> np.ndarray:
        return np.delete(self.fingerprints, self.excluded, axis=0)

    @property
    def n_used(self) -> int:
        return int(len(self.ids) - len(self.excluded))

    def name(self, row) -> str:
        """The file (folder) or ``shard record k`` (shards) of row ``row`` of ``ids``."""
        return id_name(self.files, int(self.ids[row]))

    @property
    def content_fingerprint(self) -> str:
        """blake2b-128 (hex) over the ids and fingerprints of every usable image, in order."""
        h = hashlib.blake2b(digest_size=16)
        h.update(np.ascontiguousarray(self.ids, "<i8").tobytes())
        h.update(np.ascontiguousarray(self.fingerprints).tobytes())
        return h.hexdigest()


def id_name(files: PoolFiles, image_id: int) -> str:
    if files.kind == "folder":
        return files.files[image_id]
    shard, index = image_id >> RECORD_BITS, image_id & ((1 << RECORD_BITS) - 1)
    return f"{files.files[shard]} record {index}"


class _Stats:
    """Running pixel statistics over finite pixels (float64), per band and overall."""

    def __init__(self):
        self.n = 0
        self.nan_pixels = self.inf_pixels = self.files_with_nan = self.files_with_inf = 0
        self.nonfinite_files = []
        self.lo, self.hi = np.inf, -np.inf
        self.count = self.total = self.square = None
        self.dtypes = set()
        self.stored_shapes = set()

    def add(self, image, name, dtype, stored):
        self.n += 1
        self.dtypes.add(str(dtype))
        self.stored_shapes.add(tuple(int(d) for d in stored))
        nan, inf = int(np.isnan(image).sum()), int(np.isinf(image).sum())
        self.nan_pixels += nan
        self.inf_pixels += inf
        self.files_with_nan += nan > 0
        self.files_with_inf += inf > 0
        if nan or inf:
            self.nonfinite_files.append(name)
        flat = image.reshape(-1, image.shape[-1]).astype(np.float64)
        finite = np.isfinite(flat)
        values = np.where(finite, flat, 0.0)
        if self.count is None:
            c = flat.shape[1]
            self.count, self.total, self.square = np.zeros(c), np.zeros(c), np.zeros(c)
        self.count += finite.sum(axis=0)
        self.total += values.sum(axis=0)
        self.square += (values * values).sum(axis=0)
        if finite.any():
            self.lo = min(self.lo, float(flat[finite].min()))
            self.hi = max(self.hi, float(flat[finite].max()))

    def as_dict(self) -> dict:
        mean = self.total / np.maximum(self.count, 1)
        std = np.sqrt(np.maximum(self.square / np.maximum(self.count, 1) - mean ** 2, 0.0))
        finite = self.lo <= self.hi
        return {"n_images": self.n, "nan_pixels": self.nan_pixels, "inf_pixels": self.inf_pixels,
                "files_with_nan": int(self.files_with_nan), "files_with_inf": int(self.files_with_inf),
                "files_with_nonfinite": len(self.nonfinite_files),
                "nonfinite_files": list(self.nonfinite_files),
                "min": self.lo if finite else None, "max": self.hi if finite else None,
                "band_mean": [float(v) for v in mean], "band_std": [float(v) for v in std],
                "stored_dtypes": sorted(self.dtypes),
                "stored_shapes": sorted(list(s) for s in self.stored_shapes)}


def sample_rows(n: int, image_shape, seed: int) -> np.ndarray:
    """Sorted, seeded positions of the images kept as the pool's sample (bounded in count and bytes)."""
    per_image = 4 * int(np.prod(image_shape))
    k = int(min(n, SAMPLE_IMAGES, max(SAMPLE_BYTES // max(per_image, 1), 1)))
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)) if k else np.zeros(0, int)


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
    from kerasssl.data.arrays import _read_raw

    raw = _read_raw(Path(path), allow_pickle)
    return model_image(raw, path, axis, image_size), str(raw.dtype), tuple(raw.shape)


#: Stored dtypes the stream can decode in TF ops (``tf.io.decode_raw``), without Python.
RAW_DTYPES = ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2")


def npy_data_layout(path) -> Optional[tuple]:
    """``(data offset, dtype str, stored shape)`` of a plain ``.npy`` file, None for anything else.

    What the stream needs to read the file in TF ops: the header's length, a
    dtype ``tf.io.decode_raw`` takes, C order. FITS, object arrays, Fortran
    order and other dtypes return None (the stream reads those in NumPy).
    """
    if not str(path).lower().endswith(".npy"):
        return None
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except (OSError, ValueError, SyntaxError, EOFError):
        return None
    if fortran or dtype.hasobject or dtype.str[1:] not in RAW_DTYPES:
        return None
    return offset, dtype.str, tuple(int(d) for d in shape)


def scan_pool(layout: PoolLayout, *, image_size=None, allow_pickle=False, skip_bad=False,
              seed=0, workers: Optional[int] = None, progress=None) -> PoolScan:
    """The content pass: read every image once, fingerprint it, check it, count NaN/Inf.

    Folders are read by a thread pool (file reads and hashing release the
    GIL); shards record by record in TensorFlow's reader, decoded in NumPy with
    the labelled data's rules. No image is kept except the seeded sample.

    Args:
        layout: from :func:`check_headers`.
        image_size / allow_pickle / skip_bad: as for :func:`check_headers`.
        seed: picks the sample's positions.
        workers: reader threads (default: 2 x CPUs, at most 16).
        progress: optional callable taking the number of images read so far.

    Returns:
        :class:`PoolScan`.

    Raises:
        DataError: a bad file or record (strict), a corrupt shard, no usable image.
    """
    if layout.files.kind == "tfrecord":
        return _scan_shards(layout, image_size=image_size, skip_bad=skip_bad, seed=seed,
                            progress=progress)
    files, root = layout.files, Path(layout.files.root)
    index = layout.index
    sample_at = set(sample_rows(len(index), layout.image_shape, seed).tolist())
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    axis, stats = layout.layout.axis, _Stats()
    fps = np.zeros((len(index), DIGEST_SIZE), np.uint8)
    ok = np.zeros(len(index), bool)
    skipped, sample, sampled_at = list(layout.skipped), [], []
    raw_layouts = set()

    def read(row):
        rel = files.files[int(index[row])]
        try:
            image, dtype, stored = read_pool_file(root / rel, axis, image_size, allow_pickle)
        except DataError as e:
            return row, None, e
        return row, (image, dtype, stored, fingerprint(image), npy_data_layout(root / rel)), None

    chunk = 256
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(index), chunk):  # bounded: one chunk of images in flight
            for row, result, error in pool.map(read, range(start, min(start + chunk, len(index)))):
                rel = files.files[int(index[row])]
                if error is not None:
                    if not skip_bad:
                        raise error
                    skipped.append((rel, error.problem))
                    continue
                image, dtype, stored, digest, raw = result
                if image.shape != tuple(layout.image_shape):  # replaced since its header was read
                    problem = f"holds a {_shape_text(image.shape)} image but its header said otherwise"
                    if not skip_bad:
                        raise DataError(root / rel, problem)
                    skipped.append((rel, problem))
                    continue
                fps[row] = np.frombuffer(digest, np.uint8)
                ok[row] = True
                if len(raw_layouts) < 2:
                    raw_layouts.add(raw)
                stats.add(image, rel, dtype, stored)
                if row in sample_at:
                    sample.append(image)
                    sampled_at.append(row)
            if progress is not None:
                progress(min(start + chunk, len(index)))
    if not ok.any():
        raise DataError(root, f"no usable images ({len(skipped)} bad file(s) skipped)")
    # Rows of the sample among the usable images (ids keeps only the readable ones).
    rows_in_ids = np.cumsum(ok) - 1
    return PoolScan(files=files, layout=layout.layout, image_shape=tuple(layout.image_shape),
                    ids=index[ok].astype(np.int64), fingerprints=fps[ok], skipped=skipped,
                    n_images=int(ok.sum()) + len(skipped), stats=stats.as_dict(),
                    sample_images=_stack(sample, layout.image_shape),
                    sample_rows=rows_in_ids[np.asarray(sampled_at, np.int64)],
                    raw_layout=next(iter(raw_layouts)) if len(raw_layouts) == 1 else None)


def _stack(images, shape):
    return np.stack(images) if images else np.zeros((0,) + tuple(shape), np.float32)


def _scan_shards(layout, *, image_size, skip_bad, seed, progress):
    """The content pass over TFRecord shards (sequential per shard; names the bad record)."""
    import tensorflow as tf

    from kerasssl.data.tfrecord import _compression_of, _first_line, decode_record_array

    files = layout.files
    axis = layout.layout.axis if layout.layout is not None else None
    setting = layout.layout.setting if layout.layout is not None else "auto"
    ids, fps, skipped, record_shapes = [], [], [], []
    stats, sample, sample_rows, shapes = _Stats(), [], [], {}
    rng = np.random.default_rng(seed)
    seen = 0
    expected = dict(zip((files.manifest or {}).get("files") or [],
                        (files.manifest or {}).get("records_per_shard") or []))
    for k, shard in enumerate(files.files):
        records = iter(tf.data.TFRecordDataset(shard, compression_type=_compression_of(shard)))
        index = 0
        while True:
            try:
                record = next(records)
            except StopIteration:
                break
            except tf.errors.OpError as e:
                raise DataError(shard, f"corrupt or truncated TFRecord at record {index} "
                                       f"({_first_line(e)})") from None
            name = f"{shard}: record {index}"
            try:
                array = decode_record_array(record.numpy(), name)
                image = model_image(array, name, axis if axis else "auto", image_size)
            except DataError as e:
                if not skip_bad:
                    raise
                skipped.append((f"{shard} record {index}", e.problem))
                index += 1
                continue
            record_shapes.append(tuple(array.shape))
            shapes[image.shape] = shapes.get(image.shape, 0) + 1
            ids.append((k << RECORD_BITS) | index)
            fps.append(np.frombuffer(fingerprint(image), np.uint8))
            stats.add(image, f"{shard} record {index}", "float32", array.shape)
            seen += 1
            # Reservoir sample: the count is unknown until the end.
            if len(sample) < SAMPLE_IMAGES and 4 * image.size * (len(sample) + 1) <= SAMPLE_BYTES:
                sample.append(image)
                sample_rows.append(seen - 1)
            else:
                j = int(rng.integers(seen))
                if j < len(sample):
                    sample[j], sample_rows[j] = image, seen - 1
            index += 1
            if progress is not None and seen % 1024 == 0:
                progress(seen)
        want = expected.get(os.path.basename(shard))
        if want is not None and index != want:
            raise DataError(shard, f"holds {index} records but the manifest lists {want} "
                                   "(truncated or replaced shard)")
    if not ids:
        raise DataError(files.root, "the TFRecord files hold no usable records"
                        + (f" ({len(skipped)} skipped)" if skipped else ""))
    decided = layout.layout
    if decided is None:
        # No manifest: decided per record; the same rule over all shapes refuses a set that disagrees.
        decided = channel_layout(record_shapes, setting, source=files.root)
    if len(shapes) > 1:
        (a, _), (b, _) = sorted(shapes.items(), key=lambda kv: -kv[1])[:2]
        raise DataError(files.root, f"records hold images of different sizes ({_shape_text(a)} and "
                                    f"{_shape_text(b)} as H x W x C); pass --image-size (data.image_size)")
    image_shape = next(iter(shapes))
    return PoolScan(files=files, layout=decided, image_shape=tuple(image_shape),
                    ids=np.asarray(ids, np.int64), fingerprints=np.stack(fps), skipped=skipped,
                    n_images=len(ids) + len(skipped), stats=stats.as_dict(),
                    sample_images=_stack(sample, image_shape), sample_rows=np.asarray(sample_rows, np.int64),
                    raw_layout=(None, "<f4", record_shapes[0]) if len(set(record_shapes)) == 1 else None)


# -- the leak guard -----------------------------------------------------------------------------


@dataclasses.dataclass
class LeakGuard:
    """What the leak guard took out of the pools.

    Args:
        reference_images: val/test images compared with.
        excluded: pool images left out (equal to one of them).
        matches: ``{"pool", "image", "equals"}`` per excluded image.
        active: False when there was no labelled DATA to guard (pools alone).
    """

    reference_images: int
    excluded: int
    matches: list
    active: bool = True

    def as_dict(self) -> dict:
        what = ("the val and test splits of DATA (content fingerprints)" if self.active
                else None)
        return {"compared_with": what, "reference_images": self.reference_images,
                "excluded": self.excluded, "matches": self.matches}

    def summary(self) -> str:
        if not self.active:
            return "leak guard: no labelled DATA, nothing to guard"
        return (f"leak guard: {self.excluded} pool image(s) equal to one of {self.reference_images} "
                "val/test image(s) left out")


def leak_guard(scans: Sequence[PoolScan], reference, reference_names) -> LeakGuard:
    """Exclude from the pools every image whose fingerprint equals one of ``reference``.

    Sets each scan's ``excluded`` rows (also duplicates of one held-out image).

    Args:
        scans: the pools' :class:`PoolScan`.
        reference: uint8 (R, 16) fingerprints of the held-out (val + test) images.
        reference_names: their file names, for the record.

    Example:
        >>> guard = leak_guard(scans, fingerprints(images[held_out]), [files[i] for i in held_out])
    """
    reference = np.asarray(reference, np.uint8).reshape(-1, DIGEST_SIZE)
    by_digest = {bytes(row): name for row, name in zip(reference, reference_names)}
    keys = _as_keys(reference)
    total, matches = 0, []
    for scan in scans:
        if not len(reference):
            scan.excluded = np.zeros(0, np.int64)
            continue
        rows = np.flatnonzero(np.isin(_as_keys(scan.fingerprints), keys))
        scan.excluded = rows.astype(np.int64)
        total += len(rows)
        matches += [{"pool": scan.files.path, "image": scan.name(r),
                     "equals": by_digest[bytes(scan.fingerprints[r])]} for r in rows]
    return LeakGuard(reference_images=int(len(reference)), excluded=total, matches=matches)


def _as_keys(rows) -> np.ndarray:
    rows = np.ascontiguousarray(np.asarray(rows, np.uint8).reshape(-1, DIGEST_SIZE))
    return rows.view(np.dtype((np.void, DIGEST_SIZE))).reshape(-1)


# -- the run's record ------------------------------------------------------------------------------


def pool_record(scan: PoolScan) -> dict:
    """One pool's entry in ``RUN/pools.json``."""
    files = scan.files
    record = {
        "path": files.path,
        "kind": files.kind,
        "files": len(files.files),
        "images": int(scan.n_images),
        "used": scan.n_used,
        "bytes": files.bytes,
        "listing_fingerprint": files.listing_fingerprint,
        "content_fingerprint": scan.content_fingerprint,
        "image_shape": list(scan.image_shape),
        "channel_layout": scan.layout.to_dict(),
        "skipped": len(scan.skipped),
        "leak_guard_excluded": int(len(scan.excluded)),
    }
    if files.kind == "tfrecord":
        record["shards"] = record.pop("files")
    return record


def check_unchanged(recorded: dict, files: PoolFiles, *, scan: Optional[PoolScan] = None, where="RUN") -> None:
    """Refuse a pool that differs from the run's record (``--resume``, or reusing an encoder).

    Compares the listing fingerprint (names, sizes, mtimes) and, given the
    content pass, the content fingerprint.

    Raises:
        KerassslError: one line naming the pool and what changed.
    """
    if recorded.get("listing_fingerprint") != files.listing_fingerprint:
        then = f"{recorded.get('files', recorded.get('shards'))} file(s), {recorded.get('bytes')} bytes"
        raise KerassslError(f"{files.path}: the unlabeled pool changed since {where} pretrained on it "
                            f"(then {then}; now {len(files.files)} file(s), {files.bytes} bytes, or other "
                            "names / modification times); resume with the same pool or use a new --run-dir")
    if scan is not None and recorded.get("content_fingerprint") not in (None, scan.content_fingerprint):
        raise KerassslError(f"{files.path}: the unlabeled pool's images changed since {where} pretrained "
                            "on it (same file names and sizes, other pixels); use a new --run-dir")


def skipped_lines(scans: Sequence[PoolScan]) -> List[str]:
    """``RUN/skipped_files.txt``: one ``POOL<TAB>file<TAB>problem`` line per skipped file."""
    return [f"{scan.files.path}\t{name}\t{problem}" for scan in scans for name, problem in scan.skipped]


def describe_pool(scans: Sequence[PoolScan]) -> dict:
    """What ``kerasssl inspect --unlabeled`` reports, with the keys of labelled data's summary.

    One "class", ``unlabeled``; counts, shape, value range, band mean/std and
    NaN/Inf over every usable image of the pools, plus the files skipped.
    """
    first = scans[0]
    merged = [s.stats for s in scans]
    n = sum(m["n_images"] for m in merged)
    count = np.array([m["n_images"] for m in merged], float)
    mean = np.average([m["band_mean"] for m in merged], axis=0, weights=count)
    # Pooled std over pools (population): E[x^2] - E[x]^2.
    second = np.average([np.square(m["band_std"]) + np.square(m["band_mean"]) for m in merged],
                        axis=0, weights=count)
    std = np.sqrt(np.maximum(second - mean ** 2, 0.0))
    lows = [m["min"] for m in merged if m["min"] is not None]
    highs = [m["max"] for m in merged if m["max"] is not None]
    counts = {k: int(sum(m[k] for m in merged)) for k in
              ("nan_pixels", "inf_pixels", "files_with_nan", "files_with_inf", "files_with_nonfinite")}
    lo, hi = (min(lows) if lows else None), (max(highs) if highs else None)
    return {
        "path": ", ".join(s.files.path for s in scans),
        "format": "pool",
        "pool_kinds": [s.files.kind for s in scans],
        "n_images": int(n),
        "classes": {"unlabeled": int(n)},
        "shape": list(first.image_shape),
        "dtype": ", ".join(sorted({d for m in merged for d in m["stored_dtypes"]})),
        "stored_shapes": sorted({tuple(s) for m in merged for s in m["stored_shapes"]}),
        "channel_layout": first.layout.to_dict(),
        "min": lo, "max": hi, "value_range": [lo, hi],
        "band_mean": [float(v) for v in mean], "band_std": [float(v) for v in std],
        **counts,
        "nonfinite_files": [f for m in merged for f in m["nonfinite_files"]],
        "per_class": {"unlabeled": {"n_images": int(n), **counts, "min": lo, "max": hi}},
        "bytes": int(sum(s.files.bytes for s in scans)),
        "skipped": [{"pool": s.files.path, "file": name, "problem": p} for s in scans for name, p in s.skipped],
        "pools": [pool_record(s) for s in scans],
    }


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

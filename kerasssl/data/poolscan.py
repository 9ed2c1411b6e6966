"""The content pass over an unlabeled pool, the leak guard, and what a run records of a pool.

:func:`scan_pool` reads every image of a pool once (folders: a thread pool;
shards: record by record), exactly as the model will take it (band axis,
centre crop; :func:`kerasssl.data.pool.model_image`), checks its bands for
finite pixels, takes its content fingerprint
(:func:`kerasssl.fingerprints.fingerprint`) and counts NaN/Inf. Memory: 24
bytes per image (fingerprint + id) and a bounded seeded sample.

The **leak guard** (:func:`leak_guard`) compares those fingerprints with the
labelled set's val/test images: a survey pool usually contains the known
lenses, and pretraining on a test image would flatter the evaluation. Equal
images are left out of pretraining, counted, and recorded (``RUN/pools.json``).

Why a content pass before training rather than hashing inside the training
stream: the leak guard's count, the skipped files (``--skip-bad``) and the
pool's content fingerprint are then complete and recorded before the first
step, whatever ``--steps-per-epoch`` later reaches; a file with unrepairable
pixels stops the run (or is skipped) now, not hours in; and the stream stays a
plain read in TF ops, filtering by id, with no Python hash per image in the
hot loop. The cost is one extra read of the pool: the I/O of one epoch
without any compute.

Example:
    >>> scan = scan_pool(check_headers(*list_pool("survey/pool"), image_size=32))
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
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from kerasssl.data.arrays import ChannelLayout, shape_text, channel_layout
from kerasssl.data.pool import (
    RECORD_BITS,
    PoolFiles,
    PoolLayout,
    id_name,
    model_image,
    read_stored,
)
from kerasssl.errors import DataError, KerassslError
from kerasssl.fingerprints import DIGEST_SIZE, fingerprint

log = logging.getLogger(__name__)

#: Images kept from the content pass for ``dataset`` normalisation statistics ...
SAMPLE_IMAGES = 4096
SAMPLE_BYTES = 256 * 2 ** 20
#: ... and, for any other normalisation, only for the NaN-loss hint.
HINT_SAMPLE_IMAGES = 256


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
            file (:func:`read_stored`; shards: ``(None, "<f4", shape)`` when all
            records have one shape), so the stream decodes in TF ops; None otherwise.
        excluded: rows of ``ids`` the leak guard took out (set by :func:`leak_guard`).
        shard_ends: ``{shard index: records readable}`` of shards whose framing
            breaks (``skip_bad``): the stream reads no further.
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
    shard_ends: dict = dataclasses.field(default_factory=dict)

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
        flat = image.reshape(-1, image.shape[-1])
        finite = np.isfinite(flat)
        if self.count is None:
            c = flat.shape[1]
            self.count, self.total, self.square = np.zeros(c), np.zeros(c), np.zeros(c)
        if finite.all():  # the usual case: fewer passes over the pixels
            values = flat.astype(np.float64)
            self.count += len(flat)
            lo, hi = float(flat.min()), float(flat.max())
        else:
            nan = int(np.isnan(flat).sum())
            inf = int(flat.size - finite.sum()) - nan
            self.nan_pixels += nan
            self.inf_pixels += inf
            self.files_with_nan += nan > 0
            self.files_with_inf += inf > 0
            self.nonfinite_files.append(name)
            values = np.where(finite, flat, 0.0).astype(np.float64)
            self.count += finite.sum(axis=0)
            lo, hi = (float(flat[finite].min()), float(flat[finite].max())) if finite.any() else (np.inf, -np.inf)
        self.total += values.sum(axis=0)
        self.square += np.einsum("ij,ij->j", values, values)
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

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


def sample_rows(n: int, image_shape, seed: int, limit: int = SAMPLE_IMAGES) -> np.ndarray:
    """Sorted, seeded positions of the images kept as the pool's sample (bounded in count and bytes)."""
    per_image = 4 * int(np.prod(image_shape))
    k = int(min(n, limit, max(SAMPLE_BYTES // max(per_image, 1), 1)))
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)) if k else np.zeros(0, int)


def scan_pool(layout: PoolLayout, *, image_size=None, allow_pickle=False, skip_bad=False,
              seed=0, sample_size: int = SAMPLE_IMAGES, workers: Optional[int] = None,
              progress=None) -> PoolScan:
    """The content pass: read every image once, fingerprint it, check it, count NaN/Inf.

    Folders are read by a thread pool (file reads and hashing release the
    GIL); shards record by record in TensorFlow's reader, decoded in NumPy with
    the labelled data's rules. No image is kept except the seeded sample.

    Args:
        layout: from :func:`check_headers`.
        image_size / allow_pickle / skip_bad: as for :func:`check_headers`.
        seed: picks the sample's positions.
        sample_size: images kept (also bounded by :data:`SAMPLE_BYTES`).
        workers: reader threads (default: one per CPU, at most 8).
        progress: optional callable taking the number of images read so far.

    Returns:
        :class:`PoolScan`.

    Raises:
        DataError: a bad file or record (strict), a corrupt shard, no usable image.
    """
    if layout.files.kind == "tfrecord":
        return _scan_shards(layout, image_size=image_size, skip_bad=skip_bad, seed=seed,
                            sample_size=sample_size, progress=progress)
    files, root = layout.files, Path(layout.files.root)
    index = layout.index
    sample_at = set(sample_rows(len(index), layout.image_shape, seed, sample_size).tolist())
    workers = workers or min(8, os.cpu_count() or 1)  # more threads than cores only contend for the GIL
    axis, stats = layout.layout.axis, _Stats()
    fps = np.zeros((len(index), DIGEST_SIZE), np.uint8)
    ok = np.zeros(len(index), bool)
    skipped, sample, sampled_at = list(layout.skipped), [], []
    raw_layouts = set()

    def read(row):
        rel = files.files[int(index[row])]
        try:
            stored, raw = read_stored(root / rel, allow_pickle)
            image = model_image(stored, root / rel, axis, image_size)
        except DataError as e:
            return row, None, e
        return row, (image, str(stored.dtype), stored.shape, fingerprint(image), raw), None

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
                    problem = f"holds a {shape_text(image.shape)} image but its header said otherwise"
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


def _scan_shards(layout, *, image_size, skip_bad, seed, sample_size, progress):
    """The content pass over TFRecord shards (sequential per shard; names the bad record)."""
    from kerasssl.data.tfrecord.records import decode_record_array
    from kerasssl.data.tfrecord.shards import expected_counts

    files = layout.files
    axis = layout.layout.axis if layout.layout is not None else None
    setting = layout.layout.setting if layout.layout is not None else "auto"
    ids, fps, skipped, record_shapes = [], [], [], []
    stats, sample, sample_rows, shapes = _Stats(), [], [], {}
    rng = np.random.default_rng(seed)
    seen = 0
    expected = expected_counts(files.manifest)
    shard_ends = {}
    for k, shard in enumerate(files.files):
        for index, record in _readable_records(shard, expected.get(os.path.basename(shard)), skip_bad,
                                               skipped, shard_ends, k):
            name = f"{shard}: record {index}"
            try:
                array = decode_record_array(record, name)
                image = model_image(array, name, axis if axis else "auto", image_size)
            except DataError as e:
                if not skip_bad:
                    raise
                skipped.append((f"{shard} record {index}", e.problem))
                continue
            record_shapes.append(tuple(array.shape))
            shapes[image.shape] = shapes.get(image.shape, 0) + 1
            ids.append((k << RECORD_BITS) | index)
            fps.append(np.frombuffer(fingerprint(image), np.uint8))
            stats.add(image, f"{shard} record {index}", "float32", array.shape)
            seen += 1
            # Reservoir sample: the count is unknown until the end.
            if len(sample) < sample_size and 4 * image.size * (len(sample) + 1) <= SAMPLE_BYTES:
                sample.append(image)
                sample_rows.append(seen - 1)
            else:
                j = int(rng.integers(seen))
                if j < len(sample):
                    sample[j], sample_rows[j] = image, seen - 1
            if progress is not None and seen % 1024 == 0:
                progress(seen)
    if not ids:
        raise DataError(files.root, "the TFRecord files hold no usable records"
                        + (f" ({len(skipped)} skipped)" if skipped else ""))
    decided = layout.layout
    if decided is None:
        # No manifest: decided per record; the same rule over all shapes refuses a set that disagrees.
        decided = channel_layout(record_shapes, setting, source=files.root)
    if len(shapes) > 1:
        (a, _), (b, _) = sorted(shapes.items(), key=lambda kv: -kv[1])[:2]
        raise DataError(files.root, f"records hold images of different sizes ({shape_text(a)} and "
                                    f"{shape_text(b)} as H x W x C); pass --image-size (data.image_size)")
    image_shape = next(iter(shapes))
    return PoolScan(files=files, layout=decided, image_shape=tuple(image_shape),
                    ids=np.asarray(ids, np.int64), fingerprints=np.stack(fps), skipped=skipped,
                    n_images=len(ids) + len(skipped), stats=stats.as_dict(),
                    sample_images=_stack(sample, image_shape), sample_rows=np.asarray(sample_rows, np.int64),
                    raw_layout=(None, "<f4", record_shapes[0]) if len(set(record_shapes)) == 1 else None,
                    shard_ends=shard_ends)


def _readable_records(shard, expected, skip_bad, skipped, shard_ends, k):
    """``read_records`` of one shard; with ``skip_bad`` a broken framing ends the shard, skipped."""
    from kerasssl.data.tfrecord.shards import read_records

    readable = 0
    try:
        for index, record in read_records(shard, expected):
            yield index, record
            readable = index + 1
    except DataError as e:  # the framing (or the manifest's count): nothing after it can be read
        if not skip_bad:
            raise
        skipped.append((f"{shard} record {readable}", f"{e.problem}: the rest of the shard cannot be read"))
        shard_ends[k] = readable


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



"""Convert a data folder to sharded TFRecord files plus a manifest (``kerasssl convert``).

Streams one source file at a time and writes into a hidden folder that is
renamed to OUT only when complete: a failed conversion leaves nothing behind.

Example:
    >>> manifest = write_tfrecords("data/3b", "data/rec", shards=4)
    >>> load_tfrecords("data/rec").class_names == manifest["class_names"]
    True
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from kerasssl import __version__
from kerasssl.data.arrays import channel_layout, check_finite_bands, read_array, stored_shape, to_hwc
from kerasssl.data.folders import Listing, scan
from kerasssl.data.tfrecord.records import FEATURE_DOCS, UNLABELED_FEATURES, encode_example
from kerasssl.data.tfrecord.shards import COMPRESSIONS, MANIFEST_NAME, shard_name
from kerasssl.errors import DataError, KerassslError
from kerasssl.rundir import write_json_atomic

logger = logging.getLogger(__name__)


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
        data_path: a data folder :func:`kerasssl.data.folders.scan` lists.
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
        listing = Listing(format="pool", class_names=[], root=str(root),
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
                record = encode_example(array, label, None if label is None else listing.class_names[label], rel)
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
            "features": {k: v for k, v in FEATURE_DOCS.items() if not unlabeled or k in UNLABELED_FEATURES},
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

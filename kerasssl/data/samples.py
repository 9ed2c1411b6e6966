"""Sample images of a run for checking an exported model: parity, int8 calibration, val AUC.

:class:`SampleData` reads DATA and the run's split (``RUN/split.json``):
calibration images come from the train split only, never val or test; the
parity and ROC-AUC checks use the val split. Without data it takes the
caller's images, or makes synthetic raw-looking ones (parity only).
:mod:`kerasssl.tflite` takes the arrays it holds.

Example:
    >>> samples = SampleData.gather((32, 32, 1), data="data/hst", run_dir="runs/a")
    >>> samples.representative.shape[0] <= MAX_REPRESENTATIVE
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from kerasssl.data.load import load_images
from kerasssl.data.split import Split
from kerasssl.rundir import RunDir
from kerasssl.errors import DataError, KerassslError

# How many images feed int8 calibration (train split), parity (val) and the AUC check (val).
MAX_REPRESENTATIVE = 200
MAX_PARITY = 64
MAX_VAL = 2000
_SYNTHETIC_COUNT = 16


@dataclass
class SampleData:
    """Raw images for parity checks, int8 calibration and the int8 AUC check.

    Args:
        parity_images: raw (N, H, W, C) float32 images (NaN allowed).
        representative: raw images for int8 calibration, or None.
        val_images / val_labels: the run's validation split, or None.
        source: where the parity images came from (written to the reports).
        representative_source: where the calibration images came from.
    """

    parity_images: np.ndarray
    representative: Optional[np.ndarray] = None
    val_images: Optional[np.ndarray] = None
    val_labels: Optional[np.ndarray] = None
    source: str = "synthetic"
    representative_source: Optional[str] = None

    @classmethod
    def gather(cls, image_shape, *, data=None, run_dir=None, sample_inputs=None) -> "SampleData":
        """Pick sample images: the run's data > the caller's samples > synthetic.

        With ``data`` and a run dir holding ``split.json``, calibration images
        come from the train split only (at most ``MAX_REPRESENTATIVE``, a
        seeded random subset in the split's order) and the parity / AUC
        images from the val split; without a split, all of ``data`` serves
        both (and the report says so).

        Args:
            image_shape: the model input (H, W, C); ``data`` is centre-cropped
                to it when it is square.
            data: a DATA path (folder or TFRecord shards), read with
                :func:`kerasssl.data.load.load_images`.
            run_dir: the run directory whose ``split.json`` says which images
                are train and val.
            sample_inputs: raw (N, H, W, C) images to use when ``data`` is None.

        Raises:
            DataError: the images do not fit ``image_shape``, or there are none.
            KerassslError: the run's train split has no file in ``data``.

        Example:
            >>> samples = SampleData.gather((32, 32, 3), data="data/3b", run_dir="runs/a")
            >>> samples.representative_source
            'train split of runs/a'
        """
        if data is not None:
            return cls._from_data(image_shape, data, run_dir)
        if sample_inputs is not None:
            images = _check_images(np.asarray(sample_inputs, dtype=np.float32), image_shape, "sample inputs")
            return cls(
                parity_images=_with_nan_variant(images[:MAX_PARITY]),
                representative=images[:MAX_REPRESENTATIVE],
                source="sample inputs",
                representative_source="sample inputs",
            )
        return cls(parity_images=synthetic_images(_SYNTHETIC_COUNT, image_shape), source="synthetic")

    @classmethod
    def _from_data(cls, image_shape, data, run_dir):
        height, width, _ = image_shape
        image_set = load_images(data, image_size=height if height == width else None)
        images = _check_images(image_set.images, image_shape, str(data))
        split_path = RunDir(run_dir).split if run_dir is not None else None
        if split_path is None or not split_path.exists():
            return cls(
                parity_images=_with_nan_variant(images[:MAX_PARITY]),
                representative=images[_spread_subset(np.arange(len(images)), MAX_REPRESENTATIVE)],
                source=f"{data} (no run split)",
                representative_source=f"all of {data} (no run split known: not restricted to training images)",
            )
        split = Split.load(split_path)
        train = np.asarray(split.indices(image_set, "train"), dtype=np.int64)
        val = np.asarray(split.indices(image_set, "val"), dtype=np.int64)
        if len(train) == 0:
            raise KerassslError(f"{split_path}: the train split has no files in {data}")
        val = val[:MAX_VAL]
        parity_rows = val if len(val) else train
        return cls(
            parity_images=_with_nan_variant(images[parity_rows[:MAX_PARITY]]),
            representative=images[_spread_subset(train, MAX_REPRESENTATIVE)],
            val_images=images[val] if len(val) else None,
            val_labels=np.asarray(image_set.labels)[val] if len(val) else None,
            source=f"{data} ({'val' if len(val) else 'train'} split of {run_dir})",
            representative_source=f"train split of {run_dir}",
        )


def _spread_subset(rows, limit, seed=0):
    """At most ``limit`` of ``rows``, a seeded random choice kept in ``rows``' order.

    Split lists run class by class: their first ``limit`` entries could all be
    one class, a calibration set unlike the data the model sees.
    """
    rows = np.asarray(rows)
    if len(rows) <= limit:
        return rows
    chosen = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
    return rows[np.sort(chosen)]


def synthetic_images(n, image_shape, seed=0):
    """Raw-looking images (sky noise around 0, a bright centre, a few NaN pixels)."""
    rng = np.random.default_rng(seed)
    height, width, channels = image_shape
    yy, xx = np.mgrid[:height, :width] - (np.array([height, width])[:, None, None] - 1) / 2.0
    galaxy = 50.0 * np.exp(-np.hypot(xx, yy) / max(1.0, 0.1 * height))
    images = galaxy[None, ..., None] * rng.uniform(0.3, 2.0, size=(n, 1, 1, channels))
    images = images + rng.normal(0.0, 2.0, size=(n, height, width, channels))
    images = images.astype(np.float32)
    for i in range(0, n, 2):  # half of them carry NaN pixels, like the real sets
        images[i].flat[rng.choice(images[i].size, size=3, replace=False)] = np.nan
    return images


def _with_nan_variant(images):
    """Append copies with NaN pixels, so parity covers the in-graph repair."""
    extra = images[: min(4, len(images))].copy()
    rng = np.random.default_rng(1)
    for image in extra:
        image.flat[rng.choice(image.size, size=3, replace=False)] = np.nan
    return np.concatenate([images, extra], axis=0)


def _check_images(images, image_shape, source):
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
        raise DataError(source, f"images of shape {list(images.shape[1:])} do not fit the model input {list(image_shape)}")
    if len(images) == 0:
        raise DataError(source, "no images")
    return images.astype(np.float32, copy=False)

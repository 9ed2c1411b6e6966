"""Simulated strong-lens / non-lens data sets in the DeepLense layouts.

``simulate()`` draws every image from its own random generator seeded by
``(seed, class, index)``, so the bytes of each file depend on the seed only,
not on ``workers`` or on how the work is chunked. The physics lives in
:mod:`~kerasssl.data.simulate_scene` (populations),
:mod:`~kerasssl.data.simulate_render` (lenstronomy rendering, PSF, noise) and
:mod:`~kerasssl.data.simulate_survey` (bands).

Layouts (readable by :func:`kerasssl.data.load.load_images`):

- ``hst``: one flat folder of 2-D float32 arrays, lenses ``<n>_hst.npy``,
  non-lenses ``nl_<n>_hst.npy`` (the DeepLense HST set's naming);
- ``three-band``: ``lenses/`` and ``nonlenses/`` with (3, H, W) float32 arrays
  (g, r, i), named ``lens_<n>.npy`` / ``nonlens_<n>.npy``.

Both get ``metadata.csv`` at the root: one row per file with the drawn
parameters (Einstein radius, source magnitudes and arc S/N, confuser, PSF, ...).
The data set is written into ``OUT.tmp-<pid>`` and renamed to ``OUT`` when
complete, so ``OUT`` is never half-written.

Example:
    >>> summary = simulate("/tmp/sims/hst", fmt="hst", n_lenses=40, n_nonlenses=20,
    ...                    size=64, seed=1, nan_fraction=0.2)
    >>> summary["n_images"], summary["files_with_nan"]
    (60, 12)
"""

from __future__ import annotations

import csv
import io
import logging
import math
import multiprocessing
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from kerasssl.data.simulate_survey import SURVEYS
from kerasssl.errors import DataError, KerassslError

logger = logging.getLogger(__name__)

FORMATS = tuple(SURVEYS)
MIN_SIZE, MAX_SIZE = 16, 1024
LENS, NONLENS = 1, 0
NAN_STREAM = 2**31 - 1  # extra seed word of the NaN file selection stream
NAN_PIXEL_FRACTION = (0.001, 0.002)   # of the pixels of an affected file, as in the HST set
CHUNK = 64                            # images per worker task


def image_rng(seed, label, index):
    """Generator of one image: depends on (seed, class, index) only.

    It draws, in this order, the scene, the noise and the NaN pattern.
    """
    return np.random.default_rng([seed, label, index])


def file_name(fmt, label, index):
    """Path of an image relative to the output root."""
    if fmt == "hst":
        return f"{index}_hst.npy" if label == LENS else f"nl_{index}_hst.npy"
    return f"lenses/lens_{index}.npy" if label == LENS else f"nonlenses/nonlens_{index}.npy"


def class_name(fmt, label):
    """The class name the loader gives this file (prefix- or folder-labelled)."""
    if fmt == "hst":
        return "lens" if label == LENS else "nonlens"
    return "lenses" if label == LENS else "nonlenses"


def nan_indices(seed, label, n, nan_fraction):
    """Which images of a class get NaN pixels: exactly round(fraction * n) of them."""
    k = int(math.floor(nan_fraction * n + 0.5))
    rng = np.random.default_rng([seed, label, n, NAN_STREAM])
    return set(rng.choice(n, size=k, replace=False).tolist()) if k else set()


def sprinkle_nans(image, rng):
    """Put 0.1-0.2 % NaN pixels (at least 1) into ``image`` (bands, H, W) in place.

    Patterns seen in real cutouts: scattered hot/dead pixels, a small cluster,
    or a bad-column segment; in one band or in all bands.

    Returns:
        The number of NaN values written (pixels x bands affected).
    """
    bands, h, w = image.shape
    n = max(1, int(round(rng.uniform(*NAN_PIXEL_FRACTION) * h * w)))
    pattern = rng.integers(3)
    if pattern == 0:  # scattered pixels
        flat = rng.choice(h * w, size=n, replace=False)
        rows, cols = np.unravel_index(flat, (h, w))
    elif pattern == 1:  # compact cluster around a random pixel
        r0, c0 = rng.integers(h), rng.integers(w)
        side = max(1, int(math.ceil(math.sqrt(n))))
        offsets = np.arange(side) - side // 2
        rr, cc = np.meshgrid(offsets, offsets, indexing="ij")
        rows = np.clip(r0 + rr.ravel()[:n], 0, h - 1)
        cols = np.clip(c0 + cc.ravel()[:n], 0, w - 1)
    else:  # bad-column segment
        col = rng.integers(w)
        start = rng.integers(max(1, h - n + 1))
        rows = np.arange(start, min(start + n, h))
        cols = np.full(rows.shape, col)
    if bands > 1 and rng.uniform() < 0.5:
        image[int(rng.integers(bands)), rows, cols] = np.nan  # one band only
    else:
        image[:, rows, cols] = np.nan
    return int(np.isnan(image).sum())


def _npy_header(shape):
    """The bytes np.save writes before float32 data of this shape."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, np.float32))
    return buffer.getvalue()[: -int(np.prod(shape)) * 4]


# One renderer per (format, size) per process: building SimAPIs is slow.
_RENDERERS = {}


def _renderer(fmt, size):
    from kerasssl.data.simulate_render import Renderer  # lenstronomy: optional extra

    key = (fmt, size)
    if key not in _RENDERERS:
        _RENDERERS[key] = Renderer(SURVEYS[fmt], size)
    return _RENDERERS[key]


def simulate_one(fmt, size, seed, label, index, with_nan=False):
    """Render one image and its metadata row (no file written).

    Returns:
        (image, row): float32 (bands, H, W) array (2-D (H, W) for ``hst``) and
        its metadata.csv row as a dict.
    """
    from kerasssl.data.simulate_scene import draw_scene

    renderer = _renderer(fmt, size)
    rng = image_rng(seed, label, index)
    scene = draw_scene(rng, label, renderer.survey)
    image, info = renderer.render(scene, rng)
    nan_count = sprinkle_nans(image, rng) if with_nan else 0
    row = {"filename": file_name(fmt, label, index), "class": class_name(fmt, label),
           "label": label, "index": index, "pixel_scale": renderer.pixel_scale}
    row.update(scene.meta)
    if label == LENS:
        row["magnification"] = info["magnification"]
        bands = [b.name for b in renderer.survey.bands]
        row.update({f"arc_snr_{b}": v for b, v in zip(bands, info["arc_snr"])})
    row["nan_pixels"] = nan_count
    if fmt == "hst":
        image = image[0]
    return image, row


def _pool_context():
    """Process start method for the workers.

    ``fork`` shares the already-imported lenstronomy and renderer (spawning
    pays a multi-second import per worker), but forking a process that runs
    TensorFlow / JAX / PyTorch threads can deadlock: then ``spawn``.
    """
    threaded = any(name in sys.modules for name in ("tensorflow", "jax", "torch"))
    if "fork" in multiprocessing.get_all_start_methods() and not threaded \
            and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _simulate_chunk(task):
    """Worker: render and write a run of images; returns their metadata rows."""
    fmt, size, seed, label, start, stop, nan_set, root = task
    header = None
    rows = []
    for index in range(start, stop):
        image, row = simulate_one(fmt, size, seed, label, index, index in nan_set)
        if header is None:
            header = _npy_header(image.shape)
        # Same bytes as np.save, one system call fewer per file.
        with open(Path(root) / row["filename"], "wb") as f:
            f.write(header + np.ascontiguousarray(image, dtype=np.float32).tobytes())
        rows.append(row)
    return rows


def _check_arguments(fmt, n_lenses, n_nonlenses, size, seed, nan_fraction, workers):
    if fmt not in FORMATS:
        raise KerassslError(f"--format: unknown format {fmt!r} (choose {' or '.join(FORMATS)})")
    for name, value in (("--n-lenses", n_lenses), ("--n-nonlenses", n_nonlenses)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise KerassslError(f"{name}: must be a whole number >= 0, got {value!r}")
    if n_lenses + n_nonlenses == 0:
        raise KerassslError("--n-lenses / --n-nonlenses: nothing to simulate (both are 0)")
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise KerassslError(f"--size: must be a whole number of pixels in "
                            f"[{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise KerassslError(f"--seed: must be a whole number >= 0, got {seed!r}")
    if not (isinstance(nan_fraction, (int, float)) and 0.0 <= nan_fraction <= 1.0):
        raise KerassslError(f"--nan-fraction: must be in [0, 1], got {nan_fraction!r}")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise KerassslError(f"--workers: must be a whole number >= 1, got {workers!r}")


def _prepare_output(out_dir):
    """Refuse a non-empty OUT; return the temporary folder to write into."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(out, "already exists and is not empty (choose a new output folder)")
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise DataError(out, f"cannot create the output folder ({e.strerror})") from None
    return out, tmp


def metadata_columns(fmt):
    """Columns of metadata.csv, in order (blank where not applicable to a row).

    Magnitudes are AB, angles in arcsec, ``arc_snr_<band>`` is the matched-filter
    S/N of the lensed light, ``magnification`` the lensed / unlensed flux of the
    source disk inside the cutout, ``nan_pixels`` the NaN values in the file.
    """
    bands = [b.name for b in SURVEYS[fmt].bands]

    def per_band(prefix):
        return [f"{prefix}_{b}" for b in bands]

    return (["filename", "class", "label", "index", "pixel_scale"] + per_band("psf_fwhm")
            + per_band("deflector_mag") + ["deflector_r_eff", "deflector_n", "deflector_q"]
            + ["einstein_radius", "lens_q", "shear", "source_x", "source_y", "source_r_eff"]
            + per_band("source_mag") + ["n_clumps", "clump_fraction", "magnification"]
            + per_band("arc_snr") + ["n_companions", "confuser", "confuser_scale"]
            + per_band("confuser_mag") + ["nan_pixels"])


def _write_metadata(path, fmt, rows):
    """metadata.csv: one row per file."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=metadata_columns(fmt), restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _format(v) for k, v in row.items()})


def _format(value):
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{float(value):.6g}"
    return value


def simulate(out_dir, *, fmt, n_lenses, n_nonlenses, size, seed, nan_fraction=0.0, workers=1):
    """Simulate a lens / non-lens data set into ``out_dir``.

    Args:
        out_dir: output folder; must not exist or be empty.
        fmt: "hst" (flat folder, 2-D arrays, ``nl_`` prefix) or "three-band"
            (``lenses/``, ``nonlenses/``, (3, H, W) arrays, g, r, i).
        n_lenses, n_nonlenses: number of images per class.
        size: image side in pixels (the field of view is fixed per format).
        seed: the same seed gives byte-identical files.
        nan_fraction: fraction of files (per class, rounded) that get a few NaN
            pixels (0.1-0.2 % of their pixels), as in the real DeepLense sets.
        workers: processes; does not change the output.

    Returns:
        dict with out_dir, format, n_images, n_lenses, n_nonlenses, size, seed,
        files_with_nan, nan_pixels, workers, seconds, images_per_second.

    Example:
        >>> simulate("/tmp/s/3b", fmt="three-band", n_lenses=30, n_nonlenses=30,
        ...          size=64, seed=1)["n_images"]
        60
    """
    _check_arguments(fmt, n_lenses, n_nonlenses, size, seed, nan_fraction, workers)
    nan_fraction = float(nan_fraction)
    _renderer_available()
    out, tmp = _prepare_output(out_dir)
    start_time = time.perf_counter()
    try:
        if fmt == "three-band":
            (tmp / "lenses").mkdir()
            (tmp / "nonlenses").mkdir()
        tasks = []
        for label, n in ((LENS, n_lenses), (NONLENS, n_nonlenses)):
            nan_set = nan_indices(seed, label, n, nan_fraction)
            for start in range(0, n, CHUNK):
                stop = min(start + CHUNK, n)
                chunk_nans = {i for i in nan_set if start <= i < stop}
                tasks.append((fmt, size, seed, label, start, stop, chunk_nans, str(tmp)))
        rows = []
        if workers == 1:
            for task in tasks:
                rows += _simulate_chunk(task)
        else:
            context = _pool_context()
            if context.get_start_method() == "fork":
                _renderer(fmt, size)  # built once here, inherited by the workers
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                for chunk_rows in pool.map(_simulate_chunk, tasks):
                    rows += chunk_rows
        _write_metadata(tmp / "metadata.csv", fmt, rows)
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start_time
    n_images = n_lenses + n_nonlenses
    summary = {
        "out_dir": str(out), "format": fmt, "n_images": n_images, "n_lenses": n_lenses,
        "n_nonlenses": n_nonlenses, "size": size, "seed": seed,
        "files_with_nan": sum(1 for r in rows if r["nan_pixels"]),
        "nan_pixels": sum(r["nan_pixels"] for r in rows), "workers": workers,
        "seconds": seconds, "images_per_second": n_images / max(seconds, 1e-9),
    }
    logger.info("simulated %d images into %s in %.1f s", n_images, out, seconds)
    return summary


def _renderer_available():
    """Fail with one line before writing anything if lenstronomy is missing."""
    from kerasssl.data.simulate_render import _import_lenstronomy

    _import_lenstronomy()

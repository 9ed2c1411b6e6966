"""The simulation job: per-image seeds, NaN selection, worker processes.

``simulate()`` draws every image from its own random generator seeded by
``(seed, class, index)``, so the bytes of each file depend on the seed only,
not on ``workers`` or on how the work is chunked. Each image is a scene
(:mod:`~kerasssl.simulate.scene`) rendered to pixels
(:mod:`~kerasssl.simulate.render`) for a survey (:mod:`~kerasssl.simulate.survey`)
and written in its format's layout (:mod:`~kerasssl.simulate.writer`).

Example:
    >>> summary = simulate("/tmp/sims/hst", fmt="hst", n_lenses=40, n_nonlenses=20,
    ...                    size=64, seed=1, nan_fraction=0.2)
    >>> summary["n_images"], summary["files_with_nan"]
    (60, 12)
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from kerasssl.errors import KerassslError
from kerasssl.simulate import writer
from kerasssl.simulate.render import Renderer, import_lenstronomy, sprinkle_nans
from kerasssl.simulate.scene import draw_scene
from kerasssl.simulate.survey import SURVEYS
from kerasssl.simulate.writer import LENS, NONLENS

logger = logging.getLogger(__name__)

FORMATS = tuple(SURVEYS)
MIN_SIZE, MAX_SIZE = 16, 1024
NAN_STREAM = 2**31 - 1  # extra seed word of the NaN file selection stream
CHUNK = 64              # images per worker task


def image_rng(seed, label, index):
    """Generator of one image: depends on (seed, class, index) only.

    It draws, in this order, the scene, the noise and the NaN pattern.
    """
    return np.random.default_rng([seed, label, index])


def nan_indices(seed, label, n, nan_fraction):
    """Which images of a class get NaN pixels: exactly round(fraction * n) of them."""
    k = int(math.floor(nan_fraction * n + 0.5))
    rng = np.random.default_rng([seed, label, n, NAN_STREAM])
    return set(rng.choice(n, size=k, replace=False).tolist()) if k else set()


# One renderer per (format, size) per process: building SimAPIs is slow.
_RENDERERS = {}


def _renderer(fmt, size):
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
    renderer = _renderer(fmt, size)
    rng = image_rng(seed, label, index)
    scene = draw_scene(rng, label, renderer.survey)
    image, info = renderer.render(scene, rng)
    nan_count = sprinkle_nans(image, rng) if with_nan else 0
    row = {"filename": writer.file_name(fmt, label, index),
           "class": writer.class_name(fmt, label),
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


def _worker_context():
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
            header = writer.npy_header(image.shape)
        writer.write_npy(Path(root) / row["filename"], image, header)
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
    import_lenstronomy()  # one line before anything is written if it is missing
    out, tmp = writer.prepare_output(out_dir, writer.class_folders(fmt))
    start_time = time.perf_counter()
    try:
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
            context = _worker_context()
            if context.get_start_method() == "fork":
                _renderer(fmt, size)  # built once here, inherited by the workers
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as executor:
                for chunk_rows in executor.map(_simulate_chunk, tasks):
                    rows += chunk_rows
        writer.write_metadata(tmp / writer.METADATA_FILE, writer.metadata_columns(fmt), rows)
        writer.publish(out, tmp)
    except BaseException:
        writer.discard(tmp)
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

"""The simulation job: per-image seeds, NaN selection, worker processes.

``simulate()`` (a labelled set) and ``simulate_pool()`` (an unlabeled pool)
draw every image from its own random generator seeded by ``(seed, class,
index)``, so the bytes of each file depend on the seed only, not on
``workers`` or on how the work is chunked. A pool's images come from a
separate stream: a pool and a labelled set simulated with the same seed
share no image. Each image is a scene
(:mod:`~kerasssl.simulate.scene`) rendered to pixels
(:mod:`~kerasssl.simulate.render`) for a survey (:mod:`~kerasssl.simulate.survey`)
and written in its format's layout (:mod:`~kerasssl.simulate.writer`).

Example:
    >>> summary = simulate("/tmp/sims/hst", fmt="hst", n_lenses=40, n_nonlenses=20,
    ...                    size=64, seed=1, nan_fraction=0.2)
    >>> summary["n_images"], summary["files_with_nan"]
    (60, 12)
    >>> simulate_pool("/tmp/sims/pool", n=1000, lens_fraction=0.05, size=32, seed=2)["n_lenses"]
    50
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

FORMATS = writer.FORMATS
MIN_SIZE, MAX_SIZE = 16, 1024
NAN_STREAM = 2**31 - 1      # extra seed word of the NaN file selection stream
POOL_STREAM = 2**31 - 2     # extra seed word of a pool's images
SHUFFLE_STREAM = 2**31 - 3  # extra seed word of a pool's file order
CHUNK = 64                  # images per worker task


def image_rng(seed, label, index, pool=False):
    """Generator of one image: depends on (seed, class, index) only (and, for a
    pool's image, its own stream).

    It draws, in this order, the scene, the noise and the NaN pattern.
    """
    return np.random.default_rng([seed, label, index, POOL_STREAM] if pool
                                 else [seed, label, index])


def exact_count(fraction, n):
    """round(fraction * n), halves rounded up: the exact number of images asked for."""
    return int(math.floor(fraction * n + 0.5))


def nan_indices(seed, label, n, nan_fraction):
    """Which images of a class get NaN pixels: exactly round(fraction * n) of them."""
    k = exact_count(nan_fraction, n)
    rng = np.random.default_rng([seed, label, n, NAN_STREAM])
    return set(rng.choice(n, size=k, replace=False).tolist()) if k else set()


# One renderer per (format, size) per process: building SimAPIs is slow.
_RENDERERS = {}


def _renderer(fmt, size):
    key = (fmt, size)
    if key not in _RENDERERS:
        _RENDERERS[key] = Renderer(SURVEYS[fmt], size)
    return _RENDERERS[key]


def pool_positions(seed, n_lenses, n_nonlenses):
    """Where each image goes in a pool: a seeded permutation of the file numbers.

    Returns:
        (lens_positions, nonlens_positions): int arrays; lens ``i`` is written
        as file number ``lens_positions[i]``, so lenses are spread through the pool.
    """
    rng = np.random.default_rng([seed, n_lenses, n_nonlenses, SHUFFLE_STREAM])
    order = rng.permutation(n_lenses + n_nonlenses)
    return order[:n_lenses], order[n_lenses:]


def simulate_one(fmt, size, seed, label, index, with_nan=False, *, bands=3, name=None):
    """Render one image and its metadata row (no file written).

    Args:
        fmt: "hst", "three-band" or "pool" (``bands`` 1 or 3 then picks the survey).
        name: the file name recorded in the row (default: the format's name for
            ``label``, ``index``; a pool's names depend on the whole pool).

    Returns:
        (image, row): float32 (bands, H, W) array (2-D (H, W) for one band) and
        its metadata.csv row as a dict.
    """
    renderer = _renderer(writer.survey_name(fmt, bands), size)
    rng = image_rng(seed, label, index, pool=fmt == writer.POOL)
    scene = draw_scene(rng, label, renderer.survey)
    image, info = renderer.render(scene, rng)
    nan_count = sprinkle_nans(image, rng) if with_nan else 0
    if name is None:
        name = writer.file_name(fmt, label, index)
    row = writer.layout_fields(fmt, label, name)
    row.update({"index": index, "pixel_scale": renderer.pixel_scale})
    row.update(scene.meta)
    if label == LENS:
        row["magnification"] = info["magnification"]
        bands = [b.name for b in renderer.survey.bands]
        row.update({f"arc_snr_{b}": v for b, v in zip(bands, info["arc_snr"])})
    row["nan_pixels"] = nan_count
    if len(renderer.survey.bands) == 1:
        image = image[0]  # single band: 2-D, as the DeepLense HST files
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
    fmt, bands, size, seed, label, items, nan_set, root = task
    header = None
    rows = []
    for index, name in items:
        image, row = simulate_one(fmt, size, seed, label, index, index in nan_set, bands=bands,
                                  name=name)
        if header is None:
            header = writer.npy_header(image.shape)
        writer.write_npy(Path(root) / row["filename"], image, header)
        rows.append(row)
    return rows


def _check_format(fmt):
    if fmt not in FORMATS:
        raise KerassslError(f"--format: unknown format {fmt!r} "
                            f"(choose {', '.join(FORMATS[:-1])} or {FORMATS[-1]})")


def _check_counts(n_lenses, n_nonlenses):
    for name, value in (("--n-lenses", n_lenses), ("--n-nonlenses", n_nonlenses)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise KerassslError(f"{name}: must be a whole number >= 0, got {value!r}")
    if n_lenses + n_nonlenses == 0:
        raise KerassslError("--n-lenses / --n-nonlenses: nothing to simulate (both are 0)")


def _check_pool(n, lens_fraction, bands):
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise KerassslError(f"--n: must be a whole number >= 1, got {n!r}")
    if not (isinstance(lens_fraction, (int, float)) and 0.0 <= lens_fraction <= 1.0):
        raise KerassslError(f"--lens-fraction: must be in [0, 1], got {lens_fraction!r}")
    if bands not in writer.POOL_SURVEYS:
        raise KerassslError(f"--bands: must be 1 or 3, got {bands!r}")


def _check_common(size, seed, nan_fraction, workers):
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
            (``lenses/``, ``nonlenses/``, (3, H, W) arrays, g, r, i); an
            unlabeled pool is :func:`simulate_pool`.
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
    _check_format(fmt)
    if fmt == writer.POOL:
        raise KerassslError("--format pool: an unlabeled pool takes --n and --lens-fraction "
                            "(simulate_pool), not --n-lenses / --n-nonlenses")
    _check_counts(n_lenses, n_nonlenses)
    _check_common(size, seed, nan_fraction, workers)

    def names(label, indices):
        return [writer.file_name(fmt, label, int(i)) for i in indices]

    return _generate(out_dir, fmt, 3, n_lenses, n_nonlenses, names, size=size, seed=seed,
                     nan_fraction=float(nan_fraction), workers=workers)


def simulate_pool(out_dir, *, n, lens_fraction, size, seed, bands=3, nan_fraction=0.0,
                  workers=1):
    """Simulate an unlabeled pool into ``out_dir``: a flat folder of ``n`` cutouts.

    Files are ``pool_<position>.npy`` in a seeded random order, so neither the
    names nor the order reveal the class; the truth (``is_lens``) and each
    image's parameters are in ``out_dir/metadata.csv``. The images come from a
    stream of their own: a labelled set simulated with the same seed shares
    no image with the pool.

    Args:
        out_dir: output folder; must not exist or be empty.
        n: number of images (>= 1).
        lens_fraction: in [0, 1]; exactly round(n * lens_fraction) (halves up)
            of the images are lenses.
        size: image side in pixels.
        seed: the same seed gives byte-identical files.
        bands: 3 (g, r, i (3, H, W) arrays, as format ``three-band``) or 1
            (2-D arrays, as format ``hst``).
        nan_fraction: fraction of files (per class, rounded) with NaN pixels.
        workers: processes; does not change the output.

    Returns:
        The summary dict of :func:`simulate`, plus ``bands`` and ``lens_fraction``.

    Example:
        >>> s = simulate_pool("/tmp/s/pool", n=200, lens_fraction=0.1, size=32, seed=2)
        >>> s["n_lenses"], s["n_nonlenses"]
        (20, 180)
    """
    _check_pool(n, lens_fraction, bands)
    _check_common(size, seed, nan_fraction, workers)
    n_lenses = exact_count(lens_fraction, n)
    positions = dict(zip((LENS, NONLENS), pool_positions(seed, n_lenses, n - n_lenses)))

    def names(label, indices):
        return [writer.pool_file_name(int(positions[label][i]), n) for i in indices]

    summary = _generate(out_dir, writer.POOL, bands, n_lenses, n - n_lenses, names,
                        size=size, seed=seed, nan_fraction=float(nan_fraction), workers=workers)
    summary.update({"bands": bands, "lens_fraction": lens_fraction})
    return summary


def _generate(out_dir, fmt, bands, n_lenses, n_nonlenses, names, *, size, seed, nan_fraction,
              workers):
    """Render and write every image, then metadata.csv; OUT appears only when complete.

    ``names(label, indices)`` gives the files' names (relative to OUT).
    """
    import_lenstronomy()  # one line before anything is written if it is missing
    out, tmp = writer.prepare_output(out_dir, writer.class_folders(fmt))
    start_time = time.perf_counter()
    try:
        tasks = []
        for label, count in ((LENS, n_lenses), (NONLENS, n_nonlenses)):
            nan_set = nan_indices(seed, label, count, nan_fraction)
            for start in range(0, count, CHUNK):
                indices = range(start, min(start + CHUNK, count))
                items = list(zip(indices, names(label, indices)))
                chunk_nans = {i for i in nan_set if i in indices}
                tasks.append((fmt, bands, size, seed, label, items, chunk_nans, str(tmp)))
        rows = []
        if workers == 1:
            for task in tasks:
                rows += _simulate_chunk(task)
        else:
            context = _worker_context()
            if context.get_start_method() == "fork":
                # Built once here, inherited by the workers.
                _renderer(writer.survey_name(fmt, bands), size)
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as executor:
                for chunk_rows in executor.map(_simulate_chunk, tasks):
                    rows += chunk_rows
        if fmt == writer.POOL:
            rows.sort(key=lambda row: row["filename"])  # the pool's order, not by class
        writer.write_metadata(tmp / writer.METADATA_FILE, writer.metadata_columns(fmt, bands),
                              rows)
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

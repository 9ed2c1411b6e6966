"""Simulated strong-lens / non-lens data sets and unlabeled pools (lenstronomy).

- :mod:`kerasssl.simulate.survey`: the galaxy populations, and each format's
  instrument (bands, zero points, sky, PSF range, field of view).
- :mod:`kerasssl.simulate.scene`: draw one image's parameters (a :class:`Scene`).
- :mod:`kerasssl.simulate.render`: a scene to pixels (lenstronomy), PSF, noise, NaN pixels.
- :mod:`kerasssl.simulate.writer`: folders, file names, .npy bytes, metadata.csv.
- :mod:`kerasssl.simulate.generate`: the job: per-image seeds, workers, atomic output.

Example:
    >>> from kerasssl.simulate import simulate
    >>> simulate("/tmp/sims/3b", fmt="three-band", n_lenses=30, n_nonlenses=30,
    ...          size=32, seed=1)["n_images"]
    60
    >>> from kerasssl.simulate import simulate_pool
    >>> simulate_pool("/tmp/sims/pool", n=300, lens_fraction=0.05, size=32, seed=2)["n_lenses"]
    15
"""

from kerasssl.simulate.generate import (
    CHUNK, FORMATS, MAX_SIZE, MIN_SIZE, exact_count, image_rng, nan_indices, pool_positions,
    simulate, simulate_one, simulate_pool)
from kerasssl.simulate.render import Renderer, sprinkle_nans
from kerasssl.simulate.scene import Component, Scene, draw_scene
from kerasssl.simulate.survey import SURVEYS, Band, Survey
from kerasssl.simulate.writer import LENS, NONLENS, POOL_SURVEYS, metadata_columns

__all__ = [
    "CHUNK", "FORMATS", "LENS", "MAX_SIZE", "MIN_SIZE", "NONLENS", "POOL_SURVEYS", "SURVEYS",
    "Band", "Component", "Renderer", "Scene", "Survey", "draw_scene", "exact_count",
    "image_rng", "metadata_columns", "nan_indices", "pool_positions", "simulate",
    "simulate_one", "simulate_pool", "sprinkle_nans",
]

"""Simulated strong-lens / non-lens data sets (lenstronomy), for when no data is at hand.

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
"""

from kerasssl.simulate.generate import (
    CHUNK, FORMATS, MAX_SIZE, MIN_SIZE, image_rng, nan_indices, simulate, simulate_one)
from kerasssl.simulate.render import Renderer, sprinkle_nans
from kerasssl.simulate.scene import Component, Scene, draw_scene
from kerasssl.simulate.survey import SURVEYS, Band, Survey
from kerasssl.simulate.writer import LENS, NONLENS, metadata_columns

__all__ = [
    "CHUNK", "FORMATS", "LENS", "MAX_SIZE", "MIN_SIZE", "NONLENS", "SURVEYS", "Band",
    "Component", "Renderer", "Scene", "Survey", "draw_scene", "image_rng",
    "metadata_columns", "nan_indices", "simulate", "simulate_one", "sprinkle_nans",
]

"""Keras layers for lensing images, written with ``keras.ops`` (TF and JAX backends).

Augmentation (identity when ``training=False``, per-image parameters, no
clipping, float32 maths under mixed precision, XLA-compilable):

- :class:`RandomRotation`: any angle per image, bilinear, reflect fill.
- :class:`RandomResizedCrop`: the SimCLR crop, through the same affine sampler.
- :class:`RandomRotatedCrop`: both in one resample (what the views use when a
  view has both).
- :class:`RandomFlip`, :class:`RandomRot90`, :class:`RandomDihedral`: exact
  pixel permutations (the symmetries of the square).
- :class:`RandomGaussianBlur`: per-image sigma, separable, flux-conserving.
- :class:`RandomGaussianNoise`: per-image level, optionally relative to the
  image's robust sky std.

Physical views (issue 15: what a survey's own variations do to a lens):

- :class:`RandomShift`: small whole- or sub-pixel translations, in place of
  zoom (a resized crop changes the apparent Einstein radius).
- :class:`PSFMatchBlur`: blur each band to a target PSF FWHM drawn per image
  (the quadrature difference; never sharpens).
- :class:`SkyNoiseMatch`: add noise per band up to a target sky level drawn
  per image (never denoises).
- :class:`RandomReddening`: dust extinction, E(B-V) per image with per-band
  coefficients, in place of colour jitter.
- :class:`RandomDihedral` (exact) and :class:`RandomRotation` (any angle)
  above cover the orientations.

Preprocessing: :class:`Preprocess` (NaN/Inf repair + normalisation, the first
layer of every model).

:mod:`kerasssl.layers.views` builds the two views of each method from a config dict.

Example:
    >>> import kerasssl.layers as L
    >>> augment = keras.Sequential([L.RandomDihedral(seed=1), L.RandomRotation(0.5, seed=2)])
"""

from kerasssl.layers.blur import RandomGaussianBlur
from kerasssl.layers.crop import RandomResizedCrop
from kerasssl.layers.dihedral import RandomDihedral, RandomFlip, RandomRot90
from kerasssl.layers.noise import RandomGaussianNoise
from kerasssl.layers.preprocess import Preprocess
from kerasssl.layers.psf import PSFMatchBlur
from kerasssl.layers.reddening import RandomReddening
from kerasssl.layers.rotatedcrop import RandomRotatedCrop
from kerasssl.layers.rotation import RandomRotation
from kerasssl.layers.shift import RandomShift
from kerasssl.layers.skynoise import SkyNoiseMatch

__all__ = [
    "PSFMatchBlur",
    "Preprocess",
    "RandomDihedral",
    "RandomFlip",
    "RandomGaussianBlur",
    "RandomGaussianNoise",
    "RandomReddening",
    "RandomResizedCrop",
    "RandomRotatedCrop",
    "RandomRot90",
    "RandomRotation",
    "RandomShift",
    "SkyNoiseMatch",
]

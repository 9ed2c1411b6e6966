"""Keras layers for lensing images, written with ``keras.ops`` (TF and JAX backends).

Augmentation (identity when ``training=False``, per-image parameters, no
clipping, float32 maths under mixed precision, XLA-compilable):

- :class:`RandomRotation`: any angle per image, bilinear, reflect fill.
- :class:`RandomResizedCrop`: the SimCLR crop, through the same affine sampler.
- :class:`RandomFlip`, :class:`RandomRot90`, :class:`RandomDihedral`: exact
  pixel permutations (the symmetries of the square).
- :class:`RandomGaussianBlur`: per-image sigma, separable, flux-conserving.
- :class:`RandomGaussianNoise`: per-image level, optionally relative to the
  image's robust std.

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
from kerasssl.layers.rotation import RandomRotation

__all__ = [
    "Preprocess",
    "RandomDihedral",
    "RandomFlip",
    "RandomGaussianBlur",
    "RandomGaussianNoise",
    "RandomResizedCrop",
    "RandomRot90",
    "RandomRotation",
]

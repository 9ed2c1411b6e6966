"""RandomReddening: Galactic dust extinction per image, the physical colour change."""

import math

import keras
from keras import ops

from kerasssl.layers.bands import per_band_values, require_bands
from kerasssl.layers.base import RandomImageLayer, probability_value, value_range

# A_b / E(B-V) for DECam g, r, i: Schlafly & Finkbeiner (2011, R_V = 3.1) as
# tabulated by the Legacy Surveys (legacysurvey.org, "Galactic extinction
# coefficients": u..Y 3.995, 3.214, 2.165, 1.592, 1.211, 1.064).
DECAM_GRI = (3.214, 2.165, 1.592)
# 10 ** (-0.4 * m) == exp(-MAG_TO_LN * m)
MAG_TO_LN = 0.4 * math.log(10.0)


@keras.saving.register_keras_serializable(package="kerasssl")
class RandomReddening(RandomImageLayer):
    """Dim each band by dust extinction with a colour excess E(B-V) drawn per image.

    Band ``b`` is multiplied by ``10 ** (-0.4 * R_b * E(B-V))``: the same
    dust dims blue bands more than red ones, by the extinction law, so band
    ratios change as they do on the sky. This replaces colour jitter, which
    changes band ratios arbitrarily and breaks the colours that tell a blue
    lensed source from a red deflector. E(B-V) = 0 is the identity.

    It multiplies pixel values, so it is physical on linear fluxes (sky
    subtracted, or normalised by a per-band scale without an offset); after
    a nonlinear stretch (asinh) it is a per-band contrast change.

    Args:
        ebv: colour excess E(B-V) in magnitudes, a number or a ``(low, high)``
            range drawn uniformly per image; >= 0 (negative would de-redden).
        coefficients: extinction coefficients ``R_b = A_b / E(B-V)``, one per
            band, in the images' band order. The default is DECam g, r, i
            (3.214, 2.165, 1.592: Schlafly & Finkbeiner 2011, R_V = 3.1, as the
            Legacy Surveys use them); images with another band count need
            their own (the layer raises otherwise).
        probability: chance that an image is reddened at all.
        seed: integer seed; None draws one.
        **kwargs: base layer arguments (name, dtype, ...).

    Example:
        >>> layer = RandomReddening(ebv=(0.0, 0.1), seed=0)   # g, r, i images
        >>> reddened = layer(images, training=True)           # (N, H, W, 3)
    """

    def __init__(self, ebv=(0.0, 0.1), coefficients=DECAM_GRI, probability=1.0, seed=None,
                 **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.ebv = value_range(ebv, "ebv", minimum=0.0)
        coefficients = per_band_values(coefficients, "coefficients")
        if not isinstance(coefficients, list):
            raise ValueError(
                f"coefficients must be a list with one A/E(B-V) per band, got {coefficients!r}"
            )
        self.coefficients = coefficients
        self.probability = probability_value(probability)

    def check_bands(self, channels):
        require_bands(self, self.coefficients, channels, "coefficients")

    def augment(self, images):
        n = ops.shape(images)[0]
        ebv = keras.random.uniform((n, 1), self.ebv[0], self.ebv[1], seed=self.seed_generator)
        apply = keras.random.uniform((n, 1), seed=self.seed_generator) < self.probability
        ebv = ops.where(apply, ebv, 0.0)
        coefficients = ops.convert_to_tensor(self.coefficients, "float32")
        factor = ops.exp(-MAG_TO_LN * ebv * coefficients)  # (N, C)
        return images * factor[:, None, None, :]

    def get_config(self):
        config = super().get_config()
        config.update(ebv=list(self.ebv), coefficients=list(self.coefficients),
                      probability=self.probability)
        return config

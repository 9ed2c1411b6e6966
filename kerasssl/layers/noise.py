"""RandomGaussianNoise: additive noise with a per-image level, optionally relative."""

import keras
from keras import ops

from kerasssl.layers.base import RandomImageLayer, probability_value, value_range
from kerasssl.layers.sky import MAD_TO_STD, sky_std


def robust_std(images):
    """Per-image, per-band robust standard deviation ``1.4826 * MAD``, shape (N, 1, 1, C).

    The median absolute deviation ignores the bright lens and arcs, so it
    measures the sky noise of each band of each image. Exact, but two full
    sorts per image and band: the layers use the cheaper, more precise
    :func:`kerasssl.layers.sky.sky_std`; this is the reference it is tested
    against.

    Example:
        >>> robust_std(images)   # ~sigma for Gaussian sky noise of std sigma
    """
    median = ops.median(images, axis=(1, 2), keepdims=True)
    mad = ops.median(ops.abs(images - median), axis=(1, 2), keepdims=True)
    return MAD_TO_STD * mad


@keras.saving.register_keras_serializable(package="kerasssl")
class RandomGaussianNoise(RandomImageLayer):
    """Add Gaussian noise whose standard deviation is drawn per image.

    The seed project's "Gaussian" pretext task was this additive noise. With
    ``relative=True`` the drawn level multiplies each image's robust sky
    standard deviation per band (:func:`kerasssl.layers.sky.sky_std`: a
    subsample's MAD refined by sigma clipping, which agrees with the full
    ``1.4826 * MAD`` within its scatter at a fraction of its cost), so the
    same setting adds the same signal-to-noise change to bright and faint
    images and to every band.

    Args:
        stddev: noise standard deviation, a number or a ``(low, high)`` range
            drawn uniformly per image; >= 0. In pixel units, or in units of the
            image's robust std when ``relative``.
        relative: scale the noise by each image's per-band robust std.
        probability: chance that an image gets noise at all.
        seed: integer seed; None draws one.
        **kwargs: base layer arguments (name, dtype, ...).

    Example:
        >>> layer = RandomGaussianNoise(stddev=(0.0, 0.5), relative=True, seed=0)
        >>> noisy = layer(images, training=True)
    """

    def __init__(self, stddev=(0.0, 0.1), relative=False, probability=1.0, seed=None,
                 **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.stddev = value_range(stddev, "stddev", minimum=0.0)
        self.relative = bool(relative)
        self.probability = probability_value(probability)

    def augment(self, images):
        n = ops.shape(images)[0]
        level = keras.random.uniform((n,), self.stddev[0], self.stddev[1],
                                     seed=self.seed_generator)
        apply = keras.random.uniform((n,), seed=self.seed_generator) < self.probability
        level = ops.reshape(ops.where(apply, level, ops.zeros_like(level)), (-1, 1, 1, 1))
        if self.relative:
            level = level * sky_std(images)
        noise = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        return images + level * noise

    def get_config(self):
        config = super().get_config()
        config.update(stddev=list(self.stddev), relative=self.relative,
                      probability=self.probability)
        return config

"""SkyNoiseMatch: add noise per band up to a target sky level drawn per image, never denoise."""

import keras
from keras import ops

from kerasssl.layers.bands import band_values, per_band_ranges, require_bands
from kerasssl.layers.base import RandomImageLayer, probability_value
from kerasssl.layers.sky import SKY_SAMPLE, sky_std


@keras.saving.register_keras_serializable(package="kerasssl")
class SkyNoiseMatch(RandomImageLayer):
    """Make each band as noisy as a target sky level drawn per image: a shallower exposure.

    Per image and band the current sky noise ``s`` is estimated robustly
    (:func:`kerasssl.layers.sky.sky_std`: lens light and arcs do not count), a
    target ``t`` is drawn in the band's range, and where ``t > s`` Gaussian
    noise of standard deviation ``sqrt(t**2 - s**2)`` is added, so the sky
    ends at ``t``; where ``t <= s`` the band is left unchanged (noise cannot
    be removed). The sky noise this adds is white; real coadds are slightly
    correlated, which a later :class:`PSFMatchBlur` would mimic.

    Args:
        target_std: the target sky standard deviation, a number, a
            ``(low, high)`` range for every band, or a list of one range per
            band; drawn uniformly; >= 0. In the units of the layer's input
            (raw pixels, or the normalised ones the model's views see), or
            in units of each band's current sky noise when ``relative``.
        relative: ``target_std`` multiplies each band's current sky noise
            (``(1, 2)``: up to 4x shorter exposures), so one setting fits any
            normalisation.
        independent_bands: draw each band's target on its own. By default
            one draw per image sets every band at the same point of its range
            (one exposure: all bands shallower alike).
        probability: chance that an image gets noise at all.
        sample: pixels of the sky estimate's first guess (see :func:`sky_std`).
        seed: integer seed; None draws one.
        **kwargs: base layer arguments (name, dtype, ...).

    Example:
        >>> layer = SkyNoiseMatch(target_std=[[2.0, 4.0], [3.0, 5.0], [4.0, 6.0]], seed=0)
        >>> noisier = layer(images, training=True)   # g, r, i sky std -> the targets
    """

    def __init__(self, target_std=(1.0, 2.0), relative=False, independent_bands=False,
                 probability=1.0, sample=SKY_SAMPLE, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.target_std = per_band_ranges(target_std, "target_std", minimum=0.0)
        self.relative = bool(relative)
        self.independent_bands = bool(independent_bands)
        self.probability = probability_value(probability)
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
            raise ValueError(f"sample must be a positive int, got {sample!r}")
        self.sample = sample

    def check_bands(self, channels):
        require_bands(self, self.target_std, channels, "target_std", ranges=True)

    def augment(self, images):
        channels = images.shape[3]
        ranges = band_values(self.target_std, channels, ranges=True)
        low = ops.convert_to_tensor([lo for lo, _ in ranges], "float32")
        high = ops.convert_to_tensor([hi for _, hi in ranges], "float32")
        n = ops.shape(images)[0]
        draws = keras.random.uniform((n, channels if self.independent_bands else 1),
                                     seed=self.seed_generator)
        target = ops.reshape(low + draws * (high - low), (-1, 1, 1, channels))
        current = sky_std(images, sample=self.sample)  # (N, 1, 1, C)
        if self.relative:
            target = target * current
        apply = keras.random.uniform((n, 1, 1, 1), seed=self.seed_generator) < self.probability
        added = ops.sqrt(ops.maximum(ops.square(target) - ops.square(current), 0.0))
        added = ops.where(apply, added, 0.0)
        noise = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        return images + added * noise

    def get_config(self):
        config = super().get_config()
        config.update(target_std=self.target_std, relative=self.relative,
                      independent_bands=self.independent_bands,
                      probability=self.probability, sample=self.sample)
        return config

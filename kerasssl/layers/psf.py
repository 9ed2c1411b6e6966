"""PSFMatchBlur: blur each band to a target PSF drawn per image, never sharpen."""

import math

import keras
from keras import ops

from kerasssl.layers.bands import band_values, per_band_ranges, per_band_values, require_bands
from kerasssl.layers.base import RandomImageLayer, probability_value
from kerasssl.layers.blur import blur_matrices, gaussian_taps

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))  # 1 / 2.3548
KERNEL_TRUNCATION = 5.0  # sigmas: the variance lost past the edge is ~1e-5
# Below this sigma a sampled Gaussian holds less variance than sigma**2 (15 %
# less at 0.5 px); its taps then get the missing variance at +-1 pixel.
UNDERSAMPLED_SIGMA = 0.9


def matching_sigma(current_fwhm, target_fwhm):
    """Sigma of the Gaussian that takes a Gaussian PSF of ``current_fwhm`` to ``target_fwhm``.

    Gaussians convolve in quadrature: ``sigma = sqrt(target**2 - current**2) / 2.3548``,
    and 0 where the target is not broader (the PSF is never sharpened).
    Works on numbers or tensors, in any unit (pixels or arcsec).

    Example:
        >>> matching_sigma(3.0, 5.0)   # sqrt(25 - 9) / 2.3548 = 1.699
    """
    squared = ops.maximum(ops.square(target_fwhm) - ops.square(current_fwhm), 0.0)
    return ops.sqrt(squared) * FWHM_TO_SIGMA


def variance_matched_taps(sigma, apply, radius):
    """Gaussian taps ``(M, 2 * radius + 1)`` whose variance is ``sigma**2`` also below 1 px.

    A Gaussian sampled at pixel offsets has the variance ``sigma**2`` down to
    about 0.9 px and less below (the taps miss the curve between pixels). The
    PSF law is about variances, so there the taps are mixed with weight ``w``
    into ``[1/2, 0, 1/2]`` at +-1 pixel, ``w`` chosen to restore ``sigma**2``
    exactly; the kernel stays symmetric, positive and sums to 1.

    Args:
        sigma: float32 ``(M,)`` in pixels.
        apply: bool ``(M,)``; False gives the identity kernel.
        radius: kernel half-width (Python int, >= 1).

    Example:
        >>> taps = variance_matched_taps(ops.full((1,), 0.4), ops.ones((1,), "bool"), 2)
    """
    taps = gaussian_taps(sigma, apply, radius)
    offsets = ops.arange(-radius, radius + 1, dtype="float32")[None, :]
    variance = ops.sum(taps * ops.square(offsets), axis=1, keepdims=True)
    target = ops.square(ops.reshape(sigma, (-1, 1)))
    undersampled = ops.reshape(apply & (sigma < UNDERSAMPLED_SIGMA), (-1, 1))
    # 1 - variance >= 0.19 where sigma < 0.9: no division by ~0.
    weight = ops.clip((target - variance) / ops.maximum(1.0 - variance, 0.1), 0.0, 1.0)
    weight = ops.where(undersampled, weight, 0.0)
    pair = 0.5 * ops.cast(ops.equal(ops.abs(offsets), 1.0), "float32")
    return (1.0 - weight) * taps + weight * pair


@keras.saving.register_keras_serializable(package="kerasssl")
class PSFMatchBlur(RandomImageLayer):
    """Blur every band to a target PSF width drawn per image: worse seeing, never better.

    Give each band's PSF FWHM (the data's worst, so that no image gets
    sharper than its target) and a target FWHM range per band. Per image a
    target is drawn in each band's range, and a band whose target is broader
    than its PSF is convolved with the Gaussian of the quadrature difference,
    ``sigma = sqrt(target**2 - psf**2) / 2.3548`` (:func:`matching_sigma`):
    a Gaussian PSF of width ``psf`` leaves with width ``target``. A band whose
    target is not broader is left unchanged: blur can only widen a PSF, so
    unlike a random blur this never pretends to sharpen the data.

    The kernel is separable, truncated at 5 sigma, flux-conserving with
    reflected edges (the matmul blur of :class:`RandomGaussianBlur`), and its
    variance is exactly ``sigma**2`` even below a pixel
    (:func:`variance_matched_taps`). The PSF law holds on linear fluxes (or
    any per-band affine normalisation of them), not after a nonlinear
    stretch such as asinh.

    Args:
        psf_fwhm: the PSF FWHM of the data, one number for every band or a
            list with one per band (> 0).
        target_fwhm: the target FWHM, a number, a ``(low, high)`` range for
            every band, or a list of one range per band; drawn uniformly.
        pixel_scale: arcsec per pixel when the FWHMs are in arcsec; None
            (default) when they are in pixels.
        independent_bands: draw each band's target on its own. By default
            one draw per image sets every band at the same point of its range
            (one night's seeing blurs all bands alike).
        probability: chance that an image is blurred at all.
        seed: integer seed; None draws one.
        **kwargs: base layer arguments (name, dtype, ...).

    Example:
        >>> # g, r, i seeing of a ground survey at 0.263 arcsec per pixel
        >>> layer = PSFMatchBlur(psf_fwhm=[1.15, 1.05, 0.95],
        ...                      target_fwhm=[[1.15, 1.6], [1.05, 1.5], [0.95, 1.4]],
        ...                      pixel_scale=0.263, seed=0)
        >>> blurred = layer(images, training=True)   # (N, H, W, 3)
    """

    def __init__(self, psf_fwhm, target_fwhm, pixel_scale=None, independent_bands=False,
                 probability=1.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.psf_fwhm = per_band_values(psf_fwhm, "psf_fwhm", minimum=0.0, strict=True)
        self.target_fwhm = per_band_ranges(target_fwhm, "target_fwhm", minimum=0.0)
        if pixel_scale is not None:
            pixel_scale = per_band_values(pixel_scale, "pixel_scale", minimum=0.0, strict=True)
            if isinstance(pixel_scale, list):
                raise ValueError(f"pixel_scale must be one number, got {pixel_scale!r}")
        self.pixel_scale = pixel_scale
        self.independent_bands = bool(independent_bands)
        self.probability = probability_value(probability)

    def band_fwhms(self, channels):
        """``(psf, low, high)`` lists of one FWHM per band, in pixels."""
        require_bands(self, self.psf_fwhm, channels, "psf_fwhm")
        require_bands(self, self.target_fwhm, channels, "target_fwhm", ranges=True)
        unit = 1.0 if self.pixel_scale is None else 1.0 / self.pixel_scale
        psf = [v * unit for v in band_values(self.psf_fwhm, channels)]
        ranges = band_values(self.target_fwhm, channels, ranges=True)
        return psf, [lo * unit for lo, _ in ranges], [hi * unit for _, hi in ranges]

    def check_bands(self, channels):
        self.band_fwhms(channels)

    def augment(self, images):
        height, width, channels = images.shape[1], images.shape[2], images.shape[3]
        psf, low, high = self.band_fwhms(channels)
        widest = max(math.sqrt(max(h * h - p * p, 0.0)) for p, h in zip(psf, high))
        widest *= FWHM_TO_SIGMA
        if widest == 0.0:  # no target is broader than its PSF: nothing to do
            return images
        n = ops.shape(images)[0]
        draws = keras.random.uniform((n, channels if self.independent_bands else 1),
                                     seed=self.seed_generator)
        low_t, high_t = ops.convert_to_tensor(low), ops.convert_to_tensor(high)
        target = low_t + draws * (high_t - low_t)  # (N, C)
        current = ops.convert_to_tensor(psf)
        image_on = keras.random.uniform((n, 1), seed=self.seed_generator) < self.probability
        apply = ops.reshape((target > current) & image_on, (-1,))
        sigma = ops.reshape(matching_sigma(current, target), (-1,))  # (N * C,) pixels

        def operators(size):
            radius = min(max(1, math.ceil(KERNEL_TRUNCATION * widest)), size - 1)
            if radius < 1:  # a 1-pixel axis: blur with reflect edges is the identity
                return None
            return blur_matrices(variance_matched_taps(sigma, apply, radius), size, radius)

        rows = operators(height)
        cols = rows if width == height else operators(width)
        # Each (image, band) has its own kernel: (N*C, H, H) @ (N*C, H, W) @ (N*C, W, W).
        x = ops.reshape(ops.transpose(images, (0, 3, 1, 2)), (-1, height, width))
        if rows is not None:
            x = ops.matmul(rows, x)
        if cols is not None:
            x = ops.matmul(x, ops.transpose(cols, (0, 2, 1)))
        x = ops.reshape(x, (-1, channels, height, width))
        return ops.transpose(x, (0, 2, 3, 1))

    def get_config(self):
        config = super().get_config()
        config.update(psf_fwhm=self.psf_fwhm, target_fwhm=self.target_fwhm,
                      pixel_scale=self.pixel_scale,
                      independent_bands=self.independent_bands,
                      probability=self.probability)
        return config

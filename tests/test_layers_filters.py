"""Blur and noise layers: kernel moments, flux, per-image parameters, robust noise levels."""

import numpy as np
import pytest

from kerasssl.layers import RandomGaussianBlur, RandomGaussianNoise
from kerasssl.layers.noise import robust_std


def delta(n, size, channels=1, amplitude=1.0):
    images = np.zeros((n, size, size, channels), "float32")
    images[:, size // 2, size // 2, :] = amplitude
    return images


def moments(kernel):
    """Sum and per-axis second moments of a (H, W) kernel about its centre."""
    size = kernel.shape[0]
    offsets = np.arange(size) - size // 2
    total = kernel.sum()
    var_y = (kernel.sum(axis=1) * offsets ** 2).sum() / total
    var_x = (kernel.sum(axis=0) * offsets ** 2).sum() / total
    return total, var_y, var_x


@pytest.mark.parametrize("sigma", [0.8, 1.7])
def test_blurred_delta_is_the_gaussian_kernel(sigma):
    out = np.asarray(RandomGaussianBlur(sigma=(sigma, sigma), seed=0)(delta(2, 33, 3),
                                                                       training=True))
    for kernel in out.transpose(0, 3, 1, 2).reshape(-1, 33, 33):
        total, var_y, var_x = moments(kernel.astype("float64"))
        assert total == pytest.approx(1.0, abs=1e-5)
        # Truncation at 4 sigma removes ~0.1 % of the variance.
        assert var_y == pytest.approx(sigma ** 2, rel=3e-3)
        assert var_x == pytest.approx(sigma ** 2, rel=3e-3)
    # And it equals the normalised, truncated separable NumPy Gaussian.
    radius = int(np.ceil(4 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    want = np.zeros((33, 33))
    want[16 - radius:17 + radius, 16 - radius:17 + radius] = np.outer(taps, taps)
    np.testing.assert_allclose(out[0, :, :, 0], want, atol=1e-6)


def test_blur_sigma_differs_per_image_within_range():
    out = np.asarray(RandomGaussianBlur(sigma=(0.5, 2.0), seed=1)(delta(16, 33), training=True))
    sigmas = np.array([np.sqrt(moments(k[..., 0].astype("float64"))[1]) for k in out])
    # A sampled Gaussian narrower than ~0.8 px has a slightly smaller discrete
    # variance (0.46 px at sigma 0.5), hence the lower bound.
    assert np.all(sigmas > 0.45) and np.all(sigmas < 2.0 + 0.01)
    assert len(np.unique(np.round(sigmas, 4))) == 16


def test_blur_keeps_flux_negatives_and_bright_values_with_reflect_edges():
    rng = np.random.default_rng(0)
    images = rng.normal(0.0, 50.0, size=(4, 20, 20, 2)).astype("float32")
    images[:, 0, 0, :] = 3000.0  # a bright source on the edge
    out = np.asarray(RandomGaussianBlur(sigma=(1.0, 3.0), seed=0)(images, training=True))
    # Reflect boundaries make the operator symmetric: total flux is kept exactly.
    np.testing.assert_allclose(out.sum(axis=(1, 2)), images.sum(axis=(1, 2)), rtol=1e-4,
                               atol=1e-1)
    assert out.min() < -10.0 and out.max() > 255.0  # nothing clipped


def test_blur_probability_and_kernel_size():
    images = np.random.default_rng(0).normal(size=(64, 12, 12, 1)).astype("float32")
    out = np.asarray(RandomGaussianBlur(sigma=1.0, probability=0.0, seed=0)(images,
                                                                           training=True))
    np.testing.assert_array_equal(out, images)
    out = np.asarray(RandomGaussianBlur(sigma=1.0, probability=0.5, seed=0)(images,
                                                                           training=True))
    unchanged = np.all(np.isclose(out, images, atol=1e-6), axis=(1, 2, 3))
    assert 10 < unchanged.sum() < 54
    # kernel_size=3 truncates at one pixel: the blurred delta has a 3x3 support.
    out = np.asarray(RandomGaussianBlur(sigma=2.0, kernel_size=3, seed=0)(delta(1, 9),
                                                                         training=True))
    assert np.count_nonzero(out[0, ..., 0] > 1e-9) == 9
    for bad in ({"sigma": 0.0}, {"sigma": (2.0, 1.0)}, {"kernel_size": 4},
                {"probability": 1.5}):
        with pytest.raises(ValueError):
            RandomGaussianBlur(**bad)


def test_robust_std_matches_numpy():
    rng = np.random.default_rng(0)
    images = rng.normal(0.0, 1.0, size=(3, 15, 17, 2)).astype("float32") * [[1.0, 4.0]]
    images[:, 7, 8, :] = 1e4  # a bright lens barely moves it
    want = []
    for image in images:
        median = np.median(image, axis=(0, 1), keepdims=True)
        want.append(1.4826 * np.median(np.abs(image - median), axis=(0, 1), keepdims=True))
    np.testing.assert_allclose(np.asarray(robust_std(images)), np.stack(want), rtol=1e-5)


def test_noise_levels_absolute_and_relative():
    rng = np.random.default_rng(0)
    n, size = 8, 64
    scales = np.array([1.0, 10.0, 100.0, 1000.0] * 2, "float32")
    images = (rng.normal(size=(n, size, size, 1)) * scales[:, None, None, None]).astype("float32")
    out = np.asarray(RandomGaussianNoise(stddev=(0.5, 0.5), seed=0)(images, training=True))
    np.testing.assert_allclose((out - images).std(axis=(1, 2, 3)), 0.5, rtol=0.05)
    out = np.asarray(RandomGaussianNoise(stddev=(0.5, 0.5), relative=True, seed=0)(
        images, training=True))
    # The level multiplies each image's robust std (itself ~ the true scale).
    ratio = (out - images).std(axis=(1, 2, 3)) / np.asarray(robust_std(images)).ravel()
    np.testing.assert_allclose(ratio, 0.5, rtol=0.05)
    np.testing.assert_allclose(np.asarray(robust_std(images)).ravel() / scales, 1.0, rtol=0.08)
    # A different level per image when a range is given.
    out = np.asarray(RandomGaussianNoise(stddev=(0.0, 2.0), seed=1)(images[:1].repeat(8, 0),
                                                                   training=True))
    levels = (out - images[:1]).std(axis=(1, 2, 3))
    assert levels.max() - levels.min() > 0.3
    out = np.asarray(RandomGaussianNoise(stddev=1.0, probability=0.0, seed=0)(images,
                                                                             training=True))
    np.testing.assert_array_equal(out, images)
    with pytest.raises(ValueError):
        RandomGaussianNoise(stddev=-1.0)

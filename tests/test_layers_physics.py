"""Physical views: shifts vs NumPy, the PSF quadrature law, sky-noise matching, reddening law,
and the cheap robust sky estimator's error."""

import keras
import numpy as np
import pytest

from kerasssl.layers import (
    PSFMatchBlur,
    RandomGaussianNoise,
    RandomReddening,
    RandomShift,
    SkyNoiseMatch,
)
from kerasssl.layers.noise import robust_std
from kerasssl.layers.psf import FWHM_TO_SIGMA, matching_sigma, variance_matched_taps
from kerasssl.layers.sky import sky_std, truncated_std_factor

NUMPY_PADS = {"reflect": "symmetric", "wrap": "wrap", "nearest": "edge", "constant": "constant"}


def numpy_shift(image, dy, dx, fill_mode, fill_value=0.0):
    """(H, W, C) moved by (dy, dx) pixels with NumPy padding (Keras reflect = NumPy symmetric)."""
    k = max(abs(dy), abs(dx))
    h, w = image.shape[:2]
    pad = [(k, k), (k, k), (0, 0)]
    kwargs = {"constant_values": fill_value} if fill_mode == "constant" else {}
    padded = np.pad(image, pad, mode=NUMPY_PADS[fill_mode], **kwargs)
    return padded[k - dy:k - dy + h, k - dx:k - dx + w]


# --- RandomShift -----------------------------------------------------------------------------

@pytest.mark.parametrize("fill_mode", ["reflect", "wrap", "nearest", "constant"])
def test_integer_shift_is_exactly_numpy_pad(fill_mode):
    rng = np.random.default_rng(0)
    image = (rng.normal(0.0, 30.0, size=(9, 11, 2)) + 1e4 * (rng.random((9, 11, 2)) > 0.97))
    image = image.astype("float32")
    batch = np.repeat(image[None], 40, axis=0)
    out = np.asarray(RandomShift(max_shift=3, fill_mode=fill_mode, fill_value=-5.0, seed=1)(
        batch, training=True))
    seen = set()
    for o in out:
        matches = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
                   if np.array_equal(o, numpy_shift(image, dy, dx, fill_mode, -5.0))]
        assert len(matches) == 1, "not exactly one whole-pixel shift of the input"
        seen.add(matches[0])
    assert len(seen) > 15  # per-image offsets, both axes, both signs
    assert {dy for dy, _ in seen} == set(range(-3, 4))
    if fill_mode == "wrap":  # and wrap is np.roll
        dy, dx = next(iter(seen))
        np.testing.assert_array_equal(numpy_shift(image, dy, dx, "wrap"),
                                      np.roll(image, (dy, dx), axis=(0, 1)))


def test_subpixel_shift_moves_a_ramp_by_the_drawn_offset():
    # Bilinear sampling of a linear ramp is exact: the interior moves by the offset.
    n, size, max_shift = 16, 20, 1.5
    ramp = np.broadcast_to(np.arange(size, dtype="float32") * 3.0 - 20.0, (n, size, size))
    images = np.stack([ramp, np.swapaxes(ramp, 1, 2)], axis=-1)  # x ramp, y ramp
    out = np.asarray(RandomShift(max_shift, integer=False, seed=0)(images, training=True))
    inner = slice(2, size - 2)
    dx = (images[:, inner, inner, 0] - out[:, inner, inner, 0]) / 3.0
    dy = (images[:, inner, inner, 1] - out[:, inner, inner, 1]) / 3.0
    # One offset per image and axis, the same for every interior pixel.
    np.testing.assert_allclose(dx, dx[:, :1, :1] * np.ones_like(dx), atol=1e-4)
    np.testing.assert_allclose(dy, dy[:, :1, :1] * np.ones_like(dy), atol=1e-4)
    offsets = np.concatenate([dx[:, 0, 0], dy[:, 0, 0]])
    assert np.all(np.abs(offsets) <= max_shift + 1e-4)
    assert np.mean(np.abs(offsets - np.round(offsets)) > 0.05) > 0.5  # sub-pixel
    assert len(np.unique(np.round(offsets, 3))) == 2 * n


def test_shift_argument_errors():
    for bad in ({"max_shift": 1.5}, {"max_shift": -1}, {"max_shift": "two"},
                {"max_shift": 1, "fill_mode": "mirror"}):
        with pytest.raises(ValueError):
            RandomShift(**bad)
    with pytest.raises(ValueError, match="smaller than the image"):
        RandomShift(max_shift=8, seed=0)(np.zeros((2, 8, 8, 1), "float32"), training=True)
    assert RandomShift(max_shift=0, seed=0)(np.ones((1, 4, 4, 1)), training=True).shape == \
        (1, 4, 4, 1)


# --- PSFMatchBlur ----------------------------------------------------------------------------

def gaussian_source(size, fwhm_per_band, amplitude=100.0):
    """(size, size, C) circular Gaussians of the given FWHMs (pixels), centred on a pixel."""
    offsets = np.arange(size) - size // 2
    r2 = offsets[:, None] ** 2 + offsets[None, :] ** 2
    sigmas = np.asarray(fwhm_per_band) * FWHM_TO_SIGMA
    return (amplitude * np.exp(-0.5 * r2[..., None] / sigmas ** 2)).astype("float32")


def second_moments(images):
    """Per image and band: (flux, variance along y, variance along x) about the centre pixel."""
    size = images.shape[1]
    offsets = np.arange(size) - size // 2
    x = images.astype("float64")
    flux = x.sum(axis=(1, 2))
    var_y = (x.sum(axis=2) * offsets[None, :, None] ** 2).sum(axis=1) / flux
    var_x = (x.sum(axis=1) * offsets[None, :, None] ** 2).sum(axis=1) / flux
    return flux, var_y, var_x


def test_matching_sigma_is_the_quadrature_difference():
    current = np.array([1.0, 2.5, 3.0, 4.0, 4.0], "float32")
    target = np.array([2.0, 2.6, 5.0, 4.0, 3.0], "float32")
    got = np.asarray(matching_sigma(current, target))
    want = np.sqrt(np.maximum(target ** 2 - current ** 2, 0.0)) / 2.354820045
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[3] == 0.0 and got[4] == 0.0  # equal or sharper target: no kernel


def test_kernel_variance_follows_the_quadrature_law():
    # A point source: the output is the kernel itself, band by band. Band 2's
    # sigma (0.42 px) is below a pixel, where the taps get their variance back.
    psf, target = [2.0, 3.0, 4.0], [5.0, 4.5, 4.2]
    out = np.asarray(PSFMatchBlur(psf, [[t, t] for t in target], seed=0)(
        np.pad(np.ones((1, 1, 1, 3), "float32"), [(0, 0), (20, 20), (20, 20), (0, 0)]),
        training=True))
    flux, var_y, var_x = second_moments(out)
    want = (np.sqrt(np.square(target) - np.square(psf)) * FWHM_TO_SIGMA) ** 2
    np.testing.assert_allclose(flux[0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(var_y[0], want, rtol=1e-4)
    np.testing.assert_allclose(var_x[0], want, rtol=1e-4)
    assert (out >= -1e-7).all()  # a positive kernel: blur, never sharpening
    # The correction alone: sampled taps fall short below ~0.9 px, matched ones do not.
    sigma = np.array([0.25, 0.4, 0.6, 0.85, 1.2], "float32")
    taps = np.asarray(variance_matched_taps(sigma, np.ones(5, bool), 6))
    offsets = np.arange(-6, 7)
    np.testing.assert_allclose(taps.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose((taps * offsets ** 2).sum(axis=1), sigma ** 2, rtol=1e-4)


def test_gaussian_source_ends_at_the_target_fwhm():
    psf = [2.4, 3.0, 3.6]  # pixels: sigma 1.0 .. 1.5, well sampled
    source = gaussian_source(49, psf)
    # Fixed targets: the source leaves with exactly the target width.
    target = [4.0, 4.5, 5.5]
    out = np.asarray(PSFMatchBlur(psf, [[t, t] for t in target], seed=0)(
        source, training=True))
    flux, var_y, var_x = second_moments(out[None])
    fwhm = np.sqrt(0.5 * (var_y + var_x))[0] / FWHM_TO_SIGMA
    np.testing.assert_allclose(fwhm, target, rtol=2e-4)
    np.testing.assert_allclose(flux[0], source.sum(axis=(0, 1)), rtol=1e-5)
    # The same in arcsec with a pixel scale.
    scale = 0.263
    out_arcsec = np.asarray(PSFMatchBlur([p * scale for p in psf],
                                         [[t * scale, t * scale] for t in target],
                                         pixel_scale=scale, seed=0)(source, training=True))
    np.testing.assert_allclose(out_arcsec, out, atol=1e-4)
    # Ranges: a target per image; by default one draw sets all bands at the
    # same point of their ranges.
    low, high = [3.0, 3.5, 4.0], [6.0, 5.5, 7.0]
    batch = np.repeat(source[None], 12, axis=0)
    out = np.asarray(PSFMatchBlur(psf, list(zip(low, high)), seed=3)(batch, training=True))
    _, var_y, var_x = second_moments(out)
    fwhm = np.sqrt(0.5 * (var_y + var_x)) / FWHM_TO_SIGMA  # (12, 3)
    where = (fwhm - np.array(low)) / (np.array(high) - np.array(low))
    assert np.all((where > -1e-3) & (where < 1 + 1e-3))
    np.testing.assert_allclose(where, where[:, :1] * np.ones_like(where), atol=1e-3)
    assert len(np.unique(np.round(where[:, 0], 3))) == 12
    out = np.asarray(PSFMatchBlur(psf, list(zip(low, high)), independent_bands=True, seed=3)(
        batch, training=True))
    _, var_y, var_x = second_moments(out)
    where = (np.sqrt(0.5 * (var_y + var_x)) / FWHM_TO_SIGMA - low) / (np.subtract(high, low))
    assert np.all((where > -1e-3) & (where < 1 + 1e-3))
    assert np.abs(where[:, 1:] - where[:, :1]).max() > 0.2


def test_target_not_broader_than_the_psf_leaves_the_band_unchanged():
    rng = np.random.default_rng(0)
    images = rng.normal(0.0, 10.0, size=(5, 16, 16, 3)).astype("float32")
    # All targets at or below the PSF: the layer is the identity.
    out = np.asarray(PSFMatchBlur([3.0, 3.0, 3.0], (2.0, 3.0), seed=0)(images, training=True))
    np.testing.assert_array_equal(out, images)
    # Band 1's range straddles its PSF: unchanged where the target is sharper.
    psf = [2.0, 3.0, 2.5]
    layer = PSFMatchBlur(psf, [[3.0, 4.0], [2.0, 4.0], [1.0, 2.0]], seed=2)
    out = np.asarray(layer(np.repeat(images[:1], 32, axis=0), training=True))
    band_same = np.all(out == images[:1], axis=(1, 2))  # (32, 3)
    assert not band_same[:, 0].any() and band_same[:, 2].all()
    assert 4 < band_same[:, 1].sum() < 28
    out = np.asarray(PSFMatchBlur(psf, [[3, 4], [3, 4], [3, 4]], probability=0.0, seed=0)(
        images, training=True))
    np.testing.assert_array_equal(out, images)


def test_psf_bands_must_match_the_images():
    layer = PSFMatchBlur([1.0, 1.1, 1.2], (1.5, 2.0), seed=0)
    with pytest.raises(ValueError, match="psf_fwhm has 3 value.*images have 1 band"):
        layer(np.zeros((2, 8, 8, 1), "float32"), training=False)
    with pytest.raises(ValueError, match="target_fwhm has 2 value.*3 band"):
        PSFMatchBlur(1.0, [[1, 2], [1, 2]])(keras.Input((8, 8, 3)))
    for bad in ({"psf_fwhm": 0.0, "target_fwhm": 1.0}, {"psf_fwhm": 1.0, "target_fwhm": (2, 1)},
                {"psf_fwhm": 1.0, "target_fwhm": 2.0, "pixel_scale": -1.0},
                {"psf_fwhm": 1.0, "target_fwhm": 2.0, "probability": 2.0}):
        with pytest.raises(ValueError):
            PSFMatchBlur(**bad)


# --- the robust sky estimate and SkyNoiseMatch -----------------------------------------------

def test_sky_std_error_is_stated_and_beats_the_full_mad():
    # The statistic's error on Gaussian sky: 200 images of 64x64 (4,096 pixels).
    rng = np.random.default_rng(1)
    sigma = 2.0
    noise = rng.normal(0.0, sigma, size=(200, 64, 64, 1)).astype("float32")
    ours = np.asarray(sky_std(noise)).ravel() / sigma
    mad = np.asarray(robust_std(noise)).ravel() / sigma
    # Measured: ours bias -0.2 %, scatter 1.2 % (0.78 / sqrt(pixels));
    # the full MAD's scatter 1.8 % (1.17 / sqrt(pixels)).
    assert abs(ours.mean() - 1.0) < 0.005
    assert ours.std() < 0.015 and ours.std() < 0.8 * mad.std()
    assert truncated_std_factor(3.0) == pytest.approx(0.98658, abs=1e-5)
    # A bright lens (a 6 px Gaussian bulge, peak 100 sigma, and a ring): the
    # clipped estimate moves ~11 %, the MAD ~57 %.
    yy, xx = np.mgrid[:64, :64] - 31.5
    r = np.hypot(yy, xx)
    lens = 100 * sigma * np.exp(-0.5 * (r / 6.0) ** 2) + 15 * sigma * np.exp(
        -0.5 * ((r - 14.0) / 1.5) ** 2)
    lensed = noise[:50] + lens[None, :, :, None].astype("float32")
    ours = np.asarray(sky_std(lensed)).ravel() / sigma
    mad = np.asarray(robust_std(lensed)).ravel() / sigma
    assert np.all(np.abs(ours - 1.0) < 0.15) and (ours - 1.0).mean() < 0.5 * (mad - 1.0).mean()
    # Degenerate bands: constant -> 0, never NaN; scale-free.
    flat = np.full((2, 16, 16, 2), 7.0, "float32")
    np.testing.assert_array_equal(np.asarray(sky_std(flat)), 0.0)
    np.testing.assert_allclose(np.asarray(sky_std(noise[:4] * 1000.0)),
                               1000.0 * np.asarray(sky_std(noise[:4])), rtol=1e-5)


def test_relative_gaussian_noise_follows_the_sky_not_the_lens():
    # RandomGaussianNoise(relative=True) scales by sky_std: a bright, wide
    # lens (18 % of the pixels in its faint wings) inflates the level by
    # ~18 %, where the full MAD (the level before) put it ~50 % high.
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:64, :64] - 31.5
    lens = 200.0 * np.exp(-0.5 * (np.hypot(yy, xx) / 6.0) ** 2)
    images = (rng.normal(0.0, 2.0, size=(6, 64, 64, 1)) + lens[..., None]).astype("float32")
    out = np.asarray(RandomGaussianNoise(stddev=(1.0, 1.0), relative=True, seed=0)(
        images, training=True))
    level = (out - images).std(axis=(1, 2, 3)) / 2.0
    mad = np.asarray(robust_std(images)).ravel() / 2.0
    assert np.all(level < 1.25) and np.all(level > 1.0)
    assert np.all(level - 1.0 < 0.5 * (mad - 1.0))


def test_sky_noise_reaches_the_target_per_band_and_never_denoises():
    rng = np.random.default_rng(0)
    current = np.array([1.0, 2.0, 4.0], "float32")
    images = (rng.normal(size=(8, 64, 64, 3)) * current).astype("float32")
    target = [3.0, 5.0, 2.0]  # band 2 is already noisier than its target
    out = np.asarray(SkyNoiseMatch([[t, t] for t in target], seed=0)(images, training=True))
    measured = np.asarray(robust_std(out))[:, 0, 0, :]  # exact MAD, independent of the layer
    np.testing.assert_allclose(measured[:, :2], np.broadcast_to(target[:2], (8, 2)), rtol=0.05)
    np.testing.assert_array_equal(out[..., 2], images[..., 2])  # never denoised
    # Ranges: one draw per image puts every band at the same point of its range.
    # (128 px: the std of 16,384 pixels is within ~0.6 %, ~0.015 of a range here.)
    big = (rng.normal(size=(8, 128, 128, 3)) * current).astype("float32")
    low, high = np.array([2.0, 4.0, 6.0]), np.array([4.0, 8.0, 12.0])
    out = np.asarray(SkyNoiseMatch(list(zip(low, high)), seed=1)(big, training=True))
    where = (out.std(axis=(1, 2)) - low) / (high - low)
    assert np.all((where > -0.05) & (where < 1.05))
    np.testing.assert_allclose(where, where[:, :1] * np.ones_like(where), atol=0.06)
    assert where[:, 0].max() - where[:, 0].min() > 0.3
    # Relative: the target multiplies each band's own sky noise.
    out = np.asarray(SkyNoiseMatch((2.0, 2.0), relative=True, seed=2)(images, training=True))
    ratio = np.asarray(robust_std(out)) / np.asarray(robust_std(images))
    np.testing.assert_allclose(ratio, 2.0, rtol=0.05)
    out = np.asarray(SkyNoiseMatch((0.5, 1.0), relative=True, seed=2)(images, training=True))
    np.testing.assert_array_equal(out, images)
    out = np.asarray(SkyNoiseMatch(10.0, probability=0.0, seed=0)(images, training=True))
    np.testing.assert_array_equal(out, images)


def test_sky_noise_argument_errors():
    with pytest.raises(ValueError, match="target_std has 2 value.*3 band"):
        SkyNoiseMatch([[1, 2], [1, 2]])(np.zeros((1, 8, 8, 3), "float32"), training=True)
    for bad in ({"target_std": -1.0}, {"target_std": (2, 1)}, {"sample": 0},
                {"probability": -0.1}):
        with pytest.raises(ValueError):
            SkyNoiseMatch(**bad)


# --- RandomReddening -------------------------------------------------------------------------

def test_reddening_changes_band_ratios_by_the_extinction_law():
    rng = np.random.default_rng(0)
    images = rng.lognormal(0.0, 1.0, size=(16, 8, 8, 3)).astype("float32")
    images[:, 0, 0] = -3.0  # negative sky stays negative (a multiplication, no clip)
    coefficients = np.array([3.214, 2.165, 1.592])
    out = np.asarray(RandomReddening(ebv=(0.0, 0.3), seed=0)(images, training=True))
    factor = out / images
    # One factor per image and band, the same on every pixel.
    np.testing.assert_allclose(factor, factor[:, :1, :1] * np.ones_like(factor), rtol=1e-5)
    factor = factor[:, 0, 0].astype("float64")  # (16, 3)
    ebv = -2.5 * np.log10(factor[:, 0]) / coefficients[0]  # E(B-V) from g
    assert np.all((ebv >= -1e-6) & (ebv <= 0.3 + 1e-6)) and ebv.std() > 0.05
    np.testing.assert_allclose(factor, 10 ** (-0.4 * ebv[:, None] * coefficients), rtol=1e-5)
    # Colours: g/r and r/i redden by 10^(-0.4 (R_g - R_r) E), 10^(-0.4 (R_r - R_i) E).
    for b in (0, 1):
        colour = (out[..., b] / out[..., b + 1]) / (images[..., b] / images[..., b + 1])
        law = 10 ** (-0.4 * ebv * (coefficients[b] - coefficients[b + 1]))
        np.testing.assert_allclose(colour, np.broadcast_to(law[:, None, None], colour.shape),
                                   rtol=1e-4)
    assert np.all(out[:, 0, 0] < 0)
    np.testing.assert_array_equal(np.asarray(RandomReddening(ebv=0.0, seed=0)(
        images, training=True)), images)
    # The default is the Legacy Surveys' Schlafly & Finkbeiner (2011) DECam g, r, i.
    assert RandomReddening().coefficients == [3.214, 2.165, 1.592]
    # Own coefficients for other bands.
    one = np.asarray(RandomReddening(ebv=(0.1, 0.1), coefficients=[2.0], seed=0)(
        images[..., :1], training=True))
    np.testing.assert_allclose(one, images[..., :1] * 10 ** (-0.4 * 0.2), rtol=1e-5)


def test_reddening_coefficients_must_match_the_bands():
    with pytest.raises(ValueError, match="coefficients has 3 value.*images have 1 band"):
        RandomReddening(seed=0)(np.ones((2, 8, 8, 1), "float32"), training=False)
    with pytest.raises(ValueError, match="coefficients has 3 value.*4 band"):
        RandomReddening()(keras.Input((8, 8, 4)))
    for bad in ({"ebv": -0.1}, {"coefficients": 3.1}, {"coefficients": []},
                {"coefficients": ["g"]}, {"probability": 3}):
        with pytest.raises(ValueError):
            RandomReddening(**bad)

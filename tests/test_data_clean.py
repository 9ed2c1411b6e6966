"""kerasssl.data.clean: the NumPy reference, checked against hand-computed values."""

import numpy as np
import pytest

from kerasssl.data.clean import (
    band_stats,
    nonfinite_report,
    normalize,
    repair_nonfinite,
)
from kerasssl.data.load import load_images
from kerasssl.errors import KerassslError


def _two_band_image():
    # band 0: 1, 2, 4, 10 and a NaN; band 1: 5, 5, 5, Inf, 7 (one image, 5 pixels as 1x5)
    band0 = np.array([1.0, np.nan, 2.0, 4.0, 10.0])
    band1 = np.array([5.0, 5.0, np.inf, 5.0, 7.0])
    return np.stack([band0, band1], axis=-1)[None, None].astype(np.float32)  # (1, 1, 5, 2)


@pytest.mark.parametrize("policy, fill0, fill1", [
    ("zero", 0.0, 0.0),
    ("median", 3.0, 5.0),  # even count: mean of the two middle values (2, 4)
    ("mean", 17.0 / 4, 22.0 / 4),
])
def test_repair_fills_per_image_per_band(policy, fill0, fill1):
    x = _two_band_image()
    original = x.copy()
    out = repair_nonfinite(x, policy)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert out[0, 0, 1, 0] == pytest.approx(fill0)
    assert out[0, 0, 2, 1] == pytest.approx(fill1)
    np.testing.assert_array_equal(out[0, 0, [0, 2, 3, 4], 0], [1, 2, 4, 10])  # finite untouched
    np.testing.assert_array_equal(x, original)  # input not modified


def test_repair_uses_each_images_own_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6, 6, 2)).astype(np.float32) + np.array([0, 100, 200])[:, None, None,
                                                                                   None]
    x[:, 0, 0, :] = np.nan
    out = repair_nonfinite(x, "median")
    for i in range(3):
        for c in range(2):
            assert out[i, 0, 0, c] == pytest.approx(np.nanmedian(x[i, ..., c]), abs=1e-5)
    assert repair_nonfinite(x[0], "mean").shape == (6, 6, 2)  # single image accepted


def test_minmax_and_zscore_per_band():
    rng = np.random.default_rng(1)
    x = rng.uniform(-5, 110, size=(4, 8, 8, 3)).astype(np.float32)
    x[2, ..., 1] = 7.0  # a constant band
    mm = normalize(x, "minmax")
    np.testing.assert_allclose(mm.min(axis=(1, 2))[[0, 1, 3]], 0.0, atol=1e-6)
    np.testing.assert_allclose(mm.max(axis=(1, 2))[[0, 1, 3]], 1.0, atol=1e-6)
    np.testing.assert_array_equal(mm[2, ..., 1], 0.0)
    z = normalize(x, "zscore")
    np.testing.assert_allclose(z.mean(axis=(1, 2)), 0.0, atol=1e-5)
    std = z.std(axis=(1, 2))
    np.testing.assert_allclose(np.delete(std.ravel(), 2 * 3 + 1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(z[2, ..., 1], 0.0)
    np.testing.assert_array_equal(normalize(x, "none"), x)


def test_asinh_is_the_documented_robust_stretch():
    rng = np.random.default_rng(2)
    sky = rng.normal(3.0, 2.0, size=(1, 64, 64, 1))
    sky[0, 30:34, 30:34, 0] += 100.0  # a bright galaxy must not inflate the noise scale
    out = normalize(sky, "asinh", asinh_softening=3.0)
    flat = sky.ravel()
    med = np.median(flat)
    sigma = 1.4826 * np.median(np.abs(flat - med))
    assert sigma == pytest.approx(2.0, rel=0.1)  # robust to the galaxy
    np.testing.assert_allclose(out, np.arcsinh((sky - med) / (3.0 * sigma)), atol=1e-6)
    # Sky noise stays near +-0.3, the galaxy is compressed, not clipped.
    assert np.abs(np.median(out)) < 0.01 and 3.0 < out.max() < 4.5


def test_asinh_falls_back_to_std_when_mad_is_zero():
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 0, :2, 0] = [8.0, -8.0]  # MAD 0 (most pixels equal), std sqrt(128 / 16)
    out = normalize(x, "asinh", asinh_softening=1.0)
    assert out[0, 0, 0, 0] == pytest.approx(np.arcsinh(8.0 / np.sqrt(8.0)), rel=1e-6)
    assert out[0, 1, 1, 0] == 0.0


def test_dataset_normalisation_and_band_stats_nan_aware():
    rng = np.random.default_rng(3)
    x = rng.normal([1.0, 50.0], [2.0, 10.0], size=(7, 5, 5, 2)).astype(np.float32)
    x[1, 2, 2, 0] = np.nan
    x[4, 0, 0, 1] = -np.inf
    stats = band_stats(x, chunk=3)
    masked = np.where(np.isfinite(x), x, np.nan).reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(stats["mean"], np.nanmean(masked, axis=0), rtol=1e-10)
    np.testing.assert_allclose(stats["std"], np.nanstd(masked, axis=0), rtol=1e-10)
    chunked = band_stats(x, chunk=1)
    np.testing.assert_allclose(chunked["mean"] + chunked["std"], stats["mean"] + stats["std"],
                               rtol=1e-12)
    out = normalize(repair_nonfinite(x, "zero"), "dataset", stats)
    np.testing.assert_allclose(out[0], (x[0] - stats["mean"]) / stats["std"], rtol=1e-5)
    assert normalize(x, "dataset", {"mean": [0, 0], "std": [0, 2]})[0, 0, 0, 0] == x[0, 0, 0, 0]
    with pytest.raises(KerassslError, match="needs per-band statistics"):
        normalize(x, "dataset")
    with pytest.raises(KerassslError, match="2 band"):
        normalize(x, "dataset", {"mean": [0], "std": [1]})


def test_unknown_options_are_user_errors():
    x = np.zeros((1, 2, 2, 1))
    with pytest.raises(KerassslError, match="unknown NaN policy 'nearest'"):
        repair_nonfinite(x, "nearest")
    with pytest.raises(KerassslError, match="unknown normalization"):
        normalize(x, "log")


def test_nonfinite_report_counts_pixels_and_files_per_class(hst_folder):
    data = load_images(hst_folder)
    data.images[data.files.index("nl_3_hst.npy"), 0, 0, 0] = np.inf
    report = nonfinite_report(data)
    nan_per_file = np.isnan(data.images).sum(axis=(1, 2, 3))
    assert report["nan_pixels"] == 12 == int(nan_per_file.sum())
    assert report["files_with_nan"] == 4
    assert report["inf_pixels"] == 1 and report["files_with_inf"] == 1
    assert report["files_with_nonfinite"] == 5
    assert "nl_3_hst.npy" in report["nonfinite_files"]
    per = report["per_class"]
    assert per["nonlens"]["n_images"] == 12 and per["lens"]["n_images"] == 24
    lens_nan = int(nan_per_file[data.labels == 1].sum())
    assert per["lens"]["nan_pixels"] == lens_nan
    assert per["nonlens"]["nan_pixels"] + lens_nan == 12
    assert per["nonlens"]["inf_pixels"] == 1

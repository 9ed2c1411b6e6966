"""NumPy reference for NaN/Inf repair, normalisation and statistics.

The model applies the same maths in-graph with
:class:`kerasssl.layers.preprocess.Preprocess` (parity-tested against this
module); here it serves ``inspect``, dataset statistics and baselines.

All statistics are **per image and per band**, over the finite pixels only:
survey bands have their own zero point, sky level and noise, so a joint scale
would be set by the brightest band.

- ``repair_nonfinite``: NaN/Inf pixels -> 0 ("zero"), the median ("median")
  or the mean ("mean") of the band's finite pixels. (np.median semantics: the
  mean of the two middle values for an even count.)
- ``normalize``:
    - ``"none"``: unchanged.
    - ``"minmax"``: (x - min) / (max - min); a constant band becomes 0.
    - ``"zscore"``: (x - mean) / std (population std); a constant band becomes 0.
    - ``"asinh"``: ``arcsinh((x - median) / (softening * sigma))`` with the
      robust noise ``sigma = 1.4826 * MAD`` (median absolute deviation). Raw
      counts (0..110 with negative sky) become roughly linear within
      +-softening sigma of the sky and logarithmic above it, so faint arcs and
      a bright deflector share one scale. With the default softening 3, sky
      noise maps to ~+-0.3 and a 50-sigma peak to ~3.5. If MAD is 0 (over half
      the pixels equal) sigma falls back to the std, then to 1.
    - ``"dataset"``: (x - mean[c]) / std[c] with per-band statistics of the
      training split (:func:`band_stats`); std 0 counts as 1.

Example:
    >>> fixed = repair_nonfinite(data.images, "median")
    >>> x = normalize(fixed, "asinh")
"""

from __future__ import annotations

import numpy as np

from kerasssl.config import NAN_POLICIES, NORMALIZATIONS
from kerasssl.errors import KerassslError

MAD_TO_SIGMA = 1.4826  # sigma of a Gaussian = 1.4826 * its median absolute deviation
DEFAULT_ASINH_SOFTENING = 3.0


def _as_batch(images):
    """(N, H, W, C) float64 view for the maths, and whether to drop the batch axis."""
    x = np.asarray(images)
    if x.ndim == 3:
        return x[None].astype(np.float64), True
    if x.ndim != 4:
        raise KerassslError(f"expected images of shape (N, H, W, C) or (H, W, C), got {x.shape}")
    return x.astype(np.float64), False


def _finish(x, single):
    x = x.astype(np.float32)
    return x[0] if single else x


def _band_pixels(x):
    """(N, C, H*W) so statistics run per image per band along the last axis."""
    n, h, w, c = x.shape
    return np.transpose(x, (0, 3, 1, 2)).reshape(n, c, h * w)


def _masked(x):
    """Pixels with non-finite values replaced by NaN (NaN-aware reductions ignore them)."""
    return np.where(np.isfinite(x), x, np.nan)


def _median_finite(flat):
    """Per image per band median of finite pixels; 0 where a band has none."""
    m = _masked(flat)
    any_finite = np.isfinite(m).any(axis=-1)
    with np.errstate(all="ignore"):
        med = np.nanmedian(np.where(any_finite[..., None], m, 0.0), axis=-1)
    return np.where(any_finite, med, 0.0)


def _mean_finite(flat):
    finite = np.isfinite(flat)
    count = finite.sum(axis=-1)
    total = np.where(finite, flat, 0.0).sum(axis=-1)
    return total / np.maximum(count, 1)


def _std_finite(flat, mean):
    finite = np.isfinite(flat)
    count = finite.sum(axis=-1)
    dev = np.where(finite, flat - mean[..., None], 0.0)
    return np.sqrt((dev * dev).sum(axis=-1) / np.maximum(count, 1))


def _per_band(stat):
    """(N, C) statistic broadcast against (N, H, W, C)."""
    return stat[:, None, None, :]


def repair_nonfinite(images, policy: str = "median") -> np.ndarray:
    """Replace NaN/Inf pixels, per image and band, from that band's finite pixels.

    Args:
        images: (N, H, W, C) or (H, W, C).
        policy: "zero", "median" or "mean". A band without finite pixels is
            filled with 0 (the loader refuses such files).

    Returns:
        float32 array of the same shape; the input is not modified.

    Example:
        >>> repair_nonfinite(np.array([[[1.0], [np.nan]], [[3.0], [5.0]]]), "median")[0, 1, 0]
        3.0
    """
    if policy not in NAN_POLICIES:
        raise KerassslError(
            f"unknown NaN policy {policy!r}; choose one of {', '.join(NAN_POLICIES)}"
        )
    x, single = _as_batch(images)
    finite = np.isfinite(x)
    if policy == "zero":
        fill = np.zeros(x.shape[0:1] + x.shape[3:])
    elif policy == "median":
        fill = _median_finite(_band_pixels(x))
    else:
        fill = _mean_finite(_band_pixels(x))
    out = np.where(finite, x, _per_band(fill))
    return _finish(out, single)


def normalize(images, method: str, stats=None, asinh_softening: float = DEFAULT_ASINH_SOFTENING):
    """Normalise images per image and band (or with dataset statistics).

    Statistics use the finite pixels; non-finite pixels stay non-finite
    (repair first).

    Args:
        images: (N, H, W, C) or (H, W, C).
        method: "none", "minmax", "zscore", "asinh" or "dataset".
        stats: ``{"mean": [C], "std": [C]}`` for "dataset" (from :func:`band_stats`
            on the training split).
        asinh_softening: the asinh stretch is linear within +- this many noise
            sigmas of the sky level.

    Returns:
        float32 array of the same shape.

    Example:
        >>> z = normalize(images, "zscore")
        >>> np.allclose(z.mean(axis=(1, 2)), 0, atol=1e-5)
        True
    """
    if method not in NORMALIZATIONS:
        raise KerassslError(
            f"unknown normalization {method!r}; choose one of {', '.join(NORMALIZATIONS)}"
        )
    x, single = _as_batch(images)
    if method == "none":
        return _finish(x, single)
    if method == "dataset":
        mean, std = _check_stats(stats, x.shape[-1])
        return _finish((x - mean) / std, single)

    flat = _band_pixels(x)
    if method == "minmax":
        m = _masked(flat)
        any_finite = np.isfinite(m).any(axis=-1)
        with np.errstate(all="ignore"):
            lo = np.where(any_finite, np.nanmin(np.where(any_finite[..., None], m, 0), axis=-1), 0)
            hi = np.where(any_finite, np.nanmax(np.where(any_finite[..., None], m, 0), axis=-1), 0)
        span = hi - lo
        scaled = (x - _per_band(lo)) / _per_band(np.where(span > 0, span, 1.0))
        out = np.where(_per_band(span > 0), scaled, np.where(np.isfinite(x), 0.0, x))
        return _finish(out, single)
    if method == "zscore":
        mean = _mean_finite(flat)
        std = _std_finite(flat, mean)
        centred = x - _per_band(mean)
        out = centred / _per_band(np.where(std > 0, std, 1.0))
        return _finish(out, single)
    # asinh
    med = _median_finite(flat)
    mad = _median_finite(np.abs(flat - med[..., None]))
    std = _std_finite(flat, _mean_finite(flat))
    sigma = np.where(mad > 0, MAD_TO_SIGMA * mad, np.where(std > 0, std, 1.0))
    out = np.arcsinh((x - _per_band(med)) / _per_band(asinh_softening * sigma))
    return _finish(out, single)


def _check_stats(stats, channels):
    if not stats or stats.get("mean") is None or stats.get("std") is None:
        raise KerassslError(
            'normalization "dataset" needs per-band statistics {"mean": [...], "std": [...]} '
            "of the training split"
        )
    mean = np.asarray(stats["mean"], dtype=np.float64).reshape(-1)
    std = np.asarray(stats["std"], dtype=np.float64).reshape(-1)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise KerassslError(
            f"dataset statistics have {mean.size} mean / {std.size} std value(s) "
            f"but the images have {channels} band(s)"
        )
    return mean, np.where(std > 0, std, 1.0)


def band_stats(images, chunk: int = 256) -> dict:
    """Per-band mean and std over all finite pixels of all images (NaN/Inf ignored).

    Compute it on the training split only, so validation and test data do not
    leak into the normalisation. Accumulates in float64, ``chunk`` images at a
    time, so large sets need no float64 copy.

    Args:
        images: (N, H, W, C).
        chunk: images per accumulation step.

    Returns:
        ``{"mean": [C floats], "std": [C floats]}`` (population std).

    Example:
        >>> stats = band_stats(data.subset(split.indices(data, "train")).images)
        >>> x = normalize(repair_nonfinite(data.images, "median"), "dataset", stats)
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise KerassslError(f"expected images of shape (N, H, W, C), got {images.shape}")
    c = images.shape[-1]
    count = np.zeros(c)
    total = np.zeros(c)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].astype(np.float64).reshape(-1, c)
        finite = np.isfinite(part)
        count += finite.sum(axis=0)
        total += np.where(finite, part, 0.0).sum(axis=0)
    if np.any(count == 0):
        raise KerassslError("band statistics: a band has no finite pixels")
    mean = total / count
    squares = np.zeros(c)
    for start in range(0, len(images), chunk):  # second pass: no cancellation
        part = images[start:start + chunk].astype(np.float64).reshape(-1, c)
        finite = np.isfinite(part)
        dev = np.where(finite, part - mean, 0.0)
        squares += (dev * dev).sum(axis=0)
    std = np.sqrt(squares / count)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def nonfinite_report(image_set) -> dict:
    """Count NaN and Inf pixels and the files holding them, overall and per class.

    Args:
        image_set: a :class:`kerasssl.data.load.ImageSet`.

    Returns:
        dict with ``nan_pixels``, ``inf_pixels``, ``files_with_nan``,
        ``files_with_inf``, ``files_with_nonfinite`` (counts), ``nonfinite_files``
        (their relative paths) and ``per_class``: class name -> the same counts
        plus ``n_images``.

    Example:
        >>> nonfinite_report(data)["per_class"]["lens"]["files_with_nan"]
        3
    """
    images = image_set.images
    n = len(images)
    axes = tuple(range(1, images.ndim))
    nan_per_file = np.zeros(n, dtype=np.int64)
    inf_per_file = np.zeros(n, dtype=np.int64)
    for start in range(0, n, 256):  # chunked: no (N, H, W, C) boolean copy
        part = images[start:start + 256]
        nan_per_file[start:start + 256] = np.isnan(part).sum(axis=axes)
        inf_per_file[start:start + 256] = np.isinf(part).sum(axis=axes)
    labels = np.asarray(image_set.labels)

    def counts(mask):
        return {
            "nan_pixels": int(nan_per_file[mask].sum()),
            "inf_pixels": int(inf_per_file[mask].sum()),
            "files_with_nan": int((nan_per_file[mask] > 0).sum()),
            "files_with_inf": int((inf_per_file[mask] > 0).sum()),
            "files_with_nonfinite": int(((nan_per_file + inf_per_file)[mask] > 0).sum()),
        }

    report = counts(np.ones(n, dtype=bool))
    bad = np.flatnonzero(nan_per_file + inf_per_file)
    report["nonfinite_files"] = [image_set.files[i] for i in bad]
    report["per_class"] = {
        name: {"n_images": int((labels == k).sum()), **counts(labels == k)}
        for k, name in enumerate(image_set.class_names)
    }
    return report


def finite_range(images, chunk: int = 256):
    """(min, max) over the finite pixels of ``images`` (None, None if there are none).

    Chunked, so no copy of the whole array is made.
    """
    lo, hi = np.inf, -np.inf
    images = np.asarray(images)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        finite = np.isfinite(part)
        if finite.any():
            lo = min(lo, float(part[finite].min()))
            hi = max(hi, float(part[finite].max()))
    return (None, None) if lo > hi else (lo, hi)


def describe(image_set) -> dict:
    """What ``kerasssl inspect`` reports: format, counts, shape, value range, NaN/Inf.

    Args:
        image_set: a :class:`kerasssl.data.load.ImageSet`.

    Returns:
        dict with ``path``, ``format``, ``n_images``, ``classes`` (name -> count),
        ``shape`` ([H, W, C]), ``dtype`` (as stored; comma-joined if mixed),
        ``stored_shapes``, ``channel_layout`` (``axis`` "first" / "last" / None
        for 2-D images, ``reason``, ``setting``), ``min`` / ``max`` (finite pixels), ``band_mean`` /
        ``band_std`` (finite pixels), the :func:`nonfinite_report` counts, and
        ``per_class`` (counts plus min / max per class).

    Example:
        >>> describe(load_images("sim/hst"))["files_with_nan"]
        12
    """
    report = nonfinite_report(image_set)
    lo, hi = finite_range(image_set.images)
    stats = band_stats(image_set.images)
    labels = np.asarray(image_set.labels)
    per_class = report.pop("per_class")
    for k, name in enumerate(image_set.class_names):
        c_lo, c_hi = finite_range(image_set.images[labels == k]) if per_class[name]["n_images"] \
            else (None, None)
        per_class[name].update({"min": c_lo, "max": c_hi})
    meta = getattr(image_set, "meta", None) or {}
    dtypes = meta.get("stored_dtypes") or [str(image_set.images.dtype)]
    return {
        "path": str(image_set.root),
        "format": image_set.format,
        "n_images": int(len(image_set.labels)),
        "classes": {name: per_class[name]["n_images"] for name in image_set.class_names},
        "shape": [int(s) for s in image_set.images.shape[1:]],
        "dtype": ", ".join(dtypes),
        "stored_shapes": meta.get("stored_shapes", []),
        "channel_layout": meta.get("channel_layout"),
        "min": lo,
        "max": hi,
        "value_range": [lo, hi],
        "band_mean": stats["mean"],
        "band_std": stats["std"],
        **report,
        "per_class": per_class,
    }

"""In-graph NaN/Inf repair and normalisation: the first layer of every model.

The model always receives raw pixels; this layer applies exactly the maths of
the NumPy reference :mod:`kerasssl.data.clean` (parity-tested), so training,
``kerasssl predict`` and an exported SavedModel transform inputs identically.
Its settings live in ``RUN/preprocess.json``.

Written with ``keras.ops`` only (TensorFlow and JAX backends). Statistics are
per image and per band over the finite pixels; the median sorts each band
with non-finite pixels replaced by +inf, then averages the two middle values
of the finite ones (NumPy's definition), found from the finite count.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import ops

from kerasssl.config import NAN_POLICIES, NORMALIZATIONS
from kerasssl.data.clean import DEFAULT_ASINH_SOFTENING, MAD_TO_SIGMA, band_stats
from kerasssl.errors import KerassslError
from kerasssl.rundir import read_json, write_json_atomic


def _band_pixels(x):
    """(B, H, W, C) -> (B, C, H*W)."""
    shape = ops.shape(x)
    xt = ops.transpose(x, (0, 3, 1, 2))
    return ops.reshape(xt, (shape[0], shape[3], shape[1] * shape[2]))


def _take(values, index):
    """values[..., index] per row: (R..., N) gathered at (R...) int indices."""
    return ops.take_along_axis(values, ops.expand_dims(index, -1), axis=-1)[..., 0]


def _kth_with_fill(ordered, below, fill, n_fill, k):
    """k-th smallest (0-based) of the finite values plus ``n_fill`` copies of ``fill``.

    ``ordered`` holds each row's finite values sorted, then +inf padding;
    ``below`` is #(finite < fill). The union, sorted, is
    ``ordered[:below], fill x n_fill, ordered[below:count]``, so no second
    sort is needed.
    """
    last = ops.shape(ordered)[-1] - 1
    before = _take(ordered, ops.clip(k, 0, last))
    after = _take(ordered, ops.clip(k - n_fill, 0, last))
    return ops.where(k < below, before, ops.where(k < below + n_fill, fill, after))


def _kth_distances(distance, count, j):
    """The j-th and (j+1)-th smallest (0-based) |x - centre| over the finite values of each row.

    The j+1 values nearest to ``centre`` are a contiguous run of the sorted
    row, so the j-th distance is the min over windows [l, l + j] of the
    larger endpoint distance: elementwise work plus one gather, instead of
    sorting |x - centre|. The windows one longer end one element later, so
    the (j+1)-th comes from the same gather shifted by one: the MAD's two
    middle order statistics cost one pass.

    ``distance`` is ``|ordered - centre|`` for the rows sorted as in
    :func:`_kth_with_fill`; ``count`` their finite values.
    """
    size = ops.shape(distance)[-1]
    end = ops.arange(size, dtype="int32") + ops.expand_dims(j, -1)
    count = ops.expand_dims(count, -1)
    near = distance
    far = ops.take_along_axis(distance, ops.minimum(end, size - 1), axis=-1)
    inf = ops.full_like(near, float("inf"))
    far_next = ops.concatenate([far[..., 1:], inf[..., :1]], axis=-1)
    width = ops.where(end < count, ops.maximum(near, far), inf)
    width_next = ops.where(end + 1 < count, ops.maximum(near, far_next), inf)
    return ops.min(width, axis=-1), ops.min(width_next, axis=-1)


def _median_of_sorted(ordered, count):
    """Median of each row's finite values (mean of the two middle ones); 0 if none."""
    lo = _take(ordered, ops.maximum((count - 1) // 2, 0))
    hi = _take(ordered, ops.maximum(count // 2, 0))
    some = count > 0
    return ops.where(some, 0.5 * lo + 0.5 * hi, ops.zeros_like(lo))


def _mean_finite(flat, finite):
    count = ops.sum(ops.cast(finite, "float32"), axis=-1)
    total = ops.sum(ops.where(finite, flat, ops.zeros_like(flat)), axis=-1)
    return total / ops.maximum(count, 1.0)


def _std_finite(flat, finite, mean):
    count = ops.sum(ops.cast(finite, "float32"), axis=-1)
    dev = ops.where(finite, flat - ops.expand_dims(mean, -1), ops.zeros_like(flat))
    return ops.sqrt(ops.sum(dev * dev, axis=-1) / ops.maximum(count, 1.0))


def _per_band(stat):
    """(B, C) -> (B, 1, 1, C) to broadcast against (B, H, W, C)."""
    return ops.expand_dims(ops.expand_dims(stat, 1), 1)


def _arcsinh(y):
    """arcsinh from log/sqrt: TFLite has no Asinh builtin, so exported models need this.

    sign(y) * log(|y| + sqrt(y^2 + 1)); beyond |y| = 1e18 (where y^2 overflows
    float32) log(2|y|), equal there to float32 precision.
    """
    a = ops.abs(y)
    big = a > 1e18
    safe = ops.where(big, ops.zeros_like(a), a)
    r = ops.where(big, ops.log(a) + 0.6931471805599453, ops.log(safe + ops.sqrt(safe * safe + 1.0)))
    return ops.where(y < 0, -r, r)


def _nonzero_or(value, fallback):
    return ops.where(value > 0, value, fallback)


@keras.saving.register_keras_serializable(package="kerasssl")
class Preprocess(keras.layers.Layer):
    """Repair NaN/Inf pixels and normalise raw images, inside the model.

    Same maths as :mod:`kerasssl.data.clean` (see there for each option):
    NaN/Inf -> zero / per-image-band median / mean, then normalisation
    none / minmax / zscore / asinh (robust per-image-band stretch) / dataset
    (per-band mean and std of the training split). Computes in float32 even
    under a mixed-precision policy (raw counts lose precision in float16) and
    returns the layer's compute dtype. Identical in training and inference.
    Takes a batch ``(B, H, W, C)`` or a single image ``(H, W, C)`` (as in
    ``tf.data.Dataset.map`` before batching), returned with the same rank.

    Args:
        nan_policy: "zero", "median" or "mean".
        normalization: "none", "minmax", "zscore", "asinh" or "dataset".
        mean: per-band means (list of C floats), for "dataset".
        std: per-band standard deviations (list of C floats), for "dataset";
            zeros count as 1.
        asinh_softening: the asinh stretch is linear within +- this many noise
            sigmas of the sky (default 3).
        **kwargs: standard layer arguments (name, dtype, ...).

    Example:
        >>> pre = Preprocess(nan_policy="median", normalization="asinh")
        >>> inputs = keras.Input((64, 64, 3))
        >>> model = keras.Model(inputs, encoder(pre(inputs)))
        >>> pre = Preprocess.from_data_config(cfg.data, stats=band_stats(train_images))
        >>> pre.preprocess_to_json("run/preprocess.json")
        >>> ds = ds.map(pre).batch(32)  # one (H, W, C) image at a time works too
    """

    def __init__(
        self,
        nan_policy="median",
        normalization="asinh",
        mean=None,
        std=None,
        asinh_softening=DEFAULT_ASINH_SOFTENING,
        **kwargs,
    ):
        # Raw counts must reach call() in float32, not autocast to float16.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if nan_policy not in NAN_POLICIES:
            raise KerassslError(
                f"unknown NaN policy {nan_policy!r}; choose one of {', '.join(NAN_POLICIES)}"
            )
        if normalization not in NORMALIZATIONS:
            raise KerassslError(
                f"unknown normalization {normalization!r}; choose one of "
                f"{', '.join(NORMALIZATIONS)}"
            )
        if normalization == "dataset":
            if mean is None or std is None:
                raise KerassslError(
                    'normalization "dataset" needs per-band mean and std of the training split'
                )
            mean = [float(v) for v in _as_list(mean)]
            std = [float(v) for v in _as_list(std)]
            if len(mean) != len(std):
                raise KerassslError(
                    f"dataset statistics: {len(mean)} mean but {len(std)} std value(s)"
                )
        else:
            mean = None if mean is None else [float(v) for v in _as_list(mean)]
            std = None if std is None else [float(v) for v in _as_list(std)]
        if not asinh_softening > 0:
            raise KerassslError(f"asinh_softening must be > 0, got {asinh_softening!r}")
        self.nan_policy = nan_policy
        self.normalization = normalization
        self.mean = mean
        self.std = std
        self.asinh_softening = float(asinh_softening)
        self.supports_masking = False

    def build(self, input_shape):
        channels = input_shape[-1]
        _check_rank(input_shape)
        if self.normalization == "dataset" and channels is not None and channels != len(self.mean):
            raise KerassslError(
                f"dataset statistics have {len(self.mean)} band(s) but the images have {channels}"
            )
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        _check_rank(x.shape)  # build saw the first call's shape only
        if len(x.shape) == 3:
            # One image: the statistics are per image anyway, so a batch of one is exact.
            return ops.squeeze(self.call(ops.expand_dims(x, 0)), 0)
        finite = ops.isfinite(x)
        flat = _band_pixels(x)
        flat_finite = ops.isfinite(flat)
        count = ops.sum(ops.cast(flat_finite, "int32"), axis=-1)  # (B, C)
        # One sort per call at most: the median repair and the asinh median /
        # MAD all come from the sorted finite pixels (order statistics of the
        # repaired band = finite pixels plus the fill value repeated).
        ordered = None
        if self.nan_policy == "median" or self.normalization == "asinh":
            inf = ops.full_like(flat, float("inf"))
            ordered = ops.sort(ops.where(flat_finite, flat, inf), axis=-1)

        if self.nan_policy == "zero":
            fill = ops.zeros(ops.shape(count), dtype="float32")
        elif self.nan_policy == "median":
            fill = _median_of_sorted(ordered, count)
        else:
            fill = _mean_finite(flat, flat_finite)
        x = ops.where(finite, x, _per_band(fill))
        x = self._normalize(x, ordered, count, fill)
        return ops.cast(x, self.compute_dtype)

    def _normalize(self, x, ordered, count, fill):
        method = self.normalization
        if method == "none":
            return x
        if method == "dataset":
            mean = ops.convert_to_tensor(self.mean, dtype="float32")
            std = ops.convert_to_tensor(self.std, dtype="float32")
            return (x - mean) / _nonzero_or(std, ops.ones_like(std))
        flat = _band_pixels(x)  # repaired: all finite
        if method == "minmax":
            lo = ops.min(flat, axis=-1)
            hi = ops.max(flat, axis=-1)
            span = hi - lo
            scaled = (x - _per_band(lo)) / _per_band(_nonzero_or(span, ops.ones_like(span)))
            return ops.where(_per_band(span > 0), scaled, ops.zeros_like(x))
        all_finite = ops.ones_like(flat, dtype="bool")
        mean = _mean_finite(flat, all_finite)
        std = _std_finite(flat, all_finite, mean)
        if method == "zscore":
            return (x - _per_band(mean)) / _per_band(_nonzero_or(std, ops.ones_like(std)))
        # asinh on the repaired band = finite pixels + n_fill copies of fill:
        # its two middle order statistics (equal when the size is odd), then
        # those of the distances to the median, from the one sort.
        total = ops.shape(flat)[-1]
        n_fill = total - count
        k_lo = ops.zeros_like(count) + (total - 1) // 2
        k_hi = ops.zeros_like(count) + total // 2
        below = ops.sum(ops.cast(ordered < ops.expand_dims(fill, -1), "int32"), axis=-1)
        med = 0.5 * _kth_with_fill(ordered, below, fill, n_fill, k_lo) \
            + 0.5 * _kth_with_fill(ordered, below, fill, n_fill, k_hi)
        mad = self._middle_deviation(ordered, count, fill, n_fill, med, k_lo, k_hi)
        sigma = ops.where(mad > 0, MAD_TO_SIGMA * mad, _nonzero_or(std, ops.ones_like(std)))
        return _arcsinh((x - _per_band(med)) / _per_band(self.asinh_softening * sigma))

    @staticmethod
    def _middle_deviation(ordered, count, fill, n_fill, centre, k_lo, k_hi):
        """Mean of the k_lo-th and k_hi-th (= k_lo or k_lo + 1) smallest |x - centre|
        over the finite pixels plus n_fill copies of fill: the repaired band's MAD."""
        fill_dist = ops.abs(fill - centre)
        dist = ops.abs(ordered - ops.expand_dims(centre, -1))
        closer = ops.sum(ops.cast(dist < ops.expand_dims(fill_dist, -1), "int32"), axis=-1)

        def finite_rank(k):  # rank among the finite distances, for k outside the fill's run
            return ops.where(k < closer, k, ops.maximum(k - n_fill, 0))

        def is_fill(k):
            return (k >= closer) & (k < closer + n_fill)

        j_lo, j_hi = finite_rank(k_lo), finite_rank(k_hi)
        at_j, after_j = _kth_distances(dist, count, j_lo)
        # Where both come from the finite pixels, j_hi is j_lo or j_lo + 1.
        lo = ops.where(is_fill(k_lo), fill_dist, at_j)
        hi = ops.where(is_fill(k_hi), fill_dist, ops.where(j_hi == j_lo, at_j, after_j))
        return 0.5 * lo + 0.5 * hi

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "nan_policy": self.nan_policy,
                "normalization": self.normalization,
                "mean": self.mean,
                "std": self.std,
                "asinh_softening": self.asinh_softening,
            }
        )
        return config

    # -- run-directory helpers ---------------------------------------------

    @classmethod
    def from_data_config(cls, cfg, stats=None, **kwargs) -> "Preprocess":
        """A Preprocess for a run's data settings.

        Args:
            cfg: a :class:`kerasssl.config.DataConfig` (or a dict with
                ``nan_policy`` and ``normalization``).
            stats: ``{"mean": [C], "std": [C]}`` from
                :func:`kerasssl.data.clean.band_stats` on the training split;
                required for normalization "dataset", ignored otherwise.
            **kwargs: further layer arguments (name, dtype).

        Example:
            >>> pre = Preprocess.from_data_config(cfg.data, stats)
        """
        get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
        normalization = get("normalization", "asinh")
        mean = std = None
        if normalization == "dataset":
            if not stats:
                raise KerassslError(
                    'normalization "dataset" needs band statistics of the training split'
                )
            mean, std = stats["mean"], stats["std"]
        return cls(
            nan_policy=get("nan_policy", "median"),
            normalization=normalization,
            mean=mean,
            std=std,
            **kwargs,
        )

    def preprocess_to_json(self, path) -> None:
        """Write the settings to ``path`` (e.g. ``RUN/preprocess.json``) atomically."""
        preprocess_to_json(self, path)


def _check_rank(shape):
    if len(shape) not in (3, 4):
        raise KerassslError(
            "Preprocess expects images (B, H, W, C) or one image (H, W, C), "
            f"got shape {tuple(shape)}"
        )


def _as_list(values):
    try:
        return list(values.tolist() if hasattr(values, "tolist") else values)
    except TypeError:
        return [values]


_JSON_KEYS = ("nan_policy", "normalization", "mean", "std", "asinh_softening")


def preprocess_to_json(layer: Preprocess, path) -> None:
    """Save a Preprocess layer's settings as JSON (what ``RUN/preprocess.json`` holds).

    Args:
        layer: the layer.
        path: output file; written via a temporary file so it is never half-written.

    Example:
        >>> preprocess_to_json(pre, run.preprocess)  # run = kerasssl.rundir.RunDir(...)
        >>> load_preprocess(run.preprocess).get_config()["normalization"]
        'asinh'
    """
    config = layer.get_config()
    write_json_atomic(path, {k: config[k] for k in _JSON_KEYS})


def load_preprocess(path, **kwargs) -> Preprocess:
    """Rebuild a Preprocess layer from :func:`preprocess_to_json` output.

    Args:
        path: the JSON file.
        **kwargs: further layer arguments (name, dtype).

    Raises:
        KerassslError: missing or invalid file.
    """
    path = Path(path)
    settings = read_json(path, "preprocess settings")
    if not isinstance(settings, dict):
        raise KerassslError(f"{path}: expected a JSON object of preprocess settings")
    unknown = sorted(set(settings) - set(_JSON_KEYS))
    if unknown:
        raise KerassslError(f"{path}: unknown preprocess setting(s) {unknown}")
    try:
        return Preprocess(**settings, **kwargs)
    except KerassslError as e:
        raise KerassslError(f"{path}: {e}") from None


def load_or_create_preprocess(path, data_cfg=None, train_images=None, *, reuse=True, **kwargs):
    """A run's Preprocess layer: read from ``path`` (``RUN/preprocess.json``), or made anew.

    The one place pretraining and fine-tuning get it. A new layer comes from the
    data config, with the band statistics of ``train_images`` when
    ``data_cfg.normalization`` is "dataset"; it is not saved here (the caller
    saves it once its run is accepted: :func:`preprocess_to_json`).

    Args:
        path: the settings file (``RunDir.preprocess``).
        data_cfg: the run's :class:`kerasssl.config.DataConfig` (needed to make one).
        train_images: the training split's raw images (needed to make one).
        reuse: read an existing file (False: always make a new layer, as a
            fresh pretraining does).
        **kwargs: further layer arguments (name, dtype).

    Returns:
        ``(layer, created)``: ``created`` is True for a new layer, to be saved.

    Raises:
        KerassslError: no file to read and nothing to make one from, or a bad file.

    Example:
        >>> pre, created = load_or_create_preprocess(run.preprocess, cfg.data, x_train)
        >>> if created: preprocess_to_json(pre, run.preprocess)
    """
    path = Path(path)
    if reuse and path.exists():
        return load_preprocess(path, **kwargs), False
    if data_cfg is None or train_images is None:
        raise KerassslError(f"{path}: missing; pretrain first or use --mode supervised")
    stats = band_stats(train_images) if data_cfg.normalization == "dataset" else None
    return Preprocess.from_data_config(data_cfg, stats=stats, **kwargs), True

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

import json
from pathlib import Path

import keras
from keras import ops

from kerasssl.data.clean import (
    DEFAULT_ASINH_SOFTENING,
    MAD_TO_SIGMA,
    NAN_POLICIES,
    NORMALIZATIONS,
)
from kerasssl.errors import KerassslError


def _band_pixels(x):
    """(B, H, W, C) -> (B, C, H*W)."""
    shape = ops.shape(x)
    xt = ops.transpose(x, (0, 3, 1, 2))
    return ops.reshape(xt, (shape[0], shape[3], shape[1] * shape[2]))


def _median_finite(flat, finite):
    """Median of the finite entries along the last axis; 0 where there are none."""
    big = ops.where(finite, flat, ops.full_like(flat, float("inf")))
    ordered = ops.sort(big, axis=-1)
    count = ops.sum(ops.cast(finite, "int32"), axis=-1)
    lo = ops.maximum((count - 1) // 2, 0)
    hi = ops.maximum(count // 2, 0)
    a = ops.take_along_axis(ordered, ops.expand_dims(lo, -1), axis=-1)[..., 0]
    b = ops.take_along_axis(ordered, ops.expand_dims(hi, -1), axis=-1)[..., 0]
    # Guard the all-non-finite band: a and b are +inf there.
    safe = count > 0
    a = ops.where(safe, a, ops.zeros_like(a))
    b = ops.where(safe, b, ops.zeros_like(b))
    return 0.5 * a + 0.5 * b


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
        if len(input_shape) != 4:
            raise KerassslError(
                f"Preprocess expects batches of images (B, H, W, C), got shape {tuple(input_shape)}"
            )
        if self.normalization == "dataset" and channels is not None and channels != len(self.mean):
            raise KerassslError(
                f"dataset statistics have {len(self.mean)} band(s) but the images have {channels}"
            )
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        x = self._repair(x)
        x = self._normalize(x)
        return ops.cast(x, self.compute_dtype)

    def _repair(self, x):
        finite = ops.isfinite(x)
        if self.nan_policy == "zero":
            return ops.where(finite, x, ops.zeros_like(x))
        flat = _band_pixels(x)
        flat_finite = ops.isfinite(flat)
        if self.nan_policy == "median":
            fill = _median_finite(flat, flat_finite)
        else:
            fill = _mean_finite(flat, flat_finite)
        return ops.where(finite, x, _per_band(fill))

    def _normalize(self, x):
        method = self.normalization
        if method == "none":
            return x
        if method == "dataset":
            mean = ops.convert_to_tensor(self.mean, dtype="float32")
            std = ops.convert_to_tensor(self.std, dtype="float32")
            return (x - mean) / _nonzero_or(std, ops.ones_like(std))
        flat = _band_pixels(x)
        finite = ops.isfinite(flat)
        if method == "minmax":
            lo = ops.min(ops.where(finite, flat, ops.full_like(flat, float("inf"))), axis=-1)
            hi = ops.max(ops.where(finite, flat, ops.full_like(flat, float("-inf"))), axis=-1)
            span = hi - lo
            scaled = (x - _per_band(lo)) / _per_band(_nonzero_or(span, ops.ones_like(span)))
            constant = ops.where(ops.isfinite(x), ops.zeros_like(x), x)
            return ops.where(_per_band(span > 0), scaled, constant)
        mean = _mean_finite(flat, finite)
        std = _std_finite(flat, finite, mean)
        if method == "zscore":
            return (x - _per_band(mean)) / _per_band(_nonzero_or(std, ops.ones_like(std)))
        # asinh: robust per-image-band scale, see kerasssl.data.clean.
        med = _median_finite(flat, finite)
        dev = ops.abs(flat - ops.expand_dims(med, -1))
        mad = _median_finite(dev, ops.isfinite(dev))
        sigma = ops.where(mad > 0, MAD_TO_SIGMA * mad, _nonzero_or(std, ops.ones_like(std)))
        return ops.arcsinh((x - _per_band(med)) / _per_band(self.asinh_softening * sigma))

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
        >>> preprocess_to_json(pre, run_dir / "preprocess.json")
        >>> load_preprocess(run_dir / "preprocess.json").get_config()["normalization"]
        'asinh'
    """
    from kerasssl.runinfo import write_json_atomic

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
    try:
        settings = json.loads(path.read_text())
    except FileNotFoundError:
        raise KerassslError(f"{path}: preprocess settings not found") from None
    except (OSError, ValueError) as e:
        raise KerassslError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(settings, dict):
        raise KerassslError(f"{path}: expected a JSON object of preprocess settings")
    unknown = sorted(set(settings) - set(_JSON_KEYS))
    if unknown:
        raise KerassslError(f"{path}: unknown preprocess setting(s) {unknown}")
    try:
        return Preprocess(**settings, **kwargs)
    except KerassslError as e:
        raise KerassslError(f"{path}: {e}") from None

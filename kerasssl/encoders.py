"""Backbones that map preprocessed images (H, W, C) to pooled features (D,).

``build_encoder(name, input_shape, weights=None)`` builds, from
``keras.applications`` with random initialisation (no downloads here, and
ImageNet weights need 3 bands):

- ``efficientnetb0`` .. ``efficientnetb7`` (EfficientNet V1),
- ``efficientnetv2b0`` .. ``efficientnetv2b3``, ``efficientnetv2s``,
- ``resnet50`` (the DeepLense reference baseline),
- ``tiny``: a three-conv network for tests and quick experiments.

Any number of bands works. The encoder sees the data exactly as normalised
by :class:`kerasssl.layers.Preprocess`:

- EfficientNet V1 always starts with ``Rescaling(1/255)`` and a
  ``Normalization`` layer. We build the application and then keep only the
  sub-graph from ``stem_conv_pad`` (the first layer after them) to the pooled
  output: ``keras.Model(app.get_layer("stem_conv_pad").input, app.output)``.
  The two hidden layers are not in the returned model at all (the tests check
  that no ``Rescaling``/``Normalization`` layer remains).
- EfficientNet V2 is built with ``include_preprocessing=False``.
- ResNet50 from ``keras.applications`` has no in-model preprocessing.

The applications need at least 32 pixels a side (five stride-2 stages);
smaller inputs get a clear error (use ``tiny``).

Every name is an entry of :data:`ENCODERS`; a user's own backbone joins with
``@register_encoder("name")`` on a function ``input_shape -> keras.Model``
(then ``--encoder name`` and ``pretrain.encoder: name`` accept it).

Example:
    >>> enc = build_encoder("efficientnetb0", (64, 64, 3))
    >>> enc.output_shape
    (None, 1280)
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import keras

from kerasssl.errors import DataError, KerassslError
from kerasssl.registry import Registry

log = logging.getLogger(__name__)

_V1 = {f"efficientnetb{i}": f"EfficientNetB{i}" for i in range(8)}
_V2 = {f"efficientnetv2b{i}": f"EfficientNetV2B{i}" for i in range(4)}
_V2["efficientnetv2s"] = "EfficientNetV2S"
_APPLICATION_MIN_SIZE = 32

#: Encoder name -> builder ``fn(input_shape) -> keras.Model`` (H, W, C) -> (D,).
ENCODERS = Registry("encoder")


def register_encoder(name):
    """Decorator: register a builder ``fn(input_shape) -> keras.Model`` as encoder ``name``.

    Example:
        >>> @register_encoder("small_cnn")
        ... def small_cnn(input_shape):
        ...     inputs = keras.Input(input_shape)
        ...     return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(
        ...         keras.layers.Conv2D(32, 3)(inputs)), name="small_cnn")
    """
    return ENCODERS.register(name)


def available():
    """Names accepted by :func:`build_encoder`, sorted."""
    return ENCODERS.names()


def build_encoder(name, input_shape, weights=None):
    """Build a randomly initialised backbone (optionally load a weights file).

    Args:
        name: one of :func:`available` (case-insensitive).
        input_shape: (H, W, C) of the preprocessed images, any C >= 1.
        weights: None, or the path of a user's weights file: a ``.weights.h5``
            saved with ``encoder.save_weights`` or a ``.keras`` encoder saved by
            ``kerasssl pretrain`` (RUN/encoder.keras). Shapes must match.

    Returns:
        A functional ``keras.Model`` named ``name`` mapping (H, W, C) to (D,).

    Example:
        >>> enc = build_encoder("tiny", (32, 32, 1))
        >>> enc(np.zeros((2, 32, 32, 1))).shape
        (2, 64)
    """
    builder = ENCODERS.get(name)
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise KerassslError(f"encoder input_shape must be (H, W, C), got {input_shape}")
    model = builder(input_shape)
    if weights:
        load_encoder_weights(model, weights)
    return model


def _application(key, input_shape):
    h, w, c = input_shape
    if min(h, w) < _APPLICATION_MIN_SIZE:
        # Five stride-2 stages: smaller inputs shrink to nothing.
        raise KerassslError(
            f"encoder {key!r} needs images of at least {_APPLICATION_MIN_SIZE} pixels a side, "
            f"got {h}x{w}; use a larger --image-size or the 'tiny' encoder"
        )
    common = dict(include_top=False, weights=None, input_shape=input_shape, pooling="avg")
    if key in _V1:
        app = getattr(keras.applications, _V1[key])(**common)
        # Drop the hidden Rescaling(1/255) + Normalization: start at the stem.
        return keras.Model(app.get_layer("stem_conv_pad").input, app.output, name=key)
    if key in _V2:
        # V2 looks up its block layout by its default name: rename afterwards.
        model = getattr(keras.applications, _V2[key])(include_preprocessing=False, **common)
        model.name = key
        return model
    return keras.applications.ResNet50(name=key, **common)


def _register_applications():
    for key in (*_V1, *_V2, "resnet50"):
        register_encoder(key)(functools.partial(_application, key))


_register_applications()


@register_encoder("tiny")
def _tiny(input_shape):
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, filters in enumerate((16, 32, 64)):
        x = keras.layers.Conv2D(filters, 3, strides=2 if i < 2 else 1, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"relu{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name="tiny")


def load_encoder_weights(model, path):
    """Load a user's weights into ``model``; a clear DataError when they do not fit.

    Args:
        model: the freshly built encoder.
        path: ``.weights.h5`` or ``.keras`` file.

    Example:
        >>> load_encoder_weights(build_encoder("tiny", (32, 32, 3)), "run/encoder.keras")
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "encoder weights file not found")
    if path.name.endswith(".keras"):
        try:
            source = keras.saving.load_model(path, compile=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise DataError(path, f"cannot read as a Keras model ({type(e).__name__})") from None
        src = source.get_weights()
        dst = model.weights
        if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
            raise DataError(
                path,
                f"weights do not fit encoder {model.name!r} with input {model.input_shape[1:]} "
                f"({len(src)} arrays in file, {len(dst)} in the encoder, or shapes differ)",
            )
        model.set_weights(src)
        return model
    if not path.name.endswith(".h5"):
        raise DataError(path, "encoder weights must be a .weights.h5 or .keras file")
    try:
        model.load_weights(path)
    except Exception as e:  # noqa: BLE001 - shape/layout mismatch or unreadable file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            path, f"weights do not fit encoder {model.name!r} with input {model.input_shape[1:]}: {first}"
        ) from None
    return model

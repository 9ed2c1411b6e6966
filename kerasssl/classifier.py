"""The lens classifier and its parts, found by structure.

One Keras model, raw pixels in, softmax out::

    image (H, W, C) -> preprocess -> [augment] -> encoder -> [feature_norm] -> head

- ``preprocess``: the :class:`kerasssl.layers.Preprocess` layer (NaN repair,
  normalisation), so every consumer sends the ``.npy`` contents as they are;
- ``augment``: light augmentation, identity at inference (None when off);
- ``encoder``: the backbone, (H, W, C) -> (D,) features;
- ``feature_norm``: a fixed standardisation of the features (None when off);
- ``head``: the ``Dense`` softmax.

:class:`LensClassifier` keeps these parts as attributes and saves them in its
config (as keras-hub tasks keep ``backbone`` and ``preprocessor``), so a
reloaded classifier has them too. :func:`classifier_parts` gives the parts of
any classifier: a LensClassifier's own, or, for a plain functional model (files
saved before LensClassifier, or built by hand), the parts read off its layer
graph: the Preprocess layer by class, the head as the layer that makes the
output, the encoder as the last nested model before the head. Export (the
SavedModel's ``embed`` signature, the metadata), predict and evaluate use them.

Example:
    >>> clf = build_classifier(build_encoder("tiny", (32, 32, 3)), Preprocess(), 2,
    ...                        input_shape=(32, 32, 3), mode="supervised")
    >>> parts = classifier_parts(clf)
    >>> parts.features(images).shape   # the encoder's own features
    (8, 64)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import keras

from kerasssl.batchnorm import freeze_batch_norm
from kerasssl.config import FINETUNE_MODES
from kerasssl.errors import DataError, KerassslError
from kerasssl.layers.preprocess import Preprocess
from kerasssl.rundir import CLASSIFIER
PART_NAMES = ("preprocess", "augment", "encoder", "feature_norm", "head")


@keras.saving.register_keras_serializable(package="kerasssl")
class LensClassifier(keras.Model):
    """Functional classifier ``preprocess -> [augment] -> encoder -> [feature_norm] -> head``.

    Build it with :func:`build_classifier` (which also sets what trains per
    fine-tuning mode). The parts are attributes of the same names.

    Args:
        preprocess: a ``kerasssl.layers.Preprocess`` layer (raw pixels in).
        encoder: Keras model (H, W, C) -> (D,) features.
        head: the output layer, features -> class probabilities.
        image_shape: (H, W, C) of the raw images.
        augment: optional layer applied in training only (identity at inference).
        feature_norm: optional fixed layer standardising the features.
        **kwargs: ``keras.Model`` arguments (``name``, ``trainable``).

    Example:
        >>> head = keras.layers.Dense(2, activation="softmax", name="head")
        >>> clf = LensClassifier(Preprocess(), build_encoder("tiny", (16, 16, 1)), head,
        ...                      image_shape=(16, 16, 1))
        >>> clf.encoder.name
        'tiny'
    """

    def __init__(self, preprocess, encoder, head, image_shape, augment=None, feature_norm=None, **kwargs):
        inputs = keras.Input(shape=tuple(image_shape), name="image")
        x = preprocess(inputs)
        if augment is not None:
            x = augment(x)
        features = encoder(x)
        if feature_norm is not None:
            features = feature_norm(features)
        super().__init__(inputs, head(features), **kwargs)
        self.preprocess = preprocess
        self.augment = augment
        self.encoder = encoder
        self.feature_norm = feature_norm
        self.head = head
        self.image_shape = tuple(int(d) for d in image_shape)

    def get_config(self):
        def serialize(layer):
            return None if layer is None else keras.saving.serialize_keras_object(layer)

        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_shape": list(self.image_shape),
            **{part: serialize(getattr(self, part)) for part in PART_NAMES},
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for part in PART_NAMES:
            if config.get(part) is not None:
                config[part] = keras.saving.deserialize_keras_object(config[part])
        return cls(**config)


def build_classifier(encoder, preprocess, n_classes: int, *, input_shape, mode: str = "linear",
                     augmentation=None, feature_stats=None, name: str = "classifier") -> LensClassifier:
    """Preprocess -> [augmentation] -> encoder -> softmax head, as one :class:`LensClassifier`.

    Args:
        encoder: Keras model (H, W, C) -> (D,) features.
        preprocess: a ``kerasssl.layers.Preprocess`` layer (raw pixels in).
        n_classes: number of classes (2 for lens / non-lens).
        input_shape: (H, W, C) of the raw images.
        mode: "linear" freezes the encoder (BatchNorm in inference mode);
            "full" trains it with BatchNorm statistics fixed
            (:func:`freeze_batch_norm`); "supervised" trains everything.
        augmentation: optional layer applied in training only (identity at inference).
        feature_stats: optional ``(mean, variance)`` of the encoder's features on
            the training images: a fixed ``Normalization`` layer then standardises
            the features before the head (see ``kerasssl.finetune.feature_statistics``).
        name: model name.

    Example:
        >>> clf = build_classifier(build_encoder("tiny", (32, 32, 3)), Preprocess(), 2,
        ...                        input_shape=(32, 32, 3), mode="supervised")
        >>> clf(np.zeros((1, 32, 32, 3))).shape
        (1, 2)
    """
    if mode not in FINETUNE_MODES:
        raise KerassslError(f"unknown fine-tune mode {mode!r}; choose from {', '.join(FINETUNE_MODES)}")
    encoder.trainable = mode != "linear"
    if mode == "full":
        freeze_batch_norm(encoder)
    feature_norm = None
    if feature_stats is not None:
        mean, variance = feature_stats
        # float32 like the head: under a mixed policy the encoder's features are cast up here.
        feature_norm = keras.layers.Normalization(mean=mean, variance=variance, dtype="float32",
                                                  name="feature_norm")
    head = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="head")
    return LensClassifier(preprocess, encoder, head, image_shape=input_shape, augment=augmentation,
                          feature_norm=feature_norm, name=name)


# -- the parts of any classifier ----------------------------------------------------


@dataclass
class ClassifierParts:
    """The parts of a classifier (None where it has none).

    Args:
        model: the whole classifier (raw pixels in, probabilities out).
        preprocess / augment / encoder / feature_norm / head: see the module
            docstring. ``augment`` is None for a hand-built model whose
            augmentation is several layers (all identity at inference).
        image_shape: (H, W, C) of one input image.
    """

    model: object
    preprocess: Optional[object]
    augment: Optional[object]
    encoder: Optional[object]
    feature_norm: Optional[object]
    head: object
    image_shape: tuple

    @property
    def n_classes(self) -> int:
        return int(self.model.outputs[0].shape[-1])

    @property
    def features(self) -> Optional[Callable]:
        """images -> the encoder's own features (inference mode; before ``feature_norm``), or None.

        A model without a nested encoder gives the head's input instead.
        """
        if self.encoder is None:
            return self._head_input()
        preprocess, augment, encoder = self.preprocess, self.augment, self.encoder

        def features(images):
            x = images if preprocess is None else preprocess(images, training=False)
            if augment is not None:
                x = augment(x, training=False)
            return encoder(x, training=False)

        return features

    def _head_input(self):
        try:
            sub = keras.Model(self.model.inputs, self.head.input)
        except (ValueError, AttributeError):  # the head is not on one path from the input
            return None
        return lambda images: sub(images, training=False)


def classifier_parts(model) -> ClassifierParts:
    """The parts of a classifier: a :class:`LensClassifier`'s own, else found in its layer graph."""
    image_shape = image_shape_of(model)
    if isinstance(model, LensClassifier):
        return ClassifierParts(model, model.preprocess, model.augment, model.encoder, model.feature_norm,
                               model.head, image_shape)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not layers:
        raise KerassslError(f"model {model.name!r} has no layers")
    head = next((layer for layer in layers if _makes(layer, model.outputs[0])), layers[-1])
    before_head = layers[: layers.index(head)]
    preprocess = next((layer for layer in before_head if isinstance(layer, Preprocess)), None)
    start = before_head.index(preprocess) + 1 if preprocess is not None else 0
    nested = [layer for layer in before_head[start:] if isinstance(layer, keras.Model)]
    encoder = nested[-1] if nested else None
    augment = feature_norm = None
    if encoder is not None:
        between = before_head[start : before_head.index(encoder)]
        augment = between[0] if len(between) == 1 else None
        after = before_head[before_head.index(encoder) + 1 :]
        feature_norm = next((layer for layer in after if isinstance(layer, keras.layers.Normalization)), None)
    return ClassifierParts(model, preprocess, augment, encoder, feature_norm, head, image_shape)


def _makes(layer, tensor):
    try:
        return layer.output is tensor
    except (AttributeError, ValueError):  # a layer never called, or called more than once
        return False


def image_shape_of(model):
    """(H, W, C) of the model's input; all three must be known."""
    shape = tuple(model.inputs[0].shape)[1:] if getattr(model, "inputs", None) else None
    if shape is None or len(shape) != 3 or any(d is None for d in shape):
        raise KerassslError(
            f"the model's input shape {shape} is not (H, W, C) with known sizes; "
            "build it with keras.Input((H, W, C))"
        )
    return tuple(int(d) for d in shape)


def looks_like_encoder(model) -> bool:
    """True for a backbone (what ``kerasssl pretrain`` saves): no Preprocess, no softmax output.

    Every classifier kerasssl makes takes raw pixels (a Preprocess layer first)
    and ends in a softmax; an encoder takes preprocessed images and gives features.
    """
    if isinstance(model, LensClassifier):
        return False
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    has_preprocess = any(isinstance(layer, Preprocess) for layer in layers)
    last = layers[-1] if layers else None
    softmax = getattr(last, "activation", None) is keras.activations.softmax or isinstance(last, keras.layers.Softmax)
    return not has_preprocess and not softmax


def check_classifier(model, path=None):
    """Refuse an encoder where a classifier is needed, naming the file to use instead."""
    if not looks_like_encoder(model):
        return
    where = Path(path) if path is not None else None
    n_features = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else "?"
    instead = f"the run's {CLASSIFIER} (made by `kerasssl finetune` or `kerasssl fit`)"
    if where is not None and (where.parent / CLASSIFIER).exists() and where.name != CLASSIFIER:
        instead = f"{where.parent / CLASSIFIER} (made by `kerasssl finetune`)"
    problem = (f"is an encoder ({n_features} features per image, as `kerasssl pretrain` saves it), "
               f"not a classifier; use {instead}")
    if where is None:
        raise KerassslError(f"model {model.name!r} {problem}")
    raise DataError(where, problem)

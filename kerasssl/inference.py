"""A loaded model as batch functions for survey runs: raw images -> probabilities and/or features.

Every form goes through the one loader (:mod:`kerasssl.models`):

- a ``.keras`` classifier: probabilities = the model, features = the encoder's
  own features (:func:`kerasssl.classifier.classifier_parts`, the same as the
  SavedModel's ``embed``), both from one traced call (TF backend);
- a ``.keras`` encoder (what ``pretrain`` saves) with the run's
  ``preprocess.json`` beside it: features only;
- a SavedModel (version dir, or ``BASE/NAME`` -> its latest version):
  ``serving_default`` and ``embed``;
- a ``.tflite``: probabilities only.

:func:`model_fingerprint` is the sha256 of the model's bytes (a SavedModel:
of every file in its version dir, with their relative paths): an index
records it, ``similar`` and ``scan --resume`` check it.

Example:
    >>> model = load_survey_model("run/classifier.keras")
    >>> probabilities, features = model.run(images, probabilities=True, features=True)
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from kerasssl.errors import DataError, KerassslError
from kerasssl.models import load_model, load_saved_model, load_tflite, model_kind, resolve_saved_model_dir

log = logging.getLogger(__name__)


def model_fingerprint(path) -> str:
    """sha256 of a model file, or of a SavedModel version dir (relative paths + bytes, sorted).

    A SavedModel ``BASE/NAME`` resolves to its latest version first.

    Example:
        >>> model_fingerprint("run/classifier.keras")[:12]
        '3f1c0b9e6a2d'
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        path = resolve_saved_model_dir(path)
        files = sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
            _hash_file(digest, f)
            digest.update(b"\0")
    elif path.is_file():
        _hash_file(digest, path)
    else:
        raise DataError(path, "model not found")
    return digest.hexdigest()


def _hash_file(digest, path):
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


@dataclass
class SurveyModel:
    """A model for survey runs.

    Args:
        kind: "keras", "saved_model" or "tflite".
        path: the model as loaded (a SavedModel's version dir).
        image_shape: (H, W, C) of one raw input image.
        class_names: class names in label order (None for an encoder).
        probabilities_fn / features_fn / both_fn: batch functions (a tf or
            NumPy float32 [n, H, W, C] in, NumPy out), None where the model has
            no such output.
    """

    kind: str
    path: Path
    image_shape: tuple
    class_names: Optional[list]
    probabilities_fn: Optional[Callable] = None
    features_fn: Optional[Callable] = None
    both_fn: Optional[Callable] = None
    missing: Optional[dict] = None

    @property
    def has_probabilities(self) -> bool:
        return self.probabilities_fn is not None

    @property
    def has_features(self) -> bool:
        return self.features_fn is not None

    def fingerprint(self) -> str:
        return model_fingerprint(self.path)

    def run(self, images, *, probabilities=True, features=False):
        """``(probabilities or None, features or None)`` for one batch, as float32 NumPy."""
        if len(images) == 0:
            return (np.zeros((0, len(self.class_names or [])), np.float32) if probabilities else None,
                    np.zeros((0, 0), np.float32) if features else None)
        if probabilities and features:
            if self.both_fn is not None:
                p, f = self.both_fn(images)
                return _np(p), _np(f)
            return _np(self.probabilities_fn(images)), _np(self.features_fn(images))
        if probabilities:
            return _np(self.probabilities_fn(images)), None
        return None, _np(self.features_fn(images))

    def predict(self, images, batch_size=64) -> np.ndarray:
        """Probabilities for any number of images, ``batch_size`` per model call.

        Example:
            >>> load_survey_model("run/classifier.keras").predict(images).shape
            (1000, 2)
        """
        self.require(probabilities=True)
        images = np.asarray(images, dtype=np.float32)
        out = [self.run(images[i : i + batch_size])[0] for i in range(0, len(images), batch_size)]
        return np.concatenate(out, axis=0) if out else np.zeros((0, len(self.class_names or [])), np.float32)

    def require(self, *, probabilities=False, features=False, why=""):
        """Refuse, in one line, a model without the output a command needs."""
        missing = self.missing or {}
        if probabilities and not self.has_probabilities:
            raise DataError(self.path, missing.get("probabilities", "gives no probabilities") + why)
        if features and not self.has_features:
            what = {"tflite": "a .tflite model has no features output (use the .keras or the SavedModel)",
                    "saved_model": "this SavedModel has no 'embed' signature"}.get(self.kind, "no encoder found in it")
            raise DataError(self.path, missing.get("features", what) + why)


def _np(x):
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)


def load_survey_model(path) -> SurveyModel:
    """Load a ``.keras`` classifier or encoder, a SavedModel or a ``.tflite`` for survey runs."""
    kind = model_kind(path)
    path = Path(path)
    if kind == "saved_model":
        return _saved_model(path)
    if kind == "tflite":
        return _tflite(path)
    return _keras(path)


def _traced(fn, image_shape):
    """``fn`` as one tf.function over any batch size (TF backend), else as it is."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf

    return tf.function(fn, input_signature=[tf.TensorSpec([None, *image_shape], tf.float32)],
                       reduce_retracing=True)


def _keras(path):
    from kerasssl.classifier import LensClassifier, classifier_parts, image_shape_of, looks_like_encoder
    from kerasssl.export import class_names_for
    from kerasssl.rundir import RunDir

    model = load_model(path)
    if looks_like_encoder(model):
        return _encoder(path, model, image_shape_of(model), RunDir.of_file(path))
    parts = classifier_parts(model)
    shape = parts.image_shape
    names = class_names_for(model, RunDir.of_file(path))
    features = parts.features
    probabilities = _traced(lambda x: model(x, training=False), shape)
    both = None
    if features is not None:
        if isinstance(model, LensClassifier):
            # The classifier's own graph after the encoder: one encoder pass for both outputs.
            def both_outputs(x):
                f = features(x)
                z = f if model.feature_norm is None else model.feature_norm(f, training=False)
                return model.head(z, training=False), f
        else:
            def both_outputs(x):
                return model(x, training=False), features(x)
        both = _traced(both_outputs, shape)
        features = _traced(features, shape)
    return SurveyModel("keras", path, shape, names, probabilities, features, both)


def _encoder(path, encoder, shape, run_dir):
    """A pretrained encoder: features = encoder(preprocess(x)) with the run's preprocess.json; no probabilities."""
    from kerasssl.classifier import check_classifier
    from kerasssl.layers.preprocess import load_preprocess

    missing = {"probabilities": "is an encoder, not a classifier"}
    try:
        check_classifier(encoder, path)
    except DataError as e:  # names the classifier to use instead, as `predict` does
        missing["probabilities"] = e.problem
    from kerasssl.rundir import RunDir

    candidates = [RunDir(Path(path).parent).preprocess] + ([RunDir(run_dir).preprocess] if run_dir else [])
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        missing["features"] = ("is an encoder without the run's preprocess.json beside it (the model "
                               "needs raw pixels repaired and normalised as in training)")
        return SurveyModel("keras", path, shape, None, missing=missing)
    preprocess = load_preprocess(found)

    def features(x):
        return encoder(preprocess(x, training=False), training=False)

    return SurveyModel("keras", path, shape, None, None, _traced(features, shape), None, missing)


def _saved_model(path):
    import tensorflow as tf

    version_dir, loaded = load_saved_model(path)
    signatures = getattr(loaded, "signatures", {}) or {}
    serve = signatures.get("serving_default")
    spec = serve.structured_input_signature[1].get("images") if serve is not None else None
    if spec is None or "probabilities" not in serve.structured_outputs:
        raise DataError(version_dir, "serving_default is not images -> probabilities (not a kerasssl export?)")
    shape = tuple(int(d) for d in spec.shape[1:])
    names = _class_names(version_dir, int(serve.structured_outputs["probabilities"].shape[-1]))
    embed = signatures.get("embed")

    def probabilities(x):
        # `loaded` stays referenced: the signatures need its variables alive
        return loaded.signatures["serving_default"](images=tf.convert_to_tensor(x, tf.float32))["probabilities"]

    features = None
    if embed is not None:
        def features(x):
            return loaded.signatures["embed"](images=tf.convert_to_tensor(x, tf.float32))["embeddings"]

    return SurveyModel("saved_model", version_dir, shape, names, probabilities, features, None)


def _tflite(path):
    runner = load_tflite(path)
    # a .tflite written by `kerasssl export` sits in the version dir, beside assets/
    names = _class_names(path.parent, int(runner._output["shape"][-1]))

    def probabilities(x):
        x = np.asarray(x.numpy() if hasattr(x, "numpy") else x, np.float32)
        return runner.predict(x, batch_size=max(1, len(x)))

    return SurveyModel("tflite", path, tuple(runner.image_shape), names, probabilities, None, None)


def _class_names(version_dir, n_classes) -> list:
    """The export's class names (its metadata), else kerasssl's defaults for ``n_classes``."""
    from kerasssl.export import default_class_names, read_metadata

    names = (read_metadata(version_dir) or {}).get("class_names")
    return list(names) if names else default_class_names(n_classes)


def lens_column(class_names, lens_class=None) -> int:
    """Which probability column is the lens class.

    Binary models: column 1 (kerasssl's convention). Multi-class: ``lens_class``
    by name, else the one class called lens/lenses.

    Example:
        >>> lens_column(["nonlenses", "lenses"]), lens_column(["cdm", "lens", "star"])
        (1, 1)
    """
    names = list(class_names)
    if lens_class is not None:
        if lens_class not in names:
            raise KerassslError(f"--lens-class {lens_class!r} is not one of the model's classes {names}")
        return names.index(lens_class)
    if len(names) == 2:
        return 1
    lensy = [i for i, n in enumerate(names) if n.lower() in ("lens", "lenses")]
    if len(lensy) == 1:
        return lensy[0]
    raise KerassslError(f"the model has {len(names)} classes {names}: say which is the lens class with --lens-class")


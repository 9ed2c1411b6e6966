"""Lens probabilities for image files with any exported form of a classifier.

A model is one of: a ``.keras`` classifier, a SavedModel directory (a version
directory, or its parent ``BASE/NAME`` -> the highest version), or a ``.tflite``
file. All three take raw pixels (N, H, W, C) and return softmax probabilities,
so files are read exactly as the loader reads them: ``read_array`` -> ``to_hwc``
-> centre-crop to the model's input size (never padded), NaN kept (the model
repairs it in-graph).

Example:
    >>> result = predict_files("saved_models/lens_finder", ["hst/"])
    >>> print(format_table(result))
    file               p(lens)
    hst/0_hst.npy       0.9731
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from kerasssl.errors import DataError, KerassslError
from kerasssl.models import load_model, load_saved_model, load_tflite, model_kind
from kerasssl.models import resolve_saved_model_dir  # noqa: F401 - part of this module's API

log = logging.getLogger(__name__)


# -- models ----------------------------------------------------------------------


@dataclass
class Predictor:
    """A loaded model of any kind, as a function raw images -> probabilities.

    Args:
        kind: "keras", "saved_model" or "tflite".
        path: what was loaded (a SavedModel parent resolves to its version dir).
        image_shape: (H, W, C) of one input image.
        class_names: class names in label order.
        run: callable (N, H, W, C) float32 -> (N, K) probabilities.
    """

    kind: str
    path: Path
    image_shape: tuple
    class_names: list
    run: object

    def predict(self, images, batch_size=64):
        images = np.asarray(images, dtype=np.float32)
        out = [np.asarray(self.run(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(out, axis=0) if out else np.zeros((0, len(self.class_names)), np.float32)


def load_predictor(path):
    """Load a ``.keras`` file, a SavedModel (version dir or its parent) or a ``.tflite``."""
    kind = model_kind(path)
    path = Path(path)
    if kind == "saved_model":
        return _saved_model_predictor(path)
    if kind == "tflite":
        return _tflite_predictor(path)
    return _keras_predictor(path)


def _keras_predictor(path):
    from kerasssl.classifier import check_classifier, classifier_parts
    from kerasssl.export import class_names_for
    from kerasssl.rundir import RunDir

    model = load_model(path)
    check_classifier(model, path)
    parts = classifier_parts(model)
    names = class_names_for(model, RunDir.of_file(path))
    return Predictor("keras", path, parts.image_shape, names, lambda x: model(x, training=False))


def _saved_model_predictor(path):
    import tensorflow as tf

    from kerasssl.export import read_metadata

    version_dir, loaded = load_saved_model(path)
    serve = loaded.signatures.get("serving_default") if hasattr(loaded, "signatures") else None
    spec = serve.structured_input_signature[1].get("images") if serve is not None else None
    if spec is None or "probabilities" not in serve.structured_outputs:
        raise DataError(version_dir, "serving_default is not images -> probabilities (not a kerasssl export?)")
    image_shape = tuple(int(d) for d in spec.shape[1:])
    metadata = read_metadata(version_dir) or {}
    n_classes = int(serve.structured_outputs["probabilities"].shape[-1])
    names = metadata.get("class_names") or _default_names(n_classes)

    def run(images):
        # keep a reference to `loaded`: the signature needs its variables alive
        return loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()

    return Predictor("saved_model", version_dir, image_shape, list(names), run)


def _tflite_predictor(path):
    from kerasssl.export import read_metadata

    runner = load_tflite(path)
    # A .tflite written by `kerasssl export` sits in the version dir beside assets/.
    metadata = read_metadata(path.parent) or {}
    n_classes = int(runner._output["shape"][-1])
    names = metadata.get("class_names") or _default_names(n_classes)
    return Predictor("tflite", path, runner.image_shape, list(names), runner.predict)


def _default_names(n_classes):
    return ["nonlens", "lens"] if n_classes == 2 else [f"class_{i}" for i in range(n_classes)]


# -- inputs ----------------------------------------------------------------------


def list_input_files(paths):
    """Image files named directly or found (recursively, sorted) in folders."""
    from kerasssl.data.load import FITS_SUFFIXES, NPY_SUFFIXES

    suffixes = NPY_SUFFIXES + FITS_SUFFIXES
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(suffixes)
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found:
                raise DataError(p, "no .npy or FITS images in this folder")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise DataError(p, "file not found")
    return files


def read_image(path, image_shape, allow_pickle=False, channel_axis="auto"):
    """One file as the model's raw input (H, W, C): read, to (H, W, C), centre-crop."""
    from kerasssl.data.imageset import center_crop
    from kerasssl.data.load import read_array, to_hwc

    image = to_hwc(read_array(path, allow_pickle=allow_pickle), path, channel_axis)
    height, width, channels = image_shape
    if image.shape[-1] != channels:
        raise DataError(path, f"has {image.shape[-1]} band(s); the model takes {channels}")
    if image.shape[0] < height or image.shape[1] < width:
        raise DataError(
            path,
            f"image is {image.shape[0]}x{image.shape[1]}, smaller than the model input {height}x{width} "
            "(images are cropped, never padded)",
        )
    image = center_crop(image, (height, width))
    finite = np.isfinite(image).reshape(-1, channels).any(axis=0)
    if not finite.all():
        raise DataError(path, f"band(s) {np.flatnonzero(~finite).tolist()} have only NaN/Inf pixels: nothing to repair from")
    return np.ascontiguousarray(image, dtype=np.float32)


# -- predictions -----------------------------------------------------------------


@dataclass
class Predictions:
    """Per-file probabilities: ``probabilities[i]`` belongs to ``files[i]``."""

    files: List[str]
    probabilities: np.ndarray
    class_names: list
    model: str
    kind: str

    @property
    def lens_probability(self) -> Optional[np.ndarray]:
        """Column 1 (the lens class) for a binary model, else None."""
        return self.probabilities[:, 1] if len(self.class_names) == 2 else None

    def to_dict(self):
        rows = []
        for name, probs in zip(self.files, self.probabilities):
            row = {"file": name, "probabilities": {c: float(p) for c, p in zip(self.class_names, probs)}}
            if len(self.class_names) == 2:
                row["lens_probability"] = float(probs[1])
            else:
                row["predicted_class"] = self.class_names[int(np.argmax(probs))]
            rows.append(row)
        return {"model": self.model, "kind": self.kind, "class_names": self.class_names, "predictions": rows}


def predict_files(model, paths, *, batch_size=64, allow_pickle=False, channel_axis="auto"):
    """Probabilities for every image file in ``paths`` (files, folders or a TFRecord glob).

    Args:
        model: a path for :func:`load_predictor`, or a loaded :class:`Predictor`.
        paths: files and/or folders (searched recursively for .npy / FITS), or
            TFRecord shard globs.
        batch_size: images per model call.
        allow_pickle: read object arrays (trusted files only).
        channel_axis: "auto" (each file's smallest axis holds the bands), "first"
            or "last"; as ``data.channel_axis`` in training.

    Returns:
        :class:`Predictions`.
    """
    from kerasssl.data.load import is_tfrecord_path

    plain = [p for p in paths if not is_tfrecord_path(p)]
    files = list_input_files(plain)  # missing inputs fail before the (slow) model load
    predictor = model if isinstance(model, Predictor) else load_predictor(model)
    names, images = [], []
    for pattern in (p for p in paths if is_tfrecord_path(p)):
        names_, images_ = _read_tfrecords(pattern, predictor.image_shape, channel_axis)
        names.extend(names_)
        images.extend(images_)
    for f in files:
        names.append(str(f))
        images.append(read_image(f, predictor.image_shape, allow_pickle=allow_pickle,
                                 channel_axis=channel_axis))
    if not names:
        raise KerassslError("no input files given")
    probs = predictor.predict(np.stack(images), batch_size=batch_size)
    return Predictions(names, probs, list(predictor.class_names), str(predictor.path), predictor.kind)


def _read_tfrecords(pattern, image_shape, channel_axis="auto"):
    from kerasssl.data.load import load_images

    height, width, channels = image_shape
    image_set = load_images(pattern, image_size=height if height == width else None,
                            channel_axis=channel_axis)
    if tuple(image_set.images.shape[1:]) != tuple(image_shape):
        raise DataError(pattern, f"images {list(image_set.images.shape[1:])} do not fit the model input {list(image_shape)}")
    return list(image_set.files), list(image_set.images)


def format_table(result):
    """A plain-text table: one row per file, p(lens) or one column per class."""
    columns = [f"p({result.class_names[1]})"] if len(result.class_names) == 2 else [f"p({c})" for c in result.class_names]
    values = result.probabilities[:, 1:2] if len(result.class_names) == 2 else result.probabilities
    width = max([len("file")] + [len(f) for f in result.files])
    lines = ["  ".join(["file".ljust(width)] + [c.rjust(9) for c in columns])]
    for name, row in zip(result.files, values):
        lines.append("  ".join([name.ljust(width)] + [f"{v:9.4f}" for v in row]))
    return "\n".join(lines)


def format_json(result):
    return json.dumps(result.to_dict(), indent=2)

"""Lens probabilities for image files with any exported form of a classifier.

A model is one of: a ``.keras`` classifier, a SavedModel directory (a version
directory, or its parent ``BASE/NAME`` -> the highest version), or a ``.tflite``
file, loaded by :func:`kerasssl.inference.load_survey_model` (as ``scan`` loads
it). All three take raw pixels (N, H, W, C) and return softmax probabilities, so
files are read exactly as ``scan`` reads them (:class:`kerasssl.survey.ImageReader`:
``read_array`` -> ``to_hwc`` -> centre-crop to the model's input size, never
padded), NaN kept (the model repairs it in-graph).

Example:
    >>> result = predict_files("saved_models/lens_finder", ["hst/"])
    >>> print(format_table(result))
    file               p(lens)
    hst/0_hst.npy       0.9731
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from kerasssl.errors import DataError, KerassslError
from kerasssl.inference import SurveyModel, load_survey_model

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
        model: a model path (:func:`kerasssl.inference.load_survey_model`) or
            a loaded :class:`~kerasssl.inference.SurveyModel` with probabilities.
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
    from kerasssl.survey import ImageReader

    plain = [p for p in paths if not is_tfrecord_path(p)]
    files = list_input_files(plain)  # missing inputs fail before the (slow) model load
    loaded = model if isinstance(model, SurveyModel) else load_survey_model(model)
    loaded.require(probabilities=True)
    reader = ImageReader(loaded.image_shape, channel_axis, allow_pickle)  # as `scan` reads a file
    names, images = [], []
    for pattern in (p for p in paths if is_tfrecord_path(p)):
        names_, images_ = _read_tfrecords(pattern, loaded.image_shape, channel_axis)
        names.extend(names_)
        images.extend(images_)
    for f in files:
        names.append(str(f))
        images.append(reader.read_file(f))
    if not names:
        raise KerassslError("no input files given")
    probs = loaded.predict(np.stack(images), batch_size=batch_size)
    return Predictions(names, probs, list(loaded.class_names), str(loaded.path), loaded.kind)


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

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
from typing import List, Optional

import numpy as np

from kerasssl.errors import DataError
from kerasssl.inference import SurveyModel, load_survey_model

# -- inputs ----------------------------------------------------------------------


def read_inputs(survey, reader):
    """``(names, images)`` of every item of a :class:`kerasssl.survey.Survey`, read by ``reader``.

    The survey is what :func:`kerasssl.survey.list_survey` lists, as for ``scan``:
    image files, folders (any depth), file lists and TFRecord shards, labelled or
    unlabeled. A file is named by its path; a record by the ``filename`` it was
    converted from (``kerasssl convert`` stores it), else ``shard:index``.
    """
    from kerasssl.data.tfrecord.shards import read_records
    from kerasssl.survey import ShardSource, parse_example

    names, images = [], []
    for source in survey.sources:
        if isinstance(source, ShardSource):
            for index, record in read_records(source.path, source.count):
                where = f"{source.path}: record {index}"
                example = parse_example(record, where)  # once: it holds both the image and its name
                images.append(reader.read_example(example, where, source.channel_axis))
                names.append(_stored_filename(example) or f"{source.path}:{index}")
        else:
            for path in source.paths:
                images.append(reader.read_file(path))
                names.append(str(path))
    return names, images


def _stored_filename(example) -> str:
    feature = example.features.feature.get("filename")
    values = feature.bytes_list.value if feature is not None else []
    return values[0].decode("utf-8", "replace") if values else ""


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
    """Probabilities for every image in ``paths`` (files, folders, file lists or TFRecord shards).

    Args:
        model: a model path (:func:`kerasssl.inference.load_survey_model`) or
            a loaded :class:`~kerasssl.inference.SurveyModel` with probabilities.
        paths: image files, folders (searched at any depth), file lists or
            TFRecord shards (a glob, a shard or a folder; labelled or not): what
            ``kerasssl scan`` takes (:func:`read_inputs`).
        batch_size: images per model call.
        allow_pickle: read object arrays (trusted files only).
        channel_axis: "auto" (each file's smallest axis holds the bands), "first"
            or "last"; as ``data.channel_axis`` in training.

    Returns:
        :class:`Predictions`.
    """
    from kerasssl.survey import ImageReader, list_survey

    survey = list_survey(paths)  # missing or unusable inputs fail before the (slow) model load
    loaded = model if isinstance(model, SurveyModel) else load_survey_model(model)
    loaded.require(probabilities=True)
    reader = ImageReader(loaded.image_shape, channel_axis, allow_pickle)  # as `scan` reads a file
    names, images = read_inputs(survey, reader)
    if not names:  # e.g. only empty shards
        raise DataError(", ".join(survey.arguments), "holds no images")
    probs = loaded.predict(np.stack(images), batch_size=batch_size)
    return Predictions(names, probs, list(loaded.class_names), str(loaded.path), loaded.kind)


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

"""One loader for every form of a kerasssl model: ``.keras``, SavedModel, ``.tflite``.

Each loader gives a one-line :class:`kerasssl.errors.DataError` naming the file
for anything it cannot load (missing, not an archive, a broken archive, an
unknown class), never Keras's multi-line message. kerasssl's Keras classes are
registered first (:func:`kerasssl.register_keras_objects`), so every file
kerasssl wrote loads.

- :func:`load_model`: a ``.keras`` file -> ``keras.Model`` (uncompiled).
- :func:`load_saved_model`: a SavedModel version dir, or ``BASE/NAME`` (its
  highest version) -> ``(version_dir, tf.saved_model.load(...))``.
- :func:`load_tflite`: a ``.tflite`` file -> :class:`TFLiteRunner`.
- :func:`model_kind`: which of the three a path is.

Example:
    >>> from kerasssl.models import load_model
    >>> model = load_model("run/classifier.keras")
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from kerasssl.errors import DataError, KerassslError, first_line

KERAS_SUFFIX = ".keras"
TFLITE_SUFFIX = ".tflite"


def model_kind(path) -> str:
    """"keras", "saved_model" or "tflite" for an existing path; DataError otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "model not found")
    if path.is_dir():
        return "saved_model"
    if path.suffix == TFLITE_SUFFIX:
        return "tflite"
    if path.suffix == KERAS_SUFFIX:
        return "keras"
    raise DataError(path, "not a model: expected a .keras file, a SavedModel directory or a .tflite file")


def check_keras_archive(path) -> Path:
    """Refuse, in one line, a path that is not a readable ``.keras`` archive (before Keras sees it)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "model file not found")
    if path.is_dir():
        raise DataError(path, "is a directory, not a .keras file (a SavedModel? use predict or a .keras file)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile:
        raise DataError(path, "not a Keras archive (a .keras file is a zip archive; this one is not)") from None
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror or type(e).__name__})") from None
    if "config.json" not in names:
        raise DataError(path, "not a Keras archive (a zip file without the model's config.json)")
    return path


def load_model(path):
    """A ``.keras`` model, uncompiled, with kerasssl's classes registered.

    Keras's safe mode stays on: a file with a Python lambda is refused.
    """
    import keras

    import kerasssl

    path = check_keras_archive(path)
    kerasssl.register_keras_objects()
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - any load failure is the file's fault
        raise DataError(path, f"cannot load the Keras model ({type(e).__name__}: {first_line(e)})") from None


def existing_versions(model_dir):
    """Integer version directories under ``BASE/NAME`` (what TF Serving serves), sorted."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def resolve_saved_model_dir(path):
    """A version directory: ``path`` itself, or its highest integer sub-directory."""
    path = Path(path)
    if (path / "saved_model.pb").exists():
        return path
    versions = existing_versions(path)
    if not versions:
        raise DataError(path, "not a SavedModel: no saved_model.pb and no numbered version directory")
    latest = path / str(versions[-1])
    if not (latest / "saved_model.pb").exists():
        raise DataError(latest, "not a SavedModel: no saved_model.pb")
    return latest


def load_saved_model(path):
    """``(version_dir, loaded)``: a SavedModel version dir (or ``BASE/NAME``'s latest) loaded with TF."""
    import tensorflow as tf

    version_dir = resolve_saved_model_dir(path)
    try:
        return version_dir, tf.saved_model.load(str(version_dir))
    except Exception as e:  # noqa: BLE001 - a broken SavedModel is the user's to fix
        # TF's own message is a page of C++ context; what the user can act on is this.
        raise DataError(version_dir, f"cannot load the SavedModel: saved_model.pb or variables/ is damaged or "
                                     f"incomplete ({type(e).__name__}); export it again") from None


def load_tflite(path):
    """A :class:`TFLiteRunner` for a ``.tflite`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "model file not found")
    return TFLiteRunner(path)


class TFLiteRunner:
    """Run a classifier ``.tflite`` with ai_edge_litert, any batch size.

    Args:
        path: the ``.tflite`` file (or ``model_content`` bytes instead).

    Example:
        >>> TFLiteRunner("lens_finder_fp32.tflite").predict(np.zeros((3, 32, 32, 1), "float32")).shape
        (3, 2)
    """

    def __init__(self, path=None, model_content=None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = str(path) if path is not None else None
        try:
            if model_content is not None:
                self._interpreter = Interpreter(model_content=model_content)
            else:
                self._interpreter = Interpreter(model_path=self.path)
        except Exception as e:  # noqa: BLE001 - a bad file is the user's to fix
            raise DataError(self.path or "<tflite>", f"not a usable TFLite model ({first_line(e)})") from None
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise DataError(self.path or "<tflite>", "expected one input and one output tensor")
        self._input = inputs[0]
        self._output = outputs[0]
        self.image_shape = tuple(int(d) for d in self._input["shape"][1:])
        self.batch_resizable = int(self._input["shape_signature"][0]) == -1
        self._batch = None

    def predict(self, images, batch_size=64):
        """Probabilities (N, K) for raw images (N, H, W, C)."""
        images = np.asarray(images, dtype=np.float32)
        if tuple(images.shape[1:]) != self.image_shape:
            raise KerassslError(f"images {list(images.shape[1:])} do not fit the TFLite input {list(self.image_shape)}")
        if not self.batch_resizable:
            batch_size = int(self._input["shape"][0])
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            out.append(self._run(chunk))
        return np.concatenate(out, axis=0)

    def _run(self, chunk):
        n = len(chunk)
        if self.batch_resizable and n != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], [n, *self.image_shape])
            self._interpreter.allocate_tensors()
            self._batch = n
        elif self._batch is None:
            self._interpreter.allocate_tensors()
            self._batch = int(self._input["shape"][0])
        if n != self._batch:  # fixed batch: pad, then drop the padding
            chunk = np.concatenate([chunk, np.zeros((self._batch - n, *self.image_shape), np.float32)])
        self._interpreter.set_tensor(self._input["index"], chunk)
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output["index"]))[:n]

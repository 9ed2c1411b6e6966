"""One loader for every form of a kerasssl model: ``.keras``, SavedModel, ``.tflite``.

Each loader gives a one-line :class:`kerasssl.errors.DataError` naming the file
for anything it cannot load (missing, not an archive, a broken archive, an
unknown class), never Keras's multi-line message. kerasssl's Keras classes are
registered first (:func:`kerasssl.register_keras_objects`), so every file
kerasssl wrote loads.

- :func:`load_model`: a ``.keras`` file -> ``keras.Model`` (uncompiled).
- :func:`load_saved_model`: a SavedModel version dir, or ``BASE/NAME`` (its
  highest version) -> ``(version_dir, tf.saved_model.load(...))``.
- :func:`load_tflite`: a ``.tflite`` file -> :class:`kerasssl.tflite.TFLiteRunner`.
- :func:`model_kind`: which of the three a path is.

Example:
    >>> from kerasssl.models import load_model
    >>> model = load_model("run/classifier.keras")
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from kerasssl.errors import DataError, first_line

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
        raise DataError(version_dir, f"cannot load the SavedModel ({type(e).__name__})") from None


def load_tflite(path):
    """A :class:`kerasssl.tflite.TFLiteRunner` for a ``.tflite`` file."""
    from kerasssl.tflite import TFLiteRunner

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "model file not found")
    return TFLiteRunner(path)

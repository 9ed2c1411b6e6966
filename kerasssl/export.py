"""Export a classifier for deployment: a TF Serving SavedModel (+ optional TFLite).

The layout is the one TF Serving watches::

    BASE/NAME/<version>/saved_model.pb
                        variables/
                        assets/kerasssl_metadata.json
                        NAME_<mode>.tflite + NAME_<mode>.parity.json   (with tflite=)

A version is written into a temporary directory inside ``BASE/NAME/`` whose
name TF Serving ignores (``.tmp-...``) and renamed into place, so a server never
sees a half-written version; an existing version is never overwritten and a
failure leaves nothing behind.

The classifier (``Preprocess -> augmentation -> encoder -> head``, raw pixels in,
softmax out; its parts from :func:`kerasssl.classifier.classifier_parts`) is traced with ``training=False`` through
:class:`keras.export.ExportArchive`: the augmentation layers are identity in the
exported graph (``model.export`` would export a random function). The preprocessing
(NaN/Inf repair, normalisation) is inside the graph, so a client sends the ``.npy``
contents as they are, in (H, W, C) layout.

Signatures are built by the functions in :data:`SIGNATURE_BUILDERS`: add a
builder there to give the SavedModel one more signature.

:func:`export_model` returns an :class:`ExportResult` (the version folder, its
metadata, the TFLite file and its parity report: what ``kerasssl export``
prints); :func:`export_saved_model` returns just the version folder.

Example:
    >>> from kerasssl.export import export_saved_model
    >>> path = export_saved_model("run/classifier.keras", "saved_models", "lens_finder")
    >>> path.name
    '1'
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from kerasssl.classifier import check_classifier, classifier_parts, image_shape_of
from kerasssl.config import TFLITE_MODES, check_model_name
from kerasssl.errors import KerassslError
from kerasssl.models import existing_versions, load_model
from kerasssl.rundir import RunDir

log = logging.getLogger(__name__)

METADATA_FILE = "kerasssl_metadata.json"
METADATA_FORMAT = 1
# The SavedModel must reproduce the Keras model to float32 round-off.
_SAVED_MODEL_TOLERANCE = 1e-5


# -- the model's parts -------------------------------------------------------


@dataclass
class ExportContext:
    """What a signature builder needs to know about the classifier.

    Args:
        model: the Keras classifier (raw pixels in, probabilities out).
        image_shape: (H, W, C) of one input image.
        features: callable mapping a raw image batch to the encoder's own
            features (inference mode), or None when the model has no encoder.
        parts: the :class:`kerasssl.classifier.ClassifierParts` of the model.
    """

    model: object
    image_shape: tuple
    features: Optional[Callable] = None
    parts: Optional[object] = None


@dataclass
class Signature:
    """One SavedModel signature: ``fn`` takes named tensors, returns a dict."""

    name: str
    fn: Callable
    input_signature: list


def _serving_default(ctx):
    import tensorflow as tf

    def serve(images):
        return {"probabilities": ctx.model(images, training=False)}

    spec = tf.TensorSpec([None, *ctx.image_shape], tf.float32, name="images")
    return Signature("serving_default", serve, [spec])


def _embed(ctx):
    import tensorflow as tf

    if ctx.features is None:
        log.warning("no encoder found in the model: the SavedModel has no 'embed' signature")
        return None

    def embed(images):
        return {"embeddings": ctx.features(images)}

    spec = tf.TensorSpec([None, *ctx.image_shape], tf.float32, name="images")
    return Signature("embed", embed, [spec])


def _predict_examples(ctx):
    """Serialized tf.Example protos in (TFX / TF Serving classify-predict style)."""
    import tensorflow as tf

    try:
        from kerasssl.data.tfrecord.records import parse_examples_to_images
    except ImportError:
        log.info("kerasssl.data.tfrecord not available: no 'predict_examples' signature")
        return None

    def predict_examples(examples):
        images = parse_examples_to_images(examples, ctx.image_shape)
        return {"probabilities": ctx.model(images, training=False)}

    spec = tf.TensorSpec([None], tf.string, name="examples")
    return Signature("predict_examples", predict_examples, [spec])


# The one place where the SavedModel's signatures are decided: each builder takes
# an ExportContext and returns a Signature (or None to skip). serving_default first.
SIGNATURE_BUILDERS = [_serving_default, _embed, _predict_examples]


def find_preprocess(model):
    """The classifier's Preprocess layer (see :func:`kerasssl.classifier.classifier_parts`), or None."""
    return classifier_parts(model).preprocess


def find_encoder(model):
    """The classifier's encoder (see :func:`kerasssl.classifier.classifier_parts`), or None."""
    return classifier_parts(model).encoder


def features_fn(model):
    """A function images -> the encoder's own features (inference mode), or None.

    The features are the encoder's output, before the classifier's feature
    standardisation: ``encoder(preprocess(images))``, with the parts found by
    :func:`kerasssl.classifier.classifier_parts`.
    """
    return classifier_parts(model).features


# -- loading -----------------------------------------------------------------


def load_keras_model(path):
    """Load a ``.keras`` classifier (one-line errors; see :func:`kerasssl.models.load_model`)."""
    return load_model(path)


def default_class_names(n_classes) -> list:
    """kerasssl's names where none are recorded: ``["nonlens", "lens"]`` for two classes, else ``class_i``."""
    return ["nonlens", "lens"] if n_classes == 2 else [f"class_{i}" for i in range(n_classes)]


def class_names_for(model, run_dir=None, class_names=None):
    """Class names in label order: given > recorded in the run > default."""
    n_classes = int(model.outputs[0].shape[-1])
    if class_names is None and run_dir is not None:
        class_names = RunDir(run_dir).class_names()
    if class_names is None:
        class_names = default_class_names(n_classes)
        log.warning("class names unknown: using %s", class_names)
    class_names = [str(c) for c in class_names]
    if len(class_names) != n_classes:
        raise KerassslError(f"{len(class_names)} class names given for a model with {n_classes} outputs")
    return class_names


# -- metadata ----------------------------------------------------------------


def build_metadata(model, image_shape, class_names, run_dir, signatures):
    """The dict written to ``assets/kerasssl_metadata.json``."""
    import keras
    import tensorflow as tf

    import kerasssl

    preprocess = find_preprocess(model)
    return {
        "format": METADATA_FORMAT,
        "class_names": class_names,
        "positive_class": class_names[1] if len(class_names) == 2 else None,
        "input": {
            "name": "images",
            "dtype": "float32",
            "shape": [None, *image_shape],
            "layout": "NHWC",
            "note": (
                "raw pixels as stored in the .npy files, (H, W, C) per image (NaN allowed); "
                "transpose channels-first (C, H, W) arrays and add C=1 to 2-D images on the client"
            ),
        },
        "outputs": {
            "probabilities": f"float32 [batch, {len(class_names)}], softmax over class_names",
            "embeddings": "float32 [batch, D], the encoder's features" if "embed" in signatures else None,
        },
        "signatures": signatures,
        "normalization": preprocess.get_config() if preprocess is not None else None,
        "versions": {"kerasssl": kerasssl.__version__, "tensorflow": tf.__version__, "keras": keras.__version__},
        "training_run_id": RunDir(run_dir).run_id() if run_dir is not None else None,
        "training_run_dir": str(run_dir) if run_dir is not None else None,
        "model_name": model.name,
    }


# -- versions ----------------------------------------------------------------


def next_version(model_dir):
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


# -- the export --------------------------------------------------------------


@dataclass
class ExportResult:
    """What one export wrote.

    Args:
        path: the version folder (``BASE/NAME/<version>``).
        metadata: its ``assets/kerasssl_metadata.json``.
        tflite_path: the ``.tflite`` file written beside it, or None.
        parity: that file's parity report (also in ``<stem>.parity.json``), or None.
    """

    path: Path
    metadata: dict
    tflite_path: Optional[Path] = None
    parity: Optional[dict] = None

    def summary_lines(self) -> list:
        """The lines ``kerasssl export`` prints: where, signatures, input, classes, TFLite parity."""
        meta = self.metadata
        lines = [
            f"SavedModel: {self.path}",
            f"signatures: {', '.join(meta.get('signatures', []))}",
            f"input: images float32 {meta.get('input', {}).get('shape')} (raw pixels, H, W, C)",
            f"classes: {meta.get('class_names')}",
        ]
        if self.tflite_path is not None:
            parity = self.parity or {}
            line = (f"TFLite {parity.get('mode')}: {self.tflite_path} "
                    f"(max |diff| vs Keras {parity['max_abs_diff']:.2e}")
            auc = parity.get("auc")
            if auc:
                line += f"; val ROC-AUC {auc['keras']:.4f} -> {auc['tflite']:.4f} ({auc['change']:+.4f})"
            lines.append(line + ")")
        return lines


def export_saved_model(model, base_dir, name, version=None, tflite=None, **kwargs) -> Path:
    """:func:`export_model`, returning only the version folder (what TF Serving serves).

    Example:
        >>> export_saved_model(model, "saved_models", "lens_finder", tflite="fp16")
        PosixPath('saved_models/lens_finder/1')
    """
    return export_model(model, base_dir, name, version=version, tflite=tflite, **kwargs).path


def export_model(
    model,
    base_dir,
    name,
    version=None,
    tflite=None,
    *,
    run_dir=None,
    class_names=None,
    data=None,
    sample_inputs=None,
) -> ExportResult:
    """Export a classifier as ``BASE/NAME/<version>/`` (TF Serving), optionally + TFLite.

    Args:
        model: a keras.Model, or the path of a ``.keras`` file (then its folder is
            taken as the training run dir when it is one).
        base_dir: the model base directory TF Serving watches (``saved_models``).
        name: the model name (a folder under base_dir).
        version: integer version; default: one more than the highest present.
            An existing version is never overwritten (KerassslError).
        tflite: None, "fp32", "fp16" or "int8": also write ``NAME_<mode>.tflite``
            with a parity report ``NAME_<mode>.parity.json`` beside it.
        run_dir: the training run directory (split.json, runs.jsonl); inferred
            from the model path when not given.
        class_names: class names in label order; default from the run or
            ``["nonlens", "lens"]`` for two outputs.
        data: the run's data folder: its train split feeds the int8
            representative dataset and its val split the parity checks.
        sample_inputs: raw images (N, H, W, C) for parity checks and int8
            calibration when no run data are given.

    Returns:
        An :class:`ExportResult` (``.path``: the version directory written).

    Example:
        >>> result = export_model(model, "saved_models", "lens_finder", tflite="fp16")
        >>> print("\n".join(result.summary_lines()))
    """
    from kerasssl import tflite as tflite_lib
    from kerasssl.data.samples import SampleData

    if tflite is not None and tflite not in TFLITE_MODES:
        raise KerassslError(f"--tflite must be one of {', '.join(TFLITE_MODES)}, not {tflite!r}")
    check_model_name(name, "model name (--name)")
    check_backend()
    model_dir = Path(base_dir) / name
    check_writable(model_dir)  # before the slow model load and tracing
    model_path = None
    if not hasattr(model, "inputs"):
        model_path = Path(model)
        model = load_model(model_path)
        if run_dir is None:
            run_dir = RunDir.of_file(model_path)
    check_classifier(model, model_path)
    image_shape = image_shape_of(model)
    class_names = class_names_for(model, run_dir, class_names)

    if version is None:
        version = next_version(model_dir)
    version = int(version)
    if version < 0:
        raise KerassslError(f"version must be a non-negative integer, not {version}")
    final = model_dir / str(version)
    if final.exists():
        raise KerassslError(f"{final}: version {version} already exists; it is never overwritten")

    samples = SampleData.gather(image_shape, data=data, run_dir=run_dir, sample_inputs=sample_inputs)

    created_model_dir = not model_dir.exists()
    tmp = None
    tflite_path = parity = None
    try:
        tmp = _new_temp_dir(model_dir, version)
        signatures = _write_saved_model(model, image_shape, tmp)
        _check_saved_model(model, tmp, samples.parity_images)
        metadata = build_metadata(model, image_shape, class_names, run_dir, signatures)
        _write_metadata(tmp, metadata)
        if tflite is not None:
            tflite_path = final / f"{name}_{tflite}.tflite"  # where it lies once the version is in place
            parity = tflite_lib.export_tflite(tmp, tmp / tflite_path.name, tflite, model, samples, class_names)
        if final.exists():  # a concurrent export took the number meanwhile
            raise KerassslError(f"{final}: version {version} already exists; it is never overwritten")
        (tmp / _OWNER_FILE).unlink()
        os.rename(tmp, final)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if created_model_dir:
            _remove_if_empty(model_dir)
        raise
    log.info("exported %s (signatures: %s)", final, ", ".join(signatures))
    return ExportResult(path=final, metadata=metadata, tflite_path=tflite_path, parity=parity)


def check_backend(advice="run it with KERAS_BACKEND=tensorflow"):
    """Refuse a backend that cannot write a SavedModel (TensorFlow only); ``advice`` ends the message."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise KerassslError(f"export needs the TensorFlow backend (KERAS_BACKEND={keras.backend.backend()}); "
                            f"{advice}")


# -- the model folder: writable, temporary versions, stale ones ---------------------

# ``BASE/NAME/.tmp-<version>-<pid>-<8 hex>``: TF Serving ignores non-numeric names.
_TEMP_NAME = re.compile(r"^\.tmp-(\d+)-(\d+)-[0-9a-f]{8}$")
# Inside every temporary version while it is written: who is writing it.
_OWNER_FILE = ".kerasssl-export.json"


def check_writable(model_dir):
    """Refuse, in one line and before any work, a model folder that cannot be created or written."""
    model_dir = Path(model_dir)
    existing = model_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise KerassslError(f"{model_dir}: cannot export there: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise KerassslError(f"{model_dir}: cannot export there: {existing} is not writable by this user")


def _new_temp_dir(model_dir, version):
    """Create ``BASE/NAME/.tmp-...`` (and BASE/NAME), marked as this process's; stale ones go first."""
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_dirs(model_dir)
        tmp = model_dir / f".tmp-{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        (tmp / _OWNER_FILE).write_text(json.dumps(owner))
    except OSError as e:
        raise KerassslError(f"{model_dir}: cannot export there ({e.strerror or type(e).__name__})") from None
    return tmp


def remove_stale_temp_dirs(model_dir) -> list:
    """Remove the temporary versions that exports killed before they finished left in ``model_dir``.

    A folder is removed only when it is one of kerasssl's (its name and its
    owner file) and the process that wrote it, on this host, is gone; an
    export running meanwhile keeps its folder. Each removal is logged.

    Returns:
        The paths removed.
    """
    removed = []
    host = socket.gethostname()
    for path in sorted(Path(model_dir).glob(".tmp-*")):
        match = _TEMP_NAME.match(path.name)
        if not match or not path.is_dir():
            continue
        try:
            owner = json.loads((path / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not marked by an export (or being marked right now): not ours to judge
        if not isinstance(owner, dict) or owner.get("host") != host or _process_alive(owner.get("pid")):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            log.warning("removed %s: left by an export that did not finish (process %s is gone)",
                        path, owner.get("pid"))
            removed.append(path)
    return removed


def _process_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: keep the folder
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def _write_saved_model(model, image_shape, path):
    import keras

    parts = classifier_parts(model)
    ctx = ExportContext(model=model, image_shape=image_shape, features=parts.features, parts=parts)
    archive = keras.export.ExportArchive()
    archive.track(model)
    names = []
    for builder in SIGNATURE_BUILDERS:
        signature = builder(ctx)
        if signature is None:
            continue
        archive.add_endpoint(signature.name, signature.fn, input_signature=signature.input_signature)
        names.append(signature.name)
    archive.write_out(str(path), verbose=False)
    return names


def _check_saved_model(model, path, images):
    """The written SavedModel must reproduce the Keras model (inference mode)."""
    import tensorflow as tf

    from kerasssl.tflite import max_abs_diff

    loaded = tf.saved_model.load(str(path))
    got = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()
    # The reference runs as a graph, as the SavedModel does: eager and graph kernels (oneDNN)
    # differ by round-off that a deep encoder amplifies (B0: 5e-4 in a probability; graph vs
    # SavedModel: 0), so an eager reference would refuse correct exports.
    want = tf.function(lambda x: model(x, training=False))(tf.constant(images)).numpy()
    diff = max_abs_diff(got, want)
    if not diff <= _SAVED_MODEL_TOLERANCE:
        raise KerassslError(f"the exported SavedModel differs from the Keras model (max |diff| {diff:.3g})")


def _write_metadata(path, metadata):
    assets = Path(path) / "assets"
    assets.mkdir(exist_ok=True)
    (assets / METADATA_FILE).write_text(json.dumps(metadata, indent=2))


def _remove_if_empty(folder):
    try:
        folder.rmdir()
    except OSError:
        pass


def read_metadata(version_dir):
    """The metadata dict of an exported version, or None when absent."""
    try:
        return json.loads((Path(version_dir) / "assets" / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None

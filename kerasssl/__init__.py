"""kerasssl: self-supervised learning for strong-lensing images with Keras 3.

Sub-packages are imported lazily so that `import kerasssl` stays cheap
(the CLI's `--help` must not pay for TensorFlow start-up):

- ``kerasssl.data``: read DeepLense-style data, repair, split, tf.data.
- ``kerasssl.simulate``: simulated lens / non-lens data sets and unlabeled pools (lenstronomy).
- ``kerasssl.layers``: augmentation and preprocessing Keras layers.
- ``kerasssl.encoders`` / ``kerasssl.heads`` / ``kerasssl.losses``: building blocks.
- ``kerasssl.methods``: the SSL methods, one file each, registered by name
  (``kerasssl.methods.available()``).
- ``kerasssl.classifier``: the lens classifier and its parts.
- ``kerasssl.models``: load a ``.keras`` file, a SavedModel or a ``.tflite``.
- ``kerasssl.finetune`` / ``kerasssl.evaluate`` / ``kerasssl.export``.

``import kerasssl`` is enough to ``keras.saving.load_model`` a file holding
kerasssl's layers, models and schedules (as ``import keras_hub`` is): they are
registered as soon as Keras is imported, before or after kerasssl.

Example:
    >>> import kerasssl, keras
    >>> model = keras.saving.load_model("run/classifier.keras")
"""

__version__ = "0.1.0"

from kerasssl.errors import KerassslError, DataError  # noqa: E402,F401

# Every module that defines a `register_keras_serializable` class.
KERAS_OBJECT_MODULES = (
    "kerasssl.layers",
    "kerasssl.encoders",
    "kerasssl.heads",
    "kerasssl.schedules",
    "kerasssl.methods",
    "kerasssl.classifier",
    "kerasssl.optimizers",  # ScaledAdamW, in compiled checkpoints
)


def register_keras_objects():
    """Import the modules that register kerasssl's Keras classes (needs Keras; idempotent)."""
    import importlib

    for name in KERAS_OBJECT_MODULES:
        importlib.import_module(name)


def _register_when_keras_is_imported():
    from kerasssl.importhooks import call_after_import

    call_after_import("keras", register_keras_objects, not_inside="kerasssl")


_register_when_keras_is_imported()

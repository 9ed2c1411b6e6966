"""Every kerasssl Keras object, found from Keras's registry (no hand-kept list): registered by
``import kerasssl``, with a complete ``get_config`` that round-trips through JSON."""

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import kerasssl
from kerasssl.encoders import build_encoder
from kerasssl.layers import Preprocess

PREFIX = "kerasssl>"
SHAPE = (16, 16, 1)
# Layers kerasssl never saves on their own: each holds something no config can (a bound method).
NOT_SAVED = {"kerasssl.methods.momentum.Float32Step": "runs its method's EMA update; rebuilt by the method"}


def example_value(name):
    """A small value for a required constructor argument, by its name (not by class)."""
    values = {
        "encoder": lambda: build_encoder("tiny", SHAPE),
        "preprocess": lambda: Preprocess(),
        "head": lambda: keras.layers.Dense(2, activation="softmax", name="head"),
        "image_shape": lambda: SHAPE,
        "factor": lambda: 0.1,
        "base_learning_rate": lambda: 1e-3,
        "warmup_steps": lambda: 2,
        "total_steps": lambda: 10,
        "psf_fwhm": lambda: 2.0,
        "target_fwhm": lambda: (2.0, 3.0),
        "rotation": lambda: {"factor": 0.1},
        "crop": lambda: {"scale": (0.7, 1.0)},
    }
    if name not in values:
        raise AssertionError(f"no example value for the required argument {name!r}: add one to example_value")
    return values[name]()


def constructor_arguments(cls):
    """(every named argument, the required ones) of ``cls.__init__``."""
    params = [p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return {p.name for p in params}, [p.name for p in params if p.default is p.empty]


def registered():
    kerasssl.register_keras_objects()
    return {name: cls for name, cls in keras.saving.get_custom_objects().items() if name.startswith(PREFIX)}


def package_modules():
    """Every kerasssl module that imports (optional dependencies missing: skipped)."""
    out = []
    for info in pkgutil.walk_packages(kerasssl.__path__, "kerasssl."):
        if ".cli" in info.name or info.name.endswith("__main__"):
            continue
        try:
            out.append(importlib.import_module(info.name))
        except ImportError:
            continue
    return out


def check_complete_config(cls):
    """An instance's config names every constructor argument, is JSON, and rebuilds the same config."""
    arguments, required = constructor_arguments(cls)
    obj = cls(**{name: example_value(name) for name in required})
    config = obj.get_config()
    missing = sorted(arguments - set(config))
    assert not missing, f"{cls.__name__}.get_config() misses constructor argument(s) {missing}"
    json.dumps(config)
    again = json.loads(json.dumps(cls.from_config(json.loads(json.dumps(config))).get_config()))
    assert again == json.loads(json.dumps(config)), f"{cls.__name__}: from_config(get_config()) differs"


OBJECTS = registered()


def test_the_registry_holds_the_kinds_of_objects_kerasssl_defines():
    kinds = {name.split(">", 1)[1] for name in OBJECTS}
    assert {"Preprocess", "RandomRotation", "ProjectionHead", "PredictionHead", "DINOHead", "SimCLR",
            "LensClassifier", "WarmupCosine", "ScaledAdamW"} <= kinds


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_every_registered_object_has_a_complete_config(name):
    check_complete_config(OBJECTS[name])


def test_the_check_fails_for_a_layer_whose_config_misses_an_argument():
    class Forgetful(keras.layers.Layer):  # Keras records plain arguments itself unless get_config is overridden
        def __init__(self, width=3, depth=1, **kwargs):
            super().__init__(**kwargs)
            self.width, self.depth = width, depth

        def get_config(self):
            return {**super().get_config(), "depth": self.depth}

    with pytest.raises(AssertionError, match=r"misses constructor argument\(s\) \['width'\]"):
        check_complete_config(Forgetful)


def test_every_kerasssl_layer_is_registered_by_import_kerasssl_alone():
    defined = {f"{cls.__module__}.{cls.__qualname__}": cls
               for module in package_modules() for _, cls in inspect.getmembers(module, inspect.isclass)
               if issubclass(cls, (keras.layers.Layer, keras.optimizers.Optimizer,
                                   keras.optimizers.schedules.LearningRateSchedule))
               and cls.__module__ == module.__name__ and cls.__module__.startswith("kerasssl.")}
    found = {name: cls for name, cls in registered().items()}
    unregistered = sorted(name for name, cls in defined.items()
                          if cls not in found.values() and name not in NOT_SAVED and not inspect.isabstract(cls)
                          and not name.endswith(".RandomImageLayer"))  # the augmentation layers' base
    assert not unregistered, f"add @keras.saving.register_keras_serializable(package='kerasssl') to {unregistered}"
    # A fresh process that only imports kerasssl and keras knows them all (KERAS_OBJECT_MODULES is complete).
    code = ("import kerasssl, keras\n"
            "print(sorted(n for n in keras.saving.get_custom_objects() if n.startswith('kerasssl>')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    fresh = set(json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"')))
    assert fresh >= {name for name in found if found[name].__module__.startswith("kerasssl.")}


def test_prediction_head_honours_num_layers_and_refuses_an_output_batchnorm():
    from kerasssl.heads import PredictionHead

    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    for num_layers in (1, 2, 3):
        head = PredictionHead(hidden_dim=6, output_dim=8, num_layers=num_layers)
        assert head(x).shape == (4, 8)
        assert len(head.blocks) == num_layers - 1
        assert sum(len(w.shape) == 2 for w in head.weights) == num_layers  # one kernel per Dense
        clone = PredictionHead.from_config(head.get_config())
        assert clone.num_layers == num_layers and clone.get_config() == head.get_config()
    assert PredictionHead().num_layers == 2  # the papers' predictor, as before
    with pytest.raises(ValueError, match="last_batch_norm must be False"):
        PredictionHead(last_batch_norm=True)
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        PredictionHead(num_layers=0)

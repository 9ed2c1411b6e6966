"""kerasssl.classifier: the classifier's parts, found by structure, on a classifier made by `kerasssl fit`.

Also what a Keras user needs: `import kerasssl` is enough to load a kerasssl
`.keras` file with `keras.saving.load_model` (in either import order).
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import write_class_folders
from kerasssl.classifier import ClassifierParts, LensClassifier, classifier_parts
from kerasssl.layers import Preprocess

SIZE = 16

# Tiny and fast, but every part present: augmentation on, feature standardisation
# (always), a pretrained encoder; half the training labels so the pretraining and
# fine-tuning image sets differ.
FIT_CONFIG = {
    "data": {"seed": 1},
    "pretrain": {"method": "simclr", "encoder": "tiny", "epochs": 1, "batch_size": 16, "knn_monitor": False},
    "finetune": {"mode": "full", "epochs": 2, "batch_size": 16, "labels_fraction": 0.5, "augment": True},
    "evaluate": {"bootstrap": 20},
    "export": {"enabled": False},
}
_FIT = {}


def fit_run(tmp_path_factory):
    """One `kerasssl fit` run per test session: (data folder, run dir).

    test_evaluate, test_export and test_predict use it too.
    """
    if "run" not in _FIT:
        from kerasssl.cli import main

        root = tmp_path_factory.mktemp("fit_run")
        data = write_class_folders(root / "data", {"lenses": 20, "nonlenses": 16}, size=SIZE, seed=5)
        (root / "fit.yaml").write_text(yaml.safe_dump(FIT_CONFIG))
        with pytest.raises(SystemExit) as e:
            main(["fit", str(data), "--run-dir", str(root / "run"), "--config", str(root / "fit.yaml")])
        assert e.value.code == 0
        _FIT["run"] = (data, root / "run")
    return _FIT["run"]


@pytest.fixture
def fitted(tmp_path_factory):
    return fit_run(tmp_path_factory)


def raw(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(20.0, 5.0, (n, SIZE, SIZE, 3)).astype(np.float32)
    x[0, 1, 2, 0] = np.nan  # raw pixels, NaN included
    return x


def test_a_fit_classifier_exposes_its_parts_and_round_trips(fitted):
    _, run = fitted
    model = keras.saving.load_model(run / "classifier.keras", compile=False)
    assert isinstance(model, LensClassifier)
    parts = classifier_parts(model)
    assert isinstance(parts.preprocess, Preprocess)
    assert parts.augment is not None and parts.feature_norm is not None
    assert parts.encoder.name == "tiny" and parts.head.name == "head"
    assert parts.image_shape == (SIZE, SIZE, 3) and parts.n_classes == 2
    # the parts are the model's own layers, not copies
    assert {id(layer) for layer in (parts.preprocess, parts.augment, parts.encoder, parts.feature_norm,
                                    parts.head)} <= {id(layer) for layer in model.layers}
    x = raw(4)
    features = np.asarray(parts.encoder(parts.preprocess(x)))
    head_input = np.asarray(parts.feature_norm(features))
    np.testing.assert_allclose(np.asarray(parts.head(head_input)), np.asarray(model(x, training=False)), atol=1e-6)
    # saved again and reloaded: still a LensClassifier with the same weights and outputs
    model.save(run.parent / "again.keras")
    again = keras.saving.load_model(run.parent / "again.keras", compile=False)
    assert isinstance(again, LensClassifier) and again.encoder.name == "tiny"
    np.testing.assert_allclose(np.asarray(again(x, training=False)), np.asarray(model(x, training=False)), atol=1e-6)


def test_embed_signature_gives_the_encoders_own_features_not_the_standardised_ones(fitted, tmp_path):
    from kerasssl.export import export_saved_model

    data, run = fitted
    version = export_saved_model(run / "classifier.keras", tmp_path / "sm", "lf", data=data)
    model = keras.saving.load_model(run / "classifier.keras", compile=False)
    parts = classifier_parts(model)
    x = raw(5, seed=2)
    got = tf.saved_model.load(str(version)).signatures["embed"](images=tf.constant(x))["embeddings"].numpy()
    want = np.asarray(parts.encoder(parts.preprocess(x), training=False))
    assert got.shape == want.shape == (5, parts.encoder.outputs[0].shape[-1])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # ... which is not what the head sees (the standardised features)
    assert np.max(np.abs(got - np.asarray(parts.feature_norm(want)))) > 1e-2


def old_style_classifier(encoder_name="tiny", feature_norm=True):
    """A plain functional classifier, as build_classifier made them before LensClassifier."""
    from kerasssl.encoders import build_encoder
    from kerasssl.finetune import FINETUNE_VIEW
    from kerasssl.layers.views import build_view_pipeline, view_config

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = Preprocess(normalization="asinh")(inputs)
    x = build_view_pipeline(view_config(FINETUNE_VIEW), seed=0)(x)
    encoder = build_encoder("tiny", (SIZE, SIZE, 3))
    if encoder_name != "tiny":
        encoder = keras.Model(encoder.inputs[0], encoder.outputs[0], name=encoder_name)
    features = encoder(x)
    if feature_norm:
        d = features.shape[-1]
        features = keras.layers.Normalization(mean=np.full(d, 0.5), variance=np.full(d, 4.0), name="fn")(features)
    outputs = keras.layers.Dense(2, activation="softmax", name="out")(features)
    return keras.Model(inputs, outputs, name="classifier")


def test_an_old_style_saved_classifier_loads_and_its_parts_are_found_by_structure(tmp_path):
    old = old_style_classifier(encoder_name="backbone")  # names are not what finds the parts
    old.save(tmp_path / "old.keras")
    model = keras.saving.load_model(tmp_path / "old.keras", compile=False)
    assert not isinstance(model, LensClassifier)
    parts = classifier_parts(model)
    assert isinstance(parts, ClassifierParts)
    assert isinstance(parts.preprocess, Preprocess) and isinstance(parts.augment, keras.Sequential)
    assert parts.encoder.name == "backbone" and parts.head.name == "out"
    assert isinstance(parts.feature_norm, keras.layers.Normalization)
    x = raw(3)
    want = np.asarray(parts.encoder(parts.preprocess(x)))
    np.testing.assert_allclose(np.asarray(parts.features(x)), want, atol=1e-6)


def test_build_classifier_makes_a_lens_classifier_that_trains_as_before():
    from kerasssl.classifier import build_classifier
    from kerasssl.encoders import build_encoder

    keras.utils.set_random_seed(0)
    encoder = build_encoder("tiny", (SIZE, SIZE, 3))
    model = build_classifier(encoder, Preprocess(), 2, input_shape=(SIZE, SIZE, 3), mode="linear")
    assert isinstance(model, LensClassifier) and model.encoder is encoder and not encoder.trainable
    assert model.augment is None and model.feature_norm is None
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    before = [np.array(w) for w in model.head.weights]
    model.fit(raw(4), np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    assert any(np.abs(np.array(w) - b).max() > 0 for w, b in zip(model.head.weights, before))


# -- `import kerasssl` registers kerasssl's Keras classes ------------------------------

LOAD_IN_A_FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    {imports}
    model = keras.saving.load_model(sys.argv[1])
    print(type(model).__name__, model.encoder.name)
    """
)


@pytest.mark.parametrize("imports", [
    "import kerasssl, keras",
    "import keras, kerasssl",
    # keras first imported from inside a kerasssl module's own import
    "from kerasssl.heads import ProjectionHead\nimport keras",
    "import kerasssl.classifier\nimport keras",
])
def test_import_kerasssl_is_enough_to_load_a_kerasssl_file(fitted, tmp_path, imports):
    _, run = fitted
    script = tmp_path / "load.py"
    script.write_text(LOAD_IN_A_FRESH_PROCESS.format(imports=imports))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(script), str(run / "classifier.keras")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["LensClassifier", "tiny"]
    assert "register_keras_objects failed" not in proc.stderr, proc.stderr[-2000:]


def test_import_kerasssl_does_not_import_keras():
    code = "import sys, kerasssl, kerasssl.cli; print(sorted(m for m in ('keras', 'tensorflow', 'numpy') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.replace("'", '"')) == []

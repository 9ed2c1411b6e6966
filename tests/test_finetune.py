"""kerasssl.finetune: frozen/trained parts per mode, the run job (its optimizer: test_optimizers.py,
its best-epoch callback: test_callbacks.py)."""

import json

import keras
import numpy as np
import pytest

from kerasssl import finetune as ft
from kerasssl.config import RunConfig
from kerasssl.encoders import build_encoder
from kerasssl.errors import KerassslError
from kerasssl.layers import Preprocess, RandomDihedral

SHAPE = (16, 16, 3)


def make_data(n, seed=0):
    """Lenses carry a bright ring, so a classifier can learn them fast."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16] - 7.5
    ring = np.exp(-0.5 * ((np.hypot(xx, yy) - 5) / 1.0) ** 2)[..., None]
    labels = (np.arange(n) % 3 != 0).astype(np.int64)  # 2:1 imbalance
    images = rng.normal(0, 1, (n,) + SHAPE) + 8 * labels[:, None, None, None] * ring
    return images.astype(np.float32), labels


def classifier(mode, augmentation=None):
    keras.utils.set_random_seed(0)
    encoder = build_encoder("tiny", SHAPE)
    model = ft.build_classifier(encoder, Preprocess(normalization="zscore"), 2, input_shape=SHAPE,
                                mode=mode, augmentation=augmentation)
    return model, encoder


def weights_of(layers):
    return [np.array(w) for layer in layers for w in layer.weights]


def test_balanced_class_weights():
    w = ft.balanced_class_weights(np.array([0, 1, 1, 1]), 2)
    assert w == {0: pytest.approx(2.0), 1: pytest.approx(4 / 6)}
    assert 1 * w[0] == pytest.approx(3 * w[1])  # equal total weight per class
    with pytest.raises(KerassslError):
        ft.balanced_class_weights(np.array([1, 1]), 2)


def train(mode, scale=0.1, epochs=1, lr=1e-2):
    x, y = make_data(24)
    model, encoder = classifier(mode)
    enc_before = weights_of(encoder.layers)
    bn = [layer for layer in encoder._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    bn_before = [np.array(layer.moving_mean) for layer in bn]
    head_before = np.array(model.get_layer("head").kernel)
    ft.train_classifier(model, encoder, x, y, mode=mode, epochs=epochs, batch_size=24, learning_rate=lr,
                        encoder_lr_scale=scale, weight_decay=0.0, class_weight=None)
    enc_delta = [np.abs(np.array(w) - b).max() for w, b in zip(weights_of(encoder.layers), enc_before)]
    bn_moved = any(not np.allclose(np.array(layer.moving_mean), b) for layer, b in zip(bn, bn_before))
    head_delta = np.abs(np.array(model.get_layer("head").kernel) - head_before).max()
    return enc_delta, bn_moved, head_delta


def test_linear_mode_trains_only_the_head():
    enc_delta, bn_moved, head_delta = train("linear")
    assert max(enc_delta) == 0.0 and not bn_moved and head_delta > 0


def test_full_mode_encoder_moves_at_the_scaled_rate_with_fixed_batchnorm():
    # One Adam step moves each weight by about its learning rate: lr for the
    # head, lr * 0.1 for the encoder (cosine decay has not started at step 0).
    enc_delta, bn_moved, head_delta = train("full", scale=0.1)
    assert not bn_moved
    assert 0.9e-2 < head_delta <= 1.01e-2
    assert 0.9e-3 < max(enc_delta) <= 1.01e-3


def test_supervised_mode_trains_everything_with_batch_statistics():
    enc_delta, bn_moved, head_delta = train("supervised")
    assert max(enc_delta) > 0.9e-2 and bn_moved and head_delta > 0


def test_saved_classifier_gives_the_same_probabilities(tmp_path):
    model, _ = classifier("full", augmentation=RandomDihedral(seed=1))
    x, _ = make_data(6)
    x[0, 0, 0, 0] = np.nan  # raw pixels with NaN go in: Preprocess repairs them
    path = ft.save_model_atomic(model, tmp_path / "classifier.keras")
    assert [p.name for p in tmp_path.iterdir()] == ["classifier.keras"]
    loaded = keras.saving.load_model(path, compile=False)
    p1 = model.predict(x, verbose=0)
    p2 = loaded.predict(x, verbose=0)
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-6)  # augmentation is identity at inference
    assert np.all(np.isfinite(p2)) and p2.shape == (6, 2)
    np.testing.assert_allclose(p2.sum(1), 1.0, rtol=1e-5)
    # BatchNorm stays frozen after reloading (trainable is saved).
    bn = [layer for layer in loaded._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)


def test_feature_statistics_standardise_the_head_input():
    keras.utils.set_random_seed(0)
    x, _ = make_data(20)
    encoder, pre = build_encoder("tiny", SHAPE), Preprocess(normalization="zscore")
    mean, var = ft.feature_statistics(encoder, pre, x)
    model = ft.build_classifier(encoder, pre, 2, input_shape=SHAPE, mode="linear", feature_stats=(mean, var))
    normed = keras.Model(model.inputs, model.get_layer("feature_norm").output).predict(x, verbose=0)
    np.testing.assert_allclose(normed.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(normed.std(0)[var > 1e-5], 1.0, rtol=1e-2)


def test_unknown_mode_is_a_user_error():
    with pytest.raises(KerassslError):
        classifier("probe")


# -- the run-directory job -------------------------------------------------------
@pytest.fixture(scope="module")
def supervised_run(tmp_path_factory):
    """One supervised fine-tune on a fresh run dir (shared by the tests below)."""
    from conftest import write_class_folders

    root = tmp_path_factory.mktemp("ft")
    data = write_class_folders(root / "data", {"lenses": 24, "nonlenses": 18}, size=16)
    cfg = RunConfig.from_dict({"pretrain": {"encoder": "tiny"},
                               "finetune": {"epochs": 2, "batch_size": 16}})
    record = ft.finetune(cfg, data, root / "run", mode="supervised", labels_fraction=0.5)
    return cfg, data, root / "run", record


def test_supervised_finetune_creates_the_run(supervised_run):
    cfg, data, run, record = supervised_run
    for name in ("classifier.keras", "finetune.json", "split.json", "preprocess.json"):
        assert (run / name).exists(), name
    assert RunConfig.load(run / "config.yaml") == cfg  # an API run records its config too (not only the CLI)
    split = json.loads((run / "split.json").read_text())
    saved = json.loads((run / "finetune.json").read_text())["models"]["classifier.keras"]
    assert saved["mode"] == "supervised" and saved["labels_fraction"] == 0.5
    labeled = set(saved["labeled_files"])
    assert labeled <= set(split["train"]) and not labeled & set(split["test"])
    assert saved["n_labeled"] == len(labeled) == sum(saved["labeled_counts"].values())
    # About half of the training split, both classes, weights n / (K n_k).
    assert abs(len(labeled) - 0.5 * len(split["train"])) <= 2
    n, counts = saved["n_labeled"], saved["labeled_counts"]
    for name, w in saved["class_weight"].items():
        assert w == pytest.approx(n / (2 * counts[name]))
    assert len(saved["val_roc_auc"]) == len(saved["loss"]) == 2
    model = keras.saving.load_model(run / "classifier.keras", compile=False)
    assert model.output_shape == (None, 2) and model.input_shape == (None, 16, 16, 3)
    # No fixed feature standardisation: statistics of a random-init encoder stop fitting the
    # features as soon as it trains (they once gave the head a x1000 gain).
    assert model.feature_norm is None


def test_pretrained_modes_need_an_encoder(tmp_path, supervised_run):
    cfg, data, _, _ = supervised_run
    with pytest.raises(KerassslError, match="encoder"):
        ft.finetune(cfg, data, tmp_path / "fresh", mode="linear")
    with pytest.raises(KerassslError, match="fraction"):
        ft.finetune(cfg, data, tmp_path / "fresh", mode="supervised", labels_fraction=1.5)


def test_linear_finetune_on_a_saved_encoder(tmp_path, supervised_run):
    """A run holding encoder.keras + preprocess.json (what pretraining leaves behind)."""
    import shutil

    cfg, data, run, _ = supervised_run
    new = tmp_path / "run"
    new.mkdir()
    for name in ("split.json", "preprocess.json"):
        shutil.copy(run / name, new / name)
    encoder = build_encoder("tiny", (16, 16, 3))
    encoder.save(new / "encoder.keras")
    before = [np.array(w) for w in encoder.weights]
    record = ft.finetune(cfg, data, new, mode="linear", labels_fraction=1.0, epochs=2)
    model = keras.saving.load_model(record["model"], compile=False)
    inner = model.get_layer("tiny")
    for w, b in zip(inner.weights, before):  # frozen encoder, BN statistics included
        np.testing.assert_array_equal(np.array(w), b)
    assert record["encoder"].endswith("encoder.keras")


# -- mixed precision -------------------------------------------------------------
def test_bad_finetune_precision_is_a_one_line_config_error():
    with pytest.raises(KerassslError, match="finetune.precision must be one of float32, mixed_float16") as e:
        RunConfig.from_dict({"finetune": {"precision": "float8"}})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("precision,compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_classifier_built_in_scope_computes_encoder_in_half_head_in_float32(precision, compute):
    encoder = build_encoder("tiny", SHAPE)  # float32, as a loaded RUN/encoder.keras
    model, inner = ft.build_classifier_in_scope(encoder, Preprocess(normalization="zscore", dtype="float32"), 2,
                                                input_shape=SHAPE, mode="full", feature_stats=(
                                                    np.zeros(encoder.output_shape[-1], np.float32),
                                                    np.ones(encoder.output_shape[-1], np.float32)),
                                                precision=precision)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was
    convs = [layer for layer in inner._flatten_layers() if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == compute for layer in convs)
    assert model.get_layer("head").compute_dtype == "float32"
    assert model.get_layer("feature_norm").compute_dtype == "float32"
    for w, b in zip(inner.get_weights(), encoder.get_weights()):  # the pretrained weights, copied
        np.testing.assert_array_equal(w, b)
    x, _ = make_data(4)
    assert keras.ops.convert_to_numpy(model(x)).dtype == np.float32


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_finetune_trains_and_saves_a_float32_classifier(tmp_path, supervised_run, precision):
    import shutil

    cfg, data, run, _ = supervised_run
    new = tmp_path / "run"
    new.mkdir()
    for name in ("split.json", "preprocess.json"):
        shutil.copy(run / name, new / name)
    build_encoder("tiny", (16, 16, 3)).save(new / "encoder.keras")
    cfg = cfg.with_overrides({"finetune.precision": precision})
    record = ft.finetune(cfg, data, new, mode="full", labels_fraction=1.0, epochs=2)
    assert record["precision"] == precision
    assert len(record["loss"]) == 2 and np.all(np.isfinite(record["loss"]))
    model = keras.saving.load_model(record["model"], compile=False)
    assert all(layer.compute_dtype == "float32" for layer in model.get_layer("tiny")._flatten_layers())
    x, _ = make_data(6)
    probs = model.predict(x, verbose=0)
    assert probs.dtype == np.float32 and probs.shape == (6, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

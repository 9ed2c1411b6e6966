"""BatchNorm statistics: recalibrate_batch_norm computes exact averages over the training images
(shuffled batches, dropout off, nothing else changed); pretraining saves a recalibrated encoder."""

import json

import keras
import numpy as np
import pytest

from kerasssl.batchnorm import batch_norm_layers, freeze_batch_norm, recalibrate_batch_norm

SHAPE = (8, 8, 2)


def small_model(seed=0):
    """conv -> BN -> dropout -> conv -> BN: the second BN sees the first's output."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv0")(inputs)
    x = keras.layers.BatchNormalization(name="bn0")(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def batch_moments(values, batches):
    """Per-channel mean over images and pixels, and the mean of the batches' (biased) variances."""
    variances = [v.reshape(-1, v.shape[-1]).var(axis=0) for v in np.split(values, batches)]
    return values.reshape(-1, values.shape[-1]).mean(axis=0), np.mean(variances, axis=0)


def test_moving_statistics_become_exact_averages_of_shuffled_batches():
    rng = np.random.default_rng(0)
    # Stored class by class (as folders are read): the second half is brighter.
    images = np.concatenate([rng.normal(0, 1, (48,) + SHAPE), rng.normal(3, 2, (48,) + SHAPE)]).astype("float32")
    model = small_model()
    weights = {w.path: keras.ops.convert_to_numpy(w) for w in model.trainable_weights}
    summary = recalibrate_batch_norm(model, images, batch_size=32, max_images=64, seed=5)
    assert summary == {"layers": 2, "images": 64, "batches": 2, "batch_size": 32}

    order = np.random.default_rng(5).permutation(len(images))[:64]
    drawn = images[order]
    conv0 = keras.Model(model.inputs, model.get_layer("conv0").output)
    pre0 = keras.ops.convert_to_numpy(conv0(drawn))
    mean0, var0 = batch_moments(pre0, 2)
    bn0 = model.get_layer("bn0")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn0.moving_mean), mean0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn0.moving_variance), var0, rtol=1e-4, atol=1e-5)
    # bn1 saw bn0 normalising each batch by its own statistics, and no dropout.
    conv1 = model.get_layer("conv1")
    parts = []
    for batch in np.split(pre0, 2):
        flat = batch.reshape(-1, batch.shape[-1])
        normed = (batch - flat.mean(0)) / np.sqrt(flat.var(0) + bn0.epsilon)
        gamma, beta = (keras.ops.convert_to_numpy(w) for w in (bn0.gamma, bn0.beta))
        parts.append(keras.ops.convert_to_numpy(conv1(gamma * normed + beta)))
    mean1, var1 = batch_moments(np.concatenate(parts), 2)
    bn1 = model.get_layer("bn1")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn1.moving_mean), mean1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn1.moving_variance), var1, rtol=1e-4, atol=1e-5)
    # Nothing else changed, and the layers' settings are back.
    for w in model.trainable_weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), weights[w.path])
    assert [layer.momentum for layer in batch_norm_layers(model)] == [0.99, 0.99]
    assert model.get_layer("drop").rate == 0.5


def test_shuffled_batches_keep_the_variance_of_data_stored_class_by_class():
    rng = np.random.default_rng(1)
    images = np.concatenate([np.full((32,) + SHAPE, -2.0), np.full((32,) + SHAPE, 2.0)])
    images = (images + rng.normal(0, 0.1, images.shape)).astype("float32")
    inputs = keras.Input(SHAPE)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(inputs))
    recalibrate_batch_norm(model, images, batch_size=32, seed=0)
    # The whole set's variance (~4), not a one-class batch's (~0.01).
    assert np.all(keras.ops.convert_to_numpy(model.get_layer("bn").moving_variance) > 2.5)


def test_frozen_layers_and_too_few_images_are_left_alone():
    model = small_model()
    images = np.random.default_rng(0).normal(size=(16,) + SHAPE).astype("float32")
    assert recalibrate_batch_norm(model, images[:1]) is None
    frozen = model.get_layer("bn0")
    frozen.trainable = False
    before = keras.ops.convert_to_numpy(frozen.moving_variance)
    summary = recalibrate_batch_norm(model, images, batch_size=64)
    assert summary == {"layers": 1, "images": 16, "batches": 1, "batch_size": 16}  # the batch shrinks to N
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(frozen.moving_variance), before)
    assert not np.allclose(keras.ops.convert_to_numpy(model.get_layer("bn1").moving_variance), 1.0)
    assert freeze_batch_norm(model) == 2 and not model.get_layer("bn1").trainable


def test_a_failed_batch_leaves_the_statistics_as_they_were():
    model = small_model()
    images = np.random.default_rng(0).normal(size=(16,) + SHAPE).astype("float32")

    def broken(x, training=False):
        raise RuntimeError("preprocess failed")

    with pytest.raises(RuntimeError, match="preprocess failed"):
        recalibrate_batch_norm(model, images, preprocess=broken, batch_size=8)
    for layer in batch_norm_layers(model):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_mean), 0.0)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_variance), 1.0)
        assert layer.momentum == 0.99
    assert model.get_layer("drop").rate == 0.5


@pytest.mark.parametrize("recalibrate", [True, False])
def test_pretraining_saves_an_encoder_recalibrated_on_the_train_split(hst_folder, tmp_path, recalibrate):
    from kerasssl import pretrain as pt
    from kerasssl.config import RunConfig
    from kerasssl.data.load import load_images
    from kerasssl.encoders import build_encoder
    from kerasssl.layers.preprocess import load_preprocess

    cfg = RunConfig.from_dict({"seed": 3, "data": {"image_size": 32}, "pretrain": {
        "method": "simclr", "encoder": "tiny", "epochs": 1, "batch_size": 8, "steps_per_epoch": 2,
        "knn_monitor": False, "recalibrate_batchnorm": recalibrate,
        "method_options": {"projection_dim": 16, "hidden_dim": 32}}})
    run = tmp_path / "run"
    pt.pretrain(cfg, hst_folder, run, verbose=0)
    saved = keras.saving.load_model(run / "encoder.keras", compile=False)
    bn_saved = batch_norm_layers(saved)
    if not recalibrate:  # the moving averages of 2 steps (momentum 0.99): still near their start, 0
        mean = keras.ops.convert_to_numpy(bn_saved[0].moving_mean)
        assert np.abs(mean).max() < 0.5 and not np.allclose(mean, 0.0)
        return
    # Recomputed over the train split, exactly as recalibrate_batch_norm does it (a copy of the
    # saved encoder recomputed again agrees: the result depends on weights and images only).
    expected = build_encoder("tiny", saved.input_shape[1:])
    expected.set_weights(saved.get_weights())
    image_set = load_images(hst_folder, **cfg.data.read_options())
    split = json.loads((run / "split.json").read_text())
    position = {f: i for i, f in enumerate(image_set.files)}
    train = image_set.images[[position[f] for f in split["train"]]]
    recalibrate_batch_norm(expected, train, preprocess=load_preprocess(run / "preprocess.json"), batch_size=8,
                           seed=3)
    for got, want in zip(bn_saved, batch_norm_layers(expected)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got.moving_mean),
                                   keras.ops.convert_to_numpy(want.moving_mean), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got.moving_variance),
                                   keras.ops.convert_to_numpy(want.moving_variance), rtol=1e-5, atol=1e-6)


def test_the_knn_probe_sees_the_recalibrated_encoder_and_leaves_training_statistics_alone():
    from kerasssl.callbacks import KNNProbe
    from kerasssl.encoders import build_encoder

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 32)
    images = (rng.normal(0, 1, (64, 16, 16, 1)) + 1.5 * labels[:, None, None, None]).astype("float32")
    keras.utils.set_random_seed(1)
    encoder = build_encoder("tiny", (16, 16, 1))
    for layer in batch_norm_layers(encoder):  # stale moving averages, as after a short run
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 5.0, "float32"))
    before = [keras.ops.convert_to_numpy(w) for w in encoder.weights]

    class Holder:
        pass

    holder = Holder()
    holder.encoder, holder.preprocess = encoder, None
    train, val = np.r_[0:24, 32:56], np.r_[24:32, 56:64]
    aucs = {}
    for recalibrate in (False, True):
        probe = KNNProbe(images[train], labels[train], images[val], labels[val], k=5, recalibrate=recalibrate,
                         batch_size=16, seed=2)
        probe.set_model(holder)
        logs = {"loss": 1.0}
        probe.on_epoch_end(0, logs)
        aucs[recalibrate] = logs["val_knn_auc"]
        for got, want in zip(encoder.weights, before):  # the training run's statistics are back
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), want)
    copy = build_encoder("tiny", (16, 16, 1))
    copy.set_weights(encoder.get_weights())
    recalibrate_batch_norm(copy, images[train], batch_size=16, seed=2)
    assert aucs[True] != pytest.approx(aucs[False]), aucs  # the stale statistics change the probe here
    assert aucs[True] == pytest.approx(probe.evaluate(copy, None))
    assert aucs[False] == pytest.approx(probe.evaluate(encoder, None))


def test_a_supervised_classifier_is_validated_and_kept_with_recalibrated_statistics():
    from kerasssl import finetune as ft
    from kerasssl.encoders import build_encoder
    from kerasssl.layers import Preprocess

    rng = np.random.default_rng(0)
    shape = (16, 16, 3)
    labels = np.repeat([0, 1], 24)
    images = (rng.normal(0, 1, (48,) + shape) + 2.0 * labels[:, None, None, None]).astype("float32")
    train, val = np.r_[0:16, 24:40], np.r_[16:24, 40:48]
    models = {}
    for mode in ("supervised", "linear"):
        keras.utils.set_random_seed(0)
        encoder = build_encoder("tiny", shape)
        model = ft.build_classifier(encoder, Preprocess(normalization="zscore"), 2, input_shape=shape, mode=mode)
        start = [keras.ops.convert_to_numpy(layer.moving_mean) for layer in batch_norm_layers(encoder)]
        record = ft.train_classifier(model, encoder, images[train], labels[train], x_val=images[val],
                                     y_val=labels[val], mode=mode, epochs=3, batch_size=8, learning_rate=1e-2,
                                     encoder_lr_scale=0.1, weight_decay=0.0, class_weight=None)
        models[mode] = (model, encoder, start, record)
    model, encoder, _, record = models["supervised"]
    # The kept statistics are the recalibration (seeded by the epoch) of the kept weights ...
    expected = build_encoder("tiny", shape)
    expected.set_weights(encoder.get_weights())
    recalibrate_batch_norm(expected, images[train], preprocess=model.preprocess, batch_size=8,
                           seed=record["best_epoch"] - 1)
    for got, want in zip(batch_norm_layers(encoder), batch_norm_layers(expected)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got.moving_variance),
                                   keras.ops.convert_to_numpy(want.moving_variance), rtol=1e-5, atol=1e-6)
    # ... and the validation ROC-AUC recorded for that epoch is the returned model's.
    from kerasssl import metrics

    probs = np.asarray(model.predict(images[val], verbose=0), np.float64)
    assert metrics.roc_auc(labels[val], probs) == pytest.approx(record["best_val_roc_auc"])
    # A frozen encoder (linear probe) keeps the pretrained statistics.
    _, encoder, start, _ = models["linear"]
    for layer, before in zip(batch_norm_layers(encoder), start):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_mean), before)

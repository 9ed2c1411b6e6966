"""Encoders: no hidden rescaling, any band count, user weights files."""

import keras
import numpy as np
import pytest

from kerasssl.encoders import available, build_encoder
from kerasssl.errors import DataError, KerassslError


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _no_hidden_preprocessing(model):
    names = {type(l).__name__ for l in _all_layers(model)}
    return not names & {"Rescaling", "Normalization"}


def test_efficientnet_v1_drops_rescaling_and_matches_application_on_scaled_input():
    enc = build_encoder("efficientnetb0", (32, 32, 4))
    assert _no_hidden_preprocessing(enc)
    assert enc.output_shape == (None, 1280)
    # Same weights in the stock application (which divides by 255 first, and
    # whose un-adapted Normalization is the identity): enc(x) == app(255 x).
    app = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 4), pooling="avg")
    by_name = {l.name: l for l in enc.layers}
    for layer in app.layers:
        if layer.name in by_name and layer.weights:
            layer.set_weights(by_name[layer.name].get_weights())
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 4)).astype("float32")
    np.testing.assert_allclose(enc(x), app(255.0 * x), rtol=1e-4, atol=1e-5)


def test_small_inputs_and_other_families():
    with pytest.raises(KerassslError, match="at least 32 pixels"):
        build_encoder("efficientnetb0", (16, 16, 1))
    v2 = build_encoder("efficientnetv2b0", (32, 32, 2))
    assert v2.output_shape == (None, 1280) and _no_hidden_preprocessing(v2)
    out = v2(np.ones((1, 32, 32, 2), "float32"))
    assert np.all(np.isfinite(out))
    assert "resnet50" in available() and "efficientnetb7" in available() and "efficientnetv2s" in available()


def test_unknown_encoder_and_bad_shape():
    with pytest.raises(KerassslError, match="unknown encoder"):
        build_encoder("vgg", (32, 32, 3))
    with pytest.raises(KerassslError):
        build_encoder("tiny", (32, 32))


def test_user_weights_roundtrip_and_mismatch(tmp_path):
    enc = build_encoder("tiny", (16, 16, 3))
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype("float32")
    enc.save_weights(tmp_path / "enc.weights.h5")
    enc.save(tmp_path / "enc.keras")
    for path in ("enc.weights.h5", "enc.keras"):
        again = build_encoder("tiny", (16, 16, 3), weights=tmp_path / path)
        np.testing.assert_allclose(again(x), enc(x), rtol=1e-6)
    for path in ("enc.weights.h5", "enc.keras"):
        with pytest.raises(DataError, match="do not fit"):
            build_encoder("tiny", (16, 16, 1), weights=tmp_path / path)
    with pytest.raises(DataError, match="not found"):
        build_encoder("tiny", (16, 16, 3), weights=tmp_path / "missing.weights.h5")


def test_a_registered_encoder_is_built_and_offered_by_the_cli(monkeypatch):
    from kerasssl import encoders
    from kerasssl.cli.pretrain import pretrain

    monkeypatch.setattr(encoders.ENCODERS, "_entries", dict(encoders.ENCODERS._entries))

    @encoders.register_encoder("Flat-Pool")
    def flat_pool(input_shape):
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs), name="flat_pool")

    assert "flat_pool" in available()
    assert build_encoder("flat-pool", (8, 8, 3)).output_shape == (None, 3)
    param = next(p for p in pretrain.params if p.name == "encoder")
    assert param.type.convert("FLAT_POOL", param, None) == "flat_pool"
    with pytest.raises(KerassslError, match="unknown encoder 'vgg'; choose from efficientnetb0"):
        param.type.convert("vgg", param, None)

"""TFLite export: fp32 / fp16 / int8 through the SavedModel, run with ai_edge_litert,
resizable batch, parity reports, and failures that leave nothing behind."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kerasssl import tflite as tflite_lib
from kerasssl.data.samples import SampleData
from kerasssl.errors import KerassslError
from kerasssl.models import TFLiteRunner
from test_export import SIZE, raw_images, shared_export


@pytest.fixture
def exported(tmp_path_factory):
    return shared_export(tmp_path_factory)


def test_fp32_parity_report_and_resizable_batch(exported):
    model, _, version_dir = exported
    path = version_dir / "lens_finder_fp32.tflite"
    report = json.loads(path.with_suffix(".parity.json").read_text())
    assert report["passed"] and report["mode"] == "fp32" and report["max_abs_diff"] <= 1e-4
    assert report["batch_resizable"] and report["interpreter"] == "ai_edge_litert"
    runner = TFLiteRunner(path)
    assert runner.image_shape == (SIZE, SIZE, 1)
    x = raw_images(7, seed=11)
    want = np.asarray(model(x, training=False))
    # batch 1, then 7, then 3 (resize up and down), NaN pixels included
    for batch in (1, 7, 3):
        got = runner.predict(x, batch_size=batch)
        assert got.shape == (7, 2) and np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_fp16_meets_its_tolerance(exported, tmp_path):
    model, _, version_dir = exported
    samples = SampleData.gather((SIZE, SIZE, 1), sample_inputs=raw_images(12, seed=5))
    tfl = tmp_path / "m_fp16.tflite"
    report = tflite_lib.export_tflite(version_dir, tfl, "fp16", model, samples, ["nonlens", "lens"])
    assert json.loads(tfl.with_suffix(".parity.json").read_text()) == report
    assert report["passed"] and report["tolerance"] == 1e-2 and report["samples"] == "sample inputs"
    assert report["n_samples"] == 12 + 4  # + NaN variants of the first four
    assert report["max_abs_diff"] <= 1e-2
    got = TFLiteRunner(tfl).predict(raw_images(5, seed=6))
    np.testing.assert_allclose(got, np.asarray(model(raw_images(5, seed=6), training=False)), atol=1e-2)


def test_int8_calibrates_on_train_and_reports_val_auc_change(exported, tmp_path, hst_folder):
    from kerasssl.data.load import load_images
    from kerasssl.data.split import make_split

    model, _, version_dir = exported
    data = load_images(hst_folder, image_size=SIZE)  # 32 px files, centre-cropped like the model's
    run = tmp_path / "run"
    run.mkdir()
    split = make_split(data, val_fraction=0.3, test_fraction=0.15, seed=0)
    split.save(run / "split.json")

    samples = SampleData.gather((SIZE, SIZE, 1), data=hst_folder, run_dir=run)
    train, val = split.indices(data, "train"), split.indices(data, "val")
    np.testing.assert_array_equal(samples.representative, data.images[train])
    tfl = tmp_path / "m_int8.tflite"
    report = tflite_lib.export_tflite(version_dir, tfl, "int8", model, samples, ["nonlens", "lens"])
    assert report["passed"] and report["tolerance"] is None
    assert report["representative_images"] == len(train)
    finite = np.isfinite(data.images[train]).all(axis=(1, 2, 3))
    assert 0 < report["calibration_images"] == finite.sum() < len(train)  # NaN images left out
    auc = report["auc"]
    assert auc["split"] == "val" and auc["n"] == len(val)
    keras_auc = roc_auc_score(data.labels[val], np.asarray(model(data.images[val], training=False))[:, 1])
    lite = TFLiteRunner(tfl).predict(data.images[val])
    assert auc["keras"] == pytest.approx(keras_auc, abs=1e-9)
    assert auc["tflite"] == pytest.approx(roc_auc_score(data.labels[val], lite[:, 1]), abs=1e-9)
    assert auc["change"] == pytest.approx(auc["tflite"] - auc["keras"], abs=1e-12)
    assert report["max_abs_diff"] < 0.1  # quantised, not broken


def test_int8_without_calibration_data_is_refused(exported, tmp_path):
    model, _, version_dir = exported
    samples = SampleData.gather((SIZE, SIZE, 1))  # synthetic: fine for parity only
    assert samples.representative is None
    with pytest.raises(KerassslError, match="calibration"):
        tflite_lib.export_tflite(version_dir, tmp_path / "x.tflite", "int8", model, samples, ["a", "b"])
    assert list(tmp_path.iterdir()) == []


def test_failed_parity_writes_nothing(exported, tmp_path, monkeypatch):
    model, _, version_dir = exported
    real_predict = TFLiteRunner.predict
    # a converter that silently changed the maths by 0.05: over the fp32 tolerance
    monkeypatch.setattr(TFLiteRunner, "predict", lambda self, x, **kw: real_predict(self, x, **kw) * 0.95)
    samples = SampleData.gather((SIZE, SIZE, 1))
    with pytest.raises(KerassslError, match="parity failed"):
        tflite_lib.export_tflite(version_dir, tmp_path / "x.tflite", "fp32", model, samples, ["a", "b"])
    assert list(tmp_path.iterdir()) == []


def test_an_op_without_tflite_kernel_fails_clearly(tmp_path):
    import tensorflow as tf

    class Stretch(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 1], tf.float32, name="images")])
        def serve(self, images):
            # tf.Asinh (keras.ops.arcsinh): no TFLite builtin (nor Flex) kernel
            return {"probabilities": tf.math.asinh(images)}

    module = Stretch()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    with pytest.raises(KerassslError, match="builtins lack: Asinh"):
        tflite_lib.convert(tmp_path / "sm", "fp32")


# -- int8: the encoder's convolutions in int8, the rest float -----------------


def _trained_int8_export(root):
    """A small classifier trained on separable fake rings, exported with int8.

    Data: 16 px single-band folder (fake lenses have a ring), a run dir with
    its split; the classifier (Preprocess median/asinh -> augmentation ->
    encoder with one conv -> dropout -> head) is trained on the train split
    only, so its val ROC-AUC is a real one.
    """
    import keras

    from conftest import write_hst_folder
    from kerasssl.data.load import load_images
    from kerasssl.data.split import make_split
    from kerasssl.export import export_saved_model
    from test_export import make_classifier

    folder = write_hst_folder(root / "data", 60, 60, size=SIZE, nan_files=8, seed=3)
    data = load_images(folder)
    run = root / "run"
    run.mkdir()
    split = make_split(data, val_fraction=0.3, test_fraction=0.15, seed=0)
    split.save(run / "split.json")
    train = split.indices(data, "train")
    model = make_classifier(seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(data.images[train], data.labels[train], epochs=25, batch_size=16, verbose=0)
    model.save(run / "classifier.keras")
    version = export_saved_model(run / "classifier.keras", root / "sm", "lf", tflite="int8", data=folder)
    return model, data, split, version / "lf_int8.tflite"


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    return _trained_int8_export(tmp_path_factory.mktemp("int8"))


def _ops_from_interpreter(path):
    """(op type, first output name, output dtypes, first-output tensor) per op, via LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = []
    for op in interpreter._get_ops_details():
        outputs = [tensors[i] for i in op["outputs"]]
        inputs = [tensors[i] for i in op["inputs"] if i in tensors]
        ops.append((op["op_name"], outputs[0]["name"], [t["dtype"] for t in outputs], inputs))
    return ops


def test_int8_keeps_preprocess_pooling_and_head_float(int8_export):
    _, _, _, path = int8_export
    ops = _ops_from_interpreter(path)

    def in_layer(name, layer):  # "classifier_1/preprocess_1/Sort;..." is in layer "preprocess"
        parts = name.split(";")[0].split("/")
        return len(parts) > 2 and parts[1].startswith(layer)

    quantized = [(kind, name) for kind, name, dtypes, _ in ops if np.int8 in dtypes and kind != "QUANTIZE"]
    # the only int8 compute is the encoder's convolution ...
    assert [kind for kind, _ in quantized] == ["CONV_2D"]
    assert all(in_layer(name, "encoder") for _, name in quantized)
    # ... Preprocess (its sort included), the pooled features and the head stay float
    for layer in ("preprocess", "head"):
        layer_ops = [(kind, dtypes) for kind, name, dtypes, _ in ops if in_layer(name, layer)]
        assert layer_ops and all(np.int8 not in dtypes for _, dtypes in layer_ops), layer
    kinds = {kind: dtypes for kind, _, dtypes, _ in ops}
    assert kinds["TOPK_V2"][0] == np.float32 and kinds["MEAN"] == [np.float32]
    assert kinds["FULLY_CONNECTED"] == [np.float32] and kinds["SOFTMAX"] == [np.float32]
    # one conversion in (after Preprocess), one out (before the pooling)
    assert [kind for kind, *_ in ops].count("QUANTIZE") == 1
    assert [kind for kind, *_ in ops].count("DEQUANTIZE") == 1
    # per-channel weights: one scale per output channel of the 6-filter conv
    conv_inputs = [inputs for kind, _, _, inputs in ops if kind == "CONV_2D"][0]
    weights = conv_inputs[1]
    assert weights["dtype"] == np.int8 and len(weights["quantization_parameters"]["scales"]) == 6


def test_int8_parity_report_fields(int8_export):
    model, data, split, path = int8_export
    report = json.loads(path.with_suffix(".parity.json").read_text())
    assert report["passed"] and report["mode"] == "int8"
    assert report["size_bytes"] == path.stat().st_size
    ops = report["ops"]
    # what the report says agrees with what LiteRT reads from the file
    listed = _ops_from_interpreter(path)
    assert ops["int8"] == {"CONV_2D": 1}
    assert ops["quantize"] == 1 and ops["dequantize"] == 1
    assert sum(ops["float"].values()) == sum(1 for kind, _, dtypes, _ in listed
                                             if np.int8 not in dtypes and kind not in ("QUANTIZE", "DEQUANTIZE"))
    assert ops["int8_layers"] == [n for n in ops["int8_layers"] if n.startswith("encoder")] != []
    assert any(n.startswith("preprocess") for n in ops["float_layers"])
    assert any(n.startswith("head") for n in ops["float_layers"])
    assert ops["per_channel_weights"] is True and ops["builtins_only"] is True
    assert report["representative_source"].startswith("train split of")
    auc = report["auc"]
    assert auc["split"] == "val" and "kerasssl.metrics.roc_auc" in auc["metric"]
    assert auc["change"] == pytest.approx(auc["tflite"] - auc["keras"], abs=1e-12)


def test_int8_auc_change_is_small_and_computed_as_evaluate_does(int8_export):
    from kerasssl.metrics import roc_auc

    model, data, split, path = int8_export
    auc = json.loads(path.with_suffix(".parity.json").read_text())["auc"]
    val = split.indices(data, "val")
    assert auc["n"] == len(val)
    assert auc["keras"] == pytest.approx(roc_auc(data.labels[val], np.asarray(model(data.images[val], training=False))), abs=1e-12)
    lite = TFLiteRunner(path).predict(data.images[val])
    assert auc["tflite"] == pytest.approx(roc_auc(data.labels[val], lite), abs=1e-12)
    assert auc["keras"] >= 0.8  # a classifier worth quantizing
    assert abs(auc["change"]) <= 0.01


@pytest.mark.slow
def test_a_b0_classifier_with_real_batchnorm_statistics_exports_with_fp32_tflite(tmp_path):
    # With recalibrated BatchNorm a B0's features have their real range, and float32 round-off
    # between kernels reaches ~2e-4 in a probability: both parity checks must let that through.
    import keras

    from kerasssl.batchnorm import recalibrate_batch_norm
    from kerasssl.classifier import build_classifier
    from kerasssl.encoders import build_encoder
    from kerasssl.export import export_model
    from kerasssl.finetune import feature_statistics
    from kerasssl.layers import Preprocess

    keras.utils.set_random_seed(0)
    shape = (32, 32, 3)
    images = raw_images(128, size=32, channels=3, seed=0, nan=False)
    preprocess = Preprocess(nan_policy="median", normalization="asinh")
    encoder = build_encoder("efficientnetb0", shape)
    recalibrate_batch_norm(encoder, images, preprocess=preprocess)
    model = build_classifier(encoder, preprocess, 2, input_shape=shape, mode="linear",
                             feature_stats=feature_statistics(encoder, preprocess, images))
    result = export_model(model, tmp_path / "sm", "lf", tflite="fp32",
                          sample_inputs=raw_images(32, size=32, channels=3, seed=1))
    assert result.parity["passed"] and 1e-6 < result.parity["max_abs_diff"] <= 1e-3, result.parity

"""TFLite export: fp32 / fp16 / int8 through the SavedModel, run with ai_edge_litert,
resizable batch, parity reports, and failures that leave nothing behind."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kerasssl import tflite as tflite_lib
from kerasssl.errors import KerassslError
from kerasssl.tflite import SampleData, TFLiteRunner
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
    samples = SampleData.gather(model, (SIZE, SIZE, 1), sample_inputs=raw_images(12, seed=5))
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

    samples = SampleData.gather(model, (SIZE, SIZE, 1), data=hst_folder, run_dir=run)
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
    samples = SampleData.gather(model, (SIZE, SIZE, 1))  # synthetic: fine for parity only
    assert samples.representative is None
    with pytest.raises(KerassslError, match="calibration"):
        tflite_lib.export_tflite(version_dir, tmp_path / "x.tflite", "int8", model, samples, ["a", "b"])
    assert list(tmp_path.iterdir()) == []


def test_failed_parity_writes_nothing(exported, tmp_path, monkeypatch):
    model, _, version_dir = exported
    real_predict = TFLiteRunner.predict
    # a converter that silently changed the maths by 0.05: over the fp32 tolerance
    monkeypatch.setattr(TFLiteRunner, "predict", lambda self, x, **kw: real_predict(self, x, **kw) * 0.95)
    samples = SampleData.gather(model, (SIZE, SIZE, 1))
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

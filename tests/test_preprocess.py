"""Preprocess layer: parity with the NumPy reference (TF and JAX), dtype, saving."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from kerasssl.config import DataConfig
from kerasssl.data import clean
from kerasssl.errors import KerassslError
from kerasssl.layers.preprocess import Preprocess, load_preprocess, preprocess_to_json

STATS = {"mean": [3.0, 40.0, -1.0], "std": [2.0, 0.0, 5.0]}


def messy_batch(seed=0, shape=(4, 17, 16, 3)):
    """Raw-count-like images with NaN, +-Inf, an odd pixel count, a constant band."""
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, size=shape) + 100.0 * rng.random(shape) ** 8
    x = x.astype(np.float32)
    x[0, 1, 2, 0] = np.nan
    x[0, 5, 5, 0] = np.nan  # band 0 of image 0: even finite count
    x[1, 3, 3, 2] = np.inf
    x[2, :, :5, 1] = -np.inf
    x[3, ..., 1] = 7.0  # constant band: minmax/zscore edge case
    x[1, :10, :, 0] = np.nan  # mostly NaN: the fill value decides median and MAD
    x[2, :2, :, 2] = 0.0  # ties with the zero fill
    return x


def reference(x, policy, norm):
    stats = STATS if norm == "dataset" else None
    return clean.normalize(clean.repair_nonfinite(x, policy), norm, stats)


@pytest.mark.parametrize("norm", clean.NORMALIZATIONS)
@pytest.mark.parametrize("policy", clean.NAN_POLICIES)
def test_parity_with_numpy_reference(policy, norm):
    x = messy_batch()
    kwargs = STATS if norm == "dataset" else {}
    out = keras.ops.convert_to_numpy(Preprocess(policy, norm, **kwargs)(x))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out, reference(x, policy, norm), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("policy", clean.NAN_POLICIES)
def test_asinh_parity_with_ties_and_heavy_nan(policy):
    # Integer pixels (many ties with the median and the fill value), NaN
    # fractions from 0 to 95 %, odd and even pixel counts: every branch of the
    # one-sort order statistics.
    rng = np.random.default_rng(11)
    for shape in [(48, 5, 5, 2), (48, 4, 6, 1)]:
        x = rng.integers(-2, 4, size=shape).astype(np.float32)
        fractions = rng.uniform(0, 0.95, size=(shape[0], 1, 1, shape[3]))
        x[rng.random(shape) < fractions] = np.nan
        out = keras.ops.convert_to_numpy(Preprocess(policy, "asinh")(x))
        np.testing.assert_allclose(out, reference(x, policy, "asinh"), rtol=1e-5, atol=2e-5)


def test_parity_on_jax_backend(tmp_path):
    pytest.importorskip("jax")
    x = messy_batch(seed=5)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import numpy as np, keras
        from kerasssl.layers.preprocess import Preprocess
        x = np.load({str(tmp_path / "x.npy")!r})
        out = {{}}
        for policy in ("zero", "median", "mean"):
            for norm in ("none", "minmax", "zscore", "asinh", "dataset"):
                kw = {STATS!r} if norm == "dataset" else {{}}
                layer = Preprocess(policy, norm, **kw)
                out[policy + "-" + norm] = np.asarray(keras.ops.convert_to_numpy(layer(x)))
        assert keras.backend.backend() == "jax"
        import jax
        jitted = jax.jit(lambda t: Preprocess("median", "asinh")(t))
        out["jit-asinh"] = np.asarray(jitted(x))
        np.savez({str(tmp_path / "out.npz")!r}, **out)
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    for key in out.files:
        policy, norm = key.split("-")
        policy = "median" if policy == "jit" else policy
        np.testing.assert_allclose(out[key], reference(x, policy, norm), rtol=1e-5, atol=2e-5,
                                   err_msg=key)


@pytest.mark.parametrize("norm", ["asinh", "dataset"])
def test_one_image_eager_and_in_dataset_map_equals_the_batched_result(norm):
    import tensorflow as tf

    x = messy_batch(seed=3)
    kwargs = STATS if norm == "dataset" else {}
    layer = Preprocess("median", norm, **kwargs)
    batched = keras.ops.convert_to_numpy(layer(x))
    one = keras.ops.convert_to_numpy(layer(x[1]))  # eager, (H, W, C)
    assert one.shape == x.shape[1:]
    np.testing.assert_allclose(one, batched[1], rtol=1e-6, atol=1e-6)
    mapped = tf.data.Dataset.from_tensor_slices(x).map(Preprocess("median", norm, **kwargs))
    out = np.stack([image.numpy() for image in mapped])  # graph, one image per call
    np.testing.assert_allclose(out, batched, rtol=1e-6, atol=1e-6)
    with pytest.raises(KerassslError, match=r"\(H, W, C\)"):
        layer(x[0, ..., 0])  # 2-D: no band axis


def test_mixed_precision_computes_in_float32():
    # Values near 1000 with fine structure: autocasting the input to float16 first
    # (resolution 0.5 there) would change the result; computing in float32 must not.
    rng = np.random.default_rng(1)
    x = (1000.0 + rng.normal(0, 0.2, size=(2, 8, 8, 1))).astype(np.float32)
    exact = keras.ops.convert_to_numpy(Preprocess("median", "zscore")(x))
    layer = Preprocess("median", "zscore", dtype="mixed_float16")
    out = keras.ops.convert_to_numpy(layer(x))
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, exact.astype(np.float16))


def test_in_a_model_with_unknown_image_size_and_keras_file_round_trip(tmp_path):
    inputs = keras.Input((None, None, 3))
    outputs = Preprocess("mean", "dataset", mean=STATS["mean"], std=STATS["std"])(inputs)
    model = keras.Model(inputs, outputs)
    x = messy_batch(seed=2, shape=(4, 9, 11, 3))
    expected = reference(x, "mean", "dataset")
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    layer = loaded.layers[-1]
    assert isinstance(layer, Preprocess) and layer.std == [2.0, 0.0, 5.0]


def test_config_round_trip_and_json_files(tmp_path):
    layer = Preprocess("zero", "asinh", asinh_softening=2.5, name="pre")
    clone = Preprocess.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    path = tmp_path / "run" / "preprocess.json"
    preprocess_to_json(layer, path)
    assert json.loads(path.read_text()) == {"nan_policy": "zero", "normalization": "asinh",
                                            "mean": None, "std": None, "asinh_softening": 2.5}
    again = load_preprocess(path)
    x = messy_batch(seed=3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again(x)),
                                  keras.ops.convert_to_numpy(layer(x)))
    layer.preprocess_to_json(tmp_path / "b.json")  # method form writes the same settings
    assert (tmp_path / "b.json").read_text() == path.read_text()
    path.write_text('{"nan_policy": "zero", "normalization": "log"}')
    with pytest.raises(KerassslError, match="preprocess.json: unknown normalization"):
        load_preprocess(path)
    with pytest.raises(KerassslError, match="not found"):
        load_preprocess(tmp_path / "missing.json")


def test_from_data_config():
    cfg = DataConfig(nan_policy="mean", normalization="dataset")
    with pytest.raises(KerassslError, match="needs band statistics"):
        Preprocess.from_data_config(cfg)
    layer = Preprocess.from_data_config(cfg, {"mean": np.array([1.0]), "std": np.array([2.0])})
    assert (layer.nan_policy, layer.mean, layer.std) == ("mean", [1.0], [2.0])
    asinh = Preprocess.from_data_config({"nan_policy": "zero", "normalization": "asinh"},
                                        stats=STATS)
    assert asinh.normalization == "asinh" and asinh.mean is None


def test_bad_arguments_are_user_errors():
    with pytest.raises(KerassslError, match="unknown NaN policy"):
        Preprocess(nan_policy="nearest")
    with pytest.raises(KerassslError, match="needs per-band mean and std"):
        Preprocess(normalization="dataset")
    with pytest.raises(KerassslError, match="3 band"):
        Preprocess(normalization="dataset", mean=[0, 0, 0], std=[1, 1, 1])(np.zeros((1, 4, 4, 1)))


def test_arcsinh_matches_numpy_over_the_whole_float32_range():
    from kerasssl.layers.preprocess import _arcsinh

    y = np.concatenate([np.linspace(-50, 50, 2001), [0.0, -0.0, 1e-30, -1e-8, 1e17, -3e18, 3e38]])
    got = keras.ops.convert_to_numpy(_arcsinh(keras.ops.convert_to_tensor(y, "float32")))
    np.testing.assert_allclose(got, np.arcsinh(y.astype(np.float64)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("policy, norm", [("median", "asinh"), ("mean", "zscore")])
def test_converts_to_tflite_builtins_and_matches(policy, norm):
    # Exported models (TF Serving, TFLite) carry this layer: only TFLite builtin ops.
    import tensorflow as tf

    litert = pytest.importorskip("ai_edge_litert.interpreter")
    layer = Preprocess(policy, norm)
    fn = tf.function(lambda t: layer(t), input_signature=[tf.TensorSpec([None, 12, 10, 3])])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], layer)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = litert.Interpreter(model_content=converter.convert())
    x = messy_batch(seed=4, shape=(4, 12, 10, 3))
    x[1, 3, 3, 1] = -np.inf
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, reference(x, policy, norm), rtol=1e-5, atol=2e-5)

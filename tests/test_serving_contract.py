"""The TF Serving contract of an export: the SignatureDefs TF Serving reads, and a
gRPC ``PredictRequest`` (tensorflow-serving-api) answered by the loaded SavedModel.

No model server runs here: the request is built and serialized as a client
would, decoded as the server does (``tf.make_ndarray``), and fed to the same
signature TF Serving would call.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2

from test_export import SIZE, raw_images, shared_export

DOC = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def exported(tmp_path_factory):
    model, _, path = shared_export(tmp_path_factory)
    return model, path


def signature_defs(version_dir):
    """The SignatureDefs in saved_model.pb: exactly what TF Serving serves."""
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(version_dir) / "saved_model.pb").read_bytes())
    assert len(saved.meta_graphs) == 1 and "serve" in saved.meta_graphs[0].meta_info_def.tags
    return saved.meta_graphs[0].signature_def


def serve_request(loaded, request_bytes):
    """What the model server does with a Predict call, minus the network."""
    request = predict_pb2.PredictRequest()
    request.ParseFromString(request_bytes)
    fn = loaded.signatures[request.model_spec.signature_name or "serving_default"]
    inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    outputs = fn(**inputs)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
    return response


def test_signature_defs_match_the_documented_contract(exported):
    _, path = exported
    defs = signature_defs(path)
    assert {"serving_default", "embed"} <= set(defs)
    for name in ("serving_default", "embed"):
        (key, spec), = defs[name].inputs.items()
        assert key == "images" and spec.dtype == tf.float32.as_datatype_enum
        assert [d.size for d in spec.tensor_shape.dim] == [-1, SIZE, SIZE, 1]
        assert defs[name].method_name == "tensorflow/serving/predict"
    assert list(defs["serving_default"].outputs) == ["probabilities"]
    assert [d.size for d in defs["serving_default"].outputs["probabilities"].tensor_shape.dim] == [-1, 2]
    assert list(defs["embed"].outputs) == ["embeddings"]
    if "predict_examples" in defs:
        (key, spec), = defs["predict_examples"].inputs.items()
        assert key == "examples" and spec.dtype == tf.string.as_datatype_enum
        assert list(defs["predict_examples"].outputs) == ["probabilities"]


@pytest.mark.parametrize("signature, output", [("serving_default", "probabilities"), ("embed", "embeddings")])
def test_grpc_predict_request_is_answered_like_the_model(exported, signature, output):
    model, path = exported
    x = raw_images(3, seed=7)  # raw pixels, NaN included, as in the .npy files
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "lens_finder"
    request.model_spec.signature_name = signature
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(x, dtype=tf.float32))
    wire = request.SerializeToString()

    response = serve_request(tf.saved_model.load(str(path)), wire)
    got = tf.make_ndarray(response.outputs[output])
    assert np.all(np.isfinite(got))
    if signature == "serving_default":
        np.testing.assert_allclose(got, np.asarray(model(x, training=False)), atol=1e-6)
        assert got.shape == (3, 2)
    else:
        pre = model.layers[1]
        np.testing.assert_allclose(got, np.asarray(model.get_layer("encoder")(pre(x))), atol=1e-5)


def test_serving_doc_uses_the_exported_names(exported):
    """The README's serving section must name what the export really has."""
    _, path = exported
    text = DOC.read_text()
    defs = signature_defs(path)
    for name in re.findall(r'signature_name["\s:=]+"?(\w+)', text):
        assert name in defs, f"README.md names signature {name!r}, not in the export"
    for key in re.findall(r'inputs\["(\w+)"\]', text):
        assert key == "images" or key == "examples"
    assert "docker run" in text and "model_config_list" in text and ":predict" in text

"""TFLite export of a classifier (fp32 / fp16 / int8) with a parity check.

Conversion goes through the exported SavedModel's ``serving_default`` signature
(``tf.lite.TFLiteConverter.from_saved_model``), TFLite builtin ops only: the
graph must run on a stock LiteRT runtime. The file is run with
``ai_edge_litert`` (the TF interpreter is deprecated), with the batch dimension
resized to the batch at hand.

Parity at export time (written beside the ``.tflite`` as ``<stem>.parity.json``):
max |difference| of the probabilities vs the Keras model on sample inputs;
fp32 must be <= 1e-4 and fp16 <= 1e-2 or the export fails. Every report also
gives the file's size and its op list as read back from the converted model
(which ops compute in int8, which stayed float).

int8 is selective (:func:`quantize_convolutions`): only the layers that hold
the convolutions (the encoder) run in int8, with per-channel weight scales;
``Preprocess`` (NaN repair, medians by sorting, asinh: order statistics and
logs that 8 bits cannot hold) and everything after the encoder (feature
normalisation, head, softmax) stay float32. Calibration uses images of the
run's train split (never val/test), and the report gives the ROC-AUC change
on the val split, computed by :func:`kerasssl.metrics.roc_auc` as
``kerasssl evaluate`` computes it. Which images those are is
:class:`kerasssl.data.samples.SampleData`'s to decide: this module takes its arrays.

Example:
    >>> runner = TFLiteRunner("saved_models/lens_finder/1/lens_finder_fp16.tflite")
    >>> runner.predict(images).shape
    (8, 2)
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from kerasssl.config import TFLITE_MODES
from kerasssl.errors import KerassslError
from kerasssl.models import TFLiteRunner

log = logging.getLogger(__name__)

# Max |probability difference| vs the Keras model that an export may have. fp32 is float32
# round-off between TFLite's and TensorFlow's kernels, which a deep encoder amplifies: a B0
# classifier differed by 1.6e-4 to 6.2e-4 (TF's own eager and graph kernels: up to 5e-4), a
# 3-layer CNN by 7e-7. A conversion bug (layout, preprocessing, NaN repair) is far above 1e-3.
PARITY_TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2}
# |val ROC-AUC change| of an int8 file above which export warns (the goal is <= 0.01).
INT8_AUC_WARNING = 0.01


# -- conversion ----------------------------------------------------------------


def convert(saved_model_dir, mode, representative=None):
    """TFLite flatbuffer bytes of the SavedModel's serving_default, builtins only.

    Args:
        saved_model_dir: an exported version directory.
        mode: "fp32", "fp16" (float16 weights) or "int8" (the encoder's
            convolutions in int8, calibrated on ``representative``; the rest
            float32, see :func:`quantize_convolutions`; float32 in and out).
        representative: raw images (N, H, W, C) for int8 calibration.

    int8 runs in a child process: TF 2.21's quantizer can crash the process
    (segfault) on some graphs/calibration sets, and an export must fail with a
    clear line, not take the caller down.
    """
    if mode not in TFLITE_MODES:  # the variants an export can write (--tflite)
        raise KerassslError(f"unknown TFLite mode {mode!r}")
    if mode == "int8":
        if representative is None or len(representative) == 0:
            raise KerassslError(
                "int8 TFLite needs calibration images: pass the run's data (--data) or sample inputs"
            )
        return _convert_in_child(saved_model_dir, calibration_images(representative))
    return _convert(saved_model_dir, mode)


def _convert(saved_model_dir, mode, calibration=None):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
        # Calibrate only (a float model carrying each tensor's min/max); the
        # quantization itself is chosen op by op in quantize_convolutions, as
        # tf.lite.experimental.QuantizationDebugger does.
        converter._experimental_calibrate_only = True
    try:
        content = converter.convert()
    except Exception as e:  # noqa: BLE001 - the converter raises several types
        missing = unsupported_ops(str(e))
        if missing:
            raise KerassslError(
                f"TFLite {mode}: the model uses ops that TFLite builtins lack: {', '.join(missing)} "
                "(rewrite them with builtin-friendly keras.ops, e.g. asinh as log(x + sqrt(x*x + 1)))"
            ) from None
        raise KerassslError(f"TFLite {mode} conversion failed: {_last_error_line(str(e))}") from None
    return quantize_convolutions(content) if mode == "int8" else content


# Op types whose layer (TFLite name scope) int8 quantizes: the encoder's.
CONVOLUTION_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "TRANSPOSE_CONV")
_QUANTIZED_TYPES = ("INT8", "UINT8", "INT16")


def quantize_convolutions(calibrated):
    """int8 for the encoder (the layers holding convolutions), float32 for every other op.

    Args:
        calibrated: a calibrated float model (``_experimental_calibrate_only``).

    Returns the quantized flatbuffer. An op's layer is the name scope of its
    output tensor, ``<model>/<layer>/...`` (Keras names ops by layer). The ops
    of the layers that hold a convolution are quantized (weights per channel),
    except the ones whose output leaves those layers (the pooled features):
    the head standardises the features, dividing by their spread, which
    magnifies int8 steps (on the demo classifier keeping the pooling float
    halved the mean probability error). Every other op is denylisted, and its
    tensors' calibration ranges are dropped: with a range, the quantizer
    still puts int8 round trips inside denylisted regions (seen around the
    median's sort and gathers, whose padding is +inf). The encoder's input
    keeps its range: it is quantized once, after Preprocess.
    """
    from tensorflow.lite.python import convert as lite_convert
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    op_types = _op_type_names(model)
    int8_layers = {
        _layer_scope(graph.tensors[op.outputs[0]].name)
        for graph in model.subgraphs for op in graph.operators
        if op_types[op.opcodeIndex] in CONVOLUTION_OPS and len(op.outputs)
    } - {None}
    if not int8_layers:
        raise KerassslError(
            "TFLite int8 quantizes the encoder's convolutions and this model has none: use --tflite fp16"
        )
    denylisted = []
    for graph in model.subgraphs:
        in_layers = [bool(len(op.outputs)) and _layer_scope(graph.tensors[op.outputs[0]].name) in int8_layers
                     for op in graph.operators]
        leaves = set(graph.outputs)  # tensors read outside the int8 layers
        for op, inside in zip(graph.operators, in_layers):
            if not inside:
                leaves.update(op.inputs)
        keep_range = set()
        for op, inside in zip(graph.operators, in_layers):
            convolution = op_types[op.opcodeIndex] in CONVOLUTION_OPS
            if inside and (convolution or not leaves.intersection(op.outputs)):
                keep_range.update(i for i in list(op.inputs) + list(op.outputs) if i >= 0)
            else:
                denylisted.extend(graph.tensors[i].name.decode() for i in op.outputs)
        for index, tensor in enumerate(graph.tensors):
            if index not in keep_range:
                tensor.quantization = None
    stripped = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    try:
        return lite_convert.mlir_quantize(stripped, disable_per_channel=False, denylisted_nodes=denylisted)
    except Exception as e:  # noqa: BLE001 - the quantizer raises several types
        raise KerassslError(f"TFLite int8 quantization failed: {_last_error_line(str(e))}") from None


def _layer_scope(tensor_name):
    """``"model_1/tiny_1/conv0_1/Relu;..."`` -> ``"tiny_1"``; None outside a layer."""
    if isinstance(tensor_name, bytes):
        tensor_name = tensor_name.decode()
    parts = tensor_name.split(";")[0].split("/")
    return parts[1] if len(parts) > 2 else None


def _op_type_names(model):
    """Builtin op name ("CONV_2D", ...) of each operator code of a ModelT."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.python import schema_util

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names.get(schema_util.get_builtin_code_from_operator_code(code), "UNKNOWN")
            for code in model.operatorCodes]


def op_summary(content):
    """What the converted model computes in int8 and what stayed float, read from the flatbuffer.

    Returns a dict: ``int8`` / ``float`` (op type -> count; float ops include
    int32/bool index and shape ops), ``quantize`` / ``dequantize`` (counts of
    the conversions between them), ``int8_layers`` / ``float_layers`` (the
    TFLite name scopes, i.e. the Keras layers as the converter named them),
    ``per_channel_weights`` (every int8 convolution / dense weight has one
    scale per output channel; None without any), ``builtins_only``.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    op_types = _op_type_names(model)
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    int8, floats = {}, {}
    int8_layers, float_layers = set(), set()
    conversions = {"QUANTIZE": 0, "DEQUANTIZE": 0}
    per_channel = []
    for graph in model.subgraphs:
        for op in graph.operators:
            kind = op_types[op.opcodeIndex]
            outputs = [graph.tensors[i] for i in op.outputs if i >= 0]
            if kind in conversions:
                conversions[kind] += 1
                continue
            scope = _layer_scope(outputs[0].name) if outputs else None
            if any(type_names.get(t.type) in _QUANTIZED_TYPES for t in outputs):
                int8[kind] = int8.get(kind, 0) + 1
                int8_layers.add(scope)
                if kind in CONVOLUTION_OPS + ("FULLY_CONNECTED",) and len(op.inputs) > 1:
                    scales = graph.tensors[op.inputs[1]].quantization
                    per_channel.append(scales is not None and scales.scale is not None and len(scales.scale) > 1)
            else:
                floats[kind] = floats.get(kind, 0) + 1
                float_layers.add(scope)
    return {
        "int8": dict(sorted(int8.items())),
        "float": dict(sorted(floats.items())),
        "quantize": conversions["QUANTIZE"],
        "dequantize": conversions["DEQUANTIZE"],
        "int8_layers": sorted(s for s in int8_layers if s),
        "float_layers": sorted(s for s in float_layers if s),
        "per_channel_weights": all(per_channel) if per_channel else None,
        "builtins_only": "CUSTOM" not in op_types,
    }


def _convert_in_child(saved_model_dir, calibration):
    """int8 conversion in a fresh Python process; its crash becomes a KerassslError."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kerasssl-int8-") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "calibration.npy", calibration)
        code = (
            "import sys, numpy as np\n"
            "from pathlib import Path\n"
            "from kerasssl.errors import KerassslError\n"
            "from kerasssl.tflite import _convert\n"
            "try:\n"
            "    data = _convert(sys.argv[1], 'int8', np.load(sys.argv[2]))\n"
            "except KerassslError as e:\n"
            "    Path(sys.argv[3] + '.error').write_text(str(e)); sys.exit(3)\n"
            "Path(sys.argv[3]).write_bytes(data)\n"
        )
        out = tmp / "model.tflite"
        proc = subprocess.run(
            [sys.executable, "-c", code, str(saved_model_dir), str(tmp / "calibration.npy"), str(out)],
            capture_output=True, text=True,
        )
        if proc.returncode == 3 and Path(str(out) + ".error").exists():
            raise KerassslError(Path(str(out) + ".error").read_text())
        if proc.returncode != 0 or not out.exists():
            lines = [l for l in proc.stderr.splitlines() if l.startswith("error:") or "Error" in l]
            detail = lines[-1].strip() if lines else f"exit status {proc.returncode}"
            raise KerassslError(f"TFLite int8 conversion crashed in the TFLite quantizer ({detail[:200]})")
        return out.read_bytes()


def calibration_images(images):
    """The representative images given to the int8 calibrator: finite ones only.

    The calibrator records min/max of every tensor. Non-finite pixels make
    those ranges NaN/inf, and in TF 2.21 the quantizer then crashes (segfault);
    images whose NaN pixels were filled with their median crash it too ("scale
    out of expressed type range"), so images with NaN/Inf are left out (the NaN
    path runs in float kernels and the parity check covers it). If every image
    has some, their non-finite pixels are set to 0.
    """
    images = np.asarray(images, dtype=np.float32)
    finite = np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if finite.any():
        return images[finite]
    log.warning("every calibration image has NaN/Inf pixels: calibrating with them set to 0")
    return np.nan_to_num(images, nan=0.0, posinf=0.0, neginf=0.0)


def unsupported_ops(message):
    """TF op names the converter could not lower, parsed from its error text."""
    ops = set()
    for line in message.splitlines():
        match = re.search(r"(?:TF Select ops|Custom ops):\s*(.+)", line)
        if match:
            ops.update(op.strip() for op in match.group(1).split(",") if op.strip())
    return sorted(ops)


def _last_error_line(message):
    lines = [l.strip() for l in message.splitlines() if "error" in l.lower()]
    return (lines[-1] if lines else message.strip().splitlines()[-1] if message.strip() else "unknown error")[:300]


# -- running: kerasssl.models.TFLiteRunner (the one loader owns how each model form runs)


def max_abs_diff(got, want):
    """Max |got - want|; inf where one is finite and the other not.

    A model without NaN repair gives NaN for NaN input in both forms: that
    agrees; only a difference in finiteness (or in value) counts.
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    both = np.isfinite(got) & np.isfinite(want)
    if np.any(np.isfinite(got) != np.isfinite(want)):
        return float("inf")
    return float(np.max(np.abs(got[both] - want[both]), initial=0.0))


# -- export + parity -------------------------------------------------------------


def export_tflite(saved_model_dir, out_path, mode, model, samples, class_names):
    """Convert, check parity against the Keras model, write ``.tflite`` + ``.parity.json``.

    ``samples`` is a :class:`kerasssl.data.samples.SampleData` (its arrays:
    parity images, calibration images, the val split). Raises KerassslError
    (and writes nothing) when fp32/fp16 parity fails. Returns the parity report dict.
    """
    out_path = Path(out_path)
    content = convert(saved_model_dir, mode, samples.representative)
    runner = TFLiteRunner(model_content=content)
    images = samples.parity_images
    keras_probs = np.asarray(model.predict(images, verbose=0, batch_size=64))
    lite_probs = runner.predict(images)
    diff = max_abs_diff(lite_probs, keras_probs)
    report = {
        "file": out_path.name,
        "mode": mode,
        "max_abs_diff": diff,
        "tolerance": PARITY_TOLERANCE.get(mode),
        "n_samples": int(len(images)),
        "samples": samples.source,
        "outputs_finite": bool(np.all(np.isfinite(lite_probs))),
        "keras_outputs_finite": bool(np.all(np.isfinite(keras_probs))),
        "batch_resizable": runner.batch_resizable,
        "size_bytes": len(content),
        "ops": op_summary(content),
        "interpreter": "ai_edge_litert",
    }
    if mode == "int8":
        report["quantization"] = (
            "int8 (per-channel weights) inside the layers holding the convolutions (the encoder), "
            "its output features and every other op float32 (Preprocess, feature normalisation, head)"
        )
        report["representative_images"] = int(len(samples.representative))
        report["representative_source"] = samples.representative_source
        report["calibration_images"] = int(len(calibration_images(samples.representative)))
        report["calibration_note"] = "images with NaN/Inf pixels are left out of int8 calibration"
        report.update(_auc_change(model, runner, samples, class_names))
    tolerance = PARITY_TOLERANCE.get(mode)
    if not report["outputs_finite"] and report["keras_outputs_finite"]:
        raise KerassslError(f"TFLite {mode}: non-finite outputs on the sample inputs ({samples.source})")
    if tolerance is not None and not diff <= tolerance:
        raise KerassslError(
            f"TFLite {mode} parity failed: max |diff| {diff:.3g} > {tolerance:g} vs the Keras model"
        )
    auc = report.get("auc") or {}
    if mode == "int8" and (abs(auc.get("change", 0.0)) > INT8_AUC_WARNING or diff > 0.1):
        # int8 post-training quantisation can hurt a small model a lot: say so
        # loudly (the export still succeeds: the numbers are in the report).
        log.warning(
            "TFLite int8 is far from the Keras model (max |diff| %.3g, val ROC-AUC change %s): "
            "prefer --tflite fp16, or check the int8 model before deploying it",
            diff, f"{auc['change']:+.3f}" if "change" in auc else "not measured",
        )
        report["warning"] = "int8 differs markedly from the Keras model; fp16 is the safer choice"
    report["passed"] = True
    out_path.write_bytes(content)
    out_path.with_suffix(".parity.json").write_text(json.dumps(report, indent=2))
    log.info("wrote %s (max |diff| %.3g vs Keras)", out_path, diff)
    return report


def _auc_change(model, runner, samples, class_names):
    """ROC-AUC of Keras vs int8 TFLite on the run's val split, as ``kerasssl evaluate`` computes it."""
    if samples.val_images is None:
        return {"auc": None, "auc_note": "no training run known: AUC change not measured"}
    from kerasssl.metrics import roc_auc

    labels = np.asarray(samples.val_labels)
    keras_probs = np.asarray(model.predict(samples.val_images, verbose=0, batch_size=64))
    lite_probs = runner.predict(samples.val_images)
    if len(np.unique(labels)) < 2:
        return {"auc": None, "auc_note": "val split has a single class: AUC undefined"}
    if len(np.unique(labels)) < len(class_names):
        return {"auc": None, "auc_note": "val split lacks some classes: macro AUC undefined"}
    kind = ("roc_auc (kerasssl.metrics.roc_auc: positive class label 1, score column 1)"
            if len(class_names) == 2 else "macro one-vs-rest roc_auc (kerasssl.metrics.roc_auc)")
    auc_keras, auc_lite = roc_auc(labels, keras_probs), roc_auc(labels, lite_probs)
    return {
        "auc": {
            "metric": kind,
            "split": "val",
            "n": int(len(labels)),
            "keras": float(auc_keras),
            "tflite": float(auc_lite),
            "change": float(auc_lite - auc_keras),
        },
        "max_abs_diff_val": max_abs_diff(lite_probs, keras_probs),
    }

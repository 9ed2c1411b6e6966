"""Size, latency and accuracy of a classifier's TFLite files: fp32, fp16, int8.

Each mode is written by ``kerasssl.export.export_saved_model(..., tflite=MODE)``
(the path ``kerasssl export --tflite MODE`` takes), so the val ROC-AUC change
is the one its parity report gives (``kerasssl.metrics.roc_auc``, val split
of the run). For comparison the table has one more row, ``int8-all``: the
whole graph quantized by the stock converter (Preprocess included), as
kerasssl did before the int8 export became selective, from the same SavedModel
and the same calibration images.

Latency: the LiteRT interpreter (``ai_edge_litert``), batch 1, ``--threads``
threads, on this CPU; warm-up, then ``--rounds`` rounds in which every file
runs ``--block`` invocations in turn (a busy machine slows all files alike);
median and 90th percentile of the per-invocation times. Test ROC-AUC: the
run's test split, never used for training or calibration.

Default: it trains its own classifier (a few CPU-minutes): simulates
three-band 32 px images (``kerasssl.simulate``), keeps the lenses and
the non-lenses without a look-alike confuser (on the full set, with
confusers, the tiny encoder stays near AUC 0.7; the goal is measured on a
classifier with AUC >= 0.8), and fits a supervised ``tiny`` classifier with
``kerasssl.fit``::

    .venv/bin/python benchmarks/tflite_modes.py --out /tmp/tflite_modes

An existing classifier and its run's data (its run dir holds split.json)::

    .venv/bin/python benchmarks/tflite_modes.py --model RUN/classifier.keras --data DATA --out OUT

End-to-end check at a tiny size (numbers meaningless)::

    .venv/bin/python benchmarks/tflite_modes.py --quick --out /tmp/tflite_quick

Writes OUT/results.json (after each step, so a cut-short run keeps what
finished) and OUT/results.md, and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

FULL = dict(n_lenses=800, n_nonlenses=1600, size=32, epochs=40, rounds=15, block=20)
QUICK = dict(n_lenses=40, n_nonlenses=80, size=16, epochs=2, rounds=2, block=5)
from kerasssl.config import TFLITE_MODES as MODES  # noqa: E402 - one definition of the modes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--model", type=Path, default=None, help="a classifier .keras (default: train one)")
    p.add_argument("--data", type=Path, default=None, help="the model's data (with --model)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="the model's run dir (split.json); default: the model's folder")
    p.add_argument("--quick", action="store_true", help="tiny end-to-end check (numbers meaningless)")
    p.add_argument("--threads", type=int, default=1, help="LiteRT interpreter threads")
    for key, value in FULL.items():
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None, help=f"default {value}")
    args = p.parse_args(argv)
    if (args.model is None) != (args.data is None):
        p.error("--model and --data go together")
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# -- the classifier -------------------------------------------------------------


def make_data(out, args):
    """Simulated three-band set, non-lenses with confusers left out (see the module doc)."""
    from kerasssl.simulate import simulate

    sim, data = out / "sim", out / "data"
    if data.exists():
        return data
    if not sim.exists():
        print(f"simulating {args.n_lenses} lenses + {args.n_nonlenses} non-lenses, three-band "
              f"{args.size}px -> {sim}", flush=True)
        simulate(sim, fmt="three-band", n_lenses=args.n_lenses, n_nonlenses=args.n_nonlenses,
                 size=args.size, seed=0, nan_fraction=0.1)
    tmp = out / "data.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    kept = {"lenses": 0, "nonlenses": 0}
    with open(sim / "metadata.csv") as f:
        for row in csv.DictReader(f):
            if row["label"] == "0" and row["confuser"] != "none":
                continue
            target = tmp / row["filename"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sim / row["filename"], target)
            kept["lenses" if row["label"] == "1" else "nonlenses"] += 1
    os.rename(tmp, data)
    print(f"kept {kept} (non-lenses without a confuser) -> {data}", flush=True)
    return data


def train_classifier(out, data, args):
    from kerasssl.config import RunConfig
    from kerasssl.fit import fit

    run = out / "run"
    if (run / "classifier.keras").exists():
        return run / "classifier.keras", run
    cfg = RunConfig.from_dict({
        "seed": 0,
        "data": {"seed": 0, "normalization": "asinh", "nan_policy": "median",
                 "val_fraction": 0.15, "test_fraction": 0.15},
        "pretrain": {"encoder": "tiny"},
        "finetune": {"mode": "supervised", "epochs": args.epochs, "batch_size": 32,
                     "learning_rate": 3e-3, "class_weight": "balanced", "augment": True, "seed": 0},
        "evaluate": {"split": "test", "bootstrap": 200},
        "export": {"enabled": False},
    })
    print(f"fitting a supervised tiny classifier, {args.epochs} epochs -> {run}", flush=True)
    fit(cfg, data, run)
    return run / "classifier.keras", run


# -- the files --------------------------------------------------------------------


def export_modes(model_path, run_dir, data, out):
    """One export per mode: {mode: (tflite path, parity report, refusal or None)}.

    An export that fails its parity check writes nothing (as for a user); the
    file is then converted from the fp32 export's SavedModel with the same
    converter, so the table still has its size and latency, and says why the
    export refused it.
    """
    from kerasssl import tflite as tflite_lib
    from kerasssl.data.samples import SampleData
    from kerasssl.errors import KerassslError
    from kerasssl.export import export_saved_model, load_keras_model

    base = out / "saved_models"
    shutil.rmtree(base, ignore_errors=True)
    files = {}
    for mode in MODES:
        t = time.perf_counter()
        try:
            version = export_saved_model(model_path, base, "bench", tflite=mode, run_dir=run_dir, data=data)
        except KerassslError as e:
            saved_model = files["fp32"][0].parent
            model = load_keras_model(model_path)
            samples = SampleData.gather(tuple(model.inputs[0].shape[1:]), data=data, run_dir=run_dir)
            path = out / f"bench_{mode}.tflite"
            path.write_bytes(tflite_lib.convert(saved_model, mode, samples.representative))
            files[mode] = (path, None, str(e))
            print(f"export {mode} refused ({e}); converted directly for the table: {path}", flush=True)
            continue
        path = version / f"bench_{mode}.tflite"
        files[mode] = (path, json.loads(path.with_suffix(".parity.json").read_text()), None)
        print(f"exported {mode} in {time.perf_counter() - t:.0f} s: {path}", flush=True)
    return files


def convert_whole_graph_int8(saved_model_dir, calibration, path):
    """The stock converter's int8 of the whole graph (the previous kerasssl behaviour)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=["serving_default"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    path.write_bytes(converter.convert())
    return path


def latencies(paths, image, args):
    """{name: [seconds per invocation]}: batch 1, files interleaved round by round."""
    from ai_edge_litert.interpreter import Interpreter

    runners = {}
    for name, path in paths.items():
        interpreter = Interpreter(model_path=str(path), num_threads=args.threads)
        interpreter.allocate_tensors()
        index = interpreter.get_input_details()[0]["index"]
        interpreter.set_tensor(index, image[None])
        for _ in range(10):
            interpreter.invoke()
        runners[name] = interpreter
    times = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, interpreter in runners.items():
            for _ in range(args.block):
                t = time.perf_counter()
                interpreter.invoke()
                times[name].append(time.perf_counter() - t)
    return times


# -- main ---------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    # Keras's note on the input's dict-vs-tensor structure (harmless here, as in the CLI)
    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
    from kerasssl import models as models_lib
    from kerasssl import tflite as tflite_lib
    from kerasssl.data.load import load_images
    from kerasssl.data.samples import SampleData
    from kerasssl.data.split import Split
    from kerasssl.metrics import roc_auc
    from kerasssl.export import find_run_dir, image_shape_of, load_keras_model
    from kerasssl.rundir import versions

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results = {"argv": sys.argv, "versions": versions(), "threads": args.threads,
               "load_average_start": os.getloadavg(), "rows": {}}
    save = lambda: (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    started = time.perf_counter()

    if args.model is None:
        data = make_data(out, args)
        model_path, run_dir = train_classifier(out, data, args)
    else:
        data, model_path = args.data, args.model
        run_dir = args.run_dir or find_run_dir(model_path)
    if run_dir is None or not (Path(run_dir) / "split.json").exists():
        sys.exit(f"{model_path}: no run dir with split.json (pass --run-dir): val/test unknown")
    results.update(model=str(model_path), data=str(data), run_dir=str(run_dir))

    files = export_modes(model_path, run_dir, data, out)
    model = load_keras_model(model_path)
    image_set = load_images(data)
    split = Split.load(Path(run_dir) / "split.json")
    test = split.indices(image_set, "test")
    test_images, test_labels = image_set.images[test], image_set.labels[test]
    keras_test_auc = roc_auc(test_labels, model.predict(test_images, verbose=0, batch_size=64))
    results["keras_test_auc"] = keras_test_auc
    samples = SampleData.gather(image_shape_of(model), data=data, run_dir=run_dir)
    keras_val = model.predict(samples.val_images, verbose=0, batch_size=64)
    keras_val_auc = roc_auc(samples.val_labels, keras_val)
    results["keras_val_auc"] = keras_val_auc
    whole = convert_whole_graph_int8(files["fp32"][0].parent, tflite_lib.calibration_images(samples.representative),
                                     out / "bench_int8_all.tflite")
    paths = {mode: path for mode, (path, *_) in files.items()}
    paths["int8-all"] = whole
    for name, path in paths.items():
        runner = models_lib.TFLiteRunner(path)
        val_probs = runner.predict(samples.val_images)
        row = {
            "file": str(path),
            "size_bytes": path.stat().st_size,
            "val_auc": roc_auc(samples.val_labels, val_probs),
            "test_auc": roc_auc(test_labels, runner.predict(test_images)),
            "max_abs_diff_val": tflite_lib.max_abs_diff(val_probs, keras_val),
            "ops": tflite_lib.op_summary(path.read_bytes()),
        }
        if name in files:
            _, report, refusal = files[name]
            row["export"] = refusal or "passed"
            if report is not None:  # the export's own report
                row["parity_max_abs_diff"] = report["max_abs_diff"]
                if report.get("auc"):
                    assert abs(report["auc"]["tflite"] - row["val_auc"]) < 1e-9, "report and benchmark disagree"
        else:
            row["export"] = "not an export mode (comparison)"
        row["val_auc_change"] = row["val_auc"] - keras_val_auc
        results["rows"][name] = row
    save()

    print(f"timing batch 1, {args.threads} thread(s), {args.rounds} rounds x {args.block} invocations "
          f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    times = latencies(paths, samples.val_images[0], args)
    for name, values in times.items():
        ms = 1000 * np.asarray(values)
        results["rows"][name].update(latency_ms_median=float(np.median(ms)),
                                     latency_ms_p90=float(np.percentile(ms, 90)),
                                     latency_ms_min=float(ms.min()), latency_n=len(ms))
    results["load_average_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    save()
    table = format_table(results)
    (out / "results.md").write_text(table)
    print(table)
    return results


def format_table(results):
    rows = results["rows"]
    fp32 = rows["fp32"]["size_bytes"]
    lines = [
        "| file | size KiB | vs fp32 | val AUC | val ΔAUC | test AUC | max \\|Δp\\| val | "
        "latency ms median / p90 | int8 ops | float layers | export |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| Keras | | | {results['keras_val_auc']:.4f} | | {results['keras_test_auc']:.4f} | | | | | |",
    ]
    for name, row in rows.items():
        ops = row["ops"]
        int8 = ", ".join(f"{k} {v}" for k, v in ops["int8"].items()) or "-"
        if len(ops["int8"]) > 3:
            int8 = f"{sum(ops['int8'].values())} ops of {len(ops['int8'])} types" + (
                ", the median's sort (TOPK_V2) included" if "TOPK_V2" in ops["int8"] else "")
        latency = (f"{row['latency_ms_median']:.3f} / {row['latency_ms_p90']:.3f}"
                   if "latency_ms_median" in row else "-")
        lines.append(
            f"| {name} | {row['size_bytes'] / 1024:.1f} | {row['size_bytes'] / fp32:.2f} | {row['val_auc']:.4f} | "
            f"{row['val_auc_change']:+.4f} | {row['test_auc']:.4f} | {row['max_abs_diff_val']:.2e} | {latency} | "
            f"{int8} | {', '.join(ops['float_layers']) or '-'} | {row['export'].replace('|', chr(92) + '|')} |")
    lines.append("")
    lines.append(f"LiteRT (ai_edge_litert), batch 1, {results['threads']} thread(s); load average "
                 f"{results['load_average_start'][0]:.1f} at the start, {results['load_average_end'][0]:.1f} "
                 f"at the end; {results['seconds']:.0f} s in all.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

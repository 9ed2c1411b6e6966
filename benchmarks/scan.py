"""Survey scan throughput: `kerasssl scan` images/s vs the model's own batch-inference ceiling.

For each encoder and image size, builds a classifier with the library
(``build_classifier(build_encoder(...))``, untrained: throughput does not depend
on the weights), saves it as ``.keras``, exports the SavedModel and an fp32
``.tflite`` (``export_saved_model``), and writes a survey of N three-band
``(3, S+4, S+4)`` ``.npy`` files. Then, per model kind:

  ceiling : the same batches the scan reads, already in memory (decoded,
            cropped), through the very batch function the scan calls
            (:class:`kerasssl.inference.SurveyModel`): pure inference;
  scan    : :func:`kerasssl.scan.scan_survey` over the folder: listing,
            parallel reads (tf.data), inference, the work file and the sorted
            catalogue; images/s over its streaming time (``wall`` also counts
            the listing fingerprint and writing the catalogue).

ratio = scan / ceiling (goal >= 0.8). Ceiling and scan alternate round by
round so that a busy shared machine slows both alike; figures are medians.
An untimed scan first puts the files in the OS cache (a survey on a cold or
network disk reads slower).

Usage:
    .venv/bin/python benchmarks/scan.py                  # tiny + efficientnetb0, 32 and 64 px
    .venv/bin/python benchmarks/scan.py --quick          # a tiny end-to-end check

Prints a table and writes JSON (``--json``, default
benchmarks/results/scan/results.json), rewritten after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

KINDS = ("keras", "saved_model", "tflite")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny encoder, few images, one round (a smoke run)")
    p.add_argument("--encoders", nargs="+", default=None, help="default: tiny efficientnetb0 (--quick: tiny)")
    p.add_argument("--sizes", nargs="+", type=int, default=[32, 64], help="image sides in pixels")
    p.add_argument("--images", type=int, default=None, help="survey size (default 2048, --quick 256)")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call")
    p.add_argument("--rounds", type=int, default=None, help="ceiling/scan rounds (default 3, --quick 1)")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "scan" / "results.json")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    args.encoders = args.encoders or (["tiny"] if args.quick else ["tiny", "efficientnetb0"])
    args.images = args.images or (256 if args.quick else 2048)
    args.rounds = args.rounds or (1 if args.quick else 3)
    return args


def write_survey(folder, n, size, seed=0):
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    side = size + 4  # stored larger than the model input: the scan crops, as on real cutouts
    for k in range(n):
        image = rng.normal(0.0, 2.0, (3, side, side)).astype(np.float32)
        image[:, side // 2 - 2: side // 2 + 2, side // 2 - 2: side // 2 + 2] += 50.0
        np.save(folder / f"cutout_{k}.npy", image)
    return folder


def build_models(work, encoder, size):
    """{kind: path} for one classifier: .keras, its SavedModel and its fp32 .tflite."""
    from kerasssl.classifier import build_classifier
    from kerasssl.encoders import build_encoder
    from kerasssl.export import export_saved_model
    from kerasssl.layers.preprocess import Preprocess

    run = work / "run"
    run.mkdir(parents=True)
    shape = (size, size, 3)
    model = build_classifier(build_encoder(encoder, shape), Preprocess(), 2, input_shape=shape, mode="supervised")
    model.save(run / "classifier.keras")
    (run / "finetune.json").write_text(json.dumps({"class_names": ["nonlens", "lens"]}))
    (run / "runs.jsonl").write_text(json.dumps({"argv": ["benchmarks/scan.py"]}) + "\n")  # marks a run dir
    version = export_saved_model(run / "classifier.keras", work / "saved_models", "bench", tflite="fp32")
    return {"keras": run / "classifier.keras", "saved_model": version,
            "tflite": next(version.glob("*.tflite"))}


def in_memory_batches(survey, model, batch_size):
    """The scan's batches, read and cropped once: what the ceiling runs on."""
    import numpy as np
    import tensorflow as tf

    from kerasssl.survey import ImageReader, list_survey

    listing = list_survey([survey])
    reader = ImageReader(tuple(model.image_shape))
    images = np.stack([reader.read_file(p) for p in listing.sources[0].paths])
    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    return batches if model.kind == "tflite" else [tf.constant(b) for b in batches]


def time_ceiling(model, batches):
    start = time.perf_counter()
    for batch in batches:
        model.run(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def time_scan(model, survey, out, batch_size):
    from kerasssl.scan import scan_survey

    start = time.perf_counter()
    result = scan_survey(model, [survey], out, batch_size=batch_size, progress=False)
    wall = time.perf_counter() - start
    return result.images_per_second, result.scanned / wall


def main(argv=None):
    args = parse_args(argv)
    import keras
    import tensorflow as tf

    from kerasssl.inference import load_survey_model

    keras.config.disable_interactive_logging()
    tmp = tempfile.TemporaryDirectory(prefix="kerasssl-scan-bench-") if args.work is None else None
    work = Path(tmp.name) if tmp else args.work
    report = {
        "benchmark": "scan images/s vs batch-inference ceiling",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "tensorflow": tf.__version__,
                    "keras": keras.__version__},
        "rows": [],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    header = f"{'encoder':<15}{'size':>5}  {'model':<12}{'ceiling img/s':>14}{'scan img/s':>12}{'wall img/s':>12}{'ratio':>7}"
    print(header)
    print("-" * len(header))
    for encoder in args.encoders:
        for size in args.sizes:
            case = work / f"{encoder}_{size}"
            paths = build_models(case, encoder, size)
            survey = write_survey(case / "survey", args.images, size)
            for kind in KINDS:
                model = load_survey_model(paths[kind])
                batches = in_memory_batches(survey, model, args.batch_size)
                model.run(batches[0])  # trace / allocate once, outside the timings
                time_scan(model, survey, case / f"warmup_{kind}.csv", args.batch_size)  # files into the OS cache
                ceilings, scans, walls = [], [], []
                for r in range(args.rounds):
                    ceilings.append(time_ceiling(model, batches))
                    rate, wall = time_scan(model, survey, case / f"cand_{kind}_{r}.csv", args.batch_size)
                    scans.append(rate)
                    walls.append(wall)
                row = {"encoder": encoder, "size": size, "kind": kind, "images": args.images,
                       "batch_size": args.batch_size, "ceiling_images_per_s": statistics.median(ceilings),
                       "scan_images_per_s": statistics.median(scans), "wall_images_per_s": statistics.median(walls),
                       "rounds": {"ceiling": ceilings, "scan": scans, "wall": walls}}
                row["ratio"] = row["scan_images_per_s"] / row["ceiling_images_per_s"]
                report["rows"].append(row)
                args.json.write_text(json.dumps(report, indent=2))
                print(f"{encoder:<15}{size:>5}  {kind:<12}{row['ceiling_images_per_s']:>14.0f}"
                      f"{row['scan_images_per_s']:>12.0f}{row['wall_images_per_s']:>12.0f}{row['ratio']:>7.2f}",
                      flush=True)
    print(f"\nwrote {args.json}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()

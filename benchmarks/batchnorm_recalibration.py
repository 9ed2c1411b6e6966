"""Recomputed BatchNorm statistics after pretraining (pretrain.recalibrate_batchnorm) against the
moving averages training leaves, on the same pretraining.

Protocol per seed: SimCLR pretraining on the train split, twice with the same seed: once with
``recalibrate_batchnorm: false`` (the encoder keeps Keras' moving averages) and once with
``true`` (recomputed over the train split, :func:`kerasssl.batchnorm.recalibrate_batch_norm`).
The script checks that the two runs' weights agree apart from the BatchNorm statistics, so the
comparison is paired. Then, for each encoder:

- the spread of its features on the test split (inference mode, as ``kerasssl index``
  computes them): the mean per-feature std of the L2-normalised features and the smallest
  cosine similarity between two test images (near 1: every image looks the same);
- a linear probe and a full fine-tune (``finetune.mode``), the epoch with the best val
  ROC-AUC kept, and their test ROC-AUC.

The seed sets the split, the initialisation and the augmentation draws.

Full run (2-core CPU, ~15 minutes with B0):
    .venv/bin/python benchmarks/batchnorm_recalibration.py --out benchmarks/results/batchnorm

End-to-end check (tiny encoder, one seed; numbers meaningless):
    .venv/bin/python benchmarks/batchnorm_recalibration.py --quick --out /tmp/bn_quick
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cell_settings import add_setting_flags, benchmark_parser, fill_settings  # noqa: E402  (benchmarks/cell_settings.py)

ARMS = ("ema", "recalibrated")
MODES = ("linear", "full")
FULL = dict(n_lenses=300, n_nonlenses=200, size=32, encoder="efficientnetb0", pretrain_epochs=10,
            pretrain_batch=64, finetune_epochs=20, finetune_batch=32, seeds=[0, 1, 2])
QUICK = dict(n_lenses=40, n_nonlenses=40, size=32, encoder="tiny", pretrain_epochs=2,
             pretrain_batch=16, finetune_epochs=2, finetune_batch=8, seeds=[0])


def parse_args(argv=None):
    p = benchmark_parser(__doc__, "benchmarks/results/batchnorm", "data, runs, results.json, results.md")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    add_setting_flags(p, FULL)
    args = p.parse_args(argv)
    return fill_settings(args, QUICK if args.quick else FULL)


def config(args, seed, recalibrate):
    from kerasssl.config import RunConfig

    return RunConfig.from_dict({
        "seed": seed,
        "data": {"seed": seed, "nan_policy": "median", "normalization": "asinh"},
        "pretrain": {"method": "simclr", "encoder": args.encoder, "epochs": args.pretrain_epochs,
                     "batch_size": args.pretrain_batch, "knn_monitor": False,
                     "recalibrate_batchnorm": recalibrate},
        "finetune": {"seed": seed, "epochs": args.finetune_epochs, "batch_size": args.finetune_batch,
                     "learning_rate": 3e-3, "encoder_lr_scale": 0.1, "class_weight": "balanced",
                     "augment": True},
        "evaluate": {"split": "test", "bootstrap": 10},  # the CIs are not used here
        "export": {"enabled": False},
    })


def feature_spread(run_dir, image_set, test_idx):
    """(mean per-feature std, smallest cosine) of the encoder's L2-normalised test features."""
    import keras

    from kerasssl.callbacks import extract_features
    from kerasssl.layers.preprocess import load_preprocess

    encoder = keras.saving.load_model(run_dir / "encoder.keras", compile=False)
    preprocess = load_preprocess(run_dir / "preprocess.json")
    features = extract_features(encoder, preprocess, image_set.images[test_idx]).astype(np.float64)
    features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return float(features.std(axis=0).mean()), float((features @ features.T).min())


def weights_apart_from_statistics(a, b):
    """Largest |difference| between two encoders' weights, the BatchNorm moving statistics left out."""
    import keras

    ea = keras.saving.load_model(a / "encoder.keras", compile=False)
    eb = keras.saving.load_model(b / "encoder.keras", compile=False)
    skip = ("moving_mean", "moving_variance")
    pairs = [(wa, wb) for wa, wb in zip(ea.weights, eb.weights) if not wa.path.endswith(skip)]
    return max(float(np.max(np.abs(keras.ops.convert_to_numpy(wa) - keras.ops.convert_to_numpy(wb))))
               for wa, wb in pairs)


def run_seed(args, data, image_set, seed, out):
    from kerasssl.data.split import check_split
    from kerasssl.evaluate import evaluate_run
    from kerasssl.finetune import finetune
    from kerasssl.pretrain import pretrain

    cell = {"seed": seed, "arms": {}}
    runs = {}
    for arm in ARMS:
        run_dir = out / "runs" / f"seed{seed}" / arm
        if run_dir.exists():
            shutil.rmtree(run_dir)  # always fresh: no stale checkpoint resumes
        cfg = config(args, seed, recalibrate=arm == "recalibrated")
        started = time.perf_counter()
        pretrain(cfg, data, run_dir, verbose=0, image_set=image_set)
        result = {"pretrain_seconds": time.perf_counter() - started}
        split = check_split(run_dir, image_set, cfg.data)
        result["feature_std"], result["min_cosine"] = feature_spread(run_dir, image_set,
                                                                     split.indices(image_set, "test"))
        for mode in args.modes:
            record = finetune(cfg, data, run_dir, mode=mode, output=run_dir / f"classifier_{mode}.keras",
                              patience=None, image_set=image_set)
            report = evaluate_run(record["model"], data, run_dir, split="test", cfg=cfg,
                                  report_path=run_dir / f"report_{mode}.json", image_set=image_set)
            result[f"{mode}_roc_auc"] = float(report["roc_auc"])
            result["n_test"] = int(report["n_test"])
        cell["arms"][arm] = result
        runs[arm] = run_dir
        print(f"seed {seed} {arm:12s} " + " ".join(f"{k} {v:.4g}" for k, v in result.items()), flush=True)
    cell["max_weight_difference"] = weights_apart_from_statistics(*(runs[a] for a in ARMS))
    return cell


def summarise(cells, modes):
    rows = {}
    for arm in ARMS:
        for key in ["feature_std", "min_cosine"] + [f"{m}_roc_auc" for m in modes]:
            values = np.array([c["arms"][arm][key] for c in cells])
            rows.setdefault(key, {})[arm] = {"mean": float(values.mean()), "std": float(values.std(ddof=0)),
                                             "values": values.tolist()}
    for key in rows:
        diff = np.array([c["arms"]["recalibrated"][key] - c["arms"]["ema"][key] for c in cells])
        rows[key]["paired_difference"] = {"mean": float(diff.mean()), "values": diff.tolist()}
    return rows


def markdown(rows, meta):
    lines = [f"# BatchNorm recalibration ({meta['setup']})", "",
             "| | moving averages (EMA) | recomputed | recomputed - EMA (paired, per seed) |",
             "|---|---|---|---|"]
    for key, row in rows.items():
        cells = [f"{row[a]['mean']:.4g} ± {row[a]['std']:.2g}" for a in ARMS]
        diffs = ", ".join(f"{d:+.3g}" for d in row["paired_difference"]["values"])
        lines.append(f"| {key} | {cells[0]} | {cells[1]} | {row['paired_difference']['mean']:+.3g} ({diffs}) |")
    lines += ["", f"Seeds {meta['seeds']}; {meta['n_test']} test images each; largest weight difference "
                  f"between the paired runs apart from BatchNorm statistics: {meta['max_weight_difference']:.3g}; "
                  f"{meta['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    from kerasssl.data.load import load_images

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        from kerasssl.simulate import simulate

        data = out / "data"
        if not data.exists():
            simulate(data, fmt="three-band", n_lenses=args.n_lenses, n_nonlenses=args.n_nonlenses,
                     size=args.size, seed=1234)
    started = time.perf_counter()
    image_set = load_images(data, **config(args, 0, True).data.read_options())
    cells = [run_seed(args, data, image_set, seed, out) for seed in args.seeds]
    rows = summarise(cells, args.modes)
    meta = {"setup": f"SimCLR {args.encoder}, {args.pretrain_epochs} epochs at batch {args.pretrain_batch} on the "
                     f"train split of {len(image_set.images)} images {args.size}px; fine-tune "
                     f"{args.finetune_epochs} epochs",
            "seeds": args.seeds, "n_test": cells[0]["arms"]["ema"]["n_test"],
            "max_weight_difference": max(c["max_weight_difference"] for c in cells),
            "seconds": time.perf_counter() - started, "args": {k: str(v) for k, v in vars(args).items()}}
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": rows, "cells": cells}, indent=2))
    (out / "results.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()

"""Does pretraining learn? Linear probe on the frozen pretrained encoder vs the same
probe on a randomly initialised encoder of the same architecture.

Protocol: simulated three-band lens / non-lens images (``kerasssl simulate``),
one stratified split; self-supervised pretraining on the TRAIN split's images
(labels unused); then, for both encoders, frozen features
``encoder(Preprocess(x))`` -> standardised -> logistic regression fitted on the
train split's labels, ROC-AUC on the held-out TEST split (never seen before).
The random encoder is built by the same ``build_encoder`` call with the same
seed as the pretrained one's initialisation.

Run (2-core CPU, see the issue-4 note for the numbers):
    .venv/bin/python benchmarks/pretrain_probe.py --out /tmp/pretrain_probe \\
        --n-lenses 300 --n-nonlenses 300 --size 32 --encoder tiny --method simclr --epochs 15

Prints one JSON object (also written to OUT/results.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (data/, run/, results.json)")
    p.add_argument("--data", type=Path, default=None, help="existing data folder (default: simulate into OUT/data)")
    p.add_argument("--n-lenses", type=int, default=300)
    p.add_argument("--n-nonlenses", type=int, default=300)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--encoder", default="tiny")
    p.add_argument("--method", default="simclr")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--precision", default="float32")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def linear_probe_auc(encoder, preprocess, train_x, train_y, test_x, test_y):
    """ROC-AUC on test of a logistic regression on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from kerasssl.callbacks import extract_features

    f_train = extract_features(encoder, preprocess, train_x)
    f_test = extract_features(encoder, preprocess, test_x)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    probe.fit(f_train, train_y)
    return float(roc_auc_score(test_y, probe.predict_proba(f_test)[:, 1]))


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = args.data
    if data is None:
        from kerasssl.simulate import simulate

        data = args.out / "data"
        if not data.exists():
            simulate(data, fmt="three-band", n_lenses=args.n_lenses, n_nonlenses=args.n_nonlenses,
                     size=args.size, seed=args.seed)
    t_sim = time.perf_counter() - t0

    import keras

    from kerasssl.config import RunConfig
    from kerasssl.data.load import load_images
    from kerasssl.data.split import Split
    from kerasssl.encoders import build_encoder
    from kerasssl.layers.preprocess import load_preprocess
    from kerasssl.pretrain import pretrain

    cfg = RunConfig.from_dict({
        "seed": args.seed,
        "data": {"image_size": args.size, "seed": args.seed},
        "pretrain": {"method": args.method, "encoder": args.encoder, "epochs": args.epochs,
                     "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                     "precision": args.precision},
    })
    run = args.out / "run"
    t1 = time.perf_counter()
    history = pretrain(cfg, data, run, resume=(run / "checkpoints" / "latest.json").exists(), verbose=2)
    t_pretrain = time.perf_counter() - t1

    keras.mixed_precision.set_dtype_policy("float32")
    images = load_images(data, image_size=args.size)
    split = Split.load(run / "split.json")
    tr, te = split.indices(images, "train"), split.indices(images, "test")
    preprocess = load_preprocess(run / "preprocess.json")
    pretrained = keras.saving.load_model(run / "encoder.keras", compile=False)
    keras.utils.set_random_seed(args.seed)  # the pretraining's initialisation seed
    random_init = build_encoder(args.encoder, pretrained.input_shape[1:])
    xy = (images.images[tr], images.labels[tr], images.images[te], images.labels[te])
    auc_pre = linear_probe_auc(pretrained, preprocess, *xy)
    auc_rand = linear_probe_auc(random_init, preprocess, *xy)
    result = {
        "data": str(data), "n_images": len(images), "n_train": len(tr), "n_test": len(te),
        "size": args.size, "encoder": args.encoder, "method": args.method, "epochs": args.epochs,
        "batch_size": args.batch_size, "precision": args.precision,
        "pretrain_loss_first_last": [history["loss"][0], history["loss"][-1]],
        "val_knn_auc_last": (history.get("val_knn_auc") or [None])[-1],
        "linear_probe_test_auc_pretrained": auc_pre,
        "linear_probe_test_auc_random_init": auc_rand,
        "pretrained_beats_random": auc_pre > auc_rand,
        "seconds": {"simulate": round(t_sim, 1), "pretrain": round(t_pretrain, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Streaming pretraining on an unlabeled pool: memory bounded by the buffers, not the data.

Two measurements (issue 14):

1. **Peak RSS** of ``kerasssl pretrain --unlabeled POOL`` (tiny encoder, 32x32x3,
   fixed ``--steps-per-epoch``) on a simulated pool of 10 k and of 100 k images,
   each run in its own subprocess, read with ``os.wait4`` (that child's
   ``ru_maxrss``). Goal: within 15 % of each other. The run includes the pool's
   content pass (every image read and fingerprinted once before training),
   timed on its own in part 2.
2. **The input pipeline against the train step**: images/s that
   ``kerasssl.data.poolstream.make_pretraining_dataset`` delivers alone (folder
   pool; and a TFRecord copy of the smallest pool), against images/s that the
   SimCLR train step consumes (tiny encoder, same batch, in-memory batches).
   Goal: >= 10x on the TF backend.

Pools come from ``kerasssl.simulate.simulate_pool`` (lenstronomy; 5 % lenses)
and are cached in ``benchmarks/results/pool_memory/data/`` (git-ignored):
simulating 100 k images takes minutes, once. Results are written as they come
to ``benchmarks/results/pool_memory/results.json`` (``--quick``: ``results-quick.json``).

Usage:
    .venv/bin/python benchmarks/pool_memory.py                 # 10k and 100k, as reported
    .venv/bin/python benchmarks/pool_memory.py --quick         # a smoke run (300 and 1500 images)
    .venv/bin/python benchmarks/pool_memory.py --sizes 10000 100000 --steps 100 --workers 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "pool_memory"
SIZE = 32


def pool_dir(data_dir: Path, n: int, seed: int) -> Path:
    return data_dir / f"pool_{n}_s{SIZE}_seed{seed}"


def ensure_pool(data_dir: Path, n: int, seed: int, workers: int) -> Path:
    """The cached simulated pool of ``n`` images (simulated once)."""
    from kerasssl.simulate import simulate_pool

    out = pool_dir(data_dir, n, seed)
    if (out / "metadata.csv").exists():
        return out
    data_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    simulate_pool(out, n=n, lens_fraction=0.05, size=SIZE, seed=seed, workers=workers)
    print(f"  simulated {n} pool images in {time.perf_counter() - start:.0f} s -> {out}", flush=True)
    return out


def ensure_shards(pool: Path, shards: int = 8) -> Path:
    from kerasssl.data.pool import convert_pool

    out = pool.with_name(pool.name + "_rec")
    if not (out / "manifest.json").exists():
        convert_pool(pool, out, shards=shards, progress=False)
    return out


def peak_rss_of_pretraining(pool: Path, run_dir: Path, steps: int, batch: int) -> dict:
    """Run ``kerasssl pretrain --unlabeled POOL`` in a child; its own peak RSS (os.wait4)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    argv = [sys.executable, "-m", "kerasssl", "pretrain", "--unlabeled", str(pool), "--run-dir", str(run_dir),
            "--encoder", "tiny", "--image-size", str(SIZE), "--epochs", "1", "--steps-per-epoch", str(steps),
            "--batch-size", str(batch), "--seed", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"pretrain on {pool} failed ({child.returncode}):\n{output[-2000:]}")
    # Linux reports ru_maxrss in KiB.
    return {"pool": str(pool), "steps": steps, "batch": batch, "seconds": round(seconds, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def plan(pool, seed=0):
    """The pool after listing, headers, the content pass (as pretrain does it), timed."""
    from kerasssl.config import RunConfig
    from kerasssl.poolplan import plan_pools

    cfg = RunConfig.from_dict({"data": {"image_size": SIZE}, "pretrain": {"unlabeled": [str(pool)]},
                               "seed": seed})
    start = time.perf_counter()
    pools = plan_pools(cfg, "/nonexistent-run", progress=lambda line: None)
    return pools, time.perf_counter() - start


def pipeline_rate(scans, batch: int, batches: int) -> float:
    """Images/s the pretraining stream delivers alone (after a warm-up)."""
    from kerasssl.data.poolstream import make_pretraining_dataset

    ds = make_pretraining_dataset(scans, batch_size=batch, seed=0, image_size=SIZE)
    it = iter(ds)
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def step_rate(image_shape, batch: int, steps: int) -> float:
    """Images/s the SimCLR train step (tiny encoder) consumes from in-memory batches."""
    import keras
    import numpy as np

    from kerasssl.config import RunConfig
    from kerasssl.data.pipeline import make_dataset
    from kerasssl.layers.preprocess import Preprocess
    from kerasssl.pretrain import build_pretraining_model

    cfg = RunConfig.from_dict({"pretrain": {"method": "simclr", "encoder": "tiny", "epochs": 2,
                                            "batch_size": batch, "jit_compile": "auto"}})
    images = np.random.default_rng(0).normal(size=(4 * batch,) + tuple(image_shape)).astype("float32")
    keras.utils.set_random_seed(0)
    model = build_pretraining_model(cfg, tuple(image_shape), Preprocess(dtype="float32"), steps_per_epoch=steps)
    ds = make_dataset(images, batch_size=batch, seed=0, repeat=True, drop_remainder=True)
    times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(ds, epochs=2, steps_per_epoch=steps, verbose=0, callbacks=[EpochTimer()])
    return steps * batch / times[-1]  # the second epoch: traced and warm


def save(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (results["file"] + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out / results["file"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--steps", type=int, default=60, help="--steps-per-epoch of each pretraining run")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="simulation processes (the output does not depend on it)")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 and 1500 images, few steps")
    parser.add_argument("--out", type=Path, default=OUT, help="results and run directories")
    parser.add_argument("--data-dir", type=Path, default=None, help="pool cache (default OUT/data)")
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or args.out / "data"
    if args.quick:
        args.sizes, args.steps = [300, 1500], 5

    # A smoke run must not overwrite the reported numbers.
    results = {"file": "results-quick.json" if args.quick else "results.json", "sizes": args.sizes, "steps": args.steps, "batch": args.batch, "image": [SIZE, SIZE, 3],
               "rss": [], "pipeline": {}}
    print(f"pools of {args.sizes} simulated {SIZE}x{SIZE}x3 images; pretrain tiny/simclr, "
          f"{args.steps} steps of batch {args.batch}", flush=True)
    pools = [ensure_pool(args.data_dir, n, args.seed, args.workers) for n in args.sizes]

    print("\n1. peak RSS of `kerasssl pretrain --unlabeled POOL` (own subprocess each)")
    for n, pool in zip(args.sizes, pools):
        row = peak_rss_of_pretraining(pool, args.out / "runs" / f"rss_{n}", args.steps, args.batch)
        row["n_images"] = n
        results["rss"].append(row)
        save(results, args.out)
        print(f"  {n:>9} images: peak RSS {row['peak_rss_mib']:8.1f} MiB, run {row['seconds']:6.1f} s", flush=True)
    low, high = (min(r["peak_rss_mib"] for r in results["rss"]), max(r["peak_rss_mib"] for r in results["rss"]))
    results["rss_spread"] = round(high / low - 1, 4)
    verdict = "met" if results["rss_spread"] <= 0.15 else "NOT met"
    print(f"  spread {100 * results['rss_spread']:.1f} % (goal within 15 %: {verdict})")

    print("\n2. input pipeline alone vs the train step's consumption (images/s)")
    batches = 20 if args.quick else 200
    largest, smallest = pools[-1], pools[0]
    scans, seconds = plan(largest)
    results["content_pass"] = {"n_images": args.sizes[-1], "seconds": round(seconds, 1),
                               "images_per_s": round(args.sizes[-1] / seconds, 1)}
    print(f"  content pass (headers, read, fingerprint) over {args.sizes[-1]} files: {seconds:.1f} s "
          f"({args.sizes[-1] / seconds:.0f} images/s)", flush=True)
    folder_rate = pipeline_rate(scans.scans, args.batch, batches)
    shard_plan, _ = plan(ensure_shards(smallest))
    shard_rate = pipeline_rate(shard_plan.scans, args.batch, batches)
    consumed = step_rate(scans.image_shape, args.batch, 10 if args.quick else 50)
    results["pipeline"] = {"folder_pool_images_per_s": round(folder_rate, 1),
                           "tfrecord_pool_images_per_s": round(shard_rate, 1),
                           "train_step_images_per_s": round(consumed, 1),
                           "folder_ratio": round(folder_rate / consumed, 2),
                           "tfrecord_ratio": round(shard_rate / consumed, 2)}
    save(results, args.out)
    for name, rate in (("folder pool", folder_rate), ("TFRecord pool", shard_rate)):
        ratio = rate / consumed
        print(f"  {name:13}: {rate:9.0f} images/s = {ratio:5.1f}x the step's {consumed:.0f} images/s "
              f"(goal >= 10x: {'met' if ratio >= 10 else 'NOT met'})")
    print(f"\nresults -> {args.out / results['file']}")
    return results


if __name__ == "__main__":
    main()

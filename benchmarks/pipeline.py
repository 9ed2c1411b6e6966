"""Throughput of the input side: tf.data pipeline, loader, and the Preprocess layer.

Prints images/s for

1. ``make_dataset`` alone (shuffle + repeat + batch 64 + prefetch) at 64x64x3
   and 64x64x1: what training can draw at most from in-memory data;
2. ``load_images`` on a folder of synthetic ``.npy`` files (3, 64, 64) and,
   with cropping, (3, 239, 239) -> 224 as in the DeepLense 3-band set (files
   just written, so the OS page cache is warm: disk speed not included);
3. the in-graph ``Preprocess`` layer (median repair + asinh, the default),
   batch 64, in a tf.function on the CPU, for reference against a training step.

Usage:
    .venv/bin/python benchmarks/pipeline.py            # the reported sizes
    .venv/bin/python benchmarks/pipeline.py --quick    # a smoke run
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def bench_pipeline(shape, n_images, batch_size, n_batches):
    from kerasssl.data.pipeline import make_dataset

    rng = np.random.default_rng(0)
    images = rng.normal(size=(n_images,) + shape).astype(np.float32)
    labels = rng.integers(0, 2, size=n_images)
    ds = make_dataset(images, labels, batch_size=batch_size, seed=0, repeat=True)
    it = iter(ds)
    for _ in range(10):  # warm-up: tracing, autotune
        next(it)
    start = time.perf_counter()
    for _ in range(n_batches):
        x, _ = next(it)
    elapsed = time.perf_counter() - start
    return n_batches * batch_size / elapsed


def bench_loader(n_files, stored_shape, image_size, tmp):
    from kerasssl.data.load import load_images

    root = Path(tmp) / f"load_{'x'.join(map(str, stored_shape))}"
    rng = np.random.default_rng(1)
    for k, name in enumerate(("lenses", "nonlenses")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(n_files // 2):
            image = rng.normal(size=stored_shape).astype(np.float32)
            np.save(folder / f"{name}_{i}.npy", image)
    start = time.perf_counter()
    data = load_images(root, image_size=image_size)
    elapsed = time.perf_counter() - start
    stored_mb = n_files * np.prod(stored_shape) * 4 / 1e6
    return len(data) / elapsed, stored_mb / elapsed, data.images.shape


def bench_preprocess(shape, batch_size, n_batches):
    import tensorflow as tf

    from kerasssl.layers.preprocess import Preprocess

    layer = Preprocess("median", "asinh")
    run = tf.function(layer)  # a graph, as inside model.fit
    x = np.random.default_rng(2).normal(size=(batch_size,) + shape).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    x = tf.constant(x)
    run(x).numpy()
    start = time.perf_counter()
    for _ in range(n_batches):
        out = run(x)
    out.numpy()
    return n_batches * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args(argv)
    n_images, n_batches = (512, 20) if args.quick else (4096, 300)
    n_small, n_big = (40, 10) if args.quick else (2000, 300)

    print(f"# 2-core CPU unless stated; python {sys.version.split()[0]}")
    for shape in [(64, 64, 3), (64, 64, 1)]:
        rate = bench_pipeline(shape, n_images, 64, n_batches)
        print(f"make_dataset  {'x'.join(map(str, shape))}  batch 64  {rate:12,.0f} images/s")
    with tempfile.TemporaryDirectory() as tmp:
        rate, mb, out_shape = bench_loader(n_small, (3, 64, 64), None, tmp)
        print(f"load_images   {n_small} x (3,64,64) .npy        {rate:10,.0f} images/s "
              f"({mb:,.0f} MB/s) -> {out_shape}")
        rate, mb, out_shape = bench_loader(n_big, (3, 239, 239), 224, tmp)
        print(f"load_images   {n_big} x (3,239,239) crop 224   {rate:10,.0f} images/s "
              f"({mb:,.0f} MB/s) -> {out_shape}")
    for shape in [(64, 64, 3), (64, 64, 1)]:
        rate = bench_preprocess(shape, 64, 5 if args.quick else 30)
        print(f"Preprocess    {'x'.join(map(str, shape))}  median+asinh batch 64  "
              f"{rate:10,.0f} images/s (tf.function, CPU)")


if __name__ == "__main__":
    main()

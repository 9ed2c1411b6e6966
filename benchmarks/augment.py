"""Images/s of kerasssl's flip + rotation + blur vs the stock Keras layers doing the same.

Both pipelines flip (left-right and up-down), rotate by up to +-14.4 degrees
with reflect fill and bilinear sampling, and blur with a 7-tap Gaussian of
sigma 0.5..1.0 (the stock blur's sigma cannot exceed 1). The stock blur
clips to `value_range` (set wide here so it keeps the data) and draws one
sigma per batch; kerasssl draws one per image. Timings alternate the two
pipelines so machine load hits both alike; the median of the runs is shown.

It also says whether `jit_compile=True` is really used: Keras turns it off
for a model whose layers do not support XLA (stock RandomRotation on TF),
and `tf.function(jit_compile=True)` either compiles or raises.

With ``--suite simclr`` it times instead what one SimCLR training step's
augmentation costs (throughput.py's variants b and c without the encoder):
SimCLR's default view with rotation and crop fused into one resample (what
the views build), the same view with the two resampled in turn (before the
fusion), the stock Keras view of throughput.py's variant (c), and each
stage of the kerasssl view on its own, on 128 images (two views of a batch
of 64) at 64x64x1, alternating, median of ``--repeats``.

Usage:
    .venv/bin/python benchmarks/augment.py                      # TF, 64x64x3 and 128x128x1
    .venv/bin/python benchmarks/augment.py --suite simclr --repeats 21
    .venv/bin/python benchmarks/augment.py --backend jax        # jax.jit of stateless calls
    .venv/bin/python benchmarks/augment.py --shapes 128x128x1 --repeats 9 --json out.json
"""

import argparse
import json
import os
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow")
    parser.add_argument("--suite", choices=("flip-rotation-blur", "simclr"),
                        default="flip-rotation-blur",
                        help="what to time: the three-layer comparison, or SimCLR's views")
    parser.add_argument("--shapes", default=None,
                        help="comma-separated HxWxC image shapes (default 64x64x3,128x128x1; "
                             "simclr: 64x64x1)")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per call (default 256; simclr: 128, two views of 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per pipeline")
    parser.add_argument("--no-layers", action="store_true",
                        help="skip the per-layer timings (pipelines only)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    simclr = args.suite == "simclr"
    if args.shapes is None:
        args.shapes = "64x64x1" if simclr else "64x64x3,128x128x1"
    if args.batch is None:
        args.batch = 128 if simclr else 256
    return args


ROTATION_FACTOR = 0.04  # +-14.4 degrees
SIGMA = (0.5, 1.0)
KERNEL = 7


def kerasssl_layers():
    import kerasssl.layers as L

    return [
        ("flip", L.RandomFlip("horizontal_and_vertical", seed=1)),
        ("rotation", L.RandomRotation(ROTATION_FACTOR, fill_mode="reflect", seed=2)),
        ("blur", L.RandomGaussianBlur(sigma=SIGMA, kernel_size=KERNEL, seed=3)),
    ]


def stock_layers():
    import keras

    return [
        ("flip", keras.layers.RandomFlip("horizontal_and_vertical", seed=1)),
        ("rotation", keras.layers.RandomRotation(ROTATION_FACTOR, fill_mode="reflect",
                                                 interpolation="bilinear", seed=2)),
        ("blur", keras.layers.RandomGaussianBlur(factor=(1.0, 1.0), kernel_size=KERNEL,
                                                 sigma=SIGMA, value_range=(-1e30, 1e30),
                                                 seed=3)),
    ]


def simclr_layers(fuse_resampling):
    """SimCLR's default view as named layers: rotation and crop fused, or in turn."""
    from kerasssl.layers.views import SYMMETRIC, build_view_pipeline, view_config

    view = build_view_pipeline(view_config(SYMMETRIC), seed=0,
                               fuse_resampling=fuse_resampling)
    return [(layer.name.split("_", 1)[-1], layer) for layer in view.layers]


def stock_simclr_layers():
    """throughput.py's variant (c): the stock Keras layers nearest SimCLR's view."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from throughput import stock_view

    return [(layer.name, layer) for layer in stock_view(0).layers]


def simclr_runners(shape, backend, per_stage):
    runners = {"kerasssl view (fused)": make_runner(simclr_layers(True), shape, backend),
               "kerasssl view (two resamples)": make_runner(simclr_layers(False), shape, backend)}
    if backend == "tensorflow":
        runners["stock view (c)"] = make_runner(stock_simclr_layers(), shape, backend)
    if per_stage:
        stages = dict(simclr_layers(True))
        stages.update(simclr_layers(False))
        for name, layer in stages.items():
            runners[f"  stage {name}"] = make_runner([(name, layer)], shape, backend)
    return runners


def make_runner(layers, shape, backend):
    """A function batch -> augmented batch, graph-compiled without XLA on TF, jitted on JAX."""
    import keras

    inputs = keras.Input(shape)
    x = inputs
    for _, layer in layers:
        x = layer(x, training=True)
    model = keras.Model(inputs, x)
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda batch: model(batch, training=True))
        return lambda batch: fn(batch).numpy()
    import jax

    @jax.jit
    def step(trainable, non_trainable, batch):
        return model.stateless_call(trainable, non_trainable, batch, training=True)

    state = {"trainable": [v.value for v in model.trainable_variables],
             "non_trainable": [v.value for v in model.non_trainable_variables]}

    def run(batch):
        out, state["non_trainable"] = step(state["trainable"], state["non_trainable"], batch)
        return jax.block_until_ready(out)

    return run


def time_alternating(runners, batch, repeats):
    """Median seconds per batch of each runner, run in turn so load hits all alike."""
    for run in runners.values():  # trace / compile, then one warm call
        run(batch)
        run(batch)
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run(batch)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def xla_report(shape):
    """Whether each TF pipeline really runs under XLA."""
    import keras
    import numpy as np
    import tensorflow as tf

    report = {}
    small = np.random.default_rng(0).normal(size=(4,) + shape).astype("float32")
    for name, factory in (("kerasssl", kerasssl_layers), ("stock", stock_layers)):
        layers = factory()
        inputs = keras.Input(shape)
        x = inputs
        for _, layer in layers:
            x = layer(x, training=True)
        model = keras.Model(inputs, x)
        model.compile(loss="mse", jit_compile=True)
        entry = {"model.jit_compile after compile(jit_compile=True)": bool(model.jit_compile)}
        try:
            tf.function(lambda b: model(b, training=True), jit_compile=True)(small)
            entry["tf.function(jit_compile=True)"] = "compiles"
        except Exception as error:  # the op has no XLA kernel: report, do not crash
            first = str(error).strip().splitlines()[0][:160]
            entry["tf.function(jit_compile=True)"] = f"fails: {type(error).__name__}: {first}"
        report[name] = entry
    return report


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    if args.backend == "jax":
        import jax

        device = str(jax.devices()[0])
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        device = f"GPU ({len(gpus)})" if gpus else f"CPU ({os.cpu_count()} cores)"
    print(f"backend={keras.backend.backend()} device={device} batch={args.batch} "
          f"keras={keras.__version__}", flush=True)

    results = {"backend": args.backend, "suite": args.suite, "device": device,
               "batch": args.batch, "shapes": {}}
    for text in args.shapes.split(","):
        shape = tuple(int(v) for v in text.lower().split("x"))
        batch = np.random.default_rng(0).normal(0, 1, size=(args.batch,) + shape)
        batch = keras.ops.convert_to_tensor(batch.astype("float32"))
        if args.suite == "simclr":
            runners = simclr_runners(shape, args.backend, not args.no_layers)
            baseline = "kerasssl view (fused)"
            ratios = {"speedup_fused_vs_two_resamples": "kerasssl view (two resamples)",
                      "speedup_fused_vs_stock": "stock view (c)"}
            what = "SimCLR view"
        else:
            ours, stock = kerasssl_layers(), stock_layers()
            runners = {"kerasssl": make_runner(ours, shape, args.backend),
                       "stock": make_runner(stock, shape, args.backend)}
            if not args.no_layers:
                for (name, a), (_, b) in zip(kerasssl_layers(), stock_layers()):
                    runners[f"kerasssl {name}"] = make_runner([(name, a)], shape, args.backend)
                    runners[f"stock {name}"] = make_runner([(name, b)], shape, args.backend)
            baseline = "kerasssl"
            ratios = {"speedup_kerasssl_vs_stock": "stock"}
            what = "flip + rotation + blur"
        seconds = time_alternating(runners, batch, args.repeats)
        entry = {name: {"ms_per_batch": round(1000 * s, 1),
                        "images_per_s": round(args.batch / s, 1)}
                 for name, s in seconds.items()}
        print(f"\n{text}  ({what}, batch {args.batch}, median of {args.repeats})")
        for name, s in seconds.items():
            print(f"  {name:32s} {1000 * s:9.1f} ms/batch {args.batch / s:10.1f} images/s")
        for key, other in ratios.items():
            if other in seconds:
                entry[key] = round(seconds[other] / seconds[baseline], 2)
                print(f"  {key}: {entry[key]:.2f}x", flush=True)
        results["shapes"][text] = entry

    if args.backend == "tensorflow" and args.suite != "simclr":
        shape = tuple(int(v) for v in args.shapes.split(",")[0].lower().split("x"))
        results["xla"] = xla_report(shape)
        print("\njit_compile=True on TF:")
        for name, entry in results["xla"].items():
            for key, value in entry.items():
                print(f"  {name:9s} {key}: {value}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

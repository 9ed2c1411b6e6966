"""Training throughput of a SimCLR step: what the augmentation costs.

In one run, images/s of three variants of the same SimCLR training step
(same encoder, projection head, loss, optimizer, batch):

  (a) ceiling  : encoder + loss only, no preprocessing, no augmentation
                 (both views are the raw batch);
  (p) + Preprocess: (a) plus the in-model Preprocess layer (NaN repair +
                 asinh normalisation), still no augmentation: b/p is the
                 cost of the augmentation alone;
  (b) kerasssl : the full kerasssl step: Preprocess + the SimCLR view
                 pipelines (dihedral, rotation, resized crop, blur, noise);
  (c) stock    : Preprocess + the nearest stock Keras augmentation layers
                 (RandomFlip, RandomRotation, RandomZoom, RandomGaussianBlur,
                 GaussianNoise).

and the ratios b/a (target >= 0.97 on CPU, >= 0.90 on GPU), b/p and b/c
(target >= 1). Steps of the three variants are interleaved round by round, so a
busy shared machine slows all of them alike; the figure is the median step
time. Peak memory per variant: the GPU allocator's peak where the backend
reports it (TF: ``tf.config.experimental.get_memory_info``, JAX:
``device.memory_stats``), else the process's RSS high-water mark
(``resource.getrusage``) after the variant's warm-up, which is cumulative
over the variants run so far (a, then b, then c).

Usage (2-core CPU here):
    .venv/bin/python benchmarks/throughput.py --size 64 --channels 1 --batch 64 --steps 8
    KERAS_BACKEND=jax .venv/bin/python benchmarks/throughput.py --backend jax --size 32 --steps 4

Prints a table and writes it as JSON with ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

VARIANTS = ("a", "p", "b", "c")
LABELS = {
    "a": "(a) encoder + loss, no augmentation",
    "p": "(p) Preprocess + encoder + loss",
    "b": "(b) full kerasssl step",
    "c": "(c) stock Keras augmentation",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--channels", type=int, default=1, help="bands")
    p.add_argument("--batch", type=int, default=64, help="global batch size")
    p.add_argument("--precision", default="float32",
                   choices=["float32", "mixed_float16", "mixed_bfloat16"])
    p.add_argument("--backend", default=None, choices=["tensorflow", "jax"],
                   help="Keras backend (default: $KERAS_BACKEND or tensorflow)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (tracing/compiling)")
    p.add_argument("--encoder", default="efficientnetb0", help="kerasssl.encoders name")
    p.add_argument("--jit-compile", default="auto", choices=["auto", "true", "false"],
                   help="XLA: auto = on for GPU and JAX, off for TF on CPU (where it is ~8x slower)")
    p.add_argument("--variants", default="apbc", help="which variants to run (subset of 'apbc')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def set_backend(name):
    """Pick the Keras backend; must run before keras is imported."""
    if name:
        os.environ["KERAS_BACKEND"] = name
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Import kerasssl from this checkout when it is not installed (GPU machine).
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)


def accelerator():
    """'gpu' when the backend sees a GPU, else 'cpu'."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return "gpu" if jax.default_backend() == "gpu" else "cpu"
    import tensorflow as tf

    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def stock_view(seed):
    """The stock Keras layers closest to kerasssl's SimCLR view pipeline."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
        keras.layers.RandomRotation(0.04, fill_mode="reflect", seed=seed + 1),
        # Area 0.7-1.0 of kerasssl's crop ~ zooming in by up to 16 % a side.
        keras.layers.RandomZoom((-0.16, 0.0), fill_mode="reflect", seed=seed + 2),
        # Stock blur clips to value_range (open it up for fluxes); sigma <= 1 only.
        keras.layers.RandomGaussianBlur(factor=0.5, kernel_size=7, sigma=1.0,
                                        value_range=(-1e6, 1e6), seed=seed + 3),
        keras.layers.GaussianNoise(0.1, seed=seed + 4),
    ], name=f"stock_view_{seed}")


def build_variant(variant, args, input_shape, jit_compile):
    """A compiled SimCLR model for one variant; identical weights across variants."""
    import keras

    from kerasssl.encoders import build_encoder
    from kerasssl.layers import Preprocess
    from kerasssl.layers.views import build_view_pair
    from kerasssl.methods import SimCLR

    keras.utils.set_random_seed(args.seed)
    encoder = build_encoder(args.encoder, input_shape)
    if variant == "a":
        preprocess, view1, view2 = None, None, None
    elif variant == "p":
        preprocess, view1, view2 = Preprocess(), None, None
    elif variant == "b":
        preprocess = Preprocess()
        view1, view2 = build_view_pair(SimCLR.default_views, seed=args.seed, name="simclr")
    else:
        preprocess = Preprocess()
        view1, view2 = stock_view(args.seed), stock_view(args.seed + 10)
    model = SimCLR(encoder, preprocess, view1, view2, temperature=0.2)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=jit_compile)
    return model


class PeakMemory:
    """Peak memory of a phase, from whatever the backend reports."""

    def __init__(self, device):
        import keras

        self.device = device
        self.backend = keras.backend.backend()

    def reset(self):
        if self.device == "gpu" and self.backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.reset_memory_stats("GPU:0")

    def read(self):
        """(megabytes, what it is)."""
        if self.device == "gpu" and self.backend == "tensorflow":
            import tensorflow as tf

            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, "GPU peak (TF allocator)"
        if self.device == "gpu" and self.backend == "jax":
            import jax

            stats = jax.local_devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return stats["peak_bytes_in_use"] / 2**20, "GPU peak (JAX, cumulative)"
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return rss / 1024, "process RSS high-water (cumulative)"


def run(args):
    set_backend(args.backend)
    import keras
    import numpy as np

    if args.precision != "float32":
        keras.mixed_precision.set_global_policy(args.precision)
    device = accelerator()
    # auto: XLA on GPU; on CPU only under JAX (un-jitted JAX is far slower,
    # while TF's XLA is ~8x slower than TF's own kernels on this CPU).
    auto = device == "gpu" or keras.backend.backend() == "jax"
    jit_compile = {"auto": auto, "true": True, "false": False}[args.jit_compile]
    input_shape = (args.size, args.size, args.channels)
    rng = np.random.default_rng(args.seed)
    # Raw fluxes as the model receives them: sky noise (negative too) plus
    # a bright centre; the same batch every step (no input pipeline cost).
    images = rng.normal(0.0, 2.0, size=(args.batch, *input_shape)).astype("float32")
    images[:, args.size // 2 - 2:args.size // 2 + 2, args.size // 2 - 2:args.size // 2 + 2] += 50.0

    variants = [v for v in VARIANTS if v in args.variants]
    skipped = {}
    if "c" in variants and keras.backend.backend() != "tensorflow" and not _has_tensorflow():
        # Keras's stock image augmentation layers are TFDataLayers: under JAX
        # they call into TensorFlow (and cannot be jit-compiled).
        variants.remove("c")
        skipped["c"] = "stock Keras augmentation layers need TensorFlow, absent here"
    memory = PeakMemory(device)
    models, peaks, warmup_s = {}, {}, {}
    losses = {v: [] for v in variants}  # warm-up steps first, then the timed ones
    for v in variants:
        memory.reset()
        models[v] = build_variant(v, args, input_shape, jit_compile)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            losses[v].append(_scalar(models[v].train_on_batch(images)))
        warmup_s[v] = time.perf_counter() - t0
        peaks[v] = memory.read()

    times = {v: [] for v in variants}
    for _ in range(args.steps):  # interleaved: a busy machine slows all variants alike
        for v in variants:
            t0 = time.perf_counter()
            loss = models[v].train_on_batch(images)
            times[v].append(time.perf_counter() - t0)
            losses[v].append(_scalar(loss))

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores" + (", GPU" if device == "gpu" else ", no GPU"),
        "backend": keras.backend.backend(),
        "device": device,
        "config": {"size": args.size, "channels": args.channels, "batch": args.batch,
                   "precision": args.precision, "encoder": args.encoder, "steps": args.steps,
                   "jit_compile": jit_compile},
        "variants": {},
        "skipped": skipped,
    }
    for v in variants:
        median = statistics.median(times[v])
        result["variants"][v] = {
            "images_per_s": args.batch / median,
            "median_step_s": median,
            "min_step_s": min(times[v]),
            "warmup_s": warmup_s[v],
            "peak_memory_mb": peaks[v][0],
            "memory_kind": peaks[v][1],
            "losses": losses[v],
            # A non-finite loss does not stop the timing (the step costs the
            # same), but the table says so: that step's numbers are suspect.
            "first_nonfinite_step": next(
                (i for i, x in enumerate(losses[v]) if not math.isfinite(x)), None),
        }
    ips = {v: result["variants"][v]["images_per_s"] for v in variants}
    if "a" in ips and "b" in ips:
        result["b_over_a"] = ips["b"] / ips["a"]
    if "b" in ips and "p" in ips:
        result["b_over_p"] = ips["b"] / ips["p"]
    if "b" in ips and "c" in ips:
        result["b_over_c"] = ips["b"] / ips["c"]
    for other in ("a", "p", "c"):
        if "b" in times and other in times:
            result[f"paired_b_over_{other}"] = paired_ratio(times["b"], times[other], seed=args.seed)
    return result


def paired_ratio(times_b, times_other, seed=0, resamples=2000):
    """Median over rounds of (other's step time / b's), with a bootstrap 95 % interval.

    The steps are interleaved round by round, so the two steps of one round
    share the machine's state; their ratio cancels the slow drifts that move
    whole rounds, which the ratio of the two medians does not. It is the same
    throughput ratio (images/s of b over the other), estimated per round.
    """
    import numpy as np

    ratios = np.asarray(times_other, dtype=float) / np.asarray(times_b, dtype=float)
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(ratios, size=(resamples, len(ratios))), axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"median": float(np.median(ratios)), "ci95": [float(low), float(high)], "rounds": len(ratios)}


def _scalar(loss):
    import numpy as np

    return float(loss if np.ndim(loss) == 0 else np.asarray(loss).ravel()[0])


def _has_tensorflow():
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def format_table(result):
    c = result["config"]
    lines = [
        f"SimCLR step, {c['encoder']}, {c['size']}x{c['size']}x{c['channels']}, batch {c['batch']}, "
        f"{c['precision']}, backend {result['backend']} on {result['device']}, XLA {c['jit_compile']}, "
        f"{c['steps']} timed steps ({result['machine']}, {result['date']})",
        f"{'variant':40s} {'images/s':>9s} {'median s':>9s} {'min s':>7s} {'peak MB':>9s}  memory",
    ]
    for v, r in result["variants"].items():
        lines.append(f"{LABELS[v]:40s} {r['images_per_s']:9.1f} {r['median_step_s']:9.3f} "
                     f"{r['min_step_s']:7.3f} {r['peak_memory_mb']:9.0f}  {r['memory_kind']}")
    for v, r in result["variants"].items():
        if r.get("first_nonfinite_step") is not None:
            lines.append(f"{LABELS[v]}: loss non-finite from step {r['first_nonfinite_step']} "
                         f"(warm-up included); losses {[round(x, 3) for x in r['losses'][:8]]}")
    for v, why in result.get("skipped", {}).items():
        lines.append(f"{LABELS[v]:40s} skipped: {why}")
    if "b_over_a" in result:
        lines.append(f"b/a = {result['b_over_a']:.3f}")
    if "b_over_p" in result:
        lines.append(f"b/p = {result['b_over_p']:.3f}  (augmentation alone)")
    if "b_over_c" in result:
        lines.append(f"b/c = {result['b_over_c']:.3f}")
    for other in ("a", "p", "c"):
        paired = result.get(f"paired_b_over_{other}")
        if paired:
            low, high = paired["ci95"]
            lines.append(f"paired b/{other} = {paired['median']:.3f}  (median of per-round ratios, "
                         f"95% CI {low:.3f}-{high:.3f}, {paired['rounds']} rounds)")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

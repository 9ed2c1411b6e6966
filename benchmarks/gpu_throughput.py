"""GPU throughput table: JAX backend, bfloat16, XLA on, two image shapes.

Runs :mod:`throughput`'s variants ((a) encoder + loss, (p) + Preprocess,
(b) full kerasssl step, (c) stock Keras augmentation) at 64x64x3 and
128x128x1 and prints one short table with images/s, peak GPU memory and the
ratios b/a (target >= 0.90), b/p (augmentation alone) and b/c (target >= 1).

The GPU machine has JAX but no TensorFlow (too large to carry): kerasssl's
layers, losses and methods need only Keras, so carry the keras, namex and
optree wheels and run with KERAS_BACKEND=jax (see benchmarks/RESULTS.md).

Usage:
    # on the GPU machine
    KERAS_BACKEND=jax python3 benchmarks/gpu_throughput.py --json $OUT/gpu.json
    # a smoke run on any CPU (tiny encoder, 16 px, a few steps)
    KERAS_BACKEND=jax .venv/bin/python benchmarks/gpu_throughput.py --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"  # this script is the JAX/XLA benchmark
sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402  (benchmarks/throughput.py)

SHAPES = [(64, 3), (128, 1)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--encoder", default="efficientnetb0")
    p.add_argument("--precision", default="mixed_bfloat16",
                   choices=["float32", "mixed_float16", "mixed_bfloat16"])
    p.add_argument("--tiny", action="store_true",
                   help="CPU smoke run: tiny encoder, 16 px, batch 8, 2 steps")
    p.add_argument("--shapes", nargs="+", default=None, metavar="SIZExBANDS",
                   help="image shapes to run, e.g. 64x3 128x1 (default: both)")
    p.add_argument("--json", default=None,
                   help="also write all results here (rewritten after each shape, so a "
                        "run cut short keeps what it finished)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(n) for n in s.lower().split("x")) for s in args.shapes]
    if args.tiny:
        shapes = [(16, 3), (16, 1)]
        args.batch, args.steps, args.warmup, args.encoder = 8, 1, 1, "tiny"
    results = []
    for size, channels in shapes:
        run_args = throughput.parse_args([
            "--backend", "jax", "--size", str(size), "--channels", str(channels),
            "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--encoder", args.encoder, "--precision", args.precision, "--jit-compile", "true",
        ])
        results.append(throughput.run(run_args))
        print(throughput.format_table(results[-1]), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))

    print("\nshape        a img/s   p img/s   b img/s   c img/s    b/a    b/p    b/c   peak MB a/p/b/c")
    for r in results:
        c, v = r["config"], r["variants"]
        shape = f"{c['size']}x{c['size']}x{c['channels']}"
        peaks = "/".join(f"{v[k]['peak_memory_mb']:.0f}" if k in v else "n/a" for k in "apbc")
        rates = " ".join(f"{v[k]['images_per_s']:9.1f}" if k in v else f"{'n/a':>9s}" for k in "apbc")
        ratios = " ".join(f"{r[key]:6.3f}" if key in r else f"{'n/a':>6s}"
                          for key in ("b_over_a", "b_over_p", "b_over_c"))
        print(f"{shape:11s} {rates} {ratios}   {peaks}")
        for k, why in r.get("skipped", {}).items():
            print(f"  ({k}) skipped: {why}")
    return results


if __name__ == "__main__":
    main()

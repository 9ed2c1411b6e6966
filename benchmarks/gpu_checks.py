"""Everything issue 17 asks of the GPU, in one prepared run (JAX, no TensorFlow needed).

1. **The NaN** (``nan_hunt.py``'s variants, each in its own interpreter, each at
   most ``--nan-timeout`` s), in the order benchmarks/RESULTS.md lists: B0 at
   64x64x3, batch 256, 30 steps of the H200 step (variant (a), AdamW 1e-3, no
   warm-up, the same batch): mixed_bfloat16 (the H200 setting), float32,
   mixed_bfloat16 with ``jax.default_matmul_precision("highest")`` (no bf16/TF32
   passes), the tiny encoder, learning-rate warm-up, float32 with "highest",
   the projection head in float32, fresh batches (most telling first: a run cut
   short keeps those). Each records per step whether the
   loss is finite and the first non-finite tensor (``--debug-nans``'s step).
2. **Throughput** (``throughput.py``) at batch 256, 1024, 2048 for 64x64x3 and
   128x128x1: variants (a) and (b), images/s, b/a, peak GPU memory, the losses.
3. **Scan ceiling**: a B0 classifier's batch inference (Preprocess -> encoder ->
   head, jitted ``predict_on_batch``) at batch 1024, 64x64x3 (the full
   ``kerasssl scan`` reads files with tf.data, absent on the GPU machine).

The JSON (``--json``) is rewritten after every check, so a run cut short keeps
what finished; ``--only nan throughput scan`` picks parts. ``--tiny`` runs it all
at a tiny size (tiny encoder, 32 px, batch 8, 3 steps) to test it on a CPU.

Usage (the device call of benchmarks/RESULTS.md, carrying the keras wheels):
    KERAS_BACKEND=jax PYTHONUNBUFFERED=1 python3 benchmarks/gpu_checks.py --json $OUT/gpu_checks.json
    KERAS_BACKEND=jax .venv/bin/python benchmarks/gpu_checks.py --tiny --json /tmp/gpu_checks.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nan_hunt  # noqa: E402  (benchmarks/nan_hunt.py)
import throughput  # noqa: E402  (benchmarks/throughput.py)

#: The NaN checks in RESULTS.md's order: (name, nan_hunt variant, extra overrides).
NAN_CHECKS = [
    ("b0_bf16", "baseline", {}),
    ("b0_float32", "float32", {}),
    ("b0_bf16_highest", "baseline", {"matmul_precision": "highest"}),
    ("tiny_bf16", "baseline", {"encoder": "tiny"}),
    ("b0_bf16_warmup", "warmup", {}),
    ("b0_float32_highest", "float32", {"matmul_precision": "highest"}),
    ("b0_bf16_head_float32", "head_float32", {}),
    ("b0_bf16_fresh_batches", "fresh_batches", {}),
]
THROUGHPUT_SHAPES = [(64, 3), (128, 1)]
THROUGHPUT_BATCHES = [256, 1024, 2048]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", default=["nan", "throughput", "scan"], choices=["nan", "throughput", "scan"])
    p.add_argument("--encoder", default="efficientnetb0")
    p.add_argument("--precision", default="mixed_bfloat16")
    p.add_argument("--nan-steps", type=int, default=30)
    p.add_argument("--nan-timeout", type=int, default=120, help="seconds per NaN check (compile included)")
    p.add_argument("--steps", type=int, default=10, help="timed throughput steps per variant")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--scan-batch", type=int, default=1024)
    p.add_argument("--tiny", action="store_true", help="CPU test: tiny encoder, 32 px, batch 8, 3 steps")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def nan_checks(args, size, batch, write):
    hunt = nan_hunt.parse_args(["--encoder", args.encoder, "--size", str(size), "--channels", "3",
                                "--batch", str(batch), "--steps", str(args.nan_steps)])
    out = {}
    for name, variant, extra in NAN_CHECKS:
        spec = nan_hunt.child_spec(hunt, dict(nan_hunt.VARIANTS[variant][1], **extra))
        out[name] = dict(nan_hunt.run_child(spec, args.nan_timeout), spec=spec)
        r = out[name]
        print(f"nan {name}: " + (r["error"] if "error" in r else
                                 f"finite {r['all_finite']}, first non-finite step {r['first_nonfinite_step']}: "
                                 f"{r.get('first_nonfinite_tensor')}; losses {[round(v, 3) for v in r['losses'][:4]]}"),
              flush=True)
        write(out)
    return out


def throughput_checks(args, shapes, batches, write):
    out = []
    for size, channels in shapes:
        for batch in batches:
            run_args = throughput.parse_args([
                "--backend", "jax", "--size", str(size), "--channels", str(channels), "--batch", str(batch),
                "--steps", str(args.steps), "--warmup", str(args.warmup), "--encoder", args.encoder,
                "--precision", args.precision, "--jit-compile", "true", "--variants", "ab"])
            try:
                result = throughput.run(run_args)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory at 2048: record it, go on
                result = {"config": {"size": size, "channels": channels, "batch": batch},
                          "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"}
                print(f"throughput {size}x{size}x{channels} batch {batch}: {result['error']}", flush=True)
            else:
                print(throughput.format_table(result), flush=True)
            out.append(result)
            write(out)
    return out


def scan_ceiling(args, size, batch, rounds):
    import keras
    import numpy as np

    from kerasssl.classifier import build_classifier
    from kerasssl.encoders import build_encoder
    from kerasssl.layers import Preprocess

    keras.mixed_precision.set_global_policy("float32")  # what `kerasssl scan` runs: the saved float32 model
    shape = (size, size, 3)
    model = build_classifier(build_encoder(args.encoder, shape), Preprocess(), 2, input_shape=shape)
    model.compile(jit_compile=True)
    x = np.random.default_rng(0).normal(0.0, 2.0, size=(batch, *shape)).astype("float32")
    t0 = time.perf_counter()
    np.asarray(model.predict_on_batch(x))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.asarray(model.predict_on_batch(x))  # to host: the scan needs the scores there
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    memory = throughput.PeakMemory(throughput.accelerator()).read()
    return {"encoder": args.encoder, "size": size, "batch": batch, "images_per_s": batch / median,
            "median_s": median, "compile_s": compile_s, "peak_memory_mb": memory[0], "memory_kind": memory[1]}


def main(argv=None):
    args = parse_args(argv)
    throughput.set_backend("jax")
    nan_size, nan_batch, shapes, batches, scan_size, rounds = 64, 256, THROUGHPUT_SHAPES, THROUGHPUT_BATCHES, 64, 10
    if args.tiny:
        args.encoder, args.nan_steps, args.steps, args.warmup, args.scan_batch = "tiny", 3, 1, 1, 16
        args.nan_timeout = max(args.nan_timeout, 300)
        nan_size, nan_batch, shapes, batches, scan_size, rounds = 32, 8, [(32, 3), (16, 1)], [8], 32, 2
    import jax

    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "jax": jax.__version__,
              "devices": [str(d) for d in jax.devices()], "encoder": args.encoder, "precision": args.precision}

    def write(part):
        def store(value):
            result[part] = value
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=2))
        return store

    if "nan" in args.only:
        nan_checks(args, nan_size, nan_batch, write("nan"))
    if "throughput" in args.only:
        throughput_checks(args, shapes, batches, write("throughput"))
    if "scan" in args.only:
        try:
            write("scan")(scan_ceiling(args, scan_size, args.scan_batch, rounds))
        except Exception as e:  # noqa: BLE001 - keep what the other parts measured
            write("scan")({"error": f"{type(e).__name__}: {str(e)[:300]}"})
        print(f"scan ceiling: {result['scan']}", flush=True)
    print("\n" + summary(result))
    return result


def summary(result):
    lines = []
    for name, r in result.get("nan", {}).items():
        lines.append(f"nan {name:24s} " + (f"error {r['error'][:100]}" if "error" in r else
                     ("finite" if r["all_finite"] else
                      f"NON-FINITE from step {r['first_nonfinite_step']}: {r.get('first_nonfinite_tensor')}")))
    lines.append("shape       batch    a img/s    b img/s    b/a   peak MB a/b   finite a/b")
    for r in result.get("throughput", []):
        c = r["config"]
        shape = f"{c['size']}x{c['size']}x{c['channels']}"
        if "error" in r:
            lines.append(f"{shape:11s} {c['batch']:5d}  {r['error'][:80]}")
            continue
        v = r["variants"]
        finite = "/".join("yes" if v[k]["first_nonfinite_step"] is None else f"no@{v[k]['first_nonfinite_step']}"
                          for k in "ab")
        lines.append(f"{shape:11s} {c['batch']:5d} {v['a']['images_per_s']:10.1f} {v['b']['images_per_s']:10.1f} "
                     f"{r.get('b_over_a', float('nan')):6.3f}   {v['a']['peak_memory_mb']:.0f}/{v['b']['peak_memory_mb']:.0f}"
                     f"   {finite}")
    scan = result.get("scan")
    if scan:
        lines.append(f"scan ceiling: {scan}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

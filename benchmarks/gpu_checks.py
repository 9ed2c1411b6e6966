"""Everything issue 17 asks of the GPU, in one prepared run (JAX, no TensorFlow needed).

1. **The NaN** (``nan_hunt.py``'s variants, each in its own interpreter, each at
   most ``--nan-timeout`` s): B0 at 64x64x3, batch 256, 30 steps of the H200 step
   (variant (a), AdamW 1e-3, no warm-up, the same batch), with ``--debug-nans``'s
   step naming the first non-finite tensor. First ``b0_bf16``, the H200 setting
   with today's code. If it stays finite, ``b0_bf16_old_l2`` reverts the
   ``l2_normalize`` fix: NaN there and not here attributes the H200 NaN to it, and
   the device time goes to throughput. If ``b0_bf16`` goes NaN, the diagnosis runs
   instead, each check changing one thing, most telling first (a run cut short
   keeps those): float32; ``jax.default_matmul_precision("highest")`` (no
   bf16/TF32 passes); XLA-GPU's convolution autotuning off; Triton GEMM fusions
   off; the tiny encoder; warm-up; float32 with "highest"; the head in float32;
   fresh batches; ``jax_debug_nans``. ``--all-nan`` runs every check.
   ``nan_reading`` states which single changes made the step finite.
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
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nan_hunt  # noqa: E402  (benchmarks/nan_hunt.py)
import throughput  # noqa: E402  (benchmarks/throughput.py)

#: The NaN checks: (name, nan_hunt variant, overrides). The first always runs; then
#: ATTRIBUTE_CHECKS where it is finite, DIAGNOSE_CHECKS where it is not (see nan_plan).
FIRST_CHECK = ("b0_bf16", "baseline", {})  # the H200 setting, with the l2_normalize fix
ATTRIBUTE_CHECKS = [("b0_bf16_old_l2", "old_l2_normalize", {})]  # the fix reverted
DIAGNOSE_CHECKS = [
    ("b0_float32", "float32", {}),
    ("b0_bf16_highest", "baseline", {"matmul_precision": "highest"}),
    # cuDNN's default convolution algorithms instead of the fastest-measured ones:
    ("b0_bf16_autotune0", "baseline", {"xla_flags": "--xla_gpu_autotune_level=0"}),
    # cuBLAS for every matmul instead of XLA's Triton-generated fused GEMMs:
    ("b0_bf16_no_triton_gemm", "baseline", {"xla_flags": "--xla_gpu_enable_triton_gemm=false"}),
    ("tiny_bf16", "baseline", {"encoder": "tiny"}),
    ("b0_bf16_warmup", "warmup", {}),
    ("b0_float32_highest", "float32", {"matmul_precision": "highest"}),
    ("b0_bf16_head_float32", "head_float32", {}),
    ("b0_bf16_fresh_batches", "fresh_batches", {}),
    # Last: on the CPU it did not fire under Keras's jitted step (RESULTS.md).
    ("b0_bf16_jax_debug_nans", "baseline", {"jax_debug_nans": True}),
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
    p.add_argument("--all-nan", action="store_true", help="run every NaN check, whatever b0_bf16 shows")
    p.add_argument("--steps", type=int, default=10, help="timed throughput steps per variant")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--scan-batch", type=int, default=1024)
    p.add_argument("--tiny", action="store_true", help="CPU test: tiny encoder, 32 px, batch 8, 3 steps")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def nan_plan(first, all_checks=False):
    """The checks after FIRST_CHECK, given its record: attribute a finite step, diagnose a NaN one
    (or an error: a step that did not finish says nothing about the fix)."""
    if all_checks:
        return ATTRIBUTE_CHECKS + DIAGNOSE_CHECKS
    return ATTRIBUTE_CHECKS if first.get("all_finite") is True else DIAGNOSE_CHECKS


def _finite(record):
    return None if record is None or "error" in record else record["all_finite"]


def nan_reading(nan):
    """One sentence on what the NaN checks show, from their records (name -> record)."""
    first = nan.get(FIRST_CHECK[0])
    if first is None or "error" in first:
        return f"{FIRST_CHECK[0]} did not finish ({first['error'] if first else 'not run'}): nothing settled"
    steps = first["steps_run"]
    if first["all_finite"]:
        old = nan.get(ATTRIBUTE_CHECKS[0][0])
        if _finite(old) is False:
            return (f"the l2_normalize fix is the cure: finite for {steps} steps with it, non-finite from step "
                    f"{old['first_nonfinite_step']} without it ({old.get('first_nonfinite_tensor')})")
        if _finite(old) is True:
            return (f"finite for {steps} steps with and without the l2_normalize fix: the H200 NaN did not "
                    "reproduce, so its cause is not settled by this run")
        return f"finite for {steps} steps with the l2_normalize fix; the run without it did not finish"
    cures = [name for name, *_ in DIAGNOSE_CHECKS if _finite(nan.get(name)) is True]
    still = [name for name, *_ in DIAGNOSE_CHECKS if _finite(nan.get(name)) is False]
    return (f"non-finite from step {first['first_nonfinite_step']} ({first.get('first_nonfinite_tensor')}) "
            f"with the l2_normalize fix; finite when one thing changes: {', '.join(cures) or 'none run'}; "
            f"still non-finite: {', '.join(still) or 'none run'}")


def nan_checks(args, size, batch, write):
    hunt = nan_hunt.parse_args(["--encoder", args.encoder, "--size", str(size), "--channels", "3",
                                "--batch", str(batch), "--steps", str(args.nan_steps)])
    out = {}

    def run(name, variant, extra):
        spec = nan_hunt.child_spec(hunt, dict(nan_hunt.VARIANTS[variant][1], **extra))
        out[name] = r = dict(nan_hunt.run_child(spec, args.nan_timeout), spec=spec)
        print(f"nan {name}: " + (r["error"] if "error" in r else
                                 f"finite {r['all_finite']}, first non-finite step {r['first_nonfinite_step']}: "
                                 f"{r.get('first_nonfinite_tensor')}; losses {[round(v, 3) for v in r['losses'][:4]]}"),
              flush=True)
        write(out)
        return r

    first = run(*FIRST_CHECK)
    for check in nan_plan(first, args.all_nan):
        run(*check)
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
        write("nan_reading")(nan_reading(nan_checks(args, nan_size, nan_batch, write("nan"))))
        print(f"nan reading: {result['nan_reading']}", flush=True)
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
    lines = [f"nan reading: {result['nan_reading']}"] if "nan_reading" in result else []
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

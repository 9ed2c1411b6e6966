"""The bf16 NaN hunt: the SimCLR step under variants, one thing changed at a time.

The H200 run of ``gpu_throughput.py`` (JAX, B0, 64x64x3, batch 256,
mixed_bfloat16, XLA, AdamW 1e-3, no warm-up, the same batch every step) went
NaN after 2-3 steps in every variant; the same step on a CPU stayed finite.
This script runs that step (variant (a) of ``throughput.py``: encoder + head +
NT-Xent, both views the raw batch) for ``--steps`` steps under a baseline and
under variants that each change ONE thing, with ``--debug-nans``'s train step
(:mod:`kerasssl.nandebug`), and records per step whether the loss is finite and
the first non-finite tensor. Each variant runs in its own interpreter (dtype
policies, monkeypatches and XLA flags do not leak), and the JSON is rewritten
after each variant so a run cut short keeps what it finished.

Variants (see ``VARIANTS``): precision float32 / mixed_bfloat16; emulations of
what XLA-GPU may do that XLA-CPU does not: bf16 outputs of the convolutions and
matmuls (``preferred_element_type=bfloat16``), bf16 *accumulation* (contractions
summed in bf16 over chunks of ``--chunk`` channels, XLA's excess precision off),
``jax.default_matmul_precision("bfloat16")``, TF32 inputs for float32 matmuls and
convolutions; image size, batch, learning-rate warm-up, fresh vs the same batch,
the projection head in float32, NT-Xent temperature, NT-Xent's normalisation
and logits in bf16 / float16 instead of float32 (l2_normalize's 1e-12 is 0 in
float16; the -1e9 self-mask is applied to float32 logits either way), the former
``l2_normalize`` (NaN gradient at a zero row), BatchNorm moments rounded to
bf16, the full kerasssl step (b); and controls that must go NaN (learning rate
1e30, with and without ``jax_debug_nans``) to show the machinery catches one.

Usage:
    KERAS_BACKEND=jax .venv/bin/python benchmarks/nan_hunt.py --json /tmp/nan_hunt.json
    KERAS_BACKEND=jax .venv/bin/python benchmarks/nan_hunt.py --only baseline bf16_accumulation --encoder efficientnetb0
    KERAS_BACKEND=jax .venv/bin/python benchmarks/nan_hunt.py --list
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASELINE = {"precision": "mixed_bfloat16", "emulate": None, "matmul_precision": None, "size": None,
            "batch": None, "warmup_steps": 0, "fresh_batches": False, "head_float32": False,
            "temperature": 0.2, "loss_dtype": None, "old_l2_normalize": False, "bn_moments_bf16": False,
            "step": "a", "learning_rate": 1e-3, "jax_debug_nans": False, "xla_flags": None}

#: name -> (what changes, overrides of BASELINE); each changes one thing.
VARIANTS = {
    "baseline": ("mixed_bfloat16, as on the H200", {}),
    "float32": ("precision float32", {"precision": "float32"}),
    "bf16_outputs": ("convs/matmuls with preferred_element_type=bfloat16", {"emulate": "bf16_outputs"}),
    "bf16_accumulation": ("convs/matmuls summed in bf16 over --chunk channels", {"emulate": "bf16_accumulation"}),
    "matmul_precision_bf16": ('jax.default_matmul_precision("bfloat16")', {"matmul_precision": "bfloat16"}),
    "float32_tf32": ("float32, matmul/conv inputs rounded to TF32", {"precision": "float32", "emulate": "tf32"}),
    "size_x2": ("image size x2", {"size": "x2"}),
    "batch_x4": ("batch x4", {"batch": "x4"}),
    "warmup": ("learning rate warmed up over 10 steps", {"warmup_steps": 10}),
    "fresh_batches": ("a fresh batch every step", {"fresh_batches": True}),
    "head_float32": ("projection head in float32", {"head_float32": True}),
    "temperature_0.05": ("NT-Xent temperature 0.05", {"temperature": 0.05}),
    "temperature_0.5": ("NT-Xent temperature 0.5", {"temperature": 0.5}),
    "loss_bfloat16": ("NT-Xent l2_normalize (eps 1e-12) + logits in bf16", {"loss_dtype": "bfloat16"}),
    "loss_float16": ("NT-Xent l2_normalize (eps 1e-12) + logits in fp16", {"loss_dtype": "float16"}),
    "old_l2_normalize": ("x / max(sqrt(|x|^2), eps) (NaN grad at 0)", {"old_l2_normalize": True}),
    "bn_moments_bf16": ("BatchNorm batch moments rounded to bf16", {"bn_moments_bf16": True}),
    "step_b": ("full kerasssl step (b): Preprocess + views", {"step": "b"}),
    "control_lr_1e30": ("control: learning rate 1e30 (must go NaN)", {"learning_rate": 1e30}),
    "control_jax_debug_nans": ("control + jax_debug_nans", {"learning_rate": 1e30, "jax_debug_nans": True}),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="tiny", help="kerasssl encoder (efficientnetb0 needs >= 32 px)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--chunk", type=int, default=32, help="channels summed in f32 before each bf16 addition")
    p.add_argument("--only", nargs="+", default=None, metavar="VARIANT", help="run these variants only")
    p.add_argument("--timeout", type=int, default=600, help="seconds per variant")
    p.add_argument("--json", default=None, help="write the results here (after each variant)")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- the child: one variant -------------------------------------------------
def _install_emulation(mode, chunk):
    """Monkeypatch jax.lax's dot_general (forward and, via its transpose rule, backward) and the
    forward conv_general_dilated that Keras calls, emulating what an accelerator may do."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax._src.lax import lax as lax_internal

    orig_dot, orig_conv = lax_internal.dot_general, lax.conv_general_dilated
    bf16 = jnp.bfloat16

    def is_bf16(*xs):
        return all(x.dtype == bf16 for x in xs)

    def tf32(x):
        if x.dtype != jnp.float32:
            return x
        bits = lax.bitcast_convert_type(x, jnp.uint32)
        bits = (bits + jnp.uint32(0x1000)) & jnp.uint32(0xFFFFE000)  # round to 10 mantissa bits
        rounded = lax.bitcast_convert_type(bits, jnp.float32)
        return x + lax.stop_gradient(rounded - x)  # the bit trick has no gradient: pass it straight through

    def summed_in_bf16(parts, out_dtype):
        total = None
        for part in parts:  # each addition rounds to bf16 (excess precision is off in this process)
            part = part.astype(bf16)
            total = part if total is None else (total + part).astype(bf16)
        return total.astype(out_dtype)

    def dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
        if mode == "tf32":
            return orig_dot(tf32(lhs), tf32(rhs), dimension_numbers, precision, preferred_element_type, **kw)
        if not is_bf16(lhs, rhs):
            return orig_dot(lhs, rhs, dimension_numbers, precision, preferred_element_type, **kw)
        out_dtype = preferred_element_type or bf16
        (lc, rc), _ = dimension_numbers
        if mode == "bf16_outputs" or len(lc) != 1:
            return orig_dot(lhs, rhs, dimension_numbers, precision, bf16, **kw).astype(out_dtype)
        k = lhs.shape[lc[0]]
        parts = [orig_dot(lax.slice_in_dim(lhs, s, min(s + chunk, k), axis=lc[0]),
                          lax.slice_in_dim(rhs, s, min(s + chunk, k), axis=rc[0]),
                          dimension_numbers, precision, jnp.float32, **kw) for s in range(0, k, chunk)]
        return summed_in_bf16(parts, out_dtype)

    def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
             preferred_element_type=None):
        args = (window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                batch_group_count, precision)
        if mode == "tf32":
            return orig_conv(tf32(lhs), tf32(rhs), *args, preferred_element_type)
        if not is_bf16(lhs, rhs):
            return orig_conv(lhs, rhs, *args, preferred_element_type)
        out_dtype = preferred_element_type or bf16
        if mode == "bf16_outputs" or feature_group_count != 1 or dimension_numbers is None:
            # Depthwise convs contract over the window only (9-25 terms): rounding the output is all.
            return orig_conv(lhs, rhs, *args, bf16).astype(out_dtype)
        lhs_c, rhs_c = dimension_numbers.lhs_spec[1], dimension_numbers.rhs_spec[1]
        c = lhs.shape[lhs_c]
        parts = [orig_conv(lax.slice_in_dim(lhs, s, min(s + chunk, c), axis=lhs_c),
                           lax.slice_in_dim(rhs, s, min(s + chunk, c), axis=rhs_c), *args, jnp.float32)
                 for s in range(0, c, chunk)]
        return summed_in_bf16(parts, out_dtype)

    lax_internal.dot_general = dot
    jax.lax.dot_general = dot
    jax.lax.conv_general_dilated = conv


def _patch_losses(spec):
    from keras import ops

    from kerasssl import losses

    if spec["loss_dtype"]:
        dtype = spec["loss_dtype"]

        def l2_normalize(x, axis=-1, epsilon=1e-12):  # no float32 cast: eps 1e-12 is 0 in float16
            x = ops.cast(x, dtype)
            norm = ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
            return x / ops.maximum(norm, ops.cast(epsilon, dtype))

        # nt_xent's normalised embeddings and logits then stay in `dtype` (the self-mask,
        # a float32 one-hot times 1e9, promotes the masked logits back to float32).
        losses.l2_normalize = l2_normalize
    if spec["old_l2_normalize"]:
        def l2_normalize(x, axis=-1, epsilon=1e-12):
            x = ops.cast(x, "float32")
            norm = ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
            return x / ops.maximum(norm, epsilon)

        losses.l2_normalize = l2_normalize


def _patch_batchnorm():
    import keras
    from keras import ops

    original = keras.layers.BatchNormalization._moments

    def moments(self, inputs, mask):
        mean, variance = original(self, inputs, mask)
        return (ops.cast(ops.cast(mean, "bfloat16"), "float32"), ops.cast(ops.cast(variance, "bfloat16"), "float32"))

    keras.layers.BatchNormalization._moments = moments


def run_variant(spec):
    """One variant in this process; returns its record."""
    import jax

    if spec["jax_debug_nans"]:
        jax.config.update("jax_debug_nans", True)
    if spec["emulate"]:
        _install_emulation(spec["emulate"], spec["chunk"])
    _patch_losses(spec)
    if spec["bn_moments_bf16"]:
        _patch_batchnorm()

    import contextlib

    import keras
    import numpy as np

    from kerasssl.encoders import build_encoder
    from kerasssl.layers import Preprocess
    from kerasssl.layers.views import build_view_pair
    from kerasssl.methods import SimCLR
    from kerasssl.nandebug import LOG_KEYS, describe
    from kerasssl.schedules import WarmupCosine

    keras.mixed_precision.set_global_policy(spec["precision"])
    keras.utils.set_random_seed(0)
    size, batch, channels = spec["size"], spec["batch"], spec["channels"]
    shape = (size, size, channels)
    encoder = build_encoder(spec["encoder"], shape)
    preprocess, view1, view2 = None, None, None
    if spec["step"] == "b":
        preprocess = Preprocess()
        view1, view2 = build_view_pair(SimCLR.default_views, seed=0, name="simclr")
    if spec["head_float32"]:
        keras.mixed_precision.set_global_policy("float32")  # heads are built with the model
    model = SimCLR(encoder, preprocess, view1, view2, temperature=spec["temperature"])
    keras.mixed_precision.set_global_policy(spec["precision"])
    lr = spec["learning_rate"]
    if spec["warmup_steps"]:
        lr = WarmupCosine(lr, warmup_steps=spec["warmup_steps"], total_steps=spec["steps"])
    model.compile(optimizer=keras.optimizers.AdamW(lr), jit_compile=True)
    model.debug_nans = True

    rng = np.random.default_rng(0)

    def make_batch():  # raw fluxes as in throughput.py: sky noise plus a bright centre
        x = rng.normal(0.0, 2.0, size=(batch, *shape)).astype("float32")
        x[:, size // 2 - 2:size // 2 + 2, size // 2 - 2:size // 2 + 2] += 50.0
        return x

    fixed = make_batch()
    record = {"losses": [], "first_nonfinite_step": None, "first_nonfinite_tensor": None,
              "first_bad_loss_step": None}
    matmul = (jax.default_matmul_precision(spec["matmul_precision"]) if spec["matmul_precision"]
              else contextlib.nullcontext())
    t0 = time.perf_counter()
    with matmul:
        for step in range(1, spec["steps"] + 1):
            x = make_batch() if spec["fresh_batches"] else fixed
            try:
                logs = model.train_on_batch(x, return_dict=True)
            except FloatingPointError as e:  # jax_debug_nans: the primitive that made the first NaN
                record["jax_debug_nans"] = str(e).strip().splitlines()[0][:300]
                record["first_nonfinite_step"] = record["first_nonfinite_step"] or step
                break
            if step == 1:
                record["compile_and_first_step_s"] = time.perf_counter() - t0
                t1 = time.perf_counter()
            loss = float(logs["loss"])
            record["losses"].append(loss)
            if not math.isfinite(loss) and record["first_bad_loss_step"] is None:
                record["first_bad_loss_step"] = step
            index = int(round(float(logs[LOG_KEYS[0]])))
            if index >= 0 and record["first_nonfinite_step"] is None:
                name, tshape = model._debug_nans_probes[index]
                record["first_nonfinite_step"] = step
                record["first_nonfinite_tensor"] = describe(name, tshape, *(float(logs[k]) for k in LOG_KEYS[1:]))
            if record["first_nonfinite_step"] is not None and not math.isfinite(loss):
                break  # NaN from here on: the rest adds nothing
    done = len(record["losses"])
    if done > 1:
        record["s_per_step"] = (time.perf_counter() - t1) / (done - 1)
    record["steps_run"] = done
    record["all_finite"] = record["first_nonfinite_step"] is None
    return record


# -- the parent: every variant, one child each ------------------------------
def child_spec(args, overrides):
    spec = dict(BASELINE, encoder=args.encoder, channels=args.channels, steps=args.steps, chunk=args.chunk)
    spec.update(overrides)  # a check may also change the encoder (gpu_checks.py: tiny vs B0)
    spec["size"] = args.size * 2 if spec["size"] == "x2" else args.size
    spec["batch"] = args.batch * 4 if spec["batch"] == "x4" else args.batch
    return spec


def child_env(spec, environ=None):
    """The environment of a variant's interpreter: JAX, this checkout first, and its XLA flags."""
    env = dict(os.environ if environ is None else environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    flags = [env.get("XLA_FLAGS", ""), spec.get("xla_flags") or ""]  # e.g. gpu_checks.py's XLA-GPU switches
    if spec["emulate"] == "bf16_accumulation":
        flags.append("--xla_allow_excess_precision=false")  # else XLA may keep f32 between the bf16 converts
    env["XLA_FLAGS"] = " ".join(f for f in flags if f)
    return env


def run_child(spec, timeout):
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout, env=child_env(spec), cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "wall_s": time.perf_counter() - t0}
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-3:]
        return {"error": " | ".join(tail)[-500:], "wall_s": time.perf_counter() - t0}
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record["wall_s"] = time.perf_counter() - t0
    return record


def format_table(result):
    c = result["config"]
    lines = [f"SimCLR step ({c['encoder']}, {c['size']}x{c['size']}x{c['channels']}, batch {c['batch']}, "
             f"{c['steps']} steps, AdamW 1e-3, JAX {result.get('jax', '?')}, {result['machine']}, {result['date']})",
             f"{'variant':24s} {'what changes':52s} {'finite':>7s} {'loss 1 -> last':>16s} {'s/step':>7s}  "
             "first non-finite (step: tensor)"]
    for name, r in result["variants"].items():
        what = VARIANTS[name][0]
        if "error" in r:
            lines.append(f"{name:24s} {what:52s} {'error':>7s} {'':16s} {'':7s}  {r['error'][:120]}")
            continue
        losses = r["losses"]
        span = f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "-"
        finite = "yes" if r["all_finite"] else "NO"
        first = "" if r["all_finite"] else f"{r['first_nonfinite_step']}: {r.get('first_nonfinite_tensor') or ''}"
        if r.get("jax_debug_nans"):
            first += f" [jax_debug_nans: {r['jax_debug_nans'][:100]}]"
        lines.append(f"{name:24s} {what:52s} {finite:>7s} {span:>16s} {r.get('s_per_step', float('nan')):7.3f}  {first}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_variant(spec)), flush=True)
        return None
    if args.list:
        for name, (what, _) in VARIANTS.items():
            print(f"{name:24s} {what}")
        return None
    names = args.only or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; --list shows them")
    try:
        import jax

        jax_version = jax.__version__
    except ImportError:
        jax_version = "?"
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "jax": jax_version,
              "config": {"encoder": args.encoder, "size": args.size, "channels": args.channels,
                         "batch": args.batch, "steps": args.steps, "chunk": args.chunk},
              "baseline": BASELINE, "variants": {}}
    for name in names:
        result["variants"][name] = dict(run_child(child_spec(args, VARIANTS[name][1]), args.timeout),
                                        overrides=VARIANTS[name][1])
        r = result["variants"][name]
        print(f"{name}: " + ("error " + r["error"] if "error" in r else
                             f"finite {r['all_finite']}, losses {[round(v, 3) for v in r['losses'][:3]]}..."
                             f"{[round(v, 3) for v in r['losses'][-2:]]}, first non-finite "
                             f"{r['first_nonfinite_step']} {r.get('first_nonfinite_tensor') or ''}"
                             f" ({r['wall_s']:.0f} s)"), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    print(format_table(result))
    return result


if __name__ == "__main__":
    main()

"""Augmentation ablation: SimCLR's default views against one physical change at a time (issue 15).

Variants (each changes ONE thing of SimCLR's default views, ``kerasssl.methods.SimCLR.default_views``:
dihedral, rotation +-14.4 deg, resized crop 70-100 %, blur sigma 0.1-1.5 px p=0.5,
noise 0-1 x the sky std p=0.5; ``shift``, ``d4`` and ``any-angle`` are the library's
named stage sets ``kerasssl.layers.views.STAGE_SETS``, so a winner among them becomes
every method's default by setting ``views.DEFAULT_STAGES`` to its name):

- ``baseline``: the default views as they are;
- ``shift``: the resized crop (zoom: it changes the apparent Einstein radius)
  replaced by small translations, +-``--max-shift`` px, whole pixels;
- ``reddening``: dust reddening added, E(B-V) 0-0.1 with DECam g, r, i
  coefficients (the default views have no colour jitter to replace: bands are
  physical fluxes, so this is the physical colour change added);
- ``psf``: the Gaussian blur replaced by PSF matching per band: from the
  survey's worst seeing (g, r, i 1.15, 1.05, 0.95 arcsec, 0.4 arcsec/px at 32 px)
  to a target drawn up to +0.45 arcsec broader, p=0.5 (never sharpens);
- ``skynoise``: the relative noise replaced by noise up to a target sky level
  per band: 1-1.5 x the training split's median sky std of that band (an
  absolute level in the normalised units, computed per seed from the train
  split only), p=0.5 (never denoises);
- ``d4``: rotation: the exact dihedral symmetries only (the small-angle
  rotation off);
- ``any-angle``: rotation: any angle (factor 0.5), with the dihedral kept.

Normalisation (the known issue: the physical stages act after ``Preprocess``):
every variant, the baseline included, runs with ``data.normalization:
dataset``, a fixed linear map per band (the train split's mean and std). The
views then see linearly scaled fluxes, so PSF matching (a flux-conserving
convolution), sky noise, shifts and rotations are exact; reddening multiplies
``(x - mean_b) / std_b`` instead of ``x / std_b``, which is off by the constant
``(1 - f_b) * mean_b / std_b`` per band (``f_b`` the extinction factor; the
script measures ``mean_b / std_b`` and reports the bound). Under the default
asinh stretch those stages would be approximations (a PSF blur of stretched
pixels is not a PSF blur). ``--normalization asinh`` reruns the ablation the
library's default way for comparison.

Protocol per variant and seed (3 seeds): SSL pretraining (SimCLR, tiny
encoder) on the train split, a fixed budget of ``--pretrain-steps`` optimizer
steps; then at 10 % of the train labels a linear probe (frozen encoder) and a
full fine-tune (encoder at 0.1x the head's rate), each ``--steps`` steps, the
epoch with the best val ROC-AUC kept; test ROC-AUC. The seed sets the split,
the initialisation and the augmentation draws, and is shared by the variants
(paired comparison: the table gives each variant's mean difference to the
baseline over seeds).

Full run (2-core CPU; estimate first, then run; see --estimate):
    .venv/bin/python benchmarks/ablation.py --estimate
    .venv/bin/python benchmarks/ablation.py --out benchmarks/results/ablation

End-to-end check (every variant, one seed, tiny sizes; numbers meaningless):
    .venv/bin/python benchmarks/ablation.py --quick --out /tmp/ablation_quick
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cell_settings import add_setting_flags, benchmark_parser, fill_settings  # noqa: E402  (benchmarks/cell_settings.py)

VARIANTS = ("baseline", "shift", "reddening", "psf", "skynoise", "d4", "any-angle")
ARMS = ("linear", "full")
# The three-band survey (kerasssl.simulate.survey.THREE_BAND): worst seeing per band, field of view.
WORST_SEEING = (1.15, 1.05, 0.95)  # arcsec, g r i
FIELD_OF_VIEW = 12.8  # arcsec
SEEING_WIDENING = 0.45  # arcsec: the broadest target above the worst seeing

FULL = dict(n_lenses=600, n_nonlenses=600, size=32, encoder="tiny", pretrain_batch=64,
            pretrain_steps=300, steps=150, finetune_batch=32, labels_fraction=0.1,
            max_shift=2, seeds=[0, 1, 2])
QUICK = dict(n_lenses=40, n_nonlenses=40, size=32, encoder="tiny", pretrain_batch=16,
             pretrain_steps=6, steps=4, finetune_batch=8, labels_fraction=0.5,
             max_shift=2, seeds=[0])


def parse_args(argv=None):
    p = benchmark_parser(__doc__, "benchmarks/results/ablation", "data, runs, results.json, results.md",
                         quick_help="tiny end-to-end check of every variant (numbers meaningless)")
    p.add_argument("--estimate", action="store_true",
                   help="time one full-size cell (baseline, first seed) in OUT/estimate and "
                        "print the projected wall time of the whole ablation; writes no results")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--normalization", choices=("dataset", "asinh", "none"), default="dataset",
                   help="data.normalization of every variant (see the module docstring)")
    add_setting_flags(p, FULL)
    args = p.parse_args(argv)
    fill_settings(args, QUICK if args.quick else FULL)
    if "baseline" not in args.variants:
        args.variants.insert(0, "baseline")  # every difference is to the baseline
    return args


def base_config(args, seed, augment):
    from kerasssl.config import RunConfig

    return RunConfig.from_dict({
        "seed": seed,
        "data": {"seed": seed, "normalization": args.normalization, "nan_policy": "median"},
        "pretrain": {"method": "simclr", "encoder": args.encoder, "epochs": 1,
                     "batch_size": args.pretrain_batch, "knn_monitor": False,
                     "augment": augment},
        "finetune": {"seed": seed, "batch_size": args.finetune_batch, "learning_rate": 3e-3,
                     "encoder_lr_scale": 0.1, "class_weight": "balanced", "augment": True},
        "evaluate": {"split": "test", "bootstrap": 10},  # the CIs are not used here
        "export": {"enabled": False},
    })


def train_statistics(args, image_set, seed, run_dir):
    """Per band, from the seed's train split only: mean / std and the median sky std (normalised)."""
    from kerasssl.data.clean import band_stats, normalize, repair_nonfinite
    from kerasssl.data.split import check_split
    from kerasssl.layers.sky import sky_std

    cfg = base_config(args, seed, {})
    train = check_split(run_dir, image_set, cfg.data).indices(image_set, "train")
    raw = image_set.images[train]
    stats = band_stats(raw)
    repaired = repair_nonfinite(raw, "median")
    if args.normalization == "asinh":
        normalised = normalize(repaired, "asinh")
    else:
        normalised = normalize(repaired, "dataset", stats) if args.normalization == "dataset" \
            else repaired
    sky = np.asarray(sky_std(normalised.astype("float32"))).reshape(len(train), -1)
    return {"mean_over_std": [m / s for m, s in zip(stats["mean"], stats["std"])],
            "median_sky_std": [float(v) for v in np.median(sky, axis=0)]}


def _round(value):
    return float(f"{value:.4g}")


def variant_augment(variant, args, stats, channels):
    """``pretrain.augment`` for one variant: overrides of SimCLR's default views."""
    from kerasssl.layers.views import STAGE_DEFAULTS, STAGE_SETS

    if variant == "baseline":
        return {}
    if variant in STAGE_SETS:  # a named set of the library: what DEFAULT_STAGES may name
        overrides = set_overrides(variant)
        if variant == "shift" and args.max_shift != STAGE_DEFAULTS["shift"]["max_shift"]:
            overrides["shift"] = {"max_shift": args.max_shift}
        return overrides
    if variant == "reddening":
        return {"reddening": {"ebv": [0.0, 0.1]}}
    if variant == "psf":
        pixel_scale = FIELD_OF_VIEW / args.size
        seeing = list(WORST_SEEING[:channels]) if channels == 3 else [max(WORST_SEEING)] * channels
        return {"blur": False, "psf": {
            "psf_fwhm": seeing,
            "target_fwhm": [[s, round(s + SEEING_WIDENING, 3)] for s in seeing],
            "pixel_scale": pixel_scale, "probability": 0.5}}
    if variant == "skynoise":
        return {"noise": False, "skynoise": {
            "target_std": [[_round(s), _round(1.5 * s)] for s in stats["median_sky_std"]],
            "relative": False,
            "probability": 0.5}}
    raise ValueError(variant)


def set_overrides(name):
    """``pretrain.augment`` that turns the default stage set into STAGE_SETS[name]."""
    from kerasssl.layers.views import DEFAULT_STAGES, STAGE_SETS

    base, target = STAGE_SETS[DEFAULT_STAGES], STAGE_SETS[name]
    overrides = {stage: False for stage in base if stage not in target}
    overrides.update({stage: value for stage, value in target.items() if base.get(stage) != value})
    return overrides


def steps_to_epochs(n_images, batch_size, steps):
    """Epochs of full batches that give at least ``steps`` optimizer steps."""
    per_epoch = max(1, n_images // batch_size)
    return max(1, math.ceil(steps / per_epoch)), per_epoch


def run_cell(args, data, image_set, variant, seed, run_dir):
    """Pretrain one variant for one seed, then probe / fine-tune and evaluate each arm."""
    from kerasssl.config import RunConfig
    from kerasssl.data.split import check_split
    from kerasssl.evaluate import evaluate_run
    from kerasssl.finetune import finetune
    from kerasssl.pretrain import pretrain

    if run_dir.exists():
        shutil.rmtree(run_dir)  # a cell always starts fresh: no stale checkpoint resumes
    started = time.perf_counter()
    stats = train_statistics(args, image_set, seed, run_dir)
    augment = variant_augment(variant, args, stats, image_set.images.shape[-1])
    cfg = base_config(args, seed, augment)
    n_train = len(check_split(run_dir, image_set, cfg.data).train)
    epochs, per_epoch = steps_to_epochs(n_train, args.pretrain_batch, args.pretrain_steps)
    raw = cfg.to_dict()
    raw["pretrain"].update(epochs=epochs, steps_per_epoch=math.ceil(args.pretrain_steps / epochs))
    cfg = RunConfig.from_dict(raw)
    run_dir.mkdir(parents=True)
    cfg.save(run_dir / "config.yaml")
    history = pretrain(cfg, data, run_dir, resume=False, verbose=0, image_set=image_set)
    pretrain_s = time.perf_counter() - started
    n_labeled = max(1, round(args.labels_fraction * n_train))
    ft_epochs, _ = steps_to_epochs(n_labeled, args.finetune_batch, args.steps)
    cell = {"variant": variant, "seed": seed, "augment": augment, "train_stats": stats,
            "pretrain_steps": cfg.pretrain.epochs * cfg.pretrain.steps_per_epoch,
            "pretrain_loss_first_last": [float(history["loss"][0]), float(history["loss"][-1])],
            "pretrain_seconds": pretrain_s, "arms": {}}
    for arm in args.arms:
        t = time.perf_counter()
        record = finetune(cfg, data, run_dir, mode=arm, labels_fraction=args.labels_fraction,
                          epochs=ft_epochs, output=run_dir / f"classifier_{arm}.keras",
                          patience=None, image_set=image_set)
        report = evaluate_run(record["model"], data, run_dir, split="test", cfg=cfg,
                              report_path=run_dir / f"report_{arm}.json", image_set=image_set)
        cell["arms"][arm] = {"roc_auc": float(report["roc_auc"]), "n_labeled": record["n_labeled"],
                             "epochs": ft_epochs, "best_epoch": record["best_epoch"],
                             "seconds": time.perf_counter() - t}
    cell["seconds"] = time.perf_counter() - started
    return cell


def summarise(cells, variants, arms):
    """Per variant and arm: mean / std of test ROC-AUC and the paired difference to the baseline."""
    table = {}
    for arm in arms:
        base = {c["seed"]: c["arms"][arm]["roc_auc"] for c in cells
                if c["variant"] == "baseline" and arm in c["arms"]}
        for variant in variants:
            aucs = {c["seed"]: c["arms"][arm]["roc_auc"] for c in cells
                    if c["variant"] == variant and arm in c["arms"]}
            if not aucs:
                continue
            values = list(aucs.values())
            diffs = [aucs[s] - base[s] for s in sorted(set(aucs) & set(base))]
            table[f"{variant}@{arm}"] = {
                "variant": variant, "arm": arm, "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "aucs": values, "n_seeds": len(values),
                "diff_mean": float(np.mean(diffs)) if diffs else None,
                "diff_std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0,
                "better_on_seeds": sum(d > 0 for d in diffs)}
    return table


def markdown(table, variants, arms, meta):
    lines = ["| variant | " + " | ".join(f"{arm} AUC | Δ vs baseline" for arm in arms) + " |",
             "|---|" + "---|---|" * len(arms)]
    for variant in variants:
        row = []
        for arm in arms:
            cell = table.get(f"{variant}@{arm}")
            if cell is None:
                row += ["-", "-"]
                continue
            row.append(f"{cell['mean']:.3f} ± {cell['std']:.3f}")
            row.append("—" if variant == "baseline" else
                       f"{cell['diff_mean']:+.3f} ± {cell['diff_std']:.3f} "
                       f"({cell['better_on_seeds']}/{cell['n_seeds']} seeds better)")
        lines.append(f"| {variant} | " + " | ".join(row) + " |")
    lines += ["", meta["description"], "", "Variants (each ONE change to SimCLR's default views):"]
    lines += [f"- `{v}`: `{meta['augment'].get(v, {})}`" for v in variants]
    bound = meta.get("reddening_offset_bound")
    if bound is not None:
        lines += ["", f"Reddening under `dataset` normalisation is off by at most {bound:.3f} "
                      "(normalised units, per band; the constant (1 - f_b) mean_b / std_b at "
                      "E(B-V) = 0.1)."]
    return "\n".join(lines) + "\n"


def prepare_data(args, out):
    data = args.data
    if data is None:
        from kerasssl.simulate import simulate

        data = out / "data"
        if not data.exists():
            print(f"simulating {args.n_lenses} + {args.n_nonlenses} three-band {args.size}px "
                  f"images -> {data}", flush=True)
            simulate(data, fmt="three-band", n_lenses=args.n_lenses,
                     n_nonlenses=args.n_nonlenses, size=args.size, seed=1234)
    return data


def estimate(args):
    """Time one full-size cell and project the whole ablation's wall time."""
    from kerasssl.data.load import load_images

    import os
    import resource

    scratch = args.out / "estimate"
    data = prepare_data(args, args.out)
    image_set = load_images(data)
    t = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    cell = run_cell(args, data, image_set, "baseline", args.seeds[0], scratch / "cell")
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
    cells = len(args.variants) * len(args.seeds)
    # On a quiet machine a cell takes between its CPU time spread over every
    # core and its CPU time on one; a shared machine's wall time is above both.
    quiet = (cpu_s / (os.cpu_count() or 1), cpu_s)
    print(f"one cell (baseline, seed {args.seeds[0]}, {cell['pretrain_steps']} pretraining steps, "
          f"arms {', '.join(args.arms)}): {seconds:.0f} s wall, {cpu_s:.0f} s CPU; the ablation "
          f"({len(args.variants)} variants x {len(args.seeds)} seeds = {cells} cells): "
          f"~{seconds * cells / 60:.0f} min at this wall time, "
          f"{quiet[0] * cells / 60:.0f}-{quiet[1] * cells / 60:.0f} min from the CPU time "
          "on a quiet machine")
    shutil.rmtree(scratch)
    return quiet[1] * cells


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from kerasssl.data.load import load_images
    from kerasssl.rundir import versions, write_json_atomic

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.estimate:
        estimate(args)
        return 0
    started = time.perf_counter()
    data = prepare_data(args, out)
    image_set = load_images(data)  # read once; every cell uses the same arrays
    cells = []
    for seed in args.seeds:
        for variant in args.variants:
            cell = run_cell(args, data, image_set, variant, seed, out / "runs" / f"{variant}_seed{seed}")
            cells.append(cell)
            aucs = ", ".join(f"{arm} {v['roc_auc']:.3f}" for arm, v in cell["arms"].items())
            print(f"seed {seed} {variant:10s} test ROC-AUC {aucs}  [{cell['seconds']:.0f} s]",
                  flush=True)
    table = summarise(cells, args.variants, args.arms)
    offsets = [abs(r) for c in cells for r in c["train_stats"]["mean_over_std"]]
    # E(B-V) = 0.1 dims g by the largest factor of the three DECam coefficients.
    worst_factor = 1.0 - 10 ** (-0.4 * 3.214 * 0.1)
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seeds": args.seeds, "variants": args.variants, "arms": args.arms,
        "data": str(data), "normalization": args.normalization,
        "settings": {k: getattr(args, k) for k in FULL},
        "augment": {c["variant"]: c["augment"] for c in cells},
        "reddening_offset_bound": (worst_factor * max(offsets)
                                   if args.normalization == "dataset" and offsets else None),
        "seconds": time.perf_counter() - started,
        "versions": versions(),
        "description": (
            f"Test ROC-AUC, mean ± std over seeds {args.seeds}; Δ: paired difference to the "
            f"baseline (same seed: same split, initialisation and draws), mean ± std. "
            f"{args.n_lenses}+{args.n_nonlenses} simulated three-band {args.size}px images, "
            f"SimCLR on {args.encoder}, {args.pretrain_steps} pretraining steps of "
            f"{args.pretrain_batch}, then {args.labels_fraction:.0%} of the train labels: "
            f"{' and '.join(args.arms)} for {args.steps} steps of {args.finetune_batch}; "
            f"data.normalization {args.normalization}."
            + (" QUICK run: numbers meaningless." if args.quick else "")),
    }
    write_json_atomic(out / "results.json", {"meta": meta, "table": table, "cells": cells})
    text = markdown(table, args.variants, args.arms, meta)
    tmp = out / "results.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "results.md")
    print()
    print(text)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'} in {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

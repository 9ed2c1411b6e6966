"""Label efficiency: does SSL pretraining save labels? (issue 5's quality benchmark)

On simulated three-band lens / non-lens images, for label fractions 1%, 10%,
100% of the training split and 3 seeds, compare test ROC-AUC of

- ``supervised``: the same architecture from random weights (the baseline),
- ``ssl+linear``: SSL-pretrained encoder, frozen, linear head,
- ``ssl+full``: SSL-pretrained encoder fine-tuned at 0.1x the head's rate,
- ``supervised-long`` (a control, at 10% and 100% only): the supervised
  baseline given ``--control-steps`` (5x) gradient steps, so a "win" for SSL
  cannot come from an under-trained baseline.

Protocol (the same for every cell, so the cells compare):

- one simulated data set; per seed, one stratified split (``data.seed``) and
  one SSL pretraining on the training split (labels unused);
- every fine-tuning gets the same budget of gradient steps (``--steps``),
  whatever the labels fraction: epochs = ceil(steps / batches per epoch), so
  1% of the labels is not also 100x fewer updates; the epoch with the best
  validation ROC-AUC is kept (the val split is the same in every cell);
- test ROC-AUC on the held-out test split (never seen in pretraining or
  fine-tuning); class imbalance handled by balanced class weights.

Goals of the project: SSL at 10% >= supervised at 100%; SSL at 1% > supervised at 10%.
Each goal is checked against the stronger supervised baseline at that
fraction (``supervised`` or ``supervised-long``, by mean), on the means and
seed by seed (the arms of one seed share its split, so the per-seed
differences are paired). The script prints the table and states plainly
whether each goal is met and on how many seeds it holds.

Full run (2-core CPU; see the report for the size chosen and its timing):
    .venv/bin/python benchmarks/label_efficiency.py --out benchmarks/results/label_efficiency

End-to-end check at a tiny size (3 CPU-minutes; numbers meaningless):
    .venv/bin/python benchmarks/label_efficiency.py --quick --out /tmp/le_quick
"""

from __future__ import annotations

import argparse
import logging
import math
import operator
import sys
import time
from pathlib import Path

import numpy as np

ARMS = ("supervised", "supervised-long", "ssl+linear", "ssl+full")
SSL_ARMS = ("ssl+linear", "ssl+full")
SUPERVISED_ARMS = ("supervised", "supervised-long")
MODE_OF_ARM = {"supervised": "supervised", "supervised-long": "supervised",
               "ssl+linear": "linear", "ssl+full": "full"}

FULL = dict(n_lenses=1200, n_nonlenses=1200, size=32, encoder="tiny", method="simclr",
            pretrain_epochs=40, pretrain_batch=128, steps=300, finetune_batch=32,
            seeds=[0, 1, 2], fractions=[0.01, 0.1, 1.0],
            control_steps=1500, control_fractions=[0.1, 1.0])
QUICK = dict(n_lenses=80, n_nonlenses=60, size=16, encoder="tiny", method="simclr",
             pretrain_epochs=1, pretrain_batch=32, steps=4, finetune_batch=16,
             seeds=[0, 1], fractions=[0.1, 1.0],
             control_steps=8, control_fractions=[1.0])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/label_efficiency"),
                   help="output folder (data, runs, results.json, results.md)")
    p.add_argument("--quick", action="store_true", help="tiny end-to-end check (numbers meaningless)")
    p.add_argument("--data", type=Path, default=None,
                   help="use this three-band folder instead of simulating one")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                   help="run only these arms (pretraining is skipped when no SSL arm is asked)")
    for key, value in FULL.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, list):
            p.add_argument(flag, type=type(value[0]), nargs="+", default=None)
        else:
            p.add_argument(flag, type=type(value), default=None)
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def run_config(args, seed):
    from kerasssl.config import RunConfig

    return RunConfig.from_dict({
        "seed": seed,
        "data": {"seed": seed, "normalization": "asinh", "nan_policy": "median"},
        "pretrain": {"method": args.method, "encoder": args.encoder, "epochs": args.pretrain_epochs,
                     "batch_size": args.pretrain_batch, "knn_monitor": False},
        "finetune": {"seed": seed, "batch_size": args.finetune_batch, "learning_rate": 3e-3,
                     "encoder_lr_scale": 0.1, "class_weight": "balanced", "augment": True},
        "evaluate": {"split": "test", "bootstrap": 200},
        "export": {"enabled": False},
    })


def epochs_for(n_labeled, batch_size, steps):
    """Epochs that give about ``steps`` gradient steps on ``n_labeled`` images."""
    return max(1, math.ceil(steps / max(1, math.ceil(n_labeled / batch_size))))


def run_cell(cfg, data, run_dir, arm, fraction, args, image_set):
    """Fine-tune one arm at one labels fraction and evaluate it on the test split."""
    from kerasssl.data.split import Split
    from kerasssl.rundir import RunDir
    from kerasssl.evaluate import evaluate_run
    from kerasssl.finetune import finetune

    n_train = len(Split.load(RunDir(run_dir).split).train)
    steps = args.control_steps if arm == "supervised-long" else args.steps
    epochs = epochs_for(max(1, round(fraction * n_train)), args.finetune_batch, steps)
    tag = f"{arm.replace('+', '_')}_{fraction:g}"
    t = time.perf_counter()
    record = finetune(cfg, data, run_dir, mode=MODE_OF_ARM[arm], labels_fraction=fraction,
                      epochs=epochs, output=run_dir / f"classifier_{tag}.keras",
                      patience=None, image_set=image_set)
    report = evaluate_run(record["model"], data, run_dir, split="test", cfg=cfg,
                          report_path=run_dir / f"report_{tag}.json", image_set=image_set)
    return {"arm": arm, "fraction": fraction, "roc_auc": report["roc_auc"],
            "roc_auc_ci": report["roc_auc_ci"], "pr_auc": report["pr_auc"],
            "n_labeled": record["n_labeled"], "steps": steps, "epochs": epochs,
            "best_epoch": record["best_epoch"], "seconds": time.perf_counter() - t}


def summarise(cells, fractions):
    table = {}
    for arm in ARMS:
        for f in fractions:
            aucs = [c["roc_auc"] for c in cells if c["arm"] == arm and c["fraction"] == f]
            if aucs:
                table[f"{arm}@{f:g}"] = {"arm": arm, "fraction": f, "mean": float(np.mean(aucs)),
                                         "std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0,
                                         "n_seeds": len(aucs), "aucs": aucs}
    return table


def goals(table, cells):
    """The project's two claims, on the means and seed by seed.

    The SSL side is the better SSL arm at its fraction, the supervised side the
    stronger supervised arm at its fraction (both chosen by mean, then held
    fixed across seeds). ``met`` is judged on the means; ``seeds_held`` counts
    the seeds on which the same comparison holds (paired: one split per seed).
    None where a cell is missing.
    """
    def best(arms, f):
        found = [(table[f"{a}@{f:g}"]["mean"], a) for a in arms if f"{a}@{f:g}" in table]
        return max(found) if found else (None, None)

    def per_seed(arm, f):
        return {c["seed"]: c["roc_auc"] for c in cells if c["arm"] == arm and c["fraction"] == f}

    out = {}
    for ssl_f, sup_f, rel, holds in ((0.1, 1.0, ">=", operator.ge), (0.01, 0.1, ">", operator.gt)):
        a, ssl_arm = best(SSL_ARMS, ssl_f)
        b, sup_arm = best(SUPERVISED_ARMS, sup_f)
        goal = {"ssl": a, "ssl_arm": ssl_arm, "supervised": b, "supervised_arm": sup_arm,
                "met": None, "paired_diff_mean": None, "paired_diff_std": None,
                "seeds_held": None, "n_seeds": None}
        if a is not None and b is not None:
            goal["met"] = bool(holds(a, b))
            ssl_seeds, sup_seeds = per_seed(ssl_arm, ssl_f), per_seed(sup_arm, sup_f)
            seeds = sorted(set(ssl_seeds) & set(sup_seeds))
            diffs = [ssl_seeds[k] - sup_seeds[k] for k in seeds]
            goal.update(paired_diff_mean=float(np.mean(diffs)),
                        paired_diff_std=float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0,
                        seeds_held=sum(holds(ssl_seeds[k], sup_seeds[k]) for k in seeds),
                        n_seeds=len(seeds))
        out[f"best SSL @ {ssl_f:g} {rel} best supervised @ {sup_f:g}"] = goal
    return out


def markdown(table, fractions, meta, goal):
    head = "| method | " + " | ".join(f"{f:.0%} labels" for f in fractions) + " |"
    lines = [head, "|" + "---|" * (len(fractions) + 1)]
    for arm in ARMS:
        if not any(f"{arm}@{f:g}" in table for f in fractions):
            continue  # an arm this run did not ask for
        row = []
        for f in fractions:
            cell = table.get(f"{arm}@{f:g}")
            row.append(f"{cell['mean']:.3f} ± {cell['std']:.3f}" if cell else "-")
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"Test ROC-AUC, mean ± std over seeds {meta['seeds']}. {meta['description']}")
    lines.append("")
    for name, g in goal.items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        nums = "" if g["met"] is None else (
            f" on the means ({g['ssl_arm']} {g['ssl']:.3f} vs {g['supervised_arm']} "
            f"{g['supervised']:.3f}); paired per seed: difference {g['paired_diff_mean']:+.3f} "
            f"± {g['paired_diff_std']:.3f}, holds on {g['seeds_held']}/{g['n_seeds']} seeds")
        lines.append(f"- {name}: {verdict}{nums}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from kerasssl.pretrain import pretrain
    from kerasssl.rundir import versions, write_json_atomic

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = args.data
    if data is None:
        from kerasssl.simulate import simulate

        data = out / "data"
        if not data.exists():
            print(f"simulating {args.n_lenses} + {args.n_nonlenses} three-band {args.size}px images -> {data}")
            simulate(data, fmt="three-band", n_lenses=args.n_lenses, n_nonlenses=args.n_nonlenses,
                     size=args.size, seed=1234)
    from kerasssl.data.load import load_images

    image_set = load_images(data)  # read once; every cell uses the same arrays
    cells = []
    for seed in args.seeds:
        cfg = run_config(args, seed)
        run_dir = out / "runs" / f"seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        t = time.perf_counter()
        if any(arm in SSL_ARMS for arm in args.arms):
            print(f"seed {seed}: pretraining {args.method}/{args.encoder} for {args.pretrain_epochs} epochs")
            pretrain(cfg, data, run_dir, resume=False, verbose=2)
        else:  # the supervised arms still need the seed's split
            from kerasssl.data.split import load_or_create_split

            load_or_create_split(run_dir, image_set, cfg.data)
        pretrain_s = time.perf_counter() - t
        for fraction in args.fractions:
            for arm in args.arms:
                if arm == "supervised-long" and (not args.control_steps
                                                 or fraction not in args.control_fractions):
                    continue
                cell = run_cell(cfg, data, run_dir, arm, fraction, args, image_set)
                cell.update(seed=seed, pretrain_seconds=pretrain_s)
                cells.append(cell)
                print(f"  {arm:15s} {fraction:>5.0%} labels ({cell['n_labeled']:4d} images, "
                      f"{cell['epochs']} epochs): test ROC-AUC {cell['roc_auc']:.3f} "
                      f"[{cell['seconds']:.0f} s]", flush=True)
    table = summarise(cells, args.fractions)
    goal = goals(table, cells)
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seeds": args.seeds,
        "fractions": args.fractions,
        "arms": args.arms,
        "data": str(data),
        "settings": {k: getattr(args, k) for k in FULL},
        "seconds": time.perf_counter() - started,
        "versions": versions(),
        "description": (f"{args.n_lenses}+{args.n_nonlenses} simulated three-band {args.size}px images, "
                        f"{args.method} on {args.encoder} for {args.pretrain_epochs} epochs, "
                        f"{args.steps} fine-tuning steps per cell"
                        + (f" ({args.control_steps} for supervised-long)"
                           if args.control_steps and "supervised-long" in args.arms else "")
                        + ", test split 15%."
                        + (" QUICK run: numbers meaningless." if args.quick else "")),
    }
    write_json_atomic(out / "results.json", {"meta": meta, "table": table, "goals": goal, "cells": cells})
    text = markdown(table, args.fractions, meta, goal)
    tmp = out / "results.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "results.md")
    print()
    print(text)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'} in {meta['seconds']:.0f} s")


if __name__ == "__main__":
    main()

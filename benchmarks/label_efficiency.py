"""Label efficiency: how many labels does SSL pretraining save? (issues 5, 14, 15)

On simulated three-band lens / non-lens images, for label fractions 1, 3, 10,
30, 100 % of the training split and 3 seeds, compare test ROC-AUC of

- ``supervised``: the same architecture from random weights (the baseline),
- ``supervised-long`` (a control, at 10 % and 100 % only): the baseline given
  ``--control-steps`` (5x) gradient steps, so a "win" for SSL cannot come from
  an under-trained baseline,
- ``ssl+full``: SSL-pretrained encoder fine-tuned at 0.1x the head's rate,
- ``ssl+linear`` (optional, ``--arms``): the same encoder frozen, linear head,
- with ``--pool N`` (default 10): ``ssl+full+pool`` / ``ssl+linear+pool``, the
  same arms on an encoder pretrained on a simulated unlabeled pool N x the
  labelled set's size *plus* the train split (the real workflow:
  ``pretrain.unlabeled``, streamed from the pool's folder, leak guard on).
  Supervised arms use the labels only.

Protocol (the same for every cell, so the cells compare):

- one simulated labelled set, one simulated pool (lens fraction = the labelled
  set's, from its own random stream, so it shares no image with it); per seed
  one stratified split (``data.seed``), the same ``split.json`` in every run dir
  of that seed, so every arm of a seed sees the same train / val / test;
- per seed and ``--methods`` entry, one SSL pretraining per variant (train split
  only; pool + train split), both for exactly ``--pretrain-steps`` gradient
  steps at ``--pretrain-batch`` (``steps_per_epoch`` fixed), so the pool's
  effect is the data, not more updates;
- every fine-tuning gets the same budget of gradient steps (``--steps``),
  whatever the labels fraction: epochs = ceil(steps / batches per epoch); the
  epoch with the best validation ROC-AUC is kept (same val split everywhere);
- test ROC-AUC on the held-out test split, never seen by pretraining (the leak
  guard also drops pool images equal to a val / test image) or fine-tuning.

The label multiplier (issue 15): for an SSL arm at k labels, how many labels
the supervised baseline needs for the same test AUC, interpolated linearly in
AUC on log(labels) between measured supervised points. The supervised curve
is, per fraction, the stronger of ``supervised`` / ``supervised-long`` by mean
(held fixed across seeds), made monotone by a running maximum over labels (a
model with more labels can do at least what it did with fewer: discarding
labels is always possible). "> X×" (X = largest supervised labels / k) when SSL
beats supervised at 100 %; "< 1×" when SSL at k is below supervised at k. It is
computed seed by seed on the paired split (median, min–max) and on the means.

Resumable: every finished cell is ``OUT/cells/<key>.json`` and every finished
pretraining ``RUN/pretrain_done.json``; rerunning the same command skips them
(a changed setting is refused: use another ``--out``).

Full run (2-core CPU, ~50 min on a quiet machine; the estimate is printed at start):
    .venv/bin/python benchmarks/label_efficiency.py --pool 10 --out benchmarks/results/label_efficiency_pool

End-to-end check at a tiny size (~3 CPU-minutes; numbers meaningless):
    .venv/bin/python benchmarks/label_efficiency.py --quick --pool 10 --out /tmp/le_quick
"""

from __future__ import annotations

import json
import logging
import math
import operator
import shutil
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cell_settings import add_setting_flags, benchmark_parser, fill_settings  # noqa: E402  (benchmarks/cell_settings.py)

BASE_ARMS = ("supervised", "supervised-long", "ssl+linear", "ssl+full")
POOL_ARMS = ("ssl+linear+pool", "ssl+full+pool")
ARMS = BASE_ARMS + POOL_ARMS
SSL_ARMS = ("ssl+linear", "ssl+full") + POOL_ARMS
SUPERVISED_ARMS = ("supervised", "supervised-long")
MODE_OF_ARM = {"supervised": "supervised", "supervised-long": "supervised",
               "ssl+linear": "linear", "ssl+full": "full",
               "ssl+linear+pool": "linear", "ssl+full+pool": "full"}
# A MoCo queue must turn over within the run and not hold many copies of a
# small train split; the library default (65,536) is for survey-sized pools.
METHOD_OPTIONS = {"moco": {"queue_size": 1024}}
LABELLED_SEED, POOL_SEED = 1234, 4321

FULL = dict(n_lenses=600, n_nonlenses=600, size=32, encoder="tiny", pool=10,
            pretrain_steps=500, pretrain_epochs=10, pretrain_batch=128, steps=300, finetune_batch=32,
            seeds=[0, 1, 2], fractions=[0.01, 0.03, 0.1, 0.3, 1.0], methods=["simclr"],
            pool_methods=None, arms=["supervised", "supervised-long", "ssl+full"],
            control_steps=1500, control_fractions=[0.1, 1.0])
QUICK = dict(n_lenses=80, n_nonlenses=60, size=16, encoder="tiny", pool=0,
             pretrain_steps=4, pretrain_epochs=2, pretrain_batch=32, steps=4, finetune_batch=16,
             seeds=[0, 1], fractions=[0.1, 0.3, 1.0], methods=["simclr"],
             pool_methods=None, arms=list(BASE_ARMS), control_steps=8, control_fractions=[1.0])

# Wall time on this 2-core CPU, quiet machine, tiny encoder, 32 px (from the
# earlier 1200+1200 full run; pool/train ratio from a 60-step pair; a loaded machine is ~2x slower).
SECONDS_PER_PRETRAIN_STEP = {"train": 0.30, "pool": 0.33}   # batch 128; pool: 1.10x train, measured
FINETUNE_SECONDS = dict(fixed=7.0, per_step=0.048, per_epoch=0.04)  # batch 32
SIMULATED_IMAGES_PER_SECOND = 250.0


def parse_args(argv=None):
    p = benchmark_parser(__doc__, "benchmarks/results/label_efficiency_pool",
                         "data, pool, runs, cells, results.json|md|png")
    add_setting_flags(p, FULL, special={
        "arms": dict(nargs="+", choices=BASE_ARMS,
                     help="arm families; with --pool > 0 each SSL arm also runs on the pool"),
        "methods": dict(nargs="+", help="SSL methods (each is another pretraining per seed and variant)"),
        "pool_methods": dict(nargs="+",
                             help="the methods that also pretrain on the pool (default: every --methods entry)"),
        "pool": dict(type=float, help="unlabeled pool size as a multiple of the labelled set (0: none)"),
    })
    args = p.parse_args(argv)
    fill_settings(args, QUICK if args.quick else FULL)
    if args.pool_methods is None:
        args.pool_methods = list(args.methods)
    stray = sorted(set(args.pool_methods) - set(args.methods))
    if stray:
        p.error(f"--pool-methods {' '.join(stray)}: not in --methods")
    if args.pretrain_steps % args.pretrain_epochs:
        p.error(f"--pretrain-steps {args.pretrain_steps} must be a multiple of --pretrain-epochs "
                f"{args.pretrain_epochs} (steps_per_epoch is fixed)")
    return args


def all_arms(args):
    """The arms this run measures: the families asked, plus their pool variants."""
    arms = [a for a in BASE_ARMS if a in args.arms]
    if args.pool > 0:
        arms += [a + "+pool" for a in ("ssl+linear", "ssl+full") if a in args.arms]
    return arms


def arm_label(arm, method, methods):
    """The table's name of an arm: the method is named when several are compared."""
    return arm if method is None or len(methods) == 1 else f"{arm} [{method}]"


def run_config(args, seed, method="simclr", pool_path=None):
    from kerasssl.config import RunConfig

    return RunConfig.from_dict({
        "seed": seed,
        "data": {"seed": seed, "normalization": "asinh", "nan_policy": "median"},
        "pretrain": {"method": method, "encoder": args.encoder, "epochs": args.pretrain_epochs,
                     "steps_per_epoch": args.pretrain_steps // args.pretrain_epochs,
                     "batch_size": args.pretrain_batch, "knn_monitor": False,
                     "method_options": dict(METHOD_OPTIONS.get(method, {})),
                     "unlabeled": [str(pool_path)] if pool_path else []},
        "finetune": {"seed": seed, "batch_size": args.finetune_batch, "learning_rate": 3e-3,
                     "encoder_lr_scale": 0.1, "class_weight": "balanced", "augment": True},
        "evaluate": {"split": "test", "bootstrap": 200},
        "export": {"enabled": False},
    })


def epochs_for(n_labeled, batch_size, steps):
    """Epochs that give about ``steps`` gradient steps on ``n_labeled`` images."""
    return max(1, math.ceil(steps / max(1, math.ceil(n_labeled / batch_size))))


# -- the label multiplier (pure) ----------------------------------------------------
def supervised_envelope(labels, aucs):
    """The supervised curve sorted by labels and made monotone (running maximum)."""
    order = np.argsort(np.asarray(labels, dtype=float))
    n = np.asarray(labels, dtype=float)[order]
    return n, np.maximum.accumulate(np.asarray(aucs, dtype=float)[order])


def labels_to_match(labels, aucs, target):
    """Labels the supervised envelope needs to reach ``target`` AUC, or None above its maximum.

    Linear in AUC on log(labels) between the measured points; the first point
    where the envelope reaches ``target`` when it is flat there.
    """
    n, env = supervised_envelope(labels, aucs)
    if target > env[-1]:
        return None
    j = int(np.argmax(env >= target))
    if j == 0 or env[j] == target:
        return float(n[j])
    t = (target - env[j - 1]) / (env[j] - env[j - 1])
    return float(math.exp(math.log(n[j - 1]) + t * (math.log(n[j]) - math.log(n[j - 1]))))


def envelope_at(labels, aucs, n_k):
    """The envelope's AUC at ``n_k`` labels (log-linear between points, clamped at the ends)."""
    n, env = supervised_envelope(labels, aucs)
    return float(np.interp(math.log(n_k), np.log(n), env))


def label_multiplier(sup_labels, sup_aucs, n_k, ssl_auc):
    """How many times ``n_k`` labels supervised needs to match SSL's ``ssl_auc`` at ``n_k``.

    Returns ``{"kind", "value", "text"}``: kind "exact" (value = the
    multiplier, >= 1), "above" (SSL beats supervised at its most labels; value
    = that many labels / n_k, a lower bound: "> X×"), or "below" (SSL under the
    supervised curve at n_k: "< 1×", value None).

    Example:
        >>> label_multiplier([10, 100, 1000], [0.6, 0.7, 0.8], 10, 0.65)["text"]
        '3.2×'
    """
    if ssl_auc < envelope_at(sup_labels, sup_aucs, n_k):
        return {"kind": "below", "value": None, "text": "< 1×"}
    needed = labels_to_match(sup_labels, sup_aucs, ssl_auc)
    if needed is None:
        x = float(max(sup_labels)) / n_k
        return {"kind": "above", "value": x, "text": f"> {x:.3g}×"}
    value = max(1.0, needed / n_k)
    return {"kind": "exact", "value": value, "text": f"{value:.2g}×" if value < 10 else f"{value:.0f}×"}


def _order_key(m):
    return {"below": (0.0, 0), "exact": (m["value"], 1), "above": (m["value"], 2)}[m["kind"]]


def summarise_multipliers(per_seed):
    """Median and min–max of per-seed multipliers, censored ones ("> X×", "< 1×") ordered as such.

    Example:
        >>> summarise_multipliers([{"kind": "below", "value": None, "text": "< 1×"},
        ...                        {"kind": "exact", "value": 2.0, "text": "2×"},
        ...                        {"kind": "above", "value": 10.0, "text": "> 10×"}])["text"]
        '2× (< 1×–> 10×)'
    """
    ranked = sorted(per_seed, key=_order_key)
    if not ranked:
        return {"median": None, "min": None, "max": None, "text": "-"}
    mid = len(ranked) // 2
    if len(ranked) % 2:
        median = ranked[mid]
    else:  # two middle values: their geometric mean when both exact, else the lower (conservative)
        a, b = ranked[mid - 1], ranked[mid]
        median = ({"kind": "exact", "value": math.sqrt(a["value"] * b["value"]), "text": ""}
                  if a["kind"] == b["kind"] == "exact" else a)
        if median["kind"] == "exact":
            v = median["value"]
            median["text"] = f"{v:.2g}×" if v < 10 else f"{v:.0f}×"
    text = median["text"] if len(ranked) == 1 else f"{median['text']} ({ranked[0]['text']}–{ranked[-1]['text']})"
    return {"median": median, "min": ranked[0], "max": ranked[-1], "text": text}


def multipliers(table, cells, fractions):
    """Label multiplier per SSL arm and fraction: on the means and seed by seed (paired split)."""
    chosen = {}  # fraction -> the stronger supervised arm there, by mean
    for f in fractions:
        found = [(table[f"{a}@{f:g}"]["mean"], a) for a in SUPERVISED_ARMS if f"{a}@{f:g}" in table]
        if found:
            chosen[f] = max(found)[1]
    if len(chosen) < 2:
        return {}
    n_of = {}
    for c in cells:
        n_of.setdefault(c["fraction"], c["n_labeled"])
    sup_f = sorted(chosen)
    sup_n = [n_of[f] for f in sup_f]
    sup_mean = [table[f"{chosen[f]}@{f:g}"]["mean"] for f in sup_f]
    by_seed = {}
    for c in cells:
        by_seed[(c.get("label", c["arm"]), c["fraction"], c["seed"])] = c["roc_auc"]
    seeds = sorted({c["seed"] for c in cells})
    out = {}
    for key, row in table.items():
        if row["arm"] not in SSL_ARMS or row["fraction"] not in n_of:
            continue
        f, label = row["fraction"], row["label"]
        n_k = n_of[f]
        per_seed = {}
        for s in seeds:
            curve = [by_seed.get((chosen[g], g, s)) for g in sup_f]
            if (label, f, s) in by_seed and None not in curve:
                per_seed[s] = label_multiplier(sup_n, curve, n_k, by_seed[(label, f, s)])
        out[key] = {"label": label, "fraction": f, "n_labeled": n_k,
                    "on_means": label_multiplier(sup_n, sup_mean, n_k, row["mean"]),
                    "per_seed": per_seed, "seeds": summarise_multipliers(list(per_seed.values()))}
    return {"supervised_reference": {f"{f:g}": chosen[f] for f in sup_f}, "cells": out}


# -- cells ---------------------------------------------------------------------------
def run_cell(cfg, data, run_dir, arm, fraction, args, image_set):
    """Fine-tune one arm at one labels fraction and evaluate it on the test split."""
    from kerasssl.data.split import Split
    from kerasssl.evaluate import evaluate_run
    from kerasssl.finetune import finetune
    from kerasssl.rundir import RunDir

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
    labels = []
    for c in cells:  # first-seen order within the arms' order
        label = c.get("label", c["arm"])
        if (c["arm"], label) not in labels:
            labels.append((c["arm"], label))
    # each +pool arm right below its train-split-only twin: side by side in the table
    labels.sort(key=lambda al: (BASE_ARMS.index(al[0].replace("+pool", "")), al[1].replace("+pool", ""),
                                "+pool" in al[0]))
    table = {}
    for arm, label in labels:
        for f in fractions:
            aucs = [c["roc_auc"] for c in cells if c.get("label", c["arm"]) == label and c["fraction"] == f]
            if aucs:
                table[f"{label}@{f:g}"] = {"arm": arm, "label": label, "fraction": f,
                                           "mean": float(np.mean(aucs)),
                                           "std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0,
                                           "n_seeds": len(aucs), "aucs": aucs}
    return table


def goals(table, cells):
    """The project's two claims, on the means and seed by seed.

    The SSL side is the better SSL arm at its fraction (with or without the
    pool), the supervised side the stronger supervised arm at its fraction
    (both chosen by mean, then held fixed across seeds). ``met`` is judged on
    the means; ``seeds_held`` counts the seeds on which the same comparison
    holds (paired: one split per seed). None where a cell is missing.
    """
    def best(arms, f):
        found = [(row["mean"], row["label"]) for row in table.values()
                 if row["arm"] in arms and row["fraction"] == f]
        return max(found) if found else (None, None)

    def per_seed(label, f):
        return {c["seed"]: c["roc_auc"] for c in cells if c.get("label", c["arm"]) == label and c["fraction"] == f}

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


def pool_gains(table, cells):
    """Paired (per seed) AUC gain of each ``+pool`` arm over its train-split-only twin."""
    out = {}
    for key, row in table.items():
        if "+pool" not in row["arm"]:
            continue
        twin = row["label"].replace("+pool", "")
        f = row["fraction"]
        a = {c["seed"]: c["roc_auc"] for c in cells if c.get("label", c["arm"]) == row["label"] and c["fraction"] == f}
        b = {c["seed"]: c["roc_auc"] for c in cells if c.get("label", c["arm"]) == twin and c["fraction"] == f}
        diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
        if diffs:
            out[key] = {"label": row["label"], "fraction": f, "mean": float(np.mean(diffs)),
                        "std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0,
                        "seeds_better": int(sum(d > 0 for d in diffs)), "n_seeds": len(diffs)}
    return out


def markdown(table, fractions, meta, goal, mult=None, gains=None):
    head = "| method | " + " | ".join(f"{f:.0%} labels" for f in fractions) + " |"
    lines = [head, "|" + "---|" * (len(fractions) + 1)]
    for label in dict.fromkeys(row["label"] for row in table.values()):
        row = []
        for f in fractions:
            cell = table.get(f"{label}@{f:g}")
            row.append(f"{cell['mean']:.3f} ± {cell['std']:.3f}" if cell else "-")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"Test ROC-AUC, mean ± std over seeds {meta['seeds']}. {meta['description']}")
    if gains:
        lines.append("")
        lines.append("Pool gain (paired, per seed: +pool − train split only): " + "; ".join(
            f"{g['label']} @ {g['fraction']:.0%} {g['mean']:+.3f} ± {g['std']:.3f} "
            f"({g['seeds_better']}/{g['n_seeds']} seeds better)" for g in gains.values()))
    lines.append("")
    for name, g in goal.items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        nums = "" if g["met"] is None else (
            f" on the means ({g['ssl_arm']} {g['ssl']:.3f} vs {g['supervised_arm']} "
            f"{g['supervised']:.3f}); paired per seed: difference {g['paired_diff_mean']:+.3f} "
            f"± {g['paired_diff_std']:.3f}, holds on {g['seeds_held']}/{g['n_seeds']} seeds")
        lines.append(f"- {name}: {verdict}{nums}")
    if mult and mult.get("cells"):
        ref = ", ".join(f"{float(f):.0%}: {a}" for f, a in mult["supervised_reference"].items())
        lines += ["", "## Label multiplier", "",
                  "Labels the supervised baseline needs to match the SSL arm's test AUC at k labels, "
                  "÷ k (log-labels interpolation on the supervised curve, made monotone; "
                  f"reference per fraction: {ref}). Cell: on the means; per seed median (min–max).", "",
                  "| SSL arm | " + " | ".join(f"{f:.0%}" for f in fractions) + " |",
                  "|" + "---|" * (len(fractions) + 1)]
        for label in dict.fromkeys(m["label"] for m in mult["cells"].values()):
            row = []
            for f in fractions:
                m = mult["cells"].get(f"{label}@{f:g}")
                row.append(f"{m['on_means']['text']}; {m['seeds']['text']}" if m else "-")
            lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(path, table, title):
    """AUC vs labels (log x), mean ± std over seeds: supervised and SSL, with and without the pool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from kerasssl.rundir import replacing

    fig, ax = plt.subplots(figsize=(6.5, 4.6), dpi=120)
    labels = list(dict.fromkeys(row["label"] for row in table.values()))
    families = list(dict.fromkeys(label.replace("+pool", "") for label in labels))
    for label in labels:
        rows = sorted((r for r in table.values() if r["label"] == label), key=lambda r: r["fraction"])
        x = [r["n_labeled"] for r in rows]
        y = [r["mean"] for r in rows]
        e = [r["std"] for r in rows]
        family = label.replace("+pool", "")
        if label.startswith("supervised"):
            style = dict(color="black" if label == "supervised" else "grey", ls="-" if label == "supervised" else ":",
                         marker="s")
        else:
            style = dict(color=f"C{families.index(family)}", ls="--" if "+pool" in label else "-",
                         marker="o" if "+pool" in label else "^")
        ax.errorbar(x, y, yerr=e, capsize=3, ms=5, label=label, **style)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test ROC-AUC (mean ± std over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(textwrap.fill(title, 110), fontsize=6)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


# -- the run -------------------------------------------------------------------------
def estimate_seconds(args, n_train):
    """Rough wall time of the run from the rates measured on this CPU (printed at start)."""
    arms = all_arms(args)
    scale = args.pretrain_batch / 128
    per_method = {"train": len(args.methods) if any(a in ("ssl+linear", "ssl+full") for a in arms) else 0,
                  "pool": len(args.pool_methods) if any("+pool" in a for a in arms) else 0}
    pretrain = sum(SECONDS_PER_PRETRAIN_STEP[v] * scale * args.pretrain_steps * n for v, n in per_method.items())
    finetune = 0.0
    for f in args.fractions:
        n = max(1, round(f * n_train))
        for arm in arms:
            if arm == "supervised-long" and (not args.control_steps or f not in args.control_fractions):
                continue
            steps = args.control_steps if arm == "supervised-long" else args.steps
            times = (len(args.pool_methods) if "+pool" in arm else len(args.methods)) if arm in SSL_ARMS else 1
            epochs = epochs_for(n, args.finetune_batch, steps)
            finetune += times * (FINETUNE_SECONDS["fixed"] + FINETUNE_SECONDS["per_step"] * epochs
                                 * math.ceil(n / args.finetune_batch) + FINETUNE_SECONDS["per_epoch"] * epochs)
    n_images = (args.n_lenses + args.n_nonlenses) * (1 + args.pool)
    return len(args.seeds) * (pretrain + finetune) + n_images / SIMULATED_IMAGES_PER_SECOND


def settings_of(args):
    return {k: getattr(args, k) for k in FULL} | {"data": str(args.data) if args.data else None,
                                                    "method_options": METHOD_OPTIONS}


def check_resumable(out, settings):
    """Refuse to mix cells of different settings in one folder (one line, exit 2).

    One change is allowed: more methods (and more of them on the pool). Cells are
    keyed by arm, method, seed and fraction, so a method added to a finished run
    reuses its supervised cells and every earlier method's cells unchanged.
    """
    from kerasssl.rundir import write_json_atomic

    path = out / "settings.json"
    settings = json.loads(json.dumps(settings))
    if path.exists():
        recorded = json.loads(path.read_text())
        recorded.setdefault("pool_methods", recorded.get("methods"))  # runs from before the option
        grown = {k for k in ("methods", "pool_methods")
                 if set(recorded.get(k) or []) <= set(settings.get(k) or [])}
        diff = sorted(k for k in set(recorded) | set(settings)
                      if recorded.get(k) != settings.get(k) and k not in grown)
        if diff:
            print(f"{out}: holds a run with other settings ({', '.join(diff)}); use another --out",
                  file=sys.stderr)
            sys.exit(2)
        if recorded == settings:
            return
    write_json_atomic(path, settings)


def pretrain_once(cfg, data, run_dir, split_src, image_set, what):
    """Pretrain into ``run_dir`` unless a finished pretraining is there; returns its seconds."""
    from kerasssl.pretrain import pretrain
    from kerasssl.rundir import write_json_atomic

    done = run_dir / "pretrain_done.json"
    if done.exists():
        return json.loads(done.read_text())["seconds"]
    if run_dir.exists():  # cut short mid-pretraining: start it again
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    shutil.copy(split_src, run_dir / "split.json")  # the seed's split in every run dir
    cfg.save(run_dir / "config.yaml")
    print(f"  pretraining {what}", flush=True)
    t = time.perf_counter()
    pretrain(cfg, data, run_dir, resume=False, verbose=0, image_set=image_set)
    seconds = time.perf_counter() - t
    if (run_dir / "split.json").read_bytes() != Path(split_src).read_bytes():
        raise RuntimeError(f"{run_dir}: pretraining changed the seed's split")
    write_json_atomic(done, {"seconds": seconds})
    print(f"  pretrained in {seconds:.0f} s", flush=True)
    return seconds


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from kerasssl.data.load import load_images
    from kerasssl.data.split import load_or_create_split
    from kerasssl.rundir import versions, write_json_atomic, write_text_atomic

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    check_resumable(out, settings_of(args))
    started = time.perf_counter()
    arms = all_arms(args)
    n_labelled = args.n_lenses + args.n_nonlenses
    n_train_guess = n_labelled - 2 * round(0.15 * n_labelled)
    print(f"estimated wall time: {estimate_seconds(args, n_train_guess) / 60:.0f} min on a quiet 2-core CPU "
          f"(cells already done are skipped)", flush=True)
    data = args.data
    if data is None:
        from kerasssl.simulate import simulate

        data = out / "data"
        if not data.exists():
            print(f"simulating {args.n_lenses} + {args.n_nonlenses} three-band {args.size}px images -> {data}")
            simulate(data, fmt="three-band", n_lenses=args.n_lenses, n_nonlenses=args.n_nonlenses,
                     size=args.size, seed=LABELLED_SEED)
    image_set = load_images(data)  # read once; every cell uses the same arrays
    pool_path = None
    if args.pool > 0:
        from kerasssl.simulate import simulate_pool

        pool_path = out / "pool"
        n_pool = int(round(args.pool * len(image_set.labels)))
        lens_fraction = float(np.mean(image_set.labels == 1))  # the loader puts the lens class at 1
        if not pool_path.exists():
            print(f"simulating an unlabeled pool of {n_pool} images (lens fraction {lens_fraction:.3f}) -> {pool_path}")
            simulate_pool(pool_path, n=n_pool, lens_fraction=lens_fraction, size=int(image_set.image_shape[0]), seed=POOL_SEED)
    cell_dir = out / "cells"
    cell_dir.mkdir(exist_ok=True)
    cells = []
    for seed in args.seeds:
        seed_dir = out / "runs" / f"seed{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        cfg = run_config(args, seed)
        cfg.save(seed_dir / "config.yaml")
        load_or_create_split(seed_dir, image_set, cfg.data)  # the seed's split, copied to each run dir
        split_src = seed_dir / "split.json"
        split_copy = out / "runs" / f"split_seed{seed}.json"  # finetune rewrites `labeled` in place
        if not split_copy.exists():
            shutil.copy(split_src, split_copy)
        jobs = [(None, None, seed_dir, [a for a in arms if a in SUPERVISED_ARMS], 0.0)]
        for method in args.methods:
            for pool in (False, True):
                wanted = [a for a in arms if a in SSL_ARMS and ("+pool" in a) == pool
                          and (not pool or method in args.pool_methods)]
                if wanted:
                    jobs.append((method, pool, seed_dir / f"{method}{'_pool' if pool else ''}", wanted, None))
        for method, pool, run_dir, job_arms, pretrain_s in jobs:
            todo = [(arm, f) for f in args.fractions for arm in job_arms
                    if not (arm == "supervised-long" and (not args.control_steps or f not in args.control_fractions))]
            key_of = {(arm, f): f"seed{seed}_{arm}_{method or 'none'}_{f:g}" for arm, f in todo}
            run_cfg = cfg if method is None else run_config(args, seed, method, pool_path if pool else None)
            if method is not None and any(not (cell_dir / f"{k}.json").exists() for k in key_of.values()):
                what = (f"seed {seed}: {method}/{args.encoder}, {args.pretrain_steps} steps at batch "
                        f"{args.pretrain_batch} on the train split" + (" + the pool" if pool else ""))
                pretrain_s = pretrain_once(run_cfg, data, run_dir, split_copy, image_set, what)
            for arm, f in todo:
                path = cell_dir / f"{key_of[(arm, f)]}.json"
                if path.exists():
                    cell = json.loads(path.read_text())
                    # named again: a method added since the cell was written changes the labels
                    cells.append(cell | {"label": arm_label(arm, method, args.methods)})
                    continue
                cell = run_cell(run_cfg, data, run_dir, arm, f, args, image_set)
                cell.update(seed=seed, method=method, label=arm_label(arm, method, args.methods),
                            pretrain_seconds=pretrain_s)
                write_json_atomic(path, cell)
                cells.append(cell)
                print(f"  seed {seed} {cell['label']:18s} {f:>5.0%} labels ({cell['n_labeled']:4d} images, "
                      f"{cell['epochs']} epochs): test ROC-AUC {cell['roc_auc']:.3f} "
                      f"[{cell['seconds']:.0f} s]", flush=True)
    table = summarise(cells, args.fractions)
    for row in table.values():
        row["n_labeled"] = next(c["n_labeled"] for c in cells if c["fraction"] == row["fraction"])
    goal = goals(table, cells)
    mult = multipliers(table, cells, args.fractions)
    gains = pool_gains(table, cells)
    pool_note = (f" SSL '+pool' arms: pretrained on an unlabeled pool of {args.pool:g}x the labelled set "
                 f"({int(round(args.pool * len(image_set.labels)))} images, same lens fraction) plus the train split, "
                 f"the same {args.pretrain_steps} steps as without it." if pool_path else "")
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seeds": args.seeds, "fractions": args.fractions, "arms": arms, "methods": args.methods,
        "data": str(data), "pool": str(pool_path) if pool_path else None,
        "settings": settings_of(args),
        "seconds": time.perf_counter() - started,
        "seconds_note": "this invocation only; cells carry their own seconds (a resumed run adds up)",
        "versions": versions(),
        "description": (f"{args.n_lenses}+{args.n_nonlenses} simulated three-band {args.size}px images, "
                        f"{'/'.join(args.methods)} on {args.encoder} for {args.pretrain_steps} steps at batch "
                        f"{args.pretrain_batch}, {args.steps} fine-tuning steps per cell"
                        + (f" ({args.control_steps} for supervised-long)"
                           if args.control_steps and "supervised-long" in arms else "")
                        + ", test split 15%." + pool_note
                        + (" QUICK run: numbers meaningless." if args.quick else "")),
    }
    write_json_atomic(out / "results.json", {"meta": meta, "table": table, "goals": goal,
                                             "label_multiplier": mult, "pool_gain": gains, "cells": cells})
    text = markdown(table, args.fractions, meta, goal, mult, gains)
    write_text_atomic(out / "results.md", text)
    plot(out / "results.png", table, meta["description"])
    print()
    print(text)
    print(f"wrote {out / 'results.json'}, results.md, results.png in {meta['seconds']:.0f} s")


if __name__ == "__main__":
    main()

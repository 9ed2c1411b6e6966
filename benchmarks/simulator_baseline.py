"""Simulator throughput and how hard the simulated task is for a linear model.

(a) Throughput at 64x64, one process: images per CPU-second (= per core; a
    busy shared machine distorts it less than wall time) and per wall-second,
    for rendering only and for ``simulate()`` end to end (files + metadata),
    for the ``hst`` (1 band) and ``three-band`` formats; beside lenstronomy's
    own reused SimAPI/ImageModel on a simpler scene (the ~445 images/s
    reference), in alternating blocks in the same process (medians).
(b) Difficulty: 1,000 + 1,000 three-band 64x64 images; 5-fold stratified
    ROC-AUC of a logistic regression on asinh-scaled pixels (the best of a
    small C grid: an optimistic linear baseline). The task should need a real
    model: this must stay well below 0.9.
(c) Central galaxy alone: the same 5-fold LR on (1) the true deflector
    parameters from metadata.csv (magnitudes, size, Sersic index, axis ratio,
    seeing) - must be ~0.5, the populations are identical by construction -
    and (2) the central 3x3-pixel fluxes of each band (can exceed 0.5 only
    through lensed light that falls on the centre).

Run:  .venv/bin/python benchmarks/simulator_baseline.py [--n 1000] [--json out.json]
      [--skip-throughput | --skip-difficulty]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _rates(step, n):
    """(images per CPU-second, images per wall-second) of n calls of step()."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        step()
    return n / (time.process_time() - cpu), n / (time.perf_counter() - wall)


def _ours(fmt, size):
    """One render per call (no file): alternating lens / non-lens, fresh seeds."""
    from kerasssl.simulate import LENS, NONLENS, simulate_one

    counter = iter(range(10**9))

    def step():
        i = next(counter)
        simulate_one(fmt, size, 0, LENS if i % 2 else NONLENS, i)

    step()  # warm up: imports, numba cache, renderer
    return step


def _lenstronomy_reference(size):
    """The reference point: lenstronomy's own SimAPI/ImageModel, reused, simple scene.

    SIE + SHEAR, Sersic deflector light, one Sersic source, Gaussian PSF,
    magnitudes -> amplitudes and noise through SimAPI; random parameters per image.
    """
    from lenstronomy.SimulationAPI.sim_api import SimAPI

    from kerasssl.simulate import SURVEYS

    band = SURVEYS["hst"].bands[0]
    sim = SimAPI(size, band.kwargs_single_band(SURVEYS["hst"].pixel_scale(size)),
                 {"lens_model_list": ["SIE", "SHEAR"],
                  "lens_light_model_list": ["SERSIC_ELLIPSE"],
                  "source_light_model_list": ["SERSIC_ELLIPSE"]})
    model = sim.image_model_class({"supersampling_factor": 1})
    rng = np.random.default_rng(0)

    def step():
        e1, e2, s1, s2 = rng.uniform(-0.2, 0.2, 4)
        lens = [{"theta_E": rng.uniform(0.5, 1.5), "e1": e1, "e2": e2, "center_x": 0.0,
                 "center_y": 0.0}, {"gamma1": 0.02, "gamma2": -0.01, "ra_0": 0.0, "dec_0": 0.0}]
        light = [{"magnitude": rng.uniform(18.5, 21), "R_sersic": 0.8, "n_sersic": 4.0,
                  "e1": e1, "e2": e2, "center_x": 0.0, "center_y": 0.0}]
        source = [{"magnitude": rng.uniform(23, 26), "R_sersic": 0.2, "n_sersic": 1.0,
                   "e1": s1, "e2": s2, "center_x": rng.uniform(-0.3, 0.3),
                   "center_y": rng.uniform(-0.3, 0.3)}]
        light, source, _ = sim.magnitude2amplitude(light, source)
        image = model.image(lens, source, light)
        return image + sim.noise_for_model(image, seed=int(rng.integers(2**31)))

    step()
    return step


def throughput(size, n, rounds=5):
    """Render-only rates of ours (hst, three-band) and of the lenstronomy reference.

    The contenders run in alternating blocks (``rounds`` of n / rounds images
    each), so a shared machine's load swings hit all of them; medians over
    rounds are reported, and ours / reference per round. Then ``simulate()``
    end to end (files + metadata.csv), n images per format.
    """
    from kerasssl.simulate import simulate

    contenders = {"lenstronomy_imagemodel_reference": _lenstronomy_reference(size),
                  "hst": _ours("hst", size), "three-band": _ours("three-band", size)}
    per_round = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, step in contenders.items():
            per_round[name].append(_rates(step, max(1, n // rounds)))
    results = {}
    for name, rates in per_round.items():
        cpu, wall = np.array(rates).T
        results[name] = {"render_per_cpu_s": float(np.median(cpu)),
                         "render_per_wall_s": float(np.median(wall))}
        if name != "lenstronomy_imagemodel_reference":
            reference = np.array(per_round["lenstronomy_imagemodel_reference"])[:, 0]
            results[name]["cpu_rate_vs_reference"] = float(np.median(cpu / reference))
    for fmt in ("hst", "three-band"):
        with tempfile.TemporaryDirectory() as tmp:
            cpu, wall = time.process_time(), time.perf_counter()
            simulate(Path(tmp) / "out", fmt=fmt, n_lenses=n // 2, n_nonlenses=n - n // 2,
                     size=size, seed=0)
            results[fmt]["simulate_per_cpu_s"] = n / (time.process_time() - cpu)
            results[fmt]["simulate_per_wall_s"] = n / (time.perf_counter() - wall)
    return results


def asinh_scale(images):
    """Per image and band: subtract the median, divide by the robust (MAD) noise, arcsinh."""
    flat = images.reshape(images.shape[0], images.shape[1], -1)
    median = np.median(flat, axis=-1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(flat - median), axis=-1, keepdims=True)
    return np.arcsinh((flat - median) / np.maximum(mad, 1e-12)).reshape(images.shape)


def cv_auc(features, labels, cs, seed=0):
    """Best mean 5-fold ROC-AUC over the C grid (standardised features)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    scores = {}
    for c in cs:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        scores[c] = float(np.mean(cross_val_score(model, features, labels, cv=folds,
                                                  scoring="roc_auc")))
    best = max(scores, key=scores.get)
    return {"auc": scores[best], "best_C": best, "by_C": scores}


def difficulty(n, size, workers):
    """LR baselines on a fresh three-band set (no NaNs: the LR cannot take them)."""
    from kerasssl.simulate import simulate

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "3b"
        simulate(root, fmt="three-band", n_lenses=n, n_nonlenses=n, size=size, seed=123,
                 workers=workers)
        rows = list(csv.DictReader(open(root / "metadata.csv")))
        images = np.stack([np.load(root / r["filename"]) for r in rows]).astype(np.float64)
    labels = np.array([int(r["label"]) for r in rows])
    pixels = asinh_scale(images).reshape(len(rows), -1)
    c = size // 2
    centre = images[:, :, c - 1:c + 2, c - 1:c + 2].reshape(len(rows), -1)
    param_cols = [k for k in rows[0] if k.startswith(("deflector_", "psf_fwhm_"))]
    params = np.array([[float(r[k]) for k in param_cols] for r in rows])
    return {
        "n_per_class": n,
        "pixels_asinh": cv_auc(pixels, labels, cs=(1e-5, 1e-4, 1e-3, 1e-2)),
        "deflector_parameters": {**cv_auc(params, labels, cs=(1.0,)), "columns": param_cols},
        "central_3x3_fluxes": cv_auc(centre, labels, cs=(1.0,)),
        "lens_arc_snr_i_percentiles_10_50_90": np.percentile(
            [float(r["arc_snr_i"]) for r in rows if r["label"] == "1"], [10, 50, 90]).tolist(),
        "confusers": {k: sum(r["confuser"] == k for r in rows if r["label"] == "0")
                      for k in ("none", "ring", "spiral", "blend")},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images per class for (b), (c)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--throughput-n", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="to simulate the (b) set")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-difficulty", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = {"machine": "2-core shared CPU, no GPU"}
    if not args.skip_throughput:
        results[f"throughput_{args.size}px"] = throughput(args.size, args.throughput_n)
        print(json.dumps(results[f"throughput_{args.size}px"]), flush=True)
    if not args.skip_difficulty:
        results["difficulty_three_band"] = difficulty(args.n, args.size, args.workers)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

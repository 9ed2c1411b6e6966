"""The lenstronomy simulator: physics against lenstronomy, layouts, determinism, NaNs."""

import csv
import math
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("lenstronomy")

from kerasssl.simulate import (  # noqa: E402
    LENS, NONLENS, SURVEYS, Component, Renderer, Scene, draw_scene, exact_count,
    metadata_columns, nan_indices, pool_positions, render, simulate, simulate_pool,
    sprinkle_nans)
from kerasssl.simulate.render import gaussian_blur_matrix  # noqa: E402
from kerasssl.errors import DataError, KerassslError  # noqa: E402


def read_metadata(root):
    with open(root / "metadata.csv") as f:
        return list(csv.DictReader(f))


def all_files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def hst_set(tmp_path_factory):
    """hst 16x16: 7 lenses, 5 non-lenses, NaNs in 50 % of the files; workers=1."""
    root = tmp_path_factory.mktemp("sim") / "hst"
    summary = simulate(root, fmt="hst", n_lenses=7, n_nonlenses=5, size=16, seed=3,
                       nan_fraction=0.5)
    return root, summary


@pytest.fixture(scope="module")
def three_band_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "3b"
    summary = simulate(root, fmt="three-band", n_lenses=4, n_nonlenses=3, size=24, seed=5)
    return root, summary


POOL_ARGS = {"n": 24, "lens_fraction": 0.3, "size": 16, "seed": 3, "nan_fraction": 0.25}


@pytest.fixture(scope="module")
def pool_set(tmp_path_factory):
    """An unlabeled pool: 24 images, round(0.3 * 24) = 7 lenses; workers=1."""
    root = tmp_path_factory.mktemp("sim") / "pool"
    return root, simulate_pool(root, **POOL_ARGS)


def lens_scene(survey, source_r_eff=0.15, source_pos=(0.25, -0.1), n_deflector=4.0):
    """A hand-made lens: deflector Sersic + SIE/shear + a lensed Sersic source."""
    defl = {"R_sersic": 0.7, "n_sersic": n_deflector, "e1": 0.1, "e2": -0.05,
            "center_x": 0.02, "center_y": -0.01}
    src = {"R_sersic": source_r_eff, "n_sersic": 1.0, "e1": -0.1, "e2": 0.1,
           "center_x": source_pos[0], "center_y": source_pos[1]}
    lens = [{"theta_E": 1.1, "e1": 0.08, "e2": -0.03, "center_x": 0.02, "center_y": -0.01},
            {"gamma1": 0.03, "gamma2": -0.02, "ra_0": 0.02, "dec_0": -0.01}]
    bands = len(survey.bands)
    comps = [Component("deflector", "SERSIC_ELLIPSE", [defl], [1.0], np.full(bands, 19.5)),
             Component("source", "SERSIC_ELLIPSE", [src], [1.0], np.full(bands, 22.0),
                       lensed=True)]
    return Scene(LENS, lens, comps, np.full(bands, 0.12))


# --- physics -------------------------------------------------------------------


def test_profiles_match_lenstronomy():
    from lenstronomy.LightModel.light_model import LightModel

    rng = np.random.default_rng(0)
    x, y = rng.uniform(-3, 3, size=(2, 500))
    x[0], y[0] = 0.1, -0.2  # the centre: radius floor
    for n in (0.7, 1.0, 4.0):
        kw = {"amp": 2.5, "R_sersic": 0.6, "n_sersic": n, "e1": 0.2, "e2": -0.1,
              "center_x": 0.1, "center_y": -0.2}
        expected = LightModel(["SERSIC_ELLIPSE"]).surface_brightness(x, y, [kw])
        np.testing.assert_allclose(render.sersic_ellipse(x, y, kw), expected,
                                   rtol=1e-10)
        lenstronomy_total = LightModel(["SERSIC_ELLIPSE"]).total_flux([kw])[0]
        assert 2.5 * render.sersic_total_flux(kw) == pytest.approx(lenstronomy_total,
                                                                            rel=1e-12)
    kw = {"amp": 3.0, "sigma": 0.3, "center_x": 0.5, "center_y": 0.2}
    np.testing.assert_allclose(render.gaussian(x, y, kw),
                               LightModel(["GAUSSIAN"]).surface_brightness(x, y, [kw]),
                               rtol=1e-10)


def test_noiseless_image_matches_lenstronomy_image_model():
    """Our renderer vs lenstronomy's ImageModel, finely supersampled (the reference)."""
    survey = SURVEYS["hst"]
    renderer = Renderer(survey, 64)
    scene = lens_scene(survey)
    ours, _ = renderer.render(scene, None, noise=False)
    sim = renderer.sims[0]
    cps = [renderer.fluxes(c)[0] for c in scene.components]
    amps = [cps[i] / render.sersic_total_flux(c.kwargs[0])
            for i, c in enumerate(scene.components)]
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel

    psf = PSF(psf_type="GAUSSIAN", fwhm=0.12, pixel_size=renderer.pixel_scale, truncation=5)
    model = ImageModel(sim.data_class, psf, sim.lens_model_class, sim.source_model_class,
                       sim.lens_light_model_class, kwargs_numerics={"supersampling_factor": 8})
    theirs = model.image(scene.lens_kwargs,
                         [{**scene.components[1].kwargs[0], "amp": amps[1]}],
                         [{**scene.components[0].kwargs[0], "amp": amps[0]}])
    ours = ours[0].astype(np.float64)
    # One sample per pixel, except the finely integrated deflector core.
    assert ours.sum() == pytest.approx(theirs.sum(), rel=4e-3)
    assert np.abs(ours - theirs).max() < 0.01 * theirs.max()


def test_lensed_flux_equals_point_source_magnification():
    """A compact source's lensed flux = its flux x sum |mu_i| of lenstronomy's images."""
    from lenstronomy.LensModel.Solver.lens_equation_solver import LensEquationSolver

    survey = SURVEYS["hst"]
    renderer = Renderer(survey, 128)  # 0.05"/pixel
    scene = lens_scene(survey, source_r_eff=0.03, source_pos=(0.2, -0.1))
    with_source, info = renderer.render(scene, None, noise=False)
    without, _ = renderer.render(scene, None, drop=("source",), noise=False)
    arc = with_source[0].astype(np.float64) - without[0]
    solver = LensEquationSolver(renderer.lens_model)
    xs, ys = solver.image_position_from_source(0.2, -0.1, scene.lens_kwargs, min_distance=0.02,
                                               search_window=5)
    mu = np.abs(renderer.lens_model.magnification(xs, ys, scene.lens_kwargs)).sum()
    assert len(xs) >= 2
    source_flux = renderer.fluxes(scene.components[1])[0]
    assert arc.min() > -1e-4 * arc.max()
    assert arc.sum() / source_flux == pytest.approx(mu, rel=0.05)
    assert info["magnification"] == pytest.approx(mu, rel=0.05)
    assert info["arc_flux"][0] == pytest.approx(arc.sum(), rel=1e-4)


def test_deflector_flux_matches_its_magnitude():
    """Unit-flux images integrate to 1: a compact galaxy's pixels sum to its cps."""
    survey = SURVEYS["three-band"]
    renderer = Renderer(survey, 64)
    comp = Component("deflector", "SERSIC_ELLIPSE",
                     [{"R_sersic": 0.4, "n_sersic": 1.0, "e1": 0.0, "e2": 0.1,
                       "center_x": 0.0, "center_y": 0.0}], [1.0], np.array([21.0, 20.0, 19.0]))
    scene = Scene(NONLENS, None, [comp], np.array([1.0, 0.9, 0.8]))
    image, _ = renderer.render(scene, None, noise=False)
    zero_points = np.array([b.magnitude_zero_point for b in survey.bands])
    expected = 10 ** (-0.4 * (np.array([21.0, 20.0, 19.0]) - zero_points))
    np.testing.assert_allclose(image.sum(axis=(1, 2)), expected, rtol=0.01)


def test_unit_images_carry_unit_flux_even_below_the_sampling():
    """Tiny clumps are widened to the sample spacing without gaining or losing flux."""
    survey = SURVEYS["hst"]
    renderer = Renderer(survey, 64)  # 0.1" samples
    for sigma in (0.001, 0.03, 0.2):
        clump = Component("clumps", "GAUSSIAN",
                          [{"sigma": sigma, "center_x": 0.13, "center_y": -0.41}], [1.0],
                          np.array([22.0]))
        assert renderer.unit_image(clump).sum() == pytest.approx(1.0, rel=2e-3)
    ring = Component("ring", "RING", [{"radius": 1.0, "width": 0.1, "e1": 0.05, "e2": 0.0,
                                       "center_x": 0.0, "center_y": 0.0, "arc_extent": 3.0,
                                       "arc_angle": 1.0, "knots": 4, "knot_contrast": 0.5,
                                       "knot_phase": 0.0}], [1.0], np.array([22.0]))
    image = renderer.unit_image(ring)
    assert image.sum() == pytest.approx(1.0) and image.min() >= 0.0
    yy, xx = np.mgrid[:64, :64] - 31.5
    radius = np.hypot(xx, yy) * renderer.pixel_scale
    assert image[np.abs(radius - 1.0) < 0.25].sum() > 0.9  # the light is on the ring


def test_blur_matrix_is_a_normalised_gaussian():
    g = gaussian_blur_matrix(41, 2.0)
    point = np.zeros((41, 41))
    point[20, 20] = 1.0
    blurred = g @ point @ g.T
    assert blurred.sum() == pytest.approx(1.0, rel=1e-9)
    yy, xx = np.mgrid[:41, :41] - 20
    assert (blurred * (xx ** 2 + yy ** 2)).sum() / 2 == pytest.approx(4.0, rel=0.01)


def test_noise_follows_lenstronomy_noise_model():
    survey = SURVEYS["hst"]
    renderer = Renderer(survey, 64)
    scene = Scene(NONLENS, None, [], np.array([0.1]))
    image, _ = renderer.render(scene, np.random.default_rng(0))
    sky_sd = renderer.sims[0].background_noise
    assert image.std() == pytest.approx(sky_sd, rel=0.05)
    assert abs(image.mean()) < 5 * sky_sd / 64


def test_lens_differs_from_its_deflector_only_counterpart():
    """Same scene and noise without the source: the difference is the lensed light."""
    survey = SURVEYS["three-band"]
    renderer = Renderer(survey, 32)
    for index in range(6):
        scene = draw_scene(np.random.default_rng([9, index]), LENS, survey)
        lens, info = renderer.render(scene, np.random.default_rng(index))
        bare, _ = renderer.render(scene, np.random.default_rng(index), drop=("source", "clumps"))
        difference = (lens.astype(np.float64) - bare).sum(axis=(1, 2))
        cps = sum(renderer.fluxes(c) for c in scene.components if c.lensed)
        assert info["magnification"] > 1.0
        # The noise draws are shared, so the summed difference is the arc flux up
        # to the arc's own Poisson noise: sd <= sqrt(variance per e-/s x arc flux).
        tolerance = 5 * np.sqrt(renderer.poisson_variance * info["arc_flux"])
        assert np.all(np.abs(difference - info["arc_flux"]) < tolerance + 1e-4 * info["arc_flux"])
        assert np.all(info["arc_flux"] > cps)  # magnified
        assert np.all(info["arc_flux"] < 60 * cps)


def test_classes_share_the_deflector_population():
    """Deflector parameters and seeing have the same distribution in both classes."""
    from scipy.stats import ks_2samp

    survey = SURVEYS["three-band"]
    metas = {label: [draw_scene(np.random.default_rng([1, label, i]), label, survey).meta
                     for i in range(400)] for label in (LENS, NONLENS)}
    keys = [k for k in metas[LENS][0] if k.startswith(("deflector_", "psf_fwhm_"))]
    assert len(keys) == 9
    for key in keys:
        a = [m[key] for m in metas[LENS]]
        b = [m[key] for m in metas[NONLENS]]
        assert ks_2samp(a, b).pvalue > 1e-3, key
    lens_metas = metas[LENS]
    theta = np.array([m["einstein_radius"] for m in lens_metas])
    assert theta.min() >= 0.2 and theta.max() <= 2.0
    assert np.mean(theta < 0.6) > 0.1  # some barely resolved
    confusers = {m["confuser"] for m in metas[NONLENS]}
    assert confusers == {"none", "ring", "spiral", "blend"}
    assert {m["confuser"] for m in lens_metas} == {"none"}
    # Companions at the same rate in both classes: not a shortcut.
    rates = [np.mean([m["n_companions"] > 0 for m in metas[c]]) for c in (LENS, NONLENS)]
    assert abs(rates[0] - rates[1]) < 0.1


# --- layouts, metadata, determinism, NaNs -----------------------------------------


def test_hst_layout_names_shapes_and_metadata(hst_set):
    root, summary = hst_set
    files = [f for f in all_files(root) if f != "metadata.csv"]
    assert sorted(files) == sorted([f"{i}_hst.npy" for i in range(7)]
                                   + [f"nl_{i}_hst.npy" for i in range(5)])
    for name in files:
        array = np.load(root / name, allow_pickle=False)
        assert array.shape == (16, 16) and array.dtype == np.float32
    rows = read_metadata(root)
    assert list(rows[0]) == metadata_columns("hst")
    assert sorted(r["filename"] for r in rows) == sorted(files)
    for r in rows:
        lens = not r["filename"].startswith("nl_")
        assert r["class"] == ("lens" if lens else "nonlens")
        assert r["label"] == ("1" if lens else "0")
        assert (r["einstein_radius"] != "") == lens
        assert (r["confuser"] == "none") or not lens
    assert summary["n_images"] == 12
    assert not list(root.parent.glob("hst.tmp-*"))


def test_three_band_layout(three_band_set):
    root, _ = three_band_set
    files = [f for f in all_files(root) if f != "metadata.csv"]
    assert sorted(files) == sorted([f"lenses/lens_{i}.npy" for i in range(4)]
                                   + [f"nonlenses/nonlens_{i}.npy" for i in range(3)])
    rows = read_metadata(root)
    assert list(rows[0]) == metadata_columns("three-band")
    assert sorted(r["filename"] for r in rows) == sorted(files)
    for r in rows:
        array = np.load(root / r["filename"])
        assert array.shape == (3, 24, 24) and array.dtype == np.float32
        assert np.isfinite(array).all()
        assert r["class"] == r["filename"].split("/")[0]
        if r["label"] == "1":
            # Blue source, red deflector.
            assert float(r["source_mag_g"]) - float(r["source_mag_i"]) < \
                float(r["deflector_mag_g"]) - float(r["deflector_mag_i"])
            assert float(r["arc_snr_i"]) > 0


def test_nan_fraction_is_honoured(hst_set):
    root, summary = hst_set
    rows = read_metadata(root)
    with_nan = 0
    for r in rows:
        n_nan = int(np.isnan(np.load(root / r["filename"])).sum())
        assert n_nan == int(r["nan_pixels"])
        with_nan += n_nan > 0
        assert n_nan <= max(1, math.ceil(0.002 * 256)) + 1
    # round(0.5 * 7) + round(0.5 * 5) = 4 + 3 (half up), exactly.
    assert with_nan == summary["files_with_nan"] == 7


def test_nan_patterns_cover_the_requested_fraction():
    for i in range(30):
        image = np.zeros((3, 64, 64), np.float32)
        count = sprinkle_nans(image, np.random.default_rng(i))
        pixels = np.isnan(image).any(axis=0).sum()
        assert count == np.isnan(image).sum()
        assert 0.001 * 4096 - 1 <= pixels <= 0.002 * 4096 + 1
    assert len(nan_indices(1, LENS, 10, 0.25)) == 3
    assert nan_indices(1, LENS, 10, 0.0) == set()


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, hst_set):
    """`kerasssl simulate --workers 2` in a fresh process (forked workers, as users
    run it) writes exactly the bytes of the in-process, single-worker fixture."""
    root, _ = hst_set
    again = tmp_path / "again"
    result = subprocess.run(
        [sys.executable, "-m", "kerasssl", "simulate", str(again), "--format", "hst",
         "--n-lenses", "7", "--n-nonlenses", "5", "--size", "16", "--seed", "3",
         "--nan-fraction", "0.5", "--workers", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert all_files(again) == all_files(root)
    for name in all_files(root):
        assert (again / name).read_bytes() == (root / name).read_bytes(), name
    other = tmp_path / "other"
    simulate(other, fmt="hst", n_lenses=7, n_nonlenses=5, size=16, seed=4, nan_fraction=0.5)
    assert (other / "0_hst.npy").read_bytes() != (root / "0_hst.npy").read_bytes()


@pytest.mark.slow
def test_spawned_workers_write_the_same_bytes(tmp_path, monkeypatch):
    """The spawn start method (used when TensorFlow is loaded) gives the same files.

    Slow: every spawned worker imports lenstronomy afresh.
    """
    import multiprocessing

    from kerasssl.simulate import generate

    monkeypatch.setattr(generate, "_worker_context",
                        lambda: multiprocessing.get_context("spawn"))
    args = {"fmt": "three-band", "n_lenses": 2, "n_nonlenses": 2, "size": 16, "seed": 8,
            "nan_fraction": 0.5}
    simulate(tmp_path / "one", workers=1, **args)
    simulate(tmp_path / "two", workers=2, **args)
    for name in all_files(tmp_path / "one"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_refuses_non_empty_output_and_accepts_empty(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        simulate(out, fmt="hst", n_lenses=1, n_nonlenses=1, size=16, seed=0)
    assert all_files(out) == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    simulate(empty, fmt="hst", n_lenses=1, n_nonlenses=1, size=16, seed=0)
    assert len(all_files(empty)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]


@pytest.mark.parametrize("kwargs, message", [
    ({"fmt": "jpeg"}, "--format"),
    ({"n_lenses": -1}, "--n-lenses"),
    ({"n_lenses": 0, "n_nonlenses": 0}, "nothing to simulate"),
    ({"size": 8}, "--size"),
    ({"seed": -3}, "--seed"),
    ({"nan_fraction": 1.5}, "--nan-fraction"),
    ({"workers": 0}, "--workers"),
])
def test_bad_arguments_raise_one_line(tmp_path, kwargs, message):
    args = {"fmt": "hst", "n_lenses": 2, "n_nonlenses": 2, "size": 16, "seed": 0, **kwargs}
    with pytest.raises(KerassslError, match=re.escape(message)) as info:
        simulate(tmp_path / "out", **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_simulator_modules_import_only_public_names():
    """survey / scene / render / writer / generate talk through public names only."""
    import ast
    from pathlib import Path

    import kerasssl.simulate

    package = Path(kerasssl.simulate.__file__).parent
    modules = sorted(p.name for p in package.glob("*.py"))
    assert modules == ["__init__.py", "generate.py", "render.py", "scene.py", "survey.py",
                       "writer.py"]
    for name in modules:
        tree = ast.parse((package / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kerasssl"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{name} imports {private} from {node.module}"



# --- unlabeled pools ---------------------------------------------------------------


def test_pool_names_do_not_reveal_the_class(pool_set):
    root, summary = pool_set
    files = [f for f in all_files(root) if f != "metadata.csv"]
    assert files == [f"pool_{i:06d}.npy" for i in range(24)]  # flat, numbered, nothing else
    rows = read_metadata(root)
    assert list(rows[0]) == metadata_columns("pool")
    assert list(rows[0])[:3] == ["filename", "is_lens", "index"]
    assert [r["filename"] for r in rows] == files  # in the pool's order, not by class
    is_lens = [r["is_lens"] == "1" for r in rows]
    assert set(r["is_lens"] for r in rows) == {"0", "1"}
    # The lenses are spread through the pool, not a contiguous block.
    positions = [i for i, lens in enumerate(is_lens) if lens]
    assert positions != list(range(positions[0], positions[0] + len(positions)))
    for r in rows:
        array = np.load(root / r["filename"], allow_pickle=False)
        assert array.shape == (3, 16, 16) and array.dtype == np.float32
        assert (r["einstein_radius"] != "") == (r["is_lens"] == "1")
        assert int(np.isnan(array).sum()) == int(r["nan_pixels"])
    assert summary["format"] == "pool" and summary["bands"] == 3


def test_pool_has_exactly_round_n_times_fraction_lenses(pool_set):
    root, summary = pool_set
    rows = read_metadata(root)
    lenses = [r for r in rows if r["is_lens"] == "1"]
    assert len(rows) == 24
    assert len(lenses) == summary["n_lenses"] == round(24 * 0.3) == 7
    assert summary["n_nonlenses"] == 17
    # Each class's images are numbered 0..n-1 (with the seed they determine the image).
    assert sorted(int(r["index"]) for r in lenses) == list(range(7))
    assert sorted(int(r["index"]) for r in rows if r["is_lens"] == "0") == list(range(17))
    assert summary["files_with_nan"] == nan_count_expected(7, 17, 0.25)
    assert [exact_count(f, n) for f, n in ((0.05, 3000), (0.5, 5), (0.0, 9), (1.0, 9))] == \
        [150, 3, 0, 9]
    lens_at, nonlens_at = pool_positions(3, 7, 17)
    assert sorted(lens_at.tolist() + nonlens_at.tolist()) == list(range(24))


def nan_count_expected(n_lenses, n_nonlenses, fraction):
    return exact_count(fraction, n_lenses) + exact_count(fraction, n_nonlenses)


def test_pool_bytes_do_not_depend_on_the_workers(tmp_path, pool_set):
    """`--format pool --workers 2` in a fresh process writes the fixture's bytes."""
    root, _ = pool_set
    again = tmp_path / "again"
    result = subprocess.run(
        [sys.executable, "-m", "kerasssl", "simulate", str(again), "--format", "pool",
         "--n", "24", "--lens-fraction", "0.3", "--size", "16", "--seed", "3",
         "--nan-fraction", "0.25", "--workers", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert all_files(again) == all_files(root)
    for name in all_files(root):
        assert (again / name).read_bytes() == (root / name).read_bytes(), name


def test_pool_shares_no_image_with_a_labelled_set_of_the_same_seed(tmp_path, pool_set):
    root, _ = pool_set
    labelled = tmp_path / "3b"
    simulate(labelled, fmt="three-band", n_lenses=7, n_nonlenses=17, size=16, seed=3,
             nan_fraction=0.25)
    pool_bytes = {(root / f).read_bytes() for f in all_files(root) if f.endswith(".npy")}
    assert not pool_bytes & {(labelled / f).read_bytes() for f in all_files(labelled)
                             if f.endswith(".npy")}
    other = tmp_path / "seed4"
    simulate_pool(other, **{**POOL_ARGS, "seed": 4})
    assert (other / "pool_000000.npy").read_bytes() != (root / "pool_000000.npy").read_bytes()


def test_single_band_pool_is_hst_like(tmp_path):
    root = tmp_path / "pool1"
    summary = simulate_pool(root, n=5, lens_fraction=0.4, size=16, seed=1, bands=1)
    rows = read_metadata(root)
    assert list(rows[0]) == metadata_columns("pool", bands=1)
    assert "psf_fwhm_f814w" in rows[0] and "psf_fwhm_g" not in rows[0]
    assert sum(r["is_lens"] == "1" for r in rows) == summary["n_lenses"] == 2
    for r in rows:
        assert np.load(root / r["filename"]).shape == (16, 16)


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "--n: must be a whole number >= 1"),
    ({"lens_fraction": 1.5}, "--lens-fraction: must be in [0, 1]"),
    ({"lens_fraction": -0.1}, "--lens-fraction"),
    ({"bands": 2}, "--bands: must be 1 or 3"),
    ({"size": 8}, "--size"),
    ({"workers": 0}, "--workers"),
])
def test_bad_pool_arguments_raise_one_line(tmp_path, kwargs, message):
    args = {"n": 4, "lens_fraction": 0.5, "size": 16, "seed": 0, **kwargs}
    with pytest.raises(KerassslError, match=re.escape(message)) as info:
        simulate_pool(tmp_path / "out", **args)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_simulate_refuses_the_pool_format(tmp_path):
    with pytest.raises(KerassslError, match="--format pool.*--n and --lens-fraction"):
        simulate(tmp_path / "out", fmt="pool", n_lenses=2, n_nonlenses=2, size=16, seed=0)
    assert list(tmp_path.iterdir()) == []

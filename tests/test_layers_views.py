"""View pipelines: presets, overrides, errors, seeding (each method's defaults: test_methods_registry.py)."""

import keras
import numpy as np
import pytest

from kerasssl.errors import KerassslError
from kerasssl.layers.views import (
    ASYMMETRIC,
    DEFAULT_STAGES,
    PRESETS,
    STAGE_SETS,
    STAGES,
    SYMMETRIC,
    build_view_pair,
    build_view_pipeline,
    stage_layers,
    view_config,
)


def images(n=4, size=16, channels=3):
    rng = np.random.default_rng(0)
    return rng.normal(0.0, 2.0, size=(n, size, size, channels)).astype("float32")


def assert_lensing_views(views):
    """Both views: every stage spelled out, lensing defaults, two different augmentations."""
    for view in (1, 2):
        cfg = view_config(views, view)
        assert set(cfg) == set(STAGES)
        # Lensing defaults: symmetries, small rotation, mild crop, blur, relative noise.
        assert cfg["dihedral"] == {} and cfg["rotation"]["factor"] <= 0.1
        assert cfg["crop"]["scale"][0] >= 0.5
        assert cfg["noise"]["relative"] is True
    view1, view2 = build_view_pair(views, seed=0)
    x = images()
    a, b = np.asarray(view1(x, training=True)), np.asarray(view2(x, training=True))
    assert a.shape == b.shape == x.shape and np.isfinite(a).all() and np.isfinite(b).all()
    assert not np.allclose(a, b)  # two different views of the same images
    np.testing.assert_array_equal(np.asarray(view1(x, training=False)), x)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_lensing_views(preset):
    assert_lensing_views(preset)
    assert_lensing_views(PRESETS[preset])


def test_asymmetric_preset_blurs_one_view_and_a_single_config_serves_both():
    assert view_config(ASYMMETRIC, 1)["blur"]["probability"] == 1.0
    assert view_config(ASYMMETRIC, 2)["blur"]["probability"] == 0.1
    assert view_config(SYMMETRIC, 1) == view_config(SYMMETRIC, 2)
    light = view_config({"dihedral": True})
    assert light == view_config({"dihedral": True}, 2)
    assert [stage for stage, options in light.items() if options is not False] == ["dihedral"]
    # Dihedral only: a lossless permutation of each image.
    pipeline = build_view_pipeline(light, seed=0)
    x = images(size=8)
    out = np.asarray(pipeline(x, training=True))
    for o, i in zip(out, x):
        np.testing.assert_array_equal(np.sort(o.ravel()), np.sort(i.ravel()))
    # The returned dicts are copies: editing one leaves the presets alone.
    cfg = view_config(SYMMETRIC)
    cfg["blur"]["probability"] = 0.0
    cfg["flip"] = True
    assert view_config(SYMMETRIC)["blur"]["probability"] == 0.5 and view_config(SYMMETRIC)["flip"] is False


def test_overrides_merge_per_option_and_per_view():
    view1, view2 = build_view_pair(
        ASYMMETRIC,
        overrides={"rotation": {"factor": 0.5}, "noise": False,
                   "view2": {"blur": {"sigma": [2.0, 3.0]}, "flip": True}},
        seed=0,
    )
    s1, s2 = stage_layers(view1), stage_layers(view2)
    assert "noise" not in s1 and "noise" not in s2
    assert s1["rotation"].factor == s2["rotation"].factor == (-0.5, 0.5)
    assert s1["rotation"].fill_mode == "reflect"  # untouched options kept
    assert s2["blur"].sigma == (2.0, 3.0) and s2["blur"].probability == 0.1
    assert s1["blur"].sigma == (0.1, 1.5) and s1["blur"].probability == 1.0
    assert "flip" in s2 and "flip" not in s1
    # Stage order is fixed whatever the order of the keys.
    order = list(STAGES)
    names = list(stage_layers(view2))
    assert names == sorted(names, key=order.index)


def test_seeds_make_views_reproducible():
    x = images()
    first = [np.asarray(v(x, training=True)) for v in build_view_pair(SYMMETRIC, seed=3)]
    again = [np.asarray(v(x, training=True)) for v in build_view_pair(SYMMETRIC, seed=3)]
    other = [np.asarray(v(x, training=True)) for v in build_view_pair(SYMMETRIC, seed=4)]
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)


def test_all_stages_off_is_identity_and_saves():
    pipeline = build_view_pipeline({"blur": False}, seed=0)
    x = images()
    np.testing.assert_array_equal(np.asarray(pipeline(x, training=True)), x)
    assert isinstance(pipeline, keras.Sequential)


@pytest.mark.parametrize("bad,match", [
    ({"colour_jitter": True}, "unknown stage 'colour_jitter'"),
    ({"rotation": {"factor": 0.1, "angle": 3}}, "stage 'rotation'"),
    ({"blur": {"sigma": -1.0}}, "sigma must be > 0"),
    ({"crop": "big"}, "true, false or a mapping"),
    ({"noise": {"seed": 3}}, "seeds and names are set by the pipeline"),
    ({"view1": {"rotation": {"factor": "x"}}}, "view1"),
])
def test_bad_config_is_one_line_kerassslerror(bad, match):
    with pytest.raises(KerassslError, match=match) as info:
        build_view_pair(SYMMETRIC, overrides=bad, seed=0)
    assert "\n" not in str(info.value)


def test_unknown_preset_and_bad_views():
    with pytest.raises(KerassslError, match="known: symmetric, asymmetric"):
        view_config("no_such_preset")
    with pytest.raises(KerassslError, match="a preset name, a mapping of stages or a pair"):
        build_view_pair(({"dihedral": True},), seed=0)
    view1, view2 = build_view_pair("asymmetric", seed=0, name="mine")
    assert (view1.name, view2.name) == ("mine_view1", "mine_view2")


def test_physical_stages_build_from_their_defaults_and_leave_the_preset_seeds_alone():
    # The physical stages run in the pipeline, on three bands, with their `True` defaults.
    cfg = {"dihedral": True, "shift": True, "reddening": True, "psf": True, "skynoise": True}
    view = build_view_pipeline(cfg, seed=1)
    names = [type(layer).__name__ for layer in view.layers]
    assert names == ["RandomDihedral", "RandomShift", "RandomReddening", "PSFMatchBlur", "SkyNoiseMatch"]
    x = np.random.default_rng(0).normal(5.0, 1.0, size=(4, 16, 16, 3)).astype("float32")
    out = np.asarray(view(x, training=True))
    assert out.shape == x.shape and np.all(np.isfinite(out)) and not np.allclose(out, x)
    np.testing.assert_array_equal(np.asarray(view(x, training=False)), x)
    # Adding stages does not move the seeds of the stages a preset uses (slots before the change:
    # dihedral 2, rotation 3, crop 4, blur 5, noise 6), so seeded runs augment as before.
    view1, _ = build_view_pair(SYMMETRIC, seed=3)
    assert [layer.seed for layer in stage_layers(view1).values()] == \
        [2 * 3 * 16 + s for s in (2, 3, 4, 5, 6)]
    assert list(STAGES)[:4] == ["flip", "rot90", "dihedral", "rotation"]


def test_rotation_and_crop_fuse_into_one_resample_with_the_same_draws():
    # SimCLR's view: dihedral, rotation and crop in one RandomRotatedCrop, whose
    # sub-layers carry the stages' own options and seeds.
    cfg = view_config(SYMMETRIC)
    fused = build_view_pipeline(cfg, seed=2)
    separate = build_view_pipeline(cfg, seed=2, fuse_resampling=False)
    assert [type(layer).__name__ for layer in fused.layers] == \
        ["RandomRotatedCrop", "RandomGaussianBlur", "RandomGaussianNoise"]
    assert [type(layer).__name__ for layer in separate.layers] == \
        ["RandomDihedral", "RandomRotation", "RandomResizedCrop", "RandomGaussianBlur",
         "RandomGaussianNoise"]
    for stage, layer in stage_layers(separate).items():
        twin = stage_layers(fused)[stage]
        assert type(twin) is type(layer) and twin.get_config()["seed"] == layer.seed
    # On a linear ramp bilinear sampling is exact, so one resample equals two
    # (blur and noise off) away from the edges, where fills differ.
    geometric = dict(cfg, blur=False, noise=False)
    yy, xx = np.mgrid[:24, :24].astype("float32")
    ramp = np.repeat((0.7 * yy - 0.3 * xx + 5.0)[None, :, :, None], 6, axis=0)
    one = np.asarray(build_view_pipeline(geometric, seed=5)(ramp, training=True))
    two = np.asarray(build_view_pipeline(geometric, seed=5, fuse_resampling=False)(
        ramp, training=True))
    np.testing.assert_allclose(one[:, 5:-5, 5:-5], two[:, 5:-5, 5:-5], atol=1e-4)
    assert not np.allclose(one, ramp)
    # A shift sits between rotation and crop: no fusion then; nor for nearest sampling.
    shifted = build_view_pipeline(dict(cfg, shift=True), seed=0)
    assert "RandomRotatedCrop" not in [type(layer).__name__ for layer in shifted.layers]
    nearest = build_view_pipeline(dict(cfg, crop={"interpolation": "nearest"}), seed=0)
    assert "RandomRotatedCrop" not in [type(layer).__name__ for layer in nearest.layers]


def test_the_default_views_come_from_one_named_stage_set():
    # Both presets (so every method's default views) are built from STAGE_SETS[DEFAULT_STAGES].
    assert DEFAULT_STAGES == "lensing"
    for views in (SYMMETRIC, ASYMMETRIC):
        for view in (1, 2):
            on = {stage for stage, options in view_config(views, view).items() if options is not False}
            assert on == set(STAGE_SETS[DEFAULT_STAGES])
    # Each other set changes one thing of the default and builds a working view.
    base = STAGE_SETS["lensing"]
    changed = {name: sorted(stage for stage in set(base) | set(cfg) if base.get(stage) != cfg.get(stage))
               for name, cfg in STAGE_SETS.items()}
    assert changed == {"lensing": [], "shift": ["crop", "shift"], "d4": ["rotation"],
                       "any-angle": ["rotation"]}
    x = images()
    for name, cfg in STAGE_SETS.items():
        out = np.asarray(build_view_pipeline(cfg, seed=0)(x, training=True))
        assert out.shape == x.shape and np.isfinite(out).all() and not np.allclose(out, x), name
    assert view_config(STAGE_SETS["any-angle"])["rotation"]["factor"] == 0.5
    assert view_config(STAGE_SETS["shift"])["crop"] is False

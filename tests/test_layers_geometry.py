"""Geometric layers: the affine sampler vs SciPy, rotation vs np.rot90, crops, exact symmetries."""

import math

import keras
import numpy as np
import pytest
import scipy.ndimage as ndi
from keras import ops

from kerasssl.layers import (
    RandomDihedral,
    RandomFlip,
    RandomResizedCrop,
    RandomRot90,
    RandomRotatedCrop,
    RandomRotation,
)
from kerasssl.layers import affine
from kerasssl.layers.affine import affine_sample
from kerasssl.layers.dihedral import apply_symmetry, symmetry_matrices
from kerasssl.layers.rotatedcrop import compose_matrices
from kerasssl.layers.rotation import rotation_matrices

SCIPY_MODES = {"reflect": "reflect", "wrap": "grid-wrap", "nearest": "nearest",
               "constant": "grid-constant"}


def sky(n, h, w, c, seed=0):
    """Images with negative sky, values far above 255 and different bands."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 30.0, size=(n, h, w, c))
    images[:, h // 2, w // 2, :] += 5000.0
    return images.astype("float32")


def scipy_affine(images, matrices, fill_mode, fill_value=0.0, order=1):
    out = np.empty_like(images)
    for n in range(images.shape[0]):
        for c in range(images.shape[3]):
            out[n, :, :, c] = ndi.affine_transform(
                images[n, :, :, c].astype("float64"), matrices[n, :, :2], offset=matrices[n, :, 2],
                order=order, mode=SCIPY_MODES[fill_mode], cval=fill_value, prefilter=False,
            )
    return out


@pytest.mark.parametrize("fill_mode", ["reflect", "wrap", "nearest", "constant"])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_affine_sample_matches_scipy(fill_mode, interpolation):
    # Random affine maps that read well outside the image (several periods).
    rng = np.random.default_rng(1)
    images = sky(3, 12, 10, 2)
    matrices = np.concatenate(
        [rng.normal(0, 1.5, size=(3, 2, 2)), rng.uniform(-25, 35, size=(3, 2, 1))], axis=2
    ).astype("float32")
    got = np.asarray(affine_sample(images, matrices, fill_mode, fill_value=-7.0,
                                   interpolation=interpolation))
    if interpolation == "bilinear":
        want = scipy_affine(images, matrices, fill_mode, -7.0, order=1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-2)
    else:
        # Rounding ties may differ from SciPy's; compare away from them.
        want = scipy_affine(images, matrices, fill_mode, -7.0, order=0)
        agree = np.mean(np.isclose(got, want))
        assert agree > 0.97, agree


@pytest.mark.parametrize("fill_mode", ["reflect", "nearest", "constant"])
def test_tensorflow_kernel_gives_the_keras_ops_samples(fill_mode):
    # On TF outside XLA these modes run ImageProjectiveTransformV3; it must read
    # the same samples as the keras.ops sampler (the JAX and XLA path), far outside too.
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the kernel is TensorFlow's")
    rng = np.random.default_rng(3)
    images = sky(6, 13, 16, 3)
    matrices = np.concatenate(
        [rng.normal(0, 1.5, size=(6, 2, 2)), rng.uniform(-25, 35, size=(6, 2, 1))], axis=2
    ).astype("float32")
    assert affine._native_kernel_applies(fill_mode, "bilinear", 13, 16)
    native = np.asarray(affine._tf_projective_sample(images, matrices, fill_mode, -7.0))
    portable = np.asarray(affine._ops_sample(images, matrices, fill_mode, -7.0, "bilinear", "any"))
    np.testing.assert_allclose(native, portable, rtol=1e-5, atol=1e-5 * np.abs(images).max())


def test_the_kernel_is_used_outside_xla_and_never_inside():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the kernel is TensorFlow's")
    import tensorflow as tf

    images = tf.constant(sky(2, 8, 8, 1))

    def traced(jit_compile, fill_mode="reflect"):
        layer = RandomRotation(factor=0.1, fill_mode=fill_mode, seed=0)
        return tf.function(lambda x: layer(x, training=True), jit_compile=jit_compile)

    def op_types(fn):
        return {op.type for op in fn.get_concrete_function(images).graph.get_operations()}

    assert "ImageProjectiveTransformV3" in op_types(traced(jit_compile=False))
    # XLA has no kernel for it, and TF's "wrap" is not Keras's: the portable sampler.
    compiled = traced(jit_compile=True)
    assert "ImageProjectiveTransformV3" not in op_types(compiled)
    assert "ImageProjectiveTransformV3" not in op_types(traced(jit_compile=False, fill_mode="wrap"))
    assert np.isfinite(compiled(images).numpy()).all()  # and it compiles


def test_rotation_quarter_turn_equals_rot90():
    images = sky(4, 16, 16, 3)
    for turns, k in ((0.25, 1), (-0.25, -1), (0.5, 2)):
        out = np.asarray(RandomRotation(factor=(turns, turns), seed=0)(images, training=True))
        want = np.rot90(images, k=k, axes=(1, 2))
        # Bilinear sampling lands on pixel centres: exact up to float32 trig error.
        np.testing.assert_allclose(out, want, atol=1e-5 * np.abs(images).max())


def test_rotation_half_turn_non_square_is_exact_flip():
    images = sky(2, 9, 14, 1)
    out = np.asarray(RandomRotation(factor=(0.5, 0.5), seed=0)(images, training=True))
    np.testing.assert_allclose(out, images[:, ::-1, ::-1], atol=1e-2)


@pytest.mark.parametrize("fill_mode", ["reflect", "wrap", "nearest", "constant"])
def test_rotation_fixed_angle_matches_scipy_and_keeps_values(fill_mode):
    # 45 degrees: the corners read well outside the image, through each fill mode.
    images = sky(2, 15, 15, 2)
    turns = 0.125
    out = np.asarray(RandomRotation(factor=(turns, turns), fill_mode=fill_mode,
                                    fill_value=-3.0, seed=0)(images, training=True))
    matrices = np.asarray(rotation_matrices(ops.full((2,), 2 * math.pi * turns), 15, 15))
    want = scipy_affine(images, matrices, fill_mode, fill_value=-3.0)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=5e-2)
    # No clipping: negative sky and the bright core (>> 255) survive.
    assert out.min() < -50 and out.max() > 1000


def test_rotation_angle_differs_per_image():
    image = sky(1, 16, 16, 1)
    batch = np.repeat(image, 8, axis=0)
    out = np.asarray(RandomRotation(factor=0.5, seed=3)(batch, training=True))
    distinct = {tuple(np.round(o.ravel()[:40], 3)) for o in out}
    assert len(distinct) == 8


def test_rotation_argument_errors():
    with pytest.raises(ValueError):
        RandomRotation(factor=(0.3, 0.1))
    with pytest.raises(ValueError):
        RandomRotation(factor=0.1, fill_mode="mirror")
    with pytest.raises(ValueError):
        RandomRotation(factor=0.1, interpolation="bicubic")


def test_resized_crop_full_scale_is_identity():
    images = sky(3, 12, 12, 2)
    layer = RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0), seed=0)
    np.testing.assert_allclose(np.asarray(layer(images, training=True)), images, atol=1e-3)


def test_resized_crop_zooms_by_sqrt_scale_inside_the_image():
    # Bilinear resampling of a linear ramp is exact: the output ramp's slope
    # is the input's times the crop side / image side = sqrt(scale).
    n, size = 6, 20
    ramp = np.broadcast_to(np.arange(size, dtype="float32") * 3.0 - 20.0, (n, size, size))
    images = np.stack([ramp, np.swapaxes(ramp, 1, 2)], axis=-1)  # x ramp, y ramp
    out = np.asarray(RandomResizedCrop(scale=(0.49, 0.49), ratio=(1.0, 1.0), seed=2)(
        images, training=True))
    # Interior only: the outermost half pixel of a crop touching the image
    # edge repeats the edge pixel (as tf.image.resize does).
    slope_x = np.diff(out[:, :, 1:-1, 0], axis=2)
    slope_y = np.diff(out[:, 1:-1, :, 1], axis=1)
    np.testing.assert_allclose(slope_x, 3.0 * 0.7, rtol=1e-3)
    np.testing.assert_allclose(slope_y, 3.0 * 0.7, rtol=1e-3)
    # The crop lies inside the image and its position differs per image.
    assert out.min() >= images.min() - 1e-3 and out.max() <= images.max() + 1e-3
    assert len({round(float(o[0, 0, 0]), 3) for o in out}) == n


def test_resized_crop_aspect_ratio():
    size = 24
    ramp = np.broadcast_to(np.arange(size, dtype="float32"), (4, size, size))
    images = np.stack([ramp, np.swapaxes(ramp, 1, 2)], axis=-1)
    out = np.asarray(RandomResizedCrop(scale=(0.36, 0.36), ratio=(2.25, 2.25), seed=0)(
        images, training=True))
    # width/height = 2.25, area 0.36: crop width 0.9 W, height 0.4 H.
    np.testing.assert_allclose(np.diff(out[:, :, 1:-1, 0], axis=2), 0.9, rtol=1e-3)
    np.testing.assert_allclose(np.diff(out[:, 1:-1, :, 1], axis=1), 0.4, rtol=1e-3)


def _symmetries(image, group):
    """All np transforms of one (H, W, C) image in `group`."""
    rots = [np.rot90(image, k, axes=(0, 1)) for k in range(4)]
    if group == "rot90":
        return rots
    if group == "flip":
        return [image, image[::-1], image[:, ::-1], image[::-1, ::-1]]
    return rots + [r[:, ::-1] for r in rots]


@pytest.mark.parametrize("layer_class,group,count", [
    (RandomRot90, "rot90", 4), (RandomDihedral, "dihedral", 8), (RandomFlip, "flip", 4),
])
def test_symmetries_are_exact_permutations(layer_class, group, count):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(8, 8, 2)).astype("float32") * 1000.0
    batch = np.repeat(image[None], 96, axis=0)
    out = np.asarray(layer_class(seed=5)(batch, training=True))
    candidates = _symmetries(image, group)
    seen = set()
    for o in out:
        matches = [i for i, cand in enumerate(candidates) if np.array_equal(o, cand)]
        assert matches, "output is not an exact symmetry of the input"
        seen.add(matches[0])
        # A permutation of pixels: the same multiset of values.
        np.testing.assert_array_equal(np.sort(o.ravel()), np.sort(image.ravel()))
    assert len(seen) == count  # every group element is drawn


def test_flip_modes():
    image = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    batch = np.repeat(image, 32, axis=0)
    out = np.asarray(RandomFlip("horizontal", seed=0)(batch, training=True))
    assert all(np.array_equal(o, image[0]) or np.array_equal(o, image[0][:, ::-1]) for o in out)
    out = np.asarray(RandomFlip("vertical", seed=0)(batch, training=True))
    assert all(np.array_equal(o, image[0]) or np.array_equal(o, image[0][::-1]) for o in out)
    with pytest.raises(ValueError):
        RandomFlip("diagonal")


@pytest.mark.parametrize("layer_class", [RandomRot90, RandomDihedral])
def test_quarter_turns_need_square_images(layer_class):
    with pytest.raises(ValueError, match="square"):
        layer_class(seed=0)(np.zeros((2, 8, 6, 1), "float32"), training=True)


# --- one resample for dihedral + rotation + crop ----------------------------------------------

def test_symmetry_matrices_sample_exactly_the_permutation():
    rng = np.random.default_rng(0)
    images = sky(8, 6, 6, 2)
    masks = [np.array([(k >> bit) & 1 for k in range(8)], bool) for bit in range(3)]
    want = np.asarray(apply_symmetry(images, *masks))
    matrices = symmetry_matrices(*masks, 6, 6)
    for interpolation in ("bilinear", "nearest"):
        got = np.asarray(affine_sample(images, matrices, "reflect", interpolation=interpolation))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-3)
    del rng


def test_composed_matrices_apply_inner_then_outer():
    rng = np.random.default_rng(1)
    outer, inner = (rng.normal(size=(5, 2, 3)).astype("float32") for _ in range(2))
    point = np.array([2.0, -3.0, 1.0])
    got = np.asarray(compose_matrices(outer, inner)) @ point
    want = np.einsum("nij,nj->ni", outer, np.concatenate(
        [np.einsum("nij,j->ni", inner, point), np.ones((5, 1))], axis=1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rotated_crop_is_the_separate_layers_resampled_once():
    rotation, crop = {"factor": 0.1}, {"scale": (0.6, 1.0), "ratio": (0.8, 1.25)}
    # Bilinear sampling is exact on a ramp: one resample equals two inside the image.
    yy, xx = np.mgrid[:20, :20].astype("float32")
    ramp = np.repeat((0.5 * yy + 0.2 * xx - 3.0)[None, :, :, None], 8, axis=0)
    two = RandomResizedCrop(**crop, seed=4)(RandomRotation(**rotation, seed=3)(ramp, training=True),
                                           training=True)
    one = RandomRotatedCrop(dict(rotation, seed=3), dict(crop, seed=4))(ramp, training=True)
    np.testing.assert_allclose(np.asarray(one)[:, 4:-4, 4:-4], np.asarray(two)[:, 4:-4, 4:-4],
                               atol=1e-4)
    # The dihedral part is exact everywhere, on any image.
    images = sky(8, 12, 12, 2)
    first = np.asarray(RandomDihedral(seed=5)(images, training=True))
    want = RandomRotatedCrop(dict(rotation, seed=3), dict(crop, seed=4))(first, training=True)
    got = RandomRotatedCrop(dict(rotation, seed=3), dict(crop, seed=4), dihedral={"seed": 5})(
        images, training=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=2e-2)
    # One interpolation smooths pixel noise less than two (the view is sharper).
    noise = np.random.default_rng(2).normal(size=(64, 32, 32, 1)).astype("float32")
    one = np.asarray(RandomRotatedCrop(dict(rotation, seed=3), dict(crop, seed=4))(
        noise, training=True))
    two = np.asarray(RandomResizedCrop(**crop, seed=4)(
        RandomRotation(**rotation, seed=3)(noise, training=True), training=True))
    assert two.std() < one.std() < noise.std()
    with pytest.raises(ValueError, match="bilinear"):
        RandomRotatedCrop({"factor": 0.1, "interpolation": "nearest"}, {})

"""Exact symmetries of the pixel grid, per image: flips, quarter turns, the dihedral group.

Every element of the dihedral group of the square is "transpose or not, then
flip rows or not, then flip columns or not". The layers draw those three
choices per image and apply them with ``where`` over exact reversals and
transposes: pure pixel permutations, no interpolation, so these views are
lossless (strong-lensing images have no preferred orientation).
"""

import keras
from keras import ops

from kerasssl.layers.base import RandomImageLayer

FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


def apply_symmetry(images, transpose=None, flip_rows=None, flip_cols=None):
    """Apply per-image transpose / row flip / column flip, in that order.

    Args:
        images: ``(N, H, W, C)``; square when ``transpose`` is given.
        transpose, flip_rows, flip_cols: bool ``(N,)`` masks, or None to skip.

    Example:
        >>> apply_symmetry(images, flip_cols=ops.ones((n,), "bool"))  # left-right
    """

    def select(mask, changed, unchanged):
        # Per-image choice on (N, H*W*C) views: a 2-D broadcast of the mask is
        # ~2x cheaper on CPU than broadcasting it over 4 dimensions.
        shape = ops.shape(unchanged)
        flat = (-1, changed.shape[1] * changed.shape[2] * changed.shape[3])
        chosen = ops.where(ops.reshape(mask, (-1, 1)), ops.reshape(changed, flat),
                           ops.reshape(unchanged, flat))
        return ops.reshape(chosen, shape)

    if transpose is not None:
        images = select(transpose, ops.transpose(images, (0, 2, 1, 3)), images)
    if flip_rows is not None:
        images = select(flip_rows, ops.flip(images, axis=1), images)
    if flip_cols is not None:
        images = select(flip_cols, ops.flip(images, axis=2), images)
    return images


def symmetry_matrices(transpose, flip_rows, flip_cols, height, width):
    """Output -> input affine matrices ``(N, 2, 3)`` of :func:`apply_symmetry`'s permutation.

    The same transform as a matrix, so a resampler can compose it with others
    (:class:`kerasssl.layers.RandomRotatedCrop`): these maps send pixel
    centres to pixel centres, so bilinear sampling through them is exact.

    Args:
        transpose, flip_rows, flip_cols: bool ``(N,)`` masks.
        height, width: image size (Python ints; equal when any transpose).

    Example:
        >>> symmetry_matrices(t, r, c, 8, 8)   # (N, 2, 3)
    """
    t, r, c = (ops.cast(mask, "float32") for mask in (transpose, flip_rows, flip_cols))
    # Output (i, j) reads the transposed image at (i', j') = (flip_r(i), flip_c(j)),
    # and that reads the input at (i', j') or (j', i').
    ri, ci = 1.0 - 2.0 * r, 1.0 - 2.0 * c  # +1 or -1
    ro, co = r * (height - 1.0), c * (width - 1.0)
    keep, swap = 1.0 - t, t
    row_y = ops.stack([keep * ri, swap * ci, keep * ro + swap * co], axis=-1)
    row_x = ops.stack([swap * ri, keep * ci, swap * ro + keep * co], axis=-1)
    return ops.stack([row_y, row_x], axis=1)


def _require_square(layer, images):
    if images.shape[1] != images.shape[2]:
        raise ValueError(
            f"{layer.__class__.__name__} needs square images, got {tuple(images.shape)}"
        )


@keras.saving.register_keras_serializable(package="kerasssl")
class RandomFlip(RandomImageLayer):
    """Flip each image left-right and/or up-down, each with probability 0.5.

    Args:
        mode: "horizontal" (left-right), "vertical" (up-down) or
            "horizontal_and_vertical" (both, drawn independently).
        seed: integer seed; None draws one.
        **kwargs: base layer arguments (name, dtype, ...).

    Example:
        >>> flipped = RandomFlip("horizontal_and_vertical", seed=0)(images, training=True)
    """

    def __init__(self, mode="horizontal_and_vertical", seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if mode not in FLIP_MODES:
            raise ValueError(f"mode must be one of {FLIP_MODES}, got {mode!r}")
        self.mode = mode

    def augment(self, images):
        draws = keras.random.uniform((ops.shape(images)[0], 2), seed=self.seed_generator) < 0.5
        flip_rows = draws[:, 0] if self.mode != "horizontal" else None
        flip_cols = draws[:, 1] if self.mode != "vertical" else None
        return apply_symmetry(images, flip_rows=flip_rows, flip_cols=flip_cols)

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config


@keras.saving.register_keras_serializable(package="kerasssl")
class RandomRot90(RandomImageLayer):
    """Rotate each square image by a random multiple of 90 degrees (k uniform in 0..3).

    ``k`` counts counter-clockwise quarter turns, as ``np.rot90(image, k)``.

    Args:
        seed: integer seed; None draws one.
        **kwargs: base layer arguments (name, dtype, ...).

    Example:
        >>> turned = RandomRot90(seed=0)(images, training=True)
    """

    def augment(self, images):
        _require_square(self, images)
        k = keras.random.randint((ops.shape(images)[0],), 0, 4, seed=self.seed_generator)
        # np.rot90 by k = (transpose, flip rows, flip cols):
        # k=1 (1,1,0), k=2 (0,1,1), k=3 (1,0,1).
        return apply_symmetry(
            images,
            transpose=(k == 1) | (k == 3),
            flip_rows=(k == 1) | (k == 2),
            flip_cols=(k == 2) | (k == 3),
        )


@keras.saving.register_keras_serializable(package="kerasssl")
class RandomDihedral(RandomImageLayer):
    """Apply one of the 8 symmetries of the square to each image, uniformly.

    The four quarter turns and their mirror images; exact pixel permutations.

    Args:
        seed: integer seed; None draws one.
        **kwargs: base layer arguments (name, dtype, ...).

    Example:
        >>> views = RandomDihedral(seed=0)(images, training=True)
    """

    def draw_symmetry(self, images):
        """This call's per-image ``(transpose, flip_rows, flip_cols)`` bool masks ``(N,)``."""
        _require_square(self, images)
        draws = keras.random.uniform((ops.shape(images)[0], 3), seed=self.seed_generator) < 0.5
        return draws[:, 0], draws[:, 1], draws[:, 2]

    def augment(self, images):
        return apply_symmetry(images, *self.draw_symmetry(images))

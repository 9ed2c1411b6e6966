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

    def augment(self, images):
        _require_square(self, images)
        draws = keras.random.uniform((ops.shape(images)[0], 3), seed=self.seed_generator) < 0.5
        return apply_symmetry(images, draws[:, 0], draws[:, 1], draws[:, 2])

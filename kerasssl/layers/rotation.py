"""RandomRotation: a different angle per image, bilinear, XLA-compilable."""

import math

import keras
from keras import ops

from kerasssl.layers.affine import affine_sample, check_fill_mode, check_interpolation
from kerasssl.layers.base import RandomImageLayer, value_range


def rotation_matrices(angles, height, width):
    """Output -> input affine matrices ``(N, 2, 3)`` rotating about the image centre.

    A positive angle (radians) turns the image counter-clockwise as displayed
    (row 0 at the top), so ``pi / 2`` equals ``np.rot90(image)``.

    Args:
        angles: float32 ``(N,)`` radians.
        height, width: image size in pixels (Python numbers).

    Example:
        >>> rotation_matrices(ops.convert_to_tensor([0.0]), 8, 8)   # identity
    """
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    cos, sin = ops.cos(angles), ops.sin(angles)
    # Inverse map: input = R(-angle) (output - centre) + centre, y pointing down.
    row_y = ops.stack([cos, sin, cy - cos * cy - sin * cx], axis=-1)
    row_x = ops.stack([-sin, cos, cx + sin * cy - cos * cx], axis=-1)
    return ops.stack([row_y, row_x], axis=1)


@keras.saving.register_keras_serializable(package="kerasssl")
class RandomRotation(RandomImageLayer):
    """Rotate each image by its own random angle about the image centre.

    Unlike ``keras.layers.RandomRotation`` it is built from ``keras.ops``
    (one gather for the bilinear sampling), so a model holding it compiles
    with ``jit_compile=True`` on TF, and it never clips pixel values.

    Args:
        factor: fraction of a full turn, as in Keras: a number ``f`` draws the
            angle uniformly in ``[-f, f] * 2 pi``; a pair ``(low, high)`` draws
            it in ``[low, high] * 2 pi``. Positive is counter-clockwise, so
            ``factor=(0.25, 0.25)`` is exactly ``np.rot90``.
        fill_mode: "reflect" (default), "wrap", "nearest" or "constant" for
            the corners that come from outside the image.
        interpolation: "bilinear" (default) or "nearest".
        fill_value: value outside the image when ``fill_mode="constant"``.
        seed: integer seed; None draws one.
        **kwargs: base layer arguments (name, dtype, ...).

    Example:
        >>> layer = RandomRotation(factor=0.05, seed=0)    # up to +-18 degrees
        >>> rotated = layer(images, training=True)          # (N, H, W, C)
    """

    def __init__(self, factor, fill_mode="reflect", interpolation="bilinear",
                 fill_value=0.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.factor = value_range(factor, "factor", symmetric=True)
        self.fill_mode = check_fill_mode(fill_mode)
        self.interpolation = check_interpolation(interpolation)
        self.fill_value = float(fill_value)

    def draw_matrices(self, images):
        """This call's output -> input matrices ``(N, 2, 3)`` and the sampler's ``reach``.

        Drawn from the layer's seed generator; :class:`RandomRotatedCrop`
        composes them with a crop's to resample once.
        """
        height, width = images.shape[1], images.shape[2]
        turns = keras.random.uniform(
            (ops.shape(images)[0],), minval=self.factor[0], maxval=self.factor[1],
            seed=self.seed_generator,
        )
        matrices = rotation_matrices(turns * (2.0 * math.pi), height, width)
        # A rotation about the centre reads within the circumscribed circle
        # (of the pixel-edge box: a crop composed with it reads up to half a
        # pixel past the centres); when that lies within one image size of
        # every edge, one mirror or wrap folds all coordinates (cheaper than
        # a general modulo).
        half_diagonal = math.hypot(height / 2.0, width / 2.0)
        reach = "near" if half_diagonal <= 1.5 * min(height, width) - 1.0 else "any"
        return matrices, reach

    def augment(self, images):
        matrices, reach = self.draw_matrices(images)
        return affine_sample(images, matrices, self.fill_mode, self.fill_value,
                             self.interpolation, reach=reach)

    def get_config(self):
        config = super().get_config()
        config.update(
            factor=list(self.factor), fill_mode=self.fill_mode,
            interpolation=self.interpolation, fill_value=self.fill_value,
        )
        return config

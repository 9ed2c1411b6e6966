"""RandomShift: small per-image translations, the physical replacement for zoom."""

import keras
from keras import ops

from kerasssl.layers.affine import affine_sample, check_fill_mode
from kerasssl.layers.base import RandomImageLayer


def shift_matrices(dy, dx):
    """Output -> input affine matrices ``(N, 2, 3)`` moving the content by ``(dy, dx)`` pixels.

    Output pixel ``(i, j)`` reads input ``(i - dy, j - dx)``: positive ``dy``
    moves the image down, positive ``dx`` right, as ``np.roll(image, (dy, dx))``.

    Example:
        >>> shift_matrices(ops.ones((1,)), ops.zeros((1,)))   # one pixel down
    """
    ones, zeros = ops.ones_like(dy), ops.zeros_like(dy)
    row_y = ops.stack([ones, zeros, -dy], axis=-1)
    row_x = ops.stack([zeros, ones, -dx], axis=-1)
    return ops.stack([row_y, row_x], axis=1)


@keras.saving.register_keras_serializable(package="kerasssl")
class RandomShift(RandomImageLayer):
    """Translate each image by its own small random offset, in pixels.

    A resized crop rescales the image and so changes the apparent Einstein
    radius, the scale a lens finder must learn; a shift keeps every scale
    and only moves the lens off centre by a few pixels, as real cutouts are
    (LenSiam 2023 and Lens-LeJEPA avoid zoom for this reason). Offsets are
    drawn per image and per axis, uniformly in ``[-max_shift, max_shift]``.

    With ``integer=True`` (default) they are whole pixels and the output is an
    exact permutation of input pixels plus the fill: ``fill_mode="reflect"``
    equals ``np.pad(..., mode="symmetric")`` (``d c b a | a b c d``, the Keras
    convention) and ``"wrap"`` equals ``np.roll``. With ``integer=False`` they
    are continuous and the image is resampled bilinearly (sub-pixel shifts
    smooth the noise slightly, as any interpolation does).

    Args:
        max_shift: largest offset in pixels along each axis (>= 0); a whole
            number when ``integer``. Less than the image size.
        integer: draw whole-pixel offsets (exact) or continuous ones.
        fill_mode: "reflect" (default), "wrap", "nearest" or "constant", for
            the pixels shifted in from outside the image.
        fill_value: value of those pixels when ``fill_mode="constant"``.
        seed: integer seed; None draws one.
        **kwargs: base layer arguments (name, dtype, ...).

    Example:
        >>> layer = RandomShift(max_shift=2, seed=0)       # +-2 px, whole pixels
        >>> moved = layer(images, training=True)           # same shape as images
    """

    def __init__(self, max_shift=2, integer=True, fill_mode="reflect", fill_value=0.0,
                 seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        try:
            max_shift = float(max_shift)
        except (TypeError, ValueError):
            raise ValueError(f"max_shift must be a number of pixels, got {max_shift!r}") \
                from None
        if not max_shift >= 0.0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift!r}")
        self.integer = bool(integer)
        if self.integer and max_shift != int(max_shift):
            raise ValueError(
                f"max_shift must be a whole number of pixels when integer=True, got {max_shift!r}"
            )
        self.max_shift = int(max_shift) if self.integer else max_shift
        self.fill_mode = check_fill_mode(fill_mode)
        self.fill_value = float(fill_value)

    def augment(self, images):
        height, width = images.shape[1], images.shape[2]
        if self.max_shift >= min(height, width):
            raise ValueError(
                f"RandomShift: max_shift {self.max_shift} must be smaller than the image "
                f"({height}x{width})"
            )
        shape = (ops.shape(images)[0], 2)
        if self.integer:
            draws = keras.random.randint(shape, -self.max_shift, self.max_shift + 1,
                                         seed=self.seed_generator)
            draws = ops.cast(draws, "float32")
        else:
            draws = keras.random.uniform(shape, -self.max_shift, self.max_shift,
                                         seed=self.seed_generator)
        matrices = shift_matrices(draws[:, 0], draws[:, 1])
        # Whole-pixel shifts land on pixel centres: nearest sampling is exact
        # there and gathers one value per pixel instead of four.
        interpolation = "nearest" if self.integer else "bilinear"
        return affine_sample(images, matrices, self.fill_mode, self.fill_value,
                             interpolation, reach="near")

    def get_config(self):
        config = super().get_config()
        config.update(max_shift=self.max_shift, integer=self.integer,
                      fill_mode=self.fill_mode, fill_value=self.fill_value)
        return config

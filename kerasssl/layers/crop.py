"""RandomResizedCrop: the SimCLR crop, resampled back to the input size."""

import math

import keras
from keras import ops

from kerasssl.layers.affine import affine_sample, check_fill_mode, check_interpolation
from kerasssl.layers.base import RandomImageLayer, value_range


def crop_matrices(top, left, crop_height, crop_width, height, width):
    """Output -> input affine matrices ``(N, 2, 3)`` that resize a crop to (height, width).

    The crop is given in edge coordinates (the image spans ``[0, H] x [0, W]``);
    output pixel ``i`` reads input position ``top + (i + 0.5) * crop_height / H - 0.5``
    (half-pixel centres, as ``tf.image.resize``), so the full crop is identity.

    Args:
        top, left, crop_height, crop_width: float32 ``(N,)``.
        height, width: output size in pixels (Python numbers).

    Example:
        >>> ones = ops.ones((1,)); zeros = ops.zeros((1,))
        >>> crop_matrices(zeros, zeros, 8 * ones, 8 * ones, 8, 8)   # identity
    """
    sy, sx = crop_height / height, crop_width / width
    zeros = ops.zeros_like(sy)
    row_y = ops.stack([sy, zeros, top + 0.5 * sy - 0.5], axis=-1)
    row_x = ops.stack([zeros, sx, left + 0.5 * sx - 0.5], axis=-1)
    return ops.stack([row_y, row_x], axis=1)


@keras.saving.register_keras_serializable(package="kerasssl")
class RandomResizedCrop(RandomImageLayer):
    """Crop a random area and aspect ratio of each image and resize it back.

    The SimCLR / Inception crop (Keras has none): per image, an area fraction
    is drawn uniformly in ``scale`` and an aspect-ratio change log-uniformly
    in ``ratio``; a side that would exceed the image is clipped to it; the
    crop's position is uniform among those that fit. The crop is resampled to
    the input size through the same affine sampler as :class:`RandomRotation`.
    Lensing images are centred on the lens, so keep ``scale`` near ``(0.7, 1.0)``.

    Args:
        scale: ``(low, high)`` area fraction of the crop, in ``(0, 1]``.
        ratio: ``(low, high)`` range of the crop's width / height relative to
            the image's (> 0); 1 keeps the proportions, so the view is resized
            back without distortion. On square images it is the crop's own
            aspect ratio, as in torchvision.
        interpolation: "bilinear" (default) or "nearest".
        fill_mode: used only by bilinear neighbours half a pixel past the
            edge; "reflect" (default) repeats the edge pixel there.
        seed: integer seed; None draws one.
        **kwargs: base layer arguments (name, dtype, ...).

    Example:
        >>> layer = RandomResizedCrop(scale=(0.7, 1.0), seed=0)
        >>> views = layer(images, training=True)    # same shape as images
    """

    def __init__(self, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0),
                 interpolation="bilinear", fill_mode="reflect", seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.scale = value_range(scale, "scale")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale must lie in (0, 1], got {scale!r}")
        self.ratio = value_range(ratio, "ratio")
        if self.ratio[0] <= 0.0:
            raise ValueError(f"ratio must be > 0, got {ratio!r}")
        self.interpolation = check_interpolation(interpolation)
        self.fill_mode = check_fill_mode(fill_mode)

    def draw_matrices(self, images):
        """This call's output -> input matrices ``(N, 2, 3)``: each crop resized to the image.

        Drawn from the layer's seed generator; :class:`RandomRotatedCrop`
        composes them with a rotation's to resample once.
        """
        height, width = images.shape[1], images.shape[2]
        n = (ops.shape(images)[0],)
        area = keras.random.uniform(n, self.scale[0], self.scale[1], seed=self.seed_generator)
        log_ratio = keras.random.uniform(
            n, math.log(self.ratio[0]), math.log(self.ratio[1]), seed=self.seed_generator
        )
        aspect = ops.exp(log_ratio)
        crop_h = ops.minimum(height * ops.sqrt(area / aspect), float(height))
        crop_w = ops.minimum(width * ops.sqrt(area * aspect), float(width))
        top = keras.random.uniform(n, seed=self.seed_generator) * (height - crop_h)
        left = keras.random.uniform(n, seed=self.seed_generator) * (width - crop_w)
        return crop_matrices(top, left, crop_h, crop_w, height, width)

    def augment(self, images):
        # Crops lie inside the image: no coordinate needs folding.
        return affine_sample(images, self.draw_matrices(images), self.fill_mode, 0.0,
                             self.interpolation, reach="inside")

    def get_config(self):
        config = super().get_config()
        config.update(
            scale=list(self.scale), ratio=list(self.ratio),
            interpolation=self.interpolation, fill_mode=self.fill_mode,
        )
        return config

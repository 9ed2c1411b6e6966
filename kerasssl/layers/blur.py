"""RandomGaussianBlur: a different sigma per image, separable, flux-conserving, no clipping."""

import math

import keras
import numpy as np
from keras import ops

from kerasssl.layers.base import RandomImageLayer, probability_value, value_range


def tap_fold(size, radius):
    """Constant ``(2 * radius + 1, size * size)``: where each kernel tap of each output lands.

    Entry ``[t, i * size + j]`` is 1 when tap ``t`` (offset ``t - radius``) of
    output pixel ``i`` reads input pixel ``j``, with reflect boundaries
    (``d c b a | a b c d``). Multiplying per-image taps by it gives the
    per-image blur matrices in one small matmul.

    Example:
        >>> tap_fold(4, 1)[0].reshape(4, 4)   # offset -1: pixel 0 reads itself
    """
    period = 2 * size
    source = np.arange(size)[None, :] + np.arange(-radius, radius + 1)[:, None]  # (K, size)
    source = np.mod(source, period)
    source = np.where(source >= size, period - 1 - source, source)
    fold = np.zeros((2 * radius + 1, size, size), dtype="float32")
    taps, outputs = np.meshgrid(np.arange(2 * radius + 1), np.arange(size), indexing="ij")
    np.add.at(fold, (taps, outputs, source), 1.0)
    return fold.reshape(2 * radius + 1, size * size)


def gaussian_taps(sigma, apply, radius):
    """Normalised Gaussian taps ``(N, 2 * radius + 1)``; a unit impulse where not ``apply``.

    Args:
        sigma: float32 ``(N,)`` standard deviations in pixels (> 0).
        apply: bool ``(N,)``; False gives the identity kernel.
        radius: kernel half-width in pixels (Python int).

    Example:
        >>> gaussian_taps(ops.ones((1,)), ops.ones((1,), "bool"), 4)   # sums to 1
    """
    offsets = ops.arange(-radius, radius + 1, dtype="float32")[None, :]
    inv_var = 1.0 / ops.square(ops.maximum(ops.reshape(sigma, (-1, 1)), 1e-6))
    taps = ops.exp(-0.5 * ops.square(offsets) * inv_var)
    taps = taps / ops.sum(taps, axis=1, keepdims=True)
    impulse = ops.cast(ops.equal(offsets, 0.0), "float32")
    return ops.where(ops.reshape(apply, (-1, 1)), taps, impulse)


def blur_matrices(taps, size, radius):
    """Per-image 1-D blur operators ``(N, size, size)`` with reflect boundaries.

    Row ``i`` of image ``n``'s matrix holds the weights that output pixel
    ``i`` gives each input pixel; taps past the edge fold back onto the pixel
    they reflect to, so every row sums to 1 like the kernel. Blurring is then
    one batched matmul per axis: its cost does not depend on the kernel size
    and it vectorises well on CPU and GPU.

    Args:
        taps: float32 ``(N, 2 * radius + 1)`` kernel per image.
        size: the axis length (Python int).
        radius: kernel half-width (Python int).

    Example:
        >>> taps = gaussian_taps(ops.ones((1,)), ops.ones((1,), "bool"), 4)
        >>> ops.sum(blur_matrices(taps, 16, 4), axis=-1)   # all ones
    """
    fold = ops.convert_to_tensor(tap_fold(size, radius))
    return ops.reshape(ops.matmul(taps, fold), (-1, size, size))


@keras.saving.register_keras_serializable(package="kerasssl")
class RandomGaussianBlur(RandomImageLayer):
    """Blur each image with its own Gaussian sigma.

    Fixes what ``keras.layers.RandomGaussianBlur`` gets wrong for astronomy:
    a sigma is drawn *per image* (not per batch), nothing is clipped (negative
    sky and values far above 255 survive), any channel count works, the
    kernel sums to 1 (total flux is kept; edges are reflected) and the maths
    runs in float32 under mixed precision. Separable: one blur per axis, as a
    batched matmul (on GPUs that default to TF32 matmuls that is accurate to
    ~1e-3 relative, plenty for an augmentation).

    Args:
        sigma: standard deviation in pixels, a number or a ``(low, high)``
            range drawn uniformly per image; must be > 0.
        kernel_size: odd kernel width in pixels; None (default) uses
            ``2 * ceil(4 * sigma_high) + 1`` (scipy's truncation at 4 sigma).
            It is capped at the image size.
        probability: chance that an image is blurred at all (BYOL uses 1.0
            for one view and 0.1 for the other).
        seed: integer seed; None draws one.
        **kwargs: base layer arguments (name, dtype, ...).

    Example:
        >>> layer = RandomGaussianBlur(sigma=(0.1, 2.0), probability=0.5, seed=0)
        >>> blurred = layer(images, training=True)
    """

    def __init__(self, sigma=(0.1, 2.0), kernel_size=None, probability=1.0, seed=None,
                 **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.sigma = value_range(sigma, "sigma")
        if self.sigma[0] <= 0.0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        if kernel_size is not None:
            if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) \
                    or kernel_size < 1 or kernel_size % 2 == 0:
                raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.probability = probability_value(probability)

    def radius(self, size):
        """Kernel half-width used for an axis of ``size`` pixels."""
        if self.kernel_size is None:
            radius = max(1, math.ceil(4.0 * self.sigma[1]))
        else:
            radius = self.kernel_size // 2
        return min(radius, size - 1)

    def augment(self, images):
        height, width = images.shape[1], images.shape[2]
        n = (ops.shape(images)[0],)
        sigma = keras.random.uniform(n, self.sigma[0], self.sigma[1], seed=self.seed_generator)
        apply = keras.random.uniform(n, seed=self.seed_generator) < self.probability
        radius_h, radius_w = self.radius(height), self.radius(width)
        taps = gaussian_taps(sigma, apply, radius_h)
        rows = blur_matrices(taps, height, radius_h)
        if (width, radius_w) == (height, radius_h):
            cols = rows
        else:
            cols = blur_matrices(gaussian_taps(sigma, apply, radius_w), width, radius_w)
        channels = images.shape[3]
        # Channels first, so both passes are plain batched matmuls:
        # rows (N,1,H,H) @ x (N,C,H,W) @ cols^T (N,1,W,W).
        x = ops.transpose(images, (0, 3, 1, 2)) if channels > 1 else \
            ops.reshape(images, (-1, 1, height, width))
        x = ops.matmul(ops.matmul(rows[:, None], x), ops.transpose(cols, (0, 2, 1))[:, None])
        if channels > 1:
            return ops.transpose(x, (0, 2, 3, 1))
        return ops.reshape(x, (-1, height, width, 1))

    def get_config(self):
        config = super().get_config()
        config.update(sigma=list(self.sigma), kernel_size=self.kernel_size,
                      probability=self.probability)
        return config

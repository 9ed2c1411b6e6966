"""RandomGaussianBlur: a different sigma per image, separable, flux-conserving, no clipping."""

import math

import keras
from keras import ops

from kerasssl.layers.base import RandomImageLayer, probability_value, value_range


def blur_matrices(sigma, apply, size, radius):
    """Per-image 1-D blur operators ``(N, size, size)`` with reflect boundaries.

    Row ``i`` of image ``n``'s matrix holds the Gaussian weights (sigma
    ``sigma[n]``, truncated at ``radius`` pixels, normalised to sum 1) that
    output pixel ``i`` gives to each input pixel; taps that fall past the edge
    are folded back onto the pixel they reflect to (``d c b a | a b c d``), so
    every row still sums to 1. Images with ``apply[n]`` False get the identity.
    Blurring is then one batched matmul per axis, whose cost does not depend
    on the kernel size and which vectorises well on CPU and GPU.

    Args:
        sigma: float32 ``(N,)`` standard deviations in pixels (> 0).
        apply: bool ``(N,)``; False leaves the image unchanged.
        size: the axis length (Python int).
        radius: kernel half-width in pixels (Python int, ``< size``).

    Example:
        >>> m = blur_matrices(ops.ones((1,)), ops.ones((1,), "bool"), 16, 4)
        >>> ops.sum(m, axis=-1)   # all ones
    """
    i = ops.reshape(ops.arange(size, dtype="float32"), (1, size, 1))
    j = ops.reshape(ops.arange(size, dtype="float32"), (1, 1, size))
    inv_var = ops.reshape(1.0 / ops.square(ops.maximum(sigma, 1e-6)), (-1, 1, 1))
    taps = ops.arange(-radius, radius + 1, dtype="float32")
    norm = ops.sum(ops.exp(-0.5 * ops.square(taps)[None, :] * ops.reshape(inv_var, (-1, 1))),
                   axis=1)

    def weight(offset):
        # Gaussian weight of a tap at `offset` pixels, zero beyond the radius.
        g = ops.exp(-0.5 * ops.square(offset) * inv_var)
        return ops.where(ops.abs(offset) <= radius, g, ops.zeros_like(g))

    # Input pixel j is read directly (tap j) and through its two mirror images
    # (-1 - j and 2*size - 1 - j); radius < size means no tap reaches further.
    gauss = weight(j - i) + weight(-1.0 - j - i) + weight(2.0 * size - 1.0 - j - i)
    gauss = gauss / ops.reshape(norm, (-1, 1, 1))
    identity = ops.cast(ops.equal(i, j), "float32")
    return ops.where(ops.reshape(apply, (-1, 1, 1)), gauss, identity)


@keras.saving.register_keras_serializable(package="kerasssl")
class RandomGaussianBlur(RandomImageLayer):
    """Blur each image with its own Gaussian sigma.

    Fixes what ``keras.layers.RandomGaussianBlur`` gets wrong for astronomy:
    a sigma is drawn *per image* (not per batch), nothing is clipped (negative
    sky and values far above 255 survive), any channel count works, the
    kernel sums to 1 (total flux is kept; edges are reflected) and the maths
    runs in float32 under mixed precision. Separable: one blur per axis.

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
        rows = blur_matrices(sigma, apply, height, self.radius(height))
        cols = rows if width == height else blur_matrices(sigma, apply, width,
                                                          self.radius(width))
        images = ops.einsum("nij,njwc->niwc", rows, images)
        return ops.einsum("nvw,nhwc->nhvc", cols, images)

    def get_config(self):
        config = super().get_config()
        config.update(sigma=list(self.sigma), kernel_size=self.kernel_size,
                      probability=self.probability)
        return config

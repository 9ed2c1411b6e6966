"""A cheap robust estimate of each image's sky noise, per band (``keras.ops`` only).

:func:`sky_std` is what the noise layers scale or match their noise to. The
exact ``1.4826 * MAD`` (:func:`kerasssl.layers.noise.robust_std`) sorts every
band of every image twice, which dominated the augmentation's CPU time
(benchmarks/RESULTS.md). Here the two medians run on a fixed subsample of
pixels only, to give a robust first guess, and all pixels then refine it by
sigma clipping (a few elementwise passes, no sort):

1. centre and scale from the median and MAD of ``sample`` fixed pixels
   (chosen once, uniformly at random with a fixed seed, so the estimate is
   deterministic and the same on every backend);
2. ``iterations`` times: keep the pixels within ``clip`` scales of the centre,
   take their mean and standard deviation, and undo the truncation (a normal
   distribution clipped at +-3 sigma has 0.9866 of its standard deviation).

For Gaussian sky this is a better estimator than the full MAD (relative
error ~0.8 / sqrt(pixels) against MAD's 1.17 / sqrt(pixels), measured in
tests/test_layers_physics.py), and, like the MAD, bright lens light or arcs
above ``clip`` sigma do not enter it.
"""

import math

import numpy as np
from keras import ops

# MAD of a normal distribution times this is its standard deviation.
MAD_TO_STD = 1.4826
SKY_SAMPLE = 256
SKY_CLIP = 3.0
SKY_ITERATIONS = 2


def truncated_std_factor(clip):
    """Standard deviation of N(0, 1) restricted to ``|x| <= clip`` (0.98658 at 3)."""
    mass = math.erf(clip / math.sqrt(2.0))
    density = math.exp(-0.5 * clip * clip) / math.sqrt(2.0 * math.pi)
    return math.sqrt(1.0 - 2.0 * clip * density / mass)


def sample_index(pixels, sample):
    """The fixed, sorted pixel indices of the first guess (all pixels when fewer).

    Example:
        >>> sample_index(4096, 256).shape
        (256,)
    """
    if sample >= pixels:
        return np.arange(pixels, dtype="int32")
    rng = np.random.default_rng(0)  # fixed: the statistic must not vary between calls
    return np.sort(rng.choice(pixels, size=sample, replace=False)).astype("int32")


def sky_std(images, sample=SKY_SAMPLE, clip=SKY_CLIP, iterations=SKY_ITERATIONS):
    """Robust per-image, per-band sky standard deviation, shape ``(N, 1, 1, C)``.

    Args:
        images: float32 ``(N, H, W, C)`` with static H, W, C.
        sample: pixels of the median / MAD first guess.
        clip: clipping threshold in units of the current scale (> 0).
        iterations: clipped refinements over all pixels (0: the subsample's
            MAD only).

    Returns:
        float32 ``(N, 1, 1, C)``; 0 for a constant band.

    Example:
        >>> noise = np.random.default_rng(0).normal(0, 3.0, (2, 64, 64, 1))
        >>> sky_std(noise.astype("float32"))   # ~3.0 for each image
    """
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    pixels = height * width
    flat = ops.reshape(images, (-1, pixels, channels))
    index = sample_index(pixels, int(sample))
    subset = flat if index.size == pixels else ops.take(flat, index, axis=1)
    centre = ops.median(subset, axis=1, keepdims=True)  # (N, 1, C)
    scale = MAD_TO_STD * ops.median(ops.abs(subset - centre), axis=1, keepdims=True)
    factor = truncated_std_factor(float(clip))
    for _ in range(int(iterations)):
        offset = flat - centre
        keep = ops.cast(ops.abs(offset) <= clip * scale, "float32")
        count = ops.maximum(ops.sum(keep, axis=1, keepdims=True), 1.0)
        kept = keep * offset
        mean = ops.sum(kept, axis=1, keepdims=True) / count
        variance = ops.sum(kept * offset, axis=1, keepdims=True) / count - ops.square(mean)
        centre = centre + mean
        scale = ops.sqrt(ops.maximum(variance, 0.0)) / factor
    return ops.reshape(scale, (-1, 1, 1, channels))

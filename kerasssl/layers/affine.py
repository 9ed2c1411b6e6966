"""One per-image affine resampler, shared by RandomRotation and RandomResizedCrop.

Each image gets its own 2x3 matrix that maps an *output* pixel position to
the *input* position it is read from, in pixel-centre coordinates (pixel
``(i, j)`` sits at ``(y, x) = (i, j)``)::

    [y_in, x_in] = M[:, :2] @ [y_out, x_out] + M[:, 2]

Sampling is built from ``keras.ops`` only — one ``take`` (gather) of the four
bilinear neighbours of every output pixel, then a weighted sum — so it runs
on TF and JAX and compiles under XLA (unlike ``ImageProjectiveTransformV3``,
which has no XLA kernel). Positions outside the image follow ``fill_mode``:

- ``"reflect"``: ``d c b a | a b c d | d c b a`` (mirror about the outer edge
  of the last pixel, as Keras);
- ``"wrap"``: ``a b c d | a b c d | a b c d``;
- ``"nearest"``: ``a a a a | a b c d | d d d d``;
- ``"constant"``: ``k k k k | a b c d | k k k k`` with ``k = fill_value``.

The fill mode is applied to the integer neighbour indices, so a bilinear
sample near the edge blends real pixels with their (reflected, wrapped,
clamped or constant) neighbours and the result is continuous in the matrix.
"""

from keras import ops

FILL_MODES = ("reflect", "wrap", "nearest", "constant")
INTERPOLATIONS = ("bilinear", "nearest")


def check_fill_mode(fill_mode):
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
    return fill_mode


def check_interpolation(interpolation):
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}"
        )
    return interpolation


def map_index(index, size, fill_mode):
    """Map integer indices (any int tensor) into ``[0, size)`` by ``fill_mode``.

    Args:
        index: int32 tensor of positions along one axis, possibly outside.
        size: the axis length (a Python int).
        fill_mode: one of :data:`FILL_MODES`; "constant" clamps (the caller
            masks those samples out).

    Example:
        >>> map_index(ops.arange(-2, 6), 4, "reflect")   # [1 0 0 1 2 3 3 2]
    """
    if fill_mode == "reflect":
        period = 2 * size
        index = ops.mod(index, period)
        return ops.where(index >= size, period - 1 - index, index)
    if fill_mode == "wrap":
        return ops.mod(index, size)
    return ops.clip(index, 0, size - 1)


def affine_sample(images, matrices, fill_mode="reflect", fill_value=0.0,
                  interpolation="bilinear"):
    """Resample each image of a batch through its own affine matrix.

    Args:
        images: float32 ``(N, H, W, C)``; H, W, C must be known (static).
        matrices: float32 ``(N, 2, 3)``, output pixel -> input position
            (see the module docstring).
        fill_mode: "reflect", "wrap", "nearest" or "constant".
        fill_value: value outside the image for "constant".
        interpolation: "bilinear" or "nearest".

    Returns:
        float32 ``(N, H, W, C)``.

    Example:
        >>> identity = np.tile(np.eye(2, 3, dtype="float32"), (8, 1, 1))
        >>> out = affine_sample(images, identity)   # == images
    """
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    if None in (height, width, channels):
        raise ValueError(
            f"image height, width and channels must be known, got {tuple(images.shape)}"
        )
    pixels = height * width
    rows, cols = ops.meshgrid(
        ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"),
        indexing="ij",
    )
    grid = ops.stack(
        [ops.reshape(rows, (-1,)), ops.reshape(cols, (-1,)), ops.ones((pixels,), "float32")]
    )  # (3, H*W)
    coords = ops.einsum("nij,jp->nip", ops.cast(matrices, "float32"), grid)  # (N, 2, H*W)
    y, x = coords[:, 0, :], coords[:, 1, :]

    if interpolation == "nearest":
        # floor(v + 0.5) rather than round: no banker's rounding at .5.
        y0 = ops.cast(ops.floor(y + 0.5), "int32")
        x0 = ops.cast(ops.floor(x + 0.5), "int32")
        ys, xs = ops.expand_dims(y0, 1), ops.expand_dims(x0, 1)  # (N, 1, P)
        weights = ops.ones_like(ops.expand_dims(y, 1))
    else:
        y_floor, x_floor = ops.floor(y), ops.floor(x)
        wy, wx = y - y_floor, x - x_floor
        y0, x0 = ops.cast(y_floor, "int32"), ops.cast(x_floor, "int32")
        # The four neighbours, stacked on axis 1: (y0,x0) (y0,x1) (y1,x0) (y1,x1).
        ys = ops.stack([y0, y0, y0 + 1, y0 + 1], axis=1)
        xs = ops.stack([x0, x0 + 1, x0, x0 + 1], axis=1)
        weights = ops.stack(
            [(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], axis=1
        )  # (N, 4, P)

    if fill_mode == "constant":
        inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        weights = ops.where(inside, weights, ops.zeros_like(weights))
    ys = map_index(ys, height, fill_mode)
    xs = map_index(xs, width, fill_mode)

    batch = ops.shape(images)[0]
    offsets = ops.reshape(ops.arange(batch, dtype="int32") * pixels, (-1, 1, 1))
    flat_index = offsets + ys * width + xs  # (N, K, P) into the (N*H*W, C) table
    table = ops.reshape(images, (-1, channels))
    values = ops.take(table, flat_index, axis=0)  # (N, K, P, C): one gather
    output = ops.sum(values * ops.expand_dims(weights, -1), axis=1)  # (N, P, C)
    if fill_mode == "constant" and fill_value != 0:
        missing = 1.0 - ops.sum(weights, axis=1)  # weight that fell outside
        output = output + float(fill_value) * ops.expand_dims(missing, -1)
    return ops.reshape(output, (-1, height, width, channels))

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

The image is padded by one pixel as the fill mode extends it and each
continuous coordinate is folded into the padded range, so the four bilinear
neighbours of a sample are always adjacent there: a bilinear sample near the
edge blends real pixels with their reflected, wrapped, clamped or constant
neighbours, and the result is continuous in the matrix.
"""

import numpy as np
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


def _pad(images, fill_mode, fill_value):
    """Pad height and width by 1 before and 2 after, as ``fill_mode`` extends the image.

    One pixel each side is all bilinear sampling reads once coordinates are
    folded into ``[-0.5, size - 0.5]`` (reflect, wrap) or ``[0, size - 1]``
    (nearest); "constant" reads up to ``size + 1``, hence 2 after.
    """
    widths = [[0, 0], [1, 2], [1, 2], [0, 0]]
    if fill_mode == "constant":
        return ops.pad(images, widths, mode="constant", constant_values=fill_value)
    if fill_mode in ("reflect", "nearest"):
        # "symmetric" repeats the edge pixel next to it, all that is read there.
        return ops.pad(images, widths, mode="symmetric")
    for axis in (1, 2):  # wrap: the far edge before, the near edge after
        size = images.shape[axis]
        take = [slice(None)] * 4
        take[axis] = slice(size - 1, size)
        before = images[tuple(take)]
        take[axis] = slice(0, 2) if size >= 2 else slice(0, 1)
        after = images[tuple(take)]
        if size < 2:
            after = ops.concatenate([after, after], axis=axis)
        images = ops.concatenate([before, images, after], axis=axis)
    return images


REACHES = ("any", "near", "inside")


def fold_coordinate(coord, size, fill_mode, reach="any"):
    """Fold continuous pixel coordinates into the range the padding covers, plus one.

    Folding the continuous coordinate (rather than the four integer
    neighbours) gives the same bilinear values — reflection and wrapping are
    piecewise linear — and lets the neighbours sit next to each other in the
    padded image, so one gather of 2x2 patches serves every output pixel.
    The result is shifted by +1: it indexes the padded image directly.

    Args:
        coord: float32 tensor of positions along one axis.
        size: axis length (Python int).
        fill_mode: one of :data:`FILL_MODES`.
        reach: what the caller knows of ``coord``: "any"; "near" (within one
            image size outside the edges: a single mirror or wrap suffices);
            "inside" (within ``[-0.5, size - 0.5]``: nothing to fold). The
            cheaper cases matter on CPU, where each elementwise pass costs.

    Example:
        >>> fold_coordinate(ops.convert_to_tensor([-1.2, 4.2]), 4, "reflect")  # [1.2, 3.8]
    """
    if reach == "inside":
        return coord + 1.0
    if fill_mode == "nearest":
        return ops.clip(coord, 0.0, size - 1.0) + 1.0
    if fill_mode == "constant":  # everything further out reads fill only
        return ops.clip(coord, -1.0, float(size)) + 1.0
    shifted = coord + 0.5  # the image spans [0, size] here
    if fill_mode == "reflect":  # mirror about 0 and size (pixel edges)
        if reach == "any":
            period = 2.0 * size
            shifted = shifted - ops.floor(shifted * (1.0 / period)) * period
        else:
            shifted = ops.abs(shifted)
        return (size + 0.5) - ops.abs(size - shifted)
    # wrap
    if reach == "any":
        return shifted - ops.floor(shifted * (1.0 / size)) * size + 0.5
    shifted = ops.where(shifted < 0.0, shifted + size, shifted)
    return ops.where(shifted >= size, shifted - size, shifted) + 0.5


def affine_sample(images, matrices, fill_mode="reflect", fill_value=0.0,
                  interpolation="bilinear", reach="any"):
    """Resample each image of a batch through its own affine matrix.

    Args:
        images: float32 ``(N, H, W, C)``; H, W, C must be known (static).
        matrices: float32 ``(N, 2, 3)``, output pixel -> input position
            (see the module docstring).
        fill_mode: "reflect", "wrap", "nearest" or "constant".
        fill_value: value outside the image for "constant".
        interpolation: "bilinear" or "nearest".
        reach: "any", or what the caller guarantees about where the matrices
            read from ("near": within one image size outside; "inside"),
            which saves elementwise passes (see :func:`fold_coordinate`).

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
    check_fill_mode(fill_mode)
    check_interpolation(interpolation)
    if reach not in REACHES:
        raise ValueError(f"reach must be one of {REACHES}, got {reach!r}")
    pixels = height * width

    # Output pixel grid (3, H*W) -> input positions (N, H*W) in the padded
    # image, one matmul per axis: (N, 1, 3) @ (3, H*W), no slicing copies.
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    grid = np.stack([rows.ravel(), cols.ravel(), np.ones(pixels)]).astype("float32")
    grid = ops.convert_to_tensor(grid)
    matrices = ops.cast(matrices, "float32")
    y = fold_coordinate(ops.matmul(matrices[:, 0:1], grid)[:, 0], height, fill_mode, reach)
    x = fold_coordinate(ops.matmul(matrices[:, 1:2], grid)[:, 0], width, fill_mode, reach)
    padded = _pad(images, fill_mode, float(fill_value))
    batch = ops.shape(images)[0]

    if interpolation == "nearest":
        padded_h, padded_w = height + 3, width + 3
        offsets = ops.reshape(ops.arange(batch, dtype="int32") * (padded_h * padded_w), (-1, 1))
        index = offsets + ops.cast(ops.floor(y + 0.5) * padded_w + ops.floor(x + 0.5), "int32")
        table = ops.reshape(padded, (-1, channels))
        output = ops.take(table, index, axis=0)  # (N, P, C)
        return ops.reshape(output, (-1, height, width, channels))

    # Row k of the patch table holds pixel k of the padded image and its right,
    # lower and lower-right neighbours, so one gather fetches all four
    # bilinear corners. Built as four plain slices stacked in front and one
    # transpose: on CPU ~3x cheaper than stacking along the last axis.
    patches = ops.stack(
        [padded[:, :-1, :-1], padded[:, :-1, 1:], padded[:, 1:, :-1], padded[:, 1:, 1:]]
    )  # (4, N, H+2, W+2, C)
    patch_h, patch_w = height + 2, width + 2
    table = ops.reshape(ops.transpose(patches, (1, 2, 3, 4, 0)), (-1, 4 * channels))

    y_floor, x_floor = ops.floor(y), ops.floor(x)
    wy, wx = ops.expand_dims(y - y_floor, -1), ops.expand_dims(x - x_floor, -1)
    offsets = ops.reshape(ops.arange(batch, dtype="int32") * (patch_h * patch_w), (-1, 1))
    index = offsets + ops.cast(y_floor * patch_w + x_floor, "int32")
    corners = ops.take(table, index, axis=0)  # (N, P, C*4): the one gather
    # Back to corner-major for the interpolation: plain elementwise passes
    # (a weighted reduction over a last axis of 4 is ~7x slower on CPU).
    corners = ops.transpose(ops.reshape(corners, (-1, pixels, channels, 4)), (3, 0, 1, 2))
    top = corners[0] + wx * (corners[1] - corners[0])
    bottom = corners[2] + wx * (corners[3] - corners[2])
    output = top + wy * (bottom - top)  # (N, P, C)
    return ops.reshape(output, (-1, height, width, channels))

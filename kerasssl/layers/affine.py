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

Each continuous coordinate is folded by the fill mode into the range that
sampling reads (for "wrap" and "constant" the image is first padded by the
pixels they add), so the four bilinear neighbours of a sample are always
adjacent: a sample near the edge blends real pixels with their reflected,
wrapped, clamped or constant neighbours, continuously in the matrix.

On the TensorFlow backend, outside XLA, bilinear sampling with "reflect",
"nearest" or "constant" runs TensorFlow's own ``ImageProjectiveTransformV3``
kernel instead: the same samples (parity-tested to 1e-5), about half the CPU
time. Its "wrap" differs from Keras's, and it has no XLA kernel, so those
cases keep the ``keras.ops`` path.
"""

import keras
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

    Used for "wrap" and "constant" (and tiny images): once coordinates are
    folded (see :func:`fold_coordinate`), "wrap" reads one pixel past each
    edge and "constant" up to two after, hence the 1 / 2 widths.
    """
    if fill_mode == "constant":
        widths = [[0, 0], [1, 2], [1, 2], [0, 0]]
        return ops.pad(images, widths, mode="constant", constant_values=fill_value)
    for axis in (1, 2):
        size = images.shape[axis]

        def part(start, stop, axis=axis):
            index = [slice(None)] * 4
            index[axis] = slice(start, stop)
            return images[tuple(index)]

        if fill_mode == "wrap":  # the far edge before, the near edge(s) after
            before, after = part(size - 1, size), part(0, min(2, size))
        else:  # reflect / nearest: the edge pixel repeats next to the edge
            before, after = part(0, 1), part(size - 1, size)
        if after.shape[axis] < 2:
            after = ops.concatenate([after, after], axis=axis)
        images = ops.concatenate([before, images, after], axis=axis)
    return images


REACHES = ("any", "near", "inside")


def fold_coordinate(coord, size, fill_mode, reach="any"):
    """Fold continuous pixel coordinates into the range that sampling reads.

    Folding the continuous coordinate (rather than the four integer
    neighbours) gives the same bilinear values — reflection and wrapping are
    piecewise linear — and keeps the neighbours adjacent, so one gather of
    2x2 patches serves every output pixel. The result lies in ``[0, size-1]``
    for "reflect" and "nearest" (their outer half pixel repeats the edge, so
    clamping there is exact and no padding is needed), ``[-0.5, size - 0.5]``
    for "wrap" and ``[-1, size]`` for "constant" (both read one padded pixel).

    Args:
        coord: float32 tensor of positions along one axis.
        size: axis length (Python int).
        fill_mode: one of :data:`FILL_MODES`.
        reach: what the caller knows of ``coord``: "any"; "near" (within one
            image size outside the edges: a single mirror or wrap suffices);
            "inside" (within ``[-0.5, size - 0.5]``: nothing to fold). The
            cheaper cases matter on CPU, where each elementwise pass costs.

    Example:
        >>> fold_coordinate(ops.convert_to_tensor([-1.2, 4.2]), 4, "reflect")  # [0.2, 2.8]
    """
    if fill_mode == "nearest" or (fill_mode == "reflect" and reach == "inside"):
        return ops.clip(coord, 0.0, size - 1.0)
    if fill_mode == "constant":  # everything further out reads fill only
        return ops.clip(coord, -1.0, float(size))
    if reach == "inside":  # wrap
        return coord
    shifted = coord + 0.5  # the image spans [0, size] here
    if fill_mode == "reflect":  # mirror about 0 and size (pixel edges)
        if reach == "any":
            period = 2.0 * size
            shifted = shifted - ops.floor(shifted * (1.0 / period)) * period
        else:
            shifted = ops.abs(shifted)
        return ops.clip((size - 0.5) - ops.abs(size - shifted), 0.0, size - 1.0)
    # wrap
    if reach == "any":
        return shifted - ops.floor(shifted * (1.0 / size)) * size - 0.5
    shifted = ops.where(shifted < 0.0, shifted + size, shifted)
    return ops.where(shifted >= size, shifted - size, shifted) - 0.5


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
    if _native_kernel_applies(fill_mode, interpolation, height, width):
        return _tf_projective_sample(images, matrices, fill_mode, fill_value)
    return _ops_sample(images, matrices, fill_mode, fill_value, interpolation, reach)


def _native_kernel_applies(fill_mode, interpolation, height, width):
    """Whether TensorFlow's projective-transform kernel gives this sampling (see the module doc)."""
    if keras.backend.backend() != "tensorflow" or interpolation != "bilinear":
        return False
    if fill_mode not in ("reflect", "nearest", "constant") or min(height, width) < 2:
        return False
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util  # TF's own test (cond_v2 uses it)

    return not control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _tf_projective_sample(images, matrices, fill_mode, fill_value):
    """:func:`affine_sample` through ``ImageProjectiveTransformV3`` (TF backend, no XLA).

    TF's transform maps output (x, y) = (column, row) to input
    ``(a0 x + a1 y + a2, b0 x + b1 y + b2)``, in the same pixel-centre
    coordinates; ours maps (row, column), so the two rows swap and so do
    their linear terms.
    """
    import tensorflow as tf

    m = tf.cast(matrices, tf.float32)
    zero = tf.zeros_like(m[:, 0, 0])
    transforms = tf.stack([m[:, 1, 1], m[:, 1, 0], m[:, 1, 2],
                           m[:, 0, 1], m[:, 0, 0], m[:, 0, 2], zero, zero], axis=1)
    output = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=transforms,
        output_shape=tf.shape(images)[1:3], fill_value=float(fill_value),
        interpolation="BILINEAR", fill_mode=fill_mode.upper())
    return tf.ensure_shape(output, images.shape)


def _ops_sample(images, matrices, fill_mode, fill_value, interpolation, reach):
    """:func:`affine_sample` from ``keras.ops`` alone (any backend, XLA-compilable)."""
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    pixels = height * width

    # Output pixel (i, j) -> input position, per axis as a row term plus a
    # column term: one full-size add each. Elementwise on purpose: a matmul
    # may run in TF32 on GPUs, which would move samples by ~0.1 pixel.
    rows = ops.arange(height, dtype="float32")[None, :]
    cols = ops.arange(width, dtype="float32")[None, :]
    m = ops.cast(matrices, "float32")

    def positions(k):
        row_term = m[:, k, 0:1] * rows + m[:, k, 2:3]  # (N, H)
        col_term = m[:, k, 1:2] * cols  # (N, W)
        return ops.reshape(row_term[:, :, None] + col_term[:, None, :], (-1, pixels))

    y = fold_coordinate(positions(0), height, fill_mode, reach)
    x = fold_coordinate(positions(1), width, fill_mode, reach)

    if fill_mode in ("reflect", "nearest") and min(height, width) >= 2:
        source = images  # coordinates are clamped inside: no padding needed
    else:
        source = _pad(images, fill_mode, float(fill_value))
        y, x = y + 1.0, x + 1.0  # positions in the padded image
    source_h, source_w = source.shape[1], source.shape[2]
    batch = ops.shape(images)[0]

    if interpolation == "nearest":
        offsets = ops.reshape(ops.arange(batch, dtype="int32") * (source_h * source_w), (-1, 1))
        index = offsets + ops.cast(ops.floor(y + 0.5) * source_w + ops.floor(x + 0.5), "int32")
        table = ops.reshape(source, (-1, channels))
        output = ops.take(table, index, axis=0)  # (N, P, C)
        return ops.reshape(output, (-1, height, width, channels))

    # Row k of the patch table holds source pixel k and its right, lower and
    # lower-right neighbours, so one gather fetches all four bilinear corners.
    # Built as four plain slices stacked in front and one transpose: on CPU
    # ~3x cheaper than stacking along the last axis.
    patches = ops.stack(
        [source[:, :-1, :-1], source[:, :-1, 1:], source[:, 1:, :-1], source[:, 1:, 1:]]
    )  # (4, N, h, w, C)
    patch_h, patch_w = source_h - 1, source_w - 1
    table = ops.reshape(ops.transpose(patches, (1, 2, 3, 4, 0)), (-1, 4 * channels))

    # The last row / column has no lower / right neighbour: a sample exactly
    # on it uses the patch before, with weight 1 on its far corner.
    y_floor = ops.minimum(ops.floor(y), patch_h - 1.0)
    x_floor = ops.minimum(ops.floor(x), patch_w - 1.0)
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

"""RandomRotatedCrop: the dihedral symmetries, a rotation and a resized crop, resampled once.

Rotating and then cropping resamples every image twice; composing the two
output -> input matrices and sampling once does the same geometric transform
at about half the cost (they were ~40 % of the SimCLR view's CPU time,
benchmarks/RESULTS.md) and interpolates once instead of twice, so the view
is slightly sharper (bilinear interpolation smooths pixel noise; twice
smooths it more). A dihedral symmetry before them joins the same matrix for
free: it maps pixel centres to pixel centres, so sampling through it is
exact. The view pipelines use it whenever a view both rotates and crops
(:func:`kerasssl.layers.views.build_view_pipeline`).
"""

import keras
from keras import ops

from kerasssl.layers.affine import affine_sample
from kerasssl.layers.base import RandomImageLayer
from kerasssl.layers.crop import RandomResizedCrop
from kerasssl.layers.dihedral import RandomDihedral, symmetry_matrices
from kerasssl.layers.rotation import RandomRotation


def compose_matrices(outer, inner):
    """The affine matrices ``(N, 2, 3)`` of applying ``outer``, then ``inner``, to an image.

    Both map output pixel positions to input positions, so the image made by
    ``outer`` and then resampled by ``inner`` reads, at output ``p``, the input
    at ``outer(inner(p))``. Written elementwise, not as a matmul (GPUs may
    run matmuls in TF32, which would move samples by ~0.1 pixel).

    Example:
        >>> both = compose_matrices(rotation, crop)   # crop(rotate(image)) in one sample
    """
    rows = []
    for k in range(2):
        a, b = outer[:, k, 0:1], outer[:, k, 1:2]
        linear = a * inner[:, 0, :] + b * inner[:, 1, :]  # (N, 3): the two linear terms...
        rows.append(linear + ops.concatenate(
            [ops.zeros_like(outer[:, k, 0:2]), outer[:, k, 2:3]], axis=1))  # ...plus the offset
    return ops.stack(rows, axis=1)


@keras.saving.register_keras_serializable(package="kerasssl")
class RandomRotatedCrop(RandomImageLayer):
    """Rotate each image by a random angle, then take a random resized crop, in one resample.

    The draws are those of a :class:`RandomRotation` and a
    :class:`RandomResizedCrop` (and, optionally first, a
    :class:`RandomDihedral`) with the same options and seeds: the layer
    holds one of each and asks them for their matrices, so the pipeline's
    per-stage seeds keep their meaning. The result is their composition
    sampled once with the rotation's ``fill_mode`` and bilinear
    interpolation. It differs from running the layers in turn only by the
    second interpolation (and, at the crop's outer half pixel, by the exact
    rotated image instead of its repeated edge); the dihedral part is exact.

    Args:
        rotation: keyword arguments of the :class:`RandomRotation` (``factor``
            required; ``fill_mode``, ``fill_value``, ``seed``; interpolation
            must stay bilinear).
        crop: keyword arguments of the :class:`RandomResizedCrop` (``scale``,
            ``ratio``, ``seed``; bilinear).
        dihedral: None, or keyword arguments of a :class:`RandomDihedral`
            applied first (``seed``); square images only.
        seed: integer seed for the draws whose dicts give none (rotation
            ``3 * seed``, crop ``3 * seed + 1``, dihedral ``3 * seed + 2``);
            None draws them.
        **kwargs: base layer arguments (name, dtype, ...).

    Example:
        >>> layer = RandomRotatedCrop({"factor": 0.04}, {"scale": (0.7, 1.0)}, seed=0)
        >>> views = layer(images, training=True)   # same shape as images
    """

    def __init__(self, rotation, crop, dihedral=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        rotation, crop = dict(rotation), dict(crop)
        dihedral = None if dihedral is None else dict(dihedral)
        for options, offset in ((rotation, 0), (crop, 1), (dihedral, 2)):
            if options is None:
                continue
            if options.get("seed") is None and seed is not None:
                options["seed"] = 3 * int(seed) + offset
            if options.get("interpolation", "bilinear") != "bilinear":
                raise ValueError("RandomRotatedCrop resamples bilinearly; use RandomRotation "
                                 "and RandomResizedCrop for nearest-neighbour sampling")
        self.rotation = RandomRotation(**rotation, name=f"{self.name}_rotation")
        self.crop = RandomResizedCrop(**crop, name=f"{self.name}_crop")
        self.dihedral = None if dihedral is None else RandomDihedral(
            **dihedral, name=f"{self.name}_dihedral")

    @property
    def stages(self):
        """The layers whose draws it composes, by view stage name, in the order they act."""
        first = {} if self.dihedral is None else {"dihedral": self.dihedral}
        return dict(first, rotation=self.rotation, crop=self.crop)

    def augment(self, images):
        # Drawn in the order the separate layers would run.
        symmetry = None if self.dihedral is None else self.dihedral.draw_symmetry(images)
        rotation, reach = self.rotation.draw_matrices(images)
        matrices = compose_matrices(rotation, self.crop.draw_matrices(images))
        if symmetry is not None:
            height, width = images.shape[1], images.shape[2]
            matrices = compose_matrices(symmetry_matrices(*symmetry, height, width), matrices)
        # The crop reads inside the rotated frame, so the composition reads
        # where the rotation does: the same reach.
        return affine_sample(images, matrices, self.rotation.fill_mode,
                             self.rotation.fill_value, "bilinear", reach=reach)

    @staticmethod
    def _options(layer, keys):
        config = layer.get_config()
        return {key: config[key] for key in keys + ("seed",)}

    def get_config(self):
        config = super().get_config()
        config.update(
            rotation=self._options(self.rotation, ("factor", "fill_mode", "fill_value")),
            crop=self._options(self.crop, ("scale", "ratio", "fill_mode")),
            dihedral=None if self.dihedral is None else self._options(self.dihedral, ()),
        )
        return config

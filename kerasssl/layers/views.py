"""The two augmented views of each self-supervised method, built from a config dict.

A view config is a dict of *stages*, applied in this fixed order::

    flip -> rot90 -> dihedral -> rotation -> crop -> blur -> noise

Each stage's value is the keyword arguments of its layer (a dict), ``True``
for the lensing defaults of that stage (:data:`STAGE_DEFAULTS`), or
``False`` / ``None`` to leave it out. The lensing defaults: the 8 exact
symmetries of the square, a small-angle rotation, a mild resized crop (the
lens sits in the centre: area 70-100 %), a per-image Gaussian blur and
Gaussian noise relative to each image's robust std. No colour jitter: bands
are physical fluxes.

Example:
    >>> cfg = view_config("simclr")                  # a dict, edit freely
    >>> cfg["rotation"] = {"factor": 0.5}            # any angle
    >>> view = build_view_pipeline(cfg, seed=0)      # a keras.Sequential
    >>> view1, view2 = build_view_pair("byol", overrides={"view2": {"noise": False}}, seed=0)
"""

import copy

import keras

from kerasssl.errors import KerassslError
from kerasssl.layers.blur import RandomGaussianBlur
from kerasssl.layers.crop import RandomResizedCrop
from kerasssl.layers.dihedral import RandomDihedral, RandomFlip, RandomRot90
from kerasssl.layers.noise import RandomGaussianNoise
from kerasssl.layers.rotation import RandomRotation

# Stage name -> layer class, in the order the stages are applied.
STAGES = {
    "flip": RandomFlip,
    "rot90": RandomRot90,
    "dihedral": RandomDihedral,
    "rotation": RandomRotation,
    "crop": RandomResizedCrop,
    "blur": RandomGaussianBlur,
    "noise": RandomGaussianNoise,
}

# What `True` means for each stage: tuned for centred lens images.
STAGE_DEFAULTS = {
    "flip": {"mode": "horizontal_and_vertical"},
    "rot90": {},
    "dihedral": {},
    "rotation": {"factor": 0.04, "fill_mode": "reflect"},  # +-14.4 degrees
    "crop": {"scale": [0.7, 1.0], "ratio": [0.8, 1.25]},
    "blur": {"sigma": [0.1, 1.5], "probability": 0.5},
    "noise": {"stddev": [0.0, 1.0], "relative": True, "probability": 0.5},
}

# Per-method defaults. BYOL-style methods use asymmetric views (always blur
# one view, rarely the other), as in their papers; the rest are symmetric.
_SYMMETRIC = {stage: True for stage in ("dihedral", "rotation", "crop", "blur", "noise")}
_ASYMMETRIC = (
    dict(_SYMMETRIC, blur={"sigma": [0.1, 1.5], "probability": 1.0}),
    dict(_SYMMETRIC, blur={"sigma": [0.1, 1.5], "probability": 0.1}),
)
METHOD_VIEWS = {
    "simclr": (_SYMMETRIC, _SYMMETRIC),
    "simsiam": (_SYMMETRIC, _SYMMETRIC),
    "byol": _ASYMMETRIC,
    "barlow_twins": _ASYMMETRIC,
    "vicreg": _ASYMMETRIC,
    "moco": (_SYMMETRIC, _SYMMETRIC),
    "dino": _ASYMMETRIC,
    # Light, lossless augmentation for supervised fine-tuning.
    "finetune": ({"dihedral": True}, {"dihedral": True}),
}

_VIEW_KEYS = ("view1", "view2")


def view_config(method, view=1):
    """The default config of one view of ``method``, with every stage spelled out.

    Args:
        method: simclr, byol, simsiam, barlow_twins, vicreg or finetune.
        view: 1 or 2 (the views differ only for asymmetric methods).

    Returns:
        A new dict ``{stage: kwargs dict or False}`` for all stages.

    Example:
        >>> view_config("byol", view=2)["blur"]["probability"]
        0.1
    """
    if method not in METHOD_VIEWS:
        raise KerassslError(
            f"no view pipeline for method {method!r}; known: {', '.join(METHOD_VIEWS)}"
        )
    if view not in (1, 2):
        raise KerassslError(f"view must be 1 or 2, got {view!r}")
    return _resolve(METHOD_VIEWS[method][view - 1], where=f"{method} view {view}")


def _stage_options(stage, value, base, where):
    """Resolve one stage's value to kwargs (dict) or False."""
    if value is None or value is False:
        return False
    if value is True:
        return copy.deepcopy(base) if base else copy.deepcopy(STAGE_DEFAULTS[stage])
    if isinstance(value, dict):
        merged = copy.deepcopy(base) if base else copy.deepcopy(STAGE_DEFAULTS[stage])
        merged.update(copy.deepcopy(value))
        return merged
    raise KerassslError(
        f"augment: {where}: stage {stage!r} must be true, false or a mapping of "
        f"options, got {value!r}"
    )


def _resolve(cfg, base=None, where="augment"):
    """A full config ``{stage: kwargs or False}`` from ``cfg`` over ``base``."""
    if not isinstance(cfg, dict):
        raise KerassslError(f"augment: {where}: expected a mapping of stages, got {cfg!r}")
    unknown = sorted(set(cfg) - set(STAGES))
    if unknown:
        raise KerassslError(
            f"augment: {where}: unknown stage {unknown[0]!r}; known: {', '.join(STAGES)}"
        )
    base = base or {}
    resolved = {}
    for stage in STAGES:
        if stage in cfg:
            resolved[stage] = _stage_options(stage, cfg[stage], base.get(stage), where)
        else:
            resolved[stage] = copy.deepcopy(base.get(stage, False))
    return resolved


def _layer_seed(seed, index):
    return None if seed is None else int(seed) * 16 + index


def build_view_pipeline(cfg, seed=None, name="view"):
    """Build one view's augmentation pipeline from a config dict.

    Args:
        cfg: ``{stage: options}`` (see the module docstring); stages left out
            are off. ``view_config(method)`` gives a complete default.
        seed: integer seed; each layer gets its own seed derived from it.
            None: unseeded.
        name: the Sequential's name.

    Returns:
        A ``keras.Sequential`` of kerasssl layers (an ``Identity`` layer when
        every stage is off); identity when called with ``training=False``.

    Raises:
        KerassslError: unknown stage, or options a layer refuses.

    Example:
        >>> view = build_view_pipeline({"dihedral": True, "blur": {"sigma": 1.0}}, seed=0)
        >>> augmented = view(images, training=True)
    """
    resolved = _resolve(cfg, where=name)
    layers = []
    for index, (stage, layer_class) in enumerate(STAGES.items()):
        options = resolved[stage]
        if options is False:
            continue
        if "seed" in options or "name" in options:
            raise KerassslError(
                f"augment: {name}: stage {stage!r}: seeds and names are set by the "
                "pipeline (give `seed` to the run instead)"
            )
        try:
            layers.append(layer_class(**options, seed=_layer_seed(seed, index),
                                      name=f"{name}_{stage}"))
        except (TypeError, ValueError) as error:
            raise KerassslError(f"augment: {name}: stage {stage!r}: {error}") from None
    if not layers:
        layers.append(keras.layers.Identity(name=f"{name}_identity"))
    return keras.Sequential(layers, name=name)


def build_view_pair(method, overrides=None, seed=None):
    """The two view pipelines of ``method``, with optional overrides.

    Args:
        method: simclr, byol, simsiam, barlow_twins, vicreg or finetune.
        overrides: a dict of stages applied to both views (merged into the
            method's defaults option by option), plus optional ``view1`` /
            ``view2`` dicts of stages for one view only (applied last). This
            is ``PretrainConfig.augment``.
        seed: integer seed; the two views get different derived seeds.

    Returns:
        ``(view1, view2)``, two ``keras.Sequential`` pipelines.

    Raises:
        KerassslError: unknown method or stage, or options a layer refuses.

    Example:
        >>> v1, v2 = build_view_pair("simclr", {"rotation": {"factor": 0.5}}, seed=0)
        >>> a, b = v1(images, training=True), v2(images, training=True)
    """
    overrides = copy.deepcopy(overrides) if overrides else {}
    if not isinstance(overrides, dict):
        raise KerassslError(f"augment: expected a mapping, got {overrides!r}")
    per_view = {key: overrides.pop(key, None) or {} for key in _VIEW_KEYS}
    views = []
    for number, key in enumerate(_VIEW_KEYS, start=1):
        cfg = view_config(method, number)
        cfg = _resolve(overrides, base=cfg, where="augment")
        cfg = _resolve(per_view[key], base=cfg, where=f"augment.{key}")
        view_seed = None if seed is None else 2 * int(seed) + number - 1
        views.append(build_view_pipeline(cfg, seed=view_seed, name=f"{method}_{key}"))
    return tuple(views)

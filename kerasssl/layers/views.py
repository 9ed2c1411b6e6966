"""Augmented views built from config dicts: the stage machinery and named presets.

A view config is a dict of *stages*, applied in this fixed order::

    flip -> rot90 -> dihedral -> rotation -> shift -> crop -> reddening -> psf -> blur -> skynoise -> noise

Each stage's value is the keyword arguments of its layer (a dict), ``True``
for the lensing defaults of that stage (:data:`STAGE_DEFAULTS`), or
``False`` / ``None`` to leave it out. The lensing defaults: the 8 exact
symmetries of the square, a small-angle rotation, a mild resized crop (the
lens sits in the centre: area 70-100 %), a per-image Gaussian blur and
Gaussian noise relative to each image's robust std. No colour jitter: bands
are physical fluxes. The physical stages (off in the presets; turn them on in
``pretrain.augment``) are ``shift`` (small translations instead of zoom),
``reddening`` (E(B-V) with per-band extinction instead of colour jitter),
``psf`` (blur to a target PSF per band, never sharper) and ``skynoise`` (noise
up to a target sky level per band, never less). Views run after ``Preprocess``:
PSF matching, sky noise and reddening are exact on linear fluxes
(``normalization: none``; ``dataset`` too, but for reddening's offset of
``(1 - f) * mean / std`` per band), approximate after an asinh stretch; so
``benchmarks/ablation.py`` runs every variant with ``dataset``.

A view that rotates and crops samples the image once: :class:`RandomRotatedCrop`
composes the dihedral, rotation and crop matrices, with the stages' own
options and seeds (``fuse_resampling=False`` keeps one layer per stage).
The default stage set is named in one place, :data:`DEFAULT_STAGES`.

A *view pair* is ``(view1 config, view2 config)``. Presets: :data:`SYMMETRIC`
(both views alike, as SimCLR) and :data:`ASYMMETRIC` (always blur one view,
rarely the other, as BYOL). Who uses which is said where they live: each
method's ``default_views`` (:mod:`kerasssl.methods`), fine-tuning's light view
in :mod:`kerasssl.finetune`. This module knows no method names.

Example:
    >>> cfg = view_config(SYMMETRIC)                 # a dict, edit freely
    >>> cfg["rotation"] = {"factor": 0.5}            # any angle
    >>> view = build_view_pipeline(cfg, seed=0)      # a keras.Sequential
    >>> view1, view2 = build_view_pair(ASYMMETRIC, overrides={"view2": {"noise": False}}, seed=0)
"""

import copy

import keras

from kerasssl.errors import KerassslError
from kerasssl.layers.blur import RandomGaussianBlur
from kerasssl.layers.crop import RandomResizedCrop
from kerasssl.layers.dihedral import RandomDihedral, RandomFlip, RandomRot90
from kerasssl.layers.noise import RandomGaussianNoise
from kerasssl.layers.psf import PSFMatchBlur
from kerasssl.layers.reddening import RandomReddening
from kerasssl.layers.rotatedcrop import RandomRotatedCrop
from kerasssl.layers.rotation import RandomRotation
from kerasssl.layers.shift import RandomShift
from kerasssl.layers.skynoise import SkyNoiseMatch

# Stage name -> layer class, in the order the stages are applied.
STAGES = {
    "flip": RandomFlip,
    "rot90": RandomRot90,
    "dihedral": RandomDihedral,
    "rotation": RandomRotation,
    "shift": RandomShift,
    "crop": RandomResizedCrop,
    "reddening": RandomReddening,
    "psf": PSFMatchBlur,
    "blur": RandomGaussianBlur,
    "skynoise": SkyNoiseMatch,
    "noise": RandomGaussianNoise,
}

# Each stage's slot in a pipeline's seeds: fixed, so adding a stage never
# changes the augmentation of a seeded run that does not use it.
_SEED_SLOTS = {"flip": 0, "rot90": 1, "dihedral": 2, "rotation": 3, "crop": 4, "blur": 5, "noise": 6,
               "shift": 7, "reddening": 8, "psf": 9, "skynoise": 10}

# What `True` means for each stage: tuned for centred lens images.
STAGE_DEFAULTS = {
    "flip": {"mode": "horizontal_and_vertical"},
    "rot90": {},
    "dihedral": {},
    "rotation": {"factor": 0.04, "fill_mode": "reflect"},  # +-14.4 degrees
    "crop": {"scale": [0.7, 1.0], "ratio": [0.8, 1.25]},
    "blur": {"sigma": [0.1, 1.5], "probability": 0.5},
    "noise": {"stddev": [0.0, 1.0], "relative": True, "probability": 0.5},
    "shift": {"max_shift": 2},
    "reddening": {"ebv": [0.0, 0.1]},  # DECam g, r, i coefficients: 3-band data; else give "coefficients"
    "psf": {"psf_fwhm": 2.0, "target_fwhm": [2.0, 3.0], "probability": 0.5},  # pixels, any band count
    "skynoise": {"target_std": [1.0, 1.5], "relative": True, "probability": 0.5},
}

# Named stage sets: what the views hold. "lensing" is the default; the others
# change one thing of it, as benchmarks/ablation.py measures them: "shift"
# translates by +-2 px instead of zooming (a resized crop changes the apparent
# Einstein radius), "d4" keeps the exact symmetries only, "any-angle" rotates
# by any angle. The stages that need the survey's numbers (psf, skynoise
# targets, reddening's coefficients per band) are not in a generic set; give
# them in `pretrain.augment`.
STAGE_SETS = {
    "lensing": {stage: True for stage in ("dihedral", "rotation", "crop", "blur", "noise")},
}
STAGE_SETS["shift"] = dict(STAGE_SETS["lensing"], crop=False, shift=True)
STAGE_SETS["d4"] = dict(STAGE_SETS["lensing"], rotation=False)
STAGE_SETS["any-angle"] = dict(STAGE_SETS["lensing"], rotation={"factor": 0.5})

# THE one place that sets every method's default views: a name of STAGE_SETS.
DEFAULT_STAGES = "lensing"

# Presets of view pairs, from the default stage set. BYOL-style methods use
# asymmetric views (always blur one view, rarely the other), as in their
# papers; the rest symmetric ones.
_ALL_STAGES = STAGE_SETS[DEFAULT_STAGES]
SYMMETRIC = (_ALL_STAGES, _ALL_STAGES)
ASYMMETRIC = (
    dict(_ALL_STAGES, blur={"sigma": [0.1, 1.5], "probability": 1.0}),
    dict(_ALL_STAGES, blur={"sigma": [0.1, 1.5], "probability": 0.1}),
)
PRESETS = {"symmetric": SYMMETRIC, "asymmetric": ASYMMETRIC}

_VIEW_KEYS = ("view1", "view2")


def view_pair(views):
    """A view pair ``(cfg1, cfg2)`` from a preset name, one config for both views, or a pair.

    Example:
        >>> view_pair("symmetric") == SYMMETRIC, view_pair({"dihedral": True})[1]
        (True, {'dihedral': True})
    """
    if isinstance(views, str):
        if views not in PRESETS:
            raise KerassslError(f"unknown view preset {views!r}; known: {', '.join(PRESETS)} "
                                "(a method's own views: kerasssl.methods.get(name).default_views)")
        return PRESETS[views]
    if isinstance(views, dict):
        return (views, views)
    if isinstance(views, (tuple, list)) and len(views) == 2:
        return tuple(views)
    raise KerassslError(f"views must be a preset name, a mapping of stages or a pair of them, got {views!r}")


def view_config(views, view=1):
    """The config of one view of a pair, with every stage spelled out.

    Args:
        views: a preset name ("symmetric", "asymmetric"), a pair of stage
            dicts (e.g. a method's ``default_views``) or one dict for both.
        view: 1 or 2 (the views differ only for asymmetric pairs).

    Returns:
        A new dict ``{stage: kwargs dict or False}`` for all stages.

    Example:
        >>> view_config(ASYMMETRIC, view=2)["blur"]["probability"]
        0.1
    """
    if view not in (1, 2):
        raise KerassslError(f"view must be 1 or 2, got {view!r}")
    return _resolve(view_pair(views)[view - 1], where=f"view {view}")


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


def _layer_seed(seed, stage):
    return None if seed is None else int(seed) * 16 + _SEED_SLOTS[stage]


def _fusable(resolved):
    """Whether rotation and crop (and dihedral) can run as one resample (:class:`RandomRotatedCrop`).

    Both on and bilinear, and nothing between them (``shift`` sits there);
    a dihedral stage just before the rotation joins them.
    """
    rotation, crop = resolved["rotation"], resolved["crop"]
    return (rotation is not False and crop is not False and resolved["shift"] is False
            and rotation.get("interpolation", "bilinear") == "bilinear"
            and crop.get("interpolation", "bilinear") == "bilinear")


def build_view_pipeline(cfg, seed=None, name="view", fuse_resampling=True):
    """Build one view's augmentation pipeline from a config dict.

    Args:
        cfg: ``{stage: options}`` (see the module docstring); stages left out
            are off. ``view_config(SYMMETRIC)`` gives a complete default.
        seed: integer seed; each layer gets its own seed derived from it.
            None: unseeded.
        name: the Sequential's name.
        fuse_resampling: when a view both rotates and crops, do it (and the
            dihedral symmetry, if on) in one :class:`RandomRotatedCrop`: the
            same draws and seeds, one resample instead of two. False keeps
            one layer per stage.

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
    for stage, options in resolved.items():
        if options is not False and ("seed" in options or "name" in options):
            raise KerassslError(
                f"augment: {name}: stage {stage!r}: seeds and names are set by the "
                "pipeline (give `seed` to the run instead)"
            )
    layers = {}
    for stage, layer_class in STAGES.items():
        options = resolved[stage]
        if options is False:
            continue
        try:
            layers[stage] = layer_class(**options, seed=_layer_seed(seed, stage),
                                        name=f"{name}_{stage}")
        except (TypeError, ValueError) as error:
            raise KerassslError(f"augment: {name}: stage {stage!r}: {error}") from None
    if bool(fuse_resampling) and _fusable(resolved):
        # The same options and seeds in one layer: identical draws, one resample.
        # The dihedral symmetry (exact under resampling) joins it when on.
        fused = RandomRotatedCrop(
            dict(resolved["rotation"], seed=layers["rotation"].seed),
            dict(resolved["crop"], seed=layers["crop"].seed),
            dihedral=None if "dihedral" not in layers else {"seed": layers["dihedral"].seed},
            name=f"{name}_rotatedcrop")
        merged = [stage for stage in ("dihedral", "rotation", "crop") if stage in layers]
        layers = {("rotatedcrop" if stage == merged[0] else stage): layer
                  for stage, layer in layers.items() if stage == merged[0] or stage not in merged}
        layers["rotatedcrop"] = fused  # in the place of the first stage it merges
    layers = list(layers.values())
    if not layers:
        layers.append(keras.layers.Identity(name=f"{name}_identity"))
    return keras.Sequential(layers, name=name)


def stage_layers(pipeline):
    """``{stage: layer}`` of a built view pipeline, a fused rotation + crop as its two stages.

    Example:
        >>> stage_layers(build_view_pipeline(view_config(SYMMETRIC), seed=0))["crop"].scale
        (0.7, 1.0)
    """
    found = {}
    for layer in pipeline.layers:
        parts = getattr(layer, "stages", None)
        if parts is None:
            parts = {layer.name.rsplit("_", 1)[-1]: layer}
        found.update(parts)
    return found


def build_view_pair(views, overrides=None, seed=None, name="view"):
    """The two view pipelines of a pair of defaults, with optional overrides.

    Args:
        views: the defaults: a preset name, a pair of stage dicts (a method's
            ``default_views``) or one dict for both views.
        overrides: a dict of stages applied to both views (merged into the
            defaults option by option), plus optional ``view1`` / ``view2``
            dicts of stages for one view only (applied last). This is
            ``PretrainConfig.augment``.
        seed: integer seed; the two views get different derived seeds.
        name: prefix of the pipelines' names (``<name>_view1``, ``<name>_view2``);
            pretraining uses the method's name.

    Returns:
        ``(view1, view2)``, two ``keras.Sequential`` pipelines.

    Raises:
        KerassslError: unknown preset or stage, or options a layer refuses.

    Example:
        >>> v1, v2 = build_view_pair(SYMMETRIC, {"rotation": {"factor": 0.5}}, seed=0, name="simclr")
        >>> a, b = v1(images, training=True), v2(images, training=True)
    """
    defaults = view_pair(views)
    overrides = copy.deepcopy(overrides) if overrides else {}
    if not isinstance(overrides, dict):
        raise KerassslError(f"augment: expected a mapping, got {overrides!r}")
    per_view = {key: overrides.pop(key, None) or {} for key in _VIEW_KEYS}
    pipelines = []
    for number, key in enumerate(_VIEW_KEYS, start=1):
        cfg = _resolve(defaults[number - 1], where=f"{name} {key} defaults")
        cfg = _resolve(overrides, base=cfg, where="augment")
        cfg = _resolve(per_view[key], base=cfg, where=f"augment.{key}")
        view_seed = None if seed is None else 2 * int(seed) + number - 1
        pipelines.append(build_view_pipeline(cfg, seed=view_seed, name=f"{name}_{key}"))
    return tuple(pipelines)

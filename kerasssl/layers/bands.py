"""Per-band arguments of the physical layers: one value or range for all bands, or one per band."""

from kerasssl.layers.base import value_range


def per_band_values(value, name, minimum=None, strict=False):
    """A number -> float; a list of numbers -> list of floats (one per band).

    Args:
        value: a number or a non-empty list / tuple of numbers.
        name: argument name for the error message.
        minimum: values below this (or equal, when ``strict``) are refused.

    Example:
        >>> per_band_values([3.214, 2.165, 1.592], "coefficients")
        [3.214, 2.165, 1.592]
    """
    scalar = not isinstance(value, (list, tuple))
    items = [value] if scalar else list(value)
    if not items:
        raise ValueError(f"{name} must be a number or a list of numbers, got {value!r}")
    out = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"{name} must be numbers, got {value!r}")
        try:
            item = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or a list of numbers, got {value!r}") \
                from None
        if minimum is not None and (item < minimum or (strict and item == minimum)):
            relation = ">" if strict else ">="
            raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}")
        out.append(item)
    return out[0] if scalar else out


def per_band_ranges(value, name, minimum=None):
    """A number or a ``(low, high)`` pair -> ``[low, high]`` for all bands;
    a list of pairs -> one ``[low, high]`` per band.

    Example:
        >>> per_band_ranges([[1.0, 1.5], [0.9, 1.4]], "target_fwhm")
        [[1.0, 1.5], [0.9, 1.4]]
    """
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (list, tuple)) for v in value):
        return [list(value_range(v, name, minimum=minimum)) for v in value]
    return list(value_range(value, name, minimum=minimum))


def require_bands(layer, values, channels, name, ranges=False):
    """Raise a clear ValueError when a per-band argument does not match the image's bands.

    Args:
        layer: the layer (its class names the error).
        values: what :func:`per_band_values` returned (a list means one per
            band) or, with ``ranges``, what :func:`per_band_ranges` returned
            (a list of lists means one range per band).
        channels: the images' band count.
        name: argument name for the error message.
        ranges: ``values`` holds ranges.
    """
    per_band = isinstance(values, list) and (not ranges or isinstance(values[0], list))
    if per_band and len(values) != channels:
        raise ValueError(
            f"{layer.__class__.__name__}: {name} has {len(values)} value(s), one per band, "
            f"but the images have {channels} band(s)"
        )


def band_values(values, channels, ranges=False):
    """``values`` broadcast to one entry per band: a list of ``channels`` floats or pairs."""
    per_band = isinstance(values, list) and (not ranges or isinstance(values[0], list))
    return list(values) if per_band else [values] * channels

"""Drawing one image's parameters: one :class:`Scene` per image.

The distributions are the population constants of :mod:`kerasssl.simulate.survey`.
A scene is pure parameters (no pixels): the deflector galaxy, for lenses its
SIE + shear mass and a clumpy lensed source, companions, and for non-lenses a
confuser. :mod:`kerasssl.simulate.render` turns it into pixels.

Rules that keep the task honest:

- The deflector galaxy (magnitude, size, Sersic index, shape, colour, centre)
  is drawn by the same code from the same distributions for both classes, and
  first, so its parameters carry no class information. Seeing is drawn the same
  way for both classes too.
- The Einstein radius follows the deflector's luminosity (Faber-Jackson-like,
  theta_E ~ L^0.5, with a 0.4 ln-normal scatter), so bright deflectors tend to make
  larger rings; non-lenses draw a "pseudo Einstein radius" the same way, which
  sets the scale of their ring / spiral / blend confusers.
- Companions (satellites, line-of-sight galaxies) appear at the same rate in
  both classes. 60 % of non-lenses carry a confuser with source-like (blue)
  colours and arc-like brightness: a partial clumpy ring, spiral arms, or an
  elongated blended galaxy placed tangentially where an arc would be.
- Sources are drawn inside ~0.9 theta_E (multiply imaged), with unlensed
  magnitudes uniform in the survey's range, so many arcs are faint.

Magnitudes are drawn in the survey's reference band (its last band: i-like /
F814W); other bands follow from colours (g-r, r-i).

Example:
    >>> import numpy as np
    >>> from kerasssl.simulate.survey import SURVEYS
    >>> scene = draw_scene(np.random.default_rng(0), 1, SURVEYS["hst"])
    >>> scene.label, [c.name for c in scene.components][:2]
    (1, ['deflector', 'source'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kerasssl.simulate.survey import (
    CLUMP_COLOUR, COMPANION_RATE, CONFUSER_MAGNIFICATION, CONFUSER_P, CONFUSERS,
    DEFLECTOR_COLOUR, DEFLECTOR_MAG, DEFLECTOR_N, DEFLECTOR_Q, DEFLECTOR_REFF_MEDIAN,
    MAX_CLUMPS, SHEAR_SD, SOURCE_COLOUR, SOURCE_REFF_MEDIAN, THETA_E_AT_19_5,
    THETA_E_RANGE, THETA_E_SCATTER)


@dataclass
class Component:
    """One light component of a scene (total flux given per band).

    Args:
        name: "deflector", "source", "clumps", "companion", "ring", "spiral", "blend".
        profile: "SERSIC_ELLIPSE" or "GAUSSIAN" (lenstronomy light models), or
            "RING" / "SPIRAL" (NumPy profiles of the renderer).
        kwargs: one parameter dict per sub-profile (lenstronomy names, no "amp").
        weights: fraction of the component's flux in each sub-profile (sum 1).
        mags: AB magnitude of the whole component in each survey band.
        lensed: evaluated in the source plane (through the lens) if True.
    """

    name: str
    profile: str
    kwargs: list
    weights: list
    mags: np.ndarray
    lensed: bool = False


@dataclass
class Scene:
    """Everything needed to render one image, plus its metadata.

    Args:
        label: 1 for a lens, 0 for a non-lens.
        lens_kwargs: lenstronomy kwargs for ["SIE", "SHEAR"], or None.
        components: list of :class:`Component`.
        psf_fwhm: seeing FWHM (arcsec) per band.
        meta: flat dict of drawn parameters written to metadata.csv.
    """

    label: int
    lens_kwargs: list | None
    components: list
    psf_fwhm: np.ndarray
    meta: dict = field(default_factory=dict)


def _clip(value, low, high):
    """Scalar clip (much cheaper than numpy's on Python floats)."""
    return float(min(max(value, low), high))


def _pick(rng, options, p):
    """One of ``options`` with probabilities ``p`` (cheaper than rng.choice(p=))."""
    u = rng.random()
    acc = 0.0
    for option, prob in zip(options, p):
        acc += prob
        if u < acc:
            return option
    return options[-1]


def _ellipticity(phi, q):
    """lenstronomy (e1, e2) from position angle phi (rad) and axis ratio q."""
    e = (1.0 - q) / (1.0 + q)
    return e * math.cos(2.0 * phi), e * math.sin(2.0 * phi)


def _colour_mags(rng, survey, mag_ref, colour):
    """Per-band magnitudes from a reference magnitude and (g-r, r-i) colour draws."""
    (gr_mean, gr_sd), (ri_mean, ri_sd) = colour
    gr = rng.normal(gr_mean, gr_sd)
    ri = rng.normal(ri_mean, ri_sd)
    offsets = {"g": gr + ri, "r": ri, "i": 0.0}
    return np.array([mag_ref + offsets.get(b.name, 0.0) for b in survey.bands])


def _theta_e(rng, deflector_mag):
    """Einstein radius from luminosity (theta_E ~ L^0.5) with ln-normal scatter."""
    theta = THETA_E_AT_19_5 * 10.0 ** (-0.2 * (deflector_mag - 19.5))
    theta *= math.exp(rng.normal(0.0, THETA_E_SCATTER))
    return _clip(theta, *THETA_E_RANGE)


def _sersic(rng, center, r_eff, n_range, q_range, phi=None):
    """lenstronomy SERSIC_ELLIPSE kwargs (no amp) with a random shape."""
    q = rng.uniform(*q_range)
    phi = rng.uniform(0.0, math.pi) if phi is None else phi
    e1, e2 = _ellipticity(phi, q)
    return {"R_sersic": float(r_eff), "n_sersic": float(rng.uniform(*n_range)),
            "e1": e1, "e2": e2, "center_x": float(center[0]), "center_y": float(center[1])}


def _draw_deflector(rng, survey):
    """The central galaxy: identical population for lenses and non-lenses."""
    mag = rng.uniform(*DEFLECTOR_MAG)
    r_eff = DEFLECTOR_REFF_MEDIAN * 10.0 ** (-0.15 * (mag - 19.5)) * math.exp(rng.normal(0, 0.25))
    r_eff = _clip(r_eff, 0.2, 2.5)
    center = rng.normal(0.0, 0.03, size=2)
    q = rng.uniform(*DEFLECTOR_Q)
    phi = rng.uniform(0.0, math.pi)
    kwargs = _sersic(rng, center, r_eff, DEFLECTOR_N, (q, q), phi=phi)
    mags = _colour_mags(rng, survey, mag, DEFLECTOR_COLOUR)
    comp = Component("deflector", "SERSIC_ELLIPSE", [kwargs], [1.0], mags)
    meta = {"deflector_r_eff": r_eff, "deflector_n": kwargs["n_sersic"], "deflector_q": q}
    meta.update({f"deflector_mag_{b.name}": m for b, m in zip(survey.bands, mags)})
    return comp, (center, q, phi, mag), meta


def _draw_lens_and_source(rng, survey, deflector):
    """SIE + shear aligned with the light, and a clumpy Sersic source behind it."""
    center, q_light, phi_light, mag = deflector
    theta_e = _theta_e(rng, mag)
    q_mass = _clip(q_light + rng.normal(0.0, 0.08), 0.45, 1.0)
    e1, e2 = _ellipticity(phi_light + rng.normal(0.0, 0.15), q_mass)
    gamma = float(min(abs(rng.normal(0.0, SHEAR_SD)), 0.15))
    shear_phi = rng.uniform(0.0, math.pi)
    lens_kwargs = [
        {"theta_E": theta_e, "e1": e1, "e2": e2,
         "center_x": float(center[0]), "center_y": float(center[1])},
        {"gamma1": gamma * math.cos(2 * shear_phi), "gamma2": gamma * math.sin(2 * shear_phi),
         "ra_0": float(center[0]), "dec_0": float(center[1])},
    ]
    # Source inside ~the Einstein radius: multiply imaged arcs, rings, doubles.
    radius = theta_e * 0.9 * math.sqrt(rng.uniform())
    angle = rng.uniform(0.0, 2 * math.pi)
    src_center = center + radius * np.array([math.cos(angle), math.sin(angle)])
    src_mag = rng.uniform(*survey.source_mag)  # unlensed; many faint
    r_eff = _clip(SOURCE_REFF_MEDIAN * math.exp(rng.normal(0.0, 0.4)), 0.05, 0.6)
    disk = _sersic(rng, src_center, r_eff, (0.6, 1.5), (0.4, 1.0))
    n_clumps = int(rng.integers(0, MAX_CLUMPS + 1))
    clump_fraction = float(rng.uniform(0.1, 0.5)) if n_clumps else 0.0
    total = 10.0 ** (-0.4 * src_mag)
    disk_mags = _colour_mags(rng, survey, src_mag - 2.5 * math.log10(1 - clump_fraction),
                             SOURCE_COLOUR)
    components = [Component("source", "SERSIC_ELLIPSE", [disk], [1.0], disk_mags, lensed=True)]
    if n_clumps:
        clumps = [{"sigma": float(rng.uniform(0.02, 0.06)),
                   "center_x": float(src_center[0] + rng.normal(0.0, 0.7 * r_eff)),
                   "center_y": float(src_center[1] + rng.normal(0.0, 0.7 * r_eff))}
                  for _ in range(n_clumps)]
        weights = rng.dirichlet(np.ones(n_clumps)).tolist()
        clump_mag = -2.5 * math.log10(clump_fraction * total)
        components.append(Component("clumps", "GAUSSIAN", clumps, weights,
                                    _colour_mags(rng, survey, clump_mag, CLUMP_COLOUR),
                                    lensed=True))
    meta = {"einstein_radius": theta_e, "lens_q": q_mass, "shear": gamma,
            "source_x": float(src_center[0]), "source_y": float(src_center[1]),
            "source_r_eff": r_eff, "n_clumps": n_clumps, "clump_fraction": clump_fraction}
    # Total (disk + clumps) unlensed source magnitude per band.
    flux = sum(10.0 ** (-0.4 * c.mags) for c in components)
    meta.update({f"source_mag_{b.name}": m for b, m in zip(survey.bands, -2.5 * np.log10(flux))})
    return lens_kwargs, components, meta


def _draw_companions(rng, survey, deflector):
    """0-2 satellite / line-of-sight galaxies, same rate for both classes."""
    center, _, _, mag = deflector
    n = _pick(rng, range(len(COMPANION_RATE)), COMPANION_RATE)
    components = []
    for _ in range(n):
        dist = rng.uniform(1.2, 0.45 * survey.fov)
        angle = rng.uniform(0.0, 2 * math.pi)
        pos = center + dist * np.array([math.cos(angle), math.sin(angle)])
        r_eff = _clip(0.4 * math.exp(rng.normal(0.0, 0.3)), 0.1, 1.2)
        kwargs = _sersic(rng, pos, r_eff, (1.0, 4.0), (0.4, 1.0))
        colour = DEFLECTOR_COLOUR if rng.uniform() < 0.6 else SOURCE_COLOUR
        mags = _colour_mags(rng, survey, mag + rng.uniform(0.5, 3.0), colour)
        components.append(Component("companion", "SERSIC_ELLIPSE", [kwargs], [1.0], mags))
    return components


def _draw_confuser(rng, survey, deflector):
    """A non-lens look-alike: partial ring, spiral arms or a tangential blend."""
    kind = _pick(rng, CONFUSERS, CONFUSER_P)
    if kind == "none":
        return kind, None, {}
    center, _, _, mag = deflector
    scale = _theta_e(rng, mag)  # pseudo Einstein radius: same scale as lens arcs
    median, sd, low, high = CONFUSER_MAGNIFICATION
    magnification = _clip(median * math.exp(rng.normal(0.0, sd)), low, high)
    mag_ref = rng.uniform(*survey.source_mag) - 2.5 * math.log10(magnification)
    mags = _colour_mags(rng, survey, mag_ref, SOURCE_COLOUR)
    q = rng.uniform(0.6, 1.0)
    phi = rng.uniform(0.0, math.pi)
    e1, e2 = _ellipticity(phi, q)
    if kind == "ring":
        kwargs = {"radius": scale * rng.uniform(0.9, 1.2), "width": rng.uniform(0.04, 0.15),
                  "e1": e1, "e2": e2, "center_x": float(center[0] + rng.normal(0, 0.05)),
                  "center_y": float(center[1] + rng.normal(0, 0.05)),
                  "arc_extent": rng.uniform(0.5 * math.pi, 2 * math.pi),
                  "arc_angle": rng.uniform(0.0, 2 * math.pi),
                  "knots": int(rng.integers(2, 8)), "knot_contrast": rng.uniform(0.0, 0.8),
                  "knot_phase": rng.uniform(0.0, 2 * math.pi)}
        comp = Component("ring", "RING", [kwargs], [1.0], mags)
    elif kind == "spiral":
        kwargs = {"scale": scale * rng.uniform(0.6, 1.2), "arms": 2,
                  "pitch": math.radians(rng.uniform(12.0, 30.0)),
                  "sharpness": rng.uniform(2.0, 6.0),
                  "phase": rng.uniform(0.0, 2 * math.pi), "e1": e1, "e2": e2,
                  "center_x": float(center[0]), "center_y": float(center[1])}
        comp = Component("spiral", "SPIRAL", [kwargs], [1.0], mags)
    else:  # blend: an elongated blue galaxy where an arc would be, tangential
        angle = rng.uniform(0.0, 2 * math.pi)
        pos = center + scale * rng.uniform(0.7, 1.3) * np.array([math.cos(angle), math.sin(angle)])
        kwargs = _sersic(rng, pos, rng.uniform(0.15, 0.5), (0.5, 1.5), (0.25, 0.6),
                         phi=angle + math.pi / 2 + rng.normal(0.0, 0.3))
        comp = Component("blend", "SERSIC_ELLIPSE", [kwargs], [1.0], mags)
    meta = {"confuser_scale": scale}
    meta.update({f"confuser_mag_{b.name}": m for b, m in zip(survey.bands, mags)})
    return kind, comp, meta


def draw_scene(rng, label, survey):
    """Draw one image's parameters.

    Args:
        rng: ``numpy.random.Generator`` (seeded per image by the caller).
        label: 1 for a lens, 0 for a non-lens.
        survey: a :class:`kerasssl.simulate.survey.Survey`.

    Returns:
        A :class:`Scene`.

    Example:
        >>> from kerasssl.simulate.survey import SURVEYS
        >>> draw_scene(np.random.default_rng(1), 0, SURVEYS["hst"]).lens_kwargs is None
        True
    """
    # Class-independent draws first: deflector, seeing, companions.
    deflector, deflector_params, meta = _draw_deflector(rng, survey)
    psf_fwhm = np.array([rng.uniform(*b.psf_fwhm_range) for b in survey.bands])
    companions = _draw_companions(rng, survey, deflector_params)
    components = [deflector]
    lens_kwargs = None
    confuser = "none"
    if label == 1:
        lens_kwargs, lensed, lens_meta = _draw_lens_and_source(rng, survey, deflector_params)
        components += lensed
        meta.update(lens_meta)
    else:
        confuser, comp, confuser_meta = _draw_confuser(rng, survey, deflector_params)
        if comp is not None:
            components.append(comp)
        meta.update(confuser_meta)
    components += companions
    meta.update({f"psf_fwhm_{b.name}": f for b, f in zip(survey.bands, psf_fwhm)})
    meta.update({"n_companions": len(companions), "confuser": confuser})
    return Scene(label, lens_kwargs, components, psf_fwhm, meta)

"""Pixels from a :class:`~kerasssl.simulate.scene.Scene` with lenstronomy.

One :class:`Renderer` per worker and image size holds one lenstronomy
``SimAPI`` per band (built once, reused for every image: it owns the
magnitude -> e-/s conversion and the band's noise model) and its SIE + SHEAR
``LensModel`` (ray shooting). Light profiles are lenstronomy's SERSIC_ELLIPSE
and GAUSSIAN written out in NumPy (4x faster than the ``LightModel`` calls;
parity-tested to 1e-10, and a whole noiseless image against lenstronomy's
``ImageModel``), with lenstronomy's analytic total-flux normalisation (also parity-tested).

Per image:

1. every component is evaluated once with unit total flux on a (super-sampled)
   pixel grid, lensed components at the ray-shot source-plane positions;
2. each band is a sum of those unit images scaled by the component's flux in
   that band (colours), so three bands cost little more than one;
3. Gaussian PSF per band (a kernel sampled at pixel offsets, truncated at
   5 sigma, as lenstronomy's GAUSSIAN PSF), applied as two small matrix
   products (separable; zero outside the cutout), then sky + Poisson noise in
   lenstronomy's Gaussian approximation (``SingleBand.background_noise`` /
   ``flux_noise``), drawn from the caller's generator so results depend on the
   seed only.

Units: e-/s per pixel, sky-subtracted (negative pixels occur, as in real data).
:func:`sprinkle_nans` adds the bad pixels of real cutouts (NaN).

Example:
    >>> import numpy as np
    >>> from kerasssl.simulate.survey import SURVEYS
    >>> from kerasssl.simulate.scene import draw_scene
    >>> renderer = Renderer(SURVEYS["hst"], 64)
    >>> scene = draw_scene(np.random.default_rng(0), 1, SURVEYS["hst"])
    >>> image, info = renderer.render(scene, np.random.default_rng(1))
    >>> image.shape, image.dtype, info["magnification"] > 1
    ((1, 64, 64), dtype('float32'), True)
"""

from __future__ import annotations

import math

import numpy as np

from kerasssl.errors import KerassslError

NAN_PIXEL_FRACTION = (0.001, 0.002)   # of the pixels of an affected file, as in the HST set
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
PSF_TRUNCATION = 5.0  # kernel radius in sigmas (lenstronomy's default)
SERSIC_CUT = 8.0     # evaluate lensed Sersics within this many R_eff (negligible beyond)
GAUSSIAN_CUT = 5.0   # and Gaussians within this many sigma
SERSIC_SMOOTHING = 1e-4  # lenstronomy's radius floor
CORE_PIXELS = 3          # side of the block around a Sersic centre integrated finely
CORE_SUBSAMPLING = 8     # samples per pixel side there
ARC_SUBSAMPLING = 2      # rays per pixel side where there is lensed light
ARC_REFINE_LEVEL = 0.03  # ... where a pixel steps by this fraction of the arc's peak


def import_lenstronomy():
    """lenstronomy's SimAPI and util, or one line saying how to install it."""
    try:
        from lenstronomy.SimulationAPI.sim_api import SimAPI
        from lenstronomy.Util import util
    except ImportError as e:  # the `sim` extra is optional
        raise KerassslError(
            f"the simulator needs lenstronomy ({e}); install it with: pip install 'kerasssl[sim]'"
        ) from None
    return SimAPI, util


def _elliptical_coords(x, y, kwargs):
    """Coordinates in an ellipse's frame, lenstronomy's product-average convention.

    Same transform as ``lenstronomy.Util.param_util.transform_e1e2_product_average``:
    R = hypot(x', y') is the circularised radius sqrt(a b).
    """
    e1, e2 = kwargs["e1"], kwargs["e2"]
    dx = x - kwargs["center_x"]
    dy = y - kwargs["center_y"]
    norm = math.sqrt(max(abs(1.0 - e1 * e1 - e2 * e2), 1e-6))
    xp = ((1.0 - e1) * dx - e2 * dy) / norm
    yp = (-e2 * dx + (1.0 + e1) * dy) / norm
    return xp, yp


def sersic_ellipse(x, y, kwargs):
    """lenstronomy's SERSIC_ELLIPSE surface brightness, in plain NumPy (~4x faster).

    Same b_n approximation, radius floor and ellipse convention as
    ``lenstronomy.LightModel.Profiles.sersic.SersicElliptic`` (parity-tested).

    Args:
        x, y: coordinates (arcsec).
        kwargs: amp (brightness at R_sersic), R_sersic, n_sersic, e1, e2, center_x, center_y.
    """
    xp, yp = _elliptical_coords(x, y, kwargs)
    n = kwargs["n_sersic"]
    bn = max(1.9992 * n - 0.3271, 1e-5)
    r = np.maximum(np.sqrt(xp * xp + yp * yp), SERSIC_SMOOTHING)
    r_frac = r / max(kwargs["R_sersic"], SERSIC_SMOOTHING)
    return kwargs["amp"] * np.exp(-bn * (r_frac ** (1.0 / n) - 1.0))


def sersic_total_flux(kwargs):
    """Total flux of :func:`sersic_ellipse` with amp=1: lenstronomy's analytic
    ``SersicUtil._total_flux`` (round profile of radius R_sersic, as lenstronomy's
    product-average convention makes the ellipse area-preserving)."""
    n = kwargs["n_sersic"]
    bn = max(1.9992 * n - 0.3271, 1e-5)
    return (kwargs["R_sersic"] ** 2 * 2.0 * math.pi * n * math.exp(bn) / bn ** (2.0 * n)
            * math.gamma(2.0 * n))


def gaussian(x, y, kwargs):
    """lenstronomy's GAUSSIAN light profile (``amp`` is the total flux)."""
    sigma2 = kwargs["sigma"] ** 2
    r2 = (x - kwargs["center_x"]) ** 2 + (y - kwargs["center_y"]) ** 2
    return kwargs["amp"] / (2.0 * math.pi * sigma2) * np.exp(-0.5 * r2 / sigma2)


def ring_profile(x, y, kwargs):
    """A (partial, knotty) Gaussian ring: ring galaxies and star-forming rings.

    Args:
        x, y: coordinates (arcsec).
        kwargs: radius, width (Gaussian sd), e1, e2, center_x, center_y,
            arc_extent (radians covered, soft edges), arc_angle (its middle),
            knots, knot_contrast, knot_phase (azimuthal modulation 1 + c cos).

    Returns:
        Surface brightness (arbitrary normalisation).
    """
    xp, yp = _elliptical_coords(x, y, kwargs)
    r, theta = np.hypot(xp, yp), np.arctan2(yp, xp)
    radial = np.exp(-0.5 * ((r - kwargs["radius"]) / kwargs["width"]) ** 2)
    # Angular window: 1 within extent/2 of arc_angle, Gaussian fall-off outside.
    delta = np.abs(np.angle(np.exp(1j * (theta - kwargs["arc_angle"]))))
    half = 0.5 * kwargs["arc_extent"]
    window = np.exp(-0.5 * (np.maximum(delta - half, 0.0) / 0.3) ** 2)
    knots = 1.0 + kwargs["knot_contrast"] * np.cos(kwargs["knots"] * theta + kwargs["knot_phase"])
    return radial * window * knots


def spiral_profile(x, y, kwargs):
    """Logarithmic spiral arms on an exponential disk, hollow in the bulge.

    Args:
        x, y: coordinates (arcsec).
        kwargs: scale (disk scale length), arms, pitch (radians), sharpness
            (power of the arm modulation), phase, e1, e2, center_x, center_y.

    Returns:
        Surface brightness (arbitrary normalisation).
    """
    xp, yp = _elliptical_coords(x, y, kwargs)
    r, theta = np.hypot(xp, yp), np.arctan2(yp, xp)
    h = kwargs["scale"]
    r_safe = np.maximum(r, 1e-3 * h)
    arm_phase = kwargs["arms"] * (theta - np.log(r_safe / h) / math.tan(kwargs["pitch"]))
    arms = (0.5 * (1.0 + np.cos(arm_phase + kwargs["phase"]))) ** kwargs["sharpness"]
    inner = 1.0 - np.exp(-((r / (0.4 * h)) ** 2))  # the bulge is the deflector itself
    return np.exp(-r / h) * arms * inner


PROFILES = {"SERSIC_ELLIPSE": sersic_ellipse, "GAUSSIAN": gaussian,
            "RING": ring_profile, "SPIRAL": spiral_profile}
# Profiles without an analytic total flux: normalised on the cutout.
CUTOUT_NORMALISED = ("RING", "SPIRAL")


def gaussian_blur_matrix(size, sigma):
    """Matrix G with ``G @ image @ G.T`` = Gaussian blur (sd ``sigma`` pixels).

    The kernel is sampled at integer offsets, truncated at PSF_TRUNCATION sigma
    (at least one pixel) and normalised to 1; light leaving the cutout is lost
    (zero padding), as for an observed cutout.
    """
    radius = max(1, int(PSF_TRUNCATION * sigma + 0.5))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    d = np.arange(size)[:, None] - np.arange(size)[None, :]
    matrix = np.zeros((size, size))
    near = np.abs(d) <= radius
    matrix[near] = kernel[d[near] + radius]
    return matrix


class Renderer:
    """Renders scenes of one survey at one image size (reuse it: setup is slow).

    Args:
        survey: a :class:`kerasssl.simulate.survey.Survey`.
        size: image side in pixels.

    Example:
        >>> renderer = Renderer(SURVEYS["three-band"], 32)
        >>> scene = draw_scene(np.random.default_rng(0), 0, renderer.survey)
        >>> image, _ = renderer.render(scene, np.random.default_rng(1))
        >>> image.shape
        (3, 32, 32)
    """

    def __init__(self, survey, size):
        SimAPI, util = import_lenstronomy()
        self.survey = survey
        self.size = size
        self.pixel_scale = survey.pixel_scale(size)
        self.supersampling = survey.supersampling(size)
        kwargs_model = {
            "lens_model_list": ["SIE", "SHEAR"],
            "lens_light_model_list": ["SERSIC_ELLIPSE"],
            "source_light_model_list": ["SERSIC_ELLIPSE"],
        }
        self.sims = [SimAPI(size, band.kwargs_single_band(self.pixel_scale), kwargs_model)
                     for band in survey.bands]
        self.lens_model = self.sims[0].lens_model_class
        n = size * self.supersampling
        self.x, self.y = util.make_grid(size, self.pixel_scale, subgrid_res=self.supersampling)
        self.sub_shape = (n, n)
        # Flux of a sub-pixel = surface brightness x its area.
        self.sample_spacing = self.pixel_scale / self.supersampling
        self.sub_area = self.sample_spacing ** 2
        # Pixel centres along an axis (lenstronomy's grid: 0 at the image centre),
        # and sub-pixel offsets for the fine integration of Sersic cores.
        self.pixel_centres = (np.arange(size) - (size - 1) / 2.0) * self.pixel_scale
        self.core_offsets = ((np.arange(CORE_SUBSAMPLING) + 0.5) / CORE_SUBSAMPLING - 0.5) \
            * self.pixel_scale
        arc = ((np.arange(ARC_SUBSAMPLING) + 0.5) / ARC_SUBSAMPLING - 0.5) * self.pixel_scale
        self.arc_offsets = [a.ravel() for a in np.meshgrid(arc, arc)]  # x, y per sub-ray
        self.background_noise = np.array([sim.background_noise for sim in self.sims])
        # Poisson variance per unit flux (e-/s) of each band, from lenstronomy's model.
        self.poisson_variance = np.array([sim.flux_noise(np.ones(1))[0] ** 2 for sim in self.sims])

    def _bin(self, sub_image):
        """Sum sub-pixels into pixels."""
        s = self.supersampling
        image = sub_image.reshape(self.sub_shape)
        if s == 1:
            return image
        return image.reshape(self.size, s, self.size, s).sum(axis=(1, 3))

    def _unit_flux_norm(self, profile, kwargs):
        """1 / total flux of a profile with amp=1."""
        if profile == "GAUSSIAN":
            return 1.0
        return 1.0 / sersic_total_flux(kwargs)

    def unit_image(self, component, beta=None):
        """The component's pixel image for a total (unlensed) flux of 1 e-/s, before PSF.

        Lensed components are evaluated at the source-plane positions ``beta``;
        their image sums to the magnification (the flux that lands in the cutout).
        Ring and spiral profiles are normalised on the cutout itself. Structure
        finer than the sampling (tiny clumps, very compact sources) is widened
        to the sample spacing so that its flux is integrated correctly; it is
        far below the PSF anyway.
        """
        x, y = (self.x, self.y) if beta is None else beta
        function = PROFILES[component.profile]
        if component.profile in CUTOUT_NORMALISED:
            sub = np.zeros(x.shape)
            for kwargs, weight in zip(component.kwargs, component.weights):
                sb = function(x, y, kwargs)
                sub += weight * sb / max(sb.sum(), 1e-300)
            return self._bin(sub)
        if beta is not None or component.profile == "GAUSSIAN":
            return self._bin(self._compact_sb(component, x, y) * self.sub_area)
        image = np.zeros((self.size, self.size))
        for kwargs, weight in zip(component.kwargs, component.weights):
            full = {**kwargs, "amp": weight * self._unit_flux_norm(component.profile, kwargs)}
            image += self._bin(function(x, y, full) * self.sub_area)
            self._refine_core(image, function, full)
        return image

    def _compact_sb(self, component, x, y):
        """Surface brightness (unit total flux) of a compact profile at points x, y.

        Evaluated only where non-negligible; sizes floored at the sample spacing.
        """
        function = PROFILES[component.profile]
        sb = np.zeros(x.shape)
        for kwargs, weight in zip(component.kwargs, component.weights):
            full = dict(kwargs)
            if component.profile == "GAUSSIAN":
                full["sigma"] = max(full["sigma"], 0.6 * self.sample_spacing)
                cut = GAUSSIAN_CUT * full["sigma"]
            else:
                full["R_sersic"] = max(full["R_sersic"], self.sample_spacing)
                e = math.hypot(kwargs["e1"], kwargs["e2"])
                cut = SERSIC_CUT * full["R_sersic"] / math.sqrt(max((1 - e) / (1 + e), 0.05))
            # Normalise after widening: the flux is conserved.
            full["amp"] = weight * self._unit_flux_norm(component.profile, full)
            near = np.flatnonzero((x - kwargs["center_x"]) ** 2 + (y - kwargs["center_y"]) ** 2
                                  < cut * cut)
            if near.size:
                sb[near] += function(x[near], y[near], full)
        return sb

    def _refine_arcs(self, units, lens_kwargs):
        """Re-integrate the pixels where lensed light is steep on a finer grid (in place).

        Arcs are thin and steep across: one ray per pixel is ~10 % off at their
        edges. Pixels that differ from a neighbour by more than ARC_REFINE_LEVEL
        of the peak get ARC_SUBSAMPLING^2 rays each (smooth parts keep one).
        """
        total = sum(unit for _, unit in units)
        steps = np.zeros_like(total)
        dy = np.abs(np.diff(total, axis=0))
        dx = np.abs(np.diff(total, axis=1))
        steps[1:] = dy
        steps[:-1] = np.maximum(steps[:-1], dy)
        steps[:, 1:] = np.maximum(steps[:, 1:], dx)
        steps[:, :-1] = np.maximum(steps[:, :-1], dx)
        mask = steps > ARC_REFINE_LEVEL * total.max()
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            return  # no lensed light in the cutout
        xf = (self.pixel_centres[cols][:, None] + self.arc_offsets[0][None, :]).ravel()
        yf = (self.pixel_centres[rows][:, None] + self.arc_offsets[1][None, :]).ravel()
        bx, by = self.lens_model.ray_shooting(xf, yf, lens_kwargs)
        for component, unit in units:
            fine = self._compact_sb(component, bx, by).reshape(len(rows), -1).mean(axis=1)
            unit[rows, cols] = fine * self.pixel_scale ** 2

    def _refine_core(self, image, function, kwargs):
        """Re-integrate the pixels around a Sersic centre on a fine grid (in place).

        The cusp of an n~4 profile changes within a pixel: one sample per pixel
        misses ~1 % of a deflector's flux, all of it in the central pixels.
        """
        c = CORE_PIXELS // 2
        col = int(round(kwargs["center_x"] / self.pixel_scale + (self.size - 1) / 2))
        row = int(round(kwargs["center_y"] / self.pixel_scale + (self.size - 1) / 2))
        rows = slice(max(row - c, 0), min(row + c + 1, self.size))
        cols = slice(max(col - c, 0), min(col + c + 1, self.size))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return  # centre outside the cutout
        yc = self.pixel_centres[rows][:, None, None, None] + self.core_offsets[None, None, :, None]
        xc = self.pixel_centres[cols][None, :, None, None] + self.core_offsets[None, None, None, :]
        xc, yc = np.broadcast_arrays(xc, yc)
        fine = function(xc, yc, kwargs).mean(axis=(2, 3))
        image[rows, cols] = fine * self.pixel_scale ** 2

    def fluxes(self, component):
        """e-/s of the component in each band (from its magnitudes, via SimAPI)."""
        return np.array([sim.magnitude2cps(m) for sim, m in zip(self.sims, component.mags)])

    def render(self, scene, noise_rng=None, *, drop=(), noise=True):
        """Render a scene.

        Args:
            scene: a :class:`~kerasssl.simulate.scene.Scene`.
            noise_rng: ``numpy.random.Generator`` for the noise (per image);
                needed when ``noise`` is True.
            drop: component names to leave out (e.g. ``("source", "clumps")``
                gives the deflector-only counterpart of a lens).
            noise: add sky + Poisson noise.

        Returns:
            (image float32 (bands, H, W), info) where info holds
            ``magnification`` (lensed flux in the cutout / unlensed flux, of the
            source disk), ``arc_flux`` (e-/s of lensed light per band) and
            ``arc_snr`` (matched-filter S/N of the lensed light, per band).
        """
        if noise and noise_rng is None:
            raise ValueError("render(noise=True) needs a noise_rng")
        n_bands = len(self.sims)
        shape = (n_bands, self.size, self.size)
        unlensed = np.zeros(shape)
        lensed = np.zeros(shape)
        info = {"magnification": math.nan, "arc_flux": np.zeros(n_bands),
                "arc_snr": np.zeros(n_bands)}
        beta = None
        if scene.lens_kwargs is not None:
            beta = self.lens_model.ray_shooting(self.x, self.y, scene.lens_kwargs)
        lensed_units = []
        for component in scene.components:
            if component.name in drop:
                continue
            if component.lensed and beta is not None:
                lensed_units.append((component, self.unit_image(component, beta)))
            else:
                unlensed += self.fluxes(component)[:, None, None] * self.unit_image(component)[None]
        if lensed_units and self.supersampling < ARC_SUBSAMPLING:
            self._refine_arcs(lensed_units, scene.lens_kwargs)
        for component, unit in lensed_units:
            if component.name == "source":
                info["magnification"] = float(unit.sum())
            lensed += self.fluxes(component)[:, None, None] * unit[None]
        has_arc = beta is not None and lensed.any()
        # Blur unlensed and lensed light in one batched product (bands x 2 stacks).
        blur = np.stack([gaussian_blur_matrix(self.size, fwhm * FWHM_TO_SIGMA / self.pixel_scale)
                         for fwhm in scene.psf_fwhm])[:, None]
        stacks = np.stack([unlensed, lensed], axis=1) if has_arc else unlensed[:, None]
        stacks = blur @ stacks @ np.swapaxes(blur, -1, -2)
        lensed = stacks[:, 1] if has_arc else None
        model = stacks.sum(axis=1)
        variance = (self.background_noise ** 2)[:, None, None] + (
            self.poisson_variance[:, None, None] * np.maximum(model, 0.0))
        noise_sd = np.sqrt(variance)
        if has_arc:
            info["arc_flux"] = lensed.sum(axis=(1, 2))
            info["arc_snr"] = np.sqrt(((lensed / noise_sd) ** 2).sum(axis=(1, 2)))
        if noise:
            model = model + noise_rng.standard_normal(shape, dtype=np.float32) * noise_sd
        return model.astype(np.float32), info


def sprinkle_nans(image, rng):
    """Put 0.1-0.2 % NaN pixels (at least 1) into ``image`` (bands, H, W) in place.

    Patterns seen in real cutouts: scattered hot/dead pixels, a small cluster,
    or a bad-column segment; in one band or in all bands.

    Returns:
        The number of NaN values written (pixels x bands affected).
    """
    bands, h, w = image.shape
    n = max(1, int(round(rng.uniform(*NAN_PIXEL_FRACTION) * h * w)))
    pattern = rng.integers(3)
    if pattern == 0:  # scattered pixels
        flat = rng.choice(h * w, size=n, replace=False)
        rows, cols = np.unravel_index(flat, (h, w))
    elif pattern == 1:  # compact cluster around a random pixel
        r0, c0 = rng.integers(h), rng.integers(w)
        side = max(1, int(math.ceil(math.sqrt(n))))
        offsets = np.arange(side) - side // 2
        rr, cc = np.meshgrid(offsets, offsets, indexing="ij")
        rows = np.clip(r0 + rr.ravel()[:n], 0, h - 1)
        cols = np.clip(c0 + cc.ravel()[:n], 0, w - 1)
    else:  # bad-column segment
        col = rng.integers(w)
        start = rng.integers(max(1, h - n + 1))
        rows = np.arange(start, min(start + n, h))
        cols = np.full(rows.shape, col)
    if bands > 1 and rng.uniform() < 0.5:
        image[int(rng.integers(bands)), rows, cols] = np.nan  # one band only
    else:
        image[:, rows, cols] = np.nan
    return int(np.isnan(image).sum())

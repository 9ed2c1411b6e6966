"""What the simulator observes: the galaxy populations, and the instruments
(bands, noise, PSF, field of view) it observes them with.

The population constants (deflector, mass, source, companions, confusers) are
the distributions :func:`kerasssl.simulate.scene.draw_scene` draws from, kept
together so they can be read and tuned in one place.

Each output format of ``kerasssl simulate`` is one :class:`Survey`: an
HST-like single band (format ``hst``) or a ground-based g, r, i-like survey
(format ``three-band``). Band settings are the keyword arguments of
lenstronomy's ``SingleBand`` (zero point in e-/s, sky in mag/arcsec^2, read
noise in e-), so the same numbers drive lenstronomy's noise model.

The field of view is fixed per survey and the pixel scale follows from the
requested size (``fov / size``): a 16-pixel test image and a 334-pixel image
show the same sky, the lens always fits, and only the sampling changes.

Example:
    >>> survey = SURVEYS["three-band"]
    >>> [b.name for b in survey.bands], survey.pixel_scale(64)
    (['g', 'r', 'i'], 0.2)
"""

from __future__ import annotations

from dataclasses import dataclass

# Population parameters (reference band, arcsec), the same for every survey
# except the source magnitudes (Survey.source_mag).
DEFLECTOR_MAG = (18.5, 21.0)          # uniform
DEFLECTOR_REFF_MEDIAN = 0.8           # at mag 19.5; shrinks for fainter galaxies
DEFLECTOR_N = (3.0, 5.0)
DEFLECTOR_Q = (0.55, 1.0)
DEFLECTOR_COLOUR = ((1.5, 0.12), (0.55, 0.06))   # (g-r, r-i): (mean, sd), red
THETA_E_AT_19_5 = 0.9                 # Einstein radius of a mag-19.5 deflector
THETA_E_SCATTER = 0.4                 # sd of ln(theta_E) at fixed magnitude
THETA_E_RANGE = (0.2, 2.0)
SHEAR_SD = 0.04
SOURCE_REFF_MEDIAN = 0.2
SOURCE_COLOUR = ((0.3, 0.15), (0.15, 0.1))      # blue, star-forming
CLUMP_COLOUR = ((0.1, 0.1), (0.05, 0.1))        # bluer knots
MAX_CLUMPS = 4
COMPANION_RATE = (0.7, 0.2, 0.1)      # P(0, 1, 2 companions), both classes
CONFUSERS = ("none", "ring", "spiral", "blend")
CONFUSER_P = (0.4, 0.2, 0.2, 0.2)      # non-lenses only: 60 % carry a look-alike
# Arc-like brightness of confusers: a source magnitude brightened by a
# lens-like magnification (ln-normal around the median of the simulated lenses).
CONFUSER_MAGNIFICATION = (3.5, 0.5, 1.5, 30.0)   # median, sd of ln, clip low, clip high


@dataclass(frozen=True)
class Band:
    """One photometric band of a survey.

    Args:
        name: band label used in metadata column names (``psf_fwhm_<name>``).
        magnitude_zero_point: AB magnitude giving 1 e-/s.
        exposure_time: total exposure in seconds (sets the Poisson noise).
        sky_brightness: sky in mag/arcsec^2 (sky-subtracted images keep its noise).
        read_noise: e- per exposure.
        num_exposures: exposures combined into the coadd.
        psf_fwhm_range: (low, high) arcsec; each image draws its seeing uniformly.
    """

    name: str
    magnitude_zero_point: float
    exposure_time: float
    sky_brightness: float
    read_noise: float
    num_exposures: int
    psf_fwhm_range: tuple

    def kwargs_single_band(self, pixel_scale):
        """Keyword arguments for lenstronomy's ``SimAPI`` / ``SingleBand``.

        The PSF is applied per image by the renderer (the seeing varies per
        image), so the nominal ``seeing`` here only satisfies the API.
        """
        return {
            "pixel_scale": pixel_scale,
            "exposure_time": self.exposure_time,
            "magnitude_zero_point": self.magnitude_zero_point,
            "read_noise": self.read_noise,
            "ccd_gain": 1.0,
            "sky_brightness": self.sky_brightness,
            "seeing": 0.5 * sum(self.psf_fwhm_range),
            "num_exposures": self.num_exposures,
            "psf_type": "GAUSSIAN",
            "data_count_unit": "e-",
        }


@dataclass(frozen=True)
class Survey:
    """A set of bands observing a fixed field of view.

    Args:
        name: the output format this survey produces.
        bands: tuple of :class:`Band`; the last one is the reference band in
            which population magnitudes (deflector, source) are drawn.
        fov: field of view in arcsec (side of the square cutout).
        source_mag: (low, high) uniform range of the unlensed source magnitude
            in the reference band. Shallower, blurrier surveys find brighter
            sources, so this is the one population parameter a survey sets.
    """

    name: str
    bands: tuple
    fov: float
    source_mag: tuple

    def pixel_scale(self, size):
        """Arcsec per pixel for a ``size`` x ``size`` cutout."""
        return self.fov / size

    def supersampling(self, size):
        """Sub-pixels per pixel side so the model is sampled at >= 64 points across.

        Small test images then integrate the light over each pixel instead of
        point-sampling it (a barely resolved arc would otherwise fall between samples).
        """
        return max(1, -(-64 // size))


# HST ACS/F814W-like: diffraction-limited PSF, deep, dark sky (one band).
HST = Survey(
    name="hst",
    bands=(
        Band("f814w", magnitude_zero_point=25.9, exposure_time=2200.0, sky_brightness=22.3,
             read_noise=4.0, num_exposures=4, psf_fwhm_range=(0.08, 0.14)),
    ),
    fov=6.4,
    source_mag=(23.0, 26.5),
)

# Ground-based g, r, i coadd (DES/HSC-like depth): seeing worse in the blue.
THREE_BAND = Survey(
    name="three-band",
    bands=(
        Band("g", magnitude_zero_point=26.6, exposure_time=900.0, sky_brightness=22.0,
             read_noise=7.0, num_exposures=10, psf_fwhm_range=(0.85, 1.15)),
        Band("r", magnitude_zero_point=26.8, exposure_time=900.0, sky_brightness=21.1,
             read_noise=7.0, num_exposures=10, psf_fwhm_range=(0.75, 1.05)),
        Band("i", magnitude_zero_point=26.5, exposure_time=900.0, sky_brightness=20.3,
             read_noise=7.0, num_exposures=10, psf_fwhm_range=(0.65, 0.95)),
    ),
    fov=12.8,
    source_mag=(21.5, 25.0),
)

SURVEYS = {"hst": HST, "three-band": THREE_BAND}

"""How a simulated data set lies on disk: folders, file names, .npy bytes, metadata.csv.

Layouts (readable by :func:`kerasssl.data.load.load_images`):

- ``hst``: one flat folder of 2-D float32 arrays, lenses ``<n>_hst.npy``,
  non-lenses ``nl_<n>_hst.npy`` (the DeepLense HST set's naming);
- ``three-band``: ``lenses/`` and ``nonlenses/`` with (3, H, W) float32 arrays
  (g, r, i), named ``lens_<n>.npy`` / ``nonlens_<n>.npy``.

Both get ``metadata.csv`` at the root: one row per file with the drawn
parameters. A data set is written into ``OUT.tmp-<pid>`` (:func:`prepare_output`)
and renamed to ``OUT`` when complete (:func:`publish`), so ``OUT`` is never
half-written.

Example:
    >>> file_name("hst", NONLENS, 7), class_name("three-band", LENS)
    ('nl_7_hst.npy', 'lenses')
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
from pathlib import Path

import numpy as np

from kerasssl.errors import DataError
from kerasssl.simulate.survey import SURVEYS

LENS, NONLENS = 1, 0
METADATA_FILE = "metadata.csv"


def file_name(fmt, label, index):
    """Path of an image relative to the output root."""
    if fmt == "hst":
        return f"{index}_hst.npy" if label == LENS else f"nl_{index}_hst.npy"
    return f"lenses/lens_{index}.npy" if label == LENS else f"nonlenses/nonlens_{index}.npy"


def class_name(fmt, label):
    """The class name the loader gives this file (prefix- or folder-labelled)."""
    if fmt == "hst":
        return "lens" if label == LENS else "nonlens"
    return "lenses" if label == LENS else "nonlenses"


def class_folders(fmt):
    """Sub-folders a layout needs before its files are written."""
    return ("lenses", "nonlenses") if fmt == "three-band" else ()


def npy_header(shape):
    """The bytes np.save writes before float32 data of this shape."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, np.float32))
    return buffer.getvalue()[: -int(np.prod(shape)) * 4]


def write_npy(path, image, header):
    """Write ``image`` as float32 .npy: the same bytes as np.save, one system call
    fewer per file (``header`` from :func:`npy_header` for this shape)."""
    with open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(image, dtype=np.float32).tobytes())


def metadata_columns(fmt):
    """Columns of metadata.csv, in order (blank where not applicable to a row).

    Magnitudes are AB, angles in arcsec, ``arc_snr_<band>`` is the matched-filter
    S/N of the lensed light, ``magnification`` the lensed / unlensed flux of the
    source disk inside the cutout, ``nan_pixels`` the NaN values in the file.
    """
    bands = [b.name for b in SURVEYS[fmt].bands]

    def per_band(prefix):
        return [f"{prefix}_{b}" for b in bands]

    return (["filename", "class", "label", "index", "pixel_scale"] + per_band("psf_fwhm")
            + per_band("deflector_mag") + ["deflector_r_eff", "deflector_n", "deflector_q"]
            + ["einstein_radius", "lens_q", "shear", "source_x", "source_y", "source_r_eff"]
            + per_band("source_mag") + ["n_clumps", "clump_fraction", "magnification"]
            + per_band("arc_snr") + ["n_companions", "confuser", "confuser_scale"]
            + per_band("confuser_mag") + ["nan_pixels"])


def write_metadata(path, columns, rows):
    """metadata.csv: one row per file (floats to 6 significant digits)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _format(v) for k, v in row.items()})


def _format(value):
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{float(value):.6g}"
    return value


def prepare_output(out_dir, folders=()):
    """Refuse a non-empty OUT; return (OUT, the temporary folder to write into).

    ``folders`` are created inside the temporary folder.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(out, "already exists and is not empty (choose a new output folder)")
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for folder in folders:
            (tmp / folder).mkdir()
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(out, f"cannot create the output folder ({e.strerror})") from None
    return out, tmp


def publish(out, tmp):
    """Rename the complete temporary folder to OUT (an empty OUT is replaced)."""
    if out.exists():
        out.rmdir()  # empty (checked by prepare_output)
    tmp.rename(out)


def discard(tmp):
    """Remove a temporary folder after a failure."""
    shutil.rmtree(tmp, ignore_errors=True)

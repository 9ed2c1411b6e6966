"""How a simulated data set lies on disk: folders, file names, .npy bytes, metadata.csv.

Layouts (readable by :func:`kerasssl.data.load.load_images`):

- ``hst``: one flat folder of 2-D float32 arrays, lenses ``<n>_hst.npy``,
  non-lenses ``nl_<n>_hst.npy`` (the DeepLense HST set's naming);
- ``three-band``: ``lenses/`` and ``nonlenses/`` with (3, H, W) float32 arrays
  (g, r, i), named ``lens_<n>.npy`` / ``nonlens_<n>.npy``;
- ``pool``: an *unlabeled* pool, one flat folder ``pool_<position>.npy`` of
  (3, H, W) three-band-like arrays (or 2-D hst-like ones with ``bands=1``)
  in a seeded random order, so neither names nor order reveal the class. Read
  it as unlabeled data (``--unlabeled``); the labelled loader would take a flat
  folder without ``nl_`` prefixes for "all lenses".

Each gets ``metadata.csv`` at the root: one row per file with the drawn
parameters (for a pool, the truth: ``is_lens``). A data set is written into ``OUT.tmp-<pid>`` (:func:`prepare_output`)
and renamed to ``OUT`` when complete (:func:`publish`), so ``OUT`` is never
half-written.

Example:
    >>> file_name("hst", NONLENS, 7), class_name("three-band", LENS)
    ('nl_7_hst.npy', 'lenses')
    >>> pool_file_name(41, 3000), pool_file_name(41, 2_000_000)
    ('pool_000041.npy', 'pool_0000041.npy')
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
LABELLED_FORMATS = ("hst", "three-band")   # each the name of its survey
POOL = "pool"
FORMATS = LABELLED_FORMATS + (POOL,)
POOL_SURVEYS = {3: "three-band", 1: "hst"}  # a pool's bands -> the survey it observes with


def survey_name(fmt, bands=3):
    """The survey (:data:`~kerasssl.simulate.survey.SURVEYS` key) a format observes with."""
    return POOL_SURVEYS[bands] if fmt == POOL else fmt


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


def pool_file_name(position, n):
    """Name of the pool's ``position``-th file: zero-padded so names sort in order."""
    return f"pool_{position:0{max(6, len(str(n - 1)))}d}.npy"


def layout_fields(fmt, label, name):
    """The metadata fields that say where a file is and what it is."""
    if fmt == POOL:
        return {"filename": name, "is_lens": label}
    return {"filename": name, "class": class_name(fmt, label), "label": label}


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


def metadata_columns(fmt, bands=3):
    """Columns of metadata.csv, in order (blank where not applicable to a row).

    ``index`` is the image's number within its class (with the seed, it
    determines the image); a pool has ``is_lens`` (1 or 0) instead of
    ``class`` and ``label``, and ``bands`` (1 or 3) chooses its survey.
    Magnitudes are AB, angles in arcsec, ``arc_snr_<band>`` is the matched-filter
    S/N of the lensed light, ``magnification`` the lensed / unlensed flux of the
    source disk inside the cutout, ``nan_pixels`` the NaN values in the file.
    """
    names = [b.name for b in SURVEYS[survey_name(fmt, bands)].bands]

    def per_band(prefix):
        return [f"{prefix}_{b}" for b in names]

    where = ["filename", "is_lens"] if fmt == POOL else ["filename", "class", "label"]
    return (where + ["index", "pixel_scale"] + per_band("psf_fwhm")
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

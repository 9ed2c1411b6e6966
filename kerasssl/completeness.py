"""Completeness: the fraction of lenses found, binned by what makes a lens hard to see.

When a data folder holds the simulator's ``metadata.csv`` (``kerasssl simulate``),
each image's Einstein radius, PSF and arc S/N are known: :func:`completeness`
bins the positives of a split by them and gives the TPR per bin (with a Wilson
interval) at a threshold, and :func:`completeness_report` does it at the two
operating points a lens finder would choose on the validation split: Youden's
threshold and the one of FPR 1e-2 (:func:`operating_thresholds`). The report
and a PNG (:func:`kerasssl.plots.plot_completeness`) show where the model
stops seeing lenses.

NumPy only, like :mod:`kerasssl.metrics`.

Example:
    >>> meta = completeness_columns(read_metadata(data / "metadata.csv", files))
    >>> rep = completeness_report(y_test, s_test, meta, operating_thresholds(y_val, s_val))
    >>> rep["at"]["youden"]["columns"]["einstein_radius"]["bins"][0]["tpr"]
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from statistics import NormalDist
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from kerasssl.errors import DataError
from kerasssl.metrics import binary_set, fpr_key, tpr_at_fpr, youden_threshold

#: The simulator's metadata file, at the root of a data folder.
METADATA_FILE = "metadata.csv"
#: Columns completeness is binned by (see :func:`completeness_columns` for the derived ones).
COMPLETENESS_COLUMNS = ("einstein_radius", "radius_over_psf", "arc_snr", "psf_fwhm")
#: The FPR whose threshold (chosen on val) is the second operating point.
OPERATING_FPR = 1e-2


def read_metadata(path, files: Sequence[str]) -> dict:
    """Numeric columns of a simulator ``metadata.csv``, aligned with ``files``.

    Args:
        path: the CSV (a ``filename`` column holding paths relative to the data folder).
        files: file names in the order wanted (an ImageSet's ``files``).

    Returns:
        ``{column: float array (len(files),)}``; NaN where a value is blank or a
        file has no row. Non-numeric columns (e.g. ``class``) are left out.

    Example:
        >>> meta = read_metadata(data / "metadata.csv", image_set.files)
    """
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(path, f"cannot read as CSV ({e})") from None
    if not rows or "filename" not in rows[0]:
        raise DataError(path, "no 'filename' column (not a kerasssl simulate metadata.csv?)")
    by_name = {row["filename"]: row for row in rows}
    if len(by_name) < len(rows):
        raise DataError(path, "a filename appears in more than one row")
    matched = [by_name.get(name) for name in files]
    if files and not any(matched):
        raise DataError(path, "none of the data's files has a row (metadata of another folder?)")
    out = {}
    for column in (c for c in rows[0] if c is not None):  # None: the extra fields of a long row
        try:  # a column with any non-number (class, confuser) is not numeric
            out[column] = np.asarray([float(r[column]) if r and r[column] not in ("", None) else math.nan
                                      for r in matched], np.float64)
        except ValueError:
            continue
    return out


def completeness_columns(metadata: Mapping[str, np.ndarray]) -> dict:
    """The metadata plus the columns derived from per-band ones.

    ``arc_snr``: the quadrature sum of ``arc_snr_<band>`` (matched-filter S/N of
    independent bands add so); ``psf_fwhm``: the mean of ``psf_fwhm_<band>``;
    ``radius_over_psf``: ``einstein_radius / psf_fwhm`` (how well the seeing
    resolves the arcs; both in arcsec). Columns already present are kept.

    Example:
        >>> completeness_columns({"arc_snr_g": [3.0], "arc_snr_r": [4.0]})["arc_snr"]
        array([5.])
    """
    out = {k: np.asarray(v, np.float64) for k, v in metadata.items()}
    for name, combine in (("arc_snr", lambda a: np.sqrt(np.sum(a ** 2, axis=0))),
                          ("psf_fwhm", lambda a: np.mean(a, axis=0))):
        bands = [v for k, v in out.items() if k.startswith(name + "_")]
        if name not in out and bands:
            out[name] = combine(np.stack(bands))
    if "radius_over_psf" not in out and "einstein_radius" in out and "psf_fwhm" in out:
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = out["einstein_radius"] / out["psf_fwhm"]
        out["radius_over_psf"] = np.where(np.isfinite(ratio), ratio, np.nan)
    return out


def wilson_interval(successes: int, n: int, level: float = 0.95) -> list:
    """Wilson score interval ``[low, high]`` of a binomial proportion (n > 0).

    Example:
        >>> wilson_interval(8, 10)   # [0.490..., 0.943...]
    """
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 or n successes the bound is exactly 0 or 1 (rounding would leave it just inside).
    return [0.0 if successes == 0 else max(0.0, centre - half), 1.0 if successes == n else min(1.0, centre + half)]


def completeness(labels, scores, metadata: Mapping[str, np.ndarray], threshold: float, *,
                 columns: Sequence[str] = COMPLETENESS_COLUMNS,
                 bins: Union[int, Mapping[str, Sequence[float]]] = 4, level: float = 0.95) -> dict:
    """TPR of the positives at a threshold, binned by each metadata column.

    Args:
        labels / scores: 0/1 labels and lens scores (N,); only positives count.
        metadata: ``{column: values (N,)}`` aligned with labels (NaN = unknown),
            e.g. ``completeness_columns(read_metadata(...))``.
        threshold: a positive is detected when ``score >= threshold``.
        columns: the columns to bin by; those absent from metadata are skipped.
        bins: the number of quantile bins of the positives' values, or
            ``{column: edges}`` (values outside the edges are left out; columns
            not in it get 4 quantile bins).
        level: coverage of each bin's Wilson interval.

    Returns:
        ``{"threshold", "selection", "interval", "columns": {column: {"edges",
        "n_missing", "n_outside", "bins": [{"low", "high", "n", "detected", "tpr",
        "ci"}, ...]}}}``; tpr and ci None in an empty bin. Bins are half-open
        ``[low, high)``, the last one closed.

    Example:
        >>> c = completeness(y, s, meta, threshold=0.5, bins=4)
        >>> [b["tpr"] for b in c["columns"]["einstein_radius"]["bins"]]
    """
    positive, scores = binary_set(labels, scores)
    detected = scores[positive] >= threshold
    out = {"threshold": float(threshold), "selection": "score >= threshold",
           "interval": f"Wilson {100 * level:g}%", "columns": {}}
    for column in columns:
        if column not in metadata:
            continue
        values = np.asarray(metadata[column], np.float64)[positive]
        known = np.isfinite(values)
        given = bins.get(column) if isinstance(bins, Mapping) else None
        if given is not None:
            edges = np.asarray(given, np.float64)
        else:
            n_bins = 4 if isinstance(bins, Mapping) else int(bins)
            edges = np.unique(np.quantile(values[known], np.linspace(0, 1, n_bins + 1))) \
                if known.any() else np.zeros(0)
        if len(edges) == 1:
            edges = np.r_[edges, edges]  # one value: one closed bin [v, v]
        inside = known & (values >= edges[0]) & (values <= edges[-1]) if len(edges) else known & False
        which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, max(len(edges) - 2, 0))
        rows = []
        for k in range(len(edges) - 1):
            member = inside & (which == k)
            n, hits = int(member.sum()), int(detected[member].sum())
            rows.append({"low": float(edges[k]), "high": float(edges[k + 1]), "n": n, "detected": hits,
                         "tpr": hits / n if n else None,
                         "ci": wilson_interval(hits, n, level) if n else None})
        out["columns"][column] = {"edges": [float(e) for e in edges], "n_missing": int((~known).sum()),
                                  "n_outside": int((known & ~inside).sum()), "bins": rows}
    return out


def metadata_path(data_path) -> Optional[Path]:
    """``DATA/metadata.csv`` when DATA is a folder holding one, else None (TFRecord globs have none)."""
    path = Path(str(data_path)) / METADATA_FILE
    return path if path.is_file() else None


def operating_thresholds(labels, scores, *, chosen_on: str = "val",
                         fpr_target: float = OPERATING_FPR) -> dict:
    """The two thresholds completeness is read at, chosen on one split (normally val).

    Args:
        labels / scores: 0/1 labels and lens scores of the split the thresholds
            are chosen on.
        chosen_on: its name, recorded with each threshold.
        fpr_target: the FPR of the second threshold.

    Returns:
        ``{"youden": {...}, "fpr_1e-2": {...}}``, each ``{"threshold", "chosen_on",
        "rule"}``; the FPR threshold is None, with a ``reason``, when the split
        has too few negatives to resolve the target.

    Example:
        >>> operating_thresholds(y_val, s_val)["youden"]["threshold"]
    """
    positive, scores = binary_set(labels, scores)
    labels = positive.astype(np.int64)
    at_fpr = tpr_at_fpr(labels, scores, fpr_target, bootstrap=0)
    out = {"youden": {"threshold": youden_threshold(labels, scores), "chosen_on": chosen_on,
                      "rule": "maximum TPR - FPR (Youden's J)"},
           f"fpr_{fpr_key(fpr_target)}": {"threshold": at_fpr["threshold"], "chosen_on": chosen_on,
                                          "rule": f"largest TPR with FPR <= {fpr_target:g}"}}
    if not at_fpr["estimable"]:
        out[f"fpr_{fpr_key(fpr_target)}"]["reason"] = at_fpr["reason"]
    return out


def completeness_report(labels, scores, metadata: Mapping[str, np.ndarray], thresholds: Mapping[str, dict], *,
                        columns: Sequence[str] = COMPLETENESS_COLUMNS, bins=4, level: float = 0.95,
                        source: Optional[str] = None) -> dict:
    """Completeness of one split at each operating threshold, binned by each metadata column.

    Args:
        labels / scores: 0/1 labels and lens scores of the evaluated split.
        metadata: ``{column: values}`` aligned with labels (``completeness_columns(read_metadata(...))``).
        thresholds: :func:`operating_thresholds` (those without a threshold are kept, with their reason).
        columns / bins / level: as :func:`completeness`.
        source: where the metadata came from (recorded).

    Returns:
        ``{"metadata", "columns", "n_positives", "at": {name: {"threshold", "chosen_on",
        "rule", "selection", "interval", "columns": {...}}}}``; ``columns`` lists
        the binned ones (those absent from the metadata are left out).

    Example:
        >>> rep = completeness_report(y, s, meta, operating_thresholds(y_val, s_val))
    """
    positive, scores = binary_set(labels, scores)
    present = [c for c in columns if c in metadata and np.isfinite(np.asarray(metadata[c])[positive]).any()]
    out = {"metadata": source, "columns": present, "n_positives": int(positive.sum()), "at": {}}
    for name, chosen in thresholds.items():
        entry = dict(chosen)
        if chosen.get("threshold") is not None:
            entry.update(completeness(positive.astype(np.int64), scores, metadata, chosen["threshold"],
                                      columns=present, bins=bins, level=level))
            entry.update(chosen)  # the rule and where it was chosen, over completeness's own threshold key
        out["at"][name] = entry
    return out


def curve_label(name: str, entry: dict) -> str:
    """The legend label of one operating point: "Youden (chosen on val)", "FPR 1e-2 (chosen on val)"."""
    label = "Youden" if name == "youden" else name.replace("fpr_", "FPR ").replace("_", " ")
    return f"{label} (chosen on {entry['chosen_on']})"


def plot_curves(report: dict) -> dict:
    """``{legend label: completeness result}`` of a :func:`completeness_report`, for the plot."""
    return {curve_label(name, entry): entry for name, entry in report["at"].items()
            if entry.get("threshold") is not None and "columns" in entry}


def missing_curves(report: dict) -> list:
    """One line per operating point without a threshold: its label and why (for the plot's note)."""
    return [f"no {curve_label(name, entry)} curve: {entry['reason']}" for name, entry in report["at"].items()
            if entry.get("threshold") is None and entry.get("reason")]

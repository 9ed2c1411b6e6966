"""Figures of the reports (matplotlib, Agg backend, imported when a figure is drawn).

Example:
    >>> plot_completeness("completeness.png", {"Youden (val)": completeness(y, s, meta, t)})
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

AXIS_LABELS = {
    "einstein_radius": "Einstein radius (arcsec)",
    "arc_snr": "arc S/N (matched filter, bands in quadrature)",
    "psf_fwhm": "PSF FWHM (arcsec, mean over bands)",
    "radius_over_psf": "Einstein radius / PSF FWHM",
}
LOG_AXES = {"arc_snr"}  # S/N spans decades


def plot_completeness(path, curves: Mapping[str, dict],
                      columns: Sequence[str] = ("einstein_radius", "arc_snr"),
                      title: Optional[str] = None, note: Optional[str] = None) -> Path:
    """Write a PNG of TPR per bin, one panel per metadata column, one line per threshold.

    Args:
        path: output PNG (written atomically).
        curves: ``{legend label: kerasssl.metrics.completeness(...) result}``, e.g.
            the Youden threshold chosen on val and the FPR 1e-2 threshold.
        columns: the binned columns to draw, one panel each (absent ones are skipped).
        title: figure title.
        note: a second, smaller title line (e.g. why a threshold has no curve).

    Returns:
        The path written.

    Example:
        >>> plot_completeness("RUN/completeness.png",
        ...                   {"Youden (val)": c_youden, "FPR 1e-2": c_fpr})
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in columns if any(c in curve["columns"] for curve in curves.values())]
    if not shown:
        raise ValueError(f"no completeness results for the columns {list(columns)}")
    fig, axes = plt.subplots(1, len(shown), figsize=(5.0 * len(shown), 4.2), dpi=120, squeeze=False)
    for ax, column in zip(axes[0], shown):
        per_curve = {label: [b for b in curve["columns"].get(column, {}).get("bins", []) if b["n"]]
                     for label, curve in curves.items()}
        log = column in LOG_AXES and all(b["low"] > 0 for bins in per_curve.values() for b in bins)
        for i, (label, curve) in enumerate(curves.items()):
            bins = per_curve[label]
            if not bins:
                continue
            x = [(b["low"] * b["high"]) ** 0.5 if log else (b["low"] + b["high"]) / 2 for b in bins]
            y = [b["tpr"] for b in bins]
            yerr = [[max(b["tpr"] - b["ci"][0], 0.0) for b in bins], [max(b["ci"][1] - b["tpr"], 0.0) for b in bins]]
            xerr = [[c - b["low"] for c, b in zip(x, bins)], [b["high"] - c for c, b in zip(x, bins)]]
            ax.errorbar(x, y, yerr=yerr, xerr=xerr, marker="o", ms=4, capsize=2, color=f"C{i}",
                        label=f"{label} (score >= {curve['threshold']:.3g})")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(AXIS_LABELS.get(column, column))
        ax.set_ylabel("TPR (completeness)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    title = title or "Completeness of the lens finder (bars: bin width, Wilson interval)"
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path

"""kerasssl.completeness: bins and Wilson intervals, metadata.csv alignment, the operating
thresholds chosen on val, the report and its PNG."""

import json

import numpy as np
import pytest

from kerasssl import completeness as comp
from kerasssl.errors import DataError


def test_wilson_interval_known_values():
    low, high = comp.wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert comp.wilson_interval(0, 5)[0] == 0.0 and comp.wilson_interval(5, 5)[1] == 1.0
    # Exactly 0 / 1 at the ends for every n (a plot's error bars must not go negative).
    assert all(comp.wilson_interval(n, n)[1] == 1.0 and comp.wilson_interval(0, n)[0] == 0.0 for n in range(1, 200))


def completeness_set():
    """20 lenses: radius 0.25..2.0 in 4 groups of 5, detected when radius >= 1; 10 non-lenses."""
    radius = np.repeat([0.25, 0.75, 1.25, 1.75], 5)
    scores = np.r_[np.where(radius >= 1.0, 0.9, 0.1), np.full(10, 0.95)]  # non-lenses score high: ignored
    labels = np.r_[np.ones(20, int), np.zeros(10, int)]
    meta = {"einstein_radius": np.r_[radius, np.full(10, np.nan)],
            "arc_snr_g": np.r_[np.full(20, 3.0), np.full(10, np.nan)],
            "arc_snr_r": np.r_[np.full(20, 4.0), np.full(10, np.nan)]}
    return labels, scores, meta


def test_completeness_bins_given_edges_and_quantiles():
    labels, scores, meta = completeness_set()
    meta["einstein_radius"][0] = np.nan  # one lens without a radius
    c = comp.completeness(labels, scores, meta, 0.5, bins={"einstein_radius": [0, 0.5, 1, 1.5, 2]},
                       columns=("einstein_radius",))
    col = c["columns"]["einstein_radius"]
    assert [(b["n"], b["detected"], b["tpr"]) for b in col["bins"]] == \
        [(4, 0, 0.0), (5, 0, 0.0), (5, 5, 1.0), (5, 5, 1.0)]
    assert col["n_missing"] == 1 and col["n_outside"] == 0
    assert col["bins"][2]["ci"] == comp.wilson_interval(5, 5)
    q = comp.completeness(labels, scores, meta, 0.5, bins=2, columns=("einstein_radius", "absent"))
    assert list(q["columns"]) == ["einstein_radius"]
    assert [(b["n"], b["detected"]) for b in q["columns"]["einstein_radius"]["bins"]] == [(9, 0), (10, 10)]
    # Values outside given edges are counted, not binned; an empty bin has no TPR.
    e = comp.completeness(labels, scores, meta, 0.5, bins={"einstein_radius": [0.5, 1.0, 1.1]})
    col = e["columns"]["einstein_radius"]
    assert col["n_outside"] == 14 and col["bins"][1] == {"low": 1.0, "high": 1.1, "n": 0, "detected": 0,
                                                          "tpr": None, "ci": None}
    json.dumps(e, allow_nan=False)
    # Edges for one column; the others get quantile bins.
    both = comp.completeness(labels, scores, comp.completeness_columns(meta), 0.5,
                          bins={"einstein_radius": [0, 1, 2]})
    assert len(both["columns"]["einstein_radius"]["bins"]) == 2
    assert both["columns"]["arc_snr"]["bins"] == [{"low": 5.0, "high": 5.0, "n": 20, "detected": 10,
                                                   "tpr": 0.5, "ci": comp.wilson_interval(10, 20)}]


def test_completeness_columns_combine_bands():
    _, _, meta = completeness_set()
    cols = comp.completeness_columns({**meta, "psf_fwhm_g": [1.0] * 30, "psf_fwhm_r": [0.8] * 30})
    assert cols["arc_snr"][0] == pytest.approx(5.0) and cols["psf_fwhm"][0] == pytest.approx(0.9)
    assert comp.completeness_columns({"arc_snr": [2.0], "arc_snr_g": [9.0]})["arc_snr"][0] == 2.0


def test_read_metadata_aligns_simulator_csv(tmp_path):
    from kerasssl.simulate import writer

    columns = writer.metadata_columns("three-band")
    rows = [{"filename": "lenses/lens_0.npy", "class": "lenses", "label": 1, "einstein_radius": 1.2,
             "arc_snr_g": 30.0, "confuser": "none"},
            {"filename": "nonlenses/nonlens_0.npy", "class": "nonlenses", "label": 0, "confuser": "blend"}]
    path = tmp_path / "metadata.csv"
    writer.write_metadata(path, columns, rows)
    meta = comp.read_metadata(path, ["nonlenses/nonlens_0.npy", "lenses/lens_0.npy", "other.npy"])
    assert "class" not in meta and "confuser" not in meta and "filename" not in meta
    assert meta["einstein_radius"][1] == 1.2 and np.isnan(meta["einstein_radius"][[0, 2]]).all()
    assert list(meta["label"][:2]) == [0.0, 1.0]
    with pytest.raises(DataError, match="none of the data's files"):
        comp.read_metadata(path, ["x.npy"])
    (tmp_path / "ragged.csv").write_text("filename,label,x\na.npy,1,2,extra\nb.npy,0\n")
    ragged = comp.read_metadata(tmp_path / "ragged.csv", ["a.npy", "b.npy"])
    assert list(ragged) == ["label", "x"] and ragged["x"][0] == 2 and np.isnan(ragged["x"][1])
    (tmp_path / "bad.csv").write_text("name,label\na.npy,1\n")
    with pytest.raises(DataError, match="filename"):
        comp.read_metadata(tmp_path / "bad.csv", ["a.npy"])


def test_completeness_png_is_written(tmp_path):
    from kerasssl.plots import plot_completeness

    labels, scores, meta = completeness_set()
    meta = comp.completeness_columns(meta)
    curves = {"Youden (val)": comp.completeness(labels, scores, meta, 0.5),
              "FPR 1e-2": comp.completeness(labels, scores, meta, 0.95)}
    path = plot_completeness(tmp_path / "sub" / "completeness.png", curves)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left


def test_radius_over_psf_is_derived_from_the_band_psfs():
    cols = comp.completeness_columns({"einstein_radius": [1.0, np.nan, 2.0], "psf_fwhm_g": [1.0, 1.0, 0.0],
                                      "psf_fwhm_r": [1.0, 1.0, 0.0]})
    assert cols["radius_over_psf"][0] == 1.0 and np.isnan(cols["radius_over_psf"][1:]).all()


def test_operating_thresholds_are_chosen_on_the_given_split():
    from kerasssl.metrics import tpr_at_fpr, youden_threshold

    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(50, int), np.zeros(250, int)]
    scores = np.round(1 / (1 + np.exp(-(2.5 * labels + rng.normal(0, 1, 300)))), 3)
    chosen = comp.operating_thresholds(labels, scores)
    assert set(chosen) == {"youden", "fpr_1e-2"}
    assert chosen["youden"] == {"threshold": youden_threshold(labels, scores), "chosen_on": "val",
                                "rule": "maximum TPR - FPR (Youden's J)"}
    at = chosen["fpr_1e-2"]
    assert at["threshold"] == tpr_at_fpr(labels, scores, 1e-2, bootstrap=0)["threshold"]
    assert np.mean(scores[labels == 0] >= at["threshold"]) <= 0.01 and "reason" not in at
    # 50 negatives cannot resolve FPR 1e-2: no threshold, and the reason why.
    few = comp.operating_thresholds(labels[:100], scores[:100], chosen_on="test")
    assert few["fpr_1e-2"]["threshold"] is None and "needs at least 100 negatives" in few["fpr_1e-2"]["reason"]
    assert few["youden"]["chosen_on"] == "test"


def test_completeness_report_reads_each_threshold_and_plots(tmp_path):
    from kerasssl.plots import plot_completeness

    labels, scores, meta = completeness_set()
    meta = comp.completeness_columns(meta)
    thresholds = {"youden": {"threshold": 0.5, "chosen_on": "val", "rule": "r"},
                  "fpr_1e-2": {"threshold": None, "chosen_on": "val", "rule": "r2", "reason": "too few"}}
    rep = comp.completeness_report(labels, scores, meta, thresholds, bins={"einstein_radius": [0, 1, 2]},
                                   source="DATA/metadata.csv")
    assert rep["metadata"] == "DATA/metadata.csv" and rep["n_positives"] == 20
    assert rep["columns"] == ["einstein_radius", "arc_snr"]  # no PSF columns in this metadata
    youden = rep["at"]["youden"]
    assert youden["threshold"] == 0.5 and youden["chosen_on"] == "val" and youden["rule"] == "r"
    assert [b["tpr"] for b in youden["columns"]["einstein_radius"]["bins"]] == [0.0, 1.0]
    assert rep["at"]["fpr_1e-2"] == thresholds["fpr_1e-2"]  # kept, with its reason, not binned
    json.dumps(rep, allow_nan=False)
    curves = comp.plot_curves(rep)
    assert list(curves) == ["Youden (chosen on val)"]
    assert comp.missing_curves(rep) == ["no FPR 1e-2 (chosen on val) curve: too few"]
    path = plot_completeness(tmp_path / "completeness.png", curves, columns=rep["columns"],
                             note="; ".join(comp.missing_curves(rep)))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metadata_path_only_for_a_folder_holding_one(tmp_path):
    assert comp.metadata_path(tmp_path) is None
    assert comp.metadata_path(f"{tmp_path}/*.tfrecord*") is None
    (tmp_path / "metadata.csv").write_text("filename\n")
    assert comp.metadata_path(tmp_path) == tmp_path / "metadata.csv"

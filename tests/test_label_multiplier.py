"""The label multiplier of benchmarks/label_efficiency.py (issue 15).

Pure functions on made-up supervised curves whose answers are known by hand:
the interpolation is on log(labels), so a linear-in-labels one fails here.
"""

import math

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("label_efficiency")


LABELS, AUCS = [10, 100, 1000], [0.60, 0.70, 0.80]


def test_interpolates_on_log_labels(bench):
    # Halfway in AUC between 10 and 100 labels is sqrt(10 * 100) labels, not 55.
    assert bench.labels_to_match(LABELS, AUCS, 0.65) == pytest.approx(math.sqrt(1000))
    m = bench.label_multiplier(LABELS, AUCS, 10, 0.65)
    assert m["kind"] == "exact" and m["value"] == pytest.approx(math.sqrt(1000) / 10)
    assert m["text"] == "3.2×"
    # A quarter of the way from 100 to 1000 labels, at k = 10 labels.
    m = bench.label_multiplier(LABELS, AUCS, 10, 0.725)
    assert m["value"] == pytest.approx(10 ** 2.25 / 10)
    # Exactly on a measured point.
    assert bench.label_multiplier(LABELS, AUCS, 10, 0.70)["value"] == pytest.approx(10.0)


def test_censored_ends(bench):
    above = bench.label_multiplier(LABELS, AUCS, 10, 0.85)
    assert above == {"kind": "above", "value": 100.0, "text": "> 100×"}
    below = bench.label_multiplier(LABELS, AUCS, 100, 0.69)
    assert below["kind"] == "below" and below["text"] == "< 1×"
    # Equal to supervised at its own k: 1x, not below.
    assert bench.label_multiplier(LABELS, AUCS, 100, 0.70)["value"] == pytest.approx(1.0)


def test_non_monotone_curve_uses_its_running_maximum(bench):
    # Supervised dips at 1000 labels; the envelope keeps 0.75 from 100 labels on.
    labels, aucs = [10, 100, 1000], [0.60, 0.75, 0.70]
    n, env = bench.supervised_envelope(labels, aucs)
    assert list(env) == [0.60, 0.75, 0.75]
    # 0.72 at 100 labels is under the envelope there (0.75), although above the raw 1000-label point.
    assert bench.label_multiplier(labels, aucs, 100, 0.72)["kind"] == "below"
    # 0.72 at 10 labels: 80 % of the way from 10 to 100 on log labels.
    assert bench.label_multiplier(labels, aucs, 10, 0.72)["value"] == pytest.approx(10 ** 1.8 / 10)
    assert bench.label_multiplier(labels, aucs, 10, 0.76)["text"] == "> 100×"
    # Unsorted input is sorted by labels first.
    assert bench.labels_to_match([1000, 10, 100], [0.80, 0.60, 0.70], 0.65) == pytest.approx(math.sqrt(1000))


def test_seed_summary_orders_censored_values(bench):
    below = bench.label_multiplier(LABELS, AUCS, 100, 0.5)
    exact = bench.label_multiplier(LABELS, AUCS, 10, 0.65)
    above = bench.label_multiplier(LABELS, AUCS, 10, 0.9)
    s = bench.summarise_multipliers([above, below, exact])
    assert s["median"] is exact and s["min"] is below and s["max"] is above
    assert s["text"] == "3.2× (< 1×–> 100×)"
    # Two of three seeds beat supervised at 100 %: the median is censored too.
    assert bench.summarise_multipliers([above, exact, above])["median"]["text"] == "> 100×"


def test_multipliers_from_cells_pair_seeds_and_pick_the_stronger_baseline(bench):
    def cell(arm, f, seed, auc, n):
        return {"arm": arm, "label": arm, "fraction": f, "seed": seed, "roc_auc": auc, "n_labeled": n}

    cells = []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        cells += [cell("supervised", 0.01, seed, 0.60 + shift, 10), cell("supervised", 0.1, seed, 0.65 + shift, 100),
                  cell("supervised", 1.0, seed, 0.70 + shift, 1000),
                  # the long control is stronger at 100 %: it, not the 300-step arm, is the reference there
                  cell("supervised-long", 1.0, seed, 0.80 + shift, 1000),
                  cell("ssl+full", 0.01, seed, 0.65 + shift, 10)]
    table = bench.summarise(cells, [0.01, 0.1, 1.0])
    for row in table.values():
        row["n_labeled"] = {0.01: 10, 0.1: 100, 1.0: 1000}[row["fraction"]]
    m = bench.multipliers(table, cells, [0.01, 0.1, 1.0])
    assert m["supervised_reference"] == {"0.01": "supervised", "0.1": "supervised", "1": "supervised-long"}
    got = m["cells"]["ssl+full@0.01"]
    # Each seed against its own curve: 0.65 (+shift) sits on the 100-label point of that seed.
    assert got["per_seed"][0]["value"] == pytest.approx(10.0)
    assert got["per_seed"][1]["value"] == pytest.approx(10.0)
    assert got["on_means"]["value"] == pytest.approx(10.0)

"""kerasssl.metrics: hand-computed cases, brute-force definitions, agreement with
scikit-learn's numbers, not-estimable cases (completeness: test_completeness.py)."""

import json

import numpy as np
import pytest
from conftest import binary_probs, mann_whitney_auc
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score, roc_curve

from kerasssl import metrics as m
from kerasssl.errors import KerassslError


def scored_set(n_pos, n_neg, seed=0, decimals=2):
    """Labels and lens scores with many ties (scores rounded)."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    scores = 1 / (1 + np.exp(-(2.0 * labels + rng.normal(0, 1, n_pos + n_neg))))
    return labels, np.round(scores, decimals)


def brute_tpr_within_fp(labels, scores, max_fp):
    """Largest TPR over every threshold (each distinct score, and above all) with FP <= max_fp."""
    best = 0.0
    for t in np.unique(scores):
        selected = scores >= t
        if np.sum(selected & (labels == 0)) <= max_fp:
            best = max(best, np.mean(selected[labels == 1]))
    return best


# -- the AUCs, Youden, confusion: against scikit-learn and brute force ------------
@pytest.mark.parametrize("n_classes", [2, 3])
def test_auc_functions_agree_with_scikit_learn(n_classes):
    rng = np.random.default_rng(n_classes)
    labels = rng.integers(0, n_classes, 300)
    probs = rng.dirichlet(np.ones(n_classes), 300)
    probs[:, -1] = np.round(probs[:, -1], 2)  # ties
    onehot = np.eye(n_classes)[labels]
    if n_classes == 2:
        assert m.roc_auc(labels, probs) == roc_auc_score(labels, probs[:, 1])
        assert m.pr_auc(labels, probs) == average_precision_score(labels == 1, probs[:, 1])
    else:  # macro one-vs-rest, per class
        assert m.roc_auc(labels, probs) == np.mean([roc_auc_score(onehot[:, k], probs[:, k]) for k in range(3)])
        assert m.pr_auc(labels, probs) == average_precision_score(onehot, probs, average="macro")
    assert m.fast_auc(labels, probs) == pytest.approx(m.roc_auc(labels, probs), abs=1e-12)
    ci = m.bootstrap_auc_ci(labels, probs, 200, seed=3)
    assert ci == m.bootstrap_auc_ci(labels, probs, 200, seed=3) != m.bootstrap_auc_ci(labels, probs, 200, seed=4)
    assert m.per_class_auc(labels, probs, list("abc")[:n_classes]) == \
        {name: roc_auc_score(onehot[:, k], probs[:, k]) for k, name in enumerate("abc"[:n_classes])}
    predictions = probs.argmax(1)
    assert m.confusion(labels, predictions, n_classes) == \
        confusion_matrix(labels, predictions, labels=range(n_classes)).tolist()


def test_binary_auc_matches_mann_whitney(scored):
    labels, scores = scored
    assert m.roc_auc(labels, binary_probs(scores)) == pytest.approx(mann_whitney_auc(labels, scores))


def test_multiclass_auc_is_macro_one_vs_rest():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 90)
    logits = rng.normal(0, 1, (90, 3)) + 1.2 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref = np.mean([mann_whitney_auc((labels == k).astype(int), probs[:, k]) for k in range(3)])
    assert m.roc_auc(labels, probs) == pytest.approx(ref)


def test_pr_auc_matches_average_precision_definition(scored):
    labels, scores = scored
    # AP = sum over positives (ranked by score) of precision at that rank / n_pos (no ties here).
    rng = np.random.default_rng(0)
    scores = scores + rng.uniform(0, 1e-9, scores.shape)
    order = np.argsort(-scores)
    hits = labels[order] == 1
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    ref = precision_at[hits].sum() / hits.sum()
    assert m.pr_auc(labels, binary_probs(scores)) == pytest.approx(ref)


def test_bootstrap_ci_brackets_auc_and_is_seeded(scored):
    labels, scores = scored
    probs = binary_probs(scores)
    auc = m.roc_auc(labels, probs)
    low, high = m.bootstrap_auc_ci(labels, probs, n_resamples=300, seed=4)
    assert low < auc < high
    assert m.bootstrap_auc_ci(labels, probs, 300, seed=4) == [low, high]
    # Width scales like 1/sqrt(n): four copies of the data give about half the width.
    low4, high4 = m.bootstrap_auc_ci(np.tile(labels, 4), np.tile(probs, (4, 1)), 300, seed=4)
    assert 0.3 < (high4 - low4) / (high - low) < 0.7


@pytest.mark.parametrize("n_classes", [2, 3])
def test_fast_bootstrap_auc_equals_roc_auc(n_classes):
    rng = np.random.default_rng(n_classes)
    labels = rng.integers(0, n_classes, 50)
    probs = rng.dirichlet(np.ones(n_classes), 50).round(2)  # rounding makes ties
    assert m.fast_auc(labels, probs) == pytest.approx(m.roc_auc(labels, probs))


def test_bootstrap_refuses_a_single_class():
    with pytest.raises(KerassslError):
        m.bootstrap_auc_ci(np.ones(10, int), binary_probs(np.linspace(0, 1, 10)), 10)


def test_youden_threshold_maximises_tpr_minus_fpr(scored):
    labels, scores = scored
    t = m.youden_threshold(labels, scores)
    pred = scores >= t
    j = pred[labels == 1].mean() - pred[labels == 0].mean()
    for other in np.unique(scores):
        p = scores >= other
        assert j >= p[labels == 1].mean() - p[labels == 0].mean() - 1e-12


def test_roc_auc_takes_binary_scores_and_matches_sklearn_ovr():
    labels, scores = scored_set(40, 60)
    assert m.roc_auc(labels, scores) == m.roc_auc(labels, np.stack([1 - scores, scores], 1))
    assert m.fast_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    rng = np.random.default_rng(5)
    y3 = rng.integers(0, 3, 200)
    p3 = rng.dirichlet(np.ones(3), 200)
    # tflite's int8 ΔAUC used sklearn's multi_class="ovr": the same number.
    assert m.roc_auc(y3, p3) == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr"), abs=1e-12)


def test_roc_auc_present_classes_is_the_knn_probe_rule():
    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.ones(3), 50)
    labels = rng.integers(0, 2, 50)  # class 2 absent
    # The kNN probe's rule: macro one-vs-rest over the classes present only.
    present = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in (0, 1)])
    assert m.roc_auc(labels, probs, classes="present") == present
    assert np.isnan(m.roc_auc(np.zeros(50, int), probs, classes="present"))
    binary = probs[:, :2] / probs[:, :2].sum(1, keepdims=True)
    assert m.roc_auc(labels, binary, classes="present") == roc_auc_score(labels, binary[:, 1])
    with pytest.warns(UserWarning):  # evaluate's rule: every class, so undefined here
        assert np.isnan(m.roc_auc(labels, probs))


def test_bootstrap_auc_ci_needs_both_classes():
    with pytest.raises(KerassslError, match="both classes"):
        m.bootstrap_auc_ci(np.ones(10, int), np.random.default_rng(0).random(10))


# -- TPR0, TPR10, TPR at FPR ----------------------------------------------------------
def test_tpr0_hand_computed_and_ties_with_the_top_negative_do_not_count():
    labels = [1, 1, 1, 1, 1, 0, 0, 0, 0]
    scores = [0.95, 0.9, 0.85, 0.5, 0.3, 0.8, 0.6, 0.4, 0.2]
    r = m.tpr0(labels, scores, bootstrap=0)
    assert r["value"] == pytest.approx(3 / 5) and r["false_positives"] == 0
    assert r["threshold"] == 0.85 and r["estimable"] and r["ci"] is None
    tied = [0.95, 0.8, 0.8, 0.5, 0.3, 0.8, 0.6, 0.4, 0.2]  # two lenses tie the top non-lens
    r = m.tpr0(labels, tied, bootstrap=0)
    assert r["value"] == pytest.approx(1 / 5) and r["threshold"] == 0.95
    # Every lens ties or falls below the top non-lens: nothing is selected, just above the top score.
    r = m.tpr0([1, 0, 1], [0.5, 0.5, 0.1], bootstrap=0)
    assert r["value"] == 0.0 and r["threshold"] > 0.5 and r["false_positives"] == 0


def test_tpr10_is_above_the_tenth_highest_negative():
    neg = np.arange(1, 21) / 100.0  # 0.01 .. 0.20: the 10th highest is 0.11
    pos = np.array([0.5, 0.12, 0.11, 0.105, 0.05])
    labels = np.r_[np.ones(5, int), np.zeros(20, int)]
    r = m.tpr10(labels, np.r_[pos, neg], bootstrap=0)
    assert r["value"] == pytest.approx(2 / 5)
    assert r["false_positives"] == 9 and r["max_false_positives"] == 9 and r["threshold"] == 0.12


@pytest.mark.parametrize("max_fp", [0, 3, 9, 25])
def test_tpr_within_false_positives_matches_brute_force_with_ties(max_fp):
    labels, scores = scored_set(80, 300, seed=max_fp, decimals=2)
    r = m.tpr_at_false_positives(labels, scores, max_fp, bootstrap=0)
    assert r["value"] == pytest.approx(brute_tpr_within_fp(labels, scores, max_fp), abs=1e-15)
    selected = scores >= r["threshold"]
    assert r["false_positives"] == np.sum(selected & (labels == 0)) <= max_fp
    assert np.mean(selected[labels == 1]) == pytest.approx(r["value"])


@pytest.mark.parametrize("target", [1e-2, 1e-3, 0.05])
def test_tpr_at_fpr_matches_sklearn_roc_curve(target):
    labels, scores = scored_set(300, 2000, seed=7, decimals=3)
    r = m.tpr_at_fpr(labels, scores, target, bootstrap=0)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert r["value"] == pytest.approx(tpr[fpr <= target + 1e-15].max(), abs=1e-15)
    assert r["fpr"] <= target and r["target_fpr"] == target
    assert r["max_false_positives"] == int(target * 2000 + 1e-9)


@pytest.mark.parametrize("target, n_enough", [(1e-2, 100), (1e-3, 1000)])
def test_tpr_at_fpr_not_estimable_with_too_few_negatives(target, n_enough):
    for n_neg, estimable in ((n_enough - 1, False), (n_enough, True)):
        labels, scores = scored_set(20, n_neg, seed=1)
        r = m.tpr_at_fpr(labels, scores, target, bootstrap=20)
        assert r["estimable"] is estimable
        if estimable:
            assert r["value"] is not None and r["reason"] is None and r["max_false_positives"] == 1
        else:
            assert r["value"] is None and r["ci"] is None
            assert f"at least {n_enough} negatives" in r["reason"] and str(n_neg) in r["reason"]


def test_tpr0_tpr10_not_estimable_without_enough_negatives_or_positives():
    labels, scores = scored_set(10, 9)
    assert not m.tpr10(labels, scores)["estimable"]
    assert "only 9 negatives" in m.tpr10(labels, scores)["reason"]
    assert m.tpr10(*scored_set(10, 10))["estimable"]
    assert not m.tpr0(np.ones(5, int), np.linspace(0, 1, 5))["estimable"]
    r = m.tpr0(np.zeros(5, int), np.linspace(0, 1, 5))
    assert not r["estimable"] and "no positives" in r["reason"]


def test_bad_input_is_a_kerasssl_error():
    with pytest.raises(KerassslError, match="binary labels"):
        m.tpr0([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(KerassslError, match="not finite"):
        m.tpr0([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(KerassslError, match="expected two"):
        m.tpr0([0, 1], [0.1, 0.2, 0.3])


# -- precision at a prevalence ---------------------------------------------------------
def test_purity_formula():
    assert m.purity(0.5, 0.001, 0.001) == pytest.approx(0.0005 / (0.0005 + 0.999 * 0.001))
    assert m.purity(1.0, 0.0, 0.001) == 1.0
    assert np.isnan(m.purity(0.0, 0.0, 0.001))


def test_precision_at_prevalence_hand_computed():
    # Ranked: P .9, N .85, P .8, N .4, P .3, P .2, N .1, N .05. At prevalence 0.5 the survey
    # fraction of a selection is (tp + fp) / 8; the top half is tp = fp = 2 (score >= 0.4).
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.3, 0.2, 0.85, 0.4, 0.1, 0.05]
    r = m.precision_at_prevalence(labels, scores, prevalence=0.5, top_fraction=0.5, bootstrap=0)
    assert r["value"] == pytest.approx(0.5) and r["threshold"] == 0.4
    assert (r["tpr"], r["fpr"]) == (0.5, 0.5)
    # The top quarter (tp + fp <= 2) stops at score >= 0.85: adding the lens at 0.8 makes 3.
    r = m.precision_at_prevalence(labels, scores, prevalence=0.5, top_fraction=0.25, bootstrap=0)
    assert r["threshold"] == 0.85 and r["value"] == pytest.approx(0.5)
    assert m.precision_at_prevalence(labels, scores, prevalence=0.5, top_k=2, survey_size=8,
                                     bootstrap=0) == r


def test_precision_at_prevalence_reweights_negatives_like_a_survey():
    labels, scores = scored_set(200, 3000, seed=9)
    prevalence, fraction = 0.01, 0.02
    r = m.precision_at_prevalence(labels, scores, prevalence=prevalence, top_fraction=fraction, bootstrap=0)
    best = None  # brute force: the largest selection whose survey fraction fits
    for t in np.unique(scores)[::-1]:
        sel = scores >= t
        tpr, fpr = np.mean(sel[labels == 1]), np.mean(sel[labels == 0])
        if prevalence * tpr + (1 - prevalence) * fpr <= fraction:
            best = (t, prevalence * tpr / (prevalence * tpr + (1 - prevalence) * fpr))
    assert r["threshold"] == best[0] and r["value"] == pytest.approx(best[1], abs=1e-15)
    # The split's raw precision at that threshold is far higher than the survey's.
    raw = np.mean(labels[scores >= r["threshold"]])
    assert raw > r["value"]


def test_precision_not_estimable_when_no_false_positive_fits():
    labels, scores = scored_set(50, 500)
    r = m.precision_at_prevalence(labels, scores, prevalence=0.001)  # needs 999 negatives
    assert not r["estimable"] and r["value"] is None and "at least 999 negatives" in r["reason"]
    assert m.precision_at_prevalence(*scored_set(50, 999), prevalence=0.001, bootstrap=0)["estimable"]
    with pytest.raises(KerassslError, match="survey_size"):
        m.precision_at_prevalence(labels, scores, top_k=10)


# -- bootstrap CIs and the report -------------------------------------------------------
def test_bootstrap_cis_are_seeded_and_contain_the_estimate():
    labels, scores = scored_set(400, 3000, seed=2)
    report = m.lens_finder_report(labels, scores, prevalence=0.001, bootstrap=300, seed=4)
    again = m.lens_finder_report(labels, scores, prevalence=0.001, bootstrap=300, seed=4)
    other = m.lens_finder_report(labels, scores, prevalence=0.001, bootstrap=300, seed=5)
    assert report == again and report != other
    metrics = [*report["tpr_at_fpr"].values(), report["tpr0"], report["tpr10"],
               report["precision_at_prevalence"]]
    for r in metrics:
        assert r["estimable"], r["reason"]
        low, high = r["ci"]
        assert low <= r["value"] <= high and low < high
    # One set of resamples for all: each CI is the one its own function gives.
    assert report["tpr10"] == m.tpr10(labels, scores, bootstrap=300, seed=4)
    assert report["tpr_at_fpr"]["1e-3"] == m.tpr_at_fpr(labels, scores, 1e-3, bootstrap=300, seed=4)


def test_lens_finder_report_keys_and_json():
    labels, scores = scored_set(30, 150)
    report = m.lens_finder_report(labels, scores, bootstrap=50)
    assert set(report["tpr_at_fpr"]) == {"1e-2", "1e-3"}
    assert report["tpr_at_fpr"]["1e-2"]["estimable"] and not report["tpr_at_fpr"]["1e-3"]["estimable"]
    assert report["tpr0"]["estimable"] and report["tpr10"]["estimable"]
    assert not report["precision_at_prevalence"]["estimable"]  # 150 negatives < 999
    assert report["precision_at_prevalence"]["prevalence"] == 0.001
    # One schema whether estimable or not: the same keys, None where there is no number.
    assert list(report["tpr_at_fpr"]["1e-2"]) == list(report["tpr_at_fpr"]["1e-3"])
    assert report["tpr_at_fpr"]["1e-3"]["threshold"] is None
    assert list(report["precision_at_prevalence"]) == list(
        m.precision_at_prevalence(labels, scores, prevalence=0.01, bootstrap=0))
    assert (report["n_positives"], report["n_negatives"]) == (30, 150)
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN / Infinity
    assert m.fpr_key(0.01) == "1e-2" and m.fpr_key(0.005) == "5e-3" and m.fpr_key(1e-3) == "1e-3"


def test_metrics_import_neither_tensorflow_nor_keras():
    import subprocess
    import sys

    code = ("import sys, numpy as np, kerasssl.metrics as m, kerasssl.completeness, kerasssl.plots\n"
            "m.lens_finder_report(np.r_[np.ones(20, int), np.zeros(200, int)], np.linspace(0, 1, 220),"
            " bootstrap=5)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'keras', 'jax')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_check_prevalence_names_the_key():
    assert m.check_prevalence("0.01") == 0.01
    for bad in (0, 1, 2.0, -0.1, "x", None, True):
        with pytest.raises(KerassslError, match=r"evaluate.prevalence \(--prevalence\) must be a fraction"):
            m.check_prevalence(bad)


def test_lens_finder_summary_line():
    labels, scores = scored_set(30, 150, seed=2)
    line = m.lens_finder_summary(m.lens_finder_report(labels, scores, bootstrap=20))
    rep = m.lens_finder_report(labels, scores, bootstrap=20)
    value, (low, high) = rep["tpr_at_fpr"]["1e-2"]["value"], rep["tpr_at_fpr"]["1e-2"]["ci"]
    assert line.startswith(f"TPR at FPR 1e-2 {value:.3f} (95% CI {low:.3f}-{high:.3f}), at FPR 1e-3 not estimable")
    assert f"TPR0 {rep['tpr0']['value']:.3f}" in line and "TPR10" in line and "\n" not in line

"""Every metric kerasssl reports, in one place: the AUCs and their bootstrap CI, Youden's
threshold, the confusion matrix, the numbers lens finders read, and completeness.

Conventions: label 1 is the positive (lens) class and a binary score is the lens
probability (column 1 of the softmax); more than two classes are averaged macro
one-vs-rest. An image is selected when ``score >= threshold``, so images with equal
scores are selected together: no operating point separates them.

Lenses are rare (~1 in 1,000 galaxies), so a lens finder reads the low false-positive
end of the ROC curve (Metcalf et al. 2019, the Strong Lens Finding Challenge): TPR at
FPR 1e-2 / 1e-3, TPR0 and TPR10 (:func:`tpr_at_fpr`, :func:`tpr_at_false_positives`),
the purity of the top of a survey at a stated prevalence (:func:`precision_at_prevalence`),
and completeness binned by Einstein radius, arc S/N and PSF (:mod:`kerasssl.completeness`). A
metric the split cannot resolve (too few negatives) is reported as not estimable, with
the reason, instead of a number.

NumPy only (no TensorFlow, no Keras); :func:`roc_auc`, :func:`pr_auc` and
:func:`youden_threshold` call scikit-learn (lazily), whose numbers the reports have
always given.

Example:
    >>> report = lens_finder_report(labels, probs[:, 1], prevalence=0.001)
    >>> report["tpr_at_fpr"]["1e-3"]["value"], report["tpr0"]["value"]
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from kerasssl.errors import KerassslError

FPR_TARGETS = (1e-2, 1e-3)
#: Lenses per survey image assumed by ``precision_at_prevalence`` (``evaluate.prevalence``).
DEFAULT_PREVALENCE = 0.001
_RELATIVE_EPS = 1e-9  # so that e.g. FPR 0.001 * 1000 negatives allows 1 false positive


# -- ROC-AUC, PR-AUC, Youden, confusion ----------------------------------------
def _as_probs(probs) -> np.ndarray:
    """(N, K) probabilities; a 1-D array is the binary lens score (column 1)."""
    probs = np.asarray(probs)
    return np.stack([1.0 - probs, probs], axis=1) if probs.ndim == 1 else probs


def roc_auc(labels, probs, *, classes: str = "all") -> float:
    """ROC-AUC: binary on column 1, macro one-vs-rest for more than two classes.

    Args:
        labels: int labels (N,).
        probs: probabilities (N, K), or the lens scores (N,) of a binary set.
        classes: ``"all"``: average over every class (NaN, with scikit-learn's
            warning, when one is absent from labels; evaluate's rule), or
            ``"present"``: over the classes in labels, NaN when fewer than two are
            (the kNN probe's rule on small validation splits).

    Example:
        >>> roc_auc([0, 1, 1], [0.2, 0.9, 0.4])
        1.0
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    probs = _as_probs(probs)
    if classes not in ("all", "present"):
        raise ValueError(f"classes must be 'all' or 'present', not {classes!r}")
    averaged = range(probs.shape[1])
    if classes == "present":
        averaged = np.unique(labels)
        if len(averaged) < 2:
            return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    # Macro one-vs-rest: the mean of the per-class binary AUCs (as scikit-learn's
    # multi_class="ovr", without its check that rows sum to 1 in float64).
    return float(np.mean([roc_auc_score(labels == k, probs[:, k]) for k in averaged]))


def per_class_auc(labels, probs, class_names: Sequence[str]) -> dict:
    """``{class name: one-vs-rest ROC-AUC}``; None for a class absent (or alone) in labels."""
    from sklearn.metrics import roc_auc_score

    labels, probs = np.asarray(labels), _as_probs(probs)
    out = {}
    for k, name in enumerate(class_names):
        positives = labels == k
        defined = 0 < positives.sum() < len(labels)
        out[name] = float(roc_auc_score(positives, probs[:, k])) if defined else None
    return out


def pr_auc(labels, probs) -> float:
    """Average precision of the positive class (macro one-vs-rest for multi-class).

    Example:
        >>> pr_auc([0, 1, 1], [0.2, 0.9, 0.4])
        1.0
    """
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels)
    probs = _as_probs(probs)
    if probs.shape[1] == 2:
        return float(average_precision_score(labels == 1, probs[:, 1]))
    onehot = np.eye(probs.shape[1])[labels]
    return float(average_precision_score(onehot, probs, average="macro"))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their mean rank (scipy's rankdata "average"; exact)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def fast_auc(labels, probs) -> float:
    """:func:`roc_auc` by ranks (Mann-Whitney U, ties counted half), for the bootstrap.

    The same value as scikit-learn's (up to rounding) without its per-call
    validation overhead (~30 ms a call on a busy 2-core machine).
    """
    labels, probs = np.asarray(labels), _as_probs(probs)
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    columns = [(labels == k, probs[:, k]) for k in classes]
    aucs = []
    for positive, score in columns:
        n_pos = int(positive.sum())
        n_neg = len(positive) - n_pos
        ranks = _average_ranks(score)
        aucs.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
    return float(np.mean(aucs))


def bootstrap_auc_ci(labels, probs, n_resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> list:
    """Percentile bootstrap confidence interval of :func:`roc_auc`.

    Examples are resampled with replacement; resamples that miss a class (AUC
    undefined) are redrawn, not dropped, so the interval is built from
    ``n_resamples`` values.

    Args:
        labels: int array (N,).
        probs: probabilities (N, K), or binary lens scores (N,).
        n_resamples: number of bootstrap resamples.
        seed: seed of the resampling.
        level: coverage of the interval.

    Returns:
        ``[low, high]``.

    Example:
        >>> low, high = bootstrap_auc_ci(labels, probs, 1000, seed=0)
    """
    labels, probs = np.asarray(labels), _as_probs(probs)
    n_classes = probs.shape[1]
    if len(np.unique(labels)) < 2:
        raise KerassslError("ROC-AUC needs both classes in the evaluated split")
    rng = np.random.default_rng(seed)
    values = []
    n = len(labels)
    max_draws = 20 * n_resamples
    draws = 0
    while len(values) < n_resamples and draws < max_draws:
        draws += 1
        idx = rng.integers(0, n, size=n)
        sample = labels[idx]
        if len(np.unique(sample)) < (2 if n_classes == 2 else n_classes):
            continue
        values.append(fast_auc(sample, probs[idx]))
    if not values:
        raise KerassslError("bootstrap failed: too few examples of a class in the split")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return [float(low), float(high)]


def youden_threshold(labels, scores) -> float:
    """Threshold on the lens score that maximises TPR - FPR (Youden's J), at most 1.

    Example:
        >>> youden_threshold([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.8])
        0.8
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(np.asarray(labels) == 1, np.asarray(scores))
    best = int(np.argmax(tpr - fpr))
    # roc_curve's first threshold is +inf (select nothing).
    return float(min(thresholds[best], 1.0))


def confusion(labels, predictions, n_classes: int) -> list:
    """Confusion matrix as nested lists: rows = true class, columns = predicted.

    Example:
        >>> confusion([0, 1, 1], [0, 0, 1], 2)
        [[1, 0], [1, 1]]
    """
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix.tolist()


# -- the low-FPR end of the ROC curve --------------------------------------------
def binary_set(labels, scores):
    """Validated (positive mask, float64 scores) of a binary set; one-line KerassslError otherwise."""
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise KerassslError(f"labels {labels.shape} and lens scores {scores.shape}: expected two (N,) arrays")
    if not np.all(np.isin(labels, (0, 1))):
        raise KerassslError("lens-finder metrics need binary labels (1 = lens, 0 = non-lens)")
    if not len(scores) or not np.all(np.isfinite(scores)):
        bad = int(np.sum(~np.isfinite(scores)))
        raise KerassslError(f"{bad} of {len(scores)} lens scores are not finite" if bad else "no lens scores")
    return labels == 1, scores


class _Curve:
    """True and false positives of every operating point, highest threshold first.

    Point 0 selects nothing; point i > 0 selects ``score >= distinct[i - 1]``
    (the i-th highest distinct score), so tied images enter together.
    """

    def __init__(self, positive, scores):
        order = np.argsort(-scores, kind="stable")
        ranked = scores[order]
        is_pos = positive[order]
        new_run = np.r_[True, ranked[1:] != ranked[:-1]]
        self.distinct = ranked[new_run]
        run = np.cumsum(new_run) - 1  # tie run (operating point - 1) of each ranked image
        self.runs = [run[is_pos], run[~is_pos]]
        self.n_pos, self.n_neg = int(positive.sum()), int((~positive).sum())

    @staticmethod
    def _cumulative(per_run):
        zero = np.zeros(per_run.shape[:-1] + (1,))
        return np.concatenate([zero, np.cumsum(per_run, axis=-1)], axis=-1)

    def counts(self):
        """(tp, fp), each (G + 1,)."""
        g = len(self.distinct)
        return tuple(self._cumulative(np.bincount(r, minlength=g)) for r in self.runs)

    def threshold(self, point: int) -> float:
        """The threshold of a point; point 0 is just above the highest score."""
        return float(self.distinct[point - 1]) if point else float(np.nextafter(self.distinct[0], np.inf))

    def resampled_counts(self, n_resamples: int, seed: int, chunk_values: int = 1_000_000):
        """Yield (tp, fp) of (b, G + 1) for a stratified bootstrap, in chunks of b resamples.

        Positives and negatives are resampled separately, so every resample keeps
        their numbers (and so the false-positive budget of an FPR target).
        """
        rng = np.random.default_rng(seed)
        g = len(self.distinct)
        per_chunk = max(1, chunk_values // (self.n_pos + self.n_neg + g))
        for start in range(0, n_resamples, per_chunk):
            b = min(per_chunk, n_resamples - start)
            out = []
            for run in self.runs:
                drawn = run[rng.integers(0, len(run), size=(b, len(run)))] + g * np.arange(b)[:, None]
                out.append(self._cumulative(np.bincount(drawn.ravel(), minlength=b * g).reshape(b, g)))
            yield out[0], out[1]


def _pick(values, point):
    return np.take_along_axis(values, point[..., None], axis=-1)[..., 0]


def _point_within_fp(fp, max_fp):
    """Index of the last (largest) selection with at most max_fp false positives."""
    return np.sum(fp <= max_fp, axis=-1) - 1


def purity(tpr, fpr, prevalence: float):
    """Expected precision of a selection in a survey where positives have this prevalence.

    ``prevalence * TPR / (prevalence * TPR + (1 - prevalence) * FPR)``: the
    expected lenses over all candidates selected (NaN when nothing is selected).

    Example:
        >>> purity(0.5, 0.001, 0.001)   # half the lenses, 1 in 1,000 non-lenses
        0.333...
    """
    tpr, fpr = np.asarray(tpr, np.float64), np.asarray(fpr, np.float64)
    selected = prevalence * tpr + (1.0 - prevalence) * fpr
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(selected > 0, prevalence * tpr / np.where(selected > 0, selected, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


_NO_POSITIVES = "no positives (lenses) in the split"


def _tpr_spec(curve, max_fp, reason=None):
    """(result without CI, bootstrap statistic or None) of the TPR within max_fp false positives."""
    if reason is None and curve.n_pos == 0:
        reason = _NO_POSITIVES
    elif reason is None and curve.n_neg <= max_fp:
        reason = f"only {curve.n_neg} negatives: every threshold has at most {max_fp} false positives"
    out = {"value": None, "ci": None, "estimable": reason is None, "reason": reason, "threshold": None,
           "false_positives": None, "max_false_positives": int(max_fp),
           "n_positives": curve.n_pos, "n_negatives": curve.n_neg}
    if reason is not None:
        return out, None
    tp, fp = curve.counts()
    point = int(_point_within_fp(fp, max_fp))
    out.update(value=float(tp[point] / curve.n_pos), threshold=curve.threshold(point),
               false_positives=int(fp[point]))
    return out, lambda tp, fp: _pick(tp, _point_within_fp(fp, max_fp)) / curve.n_pos


def _fpr_spec(curve, target):
    max_fp = math.floor(target * curve.n_neg * (1 + _RELATIVE_EPS))
    reason = _NO_POSITIVES if curve.n_pos == 0 else None
    if reason is None and max_fp < 1:
        reason = (f"needs at least {math.ceil(1 / target * (1 - _RELATIVE_EPS))} negatives to "
                  f"resolve FPR {target:g}; the split has {curve.n_neg}")
    out, statistic = _tpr_spec(curve, max_fp, reason)
    out = {"target_fpr": float(target), **out,
           "fpr": out["false_positives"] / curve.n_neg if out["estimable"] else None}
    return out, statistic


def _precision_spec(curve, prevalence, top_fraction):
    if not 0 < prevalence < 1 or not 0 < top_fraction <= 1:
        raise KerassslError(f"prevalence {prevalence:g} and top fraction {top_fraction:g} must lie in (0, 1)")
    out = {"value": None, "ci": None, "estimable": True, "reason": None, "threshold": None,
           "tpr": None, "fpr": None, "prevalence": float(prevalence), "top_fraction": float(top_fraction),
           "definition": "prevalence*TPR / (prevalence*TPR + (1-prevalence)*FPR) at the largest "
                         "selection whose survey fraction prevalence*TPR + (1-prevalence)*FPR "
                         "<= top_fraction"}
    need = (1 - prevalence) / top_fraction  # negatives for one false positive to fit the budget
    if curve.n_pos == 0:
        out.update(estimable=False, reason=_NO_POSITIVES)
    elif curve.n_neg < need * (1 - _RELATIVE_EPS):
        out.update(estimable=False, reason=(
            f"needs at least {math.ceil(need * (1 - _RELATIVE_EPS))} negatives to resolve the top "
            f"{top_fraction:g} of a survey at prevalence {prevalence:g}; the split has {curve.n_neg}"))
    if not out["estimable"]:
        return out, None

    def statistic(tp, fp):
        tpr, fpr = tp / curve.n_pos, fp / curve.n_neg
        fraction = prevalence * tpr + (1 - prevalence) * fpr
        point = np.sum(fraction <= top_fraction * (1 + _RELATIVE_EPS), axis=-1) - 1
        return purity(_pick(tpr, point), _pick(fpr, point), prevalence), point

    tp, fp = curve.counts()
    value, point = statistic(tp, fp)
    point = int(point)
    out.update(value=None if np.isnan(value) else float(value), threshold=curve.threshold(point),
               tpr=float(tp[point] / curve.n_pos), fpr=float(fp[point] / curve.n_neg))
    if out["value"] is None:
        out.update(estimable=False,
                   reason="the highest score is shared by more images than the top fraction holds")
        return out, None
    return out, lambda tp, fp: statistic(tp, fp)[0]


def _fill_cis(curve, specs, bootstrap, seed, level):
    """Percentile bootstrap CIs of the estimable specs, from one set of resamples."""
    wanted = [(out, stat) for out, stat in specs if stat is not None]
    if bootstrap <= 0 or not wanted:
        return [out for out, _ in specs]
    values = [[] for _ in wanted]
    for tp, fp in curve.resampled_counts(bootstrap, seed):
        for column, (_, stat) in zip(values, wanted):
            column.append(stat(tp, fp))
    alpha = (1.0 - level) / 2.0
    for column, (out, _) in zip(values, wanted):
        column = np.concatenate(column)
        column = column[np.isfinite(column)]  # a resample that selects nothing has no precision
        if len(column):
            out["ci"] = [float(q) for q in np.quantile(column, [alpha, 1.0 - alpha])]
    return [out for out, _ in specs]


def tpr_at_false_positives(labels, scores, max_false_positives: int, *, bootstrap: int = 1000,
                           seed: int = 0, level: float = 0.95) -> dict:
    """The largest TPR with at most ``max_false_positives`` negatives selected.

    That is the fraction of positives scoring strictly above the
    ``(max_false_positives + 1)``-th highest negative score. TPR0 (budget 0) and
    TPR10 (budget 9) grow harder with more negatives: compare them between test
    sets of one size. Not estimable when there are no more negatives than the
    budget (every threshold qualifies).

    Args:
        labels: 0/1 labels (N,), 1 = lens.
        scores: lens scores (N,).
        max_false_positives: the false-positive budget (0 for TPR0, 9 for TPR10).
        bootstrap: stratified bootstrap resamples for the CI (0: no CI).
        seed / level: seed and coverage of the CI.

    Returns:
        ``{"value", "ci", "estimable", "reason", "threshold", "false_positives",
        "max_false_positives", "n_positives", "n_negatives"}``; value, ci,
        threshold and false_positives None when not estimable (reason says why).

    Example:
        >>> tpr_at_false_positives([1, 1, 0, 1], [0.9, 0.8, 0.7, 0.6], 0)["value"]
        0.666...
    """
    curve = _Curve(*binary_set(labels, scores))
    return _fill_cis(curve, [_tpr_spec(curve, max_false_positives)], bootstrap, seed, level)[0]


def tpr0(labels, scores, **kwargs) -> dict:
    """TPR before the first false positive (Metcalf et al. 2019); see :func:`tpr_at_false_positives`."""
    return tpr_at_false_positives(labels, scores, 0, **kwargs)


def tpr10(labels, scores, **kwargs) -> dict:
    """TPR with fewer than 10 false positives (Metcalf et al. 2019); see :func:`tpr_at_false_positives`."""
    return tpr_at_false_positives(labels, scores, 9, **kwargs)


def tpr_at_fpr(labels, scores, target: float, *, bootstrap: int = 1000, seed: int = 0,
               level: float = 0.95) -> dict:
    """The largest TPR of a threshold whose FPR <= target, with a bootstrap CI.

    Not estimable with fewer than ``1 / target`` negatives: then no threshold
    has 0 < FPR <= target and the value would be TPR0 in disguise.

    Args:
        labels / scores: 0/1 labels and lens scores (N,).
        target: the FPR, e.g. 1e-3.
        bootstrap / seed / level: as :func:`tpr_at_false_positives`.

    Returns:
        :func:`tpr_at_false_positives`'s dict plus ``target_fpr`` and the
        achieved ``fpr``.

    Example:
        >>> tpr_at_fpr(labels, scores, 1e-2)["value"]
    """
    curve = _Curve(*binary_set(labels, scores))
    return _fill_cis(curve, [_fpr_spec(curve, target)], bootstrap, seed, level)[0]


def _top_fraction(prevalence, top_fraction, top_k, survey_size):
    if top_k is not None:
        if not survey_size:
            raise KerassslError("top_k needs survey_size (the number of images in the survey)")
        return top_k / survey_size
    return prevalence if top_fraction is None else top_fraction


def precision_at_prevalence(labels, scores, *, prevalence: float = DEFAULT_PREVALENCE,
                            top_fraction: Optional[float] = None, top_k: Optional[int] = None,
                            survey_size: Optional[int] = None, bootstrap: int = 1000,
                            seed: int = 0, level: float = 0.95) -> dict:
    """Precision of the top of a survey in which lenses have the given prevalence.

    The split's own lens fraction is far above a survey's, so its raw precision
    would flatter the model. Instead negatives are re-weighted to the survey:
    a threshold with rates TPR and FPR selects the fraction
    ``f = prevalence*TPR + (1-prevalence)*FPR`` of the survey, with expected
    precision (purity) ``prevalence*TPR / f`` (:func:`purity`). The top k of a
    survey of N is the largest selection (highest scores first, ties together)
    with ``f <= k / N``. Default ``k / N = prevalence``: inspect as many
    candidates as the survey holds lenses (then precision equals recall).
    Not estimable with fewer than ``(1 - prevalence) / (k / N)`` negatives: no
    false positive would fit the budget.

    Args:
        labels / scores: 0/1 labels and lens scores (N,).
        prevalence: lenses per survey image.
        top_fraction: k / N; or give ``top_k`` and ``survey_size``.
        bootstrap / seed / level: as :func:`tpr_at_false_positives`.

    Returns:
        ``{"value", "ci", "estimable", "reason", "prevalence", "top_fraction",
        "threshold", "tpr", "fpr", "definition"}``.

    Example:
        >>> precision_at_prevalence(labels, scores, prevalence=0.001, top_k=100,
        ...                         survey_size=100_000)["value"]
    """
    curve = _Curve(*binary_set(labels, scores))
    spec = _precision_spec(curve, prevalence, _top_fraction(prevalence, top_fraction, top_k, survey_size))
    return _fill_cis(curve, [spec], bootstrap, seed, level)[0]


def check_prevalence(value, key: str = "evaluate.prevalence") -> float:
    """``value`` as a float in (0, 1), else a one-line KerassslError naming the config key.

    Example:
        >>> check_prevalence(0.001)
        0.001
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not 0.0 < number < 1.0:
        raise KerassslError(f"{key} (--prevalence) must be a fraction in (0, 1), e.g. 0.001 "
                            f"(1 lens in 1,000 images), got {value!r}")
    return number


def lens_finder_summary(report: dict) -> str:
    """One line of a report's lens-finder numbers: TPR at each FPR target, TPR0, TPR10.

    Example:
        >>> lens_finder_summary(report)
        'TPR at FPR 1e-2 0.620 (95% CI 0.480-0.750), at FPR 1e-3 not estimable (needs at least 1000 negatives ...); TPR0 ...'
    """
    def shown(metric):
        if not metric.get("estimable"):
            return f"not estimable ({(metric.get('reason') or 'no value').replace('; ', ', ')})"
        ci = metric.get("ci")
        return f"{metric['value']:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")

    parts = [f"at FPR {key} {shown(metric)}" for key, metric in report["tpr_at_fpr"].items()]
    return ("TPR " + ", ".join(parts) + f"; TPR0 {shown(report['tpr0'])}, TPR10 {shown(report['tpr10'])}")


def fpr_key(target: float) -> str:
    """The report's key of an FPR target: 0.01 -> "1e-2", 0.005 -> "5e-3"."""
    mantissa, exponent = f"{target:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def lens_finder_report(labels, scores, *, prevalence: float = DEFAULT_PREVALENCE,
                       top_fraction: Optional[float] = None,
                       fpr_targets: Sequence[float] = FPR_TARGETS, bootstrap: int = 1000,
                       seed: int = 0, level: float = 0.95) -> dict:
    """The lens-finder metrics of one split as a JSON-ready dict (one bootstrap for all).

    Args:
        labels / scores: 0/1 labels and lens scores (N,).
        prevalence / top_fraction: of :func:`precision_at_prevalence`.
        fpr_targets: FPRs of ``tpr_at_fpr``.
        bootstrap / seed / level: stratified percentile bootstrap of every CI.

    Returns:
        ``{"tpr_at_fpr": {"1e-2": {...}, "1e-3": {...}}, "tpr0", "tpr10",
        "precision_at_prevalence", "n_positives", "n_negatives", "selection",
        "ci_method"}``; each metric as :func:`tpr_at_fpr` describes.

    Example:
        >>> rep = lens_finder_report(y_test, probs[:, 1], prevalence=0.001, bootstrap=1000)
        >>> rep["tpr_at_fpr"]["1e-2"]["value"], rep["tpr10"]["estimable"]
    """
    curve = _Curve(*binary_set(labels, scores))
    specs = [_fpr_spec(curve, t) for t in fpr_targets]
    specs += [_tpr_spec(curve, k) for k in (0, 9)]
    specs.append(_precision_spec(curve, prevalence, prevalence if top_fraction is None else top_fraction))
    results = _fill_cis(curve, specs, bootstrap, seed, level)
    n_fpr = len(fpr_targets)
    method = (f"percentile bootstrap, positives and negatives resampled separately, "
              f"{bootstrap} resamples, seed {seed}, {100 * level:g}%")
    return {"tpr_at_fpr": {fpr_key(t): r for t, r in zip(fpr_targets, results)},
            "tpr0": results[n_fpr], "tpr10": results[n_fpr + 1],
            "precision_at_prevalence": results[n_fpr + 2],
            "n_positives": curve.n_pos, "n_negatives": curve.n_neg,
            "selection": "score >= threshold", "ci_method": method if bootstrap > 0 else None}

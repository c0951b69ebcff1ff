"""What the target's labels say, when some are given: the measured metrics with exact intervals, and how many
labelled images a measurement of a given precision needs.

A measured accuracy is a proportion of the labelled images, and those are a sample of the site's patients: 0.80 on
20 images is anything from 0.56 to 0.94. Its interval is the exact binomial (Clopper-Pearson) one, taken from
``scipy.stats.binomtest``; it holds at any sample size, where the normal approximation fails for small samples and
shares near 0 or 1. It assumes the labelled images are a random sample of the target (a consecutive or random
series, not the hard cases a reader picked). The balanced accuracy and the AUROC, not proportions, get a posterior
and a stratified bootstrap interval (:func:`balanced_accuracy_interval`, :func:`auroc_interval`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import beta, binomtest

__all__ = ["INTERVAL_METHOD", "auroc_interval", "balanced_accuracy_interval", "labelling_plan", "labels_to_measure",
           "measured_metrics", "proportion_interval"]

INTERVAL_METHOD = ("exact binomial (Clopper-Pearson; balanced accuracy: the posterior of the mean of the classes' "
                   "sensitivities, Brodersen et al. 2010; AUROC: percentile bootstrap within each class), the labelled "
                   "images taken as a random sample of the target")
HALF_WIDTH = 0.05
"""The precision :func:`labels_to_measure` plans for: the accuracy within ±0.05."""


def proportion_interval(successes: int, trials: int, level: float) -> list[float] | None:
    """The exact ``level`` interval of a proportion ``successes / trials``; None without trials."""
    if trials == 0:
        return None
    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="exact")
    return [float(ci.low), float(ci.high)]


def balanced_accuracy_interval(hits: np.ndarray, counts: np.ndarray, level: float, draws: int = 20_000,
                               seed: int = 0) -> list[float] | None:
    """The ``level`` interval of a balanced accuracy (the mean of the per-class sensitivities ``hits / counts`` over
    the classes present): the equal-tailed interval of its posterior, the mean of independent Beta(k + 1, n - k + 1)
    posteriors of the classes' sensitivities (Brodersen et al. 2010, ICPR), sampled (``draws``, seeded). A mean of
    proportions has no exact binomial interval; this one keeps each class's own sample size."""
    present = counts > 0
    if not present.any():
        return None
    hits, counts = hits[present], counts[present]
    rng = np.random.default_rng(seed)
    means = rng.beta(hits + 1.0, counts - hits + 1.0, size=(draws, len(counts))).mean(axis=1)
    tail = (1.0 - level) / 2
    point = float(np.mean(hits / counts))
    # the uniform prior pulls the posterior away from 0 and 1: every class right gives a posterior interval ending
    # below the measured 1.0, so the interval is widened to its point (exact intervals end at 0 or 1 there too)
    return [min(float(np.quantile(means, tail)), point), max(float(np.quantile(means, 1.0 - tail)), point)]


def auroc_interval(scores: np.ndarray, truth: np.ndarray, level: float, replicates: int = 2000,
                   seed: int = 0) -> list[float] | None:
    """The ``level`` interval of a measured AUROC: percentile bootstrap with the positives and negatives resampled
    among themselves (pROC's ``ci.auc`` default, stratified), so every replicate has both classes. Replicates are
    row counts in batches (:func:`~shiftkit.estimate.bootstrap.resample_counts`), the AUROC of each from one sort
    (:func:`~shiftkit.estimate.metrics.weighted_auroc`). None without both classes."""
    from shiftkit.estimate.bootstrap import percentile_interval, resample_counts
    from shiftkit.estimate.metrics import weighted_auroc

    truth = np.asarray(truth, dtype=bool)
    if truth.all() or not truth.any():
        return None
    rng = np.random.default_rng(seed)
    batch = max(1, 4_000_000 // len(truth))
    values = []
    for start in range(0, replicates, batch):
        counts = resample_counts(rng, len(truth), min(batch, replicates - start), truth.astype(np.int64))
        values.append(weighted_auroc(scores, counts * truth, counts * ~truth))
    lo, hi = percentile_interval(np.concatenate(values), level)
    return [float(lo), float(hi)]


def _share(successes: int, trials: int, level: float) -> tuple[float | None, list[float] | None]:
    return (float(successes / trials) if trials else None), proportion_interval(successes, trials, level)


def measured_metrics(probabilities: np.ndarray, labels: np.ndarray, classes: list, positive: Any,
                     level: float = 0.95) -> dict[str, Any]:
    """The target's true metrics from its labels, in the estimates' terms: accuracy, balanced accuracy (the mean
    per-class sensitivity; not ``finetune``'s macro accuracy, the paper's mean one-vs-rest accuracy), per-class
    sensitivity and specificity (``per_class``), and for a binary task the positive class's sensitivity,
    specificity, PPV, NPV and AUROC. Every proportion has its exact ``level`` interval under ``intervals``, the
    balanced accuracy its posterior interval (:func:`balanced_accuracy_interval`), the AUROC a stratified bootstrap
    one (:func:`auroc_interval`)."""
    predicted = probabilities.argmax(axis=1)
    present = [k for k in range(len(classes)) if np.any(labels == k)]
    accuracy, accuracy_interval = _share(int(np.sum(predicted == labels)), len(labels), level)
    out: dict[str, Any] = {"n": int(len(labels)), "level": level, "interval_method": INTERVAL_METHOD,
                           "accuracy": accuracy,
                           "balanced_accuracy": float(np.mean([np.mean(predicted[labels == k] == k) for k in present])),
                           "intervals": {"accuracy": accuracy_interval}}
    counts = np.bincount(labels, minlength=len(classes))
    hits = np.bincount(labels[predicted == labels], minlength=len(classes))
    out["intervals"]["balanced_accuracy"] = balanced_accuracy_interval(hits, counts, level)
    out["per_class"] = {}
    for k in range(len(classes)):
        truth = labels == k
        sensitivity = _share(int(np.sum(truth & (predicted == k))), int(truth.sum()), level)
        specificity = _share(int(np.sum(~truth & (predicted != k))), int((~truth).sum()), level)
        out["per_class"][str(classes[k])] = {"sensitivity": sensitivity[0], "specificity": specificity[0],
                                             "intervals": {"sensitivity": sensitivity[1],
                                                           "specificity": specificity[1]}}
    if len(classes) == 2:
        from sklearn.metrics import roc_auc_score

        k = classes.index(positive)
        truth, called = labels == k, predicted == k
        shares = {"sensitivity": (truth & called, truth), "specificity": (~truth & ~called, ~truth),
                  "ppv": (truth & called, called), "npv": (~truth & ~called, ~called)}
        for name, (right, among) in shares.items():
            out[name], out["intervals"][name] = _share(int(right.sum()), int(among.sum()), level)
        both = 0 < truth.sum() < len(truth)
        out["auroc"] = float(roc_auc_score(truth, probabilities[:, k])) if both else None
        out["intervals"]["auroc"] = auroc_interval(probabilities[:, k], truth, level) if both else None
    return out


def labels_to_measure(interval: Any, level: float, half_width: float = HALF_WIDTH, most: int = 20_000) -> int:
    """How many randomly chosen target images to label so that the exact ``level`` interval of their measured
    accuracy is at most ±``half_width`` wide, when the accuracy is ``p``: the value in the estimate's ``interval``
    nearest 0.5, the one that needs the most. Planned with the exact interval the report then shows, since the
    usual ``z² p (1 - p) / half_width²`` (Cochran 1977; 385 at p = 0.5) asks for too few near 0 or 1 (1 image at
    p = 1). Capped at ``most``. The bounds are the Clopper-Pearson ones written as Beta quantiles, the form
    ``binomtest`` evaluates one sample size at a time, here for every size at once."""
    lo, hi = interval
    p = min(max(0.5, lo), hi)
    n = np.arange(1, most + 1)
    k = np.round(p * n)
    tail = (1.0 - level) / 2
    with np.errstate(invalid="ignore"):
        lower = np.where(k > 0, beta.ppf(tail, k, n - k + 1), 0.0)
        upper = np.where(k < n, beta.ppf(1.0 - tail, k + 1, n - k), 1.0)
    enough = np.flatnonzero((upper - lower) / 2 <= half_width)
    return int(n[enough[0]]) if len(enough) else most


def labelling_plan(result: dict[str, Any], n_target: int, n_labelled: int) -> dict[str, Any]:
    """What the reports advise, from an estimate's ``result`` (its ``default_method`` and ``level``): how many target
    images to label to measure the accuracy within ±0.05, planned from the default method's accuracy interval
    ([0, 1] when it has none), beside the target's size and how many are labelled."""
    interval = next((r["interval"] for r in result["estimates"]
                     if r["method"] == result["default_method"] and r["metric"] == "accuracy"), None)
    if not interval or None in interval:  # a bootstrap with no finite replicate has no interval
        interval = (0.0, 1.0)
    images = labels_to_measure(interval, result["level"])
    return {"half_width": HALF_WIDTH, "level": result["level"], "images": images, "target_images": int(n_target),
            "labelled": int(n_labelled)}

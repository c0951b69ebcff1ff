"""Classification metrics from (estimated) confusion matrices, vectorised over bootstrap replicates.

Every function takes a leading replicate axis ``B`` so that one call serves the point estimate (``B = 1``) and a
thousand bootstrap replicates alike. scikit-learn's metrics take one sample at a time and validate their inputs on
every call (about 1 ms against microseconds for the arithmetic), which is why the few formulas below are written
out; :func:`weighted_auroc` is checked against ``sklearn.metrics.roc_auc_score`` with ``sample_weight`` in the tests.

Confusion matrices are *joint* and *normalised*: ``C[b, i, j] = P(y = i, yhat = j)`` (rows: true class, columns:
prediction, scikit-learn's orientation), summing to 1 over ``i, j``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["confusion_rates", "joint_confusion", "predictive_values", "weighted_auroc"]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where the denominator is 0 (a class no replicate can measure)."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def joint_confusion(labels: np.ndarray, pred: np.ndarray, n_classes: int, weights: np.ndarray) -> np.ndarray:
    """Weighted joint confusion matrices (B x K x K) of ``labels`` against ``pred`` for each row of ``weights``
    (B x n: bootstrap counts, times importance weights where used), normalised to sum 1."""
    k = n_classes
    cell = np.asarray(labels) * k + np.asarray(pred)
    onehot = np.zeros((len(cell), k * k))
    onehot[np.arange(len(cell)), cell] = 1.0
    counts = np.asarray(weights, dtype=np.float64) @ onehot
    return (counts / counts.sum(axis=1, keepdims=True)).reshape(-1, k, k)


def confusion_rates(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Rates of joint confusion matrices (B x K x K).

    Returns ``accuracy`` (B), ``balanced_accuracy`` (B; the mean per-class sensitivity, i.e. balanced accuracy),
    ``sensitivity`` and ``specificity`` (B x K; one class against the rest: P(yhat = k | y = k) and
    P(yhat != k | y != k)) and ``prevalence`` (B x K; the row sums, the class frequencies the matrix implies).
    """
    c = np.asarray(confusion, dtype=np.float64)
    diag = np.diagonal(c, axis1=1, axis2=2)
    prevalence = c.sum(axis=2)
    predicted = c.sum(axis=1)
    sensitivity = _ratio(diag, prevalence)
    specificity = _ratio(1.0 - prevalence - (predicted - diag), 1.0 - prevalence)
    return {
        "accuracy": diag.sum(axis=1),
        "balanced_accuracy": np.nanmean(sensitivity, axis=1) if sensitivity.size else sensitivity,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "prevalence": prevalence,
    }


def predictive_values(sensitivity: np.ndarray, specificity: np.ndarray,
                      prevalence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PPV and NPV by Bayes' rule from sensitivity, specificity and the prevalence they are to hold at.

    ``PPV = s q / (s q + (1 - sp)(1 - q))``, ``NPV = sp (1 - q) / (sp (1 - q) + (1 - s) q)``. Sensitivity and
    specificity are properties of P(yhat | y), which a pure prevalence (label) shift leaves unchanged; PPV and NPV are
    not, so they must be recomputed at the target's prevalence rather than carried over from the source.
    """
    s, sp, q = (np.asarray(a, dtype=np.float64) for a in (sensitivity, specificity, prevalence))
    true_pos, false_pos = s * q, (1.0 - sp) * (1.0 - q)
    true_neg, false_neg = sp * (1.0 - q), (1.0 - s) * q
    return _ratio(true_pos, true_pos + false_pos), _ratio(true_neg, true_neg + false_neg)


def weighted_auroc(scores: np.ndarray, positive_mass: np.ndarray, negative_mass: np.ndarray) -> np.ndarray:
    """AUROC (Mann-Whitney form, ties count one half) of ``scores`` (n) with per-row positive and negative masses
    (B x n), one value per replicate.

    With 0/1 masses times bootstrap counts this is the weighted AUROC of labelled data (``roc_auc_score`` with
    ``sample_weight``); with calibrated posteriors as masses it is the expected AUROC under those posteriors (the
    ratio of expected pair counts, as NannyML's CBPE estimates ROC AUC). One sort of ``scores`` serves all
    replicates: per tie group, ``AUC = sum_g a_g (N_below_g + b_g / 2) / (A B)``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    pos = np.add.reduceat(np.atleast_2d(positive_mass)[:, order], starts, axis=1)
    neg = np.add.reduceat(np.atleast_2d(negative_mass)[:, order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    pairs = np.sum(pos * (below + 0.5 * neg), axis=1)
    return _ratio(pairs, pos.sum(axis=1) * neg.sum(axis=1))

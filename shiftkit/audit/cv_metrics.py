"""Scores of out-of-fold predictions with bootstrap intervals: balanced accuracy and (one-vs-rest macro) AUC, and the
paired difference of two pipelines scored on the same rows (the leakage checks compare an in-fold fit with an
all-rows fit this way).

The AUC is the Mann-Whitney form, ``(rank sum of the positives - n+(n+ + 1)/2) / (n+ n-)`` with average ranks for
ties, which is what scikit-learn's ``roc_auc_score`` computes; it is written out here because a bootstrap needs it
hundreds of times and ``rankdata`` does all classes in one call (the tests check it against scikit-learn).
Resamples are drawn within each true class, so every class keeps its count and the AUC stays defined.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import rankdata

BOOTSTRAP = 200
LEVEL = 0.95


def codes_of(y: np.ndarray, classes: list) -> np.ndarray:
    """Each row's class as its index in ``classes``."""
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[v] for v in y.tolist()], dtype=int)


def balanced_accuracy(codes: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Mean per-class recall over the classes present in ``codes``."""
    recalls = [np.mean(predicted[codes == c] == c) for c in range(n_classes) if np.any(codes == c)]
    return float(np.mean(recalls))


def auc(codes: np.ndarray, scores: np.ndarray) -> float | None:
    """Binary (``scores``: n, the positive class is code 1) or one-vs-rest macro AUC (``scores``: n x classes)
    over the classes present with both positives and negatives; None when no class qualifies."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores, classes = scores[:, None], [1]
    else:
        classes = list(range(scores.shape[1]))
    ranks = rankdata(scores, axis=0)
    values = []
    for j, c in enumerate(classes):
        positive = codes == c
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        values.append((ranks[positive, j].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(values)) if values else None


def resamples(codes: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """``count`` bootstrap index sets, each drawn within every class (stratified)."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(codes == c) for c in np.unique(codes)]
    return [np.concatenate([rng.choice(g, len(g), replace=True) for g in groups]) for _ in range(count)]


def interval(values: list[float], level: float = LEVEL) -> list[float] | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if len(finite) < 10:
        return None
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]


def scores(codes: np.ndarray, proba: np.ndarray, *, chance: float, bootstrap: int = BOOTSTRAP,
           seed: int = 0) -> dict:
    """Balanced accuracy (arg-max prediction) and AUC of out-of-fold probabilities (n x classes), each with a
    percentile bootstrap interval; ``above_chance`` when the balanced accuracy's lower bound exceeds ``chance``."""
    n_classes = proba.shape[1]
    predicted = proba.argmax(axis=1)
    score = proba[:, 1] if n_classes == 2 else proba
    out = {"balanced_accuracy": balanced_accuracy(codes, predicted, n_classes), "auc": auc(codes, score),
           "n": int(len(codes))}
    if bootstrap:
        draws = resamples(codes, bootstrap, seed)
        out["balanced_accuracy_ci"] = interval([balanced_accuracy(codes[i], predicted[i], n_classes) for i in draws])
        out["auc_ci"] = interval([auc(codes[i], score[i]) for i in draws])
        low = (out["balanced_accuracy_ci"] or [None])[0]
        out["above_chance"] = None if low is None else bool(low > chance)
    return out


def paired_difference(codes: np.ndarray, metric: Callable[[np.ndarray], float | None],
                      other: Callable[[np.ndarray], float | None], *, bootstrap: int = BOOTSTRAP,
                      seed: int = 0) -> dict:
    """``metric - other`` on all rows and its bootstrap interval, both computed on the same resampled rows
    (``metric``/``other`` take an index array)."""
    every = np.arange(len(codes))
    a, b = metric(every), other(every)
    if a is None or b is None:
        return {"difference": None}
    diffs = []
    for index in resamples(codes, bootstrap, seed):
        x, y = metric(index), other(index)
        if x is not None and y is not None:
            diffs.append(x - y)
    return {"difference": float(a - b), "ci": interval(diffs)}

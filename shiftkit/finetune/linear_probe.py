"""A linear probe solved as representation-learning papers solve it, and class weights from training priors.

While the backbone is frozen the head is a convex problem on features computed once: standardise them, fit
(multinomial, or per-label binary) L2-regularised logistic regression with L-BFGS (scikit-learn's
``LogisticRegression``) for each strength ``C`` on a log grid, keep the ``C`` that scores best on the validation
split (ties: lower validation loss), and fold the standardisation into the ``nn.Linear`` head, so the model stays a
plain network. It takes seconds, and unlike a few dozen Adam steps from a random head on uncentred, non-negative
features it does not depend on luck in the first epochs (Kumar et al. 2022: LP-FT needs a well-fitted head).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

DEFAULT_CS = tuple(float(c) for c in np.round(10.0 ** np.arange(-4.0, 2.01, 0.5), 10))
"""Inverse regularisation strengths tried (scikit-learn's ``C``: the loss sum is multiplied by C, ‖w‖²/2 is not)."""

MAX_ITER = 1000

Scorer = Callable[[np.ndarray], tuple[float, float]]
"""``scorer(validation probabilities) -> (monitored score, validation loss)``; higher score is better."""


def balanced_class_weights(targets: np.ndarray, task: str, num_outputs: int) -> np.ndarray:
    """Inverse training priors, scikit-learn's ``"balanced"``: ``n / (K * n_c)`` per class (mean weight over the
    training images is 1, so the loss keeps its scale). Multi-label: per label, the weights of its negatives and
    positives, ``n / (2 * n_neg)`` and ``n / (2 * n_pos)`` (shape ``2 x C``). A class without images gets 0."""
    n = len(targets)
    if task == "multilabel":
        positives = np.asarray(targets, dtype=np.float64).sum(0)
        counts = np.stack([n - positives, positives])
        return np.divide(n, 2.0 * counts, out=np.zeros_like(counts), where=counts > 0)
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_outputs).astype(np.float64)
    return np.divide(n, num_outputs * counts, out=np.zeros_like(counts), where=counts > 0)


@dataclass(frozen=True)
class ProbeFit:
    """The fitted head in the network's own feature space (standardisation folded in)."""

    weight: np.ndarray  # outputs x features
    bias: np.ndarray  # outputs
    C: float
    scores: dict[float, float] = field(default_factory=dict)  # validation score per C
    converged: bool = True
    seconds: float = 0.0  # the whole C sweep (the backbone's feature pass not included)

    def record(self) -> dict:
        return {"solver": "lbfgs", "C": self.C, "converged": self.converged, "solve_seconds": round(self.seconds, 3),
                "val_score_per_C": {f"{c:g}": s for c, s in self.scores.items()}}


def _logistic(C: float, class_weight: dict | None, seed: int) -> LogisticRegression:
    return LogisticRegression(C=C, class_weight=class_weight, solver="lbfgs", max_iter=MAX_ITER,
                              warm_start=True, random_state=seed)


def _fit_single_label(z: np.ndarray, y: np.ndarray, num_outputs: int, weights: np.ndarray | None, Cs, seed: int):
    """Per C: (weight, bias, converged) of a softmax head with ``num_outputs`` logits."""
    class_weight = None if weights is None else {k: float(w) for k, w in enumerate(weights)}
    model = _logistic(Cs[0], class_weight, seed)
    for C in Cs:  # from strong to weak regularisation, each fit starting from the previous solution
        model.set_params(C=C)
        model.fit(z, y)
        coef, intercept = model.coef_, model.intercept_
        if num_outputs == 2:  # one logit difference z: softmax([-z/2, z/2])[1] = sigmoid(z)
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        yield C, coef, intercept, bool(np.all(model.n_iter_ < MAX_ITER))


def _fit_multilabel(z: np.ndarray, y: np.ndarray, weights: np.ndarray | None, Cs, seed: int):
    """Per C: one binary logistic regression per label (a sigmoid output each, as BCE trains them). A label
    that is always (or never) present in training gets a zero weight and its smoothed log-odds as bias."""
    labels = y.shape[1]
    models = [_logistic(Cs[0], None if weights is None else {0: float(weights[0, j]), 1: float(weights[1, j])}, seed)
              for j in range(labels)]
    for C in Cs:
        coef, intercept, converged = np.zeros((labels, z.shape[1])), np.zeros(labels), True
        for j, model in enumerate(models):
            column = y[:, j].astype(np.int64)
            if column.min() == column.max():
                rate = (column.sum() + 0.5) / (len(column) + 1.0)
                intercept[j] = np.log(rate / (1 - rate))
                continue
            model.set_params(C=C)
            model.fit(z, column)
            coef[j], intercept[j] = model.coef_[0], model.intercept_[0]
            converged &= bool(np.all(model.n_iter_ < MAX_ITER))
        yield C, coef, intercept, converged


def _probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    if task == "multilabel":
        return 1.0 / (1.0 + np.exp(-logits))
    logits = logits - logits.max(1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(1, keepdims=True)


def fit_linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, task: str, num_outputs: int,
    scorer: Scorer, class_weights: np.ndarray | None = None, Cs=DEFAULT_CS, seed: int = 0,
) -> ProbeFit:
    """Fit the head for every ``C`` in ``Cs`` and keep the one ``scorer`` rates best on ``val_x``."""
    started = time.perf_counter()
    scaler = StandardScaler().fit(train_x.astype(np.float64))
    z_train, z_val = scaler.transform(train_x.astype(np.float64)), scaler.transform(val_x.astype(np.float64))
    fits = _fit_multilabel(z_train, train_y, class_weights, Cs, seed) if task == "multilabel" else \
        _fit_single_label(z_train, train_y.astype(np.int64), num_outputs, class_weights, Cs, seed)
    best, best_key, scores = None, None, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded in ``converged`` instead
        for C, coef, intercept, converged in fits:
            score, loss = scorer(_probabilities(z_val @ coef.T + intercept, task))
            scores[C] = float(score)
            key = (score, -loss)
            if best_key is None or key > best_key:
                best, best_key = (C, coef.copy(), intercept.copy(), converged), key
    C, coef, intercept, converged = best
    weight = coef / scaler.scale_  # logits = coef @ (x - mean) / scale + intercept
    bias = intercept - weight @ scaler.mean_
    return ProbeFit(weight=weight, bias=bias, C=C, scores=scores, converged=converged,
                    seconds=time.perf_counter() - started)

"""Target class priors (the target's prevalence) for the prevalence correction: point estimates from
:mod:`shiftkit.shift.label` (EM on BCTS-calibrated posteriors, or BBSE), re-estimated in every bootstrap replicate so
that the interval of a prevalence-corrected metric carries the prior's uncertainty too.

Replicates, vectorised (the point estimators of :mod:`shiftkit.shift.label` run one sample at a time):

``em_bcts``
    The EM fixed point is the maximum of the target log-likelihood ``sum_t w_t log sum_k r_tk q_k`` (``r = p(y|x) /
    p(y)`` with the replicate's recalibrated posteriors, ``w`` its bootstrap counts) over the simplex. Three Newton
    steps from the full-sample EM estimate, each shortened to stay inside the simplex, reach it to within a small
    fraction of the bootstrap spread (the log-likelihood is concave; Newton converges quadratically near the optimum
    where EM converges linearly, and EM needs hundreds of steps when the classes overlap).
``bbse``
    The replicate's joint confusion matrix and target prediction rates, ``C w = mu`` solved by a batched
    pseudo-inverse (``np.linalg.lstsq``, which label.bbse uses, is not batched), clipped and renormalised as there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shiftkit.errors import ConfigError
from shiftkit.shift import label

__all__ = ["PRIOR_METHODS", "fixed_prior", "point_prior", "replicate_priors_bbse", "replicate_priors_em"]

PRIOR_METHODS = ("em_bcts", "bbse")


def point_prior(method: str, source_log_probs: np.ndarray, source_labels: np.ndarray,
                target_log_probs: np.ndarray) -> np.ndarray:
    """Target prior by :func:`shiftkit.shift.label.em_bcts` or :func:`shiftkit.shift.label.bbse`."""
    estimator = {"em_bcts": label.em_bcts, "bbse": label.bbse}[method]
    return np.asarray(estimator(source_log_probs, source_labels, target_log_probs), dtype=np.float64)


def _to_simplex(q: np.ndarray) -> np.ndarray:
    q = np.clip(q, 0.0, None)
    total = q.sum(axis=-1, keepdims=True)
    return np.divide(q, total, out=np.full_like(q, 1.0 / q.shape[-1]), where=total > 0)


def replicate_priors_em(posteriors: np.ndarray, weights: np.ndarray, source_prior: np.ndarray,
                        start: np.ndarray, steps: int = 3) -> np.ndarray:
    """Maximum-likelihood target priors (B x K) of calibrated target posteriors (B x n x K) with row weights (B x n),
    by Newton steps from ``start`` (K; the full-sample EM estimate)."""
    r = posteriors / np.asarray(source_prior)[None, None, :]
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    d = r[:, :, :-1] - r[:, :, -1:]
    b, k = len(w), r.shape[2]
    q = np.tile(np.clip(np.asarray(start, dtype=np.float64), 1e-6, None), (b, 1))
    q /= q.sum(axis=1, keepdims=True)
    floor = 1e-8
    for _ in range(steps):
        s = np.einsum("btk,bk->bt", r, q)
        ws = w / s
        g = np.einsum("bt,btk->bk", ws, d)
        h = -np.matmul(np.swapaxes(d * (ws / s)[:, :, None], 1, 2), d) - 1e-12 * np.eye(k - 1)
        try:
            step = -np.linalg.solve(h, g[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            break
        delta = np.concatenate([step, -step.sum(axis=1, keepdims=True)], axis=1)
        # ratio test: the longest step <= 1 that keeps every prior above the floor
        with np.errstate(divide="ignore", invalid="ignore"):
            limit = np.where(delta < 0, (floor - q) / delta, np.inf)
        alpha = np.minimum(1.0, 0.99 * limit.min(axis=1))
        q = q + np.clip(alpha, 0.0, 1.0)[:, None] * delta
    return label.snap_to_boundary(_to_simplex(q))  # the floor above keeps an absent class at 1e-8, not 0


def replicate_priors_bbse(source_labels: np.ndarray, source_pred: np.ndarray, target_pred: np.ndarray,
                          n_classes: int, source_weights: np.ndarray, target_weights: np.ndarray,
                          source_prior: np.ndarray) -> np.ndarray:
    """BBSE target priors (B x K) for each replicate's source and target row weights."""
    k = n_classes
    cell = np.asarray(source_pred) * k + np.asarray(source_labels)
    onehot = np.zeros((len(cell), k * k))
    onehot[np.arange(len(cell)), cell] = 1.0
    ws = np.atleast_2d(np.asarray(source_weights, dtype=np.float64))
    conf = ((ws @ onehot) / ws.sum(axis=1, keepdims=True)).reshape(-1, k, k)
    pred = np.zeros((len(target_pred), k))
    pred[np.arange(len(target_pred)), target_pred] = 1.0
    wt = np.atleast_2d(np.asarray(target_weights, dtype=np.float64))
    mu = (wt @ pred) / wt.sum(axis=1, keepdims=True)
    w = (np.linalg.pinv(conf) @ mu[:, :, None])[:, :, 0]
    return _to_simplex(w * np.asarray(source_prior)[None])


def fixed_prior(prior: Any, classes: tuple) -> np.ndarray:
    """A user-given target prior (array in class order, or a dict class -> probability), normalised."""
    if isinstance(prior, dict):
        missing = [c for c in classes if c not in prior]
        if missing:
            raise ConfigError(f"target_prior: no value for class(es) {missing!r}")
        prior = [prior[c] for c in classes]
    try:
        q = np.asarray(prior, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ConfigError("target_prior: expected 'em_bcts', 'bbse', None, or one probability per class") from None
    if len(q) != len(classes):
        raise ConfigError(f"target_prior: {len(q)} values for {len(classes)} classes")
    if not np.all(np.isfinite(q)) or np.any(q < 0) or q.sum() <= 0:
        raise ConfigError(f"target_prior: must be finite, non-negative and not all zero, got {q.tolist()}")
    return q / q.sum()

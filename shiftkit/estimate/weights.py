"""Density ratios ``p_T(x) / p_S(x)`` on the source validation images, for the importance-weighted estimate.

A probabilistic domain classifier (source = 0, target = 1) trained on ``n_S`` source and ``n_T`` target rows has
odds ``P(T|x) / P(S|x) = (n_T p_T(x)) / (n_S p_S(x))``, so the ratio is the odds times ``n_S / n_T`` (Bickel,
Brueckner & Scheffer 2009). Ratios are normalised to mean 1 on the source and capped at ``max_weight`` (a few huge
weights otherwise decide the estimate alone); the effective sample size ``(sum w)^2 / sum w^2`` says how many source
images the weighted estimate really rests on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shiftkit.errors import ConfigError, DataError

__all__ = ["DensityRatio", "density_ratio_from_domain_proba", "density_ratio_from_embeddings",
           "density_ratio_from_weights"]


@dataclass(frozen=True)
class DensityRatio:
    """Per-source-image density ratios (mean 1) and where they came from."""

    weights: np.ndarray
    method: str
    domain_auc: float | None = None
    clipped: int = 0
    max_weight: float | None = None

    @property
    def effective_sample_size(self) -> float:
        w = self.weights
        return float(w.sum() ** 2 / np.sum(w ** 2))

    def details(self) -> dict[str, Any]:
        return {"weights_from": self.method, "domain_auc": self.domain_auc, "clipped": self.clipped,
                "max_weight": self.max_weight, "effective_sample_size": self.effective_sample_size,
                "largest_weight": float(self.weights.max())}


def _normalise(ratio: np.ndarray, max_weight: float | None) -> tuple[np.ndarray, int]:
    w = ratio / ratio.mean()
    if max_weight is None:
        return w, 0
    if max_weight <= 1.0:
        raise ConfigError(f"max_weight: must exceed 1 (weights have mean 1), got {max_weight}")
    clipped = int(np.sum(w > max_weight))
    w = np.minimum(w, max_weight)
    return w / w.mean(), clipped


def density_ratio_from_weights(weights: Any, max_weight: float | None = None) -> DensityRatio:
    """User-supplied density ratios for the source images (any positive scale)."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    if len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise DataError("source weights: must be finite, non-negative and not all zero")
    w, clipped = _normalise(w, max_weight)
    return DensityRatio(w, "given weights", clipped=clipped, max_weight=max_weight)


def density_ratio_from_domain_proba(source_proba: Any, n_source: int, n_target: int, max_weight: float = 20.0,
                                    domain_auc: float | None = None) -> DensityRatio:
    """Ratios from a domain classifier's P(target | x) on the source images; ``n_source``/``n_target``: the rows of
    each domain it was trained on (its implicit prior)."""
    p = np.asarray(source_proba, dtype=np.float64).ravel()
    if len(p) == 0 or not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise DataError("source domain probabilities: must be probabilities in [0, 1]")
    if n_source < 1 or n_target < 1:
        raise ConfigError(f"n_source, n_target: must be positive, got {n_source}, {n_target}")
    p = np.clip(p, 1e-4, 1 - 1e-4)
    w, clipped = _normalise(p / (1 - p) * (n_source / n_target), max_weight)
    return DensityRatio(w, "domain-classifier probabilities", domain_auc=domain_auc, clipped=clipped,
                        max_weight=max_weight)


def density_ratio_from_embeddings(source_embeddings: Any, target_embeddings: Any, folds: int = 5, seed: int = 0,
                                  C: float = 1.0, max_weight: float = 20.0) -> DensityRatio:
    """Cross-fitted logistic-regression domain classifier on embeddings: each source image's ratio comes from a
    model that did not see it (an in-sample fit would overstate the ratios). Also returns the out-of-fold domain
    AUC, which the covariate-shift flag reads."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs = np.asarray(source_embeddings, dtype=np.float64)
    xt = np.asarray(target_embeddings, dtype=np.float64)
    if xs.ndim != 2 or xt.ndim != 2 or len(xs) == 0 or len(xt) == 0:
        raise DataError(f"embeddings: expected non-empty 2-D arrays, got {xs.shape} and {xt.shape}")
    if xs.shape[1] != xt.shape[1]:
        raise DataError(f"target embeddings: dimension {xt.shape[1]} != source dimension {xs.shape[1]}")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(xt))):
        raise DataError("embeddings: contain NaN or infinite values")
    folds = int(min(folds, len(xs), len(xt)))
    if folds < 2:
        raise DataError("embeddings: need at least 2 source and 2 target images for a cross-fitted domain classifier")
    x = np.concatenate([xs, xt])
    d = np.r_[np.zeros(len(xs), dtype=int), np.ones(len(xt), dtype=int)]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(model, x, d, cv=splitter, method="predict_proba")[:, 1]
    auc = float(roc_auc_score(d, proba))
    # each fold's classifier saw (folds-1)/folds of both domains, the same n_S : n_T proportion as the whole
    return density_ratio_from_domain_proba(proba[: len(xs)], len(xs), len(xt), max_weight, domain_auc=auc)

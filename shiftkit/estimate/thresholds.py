"""Average thresholded confidence (ATC, Garg et al., ICLR 2022): confidence scores, the source-fitted threshold and
the fraction of target images above it, vectorised over bootstrap replicates by sorting once.

The threshold ``t`` is chosen on labelled source data so that the (weighted) share of images whose score is
*strictly above* ``t`` equals the (weighted) share of correct predictions; the estimate is the target's share above
``t``. With n source images of which m are correct, ``t`` is the (n - m)-th smallest score, so exactly m images
lie above it. The authors' ``find_ATC_threshold`` (github.com/saurabhgarg1996/ATC_code) scans the sorted scores for
the same balance point and then counts ``>= t`` on the target, which includes the threshold image itself; we count
``> t`` so that on the source the fraction above equals the accuracy exactly. Ties at ``t`` (confidences saturated
at 1.0 by an over-confident network, where a plain count above ``t`` can drop to 0) count with the share that keeps
that equality (see :func:`weighted_thresholds`). A replicate's bootstrap counts
enter as weights on the sorted rows, so a thousand thresholds cost one cumulative sum each, not a thousand sorts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SCORES", "atc_estimate", "atc_threshold", "confidence_scores", "fraction_above", "weighted_thresholds"]

SCORES = ("neg_entropy", "max_confidence")


def confidence_scores(log_probs: np.ndarray, score: str = "neg_entropy") -> np.ndarray:
    """Per-image score from log-softmax rows: ``neg_entropy`` (sum p log p, the paper's default, ATC-NE) or
    ``max_confidence`` (max p, ATC-MC). Higher means more confident."""
    if score == "neg_entropy":
        return np.sum(np.exp(log_probs) * log_probs, axis=1)
    if score == "max_confidence":
        return np.exp(log_probs.max(axis=1))
    raise ValueError(f"unknown ATC score '{score}' (choose {', '.join(SCORES)})")


def _cumulative_at(cumulative: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Cumulative weight of the first ``positions`` sorted rows, per replicate (0 for position 0)."""
    rows = np.arange(len(cumulative))
    return np.where(positions > 0, cumulative[rows, np.maximum(positions - 1, 0)], 0.0)


def weighted_thresholds(sorted_scores: np.ndarray, sorted_correct: np.ndarray,
                        weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ATC thresholds and tie shares (B each) for scores sorted ascending (n), their correctness (n, 0/1) and row
    weights (B x n).

    ``t_b`` is the smallest sorted score whose cumulative weight reaches ``W_b - M_b`` (total minus correct weight);
    ``-inf`` when every image is correct; NaN without weight. Images *at* ``t_b`` (ties, e.g. confidences saturated
    at 1.0, or a row drawn twice by the bootstrap) count with the share ``lambda_b`` that makes the source's
    weight above plus ``lambda_b`` times the weight at ``t_b`` equal ``M_b`` exactly (a randomised threshold); without
    ties on an unweighted sample ``lambda = 0`` and this is the plain count above ``t``.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    sorted_scores = np.asarray(sorted_scores, dtype=np.float64)
    total = w.sum(axis=1)
    correct = w @ np.asarray(sorted_correct, dtype=np.float64)
    below_weight = total - correct
    cumulative = np.cumsum(w, axis=1)
    tol = 1e-9 * np.maximum(total, 1.0)
    index = np.minimum(np.sum(cumulative < (below_weight - tol)[:, None], axis=1), len(sorted_scores) - 1)
    t = sorted_scores[index]
    above, at = _above_and_at(sorted_scores, cumulative, total, t)
    share = np.divide(correct - above, at, out=np.zeros_like(at), where=at > 0)
    share = np.clip(share, 0.0, 1.0)
    everything = below_weight <= tol
    t = np.where(everything, -np.inf, t)
    share = np.where(everything, 0.0, share)
    return np.where(total > 0, t, np.nan), share


def _above_and_at(sorted_scores: np.ndarray, cumulative: np.ndarray, total: np.ndarray,
                  thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weight strictly above and exactly at each replicate's threshold."""
    safe = np.where(np.isnan(thresholds), np.inf, thresholds)
    upto = _cumulative_at(cumulative, np.searchsorted(sorted_scores, safe, side="right"))
    below = _cumulative_at(cumulative, np.searchsorted(sorted_scores, safe, side="left"))
    return total - upto, upto - below


def fraction_above(sorted_scores: np.ndarray, weights: np.ndarray, thresholds: np.ndarray,
                   tie_share: np.ndarray | None = None) -> np.ndarray:
    """Weighted share (B) of scores (sorted ascending, n) above each replicate's threshold, images at the threshold
    counting ``tie_share``; NaN where a replicate has no weight or no threshold."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    total = w.sum(axis=1)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    above, at = _above_and_at(np.asarray(sorted_scores, dtype=np.float64), np.cumsum(w, axis=1), total, thresholds)
    share = np.zeros(len(w)) if tie_share is None else np.asarray(tie_share, dtype=np.float64)
    out = np.full(len(w), np.nan)
    np.divide(above + share * at, total, out=out, where=total > 0)
    return np.where(np.isnan(thresholds), np.nan, out)


def _one_sample(source_scores: Any, source_correct: Any) -> tuple[float, float]:
    scores = np.asarray(source_scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    t, share = weighted_thresholds(scores[order], np.asarray(source_correct, dtype=np.float64)[order],
                                   np.ones((1, len(scores))))
    return float(t[0]), float(share[0])


def atc_threshold(source_scores: Any, source_correct: Any) -> float:
    """The ATC threshold of one labelled source sample (scores and 0/1 correctness): the score below which lie as
    many images as there are errors."""
    return _one_sample(source_scores, source_correct)[0]


def atc_estimate(source_scores: Any, source_correct: Any, target_scores: Any) -> float:
    """ATC's estimate of target accuracy: the share of target scores above :func:`atc_threshold` (images at the
    threshold counted with the tie share of :func:`weighted_thresholds`)."""
    t, share = _one_sample(source_scores, source_correct)
    target = np.sort(np.asarray(target_scores, dtype=np.float64))
    return float(fraction_above(target, np.ones((1, len(target))), np.array([t]), np.array([share]))[0])

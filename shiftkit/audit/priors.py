"""Label shift between sites: actual class priors (when labelled) and priors estimated without the site's labels.

- **actual**: each site's class frequencies; per pair, the total-variation distance ½‖p_a − p_b‖₁ and a
  chi-square test of homogeneity of the 2 x K count table (classes absent from both sites dropped);
- **estimated**: for each site, a classifier (``SourceClassifier``: scaler + logistic regression, cross-fitted so that
  every image it is calibrated on was held out) is fitted on *the other sites'* embeddings and labels, and the site's
  prior is estimated from its unlabelled embeddings with EM + bias-corrected temperature scaling
  (``shiftkit.shift.label``), with a bootstrap interval and a test of "same prior as the other sites pooled".
  Comparing estimated with actual priors shows how far a label-free estimate can be trusted here (it assumes P(X|Y) is
  the same across sites, which covariate shift between sites breaks). Per pair: the total variation between the two
  estimated priors.

The chi-square p-values of the pairs are adjusted like the covariate tests (one family over the pairs).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats as sps

from shiftkit.shift.corrections import adjust_p_values


def total_variation(p: Sequence[float], q: Sequence[float]) -> float:
    """½ Σ |p_k − q_k|: the largest difference in probability the two priors give any set of classes."""
    return 0.5 * float(np.abs(np.asarray(p, dtype=float) - np.asarray(q, dtype=float)).sum())


def homogeneity_test(counts_a: Sequence[int], counts_b: Sequence[int]) -> tuple[float, float]:
    """Chi-square test that two sites share one class distribution: (statistic, p-value); (0, 1) when only one
    class occurs at all."""
    table = np.array([counts_a, counts_b], dtype=float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    result = sps.chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def actual_priors(labels: np.ndarray, sites: np.ndarray, names: Sequence[str], classes: Sequence[str]) -> dict:
    """{site: {"counts": {class: n}, "prior": {class: p}}} from per-row class names."""
    out = {}
    for s in names:
        mine = labels[sites == s]
        counts = {c: int(np.sum(mine == c)) for c in classes}
        out[s] = {"counts": counts, "prior": {c: counts[c] / max(len(mine), 1) for c in classes}}
    return out


def estimated_priors(embeddings: np.ndarray, labels: np.ndarray, sites: np.ndarray, names: Sequence[str],
                     classes: Sequence[str], *, bootstrap: int = 100, seed: int = 0, alpha: float = 0.05,
                     on_step: Callable[[str], None] | None = None) -> dict:
    """{site: estimate or {"not_measured": why}}: the site's prior from a classifier fitted on the other sites."""
    from shiftkit.shift.label import SourceClassifier, estimate_label_shift
    from shiftkit.shift.stats import ShiftInputError

    out: dict[str, Any] = {}
    for k, s in enumerate(names):
        if on_step:
            on_step(f"label shift {k + 1}/{len(names)}: {s} from the other sites")
        inside = sites == s
        rest_labels = labels[~inside]
        present = [c for c in classes if np.sum(rest_labels == c) >= 2]
        keep = np.isin(rest_labels, present)
        try:
            with np.errstate(divide="ignore"):  # log(0) of a confident classifier's probability is -inf, as meant
                classifier = SourceClassifier.fit(embeddings[~inside][keep], rest_labels[keep], present, seed=seed)
                target_logits = np.maximum(classifier.log_probabilities(embeddings[inside]), -100.0)  # finite for EM
            result = estimate_label_shift(classifier, target_logits, method="em_bcts", bootstrap=bootstrap,
                                          seed=seed, alpha=alpha)
        except ShiftInputError as exc:
            out[s] = {"not_measured": str(exc)}
            continue
        prior = {c: float(result.target_prior.get(c, 0.0)) for c in classes}
        out[s] = {
            "prior": prior,
            "ci": {c: list(result.ci[c]) for c in present},
            "rest_prior": {c: float(result.source_prior.get(c, 0.0)) for c in classes},
            "p_value": result.p_value, "method": "em_bcts",
            "classes_fitted": present,
            "held_out_accuracy": classifier.details.get("held_out_accuracy"),
        }
    return out


def label_shift(labels: np.ndarray | None, sites: np.ndarray, names: Sequence[str], classes: Sequence[str],
                embeddings: np.ndarray | None = None, *, correction: str = "bh", alpha: float = 0.05,
                bootstrap: int = 100, seed: int = 0, on_step: Callable[[str], None] | None = None) -> dict:
    """Per site (actual and estimated priors) and per pair (TV actual with a chi-square test, TV estimated)."""
    actual = actual_priors(labels, sites, names, classes) if labels is not None else None
    estimated = (estimated_priors(embeddings, labels, sites, names, classes, bootstrap=bootstrap, seed=seed,
                                  alpha=alpha, on_step=on_step)
                 if labels is not None and embeddings is not None and len(classes) >= 2 else None)
    pairs = []
    for a, b in itertools.combinations(names, 2):
        entry: dict[str, Any] = {"a": a, "b": b}
        if actual is not None:
            pa, pb = actual[a], actual[b]
            entry["tv_actual"] = total_variation(list(pa["prior"].values()), list(pb["prior"].values()))
            entry["chi2"], entry["p_value"] = homogeneity_test(list(pa["counts"].values()),
                                                               list(pb["counts"].values()))
        if estimated is not None and "prior" in estimated[a] and "prior" in estimated[b]:
            entry["tv_estimated"] = total_variation(list(estimated[a]["prior"].values()),
                                                    list(estimated[b]["prior"].values()))
        pairs.append(entry)
    if actual is not None:
        adjusted = adjust_p_values([e["p_value"] for e in pairs], correction)
        for entry, p in zip(pairs, adjusted):
            entry["p_adjusted"] = float(p)
            entry["shifted"] = bool(p < alpha)
    sites_out = {}
    for s in names:
        row: dict[str, Any] = {}
        if actual is not None:
            row.update(actual[s])
        if estimated is not None:
            row["estimated"] = estimated[s]
            if actual is not None and "prior" in estimated[s]:
                row["estimate_error_tv"] = total_variation(list(actual[s]["prior"].values()),
                                                           list(estimated[s]["prior"].values()))
        sites_out[s] = row
    return {"classes": list(classes), "sites": sites_out, "pairs": pairs,
            "test": "chi-square test of homogeneity of the class counts (2 x K), adjusted over the pairs",
            "estimator": "EM + bias-corrected temperature scaling, classifier fitted on the other sites"}

"""Does harmonization help the model a radiomics study builds? A regularised logistic regression on the features,
evaluated leave-one-site-out (LOSO), with no harmonization, ComBat and CovBat, **every harmonizer fitted inside the
training folds only**.

Protocol, per held-out site:

1. training rows: every other site (minus any row of a patient who also has a row at the held-out site);
2. the harmonizer is fitted on the training rows with the covariates known for every patient (age, sex, ...; never
   the label: the held-out site's labels are what is being predicted, so an outcome covariate is dropped here);
3. the held-out site has never been seen, and ComBat cannot harmonize an unseen site. The **unseen-site policy**
   says what happens (:mod:`shiftkit.audit.fold_harmonize`): ``standardize`` (default) estimates its location and
   scale from its own features, without labels, in the pooled model fitted on the training sites ("ComBat for a
   new site": its own mean and variance standardization, with ComBat's empirical Bayes, then mapped onto the
   pooled scale; CovBat does the same for its score step); ``refuse`` reports the harmonizer as not evaluable;
4. StandardScaler + L2 logistic regression (``C``, balanced class weights) fitted on the harmonized training rows;
   the held-out rows' predicted probabilities are kept.

Reported: the AUC per held-out site (where it has both classes), the mean of those, and the AUC of all held-out
predictions pooled, with a bootstrap interval; the paired difference of each harmonizer against none.

The leakage check: the same LOSO with each harmonizer fitted once on **all** the task's rows (the held-out sites
included) with the audit's covariates (the label too when the audit preserves it): the common shortcut of
harmonizing before splitting. When it beats the in-fold AUC by at least ``margin``
with a paired bootstrap interval above 0, the all-rows result is flagged as optimistic (test rows, and with an
outcome covariate their labels, shaped their own features).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from shiftkit.audit import cv_metrics
from shiftkit.audit.fold_harmonize import METHODS, UnseenSiteRefused, fit_apply
from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.combat.covbat import VARIANCE
from shiftkit.harmonize.combat.unseen import MIN_ROWS

C = 1.0
MARGIN = 0.02
MODEL = "StandardScaler + LogisticRegression(L2, C={C}, class_weight='balanced')"
POLICY = {
    "standardize": "the held-out site's location and scale are estimated from its own features (no labels) in the "
                   "pooled model of the training sites (ComBat for a new site, with ComBat's empirical Bayes; CovBat "
                   "does the same for its principal-component scores)",
    "refuse": "a harmonizer is not evaluated on a site it was not fitted on (ComBat cannot harmonize an unseen site)",
}


def binary_task(labels: np.ndarray, positive: str | None, negative: tuple[str, ...] = ()) -> tuple[np.ndarray,
                                                                                                 np.ndarray, dict]:
    """(rows in the task, 0/1 outcome of those rows, description). ``positive`` names the positive class,
    ``negative`` the negative ones (default: every other class); without ``positive`` the label must have exactly
    two classes (the second in sorted order is positive)."""
    labels = np.asarray(labels).astype(str)
    classes = sorted(set(labels.tolist()))
    if positive is None:
        if negative:
            raise ConfigError("--negative-label needs --positive-label")
        if len(classes) != 2:
            raise ConfigError(f"the label has {len(classes)} classes ({', '.join(classes[:8])}); name the task with "
                              "--positive-label (and --negative-label)")
        negative, positive = (classes[0],), classes[1]
    missing = [c for c in (positive, *negative) if c not in classes]
    if missing:
        raise ConfigError(f"label '{missing[0]}' does not occur in the label column (classes: {', '.join(classes)})")
    if positive in negative:
        raise ConfigError(f"label '{positive}' is both positive and negative")
    negative = tuple(negative) or tuple(c for c in classes if c != positive)
    rows = np.flatnonzero(np.isin(labels, [positive, *negative]))
    y = (labels[rows] == positive).astype(int)
    return rows, y, {"positive": positive, "negative": list(negative), "n": int(len(rows)),
                     "n_positive": int(y.sum())}


def _model(c: float, seed: int):  # noqa: ANN202
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000,
                                                              random_state=seed))


def loso_predictions(x: np.ndarray, sites: np.ndarray, y: np.ndarray, *, method: str, cov: np.ndarray | None,
                     groups: np.ndarray | None = None, fit_in_fold: bool = True, policy: str = "standardize",
                     c: float = C, seed: int = 0, variance: float = VARIANCE,
                     on_tick: Callable[[], None] | None = None) -> tuple[np.ndarray, dict[str, str]]:
    """Held-out probabilities (NaN where a site could not be predicted) and a note per such site."""
    scores = np.full(len(y), np.nan)
    notes: dict[str, str] = {}
    names, counts = np.unique(sites, return_counts=True)
    trainable = np.isin(sites, names[counts >= MIN_ROWS])  # a one-row site cannot be fitted by ComBat: never trained on
    for site in sorted(names.tolist()):
        test = np.flatnonzero(sites == site)
        train = np.flatnonzero((sites != site) & trainable)
        if groups is not None:
            train = train[~np.isin(groups[train], groups[test])]
        if on_tick:
            on_tick()
        if len(np.unique(y[train])) < 2:
            notes[site] = "the other sites have a single class; no model"
            continue
        if fit_in_fold:
            try:
                x_train, x_test = fit_apply(method, x, sites, cov, train, test, policy=policy, variance=variance)
            except UnseenSiteRefused:
                raise  # the policy refuses the whole harmonizer, not one site
            except DataError as exc:
                notes[site] = f"not harmonized: {exc}"
                continue
        else:
            x_train, x_test = x[train], x[test]
        model = _model(c, seed).fit(x_train, y[train])
        scores[test] = model.predict_proba(x_test)[:, 1]
    return scores, notes


def _summary(scores: np.ndarray, y: np.ndarray, sites: np.ndarray, notes: dict, *, bootstrap: int, seed: int) -> dict:
    done = np.isfinite(scores)
    per_site = {}
    for site in sorted(np.unique(sites).tolist()):
        mine = sites == site
        entry = {"n": int(mine.sum()), "n_positive": int(y[mine].sum())}
        if site in notes:
            entry["note"] = notes[site]
        elif len(np.unique(y[mine])) < 2:
            entry["note"] = "one class only: no AUC (its predictions still count in the pooled AUC)"
        else:
            entry["auc"] = cv_metrics.auc(y[mine], scores[mine])
        per_site[site] = entry
    aucs = [e["auc"] for e in per_site.values() if e.get("auc") is not None]
    pooled = cv_metrics.auc(y[done], scores[done]) if len(np.unique(y[done])) == 2 else None
    out = {"pooled_auc": pooled, "mean_site_auc": float(np.mean(aucs)) if aucs else None, "sites": per_site,
           "n_predicted": int(done.sum())}
    if bootstrap and pooled is not None:
        yd, sd = y[done], scores[done]
        out["pooled_auc_ci"] = cv_metrics.interval([cv_metrics.auc(yd[i], sd[i])
                                                    for i in cv_metrics.resamples(yd, bootstrap, seed)])
    return out


def _paired(y: np.ndarray, a: np.ndarray, b: np.ndarray, *, bootstrap: int, seed: int) -> dict:
    """AUC(a) - AUC(b) on the rows both predicted, paired bootstrap."""
    both = np.isfinite(a) & np.isfinite(b)
    yb, ab, bb = y[both], a[both], b[both]
    if len(np.unique(yb)) < 2:
        return {"difference": None}
    return cv_metrics.paired_difference(yb, lambda i: cv_metrics.auc(yb[i], ab[i]),
                                        lambda i: cv_metrics.auc(yb[i], bb[i]), bootstrap=bootstrap, seed=seed)


def all_rows_check(y: np.ndarray, all_rows: np.ndarray, in_fold: np.ndarray, *, bootstrap: int, seed: int,
                   margin: float = MARGIN) -> dict:
    """All-rows minus in-fold pooled AUC (paired bootstrap). ``optimistic`` when the all-rows fit scores higher by at
    least ``margin`` with the interval above 0; ``flagged`` when it differs either way (a lower all-rows AUC is no
    safer: it is not the number a deployed model would get either)."""
    check = _paired(y, all_rows, in_fold, bootstrap=bootstrap, seed=seed)
    difference, ci = check["difference"], check.get("ci")
    beyond = difference is not None and ci is not None and abs(difference) >= margin and (ci[0] > 0 or ci[1] < 0)
    check["optimistic"] = bool(beyond and difference > 0)
    check["flagged"] = bool(beyond)
    check["margin"] = margin
    return check


def downstream_loso(x: np.ndarray, sites: np.ndarray, y: np.ndarray, *, cov: np.ndarray | None = None,
                    groups: np.ndarray | None = None, all_rows: dict[str, np.ndarray] | None = None,
                    methods: tuple[str, ...] = METHODS, policy: str = "standardize", c: float = C, seed: int = 0,
                    bootstrap: int = cv_metrics.BOOTSTRAP, variance: float = VARIANCE, margin: float = MARGIN,
                    on_tick: Callable[[], None] | None = None) -> dict:
    """Leave-one-site-out AUC for each harmonizer (module docstring). ``cov``: label-free covariates the
    harmonizers preserve; ``all_rows``: each harmonizer's output fitted on all rows (the leakage check)."""
    sites = np.asarray(sites).astype(str)
    y = np.asarray(y, dtype=int)
    result: dict = {"model": MODEL.format(C=c), "evaluation": "leave-one-site-out", "policy": policy,
                    "policy_text": POLICY[policy],
                    "covariates_in_harmonizer": "label-free covariates only (the held-out labels are unknown)",
                    "methods": {}, "differences": {}, "leakage": {}}
    names, counts = np.unique(sites, return_counts=True)
    result["notes"] = [f"site '{s}' has {c} row(s) in the task: left out of every training fold (ComBat needs "
                       f"{MIN_ROWS} rows per site); it is still held out and predicted where it can be"
                       for s, c in zip(names, counts) if c < MIN_ROWS]
    predictions: dict[str, np.ndarray] = {}
    for method in methods:
        try:
            scores, notes = loso_predictions(x, sites, y, method=method, cov=cov, groups=groups, policy=policy, c=c,
                                             seed=seed, variance=variance, on_tick=on_tick)
        except UnseenSiteRefused as exc:
            result["methods"][method] = {"refused": str(exc)}
            continue
        predictions[method] = scores
        result["methods"][method] = {"in_fold": _summary(scores, y, sites, notes, bootstrap=bootstrap, seed=seed)}
        if method != "none" and all_rows and method in all_rows:
            shortcut, notes = loso_predictions(all_rows[method], sites, y, method=method, cov=None, groups=groups,
                                               fit_in_fold=False, c=c, seed=seed)
            result["methods"][method]["all_rows"] = _summary(shortcut, y, sites, notes, bootstrap=0, seed=seed)
            result["leakage"][method] = all_rows_check(y, shortcut, scores, bootstrap=bootstrap, seed=seed,
                                                       margin=margin)
    if "none" in predictions:
        for method, scores in predictions.items():
            if method != "none":
                result["differences"][f"{method} - none"] = _paired(y, scores, predictions["none"],
                                                                    bootstrap=bootstrap, seed=seed)
    return result

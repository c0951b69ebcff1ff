"""Can the site still be told from the features? A cross-validated site classifier before and after each
harmonizer, the harmonizer fitted **inside the training folds only**, against chance.

Two classifiers, because they see different site signal:

- **linear**: standardized features, multinomial logistic regression (as ``site_effects``' classifier): differences
  in the sites' means, which is what ComBat removes;
- **quadratic**: standardized features, whitened PCA (at most ``QUADRATIC_COMPONENTS`` components, fitted on the
  training rows), quadratic discriminant analysis with shrinkage ``reg_param`` 0.1: differences in the sites'
  **covariances**, which no linear classifier can see by construction and which ComBat leaves (CovBat's target).

Chance is 1 / number of sites for balanced accuracy and 0.5 for the (one-vs-rest macro) AUC; each comes with a
bootstrap interval of the out-of-fold predictions, and ``above_chance`` says whether the balanced accuracy's lower
bound clears chance. Folds are stratified by site; with repeated rows of one patient they are grouped by patient
(``StratifiedGroupKFold``), so one patient's scans never sit on both sides.

The leakage check: the same folds with the harmonizer fitted once on **all** rows (the transductive shortcut). It
understates the residual site signal (the test rows helped estimate their own correction); a gap beyond
``margin`` whose paired bootstrap interval excludes 0 is flagged.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from shiftkit.audit import cv_metrics
from shiftkit.audit.fold_harmonize import METHODS, fit_apply
from shiftkit.errors import DataError
from shiftkit.harmonize.combat.covbat import VARIANCE

QUADRATIC_COMPONENTS = 10
REG_PARAM = 0.1
MARGIN = 0.02
CLASSIFIERS = ("linear", "quadratic")
DESCRIPTION = {
    "linear": "StandardScaler + multinomial LogisticRegression (differences in means)",
    "quadratic": f"StandardScaler + whitened PCA (<= {QUADRATIC_COMPONENTS}) + QDA(reg_param={REG_PARAM}) "
                 "(differences in covariance)",
}


def make_classifier(kind: str, seed: int, n_features: int, smallest_class: int):
    """A fresh scikit-learn pipeline for ``kind`` (module docstring); the quadratic one keeps fewer components
    than the smallest site has training rows (a site's covariance needs more rows than dimensions)."""
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "linear":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
    components = max(1, min(QUADRATIC_COMPONENTS, n_features, smallest_class - 1))
    return make_pipeline(StandardScaler(), PCA(n_components=components, whiten=True, random_state=seed),
                         QuadraticDiscriminantAnalysis(reg_param=REG_PARAM))


def splits(sites: np.ndarray, groups: np.ndarray | None, folds: int, seed: int) -> tuple[list, str]:
    """(train/test index pairs, description): stratified by site, grouped by patient when rows repeat one."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    _, counts = np.unique(sites, return_counts=True)
    k = int(min(folds, counts.min()))
    if k < 2:
        raise DataError("a site has fewer than 2 rows; the site classifier needs at least 2 per site")
    if groups is not None and len(np.unique(groups)) < len(groups):
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(splitter.split(sites, sites, groups)), f"StratifiedGroupKFold({k}) by site, grouped by patient"
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(sites, sites)), f"StratifiedKFold({k}) by site"


def _fold_probabilities(x_train, y_train, x_test, classes, seed):  # noqa: ANN001, ANN202
    """Out-of-fold class probabilities (columns in ``classes`` order) of both classifiers."""
    out = {}
    smallest = int(np.unique(y_train, return_counts=True)[1].min())
    for kind in CLASSIFIERS:
        model = make_classifier(kind, seed, x_train.shape[1], smallest)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # QDA: "variables are collinear" on near-singular site covariances
            model.fit(x_train, y_train)
            proba = model.predict_proba(x_test)
        full = np.zeros((len(x_test), len(classes)))
        full[:, [classes.index(c) for c in model.classes_]] = proba
        out[kind] = full
    return out


def cross_validated(x: np.ndarray, sites: np.ndarray, folds: list, *, method: str, cov: np.ndarray | None,
                    fit_in_fold: bool, seed: int, variance: float = VARIANCE,
                    on_tick: Callable[[], None] | None = None) -> dict[str, np.ndarray]:
    """Out-of-fold probabilities per classifier; the harmonizer fitted per training fold (``fit_in_fold``), or
    ``x`` taken as already harmonized (the all-rows variant)."""
    classes = sorted(np.unique(sites).tolist())
    proba = {kind: np.zeros((len(sites), len(classes))) for kind in CLASSIFIERS}
    for train, test in folds:
        if fit_in_fold:
            x_train, x_test = fit_apply(method, x, sites, cov, train, test, variance=variance)
        else:
            x_train, x_test = x[train], x[test]
        for kind, p in _fold_probabilities(x_train, sites[train], x_test, classes, seed).items():
            proba[kind][test] = p
        if on_tick:
            on_tick()
    return proba


def site_classifier_check(x: np.ndarray, sites: np.ndarray, *, cov: np.ndarray | None = None,
                          groups: np.ndarray | None = None, all_rows: dict[str, np.ndarray] | None = None,
                          methods: tuple[str, ...] = METHODS, folds: int = 5, seed: int = 0,
                          bootstrap: int = cv_metrics.BOOTSTRAP, variance: float = VARIANCE, margin: float = MARGIN,
                          on_tick: Callable[[], None] | None = None) -> dict:
    """The site classifier for each harmonizer in ``methods``: in-fold (honest) and, where ``all_rows`` holds that
    harmonizer's all-rows output, the transductive variant and the leakage flag. ``cov``: the covariates the
    harmonizers preserve (known for every row, so test rows may use theirs)."""
    sites = np.asarray(sites).astype(str)
    classes = sorted(np.unique(sites).tolist())
    codes = cv_metrics.codes_of(sites, classes)
    chance = 1.0 / len(classes)
    folds_, split = splits(sites, groups, folds, seed)
    result = {"chance": {"balanced_accuracy": chance, "auc": 0.5}, "split": split, "folds": len(folds_),
              "classifiers": DESCRIPTION, "sites": classes, "methods": {}}
    for method in methods:
        entry: dict = {}
        try:
            in_fold = cross_validated(x, sites, folds_, method=method, cov=cov, fit_in_fold=True, seed=seed,
                                      variance=variance, on_tick=on_tick)
        except DataError as exc:
            result["methods"][method] = {"not_measured": str(exc)}
            continue
        entry["in_fold"] = {kind: cv_metrics.scores(codes, in_fold[kind], chance=chance, bootstrap=bootstrap,
                                                    seed=seed) for kind in CLASSIFIERS}
        if method != "none" and all_rows and method in all_rows:
            transductive = cross_validated(all_rows[method], sites, folds_, method=method, cov=cov,
                                           fit_in_fold=False, seed=seed)
            entry["all_rows"] = {kind: cv_metrics.scores(codes, transductive[kind], chance=chance, bootstrap=0)
                                 for kind in CLASSIFIERS}
            entry["leakage"] = {kind: understated(codes, in_fold[kind], transductive[kind], bootstrap=bootstrap,
                                                  seed=seed, margin=margin) for kind in CLASSIFIERS}
        result["methods"][method] = entry
    return result


def understated(codes: np.ndarray, in_fold: np.ndarray, all_rows: np.ndarray, *, bootstrap: int, seed: int,
                margin: float = MARGIN) -> dict:
    """In-fold minus all-rows balanced accuracy (paired bootstrap); ``flagged`` when the all-rows fit makes the
    site look harder to detect than an honest fit does, by at least ``margin`` with the interval above 0."""
    n = in_fold.shape[1]
    a, b = in_fold.argmax(axis=1), all_rows.argmax(axis=1)
    comparison = cv_metrics.paired_difference(
        codes, lambda i: cv_metrics.balanced_accuracy(codes[i], a[i], n),
        lambda i: cv_metrics.balanced_accuracy(codes[i], b[i], n), bootstrap=bootstrap, seed=seed)
    ci = comparison.get("ci")
    comparison["flagged"] = bool(comparison["difference"] is not None and comparison["difference"] >= margin
                                 and ci is not None and ci[0] > 0)
    comparison["margin"] = margin
    return comparison

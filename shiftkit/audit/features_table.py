"""Site effects in a table of per-patient features (radiomics, as pyradiomics writes them), before and after ComBat.

Input: a CSV with one row per patient/lesion, a site (scanner) column, numeric feature columns, ``diagnostics_*``
columns (pyradiomics' provenance, ignored), and text columns such as an id or the image/mask paths (ignored).

Per feature: a **Kruskal-Wallis** test across sites (rank-based, so skewed radiomics features need no
transformation), **Benjamini-Hochberg** FDR control over the features, and the effect size **epsilon²** =
H / (n - 1) (Tomczak & Tomczak 2014: the share of rank variance explained by the site; about 0.01 small, 0.08
medium, 0.26 large). A feature is *site-affected* when its BH-adjusted p-value is below alpha, and *site-dominated*
when it is also a large effect (epsilon² >= ``dominance``, 0.26 by default).

Multivariate: a **site classifier** (standardised features, multinomial logistic regression, stratified K-fold)
and its cross-validated **balanced accuracy** against chance (1 / number of sites): how well the scanner can be
told from the features. Then ComBat (``shiftkit.harmonize.combat``, with ``--label-column`` and ``--covariates``
as covariates whose effects are preserved) and the same analysis on the harmonized features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats as sps

from shiftkit.shift.corrections import adjust_p_values
from shiftkit.data.feature_table import Covariate, FeatureTable, design_matrix
from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.combat import ComBat

MIN_ROWS_PER_SITE = 3
DOMINANCE = 0.26


@dataclass(frozen=True)
class FeaturesTable:
    """The numeric feature matrix of a radiomics table, the site of each row and the columns kept aside."""

    path: Path
    features: np.ndarray  # n x p, finite
    names: tuple[str, ...]
    sites: np.ndarray  # n site names
    covariates: dict[str, list[str]]  # raw values of the covariate columns (label first)
    ignored: tuple[str, ...]  # diagnostics, id and text columns
    design: np.ndarray | None = None  # the covariates encoded for ComBat (numeric as is, categorical one-hot)
    design_names: tuple[str, ...] = ()


def load_features_table(path: Path, site_column: str, *, label_column: str | None = None,
                        covariates: Sequence[str] = (), id_column: str | None = None,
                        min_rows_per_site: int = MIN_ROWS_PER_SITE) -> FeaturesTable:
    """Read and check a features CSV with the one feature-table reader (:mod:`shiftkit.data.feature_table`, shared
    with ``shiftkit combat``); every problem is a one-line :class:`DataError` naming the file, column, row."""
    table = FeatureTable.read(path, "features table")
    for option, column in (("--site-column", site_column), ("--label-column", label_column),
                           ("--id-column", id_column), *(("--covariates", c) for c in covariates)):
        if column is not None:
            table.require(column, option)
    sites = table.sites(site_column)
    names, counts = np.unique(sites, return_counts=True)
    if len(names) < 2:
        raise DataError(f"{path}: column '{site_column}' has a single site ('{names[0]}'); an audit needs two or more")
    small = [(s, c) for s, c in zip(names, counts) if c < min_rows_per_site]
    if small:
        raise DataError(f"{path}: site '{small[0][0]}' has {small[0][1]} row(s); each site needs at least "
                        f"{min_rows_per_site}")
    feature_names, ignored = table.feature_columns({site_column, label_column, id_column, *covariates})
    matrix = table.matrix(feature_names)
    kept = [c for c in dict.fromkeys(([label_column] if label_column else []) + list(covariates)) if c != site_column]
    design, design_names = design_matrix(table, [Covariate.fit(table, c) for c in kept])
    return FeaturesTable(table.path, matrix, tuple(feature_names), sites, {c: table.column(c) for c in kept},
                         tuple(ignored), design, tuple(design_names))


@dataclass(frozen=True)
class SiteEffects:
    """Per-feature site effects (Kruskal-Wallis + BH + epsilon²) and the site classifier's accuracy."""

    features: list[dict]  # name, H, p_value, p_adjusted, epsilon2, affected, dominated
    classifier: dict
    alpha: float
    dominance: float

    @property
    def affected(self) -> list[str]:
        return [f["feature"] for f in self.features if f["affected"]]

    @property
    def dominated(self) -> list[str]:
        return [f["feature"] for f in self.features if f["dominated"]]

    def to_dict(self) -> dict[str, Any]:
        return {"n_features": len(self.features), "n_affected": len(self.affected), "n_dominated": len(self.dominated),
                "affected": self.affected, "dominated": self.dominated, "classifier": self.classifier,
                "features": self.features, "alpha": self.alpha, "dominance": self.dominance}


def kruskal_per_feature(features: np.ndarray, sites: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, p, epsilon²) per column; a feature constant across all rows gets H = 0, p = 1."""
    names = np.unique(sites)
    n, p = features.shape
    h = np.zeros(p)
    pv = np.ones(p)
    for j in range(p):
        column = features[:, j]
        if np.ptp(column) == 0:
            continue
        result = sps.kruskal(*(column[sites == s] for s in names))
        h[j], pv[j] = float(result.statistic), float(result.pvalue)
    return h, pv, h / (n - 1)


def site_classifier(features: np.ndarray, sites: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """Cross-validated balanced accuracy of telling the site from the features, with chance = 1 / sites."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    names, counts = np.unique(sites, return_counts=True)
    k = int(min(folds, counts.min()))
    if k < 2:
        return {"balanced_accuracy": None, "not_measured": "a site has fewer than 2 rows"}
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    scores, predictions = [], np.empty(len(sites), dtype=object)
    for train, test in splitter.split(features, sites):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
        model.fit(features[train], sites[train])
        predicted = model.predict(features[test])
        predictions[test] = predicted
        scores.append(balanced_accuracy_score(sites[test], predicted))
    pooled = float(balanced_accuracy_score(sites, predictions.astype(str)))
    return {"balanced_accuracy": pooled, "fold_mean": float(np.mean(scores)), "fold_std": float(np.std(scores)),
            "chance": 1.0 / len(names), "folds": k, "n": int(len(sites)),
            "model": "StandardScaler + multinomial LogisticRegression, stratified K-fold (out-of-fold predictions)"}


def site_effects(features: np.ndarray, names: Sequence[str], sites: np.ndarray, *, alpha: float = 0.05,
                 dominance: float = DOMINANCE, correction: str = "bh", seed: int = 0,
                 classifier: bool = True) -> SiteEffects:
    """Per-feature site effects with FDR control, and (optionally) the multivariate site classifier."""
    sites = np.asarray(sites).astype(str)
    h, p, eps2 = kruskal_per_feature(np.asarray(features, dtype=float), sites)
    adjusted = adjust_p_values(p, correction)
    rows = [{"feature": name, "H": float(h[j]), "p_value": float(p[j]), "p_adjusted": float(adjusted[j]),
             "epsilon2": float(eps2[j]), "affected": bool(adjusted[j] < alpha),
             "dominated": bool(adjusted[j] < alpha and eps2[j] >= dominance)} for j, name in enumerate(names)]
    clf = site_classifier(np.asarray(features, dtype=float), sites, seed=seed) if classifier else {}
    return SiteEffects(rows, clf, alpha, dominance)


@dataclass
class FeaturesAuditRequest:
    table: Path
    site_column: str
    label_column: str | None = None
    covariates: tuple[str, ...] = ()
    id_column: str | None = None
    alpha: float = 0.05
    dominance: float = DOMINANCE
    correction: str = "bh"
    combat: bool = True
    seed: int = 0
    min_rows_per_site: int = MIN_ROWS_PER_SITE


@dataclass(frozen=True)
class FeaturesAudit:
    table: FeaturesTable
    before: SiteEffects
    after: SiteEffects | None
    combat: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        names, counts = np.unique(self.table.sites, return_counts=True)
        return {"kind": "features_table", "table": str(self.table.path),
                "sites": {str(s): int(c) for s, c in zip(names, counts)},
                "n_rows": int(len(self.table.sites)), "n_features": len(self.table.names),
                "ignored_columns": list(self.table.ignored), "covariates": list(self.table.covariates),
                "before": self.before.to_dict(), "after_combat": self.after.to_dict() if self.after else None,
                "combat": self.combat, "settings": self.settings}


def run_features_audit(request: FeaturesAuditRequest) -> FeaturesAudit:
    """Load, measure site effects, apply ComBat (unless ``combat`` is off) and measure again."""
    if not 0 < request.alpha < 1:
        raise ConfigError(f"--alpha must be in (0, 1), got {request.alpha}")
    table = load_features_table(request.table, request.site_column, label_column=request.label_column,
                                covariates=request.covariates, id_column=request.id_column,
                                min_rows_per_site=request.min_rows_per_site)
    options = dict(alpha=request.alpha, dominance=request.dominance, correction=request.correction, seed=request.seed)
    before = site_effects(table.features, table.names, table.sites, **options)
    after, combat_info = None, {}
    if request.combat:
        covariate_names = list(table.design_names)
        harmonized = ComBat().fit_transform(table.features, table.sites.tolist(), table.design,
                                            covariate_names=covariate_names)  # names its leakage warnings
        after = site_effects(harmonized, table.names, table.sites, **options)
        combat_info = {"method": "ComBat (parametric empirical Bayes, Johnson et al. 2007)",
                       "preserved_covariates": covariate_names}
    settings = {"site_column": request.site_column, "label_column": request.label_column,
                "covariates": list(request.covariates), "alpha": request.alpha, "correction": request.correction,
                "dominance": request.dominance, "seed": request.seed,
                "test": "Kruskal-Wallis per feature, Benjamini-Hochberg over features, epsilon² = H/(n-1)"}
    return FeaturesAudit(table, before, after, combat_info, settings)

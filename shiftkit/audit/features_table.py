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

The audit a radiomics paper reports adds (each in its own module, run from :func:`run_features_audit`):

- CovBat (:mod:`shiftkit.harmonize.combat.covbat`) beside ComBat, and the share of site-affected features before,
  after ComBat and after CovBat (these per-feature tests describe the table: the harmonizers are fitted on all rows);
- the site classifier with each harmonizer fitted **inside the training folds only**, linear and quadratic, against
  chance, plus the all-rows shortcut as a leakage check (:mod:`shiftkit.audit.site_classifier`);
- test-retest ICC(3,1) and CCC when a ``patient`` column repeats (:mod:`shiftkit.audit.repeatability`);
- the label's (or ``effect_of``'s) effect per feature before and after (:mod:`shiftkit.audit.biology`);
- the downstream leave-one-site-out AUC with none, ComBat and CovBat fitted in the training folds, the held-out
  site under a stated unseen-site policy, and the all-rows shortcut as a leakage check
  (:mod:`shiftkit.audit.downstream`);
- the leakage warnings: a covariate tied to the site, and the outcome preserved as a ComBat covariate.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats as sps

from shiftkit.shift.corrections import adjust_p_values
from shiftkit.data.feature_table import Covariate, FeatureTable, design_matrix
from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.combat import ComBat, LeakageWarning
from shiftkit.harmonize.combat.covbat import VARIANCE
from shiftkit.hooks import StageHook

MIN_ROWS_PER_SITE = 3
DOMINANCE = 0.26
PATIENT = "patient"  # the manifest column radiomics extract copies: repeated scans of one patient


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
    design_sources: tuple[str, ...] = ()  # the covariate column each design column encodes
    extra: dict[str, list[str]] = field(default_factory=dict)  # raw cells of the patient / effect-of columns
    dropped_sites: dict[str, int] = field(default_factory=dict)  # sites left out for having too few rows
    patient_column: str | None = None  # the column naming each row's patient (repeated scans), if any


def load_features_table(path: Path, site_column: str, *, label_column: str | None = None,
                        covariates: Sequence[str] = (), id_column: str | None = None,
                        min_rows_per_site: int = MIN_ROWS_PER_SITE, patient_column: str | None = None,
                        effect_of: str | None = None, preserve_label: bool = True,
                        drop_small_sites: bool = False, detect_patient: bool = False) -> FeaturesTable:
    """Read and check a features CSV with the one feature-table reader (:mod:`shiftkit.data.feature_table`, shared
    with ``shiftkit combat``); every problem is a one-line :class:`DataError` naming the file, column, row.

    ``patient_column`` and ``effect_of`` are kept aside (never features) and their cells returned in ``extra``;
    ``preserve_label=False`` keeps the label out of the ComBat design; ``drop_small_sites`` leaves out the rows of a
    site with fewer than ``min_rows_per_site`` rows (named in ``dropped_sites``) instead of refusing the table;
    ``detect_patient`` takes a column named ``patient`` (what ``radiomics extract`` writes) as the patient column."""
    table = FeatureTable.read(path, "features table")
    if patient_column is None and detect_patient and PATIENT in table.header and PATIENT not in (
            site_column, label_column, effect_of, *covariates):
        patient_column = PATIENT
    for option, column in (("--site-column", site_column), ("--label-column", label_column),
                           ("--id-column", id_column), ("--patient-column", patient_column),
                           ("--effect-of", effect_of), *(("--covariates", c) for c in covariates)):
        if column is not None:
            table.require(column, option)
    sites = table.sites(site_column)
    names, counts = np.unique(sites, return_counts=True)
    small = [(s, c) for s, c in zip(names, counts) if c < min_rows_per_site]
    dropped: dict[str, int] = {}
    if small and drop_small_sites and len(small) < len(names):
        dropped = {str(s): int(c) for s, c in small}
        keep = [i for i, s in enumerate(sites.tolist()) if s not in dropped]
        table = FeatureTable(table.path, table.header, [table.rows[i] for i in keep], [table.numbers[i] for i in keep])
        sites = table.sites(site_column)
        names, counts = np.unique(sites, return_counts=True)
        small = []
    if len(names) < 2:
        raise DataError(f"{path}: column '{site_column}' has a single site ('{names[0]}'); an audit needs two or more")
    if small:
        raise DataError(f"{path}: site '{small[0][0]}' has {small[0][1]} row(s); each site needs at least "
                        f"{min_rows_per_site} (--drop-small-sites leaves such sites out)")
    feature_names, ignored = table.feature_columns({site_column, label_column, id_column, patient_column, effect_of,
                                                    *covariates})
    matrix = table.matrix(feature_names)
    kept = [c for c in dict.fromkeys(([label_column] if label_column else []) + list(covariates)) if c != site_column]
    preserved = [c for c in kept if preserve_label or c != label_column]
    fitted = [Covariate.fit(table, c) for c in preserved]
    design, design_names = design_matrix(table, fitted)
    sources = tuple(c.name for c in fitted for _ in c.columns())
    extra = {c: table.column(c) for c in (patient_column, effect_of) if c is not None}
    return FeaturesTable(table.path, matrix, tuple(feature_names), sites, {c: table.column(c) for c in kept},
                         tuple(ignored), design, tuple(design_names), sources, extra, dropped, patient_column)


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
                "median_epsilon2": float(np.median([f["epsilon2"] for f in self.features])) if self.features else None,
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
    """What ``audit --features-table`` was asked. The fields after ``min_rows_per_site`` drive the radiomics
    checks (:mod:`shiftkit.audit.features_checks`); their defaults run them all."""

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
    covbat: bool = True
    covbat_variance: float = VARIANCE
    patient_column: str | None = None  # None: a column named "patient", if there is one
    effect_of: str | None = None  # None: the label
    positive_label: str | None = None
    negative_labels: tuple[str, ...] = ()
    downstream: bool = True
    unseen_site: str = "standardize"
    downstream_c: float = 1.0
    folds: int = 5
    resamples: int = 200
    preserve_label: bool = True
    drop_small_sites: bool = False
    checks: bool = True  # False: only the per-feature tests (the audit as it was before the radiomics checks)


@dataclass(frozen=True)
class FeaturesAudit:
    table: FeaturesTable
    before: SiteEffects
    after: SiteEffects | None
    combat: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    after_covbat: SiteEffects | None = None
    covbat: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)  # site_classifier, test_retest, biology, downstream, notes
    warnings: tuple[str, ...] = ()
    seconds: dict = field(default_factory=dict)
    projections: dict = field(default_factory=dict)  # method -> n x 2 PCA coordinates (plots only, not in JSON)

    def share_affected(self) -> dict[str, float | None]:
        """The share of features that are site-affected before, after ComBat and after CovBat."""
        n = len(self.table.names)
        return {"none": len(self.before.affected) / n,
                "combat": len(self.after.affected) / n if self.after else None,
                "covbat": len(self.after_covbat.affected) / n if self.after_covbat else None}

    def to_dict(self) -> dict[str, Any]:
        names, counts = np.unique(self.table.sites, return_counts=True)
        return {"kind": "features_table", "table": str(self.table.path),
                "sites": {str(s): int(c) for s, c in zip(names, counts)},
                "n_rows": int(len(self.table.sites)), "n_features": len(self.table.names),
                "ignored_columns": list(self.table.ignored), "covariates": list(self.table.covariates),
                "before": self.before.to_dict(), "after_combat": self.after.to_dict() if self.after else None,
                "combat": self.combat, "settings": self.settings,
                "after_covbat": self.after_covbat.to_dict() if self.after_covbat else None, "covbat": self.covbat,
                "share_site_affected": self.share_affected(), "dropped_sites": self.table.dropped_sites,
                "site_classifier": self.checks.get("site_classifier"),
                "test_retest": self.checks.get("test_retest"), "biology": self.checks.get("biology"),
                "downstream": self.checks.get("downstream"), "notes": self.checks.get("notes", []),
                "warnings": list(self.warnings), "seconds": self.seconds}


def outcome_covariate_message(label_column: str) -> str:
    """The leakage warning for an outcome that ComBat is told to preserve."""
    return (f"the label '{label_column}' is preserved as a ComBat covariate: right for describing site effects in "
            "labelled data, but features harmonized this way carry the outcome (leakage) and cannot be produced "
            "for a new patient without its label; the downstream model here harmonizes without it "
            "(--no-preserve-label leaves it out everywhere)")


def _projections(matrices: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """2-D PCA coordinates of each standardized matrix (for the before/after scatter plots)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    out = {}
    for method, x in matrices.items():
        if x.shape[1] >= 2:
            out[method] = PCA(n_components=2, random_state=0).fit_transform(StandardScaler().fit_transform(x))
    return out


def run_features_audit(request: FeaturesAuditRequest, on_stage: StageHook | None = None) -> FeaturesAudit:
    """Load, measure site effects, apply ComBat and CovBat on all rows (unless ``combat`` is off) and measure
    again; then the radiomics checks (:mod:`shiftkit.audit.features_checks`) unless ``checks`` is off. Leakage
    warnings are collected into the result and re-emitted as :class:`LeakageWarning`."""
    from shiftkit.audit.downstream import binary_task
    from shiftkit.audit.features_checks import run_checks
    from shiftkit.audit.fold_harmonize import POLICIES
    from shiftkit.harmonize.combat.covbat import CovBat

    if not 0 < request.alpha < 1:
        raise ConfigError(f"--alpha must be in (0, 1), got {request.alpha}")
    if request.unseen_site not in POLICIES:
        raise ConfigError(f"--unseen-site must be one of {', '.join(POLICIES)}, got '{request.unseen_site}'")
    if not 0 < request.covbat_variance <= 1:
        raise ConfigError(f"--covbat-variance must be in (0, 1], got {request.covbat_variance}")
    if request.folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {request.folds}")
    if request.downstream_c <= 0:
        raise ConfigError(f"--downstream-c must be positive, got {request.downstream_c}")
    if request.effect_of is not None and request.effect_of in (request.label_column, *request.covariates):
        raise ConfigError(f"--effect-of '{request.effect_of}' is already the label or a covariate; the label's "
                          "effect is tracked by default")
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    # One BLAS thread: the matrices are small (rows x ~100 features), where extra threads only add synchronisation,
    # and on a busy machine they cost 10-50x (measured: a 800 x 101 logistic regression 0.06 s vs 0.9 s).
    with warnings.catch_warnings(record=True) as recorded, threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("always", LeakageWarning)
        table = load_features_table(request.table, request.site_column, label_column=request.label_column,
                                    covariates=request.covariates, id_column=request.id_column,
                                    min_rows_per_site=request.min_rows_per_site,
                                    patient_column=request.patient_column, effect_of=request.effect_of,
                                    preserve_label=request.preserve_label, drop_small_sites=request.drop_small_sites,
                                    detect_patient=True)
        if request.positive_label is not None or request.negative_labels:
            if request.label_column is None:
                raise ConfigError("--positive-label and --negative-label name classes of --label-column; give it")
            binary_task(np.asarray(table.covariates[request.label_column]), request.positive_label,
                        tuple(request.negative_labels))  # a wrong class name fails now, not after the slow checks
        options = dict(alpha=request.alpha, dominance=request.dominance, correction=request.correction,
                       seed=request.seed)
        before = site_effects(table.features, table.names, table.sites, **options)
        after, combat_info, after_covbat, covbat_info = None, {}, None, {}
        matrices = {"none": table.features}
        seconds["load_and_tests"] = time.perf_counter() - started
        if request.combat:
            covariate_names = list(table.design_names)
            harmonized = ComBat().fit_transform(table.features, table.sites.tolist(), table.design,
                                                covariate_names=covariate_names)  # names its leakage warnings
            after = site_effects(harmonized, table.names, table.sites, **options)
            combat_info = {"method": "ComBat (parametric empirical Bayes, Johnson et al. 2007)",
                           "preserved_covariates": covariate_names}
            matrices["combat"] = harmonized
            if request.label_column is not None and request.label_column in table.design_sources:
                warnings.warn(outcome_covariate_message(request.label_column), LeakageWarning, stacklevel=2)
            if request.covbat:
                model = CovBat(variance=request.covbat_variance)
                matrices["covbat"] = model.fit_transform(table.features, table.sites.tolist(), table.design,
                                                         covariate_names=covariate_names, check_leakage=False)
                after_covbat = site_effects(matrices["covbat"], table.names, table.sites, **options)
                covbat_info = {**model.to_dict(), "preserved_covariates": covariate_names}
        seconds["harmonize_all_rows"] = time.perf_counter() - started - seconds["load_and_tests"]
        checks: dict = {}
        if request.checks:
            mark = time.perf_counter()
            checks = run_checks(table, matrices, request, on_stage=on_stage)
            seconds["checks"] = time.perf_counter() - mark
        projections = _projections(matrices)
    caught = list(dict.fromkeys(str(w.message) for w in recorded if issubclass(w.category, LeakageWarning)))
    for message in caught:  # re-emit for callers outside this function (the CLI prints them from the report)
        warnings.warn(message, LeakageWarning, stacklevel=2)
    seconds["total"] = time.perf_counter() - started
    settings = {"site_column": request.site_column, "label_column": request.label_column,
                "covariates": list(request.covariates), "alpha": request.alpha, "correction": request.correction,
                "dominance": request.dominance, "seed": request.seed,
                "test": "Kruskal-Wallis per feature, Benjamini-Hochberg over features, epsilon² = H/(n-1)",
                "covbat": request.combat and request.covbat, "covbat_variance": request.covbat_variance,
                "patient_column": table.patient_column, "effect_of": request.effect_of,
                "positive_label": request.positive_label, "negative_labels": list(request.negative_labels),
                "downstream": request.downstream, "unseen_site": request.unseen_site,
                "downstream_c": request.downstream_c, "folds": request.folds, "resamples": request.resamples,
                "preserve_label": request.preserve_label, "drop_small_sites": request.drop_small_sites}
    return FeaturesAudit(table, before, after, combat_info, settings, after_covbat, covbat_info, checks,
                         tuple(caught), {k: round(v, 3) for k, v in seconds.items()}, projections)

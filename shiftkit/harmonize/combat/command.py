"""``shiftkit combat``: read a features CSV, fit ComBat (or re-apply a saved model), write the harmonized CSV and the
model beside it. The table is read by :mod:`shiftkit.data.feature_table`, the same reader as
``audit --features-table``; the model is :class:`~shiftkit.harmonize.combat.model.ComBat`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shiftkit.data.feature_table import Covariate, FeatureTable, design_matrix, parse_covariates
from shiftkit.errors import ConfigError, DataError, ModelError
from shiftkit.harmonize.base import constructor_params
from shiftkit.harmonize.combat.leakage import LeakageWarning, leakage_messages
from shiftkit.harmonize.combat.model import BeyondFloat64Error, ComBat
from shiftkit.overwrite import refuse_overwriting_inputs


@dataclass
class CombatRequest:
    """What ``shiftkit combat`` was asked; ComBat's constructor arguments (``reference_site``, ``parametric``, ``eb``,
    ``mean_only``) are read from here by name, so a new one must be added here too (a missing one fails at once)."""

    features: Path
    out: Path
    site_column: str = "site"
    covariates: str | None = None
    reference_site: str | None = None
    apply: Path | None = None
    exclude: tuple[str, ...] = ()
    label_column: str | None = None
    parametric: bool = True
    eb: bool = True
    mean_only: bool = False


@dataclass(frozen=True)
class CombatResult:
    out: Path
    model_path: Path | None
    sites: dict[str, int]
    features: list[str]
    passthrough: list[str]
    covariates: list[str]
    before: dict
    after: dict
    warnings: list[str]

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "model": str(self.model_path) if self.model_path else None,
            "sites": self.sites,
            "features": self.features,
            "passthrough_columns": self.passthrough,
            "covariates": self.covariates,
            "site_effect_before": self.before,
            "site_effect_after": self.after,
            "warnings": self.warnings,
        }


def model_path_for(out: Path) -> Path:
    """The fitted model lies beside the harmonized CSV: ``out.csv`` -> ``out.combat.json``."""
    return out.with_name(f"{out.stem}.combat.json")


def site_effect_summary(values: np.ndarray, sites: np.ndarray) -> dict:
    """How different the sites look, averaged over features: the largest |site mean - overall mean| in units
    of the overall SD, and the ratio of the largest to the smallest per-site SD (both scale-free: computed on each
    column divided by its largest absolute value, so that 1e300 or 1e-200 features neither overflow nor underflow)."""
    magnitude = np.abs(values).max(axis=0)
    values = values / np.where(magnitude > 0, magnitude, 1.0)
    sd = values.std(axis=0)
    sd[sd == 0] = 1.0
    levels = np.unique(sites)
    means = np.vstack([values[sites == s].mean(axis=0) for s in levels])
    sds = np.vstack([values[sites == s].std(axis=0) for s in levels])
    location = np.abs(means - values.mean(axis=0)).max(axis=0) / sd
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(sds.min(axis=0) > 0, sds.max(axis=0) / sds.min(axis=0), 1.0)
    return {"location": float(location.mean()), "scale_ratio": float(scale.mean())}


def _saved_columns(request: CombatRequest, table: FeatureTable, extra: dict) -> tuple[str, list, list[Covariate]]:
    """(site column, features, covariates) a saved model was fitted with, checked against ``table``."""
    try:
        site_column, features = extra["site_column"], list(extra["features"])
        covariates = [Covariate.from_dict(c) for c in extra["covariates"]]
    except (KeyError, TypeError):
        raise ModelError(f"{request.apply}: the model has no CSV column description (saved by the API?)") from None
    missing = [c for c in features if c not in table.header]
    if missing:
        raise DataError(f"{request.features}: feature column '{missing[0]}' of the model is missing")
    return site_column, features, covariates


def _new_columns(request: CombatRequest, table: FeatureTable) -> tuple[list, list[Covariate]]:
    """(features, covariates) for a new fit: the columns named by the request, and the numeric rest as features."""
    spec = parse_covariates(request.covariates)
    table.require(request.site_column, "--site-column")
    for name, _ in spec:
        table.require(name, "--covariates")
        if name == request.site_column:
            raise ConfigError(f"--covariates: '{name}' is the site column")
    if request.label_column:
        table.require(request.label_column, "--label-column")
    kept = {request.site_column, request.label_column, *(name for name, _ in spec)}
    features, _ = table.feature_columns(kept, request.exclude)
    return features, [Covariate.fit(table, name, kind) for name, kind in spec]


def run_combat(request: CombatRequest) -> CombatResult:
    """Read the CSV, fit ComBat (or load ``request.apply``), harmonize, write the CSV and the model beside it."""
    if request.out.suffix.lower() != ".csv":
        raise ConfigError(f"--out {request.out}: give a .csv file name (the model is written beside it)")
    writes = [request.out] + ([model_path_for(request.out)] if request.apply is None else [])
    refuse_overwriting_inputs(request.out, writes, {"input table": request.features, "saved model": request.apply})
    if request.apply is not None and (request.covariates or request.reference_site or request.exclude):
        raise ConfigError("--apply re-uses the saved model's columns, covariates and reference site; "
                          "leave out --covariates, --reference-site and --exclude")
    table = FeatureTable.read(request.features)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always", LeakageWarning)
        if request.apply is not None:
            model, extra = ComBat.load_with_extra(request.apply)
            site_column, features, covariates = _saved_columns(request, table, extra)
        else:
            site_column = request.site_column
            features, covariates = _new_columns(request, table)
            model = ComBat(**{name: getattr(request, name) for name in constructor_params(ComBat())})
        sites = table.sites(site_column)
        values = table.matrix(features)
        cov, cov_names = design_matrix(table, covariates)
        if request.apply is None:
            labels = table.column(request.label_column) if request.label_column else None
            for message in leakage_messages(
                {c.name: table.column(c.name) if c.kind == "categorical" else c.encode(table)[:, 0]
                 for c in covariates},
                [c.name for c in covariates if c.kind == "categorical"],
                {"site": sites, "label": labels},
            ):
                warnings.warn(message, LeakageWarning, stacklevel=2)
            model.fit(values, sites, cov, feature_names=features, covariate_names=cov_names or None,
                      check_leakage=False)
        try:
            harmonized = model.transform(values, sites, cov)
        except BeyondFloat64Error as exc:  # name the CSV row, as the reader does
            raise DataError(f"{request.features}: feature column '{exc.feature}' row {table.numbers[exc.row]}: "
                            f"the harmonized value is beyond float64's range (|x| > 1.8e308; {exc.count} value(s) "
                            "in all); rescale the column first") from None
        caught = [str(w.message) for w in recorded if issubclass(w.category, LeakageWarning)]
    for message in caught:  # re-emit for callers outside this function
        warnings.warn(message, LeakageWarning, stacklevel=2)
    table.write(request.out, {name: harmonized[:, j] for j, name in enumerate(features)})
    model_path = None
    if request.apply is None:
        model_path = model_path_for(request.out)
        model.save(model_path, extra={
            "site_column": site_column,
            "features": features,
            "covariates": [c.to_dict() for c in covariates],
            "label_column": request.label_column,
            "fitted_on": str(request.features),
        })
    levels, counts = np.unique(sites, return_counts=True)
    return CombatResult(
        out=request.out, model_path=model_path, sites={str(s): int(c) for s, c in zip(levels, counts)},
        features=features, passthrough=[c for c in table.header if c not in features], covariates=cov_names,
        before=site_effect_summary(values, sites), after=site_effect_summary(harmonized, sites), warnings=caught,
    )

"""ComBat: remove site (scanner, hospital) effects from tabular features such as radiomics, keeping biology.

Each feature ``g`` of row ``i`` at site ``s`` is modelled as (Johnson, Li & Rabinovic 2007; Fortin et al. 2017/2018)

    y_ig = alpha_g + X_i beta_g + gamma_sg + sqrt(delta_sg) * eps_ig,

a location (``gamma``) and scale (``delta``) effect per site and feature on top of the biological covariates
``X`` that must survive. The algorithm follows neuroCombat (``Jfortin1/neuroCombat``) step by step:

1. least squares of every feature on [site one-hot | covariates]; the grand mean is the sample-size-weighted
   mean of the site intercepts (or the reference site's intercept), the pooled variance is the mean squared
   residual (divided by n, over the reference site's rows only when there is one);
2. standardize: ``z = (y - grand_mean - X beta) / sqrt(var_pooled)``;
3. per site, ``gamma_hat`` = mean of ``z`` and ``delta_hat`` = its variance (ddof 1);
4. empirical Bayes (:mod:`.bayes`): the posterior means of ``gamma`` and ``delta``; ``eb=False`` keeps the
   per-feature estimates;
5. ``y* = sqrt(var_pooled) * (z - gamma*) / sqrt(delta*) + grand_mean + X beta``.

Every feature is standardized before the fit (:mod:`.inputs`: its mean and SD, computed on the column divided by
its largest absolute value so that no square overflows or underflows) and the result mapped back after: ComBat is
equivariant (features times k give the harmonized features times k), so this changes nothing for ordinary data,
and features at 1e300 or 1e-200 are harmonized correctly instead of turning into ``inf`` or being left wrong. The fitted
estimates (``grand_mean_``, ``var_pooled_``, ``beta_covariates_``, ...) are therefore in standardized units;
``center_`` and ``scale_`` map them back. A harmonized value beyond float64's range is refused, naming the feature.

With ``reference_site`` (M-ComBat, Stein et al. 2015; ``ref_batch`` in neuroCombat/sva) the other sites are
mapped onto the reference, whose rows are returned unchanged. A fitted model re-applies to new rows from the
fitted sites (:meth:`ComBat.transform`) and is saved as JSON or NPZ (:mod:`.store`), never as a pickle. Its saved
settings are its constructor arguments (:func:`shiftkit.harmonize.base.constructor_params`), as for the image
harmonizers, so a new argument cannot be forgotten on save; a file without it loads with the default.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shiftkit.errors import ConfigError, DataError, ModelError
from shiftkit.harmonize.base import constructor_params
from shiftkit.harmonize.combat.bayes import non_parametric_posterior, parametric_posterior
from shiftkit.harmonize.combat.inputs import as_matrix, site_array, standardize, standardizer
from shiftkit.harmonize.combat.leakage import LeakageWarning, leakage_messages
from shiftkit.harmonize.combat.store import read_model, write_model

FORMAT = "shiftkit-combat"
VERSION = 2  # 2: center/scale (per-feature standardization); a version-1 model has none (center 0, scale 1)


class BeyondFloat64Error(DataError):
    """A harmonized value does not fit in float64; ``row`` (0-based) and ``feature`` say where."""

    def __init__(self, feature: str, row: int, count: int) -> None:
        self.feature, self.row, self.count = feature, row, count
        super().__init__(f"feature '{feature}' row {row}: the harmonized value is beyond float64's range "
                         f"(|x| > 1.8e308; {count} value(s) in all); rescale the feature first")


@dataclass(eq=False)
class ComBat:
    """Location/scale site harmonization with empirical Bayes (sklearn-like: ``fit``, ``transform``).

    ``parametric``: parametric EB priors (normal / inverse gamma) rather than the non-parametric integral;
    ``eb``: shrink the per-site estimates with EB at all; ``reference_site``: map the other sites onto this one
    and leave its rows unchanged; ``mean_only``: correct the location only.
    """

    parametric: bool = True
    eb: bool = True
    reference_site: str | None = None
    mean_only: bool = False
    # fitted state (not constructor arguments, so not saved as settings)
    sites_: list[str] = field(default_factory=list, init=False)
    site_counts_: list[int] = field(default_factory=list, init=False)
    feature_names_: list[str] | None = field(default=None, init=False)
    covariate_names_: list[str] | None = field(default=None, init=False)
    grand_mean_: np.ndarray | None = field(default=None, init=False)  # p
    var_pooled_: np.ndarray | None = field(default=None, init=False)  # p
    beta_covariates_: np.ndarray | None = field(default=None, init=False)  # q x p
    gamma_star_: np.ndarray | None = field(default=None, init=False)  # sites x p
    delta_star_: np.ndarray | None = field(default=None, init=False)  # sites x p
    gamma_hat_: np.ndarray | None = field(default=None, init=False)
    delta_hat_: np.ndarray | None = field(default=None, init=False)
    center_: np.ndarray | None = field(default=None, init=False)  # p: features enter as (y - center_) / scale_
    scale_: np.ndarray | None = field(default=None, init=False)  # p

    def fit(
        self,
        features: np.ndarray,
        sites: Sequence[str],
        covariates: np.ndarray | None = None,
        *,
        feature_names: Sequence[str] | None = None,
        covariate_names: Sequence[str] | None = None,
        labels: Sequence | None = None,
        check_leakage: bool = True,
    ) -> "ComBat":
        """Estimate the site effects on ``features`` (n x p) given one site per row and optional numeric
        ``covariates`` (n x q; one-hot encode categorical ones, dropping a level) whose effects are preserved.
        ``labels`` (optional) only feed the leakage check."""
        raw = as_matrix(features, "feature", feature_names)
        n, p = raw.shape
        center, scale = standardizer(raw)
        y = standardize(raw, center, scale)
        site = site_array(sites, n)
        cov = None
        if covariates is not None:
            cov = as_matrix(covariates, "covariate", covariate_names)
            if len(cov) != n:
                raise DataError(f"{len(cov)} covariate rows for {n} feature rows")
            if cov.shape[1] == 0:
                cov = None
        levels, counts = np.unique(site, return_counts=True)
        if len(levels) < 2:
            raise DataError(f"ComBat needs at least two sites; all rows are from '{levels[0]}'")
        small = [str(s) for s, c in zip(levels, counts) if c < 2]
        if small:
            raise DataError(f"site '{small[0]}' has only one row; ComBat needs at least two rows per site")
        if self.reference_site is not None and str(self.reference_site) not in set(levels):
            raise ConfigError(f"reference site '{self.reference_site}' is not among the sites ({', '.join(levels)})")
        if self.eb and p < 2:
            raise DataError("empirical Bayes pools information across features and needs at least two; use eb=False")
        q = 0 if cov is None else cov.shape[1]
        cov_names = list(covariate_names) if covariate_names is not None else [f"covariate {j}" for j in range(q)]
        if check_leakage and cov is not None:
            for message in leakage_messages(
                {cov_names[j]: cov[:, j] for j in range(q)}, [], {"site": site, "label": labels}
            ):
                warnings.warn(message, LeakageWarning, stacklevel=2)

        ref = None if self.reference_site is None else int(np.flatnonzero(levels == str(self.reference_site))[0])
        index = np.searchsorted(levels, site)
        batch = np.zeros((n, len(levels)))
        batch[np.arange(n), index] = 1.0
        if ref is not None:
            batch[:, ref] = 1.0  # the reference intercept is the common one; others are offsets from it
        design = batch if cov is None else np.hstack([batch, cov])
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise DataError(
                "the design [site one-hot | covariates] is singular: a covariate is constant or fully determined "
                "by the site (or by other covariates); drop it"
            )
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)  # (sites + q) x p
        if ref is not None:
            grand_mean = coef[ref]
        else:
            grand_mean = (counts / n) @ coef[: len(levels)]
        beta = coef[len(levels):]
        fitted = design @ coef
        rows = index == ref if ref is not None else np.ones(n, dtype=bool)
        var_pooled = ((y[rows] - fitted[rows]) ** 2).mean(axis=0)
        if (var_pooled == 0).any():
            nonzero = var_pooled[var_pooled > 0]
            var_pooled[var_pooled == 0] = np.median(nonzero) if nonzero.size else 1.0
        covariate_part = cov @ beta if cov is not None else 0.0
        z = (y - grand_mean - covariate_part) / np.sqrt(var_pooled)

        gamma_hat = np.linalg.lstsq(batch, z, rcond=None)[0]  # sites x p
        delta_hat = np.ones((len(levels), p)) if self.mean_only else np.vstack(
            [z[index == s].var(axis=0, ddof=1) for s in range(len(levels))]
        )
        delta_hat[delta_hat == 0] = 1.0
        if not self.eb:
            gamma_star, delta_star = gamma_hat.copy(), delta_hat.copy()
        elif self.parametric:
            gamma_star, delta_star = parametric_posterior(z, index, gamma_hat, delta_hat, self.mean_only)
        else:
            gamma_star, delta_star = non_parametric_posterior(z, index, gamma_hat, delta_hat)
        if ref is not None:
            gamma_star[ref], delta_star[ref] = 0.0, 1.0

        self.sites_ = [str(s) for s in levels]
        self.site_counts_ = [int(c) for c in counts]
        self.feature_names_ = list(feature_names) if feature_names is not None else None
        self.covariate_names_ = cov_names if q else None
        self.grand_mean_, self.var_pooled_ = grand_mean, var_pooled
        self.beta_covariates_ = beta if q else np.zeros((0, p))
        self.gamma_hat_, self.delta_hat_ = gamma_hat, delta_hat
        self.gamma_star_, self.delta_star_ = gamma_star, delta_star
        self.center_, self.scale_ = center, scale
        return self

    def _check_fitted(self) -> None:
        if self.gamma_star_ is None:
            raise ModelError("this ComBat model is not fitted; call fit() or load a saved model")

    def covariate_effects(self, covariates: Any, rows: int) -> np.ndarray | float:
        """The preserved covariates' effects (rows x features), or 0.0 when the model preserves none."""
        q = len(self.beta_covariates_)
        if not q:
            return 0.0
        if covariates is None:
            raise DataError(f"the model preserves {q} covariate(s) ({', '.join(self.covariate_names_)}); give them")
        cov = as_matrix(covariates, "covariate", self.covariate_names_)
        if cov.shape != (rows, q):
            raise DataError(f"expected covariates of shape ({rows}, {q}), got {cov.shape}")
        return cov @ self.beta_covariates_

    def transform(
        self, features: np.ndarray, sites: Sequence[str], covariates: np.ndarray | None = None
    ) -> np.ndarray:
        """Harmonize rows (from sites seen in ``fit``) with the fitted estimates; reference-site rows are
        returned unchanged."""
        self._check_fitted()
        y = as_matrix(features, "feature", self.feature_names_)
        n, p = y.shape
        if p != len(self.grand_mean_):
            raise DataError(f"the model was fitted on {len(self.grand_mean_)} features, got {p}")
        site = site_array(sites, n)
        unknown = sorted(set(site) - set(self.sites_))
        if unknown:
            raise DataError(
                f"site '{unknown[0]}' was not in the data ComBat was fitted on (fitted sites: {', '.join(self.sites_)})"
                + (f"; {len(unknown) - 1} more unknown" if len(unknown) > 1 else "")
            )
        covariate_part = self.covariate_effects(covariates, n)
        index = np.searchsorted(np.asarray(self.sites_), site)
        center = np.zeros(p) if self.center_ is None else self.center_  # a version-1 model: raw units
        scale = np.ones(p) if self.scale_ is None else self.scale_
        sd = np.sqrt(self.var_pooled_)
        z = (standardize(y, center, scale) - self.grand_mean_ - covariate_part) / sd
        z = (z - self.gamma_star_[index]) / np.sqrt(self.delta_star_[index])
        with np.errstate(over="ignore", invalid="ignore"):
            out = (z * sd + self.grand_mean_ + covariate_part) * scale + center
        if self.reference_site is not None:
            keep = site == str(self.reference_site)
            out[keep] = y[keep]
        bad = ~np.isfinite(out)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise BeyondFloat64Error(self.feature_names_[col] if self.feature_names_ else f"column {col}", row,
                                     int(bad.sum()))
        return out

    def fit_transform(
        self, features: np.ndarray, sites: Sequence[str], covariates: np.ndarray | None = None, **fit_options
    ) -> np.ndarray:
        return self.fit(features, sites, covariates, **fit_options).transform(features, sites, covariates)

    # -- persistence: settings + fitted arrays; the files themselves are .store's -----------------------------------
    _ARRAYS = ("grand_mean_", "var_pooled_", "beta_covariates_", "gamma_star_", "delta_star_", "gamma_hat_",
               "delta_hat_", "center_", "scale_")
    _OPTIONAL = ("center_", "scale_")  # absent from version-1 models

    def to_dict(self) -> dict:
        """The settings (every constructor argument) and the fitted metadata; the arrays are :meth:`arrays`."""
        self._check_fitted()
        return {
            "format": FORMAT,
            "version": VERSION,
            **constructor_params(self),
            "sites": self.sites_,
            "site_counts": self.site_counts_,
            "feature_names": self.feature_names_,
            "covariate_names": self.covariate_names_,
            "shape": {"features": len(self.grand_mean_), "covariates": len(self.beta_covariates_)},
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays by their saved names (``grand_mean``, ...)."""
        return {name.rstrip("_"): getattr(self, name) for name in self._ARRAYS if getattr(self, name) is not None}

    @classmethod
    def from_dict(cls, data: dict, arrays: dict[str, np.ndarray]) -> "ComBat":
        """The model :meth:`to_dict` and :meth:`arrays` describe; a setting missing from ``data`` (a file saved
        before that constructor argument existed) takes its default."""
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
        model = cls(**{name: data[name] for name in constructor_params(cls()) if name in data})
        model.sites_, model.site_counts_ = list(data["sites"]), list(data["site_counts"])
        model.feature_names_, model.covariate_names_ = data["feature_names"], data["covariate_names"]
        for name in cls._ARRAYS:
            if name in cls._OPTIONAL and name.rstrip("_") not in arrays:
                continue
            setattr(model, name, np.asarray(arrays[name.rstrip("_")], dtype=np.float64))
        shape = data["shape"]
        model.beta_covariates_ = model.beta_covariates_.reshape(shape["covariates"], shape["features"])
        return model

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """``.npz`` or JSON (any other suffix); ``extra`` is stored alongside (e.g. the CSV column encodings)."""
        write_model(Path(path), {**self.to_dict(), "extra": extra or {}}, self.arrays())

    @classmethod
    def load(cls, path: str | Path) -> "ComBat":
        model, _ = cls.load_with_extra(path)
        return model

    @classmethod
    def load_with_extra(cls, path: str | Path) -> tuple["ComBat", dict]:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: ComBat model file not found")
        try:
            meta, arrays = read_model(path)
            return cls.from_dict(meta, arrays), meta.get("extra", {})
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
            raise ModelError(f"{path}: not a shiftkit ComBat model ({type(exc).__name__}: {exc})") from None

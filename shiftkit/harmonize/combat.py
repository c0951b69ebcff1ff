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
4. empirical Bayes: a normal prior on ``gamma`` and an inverse-gamma prior on ``delta``, with hyper-parameters
   estimated across features by moments, and the posterior means found by iterating to a relative change of
   1e-4 (parametric), or integrated over the other features' estimates (non-parametric); ``eb=False`` keeps the
   per-feature estimates;
5. ``y* = sqrt(var_pooled) * (z - gamma*) / sqrt(delta*) + grand_mean + X beta``.

Every feature is standardized before the fit (its mean and SD, computed on the column divided by its largest
absolute value so that no square overflows or underflows) and the result mapped back after: ComBat is equivariant
(features times k give the harmonized features times k), so this changes nothing for ordinary data, and features
at 1e300 or 1e-200 are harmonized correctly instead of turning into ``inf`` or being left wrong. The fitted
estimates (``grand_mean_``, ``var_pooled_``, ``beta_covariates_``, ...) are therefore in standardized units;
``center_`` and ``scale_`` map them back. A harmonized value beyond float64's range is refused, naming the feature.

With ``reference_site`` (M-ComBat, Stein et al. 2015; ``ref_batch`` in neuroCombat/sva) the other sites are
mapped onto the reference, whose rows are returned unchanged. A fitted model re-applies to new rows from the
fitted sites (:meth:`ComBat.transform`) and is saved as JSON or NPZ, never as a pickle.

Covariates that are strongly associated with the site (or with the label to be predicted) are flagged with a
:class:`LeakageWarning`: with site-confounded covariates ComBat cannot tell biology from site, and preserving a
label-associated covariate carries label information into the harmonized features (and needs it at test time).
The association is the correlation ratio eta (for two groups, the absolute point-biserial correlation) for a
numeric covariate and Cramér's V for a categorical one; the warning fires at ``LEAKAGE_THRESHOLD`` (0.5, a
"large" association in Cohen's conventions for both).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from shiftkit.errors import ConfigError, DataError, ModelError
from shiftkit.io import atomic_write, write_json
from shiftkit.overwrite import refuse_overwriting_inputs

LEAKAGE_THRESHOLD = 0.5
CONVERGENCE = 1e-4  # relative change that stops the parametric EB iteration (neuroCombat's it_sol)
MAX_ITERATIONS = 1000
FORMAT = "shiftkit-combat"
VERSION = 2  # 2: center/scale (per-feature standardization); a version-1 model has none (center 0, scale 1)


class LeakageWarning(UserWarning):
    """A covariate to preserve is strongly associated with the site or with the label."""


class BeyondFloat64Error(DataError):
    """A harmonized value does not fit in float64; ``row`` (0-based) and ``feature`` say where."""

    def __init__(self, feature: str, row: int, count: int) -> None:
        self.feature, self.row, self.count = feature, row, count
        super().__init__(f"feature '{feature}' row {row}: the harmonized value is beyond float64's range "
                         f"(|x| > 1.8e308; {count} value(s) in all); rescale the feature first")


# -- association measures ------------------------------------------------------------------------------------
def correlation_ratio(values: np.ndarray, groups: Sequence) -> float:
    """eta = sqrt(between-group sum of squares / total sum of squares) of a numeric variable across groups;
    equals |point-biserial r| for two groups. 0 when the variable is constant."""
    values = np.asarray(values, dtype=np.float64)
    groups = np.asarray([str(g) for g in groups])
    total = float(((values - values.mean()) ** 2).sum())
    if total == 0.0:
        return 0.0
    between = sum(
        int((groups == g).sum()) * (values[groups == g].mean() - values.mean()) ** 2 for g in np.unique(groups)
    )
    return float(math.sqrt(min(1.0, between / total)))


def cramers_v(a: Sequence, b: Sequence) -> float:
    """Cramér's V of two categorical variables (no bias correction): 0 independent, 1 one determines the other."""
    a_levels, a_codes = np.unique(np.asarray([str(x) for x in a]), return_inverse=True)
    b_levels, b_codes = np.unique(np.asarray([str(x) for x in b]), return_inverse=True)
    k = min(len(a_levels), len(b_levels))
    if k < 2:
        return 0.0
    table = np.zeros((len(a_levels), len(b_levels)))
    np.add.at(table, (a_codes, b_codes), 1.0)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return float(math.sqrt(chi2 / (table.sum() * (k - 1))))


def leakage_messages(
    covariates: dict[str, Sequence],
    categorical: Sequence[str],
    against: dict[str, Sequence],
    threshold: float = LEAKAGE_THRESHOLD,
) -> list[str]:
    """One message per (covariate, grouping) pair whose association reaches ``threshold``; ``against`` maps a
    name ("site", "label") to one group per row."""
    messages = []
    for name, values in covariates.items():
        for what, groups in against.items():
            if groups is None:
                continue
            if name in categorical:
                value, measure = cramers_v(values, groups), "Cramér's V"
            else:
                value, measure = correlation_ratio(np.asarray(values, dtype=np.float64), groups), "eta"
            if value >= threshold:
                messages.append(
                    f"covariate '{name}' is strongly associated with the {what} ({measure} = {value:.2f} >= "
                    f"{threshold}): "
                    + ("ComBat cannot separate it from the site effect; harmonized values are unreliable"
                       if what == "site" else
                       "preserving it keeps label information in the harmonized features (leakage)")
                )
    return messages


# -- input checks ----------------------------------------------------------------------------------------------
def _as_matrix(values, what: str, names: Sequence[str] | None) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2:
        raise DataError(f"{what} must be a 2-D array (rows x columns), got shape {matrix.shape}")
    bad = ~np.isfinite(matrix)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        name = names[col] if names is not None and col < len(names) else f"column {col}"
        kind = "NaN" if np.isnan(matrix[row, col]) else "an infinite value"
        raise DataError(f"{what} '{name}' has {kind} at row {row} ({int(bad.sum())} non-finite values in all)")
    return matrix


def _standardizer(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (center, scale) = (mean, SD), computed on each column divided by its largest absolute value so
    that nothing overflows (1e300 squared) or underflows (1e-200 squared); a constant column gets scale 1 (or its
    magnitude)."""
    magnitude = np.abs(y).max(axis=0)
    magnitude[magnitude == 0] = 1.0
    unit = y / magnitude
    center, spread = unit.mean(axis=0), unit.std(axis=0)
    spread[spread == 0] = 1.0
    scale = spread * magnitude
    tiny = ~(scale > 0) | ~np.isfinite(scale)
    scale[tiny] = magnitude[tiny]  # a spread below the smallest float: standardize by the magnitude alone
    return center * magnitude, scale


def _standardize(y: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return y / scale - center / scale  # not (y - center) / scale: y - center can overflow near 1.8e308


def _site_array(sites: Sequence, rows: int) -> np.ndarray:
    sites = np.asarray([str(s) for s in sites])
    if len(sites) != rows:
        raise DataError(f"{len(sites)} site values for {rows} feature rows")
    return sites


# -- the model ---------------------------------------------------------------------------------------------------
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
    # fitted state
    sites_: list[str] = field(default_factory=list)
    site_counts_: list[int] = field(default_factory=list)
    feature_names_: list[str] | None = None
    covariate_names_: list[str] | None = None
    grand_mean_: np.ndarray | None = None  # p
    var_pooled_: np.ndarray | None = None  # p
    beta_covariates_: np.ndarray | None = None  # q x p
    gamma_star_: np.ndarray | None = None  # sites x p
    delta_star_: np.ndarray | None = None  # sites x p
    gamma_hat_: np.ndarray | None = None
    delta_hat_: np.ndarray | None = None
    center_: np.ndarray | None = None  # p: features are standardized as (y - center_) / scale_ before the fit
    scale_: np.ndarray | None = None  # p

    # -- fitting -------------------------------------------------------------------------------------------
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
        raw = _as_matrix(features, "feature", feature_names)
        n, p = raw.shape
        center, scale = _standardizer(raw)
        y = _standardize(raw, center, scale)
        site = _site_array(sites, n)
        cov = None
        if covariates is not None:
            cov = _as_matrix(covariates, "covariate", covariate_names)
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
            gamma_star, delta_star = self._parametric(z, index, gamma_hat, delta_hat)
        else:
            gamma_star, delta_star = self._non_parametric(z, index, gamma_hat, delta_hat)
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

    def _parametric(self, z, index, gamma_hat, delta_hat) -> tuple[np.ndarray, np.ndarray]:
        gamma_bar = gamma_hat.mean(axis=1)
        t2 = gamma_hat.var(axis=1, ddof=1)
        gamma_star, delta_star = np.empty_like(gamma_hat), np.empty_like(delta_hat)
        for s in range(len(gamma_hat)):
            rows = z[index == s]
            n = len(rows)
            if self.mean_only:
                gamma_star[s] = (t2[s] * gamma_hat[s] + gamma_bar[s]) / (t2[s] + 1.0)  # neuroCombat: n = d = 1
                delta_star[s] = 1.0
                continue
            m, s2 = delta_hat[s].mean(), delta_hat[s].var(ddof=1)
            s2 = max(s2, 1e-12)  # all features with one variance: the prior is (nearly) a point mass
            a, b = (2 * s2 + m**2) / s2, (m * s2 + m**3) / s2
            g_old, d_old = gamma_hat[s].copy(), delta_hat[s].copy()
            for _ in range(MAX_ITERATIONS):
                g_new = (t2[s] * n * gamma_hat[s] + d_old * gamma_bar[s]) / (t2[s] * n + d_old)
                sum2 = ((rows - g_new) ** 2).sum(axis=0)
                d_new = (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    change = max(np.nanmax(np.abs(g_new - g_old) / np.abs(g_old)),
                                 np.nanmax(np.abs(d_new - d_old) / d_old))
                g_old, d_old = g_new, d_new
                if change <= CONVERGENCE:
                    break
            gamma_star[s], delta_star[s] = g_old, d_old
        return gamma_star, delta_star

    @staticmethod
    def _non_parametric(z, index, gamma_hat, delta_hat) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means under the empirical distribution of the other features' estimates (neuroCombat's
        int_eprior), with the likelihoods in log space so that large sites do not underflow."""
        gamma_star, delta_star = np.empty_like(gamma_hat), np.empty_like(delta_hat)
        for s in range(len(gamma_hat)):
            rows = z[index == s]  # n x p
            n = len(rows)
            g, d = gamma_hat[s], delta_hat[s]
            # sum over rows of (x_ig - g_k)^2 for every feature i and candidate k: n*x2 - 2*g_k*sx + n*g_k^2
            sx, sxx = rows.sum(axis=0), (rows**2).sum(axis=0)
            sum2 = sxx[:, None] - 2 * sx[:, None] * g[None, :] + n * g[None, :] ** 2  # p x p
            log_lh = -0.5 * n * np.log(2 * np.pi * d)[None, :] - sum2 / (2 * d[None, :])
            np.fill_diagonal(log_lh, -np.inf)  # leave feature i out of its own prior
            weights = np.exp(log_lh - log_lh.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            gamma_star[s], delta_star[s] = weights @ g, weights @ d
        return gamma_star, delta_star

    # -- applying ------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.gamma_star_ is None:
            raise ModelError("this ComBat model is not fitted; call fit() or load a saved model")

    def transform(
        self, features: np.ndarray, sites: Sequence[str], covariates: np.ndarray | None = None
    ) -> np.ndarray:
        """Harmonize rows (from sites seen in ``fit``) with the fitted estimates; reference-site rows are
        returned unchanged."""
        self._check_fitted()
        y = _as_matrix(features, "feature", self.feature_names_)
        n, p = y.shape
        if p != len(self.grand_mean_):
            raise DataError(f"the model was fitted on {len(self.grand_mean_)} features, got {p}")
        site = _site_array(sites, n)
        unknown = sorted(set(site) - set(self.sites_))
        if unknown:
            raise DataError(
                f"site '{unknown[0]}' was not in the data ComBat was fitted on (fitted sites: {', '.join(self.sites_)})"
                + (f"; {len(unknown) - 1} more unknown" if len(unknown) > 1 else "")
            )
        q = len(self.beta_covariates_)
        if q:
            if covariates is None:
                raise DataError(f"the model preserves {q} covariate(s) ({', '.join(self.covariate_names_)}); give them")
            cov = _as_matrix(covariates, "covariate", self.covariate_names_)
            if cov.shape != (n, q):
                raise DataError(f"expected covariates of shape ({n}, {q}), got {cov.shape}")
            covariate_part = cov @ self.beta_covariates_
        else:
            covariate_part = 0.0
        index = np.searchsorted(np.asarray(self.sites_), site)
        center = np.zeros(p) if self.center_ is None else self.center_  # a version-1 model: raw units
        scale = np.ones(p) if self.scale_ is None else self.scale_
        sd = np.sqrt(self.var_pooled_)
        z = (_standardize(y, center, scale) - self.grand_mean_ - covariate_part) / sd
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

    # -- persistence (JSON or NPZ; never pickle) ----------------------------------------------------------------
    _ARRAYS = ("grand_mean_", "var_pooled_", "beta_covariates_", "gamma_star_", "delta_star_", "gamma_hat_",
               "delta_hat_", "center_", "scale_")
    _OPTIONAL = ("center_", "scale_")  # absent from version-1 models

    def to_dict(self) -> dict:
        self._check_fitted()
        return {
            "format": FORMAT,
            "version": VERSION,
            "parametric": self.parametric,
            "eb": self.eb,
            "reference_site": self.reference_site,
            "mean_only": self.mean_only,
            "sites": self.sites_,
            "site_counts": self.site_counts_,
            "feature_names": self.feature_names_,
            "covariate_names": self.covariate_names_,
            "shape": {"features": len(self.grand_mean_), "covariates": len(self.beta_covariates_)},
        }

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """``.npz``: arrays plus the settings as a JSON string; anything else: one JSON file (floats written
        with full precision, so a round trip is exact). ``extra`` is stored alongside (e.g. column encodings)."""
        path = Path(path)
        meta = {**self.to_dict(), "extra": extra or {}}
        arrays = {name.rstrip("_"): getattr(self, name) for name in self._ARRAYS if getattr(self, name) is not None}
        if path.suffix.lower() == ".npz":
            def write(tmp: Path) -> None:
                with tmp.open("wb") as handle:
                    np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)

            atomic_write(path, write)
        else:
            write_json(path, {**meta, "arrays": {k: v.tolist() for k, v in arrays.items()}})

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
            if path.suffix.lower() == ".npz":
                with np.load(path, allow_pickle=False) as stored:
                    meta = json.loads(str(stored["meta"]))
                    arrays = {k: stored[k] for k in stored.files if k != "meta"}
            else:
                meta = json.loads(path.read_text())
                arrays = {k: np.asarray(v, dtype=np.float64) for k, v in meta.pop("arrays").items()}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, not {FORMAT!r}")
            model = cls(parametric=meta["parametric"], eb=meta["eb"], reference_site=meta["reference_site"],
                        mean_only=meta["mean_only"])
            model.sites_, model.site_counts_ = list(meta["sites"]), list(meta["site_counts"])
            model.feature_names_, model.covariate_names_ = meta["feature_names"], meta["covariate_names"]
            shape = meta["shape"]
            for name in cls._ARRAYS:
                if name in cls._OPTIONAL and name.rstrip("_") not in arrays:
                    continue
                setattr(model, name, np.asarray(arrays[name.rstrip("_")], dtype=np.float64))
            model.beta_covariates_ = model.beta_covariates_.reshape(shape["covariates"], shape["features"])
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
            raise ModelError(f"{path}: not a shiftkit ComBat model ({type(exc).__name__}: {exc})") from None
        return model, meta.get("extra", {})


# -- CSV tables (radiomics and other tabular features) ------------------------------------------------------------
DEFAULT_EXCLUDE = ("diagnostics_*",)  # pyradiomics' provenance columns: versions, settings, image statistics


@dataclass(frozen=True)
class Covariate:
    """How one covariate column enters the design: ``numeric`` as is, ``categorical`` as one-hot columns for
    every level but the first (sorted), as neuroCombat does."""

    name: str
    kind: str  # numeric | categorical
    levels: tuple[str, ...] = ()

    def columns(self) -> list[str]:
        return [self.name] if self.kind == "numeric" else [f"{self.name}={level}" for level in self.levels[1:]]

    def encode(self, values: Sequence[str], rows: Sequence[int]) -> np.ndarray:
        if self.kind == "numeric":
            out = np.empty(len(values))
            for i, (text, row) in enumerate(zip(values, rows)):
                out[i] = _number(text, self.name, row)
                if not math.isfinite(out[i]):
                    raise DataError(f"covariate '{self.name}' row {row}: value '{text}' is not finite")
            return out[:, None]
        out = np.zeros((len(values), max(len(self.levels) - 1, 0)))
        lookup = {level: j for j, level in enumerate(self.levels)}
        for i, (text, row) in enumerate(zip(values, rows)):
            text = text.strip()
            if text not in lookup:
                raise DataError(
                    f"covariate '{self.name}' row {row}: level '{text}' was not in the fitted data "
                    f"(levels: {', '.join(self.levels)})"
                )
            if lookup[text] > 0:
                out[i, lookup[text] - 1] = 1.0
        return out


def _number(text: str, column: str, row: int) -> float:
    text = text.strip()
    if not text:
        raise DataError(f"column '{column}' row {row}: empty value")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"column '{column}' row {row}: '{text}' is not a number") from None


def _is_numeric(values: Sequence[str]) -> bool:
    seen = False
    for text in values:
        text = text.strip()
        if not text:
            continue
        try:
            float(text)
        except ValueError:
            return False
        seen = True
    return seen


@dataclass(frozen=True)
class FeatureTable:
    """A CSV read as strings: ``header``, ``rows`` (lists of cells) and the file, for row numbers in errors
    (row 2 is the first data row, as a spreadsheet shows it)."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    numbers: list[int] = field(default_factory=list)  # each row's line in the file (blank lines skipped)

    @classmethod
    def read(cls, path: str | Path) -> "FeatureTable":
        from shiftkit.data.csvfile import read_csv

        # the one CSV reader: odd paths, encodings, ';'/tab separators and NUL bytes are said as such
        table = read_csv(path, "feature table", strict=True)
        if not table.header or not table.rows:
            raise DataError(f"{table.path}: the table has no header or no rows")
        return cls(table.path, table.header, table.rows, table.numbers)

    def column(self, name: str) -> list[str]:
        if name not in self.header:
            raise DataError(f"{self.path}: no column '{name}' (columns: {', '.join(self.header[:12])}"
                            + (", ..." if len(self.header) > 12 else "") + ")")
        j = self.header.index(name)
        return [row[j] for row in self.rows]

    @property
    def row_numbers(self) -> list[int]:
        return list(self.numbers) if self.numbers else list(range(2, len(self.rows) + 2))

    def numeric_matrix(self, columns: Sequence[str]) -> np.ndarray:
        """Values of ``columns`` as floats; an empty, non-numeric or non-finite cell stops with its column and
        row."""
        out = np.empty((len(self.rows), len(columns)))
        rows = self.row_numbers
        for j, name in enumerate(columns):
            for i, text in enumerate(self.column(name)):
                value = _number(text, name, rows[i])
                if not math.isfinite(value):
                    raise DataError(f"{self.path}: feature column '{name}' row {rows[i]} is {text.strip()}; "
                                    "ComBat needs finite values (impute or drop the row/column first)")
                out[i, j] = value
        return out

    def write(self, path: str | Path, replaced: dict[str, np.ndarray]) -> None:
        """The same table with ``replaced`` columns' values swapped in (full float precision)."""
        import csv
        import io

        positions = {self.header.index(name): values for name, values in replaced.items()}
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.header)
        for i, row in enumerate(self.rows):
            writer.writerow([repr(float(positions[j][i])) if j in positions else cell for j, cell in enumerate(row)])
        atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue()))


def parse_covariates(text: str | None) -> list[tuple[str, str | None]]:
    """``age,sex,scanner:cat`` -> [(age, None), (sex, None), (scanner, categorical)]; None = decide from data."""
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, kind = item.partition(":")
        if kind and kind not in ("cat", "num"):
            raise ConfigError(f"--covariates '{item}': the suffix must be :cat or :num")
        out.append((name.strip(), {"cat": "categorical", "num": "numeric", "": None}[kind]))
    return out


# Identifier columns (numeric IDs included) are never features: harmonizing them would corrupt them.
ID_NAMES = {"id", "patient", "patient_id", "patientid", "subject", "subject_id", "case", "case_id", "image", "mask",
            "path", "lesion_id", "image_id"}


def feature_columns(table: FeatureTable, excluded: set[str], patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """Numeric columns that are not ``excluded``, not identifiers (:data:`ID_NAMES`) and match none of
    ``patterns`` (fnmatch); also returns the other columns, which pass through unchanged."""
    from fnmatch import fnmatch

    features, others = [], []
    for name in table.header:
        if (name in excluded or name.lower() in ID_NAMES or any(fnmatch(name, p) for p in patterns)
                or not _is_numeric(table.column(name))):
            others.append(name)
        else:
            features.append(name)
    return features, others


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


@dataclass
class CombatRequest:
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


def _fit_covariates(table: FeatureTable, spec: list[tuple[str, str | None]]) -> list[Covariate]:
    covariates = []
    for name, kind in spec:
        values = table.column(name)
        kind = kind or ("numeric" if _is_numeric(values) else "categorical")
        if kind == "categorical":
            covariates.append(Covariate(name, kind, tuple(sorted({v.strip() for v in values}))))
        else:
            covariates.append(Covariate(name, kind))
    return covariates


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
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always", LeakageWarning)
        if request.apply is not None:
            model, extra = ComBat.load_with_extra(request.apply)
            try:
                site_column, features = extra["site_column"], list(extra["features"])
                covariates = [Covariate(c["name"], c["kind"], tuple(c["levels"])) for c in extra["covariates"]]
            except (KeyError, TypeError):
                raise ModelError(f"{request.apply}: the model has no CSV column description (saved by the API?)")
            missing = [c for c in features if c not in table.header]
            if missing:
                raise DataError(f"{request.features}: feature column '{missing[0]}' of the model is missing")
            passthrough = [c for c in table.header if c not in features]
        else:
            site_column = request.site_column
            spec = parse_covariates(request.covariates)
            table.column(site_column)
            for name, _ in spec:
                table.column(name)
                if name == site_column:
                    raise ConfigError(f"--covariates: '{name}' is the site column")
            excluded = {site_column, *(name for name, _ in spec)}
            if request.label_column:
                table.column(request.label_column)
                excluded.add(request.label_column)
            features, passthrough = feature_columns(table, excluded, (*DEFAULT_EXCLUDE, *request.exclude))
            if not features:
                raise DataError(f"{request.features}: no numeric feature columns left to harmonize")
            covariates = _fit_covariates(table, spec)
            model = ComBat(parametric=request.parametric, eb=request.eb, reference_site=request.reference_site,
                           mean_only=request.mean_only)
        sites = np.asarray([s.strip() for s in table.column(site_column)])
        empty = np.flatnonzero(sites == "")
        if empty.size:
            raise DataError(f"{request.features}: column '{site_column}' row {int(empty[0]) + 2}: empty site")
        values = table.numeric_matrix(features)
        design = [c.encode(table.column(c.name), table.row_numbers) for c in covariates]
        cov = np.hstack(design) if design and sum(d.shape[1] for d in design) else None
        cov_names = [name for c in covariates for name in c.columns()]
        if request.apply is None:
            labels = table.column(request.label_column) if request.label_column else None
            for message in leakage_messages(
                {c.name: table.column(c.name) if c.kind == "categorical" else cov_part[:, 0]
                 for c, cov_part in zip(covariates, design)},
                [c.name for c in covariates if c.kind == "categorical"],
                {"site": sites, "label": labels},
            ):
                warnings.warn(message, LeakageWarning, stacklevel=2)
            model.fit(values, sites, cov, feature_names=features, covariate_names=cov_names or None,
                      check_leakage=False)
        try:
            harmonized = model.transform(values, sites, cov)
        except BeyondFloat64Error as exc:  # name the CSV row, as the reader does
            raise DataError(f"{request.features}: feature column '{exc.feature}' row {table.row_numbers[exc.row]}: "
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
            "covariates": [{"name": c.name, "kind": c.kind, "levels": list(c.levels)} for c in covariates],
            "label_column": request.label_column,
            "fitted_on": str(request.features),
        })
    levels, counts = np.unique(sites, return_counts=True)
    return CombatResult(
        out=request.out, model_path=model_path, sites={str(s): int(c) for s, c in zip(levels, counts)},
        features=features, passthrough=passthrough, covariates=cov_names,
        before=site_effect_summary(values, sites), after=site_effect_summary(harmonized, sites), warnings=caught,
    )

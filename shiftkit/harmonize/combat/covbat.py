"""CovBat (Chen et al., Human Brain Mapping 2022): ComBat for the mean and variance of every feature, then ComBat on
the leading principal-component scores of the residuals, so that the sites' **covariances** agree too.

ComBat corrects each feature on its own; a scanner can also change how features vary together (a texture filter
that couples GLCM features more at one site), which a multivariate classifier still detects after ComBat. CovBat:

1. ComBat (:class:`~shiftkit.harmonize.combat.model.ComBat`, with the covariates to preserve);
2. residuals = the ComBat output minus ComBat's "standard mean" (grand mean + covariate effects), each standardized
   (``std.var = TRUE`` in the reference code);
3. PCA of the residuals (all sites pooled); the first ``k`` components explain more than ``variance`` (0.95) of
   the residual variance (or ``n_components``);
4. ComBat on those ``k`` score columns, site only, without empirical Bayes by default (``score.eb = FALSE``);
5. back-transform: residual + (harmonized scores - scores) x loadings, unstandardized, plus the standard mean.

Step 5 adds only the change of the scores, so the part of a row outside the components (a row of a held-out site
lies partly outside the training rows' span when features outnumber rows) is kept rather than lost.

Why written here: neuroCombat (the reference shiftkit's ComBat follows) has no CovBat; Andrew Chen's reference
implementation (``andy1764/CovBat_Harmonization``: an R package and a standalone pandas/patsy script) refits on
whatever it is given and has no transform for held-out rows; ``combatlearn`` ships a second, separate ComBat. This
module reuses shiftkit's tested ComBat for both ComBat steps (location/scale, empirical Bayes, covariates, leakage
warnings, unseen-site policy) and adds only the PCA step, with scikit-learn's PCA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from shiftkit.errors import ConfigError, ModelError
from shiftkit.harmonize.combat.inputs import as_matrix
from shiftkit.harmonize.combat.model import ComBat
from shiftkit.harmonize.combat.unseen import MIN_ROWS, harmonize_unseen_site, standard_mean

VARIANCE = 0.95  # share of the residual variance the harmonized components explain (Chen et al.'s default)


@dataclass(eq=False)
class CovBat:
    """ComBat + ComBat on the first principal-component scores of the residuals (module docstring).

    ``variance``: the components kept explain more than this share of the residual variance; ``n_components``
    overrides it. ``parametric``, ``eb``, ``mean_only``: the first ComBat's options; ``score_eb``: empirical Bayes
    in the score step (off in Chen et al.'s defaults).
    """

    variance: float = VARIANCE
    n_components: int | None = None
    parametric: bool = True
    eb: bool = True
    mean_only: bool = False
    score_eb: bool = False
    combat_: ComBat | None = field(default=None, init=False)
    scores_combat_: ComBat | None = field(default=None, init=False)
    residual_center_: np.ndarray | None = field(default=None, init=False)
    residual_scale_: np.ndarray | None = field(default=None, init=False)
    pca_mean_: np.ndarray | None = field(default=None, init=False)
    components_: np.ndarray | None = field(default=None, init=False)  # k x p (standardized residual space)
    explained_variance_ratio_: np.ndarray | None = field(default=None, init=False)  # all components

    def __post_init__(self) -> None:
        if not 0 < self.variance <= 1:
            raise ConfigError(f"CovBat variance must be in (0, 1], got {self.variance}")
        if self.n_components is not None and self.n_components < 1:
            raise ConfigError(f"CovBat n_components must be at least 1, got {self.n_components}")

    @property
    def k_(self) -> int:
        """The number of harmonized components."""
        return 0 if self.components_ is None else len(self.components_)

    def fit(self, features: np.ndarray, sites: Sequence[str], covariates: np.ndarray | None = None,
            **combat_options) -> "CovBat":
        """Fit both steps; ``combat_options`` (feature_names, covariate_names, labels, check_leakage) go to the
        first ComBat, which also names its leakage warnings."""
        from sklearn.decomposition import PCA

        x = as_matrix(features, "feature", combat_options.get("feature_names"))
        self.combat_ = ComBat(parametric=self.parametric, eb=self.eb, mean_only=self.mean_only)
        self.combat_.fit(x, sites, covariates, **combat_options)
        residual = self.combat_.transform(x, sites, covariates) - standard_mean(self.combat_, len(x), covariates)
        self.residual_center_ = residual.mean(axis=0)
        scale = residual.std(axis=0)
        self.residual_scale_ = np.where(scale > 0, scale, 1.0)
        standardized = (residual - self.residual_center_) / self.residual_scale_
        pca = PCA().fit(standardized)  # all components; "auto" picks the fast exact solver
        ratio = pca.explained_variance_ratio_
        if self.n_components is not None:
            k = min(self.n_components, len(ratio))
        else:
            k = int(np.searchsorted(np.cumsum(ratio), self.variance, side="right")) + 1  # first cumsum > variance
            k = min(k, len(ratio))
        self.pca_mean_, self.components_ = pca.mean_, pca.components_[:k]
        self.explained_variance_ratio_ = ratio
        scores = (standardized - self.pca_mean_) @ self.components_.T
        self.scores_combat_ = ComBat(eb=self.score_eb and k > 1, parametric=True)
        self.scores_combat_.fit(scores, sites, check_leakage=False)
        return self

    def _check_fitted(self) -> None:
        if self.combat_ is None:
            raise ModelError("this CovBat model is not fitted; call fit() first")

    def _rotate(self, combat_out: np.ndarray, covariates: np.ndarray | None, harmonize_scores) -> np.ndarray:
        """Steps 2-5 on rows already through the first ComBat; ``harmonize_scores`` maps their k scores."""
        stand = standard_mean(self.combat_, len(combat_out), covariates)
        standardized = (combat_out - stand - self.residual_center_) / self.residual_scale_
        scores = (standardized - self.pca_mean_) @ self.components_.T
        moved = harmonize_scores(scores) - scores
        return stand + (standardized + moved @ self.components_) * self.residual_scale_ + self.residual_center_

    def transform(self, features: np.ndarray, sites: Sequence[str], covariates: np.ndarray | None = None) -> np.ndarray:
        """Harmonize rows of sites seen in :meth:`fit`."""
        self._check_fitted()
        out = self.combat_.transform(features, sites, covariates)
        return self._rotate(out, covariates, lambda s: self.scores_combat_.transform(s, sites))

    def fit_transform(self, features: np.ndarray, sites: Sequence[str], covariates: np.ndarray | None = None,
                      **combat_options) -> np.ndarray:
        return self.fit(features, sites, covariates, **combat_options).transform(features, sites, covariates)

    def transform_unseen(self, features: np.ndarray, site: str, covariates: np.ndarray | None = None,
                         *, min_rows: int = MIN_ROWS) -> np.ndarray:
        """Rows of one site not seen in :meth:`fit`: both ComBat steps estimate that site's location and scale from
        its own rows (no labels; :mod:`shiftkit.harmonize.combat.unseen`), the PCA is the fitted one."""
        self._check_fitted()
        out = harmonize_unseen_site(self.combat_, features, covariates, site=site, min_rows=min_rows)
        return self._rotate(out, covariates,
                            lambda s: harmonize_unseen_site(self.scores_combat_, s, site=site, min_rows=min_rows))

    def to_dict(self) -> dict:
        """Settings and the fitted summary (not the arrays)."""
        self._check_fitted()
        return {"method": "CovBat (Chen et al. 2022): ComBat, then ComBat on the first principal-component scores "
                          "of the residuals",
                "variance": self.variance, "n_components": self.k_,
                "explained": float(self.explained_variance_ratio_[: self.k_].sum()),
                "score_eb": self.score_eb, "eb": self.eb, "parametric": self.parametric, "mean_only": self.mean_only}

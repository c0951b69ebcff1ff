"""ComBat for a site the model was not fitted on: the leakage-free policy behind leave-one-site-out evaluation.

ComBat cannot harmonize a site it has not seen (neuroHarmonize's maintainers, issues 50 and 58): its per-site
location ``gamma`` and scale ``delta`` are estimated from that site's rows. In a held-out evaluation those rows are
the test set, so shiftkit's policy is to estimate the new site's ``gamma`` and ``delta`` **from its own features
only** (no labels, no outcome covariate), in the pooled model the training sites define (their grand mean, pooled
variance and covariate effects), with the same empirical Bayes step ComBat applies to every site (its priors are
per site, pooled across that site's features, so a new site needs nobody else's rows). The new site is then mapped
exactly as a fitted site would be. This is transductive on the new site's unlabelled features, like any batch
correction, and never touches a label; it needs at least ``min_rows`` rows (a variance from one row is undefined).
"""

from __future__ import annotations

import copy

import numpy as np

from shiftkit.errors import DataError, ModelError
from shiftkit.harmonize.combat.bayes import non_parametric_posterior, parametric_posterior
from shiftkit.harmonize.combat.inputs import as_matrix, standardize
from shiftkit.harmonize.combat.model import ComBat

MIN_ROWS = 2


def standard_mean(model: ComBat, rows: int, covariates: np.ndarray | None = None) -> np.ndarray:
    """ComBat's "standard mean" of each row in feature units: grand mean + covariate effects (no site term)."""
    part = model.covariate_effects(covariates, rows)
    p = len(model.grand_mean_)
    center = np.zeros(p) if model.center_ is None else model.center_
    scale = np.ones(p) if model.scale_ is None else model.scale_
    return np.broadcast_to(model.grand_mean_ + part, (rows, p)) * scale + center


def unseen_site_estimates(model: ComBat, features: np.ndarray, covariates: np.ndarray | None = None,
                          *, site: str = "new site", min_rows: int = MIN_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(gamma*, delta*) of one new site (p each) from its own rows, in ``model``'s pooled standardized space."""
    if model.gamma_star_ is None:
        raise ModelError("this ComBat model is not fitted; call fit() first")
    y = as_matrix(features, "feature", model.feature_names_)
    n, p = y.shape
    if n < min_rows:
        raise DataError(f"site '{site}' has {n} row(s); ComBat needs at least {min_rows} rows of a site it was not "
                        "fitted on to estimate that site's location and scale")
    if p != len(model.grand_mean_):
        raise DataError(f"the model was fitted on {len(model.grand_mean_)} features, got {p}")
    center = np.zeros(p) if model.center_ is None else model.center_
    scale = np.ones(p) if model.scale_ is None else model.scale_
    expected = standardize(standard_mean(model, n, covariates), center, scale)  # grand mean + covariate effects
    z = (standardize(y, center, scale) - expected) / np.sqrt(model.var_pooled_)
    gamma_hat = z.mean(axis=0)[None, :]
    delta_hat = np.ones((1, p)) if model.mean_only else z.var(axis=0, ddof=1)[None, :]
    delta_hat[delta_hat == 0] = 1.0
    index = np.zeros(n, dtype=int)
    if not model.eb or p < 2:
        return gamma_hat[0], delta_hat[0]
    if model.parametric:
        gamma_star, delta_star = parametric_posterior(z, index, gamma_hat, delta_hat, model.mean_only)
    else:
        gamma_star, delta_star = non_parametric_posterior(z, index, gamma_hat, delta_hat)
    return gamma_star[0], delta_star[0]


def harmonize_unseen_site(model: ComBat, features: np.ndarray, covariates: np.ndarray | None = None,
                          *, site: str = "new site", min_rows: int = MIN_ROWS) -> np.ndarray:
    """The rows of one site that ``model`` was not fitted on, harmonized into the pooled model with that site's own
    location/scale estimates (module docstring). ``covariates`` must be the model's covariates (never the outcome).
    A site the model knows is refused: use ``model.transform``."""
    if site in set(model.sites_):
        raise DataError(f"site '{site}' is one the model was fitted on; use transform()")
    gamma, delta = unseen_site_estimates(model, features, covariates, site=site, min_rows=min_rows)
    extended = copy.copy(model)  # the fitted model plus one site: reuse transform's mapping and checks
    position = int(np.searchsorted(np.asarray(model.sites_), site))
    extended.sites_ = model.sites_[:position] + [site] + model.sites_[position:]
    extended.gamma_star_ = np.insert(model.gamma_star_, position, gamma, axis=0)
    extended.delta_star_ = np.insert(model.delta_star_, position, delta, axis=0)
    return extended.transform(features, [site] * len(np.asarray(features)), covariates)

"""ComBat's empirical Bayes step: shrink each site's per-feature location (``gamma``) and scale (``delta``)
estimates towards what the other features say, as neuroCombat does.

Parametric: a normal prior on ``gamma`` and an inverse-gamma prior on ``delta``, hyper-parameters estimated across
features by moments, posterior means found by iterating to a relative change of ``CONVERGENCE``. Non-parametric:
posterior means under the empirical distribution of the other features' estimates (neuroCombat's ``int_eprior``).
Both take the standardized data ``z`` (n x p), each row's site ``index`` and the per-site estimates (sites x p).
"""

from __future__ import annotations

import numpy as np

CONVERGENCE = 1e-4  # relative change that stops the parametric EB iteration (neuroCombat's it_sol)
MAX_ITERATIONS = 1000


def parametric_posterior(z: np.ndarray, index: np.ndarray, gamma_hat: np.ndarray, delta_hat: np.ndarray,
                         mean_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(gamma*, delta*) under normal / inverse-gamma priors; ``mean_only`` keeps delta* = 1 (neuroCombat: n = d = 1)."""
    gamma_bar = gamma_hat.mean(axis=1)
    t2 = gamma_hat.var(axis=1, ddof=1)
    gamma_star, delta_star = np.empty_like(gamma_hat), np.empty_like(delta_hat)
    for s in range(len(gamma_hat)):
        rows = z[index == s]
        n = len(rows)
        if mean_only:
            gamma_star[s] = (t2[s] * gamma_hat[s] + gamma_bar[s]) / (t2[s] + 1.0)
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


def non_parametric_posterior(z: np.ndarray, index: np.ndarray, gamma_hat: np.ndarray,
                             delta_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gamma*, delta*) integrated over the other features' estimates, with the likelihoods in log space so that
    large sites do not underflow."""
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

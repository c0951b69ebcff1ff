"""The harmonizers a features audit compares (none, ComBat, CovBat) behind one interface, so that every check fits
them the same leakage-free way: on the training rows of a fold only, then applied to the test rows.

- rows of a site the fit has seen: the fitted model's ``transform``;
- rows of a site it has not seen (leave-one-site-out): the **unseen-site policy**. ``"standardize"`` estimates
  that site's location and scale from its own features, without labels, in the pooled model
  (:mod:`shiftkit.harmonize.combat.unseen`); ``"refuse"`` raises :class:`UnseenSiteRefused` (ComBat, as its
  authors say, cannot harmonize a site it has not seen; the check then reports the fold as not harmonized).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.combat.covbat import VARIANCE, CovBat
from shiftkit.harmonize.combat.model import ComBat
from shiftkit.harmonize.combat.unseen import harmonize_unseen_site

METHODS = ("none", "combat", "covbat")
TITLES = {"none": "no harmonization", "combat": "ComBat", "covbat": "CovBat"}
POLICIES = ("standardize", "refuse")


class UnseenSiteRefused(DataError):
    """The policy is ``refuse`` and a test site was not in the training rows."""


class Harmonizer(Protocol):
    def fit(self, x: np.ndarray, sites: np.ndarray, cov: np.ndarray | None) -> "Harmonizer": ...
    def transform(self, x: np.ndarray, sites: np.ndarray, cov: np.ndarray | None) -> np.ndarray: ...
    def transform_unseen(self, x: np.ndarray, site: str, cov: np.ndarray | None) -> np.ndarray: ...


class Identity:
    """No harmonization (the baseline every harmonizer is compared with)."""

    def fit(self, x, sites, cov):  # noqa: ANN001 - the Harmonizer protocol
        return self

    def transform(self, x, sites, cov):  # noqa: ANN001
        return np.asarray(x, dtype=float)

    def transform_unseen(self, x, site, cov):  # noqa: ANN001
        return np.asarray(x, dtype=float)


@dataclass
class ComBatStep:
    """:class:`ComBat` with the unseen-site transform."""

    model: ComBat

    def fit(self, x, sites, cov):  # noqa: ANN001
        self.model.fit(x, sites, cov, check_leakage=False)  # the audit warns once, on its all-rows fit
        return self

    def transform(self, x, sites, cov):  # noqa: ANN001
        return self.model.transform(x, sites, cov)

    def transform_unseen(self, x, site, cov):  # noqa: ANN001
        return harmonize_unseen_site(self.model, x, cov, site=site)


@dataclass
class CovBatStep:
    model: CovBat

    def fit(self, x, sites, cov):  # noqa: ANN001
        self.model.fit(x, sites, cov, check_leakage=False)
        return self

    def transform(self, x, sites, cov):  # noqa: ANN001
        return self.model.transform(x, sites, cov)

    def transform_unseen(self, x, site, cov):  # noqa: ANN001
        return self.model.transform_unseen(x, site, cov)


def make_harmonizer(method: str, *, variance: float = VARIANCE) -> Harmonizer:
    """A fresh, unfitted harmonizer by name (``none``, ``combat``, ``covbat``)."""
    if method == "none":
        return Identity()
    if method == "combat":
        return ComBatStep(ComBat())
    if method == "covbat":
        return CovBatStep(CovBat(variance=variance))
    raise ConfigError(f"unknown harmonizer '{method}'; choose from {', '.join(METHODS)}")


def _rows(cov: np.ndarray | None, index: np.ndarray) -> np.ndarray | None:
    return None if cov is None else cov[index]


def fit_apply(method: str, x: np.ndarray, sites: np.ndarray, cov: np.ndarray | None, train: np.ndarray,
              test: np.ndarray, *, policy: str = "standardize", variance: float = VARIANCE
              ) -> tuple[np.ndarray, np.ndarray]:
    """(harmonized training rows, harmonized test rows), the harmonizer fitted on ``train`` only. Test rows of a
    site absent from ``train`` follow ``policy`` one site at a time."""
    if policy not in POLICIES:
        raise ConfigError(f"unseen-site policy must be one of {', '.join(POLICIES)}, got '{policy}'")
    model = make_harmonizer(method, variance=variance).fit(x[train], sites[train], _rows(cov, train))
    x_train = model.transform(x[train], sites[train], _rows(cov, train))
    seen = set(np.unique(sites[train]).tolist())
    x_test = np.empty((len(test), x.shape[1]))
    test_sites = sites[test]
    known = np.array([s in seen for s in test_sites], dtype=bool)
    if known.any():
        x_test[known] = model.transform(x[test][known], test_sites[known], _rows(cov, test[known]))
    for site in dict.fromkeys(test_sites[~known].tolist()):
        mine = test_sites == site
        if policy == "refuse" and method != "none":
            raise UnseenSiteRefused(f"site '{site}' is not in the training rows and the unseen-site policy is "
                                    "'refuse': ComBat cannot harmonize a site it has not seen")
        x_test[mine] = model.transform_unseen(x[test][mine], str(site), _rows(cov, test[mine]))
    return x_train, x_test

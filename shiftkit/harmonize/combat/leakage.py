"""Which covariates ComBat should not preserve: those strongly associated with the site or with the label.

With site-confounded covariates ComBat cannot tell biology from site, and preserving a label-associated covariate
carries label information into the harmonized features (and needs it at test time). The association is the
correlation ratio eta (for two groups, the absolute point-biserial correlation) for a numeric covariate and Cramér's
V for a categorical one; :class:`LeakageWarning` fires at ``LEAKAGE_THRESHOLD`` (0.5, a "large" association in
Cohen's conventions for both).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

LEAKAGE_THRESHOLD = 0.5


class LeakageWarning(UserWarning):
    """A covariate to preserve is strongly associated with the site or with the label."""


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
    from scipy.stats.contingency import association

    a_levels, a_codes = np.unique(np.asarray([str(x) for x in a]), return_inverse=True)
    b_levels, b_codes = np.unique(np.asarray([str(x) for x in b]), return_inverse=True)
    if min(len(a_levels), len(b_levels)) < 2:
        return 0.0
    table = np.zeros((len(a_levels), len(b_levels)), dtype=np.int64)
    np.add.at(table, (a_codes, b_codes), 1)
    return float(association(table, method="cramer", correction=False))


def leakage_messages(
    covariates: dict[str, Sequence],
    categorical: Sequence[str],
    against: dict[str, Sequence | None],
    threshold: float = LEAKAGE_THRESHOLD,
) -> list[str]:
    """One message per (covariate, grouping) pair whose association reaches ``threshold``; ``against`` maps a
    name ("site", "label") to one group per row (None: not given, skipped)."""
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

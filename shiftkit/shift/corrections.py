"""Multiple-comparison corrections for a family of p-values (the pairs of a site matrix, the features of a table).

An audit of S sites runs S(S-1)/2 pairwise tests per measure, and a radiomics audit one test per feature: without a
correction, some null pairs or features would look shifted by chance alone. Three adjustments, each returning
adjusted p-values in the input order (compare an adjusted p-value with alpha):

- ``bonferroni``: p·m, family-wise error rate (FWER) control under any dependence;
- ``holm``: Holm's step-down version of Bonferroni, also FWER, uniformly more powerful;
- ``bh``: Benjamini-Hochberg step-up, false discovery rate (FDR) control (independent or positively dependent tests),
  the practical choice when there are tens of sites (hundreds of pairs) or hundreds of features; scipy's
  ``false_discovery_control``.

NaN p-values (a test that could not run) stay NaN and do not count towards m.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import false_discovery_control

from shiftkit.errors import ConfigError

CORRECTIONS = ("bh", "holm", "bonferroni")
DESCRIPTIONS = {
    "bh": "Benjamini-Hochberg false discovery rate control",
    "holm": "Holm-Bonferroni family-wise error rate control",
    "bonferroni": "Bonferroni family-wise error rate control",
}


def adjust_p_values(p_values: Sequence[float], method: str = "bh") -> np.ndarray:
    """Adjusted p-values (same order, clipped to 1) for ``method`` in :data:`CORRECTIONS`."""
    if method not in CORRECTIONS:
        raise ConfigError(f"unknown correction '{method}' (choose from {', '.join(CORRECTIONS)})")
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = len(valid)
    if m == 0:
        return out
    q = p[valid]
    if method == "bonferroni":
        adjusted = np.minimum(1.0, q * m)
    elif method == "holm":
        order = np.argsort(q, kind="stable")
        stepped = np.maximum.accumulate((m - np.arange(m)) * q[order])
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(1.0, stepped)
    else:  # Benjamini-Hochberg step-up
        adjusted = false_discovery_control(q, method="bh")
    out[valid] = adjusted
    return out

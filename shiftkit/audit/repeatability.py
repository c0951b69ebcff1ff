"""Test-retest repeatability of each feature when a table holds repeated scans of one patient: ICC(3,1) and Lin's
concordance correlation coefficient, with Koo & Li's bands.

- **ICC(3,1)** (Shrout & Fleiss 1979; McGraw & Wong's "two-way mixed, consistency, single measurement"): from the
  two-way ANOVA of the n patients x k repeats table, ``(MS_rows - MS_error) / (MS_rows + (k - 1) MS_error)``, with
  the F-based 95 % interval (the formula pingouin's ``ICC3`` uses). Consistency: a constant offset between scan 1
  and scan 2 does not lower it.
- **CCC** (Lin 1989) between the first and second scan: ``2 s12 / (s1² + s2² + (m1 - m2)²)`` (population moments),
  which does penalise an offset.
- **Bands** (Koo & Li 2016, J Chiropr Med 15:155): < 0.5 poor, 0.5-0.75 moderate, 0.75-0.9 good, > 0.9 excellent
  (on the point estimate; the interval is reported beside it).

Written with numpy because it runs vectorised over hundreds of features (pingouin loops over long-format data
frames); the tests check it against the textbook sums of squares. The design: patients with at least two rows, each
contributing its first ``k`` rows in table order, ``k`` the fewest rows any such patient has.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

BANDS = ((0.5, "poor"), (0.75, "moderate"), (0.9, "good"), (np.inf, "excellent"))
BAND_NAMES = tuple(name for _, name in BANDS)


def band(value: float | None) -> str | None:
    """Koo & Li's band of an ICC (or CCC) value."""
    if value is None or not np.isfinite(value):
        return None
    return next(name for limit, name in BANDS if value < limit)


def repeated_design(patients: np.ndarray) -> np.ndarray | None:
    """Row indices as an (patients x k) array: each repeated patient's first ``k`` rows; None without repeats."""
    order: dict[str, list[int]] = {}
    for i, p in enumerate(np.asarray(patients).astype(str).tolist()):
        if p:
            order.setdefault(p, []).append(i)
    repeated = [rows for rows in order.values() if len(rows) >= 2]
    if len(repeated) < 2:
        return None
    k = min(len(rows) for rows in repeated)
    return np.array([rows[:k] for rows in repeated], dtype=int)


def icc_3_1(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ICC(3,1) per feature of ``values`` (n patients x k repeats x p features) and its F-based interval."""
    y = np.asarray(values, dtype=float)
    n, k = y.shape[:2]
    grand = y.mean(axis=(0, 1))
    ss_rows = k * ((y.mean(axis=1) - grand) ** 2).sum(axis=0)
    ss_cols = n * ((y.mean(axis=0) - grand) ** 2).sum(axis=0)
    ss_total = ((y - grand) ** 2).sum(axis=(0, 1))
    ms_rows = ss_rows / (n - 1)
    ms_error = (ss_total - ss_rows - ss_cols) / ((n - 1) * (k - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        icc = (ms_rows - ms_error) / (ms_rows + (k - 1) * ms_error)
        f = ms_rows / ms_error
    df1, df2 = n - 1, (n - 1) * (k - 1)
    tail = 1 - (1 - level) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        f_low, f_high = f / sps.f.ppf(tail, df1, df2), f * sps.f.ppf(tail, df2, df1)
        low, high = (f_low - 1) / (f_low + k - 1), (f_high - 1) / (f_high + k - 1)
    constant = ss_total == 0  # every scan identical for every patient: perfectly repeatable, nothing to estimate
    icc[constant], low[constant], high[constant] = 1.0, 1.0, 1.0
    return icc, low, high


def ccc(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Lin's concordance correlation coefficient per column of two n x p arrays (population moments)."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    va, vb = a.var(axis=0), b.var(axis=0)
    cov = ((a - ma) * (b - mb)).mean(axis=0)
    denominator = va + vb + (ma - mb) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 2 * cov / denominator
    out[denominator == 0] = 1.0
    return out


def _summary(values: np.ndarray) -> dict:
    names = [band(v) for v in values.tolist()]
    finite = values[np.isfinite(values)]
    return {"median": float(np.median(finite)) if finite.size else None,
            "bands": {b: names.count(b) for b in BAND_NAMES}}


def repeatability(matrices: dict[str, np.ndarray], names: list[str], patients: np.ndarray,
                patient_column: str) -> dict:
    """ICC(3,1) and CCC per feature for each matrix (``none``, ``combat``, ``covbat``: all rows, one column order),
    with the band counts; ``not_measured`` when no patient has two rows."""
    design = repeated_design(patients)
    if design is None:
        return {"patient_column": patient_column,
                "not_measured": f"fewer than two patients in '{patient_column}' have more than one row"}
    n, k = design.shape
    out: dict = {"patient_column": patient_column, "n_patients": int(n), "repeats": int(k),
                 "method": "ICC(3,1) two-way mixed, consistency, single measurement (Shrout & Fleiss 1979), F-based "
                           "95% interval; CCC (Lin 1989) between the first and second scan",
                 "bands": "Koo & Li 2016: < 0.5 poor, 0.5-0.75 moderate, 0.75-0.9 good, > 0.9 excellent",
                 "summary": {}, "features": [{"feature": name} for name in names]}
    for method, x in matrices.items():
        icc, low, high = icc_3_1(x[design])
        concordance = ccc(x[design[:, 0]], x[design[:, 1]])
        out["summary"][method] = {"icc": _summary(icc), "ccc": _summary(concordance)}
        for j, row in enumerate(out["features"]):
            row[method] = {"icc": _num(icc[j]), "icc_ci": [_num(low[j]), _num(high[j])], "icc_band": band(icc[j]),
                           "ccc": _num(concordance[j])}
    return out


def _num(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None

"""ComBat's inputs as float64 matrices: one-line errors for a wrong shape or a non-finite value (naming the column
and row), and the per-feature standardization that lets features at 1e300 or 1e-200 through the fit without a square
overflowing or underflowing (ComBat is equivariant, so ordinary data are unaffected)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from shiftkit.errors import DataError


def as_matrix(values, what: str, names: Sequence[str] | None) -> np.ndarray:
    """``values`` as an n x k float64 matrix (a vector is one column); a NaN or infinite value is refused, naming
    the column (from ``names``) and the row."""
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


def standardizer(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def standardize(y: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(y - center) / scale`` without the overflow of ``y - center`` near float64's limit."""
    with np.errstate(over="ignore"):
        return y / scale - center / scale  # not (y - center) / scale: y - center can overflow near 1.8e308


def site_array(sites: Sequence, rows: int) -> np.ndarray:
    """The sites as strings, one per feature row."""
    sites = np.asarray([str(s) for s in sites])
    if len(sites) != rows:
        raise DataError(f"{len(sites)} site values for {rows} feature rows")
    return sites

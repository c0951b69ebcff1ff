"""Bootstrap replicates as row counts, drawn in batches, and percentile intervals.

A replicate resamples the labelled source validation set (within each class, so every class keeps its size and every
calibration and per-class threshold stays defined) and the target (plainly) together; each estimator refits its
thresholds/calibration on the replicate. Representing a resample by its counts (B x n: how often each row was
drawn) lets every estimator use weighted sums over the *original* sorted rows, so B replicates need no per-replicate
sorting. Batches bound the memory; the draws depend only on the seed and the data sizes, so results are reproducible.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["batch_size", "percentile_interval", "replicate_batches", "resample_counts"]


def resample_counts(rng: np.random.Generator, n: int, size: int, strata: np.ndarray | None = None) -> np.ndarray:
    """Bootstrap counts (size x n): each row of the result sums to ``n``; with ``strata`` each stratum's rows are
    resampled among themselves (its total stays fixed)."""
    if strata is None:
        idx = rng.integers(0, n, size=(size, n))
    else:
        idx = np.empty((size, n), dtype=np.int64)
        start = 0
        for s in np.unique(strata):
            members = np.flatnonzero(strata == s)
            idx[:, start:start + len(members)] = members[rng.integers(0, len(members), size=(size, len(members)))]
            start += len(members)
    flat = (idx + (np.arange(size) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=size * n).reshape(size, n).astype(np.float64)


def batch_size(n_source: int, n_target: int, n_classes: int, budget: int = 4_000_000) -> int:
    """Replicates per batch so that the largest per-batch array (replicates x rows x classes) stays near
    ``budget`` elements (32 MB of float64)."""
    return int(np.clip(budget // max(1, (n_source + n_target) * n_classes), 1, 256))


def replicate_batches(seed: int, bootstrap: int, n_source: int, n_target: int, source_strata: np.ndarray,
                      size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(source_counts, target_counts)`` batches, ``bootstrap`` replicates in all."""
    source_rng, target_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    done = 0
    while done < bootstrap:
        b = min(size, bootstrap - done)
        yield resample_counts(source_rng, n_source, b, source_strata), resample_counts(target_rng, n_target, b)
        done += b


def percentile_interval(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval at ``level`` over the first (replicate) axis, ignoring NaN replicates (NaN
    where all are NaN). Returns ``(lo, hi)`` with the shape of one replicate."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(len(values), -1)
    alpha = 1.0 - level
    lo = np.full(flat.shape[1], np.nan)
    hi = np.full(flat.shape[1], np.nan)
    finite = np.isfinite(flat).any(axis=0)
    if np.any(finite):
        q = np.nanquantile(flat[:, finite], [alpha / 2, 1 - alpha / 2], axis=0)
        lo[finite], hi[finite] = q[0], q[1]
    return lo.reshape(values.shape[1:]), hi.reshape(values.shape[1:])

"""Covariate shift, P(X): two-sample tests on embeddings (n x d float arrays).

Four tests, each returning a frozen :class:`~shiftkit.shift.stats.TestResult`:

- :func:`mmd_test` -- unbiased MMD² with an RBF kernel and a permutation test (Gretton et al. 2012), in torch,
  vectorised over permutations and chunked over kernel rows so that 20,000 vs 20,000 fits in a few GB;
- :func:`domain_classifier_test` -- cross-validated logistic regression between the domains: AUC, error ε,
  proxy A-distance PAD = 2(1 - 2ε) (Ben-David et al. 2010) with a Wilson interval, exact binomial p-value;
- :func:`ot_test` -- sliced Wasserstein distance (POT) with a permutation p-value, plus exact EMD on a subsample;
- :func:`bbsd_ks_test` -- black-box shift detection: per-dimension Kolmogorov-Smirnov tests on softmax outputs
  (or PCA dimensions) with a Bonferroni correction (Lipton et al. 2018; Rabanser et al. 2019).

Each is registered in :mod:`shiftkit.shift.registry` where it is defined (the ``@register`` line above it says
what it reads and how the reports show it); :func:`run_covariate_tests` runs any registered subset with one seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import ot
import torch
from scipy import stats as sps
from scipy.spatial.distance import pdist

from shiftkit.shift.registry import TestInputs, TestSettings, names, register, run_tests
from shiftkit.shift.stats import TestResult, as_float_array, permutation_p_value

__all__ = [
    "COVARIATE_TESTS",
    "bbsd_ks_test",
    "domain_classifier_test",
    "median_heuristic_bandwidth",
    "mmd_test",
    "ot_test",
    "run_covariate_tests",
]

# Elements of one (chunk x N) float64 kernel block when no chunk size is given: 2**23 doubles = 64 MiB per block
# (a handful of such blocks are alive at once), which keeps 20,000 vs 20,000 well inside a few GB.
_KERNEL_BLOCK_ELEMENTS = 2**23
# Sample size above which the median heuristic is computed on a seeded subsample.
_MEDIAN_MAX_POINTS = 2000


# ----------------------------------------------------------------------------------------------------- helpers


def _two_samples(source: Any, target: Any, names: tuple[str, str] = ("source", "target")) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 arrays with the same number of columns and at least 2 rows each."""
    x = as_float_array(source, names[0])
    y = as_float_array(target, names[1])
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} have different dimensionality: {x.shape[1]} vs {y.shape[1]} columns "
            "(both must be embeddings of the same model/layer)"
        )
    for name, array in zip(names, (x, y)):
        if len(array) < 2:
            raise ValueError(f"{name}: a two-sample test needs at least 2 samples per domain, got {len(array)}")
    return x, y


def _check_count(value: int, name: str, minimum: int) -> int:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """None/'cpu' -> CPU; 'auto' -> CUDA when available (the one resolver: :mod:`shiftkit.device`)."""
    from shiftkit.device import resolve_device

    return resolve_device(device)


def _wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (scipy's; (0, 1) without trials)."""
    if trials <= 0:
        return (0.0, 1.0)
    interval = sps.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(interval.low), float(interval.high))


def _random_permutations(n_total: int, permutations: int, rng: np.random.Generator) -> np.ndarray:
    """(permutations x n_total) int64 array, one permutation of the pooled indices per row."""
    out = np.empty((permutations, n_total), dtype=np.int64)
    for p in range(permutations):
        out[p] = rng.permutation(n_total)
    return out


def _check_permutation_indices(indices: Any, n_total: int) -> np.ndarray:
    perms = np.asarray(indices)
    if perms.ndim != 2 or perms.shape[1] != n_total:
        raise ValueError(f"permutation_indices must have shape (P, {n_total}), got {perms.shape}")
    if not np.array_equal(np.sort(perms, axis=1), np.broadcast_to(np.arange(n_total), perms.shape)):
        raise ValueError("permutation_indices: every row must be a permutation of range(n_source + n_target)")
    return perms.astype(np.int64)


# --------------------------------------------------------------------------------------------------------- MMD


def median_heuristic_bandwidth(pooled: np.ndarray, seed: int = 0, max_points: int = _MEDIAN_MAX_POINTS) -> float:
    """Median pairwise Euclidean distance of the pooled sample (a seeded subsample of ``max_points`` if larger).

    Used as σ in k(x, y) = exp(-‖x - y‖² / (2σ²)) (Gretton et al. 2012). Falls back to 1.0 when the median is 0
    (more than half the pairs are duplicates).
    """
    pooled = np.asarray(pooled, dtype=np.float64)
    if len(pooled) > max_points:
        rng = np.random.default_rng([seed, 7])
        pooled = pooled[rng.choice(len(pooled), size=max_points, replace=False)]
    distances = pdist(pooled - pooled.mean(axis=0), metric="euclidean")
    median = float(np.median(distances)) if distances.size else 0.0
    return median if median > 0 and math.isfinite(median) else 1.0


def _unbiased_mmd2(a: Any, b: Any, total: float, n: int, m: int) -> Any:
    """Unbiased MMD² from a = sᵀKs, b = sᵀK1, total = 1ᵀK1 (s the source indicator, k(x, x) = 1)."""
    s_s = a
    s_t = b - a
    t_t = total - 2 * b + a
    return (s_s - n) / (n * (n - 1)) + (t_t - m) / (m * (m - 1)) - 2 * s_t / (n * m)


def _source_indicators(
    permutation_indices: np.ndarray | None,
    n: int,
    n_total: int,
    device: torch.device,
    permutations: int = 0,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """(P x N) float32 matrix whose row p is 1 where permutation p assigns a pooled sample to the source.

    From explicit permutations, or drawn row by row from ``rng`` (the same stream as :func:`_random_permutations`,
    without keeping a P x N index array in memory).
    """
    if permutation_indices is not None:
        indicators = torch.zeros((len(permutation_indices), n_total), dtype=torch.float32, device=device)
        src_idx = torch.from_numpy(np.ascontiguousarray(permutation_indices[:, :n])).to(device)
        indicators.scatter_(1, src_idx, 1.0)
        return indicators
    indicators = torch.zeros((permutations, n_total), dtype=torch.float32)
    for p in range(permutations):
        indicators[p, torch.from_numpy(rng.permutation(n_total)[:n])] = 1.0
    return indicators.to(device)


def _mmd_permutation_null(
    source: np.ndarray,
    target: np.ndarray,
    bandwidth: float,
    permutation_indices: np.ndarray | None,
    device: torch.device,
    chunk_size: int | None = None,
    *,
    permutations: int = 0,
    rng: np.random.Generator | None = None,
) -> tuple[float, np.ndarray]:
    """Observed unbiased MMD² (float64) and its value under each permutation (float32 products, float64 sums).

    The pooled kernel matrix K (N x N, N = n + m) is never stored: each row chunk K_c (c x N) is formed in float64,
    its row sums r_c and its product with the observed source indicator are kept in float64, and the row-centred
    block (K_c - r_c/N), cast to float32, is multiplied by the N x P matrix of permuted source indicators. Row
    centring keeps the float32 dot products small (a zero-sum row against a random subset), so the float32
    rounding does not swamp MMD², which is a small difference of large sums. Memory: O(c·N + N·P).
    """
    n, m = len(source), len(target)
    n_total = n + m
    pooled = np.concatenate([source, target]).astype(np.float64)
    pooled -= pooled.mean(axis=0)  # centring improves the ‖x‖² + ‖y‖² - 2xᵀy expansion
    z = torch.from_numpy(pooled).to(device)
    sq = (z * z).sum(dim=1)
    gamma = 1.0 / (2.0 * bandwidth * bandwidth)

    s_obs = torch.zeros(n_total, dtype=torch.float64, device=device)
    s_obs[:n] = 1.0

    # (P x N) float32 indicators of "assigned to the source" under each permutation; exact in float32.
    s_perm = _source_indicators(permutation_indices, n, n_total, device, permutations, rng)
    n_perm = len(s_perm)
    if n_perm:
        a_perm = torch.zeros(n_perm, dtype=torch.float64, device=device)  # Σ s_i (K_c - r_c/N) s
        b_perm = torch.zeros(n_perm, dtype=torch.float64, device=device)  # sᵀ r

    if chunk_size is None:
        chunk_size = max(1, _KERNEL_BLOCK_ELEMENTS // n_total)
    chunk_size = max(1, min(int(chunk_size), n_total))

    a_obs = torch.zeros((), dtype=torch.float64, device=device)
    b_obs = torch.zeros((), dtype=torch.float64, device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, n_total, chunk_size):
        stop = min(start + chunk_size, n_total)
        rows = torch.arange(stop - start, device=device)
        dist2 = sq[start:stop, None] + sq[None, :] - 2.0 * (z[start:stop] @ z.T)
        dist2.clamp_(min=0.0)
        dist2[rows, rows + start] = 0.0
        kernel = dist2.mul_(-gamma).exp_()  # float64 block (c x N), in place
        del dist2
        r_c = kernel.sum(dim=1)
        total += r_c.sum()
        a_obs += (s_obs[start:stop] * (kernel @ s_obs)).sum()
        b_obs += (s_obs[start:stop] * r_c).sum()
        if n_perm:
            centred = kernel.sub_(r_c[:, None] / n_total).to(torch.float32)
            del kernel
            products = centred @ s_perm.T  # (c x P) float32
            del centred
            s_chunk = s_perm[:, start:stop]  # (P x c)
            a_perm += (products.to(torch.float64) * s_chunk.T.to(torch.float64)).sum(dim=0)
            b_perm += s_chunk.to(torch.float64) @ r_c
            del products
        else:
            del kernel

    total_f = float(total)
    observed = float(_unbiased_mmd2(float(a_obs), float(b_obs), total_f, n, m))
    if not n_perm:
        return observed, np.empty(0, dtype=np.float64)
    # sᵀ(K - r1ᵀ/N)s = sᵀKs - n·sᵀr/N  =>  sᵀKs = a' + n·b/N
    a_full = a_perm + (n / n_total) * b_perm
    null = _unbiased_mmd2(a_full, b_perm, total_f, n, m)
    return observed, null.cpu().numpy().astype(np.float64)


def _describe_mmd(result: TestResult) -> str:
    return f"bandwidth {result.details.get('bandwidth', float('nan')):.4g}"


@register("mmd", label="MMD² (RBF, permutation)", short="MMD²", input="reduced",
          defaults=("diagnose", "audit", "harmonize"), summary=("bandwidth",), columns=(("MMD²", "statistic"), ("p", "p_value")),
          heatmap=("statistic", "MMD² (PCA embeddings)"), number_format=".4f", describe=_describe_mmd)
def mmd_test(
    source: Any,
    target: Any,
    permutations: int = 1000,
    bandwidth: float | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    *,
    chunk_size: int | None = None,
    permutation_indices: Any = None,
) -> TestResult:
    """Unbiased MMD² with an RBF kernel and a permutation test.

    ``bandwidth`` is σ in exp(-‖x - y‖²/(2σ²)); by default the median pairwise distance of the pooled sample
    (seeded subsample of at most 2000 points). ``device``: None/"cpu" (default), "cuda" or "auto".
    ``chunk_size`` (rows of the kernel matrix per block) and ``permutation_indices`` ((P, n+m) array whose rows are
    permutations of the pooled indices; the first n of each row form the permuted source) exist for tests and
    reproducibility; by default ``permutations`` seeded permutations are drawn.
    """
    x, y = _two_samples(source, target)
    n, m = len(x), len(y)
    dev = _resolve_device(device)
    if permutation_indices is not None:
        perms = _check_permutation_indices(permutation_indices, n + m)
        permutations = len(perms)
    else:
        perms = None
        permutations = _check_count(permutations, "permutations", 0)
    if bandwidth is None:
        sigma = median_heuristic_bandwidth(np.concatenate([x, y]), seed=seed)
    else:
        sigma = float(bandwidth)
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"bandwidth must be a positive finite number, got {bandwidth!r}")
    observed, null = _mmd_permutation_null(
        x, y, sigma, perms, dev, chunk_size=chunk_size, permutations=permutations, rng=np.random.default_rng(seed)
    )
    p_value = permutation_p_value(observed, null) if len(null) else float("nan")
    return TestResult(
        test="mmd",
        statistic=observed,
        p_value=p_value,
        n_source=n,
        n_target=m,
        method=(
            "Unbiased MMD² with an RBF kernel (median-heuristic bandwidth) and a permutation test "
            "(Gretton et al. 2012, JMLR 13:723-773)."
        ),
        permutations=permutations,
        seed=seed,
        details={
            "bandwidth": sigma,
            "kernel": "rbf",
            "bandwidth_rule": "median heuristic" if bandwidth is None else "given",
            "device": str(dev),
        },
    )


# --------------------------------------------------------------------------------------------- domain classifier


def _domain_classifier_data(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced pooled sample (the larger domain subsampled, seeded) and its labels (1 = target)."""
    k = min(len(x), len(y))
    rng = np.random.default_rng([seed, 11])
    if len(x) > k:
        x = x[np.sort(rng.choice(len(x), size=k, replace=False))]
    if len(y) > k:
        y = y[np.sort(rng.choice(len(y), size=k, replace=False))]
    features = np.concatenate([x, y])
    labels = np.concatenate([np.zeros(k, dtype=np.int64), np.ones(k, dtype=np.int64)])
    return features, labels


def _domain_classifier_model(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))


def _describe_domain_classifier(result: TestResult) -> str:
    d = result.details
    return f"PAD {d.get('pad', float('nan')):.3f} (95% {d['pad_ci'][0]:.3f}–{d['pad_ci'][1]:.3f})" if "pad_ci" in d else ""


@register("domain_classifier", label="domain classifier (AUC)", short="domain classifier", input="full",
          defaults=("diagnose", "audit", "harmonize"), summary=("auc", "error", "pad", "pad_ci", "n_used"),
          columns=(("PAD", "pad"), ("AUC", "auc")), heatmap=("pad", "PAD = 2(1 − 2ε)"), number_format=".3f",
          describe=_describe_domain_classifier)
def domain_classifier_test(source: Any, target: Any, folds: int = 5, seed: int = 0) -> TestResult:
    """Logistic regression between the two domains, stratified K-fold out-of-fold predictions.

    The larger domain is subsampled (seeded) so both classes have min(n, m) samples and chance is 0.5.
    Statistic: AUC of the out-of-fold scores. ``details``: ``auc``, ``error`` ε (out-of-fold misclassification at
    threshold 0.5), ``error_ci`` (Wilson 95%), ``pad`` = 2(1 - 2ε) and ``pad_ci``, ``n_used``, ``folds``.
    p-value: one-sided exact binomial test that the out-of-fold accuracy exceeds 0.5.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x, y = _two_samples(source, target)
    folds = _check_count(folds, "folds", 2)
    features, labels = _domain_classifier_data(x, y, seed)
    per_class = len(labels) // 2
    used_folds = min(folds, per_class)
    splitter = StratifiedKFold(n_splits=used_folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(
        _domain_classifier_model(seed), features, labels, cv=splitter, method="predict_proba"
    )[:, 1]
    auc = float(roc_auc_score(labels, scores))
    predictions = (scores >= 0.5).astype(np.int64)
    n_used = len(labels)
    errors = int(np.sum(predictions != labels))
    correct = n_used - errors
    error = errors / n_used
    err_lo, err_hi = _wilson_interval(errors, n_used)
    pad = 2.0 * (1.0 - 2.0 * error)
    pad_ci = (2.0 * (1.0 - 2.0 * err_hi), 2.0 * (1.0 - 2.0 * err_lo))
    p_value = float(sps.binomtest(correct, n_used, p=0.5, alternative="greater").pvalue)
    return TestResult(
        test="domain_classifier",
        statistic=auc,
        p_value=p_value,
        n_source=len(x),
        n_target=len(y),
        method=(
            "Cross-validated logistic-regression domain classifier (AUC, proxy A-distance 2(1-2ε), "
            "Ben-David et al. 2010) with a one-sided exact binomial test of accuracy > 0.5."
        ),
        permutations=None,
        seed=seed,
        details={
            "auc": auc,
            "accuracy": correct / n_used,
            "error": error,
            "error_ci": [err_lo, err_hi],
            "pad": pad,
            "pad_ci": [pad_ci[0], pad_ci[1]],
            "n_used": n_used,
            "folds": used_folds,
            "classifier": "StandardScaler + LogisticRegression",
        },
    )


# ----------------------------------------------------------------------------------------------------------- OT


def _uniform_quantile_grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merged quantile breakpoints of two uniform empirical measures of sizes n and m.

    Returns (delta, iu, iv): the lengths of the intervals between consecutive breakpoints of {i/n} ∪ {j/m} and,
    on each, the index of the sorted sample of each side whose value the quantile function takes. Integer
    arithmetic on the common denominator n·m, so the grid is exact.
    """
    points = np.union1d(np.arange(1, n + 1, dtype=np.int64) * m, np.arange(1, m + 1, dtype=np.int64) * n)
    delta = np.diff(points, prepend=0).astype(np.float64) / (n * m)
    iu = (points + m - 1) // m - 1
    iv = (points + n - 1) // n - 1
    return delta, iu, iv


def _wasserstein_1d_uniform(u: np.ndarray, v: np.ndarray, p: int = 2, grid=None) -> np.ndarray:
    """W_p^p between the uniform empirical measures on each column of u (n x k) and v (m x k).

    Same quantity as ``ot.wasserstein_1d(u, v, p=p)`` (checked in the tests), vectorised over columns: with uniform
    weights the quantile breakpoints are shared by all columns, so one gather replaces POT's per-column search.
    """
    n, m = len(u), len(v)
    delta, iu, iv = grid if grid is not None else _uniform_quantile_grid(n, m)
    u = np.sort(u, axis=0)
    v = np.sort(v, axis=0)
    diff = np.abs(u[iu] - v[iv])
    return delta @ (diff**p if p != 1 else diff)


def _sliced_null(
    projected: np.ndarray, n: int, perms: np.ndarray, p: int = 2, block_elements: int = 2**23
) -> np.ndarray:
    """Sliced Wasserstein distance for each permutation, from the pooled sample projected once (N x L).

    The same projections serve every permutation (a fair null for the observed statistic); permuted samples are
    stacked along columns so one vectorised 1-D Wasserstein call handles a block of permutations. Equals
    ``ot.sliced_wasserstein_distance`` with the same projections (checked in the tests); kept instead of calling POT
    once per permutation, which would project the pooled sample again and search each column's quantiles
    separately for every permutation.
    """
    n_total, n_proj = projected.shape
    m = n_total - n
    grid = _uniform_quantile_grid(n, m)
    out = np.empty(len(perms), dtype=np.float64)
    block = max(1, block_elements // (n_total * n_proj))
    for start in range(0, len(perms), block):
        idx = perms[start : start + block]  # (B x N)
        b = len(idx)
        xs = projected[idx[:, :n].T].reshape(n, b * n_proj)  # (n, B, L) -> (n, B*L)
        xt = projected[idx[:, n:].T].reshape(m, b * n_proj)
        w = _wasserstein_1d_uniform(xs, xt, p=p, grid=grid)
        out[start : start + b] = (w.reshape(b, n_proj).sum(axis=1) / n_proj) ** (1.0 / p)
    return out


def _describe_ot(result: TestResult) -> str:
    d = result.details
    return f"exact EMD {d['exact_emd']:.4g} on {d.get('exact_emd_n')} per side" if "exact_emd" in d else ""


# Sliced-Wasserstein permutations cost a sort each: at most this many unless the caller sets OT's own number.
OT_PERMUTATION_CAP = 200


@register("ot", label="sliced Wasserstein (permutation)", short="sliced Wasserstein", input="reduced",
          defaults=("diagnose", "audit"), permutation_cap=OT_PERMUTATION_CAP, summary=("projections",),
          columns=(("SW", "statistic"), ("p", "p_value")), heatmap=("statistic", "sliced Wasserstein distance"),
          number_format=".3f", describe=_describe_ot)
def ot_test(
    source: Any,
    target: Any,
    projections: int = 200,
    permutations: int = 200,
    exact_max: int = 500,
    seed: int = 0,
    *,
    permutation_indices: Any = None,
) -> TestResult:
    """Sliced Wasserstein distance (POT) with a permutation p-value, and exact EMD on a subsample.

    Statistic: ``ot.sliced_wasserstein_distance`` (p = 2) on the full samples with ``projections`` random
    directions drawn with ``seed``; the same directions are reused for every permutation. ``details["exact_emd"]``:
    ``ot.emd2`` with uniform weights and Euclidean cost on seeded subsamples of at most ``exact_max`` per side
    (sizes in ``details["exact_emd_n"]`` as [source, target]).
    """
    x, y = _two_samples(source, target)
    n, m = len(x), len(y)
    projections = _check_count(projections, "projections", 1)
    exact_max = _check_count(exact_max, "exact_max", 2)
    if permutation_indices is not None:
        perms = _check_permutation_indices(permutation_indices, n + m)
    else:
        permutations = _check_count(permutations, "permutations", 0)
        perms = _random_permutations(n + m, permutations, np.random.default_rng(seed))

    directions = ot.sliced.get_random_projections(x.shape[1], projections, seed=seed)  # (d x L), unit columns
    statistic = float(ot.sliced_wasserstein_distance(x, y, projections=directions, p=2))
    if len(perms):
        null = _sliced_null(np.concatenate([x, y]) @ directions, n, perms, p=2)
        p_value = permutation_p_value(statistic, null)
    else:
        p_value = float("nan")

    rng = np.random.default_rng([seed, 13])
    xs = x if n <= exact_max else x[np.sort(rng.choice(n, size=exact_max, replace=False))]
    xt = y if m <= exact_max else y[np.sort(rng.choice(m, size=exact_max, replace=False))]
    cost = ot.dist(xs, xt, metric="euclidean")
    exact = float(ot.emd2(np.full(len(xs), 1.0 / len(xs)), np.full(len(xt), 1.0 / len(xt)), cost, numItermax=1_000_000))
    return TestResult(
        test="ot",
        statistic=statistic,
        p_value=p_value,
        n_source=n,
        n_target=m,
        method=(
            "Sliced 2-Wasserstein distance (POT, Flamary et al. 2021; Bonneel et al. 2015) with a permutation "
            "test, plus exact EMD (Euclidean cost) on a subsample."
        ),
        permutations=len(perms),
        seed=seed,
        details={
            "projections": projections,
            "p": 2,
            "exact_emd": exact,
            "exact_emd_n": [len(xs), len(xt)],
            "exact_emd_cost": "euclidean",
        },
    )


# --------------------------------------------------------------------------------------------------------- BBSD


@register("bbsd", label="BBSD: KS per output (Bonferroni)", short="BBSD", input="outputs", defaults=("diagnose",),
          summary=("dimensions",), columns=(("KS D", "statistic"), ("p", "p_value")), heatmap=("statistic", "BBSD: max KS D"),
          per_dimension=("ks", "p_values"))
def bbsd_ks_test(source_outputs: Any, target_outputs: Any) -> TestResult:
    """Black-box shift detection: two-sample KS test per column, Bonferroni-corrected.

    Columns are a classifier's softmax outputs or PCA dimensions of the embeddings (Lipton et al. 2018;
    Rabanser et al. 2019). p = min(1, d · min_j p_j); statistic = max_j D_j.
    """
    x, y = _two_samples(source_outputs, target_outputs, names=("source_outputs", "target_outputs"))
    d = x.shape[1]
    per_column = sps.ks_2samp(x, y, axis=0)  # one KS test per column, as a loop over columns would give
    ks = np.atleast_1d(np.asarray(per_column.statistic, dtype=np.float64))
    p_values = np.atleast_1d(np.asarray(per_column.pvalue, dtype=np.float64))
    return TestResult(
        test="bbsd",
        statistic=float(ks.max()),
        p_value=float(min(1.0, d * p_values.min())),
        n_source=len(x),
        n_target=len(y),
        method=(
            "Black-box shift detection: per-dimension two-sample Kolmogorov-Smirnov tests with Bonferroni "
            "correction (Lipton et al. 2018; Rabanser et al. 2019)."
        ),
        permutations=None,
        seed=None,
        details={
            "ks": ks.tolist(),
            "p_values": p_values.tolist(),
            "dimensions": d,
            "correction": "bonferroni",
        },
    )


# ---------------------------------------------------------------------------------------------------------- all

COVARIATE_TESTS = names()  # the built-in tests registered above (every registered one, later: registry.names())


def run_covariate_tests(
    source: Any,
    target: Any,
    source_outputs: Any = None,
    target_outputs: Any = None,
    tests: Iterable[str] = COVARIATE_TESTS,
    permutations: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    *,
    ot_permutations: int | None = None,
) -> dict[str, TestResult]:
    """Run the named registered tests on ``source`` and ``target``; returns {name: TestResult} in the order asked.

    ``permutations`` is the permutation budget (MMD uses all of it); OT uses ``ot_permutations`` (default
    min(permutations, 200), as sliced Wasserstein permutations cost a sort each). Tests that read classifier
    outputs (``bbsd``: KS per output) use ``source_outputs``/``target_outputs`` when both are given, otherwise the
    embeddings themselves; tests that read the full embedding get ``source``/``target`` too.
    """
    if (source_outputs is None) != (target_outputs is None):
        raise ValueError("give both source_outputs and target_outputs, or neither")
    x, y = _two_samples(source, target)
    outputs = (source_outputs, target_outputs) if source_outputs is not None else None
    options = {"ot": {"permutations": int(ot_permutations)}} if ot_permutations is not None else {}
    return run_tests(tests, TestInputs(reduced=(x, y), full=(x, y), outputs=outputs),
                     TestSettings(seed=seed, permutations=permutations, device=device, options=options))

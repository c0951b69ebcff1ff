"""Concept shift, P(Y|X): needs some labelled target images.

Three measurements, all on embeddings with (standardised, multinomial, L2) logistic regression as the hypothesis
class, so that they speak about the same classifier family as the default source classifier:

(a) **Observed vs expected target error.** The source classifier is cross-fitted: K = 5 fold models ``h_{-k}``,
    each fitted on the other source folds. The *expected* error is what covariate + label shift alone predict:
    the importance-weighted source error ``sum_i w_i e_i / sum_i w_i`` of the held-out fold errors ``e_i``, with
    weights ``w(x, y) = p_T(x, y) / p_S(x, y)`` for the model ``p_T(x, y) ∝ p_S(x, y) a(x) b(y)``: a covariate
    tilt ``a(x)`` times a label tilt ``b(y)``. Under that model P_T(Y|X) is P_S(Y|X) re-weighted by class
    (label-shift-corrected posteriors), which contains pure covariate shift (``b = 1``) and pure label shift
    (``a = 1``, ``b = q/p``) as special cases. We estimate ``log w = f(x) + g(y)`` in one go with a cross-fitted
    logistic domain classifier on ``[PCA(x), one-hot y]`` (labelled source vs labelled target; odds times
    ``n_S / n_T``), normalise the weights to mean 1 on the source and cap them at ``max_weight`` (default 20).
    Multiplying a domain-classifier ratio on ``x`` alone by separately estimated ``q(y)/p(y)`` would count the
    label change twice whenever it is a consequence of the covariate shift; the joint additive fit does not. The
    *observed* error is that of the same fold models on the labelled target (per image, the fraction of fold
    models that err), so both sides describe the same classifiers; the error of one classifier fitted on the whole
    source is in ``details['target_error_full_fit']``. The *gap* ``observed - expected`` has a percentile-bootstrap
    interval: source and target rows are resampled and the domain classifier refitted on each resample (so the
    weights' error is carried); the fold models are held fixed, so the variability of cross-validation itself is
    not (Bengio & Grandvalet 2004) and the interval runs somewhat narrow under strong covariate shift.

(b) **A test of P(Y|X) equality.** On the pooled labelled data, the 5-fold cross-validated log-loss of
    ``y ~ x`` minus that of ``y ~ [x, d, d * x]`` (``d`` the domain indicator): the statistic is the gain in nats
    per image from knowing the domain. The p-value comes from permuting ``d``. A free permutation
    (``strata="none"``) is only valid when ``d`` is independent of ``x`` (no covariate shift): otherwise the
    interactions can buy a better fit of a misspecified model in each domain's region of ``x`` even when P(Y|X) is
    shared, and the test over-rejects (in our tests: every time for a curved labelling rule under a mean shift).
    So ``d`` is permuted within strata in which P(d | x) is roughly constant, a conditional permutation test
    (Berrett et al. 2020 in spirit): under H0, Y ⊥ d | x, so within such a stratum the ``d`` are exchangeable given
    (x, y). The default ``strata="propensity"`` uses ``n_strata`` equal-count bins of the propensity score
    ``P(d = 1 | x)`` from a logistic domain classifier (a balancing score: only its ranking matters);
    ``"kmeans"`` uses k-means clusters of the embedding (coarser: it held the level badly for a curved rule) and
    ``"predicted"`` the source classifier's predicted class. Strata that hold one domain only contribute no
    permutations, so the test is only as powerful as the overlap. For speed every model here runs on the first
    ``max_dim`` principal components of the pooled, standardised embedding, and test (b), which refits per
    permutation, on as many of those as keep its augmented model within ``TEST_PARAMETER_BUDGET`` parameters
    (7 classes: 9 components; 2 classes: 32). A permutation test is valid for any statistic computed the same way
    on observed and permuted data, so this trades a little power for a run time of minutes, not hours.
    Note that P(Y|X) also changes under pure label shift (posteriors follow the priors), which the domain main
    effect ``d`` captures, so (b) flags a strong label shift too while (a) does not; ``details`` splits the observed
    gain into the main-effect part (``[x] -> [x, d]``) and the interaction part (``[x, d] -> [x, d, d * x]``) so
    that a pure prior change can be told apart.

(c) **λ\\*, the joint-risk term of Ben-David et al.'s bound** ``R_T(h) <= R_S(h) + d_HΔH / 2 + λ*`` with
    ``λ* = min_h R_S(h) + R_T(h)``: one logistic regression on source + target labelled data, with sample weights
    that give both domains equal total weight (so it minimises the sum of the two risks' surrogate), and 5-fold
    cross-validated errors on each domain. ``lambda_star`` is their *sum* (the bound's term); ``details`` also has
    the mean. It estimates the error of a fitted joint hypothesis, so it errs high (finite samples, log-loss
    surrogate) rather than low.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.special import softmax

from shiftkit.errors import ConfigError
from shiftkit.shift.stats import PValueResult, ShiftInputError, as_float_array, encode_labels, permutation_p_value

__all__ = ["ConceptShiftResult", "concept_shift_test", "newton_logreg"]

STRATA = ("propensity", "kmeans", "predicted", "none")
_EPS = 1e-6


@dataclass(frozen=True)
class ConceptShiftResult(PValueResult):
    """Concept-shift measurements; ``statistic``/``p_value`` are those of the P(Y|X) test (b)."""

    statistic: float
    p_value: float
    observed_target_error: float
    expected_target_error: float
    error_gap: float
    error_gap_ci: list
    lambda_star: float
    lambda_star_source: float
    lambda_star_target: float
    n_source: int
    n_target: int
    permutations: int
    seed: int
    method: str
    details: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _standardise(x: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    ref = x if reference is None else reference
    mean, std = ref.mean(axis=0), ref.std(axis=0)
    std[std < 1e-12] = 1.0
    return (x - mean) / std


def _folds(key: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold ids 0..K-1, stratified by ``key``: each stratum is shuffled and dealt round-robin from a random offset.

    Not scikit-learn's ``StratifiedKFold``: that warns when a stratum has fewer members than folds (the (domain,
    class) strata here often do) and refuses when all do, and its folds differ, so the seeded results would change."""
    n = len(key)
    k = max(2, min(n_folds, n))
    fold = np.empty(n, dtype=np.int64)
    offset = 0
    for value in np.unique(key):
        members = rng.permutation(np.flatnonzero(key == value))
        fold[members] = (offset + np.arange(len(members))) % k
        offset = (offset + len(members)) % k
    return fold


def _softmax(s: np.ndarray) -> np.ndarray:
    return softmax(s, axis=1)


def newton_logreg(x: np.ndarray, y: np.ndarray, k: int, C: float = 1.0, sample_weight: np.ndarray | None = None,
                  max_iter: int = 100, tol: float = 1e-9, init: np.ndarray | None = None) -> np.ndarray:
    """Multinomial L2 logistic regression by damped Newton: ``(p + 1) x k`` weights, the last row the intercepts.

    Kept rather than scikit-learn's ``LogisticRegression`` for the small problems that the permutation and bootstrap
    loops refit hundreds of times: a few exact Newton steps converge where L-BFGS needs many gradient steps, several
    times faster here (larger problems do go to scikit-learn, see :func:`_fit_proba`). Minimises ``C * sum_i w_i * (-log softmax(W^T [x_i, 1])_{y_i}) + ||W[:p]||^2 / 2``, scikit-learn's multinomial
    objective (symmetric parametrisation, intercepts unpenalised), so it agrees with ``LogisticRegression(C=C)``
    for 3 or more classes; with 2 classes the symmetric parametrisation halves the penalty relative to
    scikit-learn's binomial one. Used for the small problems of the permutation loop, where it is several times
    faster than L-BFGS. ``init`` warm-starts from earlier weights (the bootstrap refits).
    """
    n, p = x.shape
    xt = np.hstack([x, np.ones((n, 1))])
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0
    penalty = np.ones((p + 1, 1))
    penalty[p] = 1e-8  # the intercepts: unpenalised up to a ridge that fixes their common shift
    m = (p + 1) * k

    def objective(w: np.ndarray) -> float:
        s = xt @ w
        smax = s.max(axis=1, keepdims=True)
        lse = (smax + np.log(np.exp(s - smax).sum(axis=1, keepdims=True)))[:, 0]
        return float(C * np.sum(sw * (lse - s[np.arange(n), y])) + 0.5 * np.sum(penalty * w * w))

    w = np.zeros((p + 1, k)) if init is None else np.array(init, dtype=np.float64)
    current = objective(w)
    for _ in range(max_iter):
        prob = _softmax(xt @ w)
        grad = C * xt.T @ (sw[:, None] * (prob - onehot)) + penalty * w
        if np.max(np.abs(grad)) < tol:
            break
        hess = np.empty((p + 1, k, p + 1, k))
        cw = C * sw
        for a in range(k):
            for b in range(a, k):
                s_ab = cw * prob[:, a] * ((a == b) - prob[:, b])
                block = xt.T @ (xt * s_ab[:, None])
                hess[:, a, :, b] = block
                hess[:, b, :, a] = block
        hess = hess.reshape(m, m)
        hess[np.diag_indices(m)] += np.repeat(penalty[:, 0], k)
        try:
            step = np.linalg.solve(hess, grad.reshape(m)).reshape(p + 1, k)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hess, grad.reshape(m), rcond=None)[0].reshape(p + 1, k)
        slope = float(np.sum(grad * step))
        t = 1.0
        while t > 1e-10:
            candidate = w - t * step
            value = objective(candidate)
            if value <= current - 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break
        w, previous, current = candidate, current, value
        if previous - current < tol * max(1.0, abs(current)):
            break
    return w


def _fit_proba(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, k: int, C: float,
               sample_weight: np.ndarray | None = None, max_iter: int = 1000) -> np.ndarray:
    """Class probabilities (n_te x k) from a multinomial logistic regression; robust to classes absent in training.

    Small problems (``(d + 1) * classes <= 400`` parameters) use :func:`newton_logreg`, larger ones scikit-learn's
    L-BFGS ``LogisticRegression`` (same objective for 3+ classes).
    """
    present = np.unique(y_tr)
    out = np.zeros((len(x_te), k))
    if len(present) == 1:
        out[:, present[0]] = 1.0
    elif (x_tr.shape[1] + 1) * len(present) <= 400:
        remap = np.searchsorted(present, y_tr)
        w = newton_logreg(x_tr, remap, len(present), C, sample_weight)
        out[:, present] = _softmax(x_te @ w[:-1] + w[-1])
    else:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=C, max_iter=max_iter)
        model.fit(x_tr, y_tr, sample_weight=sample_weight)
        out[:, model.classes_] = model.predict_proba(x_te)
    out = np.clip(out, _EPS, None)
    return out / out.sum(axis=1, keepdims=True)


def _cross_fit(x: np.ndarray, y: np.ndarray, fold: np.ndarray, k: int, C: float,
               sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold class probabilities."""
    out = np.empty((len(x), k))
    for f in np.unique(fold):
        test = fold == f
        train = ~test
        if not train.any():
            out[test] = 1.0 / k
            continue
        sw = None if sample_weight is None else sample_weight[train]
        out[test] = _fit_proba(x[train], y[train], x[test], k, C, sw)
    return out


def _log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    return float(log_loss(y, proba, labels=np.arange(proba.shape[1])))


def _density_weights(pi: np.ndarray, n_s: int, n_t: int, max_weight: float) -> tuple[np.ndarray, int]:
    """p_T / p_S from domain probabilities: odds times n_S / n_T, mean 1 on the source, capped at ``max_weight``."""
    pi = np.clip(pi, 1e-3, 1 - 1e-3)
    w = pi / (1 - pi) * (n_s / n_t)
    w = w / w.mean()
    clipped = int(np.sum(w > max_weight))
    w = np.minimum(w, max_weight)
    return w / w.mean(), clipped


def _permute_within(strata: np.ndarray, d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = d.copy()
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        out[members] = d[rng.permutation(members)]
    return out


def _pca(z: np.ndarray, max_dim: int, seed: int) -> np.ndarray:
    """``z`` on its first ``max_dim`` principal components (``z`` itself when it has no more columns than that)."""
    if z.shape[1] <= min(max_dim, z.shape[0]):  # PCA has at most as many components as images
        return z
    from shiftkit.features import pca_model

    return pca_model(z, max_dim, seed).fit_transform(z)


# ----------------------------------------------------------------------------------------------------------------
# the test


TEST_PARAMETER_BUDGET = 160


def _test_dim(available: int, k: int) -> int:
    """Principal components for test (b): (2m + 2) * k parameters stay within TEST_PARAMETER_BUDGET."""
    return int(min(available, max(2, (TEST_PARAMETER_BUDGET // k - 2) // 2)))


def concept_shift_test(source_emb: Any, source_y: Any, target_emb: Any, target_y: Any, classes: Sequence,
                       permutations: int = 200, seed: int = 0, *, folds: int = 5, strata: str = "propensity",
                       n_strata: int | None = None, bootstrap: int = 200, alpha: float = 0.05, C: float = 1.0,
                       max_weight: float = 20.0, max_dim: int = 32) -> ConceptShiftResult:
    """Concept shift between labelled source and (some) labelled target embeddings; see the module docstring.

    ``source_y``/``target_y`` are class names (members of ``classes``) or class indices. ``permutations`` drives the
    P(Y|X) test (b); ``bootstrap`` the error-gap interval of (a) at level ``1 - alpha``; ``strata`` the conditional
    permutation (``"propensity"``: ``n_strata`` propensity-score bins, default ``clip(n / 40, 2, 20)``; ``"kmeans"``:
    as many clusters; ``"predicted"``; ``"none"``). ``max_dim``: principal components for the domain classifier of
    the weights and for the test (b); ``max_weight``: cap on the importance weights; ``C``: inverse L2 strength of
    every logistic regression.
    """
    classes = list(classes)
    k = len(classes)
    try:
        xs = as_float_array(source_emb, "source embeddings")
        xt = as_float_array(target_emb, "target embeddings")
    except ValueError as error:
        raise ShiftInputError(str(error)) from None
    if xs.shape[1] != xt.shape[1]:
        raise ShiftInputError(f"target embeddings: dimension {xt.shape[1]} != source dimension {xs.shape[1]}")
    ys = encode_labels(source_y, classes, "source labels")
    yt = encode_labels(target_y, classes, "target labels")
    if len(ys) != len(xs):
        raise ShiftInputError(f"source labels: {len(ys)} labels for {len(xs)} embeddings")
    if len(yt) != len(xt):
        raise ShiftInputError(f"target labels: {len(yt)} labels for {len(xt)} embeddings")
    if len(np.unique(ys)) < 2:
        raise ShiftInputError("source labels: need at least 2 classes in the source to fit a classifier")
    if len(xs) < 4 or len(xt) < 4:
        raise ShiftInputError(f"concept shift needs at least 4 labelled images per domain (source {len(xs)}, "
                              f"target {len(xt)})")
    if strata not in STRATA:
        raise ConfigError(f"strata: choose one of {', '.join(STRATA)}, got '{strata}'")
    if int(permutations) < 1 or int(bootstrap) < 1:
        raise ConfigError(f"permutations and bootstrap must be at least 1 (got {permutations}, {bootstrap})")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha: must be in (0, 1), got {alpha}")
    permutations, bootstrap = int(permutations), int(bootstrap)

    seeds = np.random.SeedSequence(seed).spawn(5)
    n_s, n_t = len(xs), len(xt)
    x_all = np.vstack([xs, xt])
    y_all = np.concatenate([ys, yt])
    d_all = np.concatenate([np.zeros(n_s, dtype=np.int64), np.ones(n_t, dtype=np.int64)])
    z_all = _standardise(x_all)  # pooled standardisation; every model below runs on its principal components
    zp = _pca(z_all, max_dim, seed)

    # (a) observed vs expected target error ------------------------------------------------------------------------
    # On the <= max_dim principal components too: a 1280-d multinomial fit costs ~25 s, and every fit below is
    # repeated per fold (an L2-penalised logistic regression is rotation-invariant, so nothing changes for d <= max_dim).
    zs_src = _standardise(zp[:n_s])
    zt_src = _standardise(zp[n_s:], reference=zp[:n_s])
    err_t_full = (_fit_proba(zs_src, ys, zt_src, k, C).argmax(axis=1) != yt).astype(np.float64)
    src_fold = _folds(ys, folds, np.random.default_rng(seeds[0]))
    # The K fold models h_{-k}: each predicts its held-out source rows and all target rows, so the observed and
    # the expected error refer to the same classifiers (per target row: the fraction of fold models that err).
    err_s = np.empty(n_s)
    err_t = np.zeros(n_t)
    fold_ids = np.unique(src_fold)
    for f in fold_ids:
        test = src_fold == f
        proba = _fit_proba(zs_src[~test], ys[~test], np.vstack([zs_src[test], zt_src]), k, C)
        pred = proba.argmax(axis=1)
        err_s[test] = pred[: test.sum()] != ys[test]
        err_t += (pred[test.sum():] != yt) / len(fold_ids)

    dom_x = np.hstack([zp, np.eye(k)[y_all]])
    dom_fold = _folds(d_all * k + y_all, folds, np.random.default_rng(seeds[1]))
    w, clipped = _density_weights(_cross_fit(dom_x, d_all, dom_fold, 2, C)[:n_s, 1], n_s, n_t, max_weight)
    observed = float(err_t.mean())
    expected = float(np.sum(w * err_s) / np.sum(w))
    gap = observed - expected
    # Bootstrap: resample source and target rows, refit the domain classifier on the resample (warm-started, in
    # sample) so that the interval carries the weights' estimation error; the fold errors stay fixed.
    w_full = newton_logreg(dom_x, d_all, 2, C)
    rng = np.random.default_rng(seeds[2])
    gaps = np.empty(bootstrap)
    for b in range(bootstrap):
        i_s = rng.integers(0, n_s, n_s)
        i_t = rng.integers(0, n_t, n_t)
        rows = np.concatenate([i_s, n_s + i_t])
        w_b = newton_logreg(dom_x[rows], d_all[rows], 2, C, init=w_full, max_iter=20)
        pi_b = _softmax(dom_x[i_s] @ w_b[:-1] + w_b[-1])[:, 1]
        weights_b, _ = _density_weights(pi_b, n_s, n_t, max_weight)
        gaps[b] = err_t[i_t].mean() - np.sum(weights_b * err_s[i_s]) / np.sum(weights_b)
    gap_ci = [float(v) for v in np.quantile(gaps, [alpha / 2, 1 - alpha / 2])]

    # (b) does the domain add predictive power beyond x? ------------------------------------------------------------
    pooled_fold = _folds(d_all * k + y_all, folds, np.random.default_rng(seeds[3]))

    # The test refits its models once per permutation: keep the augmented model within TEST_PARAMETER_BUDGET
    # parameters by using the leading principal components only (7 classes: 9 components; 2 classes: 32).
    zq = zp[:, : _test_dim(zp.shape[1], k)]

    def augmented(d: np.ndarray) -> np.ndarray:
        return np.hstack([zq, d[:, None], d[:, None] * zq])

    loss_base = _log_loss(_cross_fit(zq, y_all, pooled_fold, k, C), y_all)
    loss_main = _log_loss(_cross_fit(np.hstack([zq, d_all[:, None]]), y_all, pooled_fold, k, C), y_all)
    loss_aug = _log_loss(_cross_fit(augmented(d_all), y_all, pooled_fold, k, C), y_all)
    statistic = loss_base - loss_aug

    n_groups = max(1, min(n_strata or int(np.clip(len(y_all) // 40, 2, 20)), len(y_all)))
    if strata == "propensity":
        score = _fit_proba(zp, d_all, zp, 2, C)[:, 1]
        ranks = np.argsort(np.argsort(score, kind="stable"), kind="stable")
        groups = ranks * n_groups // len(y_all)
    elif strata == "kmeans":
        from sklearn.cluster import KMeans

        groups = KMeans(n_clusters=n_groups, n_init=4, random_state=seed).fit_predict(zp)
    elif strata == "predicted":
        groups = _fit_proba(zs_src, ys, _standardise(x_all, reference=xs), k, C).argmax(axis=1)
    else:
        groups = np.zeros(len(y_all), dtype=np.int64)
    mixed = [g for g in np.unique(groups) if 0 < d_all[groups == g].mean() < 1]
    exchangeable = int(np.isin(groups, mixed).sum())

    rng = np.random.default_rng(seeds[4])
    null = np.empty(permutations)
    for b in range(permutations):
        d_perm = _permute_within(groups, d_all, rng)
        null[b] = loss_base - _log_loss(_cross_fit(augmented(d_perm), y_all, pooled_fold, k, C), y_all)
    p_value = permutation_p_value(statistic, null)

    # (c) λ*: best joint classifier ---------------------------------------------------------------------------------
    balance = np.where(d_all == 0, 0.5 / n_s, 0.5 / n_t) * len(y_all)
    joint = _cross_fit(zp, y_all, pooled_fold, k, C, sample_weight=balance).argmax(axis=1)
    joint_err = (joint != y_all).astype(np.float64)
    lam_s, lam_t = float(joint_err[:n_s].mean()), float(joint_err[n_s:].mean())

    details = {
        "classes": [c.item() if isinstance(c, np.generic) else c for c in classes],
        "alpha": alpha,
        "folds": int(src_fold.max() + 1),
        "C": C,
        "source_error_cv": float(err_s.mean()),
        "target_error_full_fit": float(err_t_full.mean()),
        "weights": {"estimator": "cross-fitted logistic domain classifier on [PCA(x), onehot(y)]",
                    "max_weight": max_weight, "clipped": clipped,
                    "effective_sample_size": float(w.sum() ** 2 / np.sum(w ** 2)),
                    "max": float(w.max())},
        "error_gap_bootstrap": bootstrap,
        "log_loss_base": loss_base,
        "log_loss_domain_main_effect": loss_main,
        "log_loss_augmented": loss_aug,
        "gain_main_effect": loss_base - loss_main,
        "gain_interactions": loss_main - loss_aug,
        "null_mean": float(null.mean()),
        "null_quantile_95": float(np.quantile(null, 0.95)),
        "strata": strata,
        "n_strata": int(len(np.unique(groups))),
        "exchangeable_images": exchangeable,
        "test_dim": int(zq.shape[1]),
        "lambda_star_mean": (lam_s + lam_t) / 2,
        "lambda_star_definition": "R_S(h') + R_T(h') of a domain-balanced joint logistic regression, cross-validated",
    }
    return ConceptShiftResult(
        statistic=float(statistic),
        p_value=p_value,
        observed_target_error=observed,
        expected_target_error=expected,
        error_gap=float(gap),
        error_gap_ci=gap_ci,
        lambda_star=lam_s + lam_t,
        lambda_star_source=lam_s,
        lambda_star_target=lam_t,
        n_source=n_s,
        n_target=n_t,
        permutations=permutations,
        seed=int(seed),
        method=f"cross-validated log-loss gain of [x, d, d*x] over [x]; permutation of d within {strata} strata",
        details=details,
    )

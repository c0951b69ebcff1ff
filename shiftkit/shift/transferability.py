"""How well the source model's frozen features suit the source task, and where its gradient would act.

Three signals that the per-block shift fingerprint (issue 15, item 4) sets beside the shift itself:

- :func:`logme`: LogME (You et al., ICML 2021), the log maximum evidence of a Bayesian linear model on the frozen
  features, a label-aware score that needs no training;
- :func:`linear_probe_score`: a cross-validated linear probe on the frozen features (the project's own solver,
  :func:`shiftkit.finetune.linear_probe.fit_linear_probe`), balanced accuracy and macro AUROC with intervals;
- :func:`gradient_signal`: the relative gradient norm ||g|| / ||w|| per block of the architecture's partition
  (the signal Auto-RGN, Lee et al. 2023, turns into per-tensor learning rates), over a few labelled batches.

All three return plain floats / JSON-able dicts.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Iterable

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

from shiftkit.finetune.linear_probe import DEFAULT_CS, balanced_class_weights, fit_linear_probe
from shiftkit.finetune.strategies import NORM_LAYERS
from shiftkit.finetune.trainer import WeightedLoss
from shiftkit.models.registry import AdaptedModel
from shiftkit.shift.stats import ShiftInputError

LOGME_MAX_ITER = 11  # TLlib's and the authors' loop: "should converge after at most 10 steps"
LOGME_TOL = 0.01  # TLlib's stopping rule: relative change of lambda = alpha / beta below 1 %
_TINY = np.finfo(np.float64).tiny


# -- LogME ---------------------------------------------------------------------------------------------------------
def _check_features_labels(features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
        raise ShiftInputError(f"features: expected a non-empty 2-D array (images x dimensions), got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ShiftInputError("features: contains NaN or infinite values")
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(f):
        raise ShiftInputError(f"labels: expected one label per image ({len(f)}), got shape {y.shape}")
    return f, y


def logme(features: np.ndarray, labels: np.ndarray, *, tol: float = LOGME_TOL,
          max_iter: int = LOGME_MAX_ITER) -> float:
    """LogME of ``features`` (n x d) for class ``labels`` (n): higher means a linear model on these frozen
    features explains the labels better (You et al., "LogME: Practical Assessment of Pre-trained Models for
    Transfer Learning", ICML 2021).

    Per class c, the one-vs-rest target y = [labels == c] gets the Bayesian linear model y ~ N(F m, 1/beta),
    m ~ N(0, 1/alpha); alpha and beta are set by the paper's fixed-point iteration (MacKay's evidence
    maximisation) from alpha = beta = 1, and the log evidence

        d/2 log alpha + n/2 log beta - 1/2 log det(alpha I + beta F^T F) - beta/2 ||y - F m||^2
        - alpha/2 ||m||^2 - n/2 log 2 pi

    is divided by n; the score is the mean over classes. This follows TLlib's ``log_maximum_evidence``
    (thuml/Transfer-Learning-Library, ``tllib/ranking/logme.py``, the ICML version of the authors' code):
    same start, same update, same stopping rule (relative change of alpha/beta < ``tol``, at most ``max_iter``
    steps), no epsilon in the denominators, features used as given (not centred). Written here rather than
    imported because TLlib needs numba and the whole TLlib install for one function.

    Two differences in *how*, not *what*: (1) TLlib takes the SVD of the d x d matrix F^T F; here, for n < d,
    the n x n matrix F F^T is decomposed instead (the kernel form: its eigenvalues are F^T F's non-zero ones,
    the d - n others are exactly 0 and enter the log-determinant as (d - n) log alpha), which keeps n < d cheap
    and exact. The authors' later fixed-point version (thuml/LogME ``_fit_fixed_point``) drops those
    (d - n) log alpha terms when n < d; the ICML formula, TLlib's and this one keep them. (2) Classes are the
    labels present (``np.unique``), not ``range(max + 1)``: an absent class would make alpha infinite in TLlib.
    Any hashable labels work (strings too). Degenerate denominators (a class target orthogonal to every feature)
    are floored at the smallest positive float instead of dividing by zero.
    """
    f, y = _check_features_labels(features, labels)
    n, d = f.shape
    if n < 2:
        raise ShiftInputError(f"LogME needs at least 2 images, got {n}")
    if not np.any(f):
        raise ShiftInputError("features: all zero, LogME is undefined")
    if n < d:  # kernel form: F F^T = U diag(sigma) U^T; F^T F has the same non-zero eigenvalues, plus d - n zeros
        sigma, u = np.linalg.eigh(f @ f.T)
        sigma = np.clip(sigma, 0.0, None)
        zeros = d - n
    else:  # F^T F = V diag(sigma) V^T, as TLlib (which takes its SVD; symmetric PSD: the same decomposition)
        sigma, v = np.linalg.eigh(f.T @ f)
        sigma = np.clip(sigma, 0.0, None)
        zeros = 0
    evidences = []
    for c in np.unique(y):
        target = (y == c).astype(np.float64)
        if n < d:
            x = u.T @ target  # coordinates of y in the eigenbasis of F F^T; F m = U (sigma x / (lam + sigma))

            def fit_terms(lam: float, x=x, target=target) -> tuple[float, float]:
                shrink = sigma / (lam + sigma)
                m2 = float(np.sum(sigma * x ** 2 / (lam + sigma) ** 2))  # ||m||^2
                return m2, float(np.sum((target - u @ (shrink * x)) ** 2))
        else:
            tmp = v.T @ (f.T @ target)  # TLlib's ``tmp``; m = V (tmp / (lam + sigma))

            def fit_terms(lam: float, tmp=tmp, target=target) -> tuple[float, float]:
                coef = tmp / (lam + sigma)
                return float(np.sum(coef ** 2)), float(np.sum((target - f @ (v @ coef)) ** 2))
        alpha, beta, lam = 1.0, 1.0, 1.0
        for _ in range(max_iter):
            gamma = float(np.sum(sigma / (sigma + lam)))
            alpha_de, beta_de = fit_terms(lam)
            alpha = gamma / max(alpha_de, _TINY)
            beta = (n - gamma) / max(beta_de, _TINY)
            new_lam = alpha / beta
            if abs(new_lam - lam) / lam < tol:
                break
            lam = new_lam
        log_det = float(np.sum(np.log(alpha + beta * sigma))) + zeros * np.log(alpha)
        evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * log_det - beta / 2.0 * beta_de
                    - alpha / 2.0 * alpha_de - n / 2.0 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


# -- cross-validated linear probe ----------------------------------------------------------------------------------
def _interval(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None, None
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def _macro_auroc(y: np.ndarray, probabilities: np.ndarray) -> float:
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(y, probabilities[:, 1]))
    return float(roc_auc_score(y, probabilities, multi_class="ovr", average="macro",
                               labels=np.arange(probabilities.shape[1])))


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(1, keepdims=True)


def _bootstrap(y: np.ndarray, predictions: np.ndarray, probabilities: np.ndarray, resamples: int,
               seed: int, chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Balanced accuracy and macro one-vs-rest AUROC of ``resamples`` class-stratified bootstrap samples.

    Vectorised over resamples (sklearn's metrics cost milliseconds per call, a thousand resamples seconds): each
    class keeps its size, so balanced accuracy is the mean of per-class recalls of the resampled members, and each
    class's AUROC is the Mann-Whitney form on ``scipy.stats.rankdata`` ranks (ties averaged: the same value as
    ``roc_auc_score``, which the tests check).
    """
    k = probabilities.shape[1]
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(y == c) for c in range(k)]
    correct = predictions == y
    bacc, auc = np.empty(resamples), np.empty(resamples)
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        picks = [rng.choice(m, size=(b, len(m)), replace=True) for m in members]
        bacc[start:start + b] = np.mean([correct[p].mean(1) for p in picks], axis=0)
        sample = np.concatenate(picks, axis=1)  # b x n, class c's members in a known column range
        auc[start:start + b] = _auroc_ovr_rows(y[sample], probabilities[sample], k)
    return bacc, auc


def _auroc_ovr_rows(y: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Macro one-vs-rest AUROC of each row: ``y`` (b x n) class indices, ``scores`` (b x n x k) probabilities."""
    per_class = []
    for c in range(k):
        ranks = rankdata(scores[..., c], axis=1)
        positive = y == c
        n_pos = positive.sum(1)
        n_neg = y.shape[1] - n_pos
        per_class.append(((ranks * positive).sum(1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
    return np.mean(per_class, axis=0)


def _probe_fold(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, k: int, Cs, seed: int):
    """Held-out probabilities of the project's probe: C chosen on a stratified inner split of the training fold
    (balanced accuracy, ties by class-balanced log loss), then refitted on the whole training fold. When a class
    has fewer than 2 training images there is no inner split and the middle ``C`` of the grid is used."""
    Cs = tuple(Cs)
    counts = np.bincount(y_train, minlength=k)
    C = Cs[len(Cs) // 2]  # no inner split possible: the middle of the grid (0.1 for the default grid)
    inner = None
    if len(Cs) > 1 and counts.min() >= 2:
        split = StratifiedShuffleSplit(n_splits=1, test_size=max(0.2, k / len(y_train)), random_state=seed)
        fit_idx, val_idx = next(split.split(x_train, y_train))
        if len(np.unique(y_train[fit_idx])) == k:
            inner = fit_idx, val_idx
    if inner is not None:
        fit_idx, val_idx = inner
        y_val = y_train[val_idx]
        val_weights = balanced_class_weights(y_val, "multiclass", k)[y_val]

        def scorer(probabilities: np.ndarray) -> tuple[float, float]:
            loss = -np.sum(val_weights * np.log(np.clip(probabilities[np.arange(len(y_val)), y_val], 1e-12, None)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # a class absent from the small validation split
                score = balanced_accuracy_score(y_val, probabilities.argmax(1))
            return float(score), float(loss / len(y_val))

        chosen = fit_linear_probe(x_train[fit_idx], y_train[fit_idx], x_train[val_idx], "multiclass", k, scorer,
                                  balanced_class_weights(y_train[fit_idx], "multiclass", k), Cs=Cs, seed=seed)
        C = chosen.C
    final = fit_linear_probe(x_train, y_train, x_train[:1], "multiclass", k, lambda p: (0.0, 0.0),
                             balanced_class_weights(y_train, "multiclass", k), Cs=(C,), seed=seed)
    return _softmax(x_test @ final.weight.T + final.bias), C, final.converged


def linear_probe_score(features: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0,
                       bootstrap: int = 1000, confidence: float = 0.95, Cs=DEFAULT_CS) -> dict:
    """Cross-validated linear-probe quality of frozen ``features`` for ``labels``: how much of the task the
    features already carry, as the project's own probe (``lp``, the first phase of ``lp_ft``) would fit it.

    Stratified k-fold (``folds``, lowered to the smallest class's size so that every test fold holds every
    class); in each fold :func:`~shiftkit.finetune.linear_probe.fit_linear_probe` (standardise, L2 logistic
    regression by L-BFGS, balanced class weights) with ``C`` from ``Cs`` chosen on a stratified inner split of
    the training fold, then refitted on the whole training fold. Every image is predicted once, out of fold;
    balanced accuracy and macro one-vs-rest AUROC are computed on those predictions, with a percentile bootstrap
    interval (``bootstrap`` resamples of the images, stratified by class; the fitted probes are held fixed, so
    the interval covers the evaluation's sampling error, not the refitting's) and the per-fold values. Checked on
    noise labels (60 simulated sets, 120 images, 3 classes): out-of-fold balanced accuracy 0.339 on average, sd
    0.042 (binomial: 0.043), AUROC 0.502, sd 0.041, so there is no below-chance CV bias to widen it for.

    A class with fewer than 2 images (or a single class) cannot be cross-validated: the result then says
    ``"testable": false`` with the reason, and no score, rather than raising.

    Returns ``{"testable", "reason", "n", "n_classes", "class_counts", "folds", "folds_requested", "seed",
    "balanced_accuracy": {"value", "ci_low", "ci_high", "per_fold"}, "auroc_macro": {...},
    "chance": {"balanced_accuracy", "auroc_macro"}, "above_chance": {"balanced_accuracy", "auroc_macro"},
    "C_per_fold", "converged", "interval"}``.
    """
    f, y_raw = _check_features_labels(features, labels)
    if folds < 2:
        raise ShiftInputError(f"folds must be at least 2, got {folds}")
    classes, y = np.unique(y_raw, return_inverse=True)
    counts = np.bincount(y, minlength=len(classes))
    k = len(classes)
    result: dict[str, Any] = {
        "testable": False, "reason": None, "n": int(len(y)), "n_classes": int(k),
        "class_counts": {str(c): int(m) for c, m in zip(classes, counts)}, "folds": None,
        "folds_requested": int(folds), "seed": int(seed), "balanced_accuracy": None, "auroc_macro": None,
        "chance": {"balanced_accuracy": 1.0 / k if k else None, "auroc_macro": 0.5},
    }
    if k < 2:
        result["reason"] = f"only one class ({classes[0]!s}): nothing to separate" if k else "no images"
        return result
    if counts.min() < 2:
        small = [str(c) for c, m in zip(classes, counts) if m < 2]
        result["reason"] = (f"class {', '.join(repr(s) for s in small)} has fewer than 2 images; cross-validation "
                            "needs at least 2 per class")
        return result
    n_folds = int(min(folds, counts.min()))
    probabilities = np.zeros((len(y), k))
    fold_of = np.zeros(len(y), dtype=np.int64)
    chosen_C, converged = [], True
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for index, (train_idx, test_idx) in enumerate(splitter.split(f, y)):
            probabilities[test_idx], C, ok = _probe_fold(f[train_idx], y[train_idx], f[test_idx], k, Cs, seed)
            fold_of[test_idx] = index
            chosen_C.append(float(C))
            converged &= ok
    predictions = probabilities.argmax(1)
    per_fold_bacc = [float(balanced_accuracy_score(y[fold_of == i], predictions[fold_of == i]))
                     for i in range(n_folds)]
    per_fold_auc = [_macro_auroc(y[fold_of == i], probabilities[fold_of == i]) for i in range(n_folds)]
    boot_bacc, boot_auc = _bootstrap(y, predictions, probabilities, bootstrap, seed)
    chance = result["chance"]
    for key, value, boot, per_fold in (
        ("balanced_accuracy", balanced_accuracy_score(y, predictions), boot_bacc, per_fold_bacc),
        ("auroc_macro", _macro_auroc(y, probabilities), boot_auc, per_fold_auc),
    ):
        low, high = _interval(boot, confidence)
        result[key] = {"value": float(value), "ci_low": low, "ci_high": high, "per_fold": per_fold}
    result.update(
        testable=True, folds=n_folds, C_per_fold=chosen_C, converged=bool(converged),
        above_chance={key: bool(result[key]["ci_low"] is not None and result[key]["ci_low"] > chance[key])
                      for key in ("balanced_accuracy", "auroc_macro")},
        interval=(f"{confidence:.0%} percentile bootstrap over out-of-fold predictions, {bootstrap} resamples "
                  "stratified by class" if bootstrap else "none (bootstrap=0)"),
    )
    return result


# -- relative gradient norm per block ------------------------------------------------------------------------------
def _norm_param_names(model: torch.nn.Module) -> set[str]:
    return {f"{module_name}.{param_name}" if module_name else param_name
            for module_name, module in model.named_modules() if isinstance(module, NORM_LAYERS)
            for param_name, _ in module.named_parameters(recurse=False)}


def gradient_signal(adapted: AdaptedModel, batches: Iterable, device: torch.device | str, *, max_batches: int = 5,
                    class_weights: np.ndarray | None = None, task: str = "multiclass") -> list[dict]:
    """Relative gradient norm ||g|| / ||w|| per block of ``adapted``'s partition (the gradual-unfreezing blocks,
    first to last), over at most ``max_batches`` labelled batches of ``(uint8 images, targets)``.

    The loss is the training loss of :class:`~shiftkit.finetune.trainer.Trainer` for one process: cross-entropy
    (``task="multiclass"``, targets are class indices) or per-label BCE (``task="multilabel"``, float 0/1
    targets), weighted by ``class_weights`` when given, summed and divided by the batch's images (x labels).
    The task is not inferred from the model: pass ``task`` when it is multi-label.

    Auto-RGN's per-tensor signal is not a separate function in ``strategies.py`` (it lives inside
    ``AutoRGN.begin_epoch`` and needs a ``Trainer.gradient_probe``, i.e. a training set and optimiser setup),
    so it is computed here the same way, per block: norm-layer parameters are skipped as Auto-RGN skips them,
    and for each batch

    - ``relative_gradient`` = sqrt(sum_t ||g_t||^2) / sqrt(sum_t ||w_t||^2) over the block's tensors t (the
      block's parameters seen as one vector);
    - ``mean_tensor_ratio`` = mean_t ||g_t|| / ||w_t|| (Auto-RGN's per-tensor ratio, 0 for an all-zero tensor,
      averaged within the block);

    each averaged over the batches; ``relative_to_max`` divides ``relative_gradient`` by the largest block's, as
    Auto-RGN normalises its ratios. The model runs in eval mode (BatchNorm uses its running statistics and
    updates none; dropout off); gradients come from ``torch.autograd.grad`` and never accumulate into any
    ``.grad``; training mode and ``requires_grad`` flags are restored; the weights are not changed. The model must
    already be on ``device``.

    Returns one JSON-able dict per block that has parameters: ``{"block", "index", "relative_gradient",
    "mean_tensor_ratio", "relative_to_max", "grad_norm", "weight_norm", "n_tensors", "n_norm_tensors",
    "batches"}`` (``grad_norm``: the block's mean gradient norm over batches; ratios are ``None`` for a block
    whose counted weights are all zero or that has only norm-layer parameters).
    """
    if task not in ("multiclass", "multilabel"):
        raise ShiftInputError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
    if max_batches < 1:
        raise ShiftInputError(f"max_batches must be at least 1, got {max_batches}")
    device = torch.device(device)
    model = adapted.model
    params = dict(model.named_parameters())
    norm_names = _norm_param_names(model)
    blocks = [(index, name, [p for p in names if p not in norm_names], sum(p in norm_names for p in names))
              for index, ((name, _), names) in enumerate(zip(adapted.blocks, adapted.block_param_names())) if names]
    counted = [p for _, _, names, _ in blocks for p in names]
    if not counted:
        raise ShiftInputError("gradient_signal: the model has no parameters outside norm layers")
    modes = {module: module.training for module in model.modules()}
    flags = {name: p.requires_grad for name, p in params.items()}
    loss_fn = WeightedLoss(task, class_weights, device)
    with torch.no_grad():
        weight_sq = {n: float(params[n].detach().double().pow(2).sum()) for n in counted}
    block_grad = {index: [] for index, *_ in blocks}
    block_ratio = {index: [] for index, *_ in blocks}
    block_tensor_mean = {index: [] for index, *_ in blocks}
    used = 0
    try:
        model.eval()
        for name in counted:
            params[name].requires_grad_(True)
        with torch.enable_grad():
            for images, targets in itertools.islice(batches, max_batches):  # never pulls a batch it will not use
                targets = targets.to(device)
                targets = targets.float() if task == "multilabel" else targets.long()
                logits = model(adapted.inputs(images, device)).float()
                per_sample = targets.shape[1] if task == "multilabel" else 1
                loss = loss_fn(logits, targets) / (len(targets) * per_sample)
                grads = torch.autograd.grad(loss, [params[n] for n in counted], allow_unused=True)
                grad_sq = {n: 0.0 if g is None else float(g.detach().double().pow(2).sum())
                           for n, g in zip(counted, grads)}
                del grads, loss, logits
                used += 1
                for index, _, names, _ in blocks:
                    g2, w2 = sum(grad_sq[n] for n in names), sum(weight_sq[n] for n in names)
                    block_grad[index].append(np.sqrt(g2))
                    block_ratio[index].append(np.sqrt(g2 / w2) if w2 > 0 else np.nan)
                    per_tensor = [np.sqrt(grad_sq[n] / weight_sq[n]) if weight_sq[n] > 0 else 0.0 for n in names]
                    block_tensor_mean[index].append(float(np.mean(per_tensor)) if per_tensor else np.nan)
    finally:
        for module, training in modes.items():
            module.train(training)
        for name, p in params.items():
            p.requires_grad_(flags[name])
    if used == 0:
        raise ShiftInputError("gradient_signal: no batches given")

    def finite(value: float) -> float | None:
        return float(value) if np.isfinite(value) else None

    entries = []
    for index, name, names, n_norm in blocks:
        entries.append({
            "block": name, "index": int(index),
            "relative_gradient": finite(np.mean(block_ratio[index])),
            "mean_tensor_ratio": finite(np.mean(block_tensor_mean[index])),
            "relative_to_max": None,
            "grad_norm": finite(np.mean(block_grad[index])),
            "weight_norm": float(np.sqrt(sum(weight_sq[n] for n in names))),
            "n_tensors": len(names), "n_norm_tensors": int(n_norm), "batches": used,
        })
    largest = max((e["relative_gradient"] for e in entries if e["relative_gradient"] is not None), default=None)
    for entry in entries:
        if largest and entry["relative_gradient"] is not None:
            entry["relative_to_max"] = entry["relative_gradient"] / largest
    return entries

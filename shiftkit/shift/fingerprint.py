"""Where the shift lands: a per-block shift profile, its peak, and each domain's distance from pre-training.

Inputs come from one forward pass (``shiftkit.features.extract(..., blocks=True)``): per-image block descriptors
(per-channel mean and std of each block's output) and the BatchNorm layers' input moments.

- :func:`block_shift` -- for each block, source vs target: a cross-validated domain-classifier AUC (with an
  interval) and an MMD² with a permutation p-value on a PCA of the descriptors; p-values corrected across blocks.
- :func:`shift_peak` -- the block where that profile peaks, and the profile scaled to 0..1 for a plot.
- :func:`pretraining_distance` -- per block, how far one domain's BN inputs are from the BN running statistics,
  i.e. from the pre-training data (ImageNet for ``weights="imagenet"``) at that depth, without its images.

Input-level shifts (contrast, blur, noise, scanner) are expected to peak in the first blocks, feature-level ones in
the middle, output-level ones at the end (Lee et al. 2023, surgical fine-tuning; Stacke et al. 2020).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from shiftkit.shift.corrections import adjust_p_values
from shiftkit.features import fit_pca
from shiftkit.models.registry import AdaptedModel
from shiftkit.shift.covariate import domain_classifier_test, mmd_test

__all__ = ["auc_interval", "block_shift", "pretraining_distance", "shift_peak"]

ALPHA = 0.05
AUC_TIE = 0.02  # blocks whose AUC is this close to the highest are tied on it: the MMD² ranks them


def auc_interval(auc: float, n_positive: int, n_negative: int, confidence: float = 0.95) -> tuple[float, float]:
    """Normal-approximation interval of an AUC from the Hanley & McNeil (1982) standard error, clipped to [0, 1].

    Written out here because neither scipy nor scikit-learn has an AUC interval, and the domain classifier
    returns its AUC, not its scores (which DeLong's method would need). The out-of-fold scores of cross-validation
    are not independent, so read it as approximate."""
    from scipy.stats import norm

    a = min(max(float(auc), 0.0), 1.0)
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    variance = (a * (1 - a) + (n_positive - 1) * (q1 - a * a) + (n_negative - 1) * (q2 - a * a)) / (
        n_positive * n_negative)
    half = norm.ppf(0.5 + confidence / 2) * math.sqrt(max(variance, 0.0))
    return (max(0.0, a - half), min(1.0, a + half))


def _standardised(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both domains scaled by the pooled per-column mean and std (no domain labels used, so the domains stay
    exchangeable under "no shift"); constant columns are left at 0."""
    from sklearn.preprocessing import StandardScaler

    pooled = np.vstack([x, y]).astype(np.float64)
    scaled = StandardScaler().fit_transform(pooled)
    return scaled[: len(x)], scaled[len(x):]


def block_shift(
    source_blocks: Mapping[str, np.ndarray],
    target_blocks: Mapping[str, np.ndarray],
    *,
    permutations: int = 200,
    pca: int = 16,
    seed: int = 0,
    correction: str = "bh",
    alpha: float = ALPHA,
    folds: int = 5,
    device: str | torch.device | None = None,
    classifier: bool = True,
) -> list[dict]:
    """Source-vs-target shift per block, in the blocks' order (``source_blocks``' keys; both must have the same).

    For each block the descriptors of both domains are standardised on the pooled sample; then
    :func:`~shiftkit.shift.covariate.domain_classifier_test` gives a cross-validated AUC (interval:
    :func:`auc_interval`) and :func:`~shiftkit.shift.covariate.mmd_test` an MMD² with a permutation p-value on a PCA
    of at most ``pca`` components fitted on both domains pooled (as ``diagnose`` does). The MMD p-values are
    adjusted across blocks with ``correction`` ("bh", "holm" or "bonferroni"). Returns one JSON-able dict per block:
    ``block``, ``index`` (0-based), ``channels``, ``auc``, ``auc_ci`` [lo, hi], ``pad``, ``pad_ci``,
    ``classifier_p_value``, ``mmd``, ``p_value``, ``p_adjusted``, ``shifted`` (p_adjusted < alpha), ``pca``,
    ``permutations``, ``correction``. ``classifier=False`` skips the domain classifier (its fields are then None),
    the costly part for wide blocks; the corrected MMD tests alone decide ``shifted`` either way."""
    names = list(source_blocks)
    if names != list(target_blocks):
        raise ValueError(f"source and target have different blocks: {names} vs {list(target_blocks)}")
    profile = []
    for index, name in enumerate(names):
        x, y = _standardised(np.asarray(source_blocks[name]), np.asarray(target_blocks[name]))
        model = fit_pca(np.vstack([x, y]), pca, seed) if pca else None
        low_x, low_y = (model.transform(x), model.transform(y)) if model is not None else (x, y)
        mmd = mmd_test(low_x, low_y, permutations=permutations, seed=seed, device=device)
        row = {"block": name, "index": index, "channels": int(x.shape[1] // 2), "auc": None, "auc_ci": None,
               "pad": None, "pad_ci": None, "classifier_p_value": None}
        if classifier:
            result = domain_classifier_test(x, y, folds=folds, seed=seed)
            per_class = result.details["n_used"] // 2
            row.update(auc=result.statistic, auc_ci=list(auc_interval(result.statistic, per_class, per_class)),
                       pad=result.details["pad"], pad_ci=result.details["pad_ci"], classifier_p_value=result.p_value)
        profile.append({
            **row,
            "mmd": mmd.statistic,
            "p_value": mmd.p_value,
            "pca": int(low_x.shape[1]),
            "permutations": int(mmd.permutations),
        })
    adjusted = adjust_p_values([row["p_value"] for row in profile], correction)
    for row, p in zip(profile, adjusted):
        row["p_adjusted"] = float(p)
        row["shifted"] = bool(p < alpha)
        row["correction"] = correction
    return profile


def shift_peak(profile: list[dict], decimals: int = 3) -> dict:
    """The block where the shift peaks, and the profile scaled to 0..1 for a "shift by depth" plot.

    Ranked by the domain-classifier AUC above chance (max(AUC - 0.5, 0), rounded to ``decimals``); blocks tied on
    it (within :data:`AUC_TIE` of the highest: typically several at AUC 0.99-1.0 under a strong shift, where the
    classifier saturates) are ranked by MMD², and when no block's AUC is above
    0.5 (or the classifier was skipped) the MMD² alone decides. ``by`` says which ("auc" or "mmd"). Returns ``block``, ``index``, ``of`` (number of
    blocks), ``by``, ``shifted`` (whether any block's corrected test rejects), and ``profile``: per block
    ``block``, ``auc_excess``, ``mmd``, ``auc_scaled`` and ``mmd_scaled`` (each divided by its maximum over the
    blocks, 0 when that is 0) and ``scaled`` (the one named by ``by``)."""
    if not profile:
        raise ValueError("an empty profile has no peak")
    excess = np.array([round(max(row["auc"] - 0.5, 0.0), decimals) if row.get("auc") is not None else 0.0
                       for row in profile])
    mmd = np.array([max(row["mmd"], 0.0) for row in profile])
    top = np.flatnonzero(excess >= excess.max() - AUC_TIE)  # saturated AUCs (0.99 against 1.0) do not decide
    by = "auc" if excess.max() > 0 and len(top) == 1 else "mmd"
    peak = int(top[np.argmax(mmd[top])]) if excess.max() > 0 else int(np.argmax(mmd))

    def scaled(values: np.ndarray) -> np.ndarray:
        return values / values.max() if values.max() > 0 else np.zeros_like(values)

    auc_scaled, mmd_scaled = scaled(excess), scaled(mmd)
    chosen = auc_scaled if by == "auc" else mmd_scaled
    return {
        "block": profile[peak]["block"],
        "index": int(profile[peak]["index"]),
        "of": len(profile),
        "by": by,
        "shifted": any(row.get("shifted", False) for row in profile),
        "profile": [{"block": row["block"], "auc_excess": float(e), "mmd": float(m), "auc_scaled": float(a),
                     "mmd_scaled": float(s), "scaled": float(c)}
                    for row, e, m, a, s, c in zip(profile, excess, mmd, auc_scaled, mmd_scaled, chosen)],
    }


def pretraining_distance(adapted_model: AdaptedModel, bn_moments: Mapping[str, Mapping]) -> list[dict]:
    """How ImageNet-like (pre-training-like) one domain's data is at each depth, from BatchNorm statistics.

    A BN layer's ``running_mean``/``running_var`` are the per-channel moments of its input over the pre-training
    data; ``bn_moments`` (``Representation.bn_moments`` of one domain) are the same moments over this domain. Per
    block, over all channels of its BN layers: ``kl`` is the mean of KL(N(domain mean, domain var) ||
    N(running_mean, running_var)) per channel (closed form, ``torch.distributions.kl_divergence``; both variances
    get the layer's ``eps``), and ``mean_shift`` the mean of |domain mean - running_mean| / sqrt(running_var + eps).
    Both are 0 when the domain's activations have the pre-training statistics and grow as they move away. Call it
    once per domain. Meaningful for pre-trained weights only (random weights have running stats 0 and 1); blocks
    without BN layers (VGG) are left out. Returns per block ``block``, ``index``, ``layers``, ``channels``,
    ``kl``, ``kl_max`` (the largest layer mean), ``mean_shift``."""
    from torch.distributions import Normal, kl_divergence

    per_block: dict[str, dict[str, list]] = {}
    for path, moments in bn_moments.items():
        layer = adapted_model.model.get_submodule(path)
        eps = float(layer.eps)
        mean = torch.as_tensor(np.asarray(moments["mean"]), dtype=torch.float64)
        var = torch.as_tensor(np.asarray(moments["var"]), dtype=torch.float64)
        running_mean = layer.running_mean.detach().to("cpu", torch.float64)
        running_var = layer.running_var.detach().to("cpu", torch.float64)
        kl = kl_divergence(Normal(mean, (var + eps).sqrt()), Normal(running_mean, (running_var + eps).sqrt()))
        shift = (mean - running_mean).abs() / (running_var + eps).sqrt()
        entry = per_block.setdefault(moments["block"], {"kl": [], "shift": [], "layer_kl": []})
        entry["kl"].append(kl.numpy())
        entry["shift"].append(shift.numpy())
        entry["layer_kl"].append(float(kl.mean()))
    order = [name for name, _ in adapted_model.blocks]
    result = []
    for name in sorted(per_block, key=order.index):
        entry = per_block[name]
        kl, shift = np.concatenate(entry["kl"]), np.concatenate(entry["shift"])
        result.append({"block": name, "index": order.index(name), "layers": len(entry["kl"]),
                       "channels": int(len(kl)), "kl": float(kl.mean()), "kl_max": float(max(entry["layer_kl"])),
                       "mean_shift": float(shift.mean())})
    return result


# ---------------------------------------------------------------------------------------- the whole fingerprint

THUMBNAILS = 4  # per end: the images the domain classifier finds most and least typical of their domain
PROBE_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # the fingerprint's linear probe: a short C grid (cost)


def measure_fingerprint(data, *, seed: int = 0, permutations: int = 200, alpha: float = ALPHA,
                        thumbnails: bool = True) -> dict | None:
    """Where the shift lands and what changed, for the diagnose report's ``fingerprint`` key.

    ``data`` is :class:`shiftkit.shift.diagnose.Embedded` extracted with the fingerprint (blocks, properties and
    ``model_facts``). Returns None when it was extracted without it. Keys: ``blocks`` (:func:`block_shift`),
    ``peak`` (:func:`shift_peak`), ``pretraining`` (per domain, :func:`pretraining_distance`), ``gradient_signal``
    (per block, source labelled only), ``source_features`` (LogME and a cross-validated linear probe of the source
    embeddings, labelled source only), ``image_properties`` (:func:`~shiftkit.shift.image_properties.
    compare_properties`), ``thumbnails`` (row indices of the images the domain classifier scores as most and least
    typical of their own domain) and ``summary`` (one line)."""
    from shiftkit.shift.image_properties import compare_properties, summary_line
    from shiftkit.shift.transferability import linear_probe_score, logme

    src, tgt = data.source, data.target
    if not src.blocks or not tgt.blocks:
        return None
    blocks = block_shift(src.blocks, tgt.blocks, permutations=min(permutations, 200), seed=seed, alpha=alpha)
    peak = shift_peak(blocks)
    properties = compare_properties(src.properties or [], tgt.properties or [], alpha=alpha)
    result = {"blocks": blocks, "peak": peak, **data.model_facts, "image_properties": properties,
              "source_features": None, "thumbnails": None}
    labels = data.source_table.targets() if data.source_table.labeled and not data.source_table.multilabel else None
    if labels is not None and len(np.unique(labels)) >= 2:
        result["source_features"] = {
            "logme": logme(src.embeddings, labels),
            "linear_probe": linear_probe_score(src.embeddings, labels, seed=seed, bootstrap=200, Cs=PROBE_CS)}
    if thumbnails:
        result["thumbnails"] = typical_images(src.embeddings, tgt.embeddings, seed=seed)
    where = (f"shift peaks at block {peak['index'] + 1} of {peak['of']} ({peak['block']})" if peak["shifted"]
             else "no block's shift is significant")
    changed = summary_line(properties)
    result["summary"] = f"{where}; {changed}" if changed else where
    return result


def typical_images(source: np.ndarray, target: np.ndarray, seed: int = 0, k: int = THUMBNAILS) -> dict:
    """Out-of-fold domain-classifier scores (the same balanced logistic regression as the domain-classifier test,
    on every image): per domain, the ``k`` rows it finds most typical of their own domain and the ``k`` it
    finds most like the other domain (what a reader should look at first)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.vstack([source, target]).astype(np.float64)
    y = np.r_[np.zeros(len(source), int), np.ones(len(target), int)]
    folds = min(5, len(source), len(target))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    score = cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                              method="predict_proba")[:, 1]  # P(target)
    own = np.where(y == 1, score, 1 - score)
    out = {}
    for name, label in (("source", 0), ("target", 1)):
        rows = np.flatnonzero(y == label)
        order = rows[np.argsort(-own[rows], kind="stable")]
        offset = 0 if label == 0 else len(source)
        out[name] = {"most_typical": [int(i - offset) for i in order[:k]],
                     "most_like_other": [int(i - offset) for i in order[::-1][:k]],
                     "score": {int(i - offset): float(own[i]) for i in np.r_[order[:k], order[::-1][:k]]}}
    return out

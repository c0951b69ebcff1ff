"""The estimators of target performance, each a function of a batch of bootstrap replicates.

A :class:`Batch` holds, for B replicates, the source and target row weights (bootstrap counts; all ones for the
point estimate) and what the replicates refit (BCTS calibration, the target prior). Each estimator returns its
target accuracy per replicate and, where it estimates one, the joint confusion matrix (B x K x K, rows true class)
and the AUROC; :func:`metrics_of` turns those into named metrics. ``METHODS`` says what each assumes, when it
fails and which metrics it supports.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from shiftkit.estimate.calibration import BCTS, calibrated_posteriors
from shiftkit.estimate.distance import DistanceCheck
from shiftkit.estimate.inputs import EstimationData
from shiftkit.estimate.metrics import confusion_rates, joint_confusion, predictive_values, weighted_auroc
from shiftkit.estimate.priors import replicate_priors_bbse, replicate_priors_em
from shiftkit.estimate.thresholds import confidence_scores, fraction_above, weighted_thresholds
from shiftkit.estimate.weights import DensityRatio

__all__ = ["METHODS", "Batch", "Context", "MethodInfo", "metrics_of"]

KNOWN = "known"
"""The prior mode of a target prevalence the user states (an array or dict; the CLI's ``--prior CLASS=P,...``)."""
CONFUSION_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv")
NO_CONCEPT_SHIFT = "no concept shift (P(y|x) is the same at the source and the target)"


@dataclass(frozen=True)
class MethodInfo:
    name: str
    title: str
    assumes: str
    fails_when: str
    metrics: tuple[str, ...]
    binary_metrics: tuple[str, ...] = ()
    target_prior: str = "none"  # "none", "confusion" (the whole matrix is corrected to it) or "known" (see below)

    def corrects_to(self, prior_mode: str | None) -> bool:
        """Whether this method's estimates are computed at the target prior of ``prior_mode``: a "confusion" method
        at any target prior, a "known" one (ac, ac_dc) only at a prevalence the user states (``prior_mode ==
        "known"``), since an estimated one is biased under covariate shift (:func:`estimate_ac`)."""
        if prior_mode is None or self.target_prior == "none":
            return False
        return self.target_prior == "confusion" or prior_mode == KNOWN

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "assumes": self.assumes, "fails_when": self.fails_when,
                "metrics": list(self.metrics), "binary_only": list(self.binary_metrics),
                "target_prior": self.target_prior}


@dataclass
class Context:
    """Everything computed once per source/target pair."""

    data: EstimationData
    score: str
    positive: int
    bcts: BCTS
    prior_mode: str | None  # "em_bcts", "bbse", "fixed" (an estimated result), "known" (stated) or None
    prior: np.ndarray | None  # the point estimate (or the given prior)
    density: DensityRatio | None
    distance: DistanceCheck | None = None
    confident_shift: bool = False  # the confident_shift flag (run.py sets it): ac_dc's accuracy is then capped

    def __post_init__(self) -> None:
        d = self.data
        self.source_prior = d.source_prior
        self.labels, self.src_pred, self.tgt_pred = d.source_labels, d.source_pred, d.target_pred
        self.correct = d.source_correct
        self.src_conf = np.exp(d.source_log_probs.max(axis=1))
        self.tgt_conf = np.exp(d.target_log_probs.max(axis=1))
        src_score = confidence_scores(d.source_log_probs, self.score)
        tgt_score = confidence_scores(d.target_log_probs, self.score)
        self.src_order = np.argsort(src_score, kind="stable")
        self.src_sorted = src_score[self.src_order]
        self.tgt_order = np.argsort(tgt_score, kind="stable")
        self.tgt_sorted = tgt_score[self.tgt_order]
        k = d.n_classes
        # per predicted class, the rows (in score order) for CM-ATC
        self.src_by_pred = [self.src_order[self.src_pred[self.src_order] == c] for c in range(k)]
        self.tgt_by_pred = [self.tgt_order[self.tgt_pred[self.tgt_order] == c] for c in range(k)]
        self.src_sorted_by_pred = [src_score[rows] for rows in self.src_by_pred]
        self.tgt_sorted_by_pred = [tgt_score[rows] for rows in self.tgt_by_pred]
        self.tgt_pred_onehot = np.eye(k)[self.tgt_pred]
        if k == 2:
            other = 1 - self.positive
            self.src_rank = d.source_log_probs[:, self.positive] - d.source_log_probs[:, other]
            self.tgt_rank = d.target_log_probs[:, self.positive] - d.target_log_probs[:, other]

    @property
    def binary(self) -> bool:
        return self.data.n_classes == 2

    @property
    def known_prior(self) -> np.ndarray | None:
        """The target prevalence the user stated, or None."""
        return self.prior if self.prior_mode == KNOWN else None

    @property
    def chance_shares(self) -> np.ndarray:
        """The class shares a prediction unrelated to the image is right at: the known target prevalence, else the
        source's (no label shift assumed)."""
        return self.source_prior if self.known_prior is None else self.known_prior


class Batch:
    """B replicates: source and target row weights, and (lazily) their refitted calibration and target prior."""

    def __init__(self, ctx: Context, source_weights: np.ndarray, target_weights: np.ndarray,
                 thetas: np.ndarray | None = None, priors: np.ndarray | None = None):
        self.ctx = ctx
        self.ws = np.atleast_2d(source_weights)
        self.wt = np.atleast_2d(target_weights)
        self._thetas = thetas
        self._priors = priors
        self._posteriors: np.ndarray | None = None
        self._target_posteriors: np.ndarray | None = None

    @classmethod
    def point(cls, ctx: Context) -> "Batch":
        """The full samples with the full-sample fits: the point estimate."""
        prior = None if ctx.prior is None else ctx.prior[None]
        return cls(ctx, np.ones((1, ctx.data.n_source)), np.ones((1, ctx.data.n_target)), ctx.bcts.theta[None], prior)

    @property
    def size(self) -> int:
        return len(self.ws)

    @property
    def thetas(self) -> np.ndarray:
        if self._thetas is None:
            self._thetas = self.ctx.bcts.replicate_thetas(self.ws)
        return self._thetas

    @property
    def posteriors(self) -> np.ndarray:
        """BCTS-calibrated target posteriors (B x n_t x K) under each replicate's refitted calibration."""
        if self._posteriors is None:
            self._posteriors = calibrated_posteriors(self.ctx.data.target_log_probs, self.thetas)
        return self._posteriors

    @property
    def target_posteriors(self) -> np.ndarray:
        """The posteriors at the target: BCTS-calibrated, moved by Bayes' rule to a known target prevalence ``q``
        (``p_T(y|x) ∝ q_y / p_y · p_S(y|x)``, Saerens et al. 2002: exact under label shift); without one, the
        calibrated posteriors."""
        q = self.ctx.known_prior
        if q is None:
            return self.posteriors
        if self._target_posteriors is None:
            moved = self.posteriors * (q / self.ctx.source_prior)[None, None, :]
            self._target_posteriors = moved / moved.sum(axis=2, keepdims=True)
        return self._target_posteriors

    def chance_prior(self) -> np.ndarray:
        """:attr:`Context.chance_shares` per replicate (B x K): the source's are the replicate's own."""
        ctx = self.ctx
        if ctx.known_prior is not None:
            return np.tile(ctx.chance_shares, (self.size, 1))
        return self.ws @ np.eye(ctx.data.n_classes)[ctx.labels] / self.ws.sum(axis=1, keepdims=True)

    @property
    def priors(self) -> np.ndarray | None:
        """Target priors (B x K) refitted on the replicate, or the fixed prior, or None."""
        ctx = self.ctx
        if self._priors is None and ctx.prior is not None:
            if ctx.prior_mode == "em_bcts":
                self._priors = replicate_priors_em(self.posteriors, self.wt, ctx.source_prior, ctx.prior)
            elif ctx.prior_mode == "bbse":
                self._priors = replicate_priors_bbse(ctx.labels, ctx.src_pred, ctx.tgt_pred, ctx.data.n_classes,
                                                     self.ws, self.wt, ctx.source_prior)
            else:
                self._priors = np.tile(ctx.prior, (self.size, 1))
        return self._priors


# ------------------------------------------------------------------------------------------------------ estimators


def _labelled_auroc(ctx: Context, weights: np.ndarray) -> np.ndarray:
    pos = (ctx.labels == ctx.positive).astype(np.float64)
    return weighted_auroc(ctx.src_rank, weights * pos, weights * (1.0 - pos))


def estimate_source(batch: Batch) -> dict[str, np.ndarray]:
    """The naive baseline: the source validation metrics, as if nothing changed."""
    ctx = batch.ctx
    out = {"confusion": joint_confusion(ctx.labels, ctx.src_pred, ctx.data.n_classes, batch.ws)}
    if ctx.binary:
        out["auroc"] = _labelled_auroc(ctx, batch.ws)
    return out


def estimate_iw(batch: Batch) -> dict[str, np.ndarray]:
    """Importance-weighted source metrics: source rows weighted by the density ratio p_T(x)/p_S(x)."""
    ctx = batch.ctx
    w = batch.ws * ctx.density.weights[None]
    out = {"confusion": joint_confusion(ctx.labels, ctx.src_pred, ctx.data.n_classes, w)}
    if ctx.binary:
        out["auroc"] = _labelled_auroc(ctx, w)
    return out


def _expected_confusion(batch: Batch, post: np.ndarray) -> dict[str, np.ndarray]:
    """The expected confusion matrix (and, binary, the expected AUROC) of target posteriors ``post`` (B x n_t x K):
    each target image counts P(y = i | x) in the cell (i, prediction)."""
    ctx = batch.ctx
    weighted = post * batch.wt[:, :, None]
    conf = np.matmul(np.swapaxes(weighted, 1, 2), ctx.tgt_pred_onehot)
    out = {"confusion": conf / batch.wt.sum(axis=1)[:, None, None]}
    if ctx.binary:
        p_pos = post[:, :, ctx.positive]
        out["auroc"] = weighted_auroc(ctx.tgt_rank, batch.wt * p_pos, batch.wt * (1.0 - p_pos))
    return out


def estimate_ac(batch: Batch) -> dict[str, np.ndarray]:
    """Average calibrated confidence, as an expected confusion matrix (NannyML's CBPE): each target image counts
    its calibrated posterior P(y = i | x) in the cell (i, prediction). The posteriors are not moved to a target
    prior: under covariate shift they are already right, and a label-shift (EM) prior is then biased; Bayes' rule
    with the sensitivity/specificity of unadjusted posteriors at an EM prior was off by +0.13 in PPV under a pure
    prior shift (0.5 -> 0.15) in our synthetic checks, where cm_atc was within 0.03. The label-shift-corrected
    estimate is cm_atc's. A prevalence the user knows is different: the posteriors are moved to it
    (:attr:`Batch.target_posteriors`)."""
    return _expected_confusion(batch, batch.target_posteriors)


def estimate_ac_dc(batch: Batch) -> dict[str, np.ndarray]:
    """``ac`` with the distance check (Roschewitz & Glocker 2023): a target image farther from the source
    validation images than 99 % of them (:mod:`shiftkit.estimate.distance`) keeps its prediction but not its
    confidence; its posterior becomes the source prevalence, so it counts as correct with the probability that a
    prediction unrelated to the image is (the chance level of the class it predicts). The paper counts such images
    as wrong (ATC-DC); chance level is what a model that has stopped reading the image still scores, and on
    BreastMNIST with strong noise, where 96 % of the images fall outside while the model still gets 69 % right, the
    published rule said 0.03 (README's real-data table: its worst error, 0.66).

    With a known target prevalence the posteriors are moved to it, the chance level is its, and the prediction-rate
    cap applies always: it is then a bound, not a stand-in (:func:`prediction_rate_bound`)."""
    ctx = batch.ctx
    prior = batch.chance_prior()
    inside = ctx.distance.target_inside[None, :, None]
    out = _expected_confusion(batch, np.where(inside, batch.target_posteriors, prior[:, None, :]))
    if ctx.confident_shift or ctx.known_prior is not None:
        out["accuracy_cap"] = prediction_rate_bound(batch, prior)
    return out


def prediction_rate_bound(batch: Batch, prior: np.ndarray) -> np.ndarray:
    """``1 - TV(P_T(prediction), P(y))`` per replicate: no classifier is right more often than that, since
    ``acc = sum_c P(pred = c, y = c) <= sum_c min(P(pred = c), P(y = c))``. With the target's prevalence unknown, the
    source's stands in (``prior``, B x K): a bound under "no label shift"; with the target's prevalence known, a
    bound without assumptions (ac_dc then applies it whatever the flags say).

    Why ac_dc uses it under the confident_shift flag: there a model can map shifted images confidently into one
    class, inside its own embedding's clusters where the distance check cannot see them (PneumoniaMNIST blurred or
    contrast-reduced: 96-100 % called pneumonia where the source has 74 %, ac_dc 0.95-0.97 at a true 0.63-0.72);
    the predictions' own distribution still shows it."""
    ctx = batch.ctx
    rates = batch.wt @ ctx.tgt_pred_onehot / batch.wt.sum(axis=1, keepdims=True)
    return 1.0 - 0.5 * np.abs(rates - prior).sum(axis=1)


def estimate_atc(batch: Batch) -> dict[str, np.ndarray]:
    """ATC: the share of target images whose score is above the source-fitted threshold."""
    ctx = batch.ctx
    t, share = weighted_thresholds(ctx.src_sorted, ctx.correct[ctx.src_order], batch.ws[:, ctx.src_order])
    return {"accuracy": fraction_above(ctx.tgt_sorted, batch.wt[:, ctx.tgt_order], t, share)}


def estimate_doc(batch: Batch) -> dict[str, np.ndarray]:
    """DoC (Guillory et al. 2021): source accuracy minus the drop in mean (uncalibrated) max confidence from source
    to target, ``acc_S - (conf_S - conf_T)``, clipped to [0, 1] (a target more confident than the source would
    otherwise give an accuracy above 1)."""
    ctx = batch.ctx
    ws_total, wt_total = batch.ws.sum(axis=1), batch.wt.sum(axis=1)
    acc = batch.ws @ ctx.correct / ws_total
    drop = batch.ws @ ctx.src_conf / ws_total - batch.wt @ ctx.tgt_conf / wt_total
    return {"accuracy": np.clip(acc - drop, 0.0, 1.0)}


def estimate_cm_atc(batch: Batch) -> dict[str, np.ndarray]:
    """CM-ATC: one ATC threshold per predicted class estimates the target precision of that class; with the known
    target prediction rates and the source's split of each class's errors over the true classes this gives the
    target confusion matrix. With a target prior the source rows are first weighted by q(y)/p(y), so the thresholds
    are fitted on a source re-balanced to the target's prevalence (exact under pure label shift)."""
    ctx = batch.ctx
    k = ctx.data.n_classes
    sw = batch.ws
    if batch.priors is not None:
        sw = sw * (batch.priors / ctx.source_prior[None])[:, ctx.labels]
    rates = (batch.wt @ ctx.tgt_pred_onehot) / batch.wt.sum(axis=1, keepdims=True)
    global_t = weighted_thresholds(ctx.src_sorted, ctx.correct[ctx.src_order], sw[:, ctx.src_order])  # (t, share)
    conf = np.zeros((batch.size, k, k))
    for c in range(k):
        src_rows, tgt_rows = ctx.src_by_pred[c], ctx.tgt_by_pred[c]
        if len(tgt_rows) == 0:
            continue
        t, share = (weighted_thresholds(ctx.src_sorted_by_pred[c], ctx.correct[src_rows], sw[:, src_rows])
                    if len(src_rows) else global_t)
        precision = np.nan_to_num(fraction_above(ctx.tgt_sorted_by_pred[c], batch.wt[:, tgt_rows], t, share),
                                  nan=0.0)
        conf[:, c, c] = rates[:, c] * precision
        others = [j for j in range(k) if j != c]
        if len(src_rows):
            wrong = np.stack([sw[:, src_rows] @ (ctx.labels[src_rows] == j) for j in others], axis=1)
        else:
            wrong = np.zeros((batch.size, len(others)))
        total = wrong.sum(axis=1, keepdims=True)
        share = np.where(total > 0, wrong / np.where(total > 0, total, 1.0), 1.0 / len(others))
        conf[:, others, c] = (rates[:, c] * (1.0 - precision))[:, None] * share
    return {"confusion": conf}


# ----------------------------------------------------------------------------------------------- registry, metrics

_ALL_BINARY = ("ppv", "npv", "auroc")

METHODS: dict[str, MethodInfo] = {
    "source": MethodInfo(
        "source", "source accuracy (naive baseline)",
        f"no shift of any kind: no covariate or label shift and {NO_CONCEPT_SHIFT}; the target is distributed like "
        f"the source validation set",
        "any shift that changes performance; it is the baseline every other method must beat",
        CONFUSION_METRICS + ("auroc",), _ALL_BINARY),
    "ac": MethodInfo(
        "ac", "average calibrated confidence (expected confusion matrix, as NannyML CBPE)",
        f"{NO_CONCEPT_SHIFT}; the posteriors calibrated by BCTS on the source validation set stay calibrated on the "
        f"target (covariate shift with P(y|x) unchanged and a well-specified model); PPV/NPV by Bayes at the "
        f"prevalence the calibrated posteriors imply (at the target prevalence, when it is known and given)",
        "the target moves into regions where the model is over-confident (artefacts, new scanners, corruptions): it "
        "then overestimates; label shift leaves the posteriors miscalibrated, biasing every metric (PPV/NPV are "
        "then withheld; with a known target prevalence (--prior CLASS=P,...) the posteriors are moved to it)",
        CONFUSION_METRICS + ("auroc",), _ALL_BINARY, target_prior=KNOWN),
    "ac_dc": MethodInfo(
        "ac_dc", "average calibrated confidence with a distance check (ac; Roschewitz & Glocker 2023)",
        f"{NO_CONCEPT_SHIFT}; as ac for the target images within the source's reach (their kNN distance in the "
        f"model's embedding below the 99th percentile of the source's); beyond it, a prediction is right at the "
        f"chance level of its class (the source prevalence: no label shift there); under the confident_shift "
        f"flag, accuracy at most 1 - TV(target prediction rates, source prevalence) (no label shift)",
        "a model that fails on images that still lie near the source in its own embedding (it overestimates, as "
        "ac; a collapsed model maps corrupted images into one class's cluster); a model that still works far from "
        "the source (it underestimates); label shift (as ac; with a known target prevalence the posteriors, the "
        "chance level and the cap use it)",
        CONFUSION_METRICS + ("auroc",), _ALL_BINARY, target_prior=KNOWN),
    "atc": MethodInfo(
        "atc", "average thresholded confidence (Garg et al. 2022)",
        f"{NO_CONCEPT_SHIFT}; the share of target images above the source-fitted confidence threshold equals the "
        f"target accuracy (the shift moves confidence and correctness together; not guaranteed even under pure "
        f"covariate shift)",
        "label shift (not corrected); strong shifts where the model stays confident but is wrong (overestimates)",
        ("accuracy",)),
    "doc": MethodInfo(
        "doc", "difference of confidences (Guillory et al. 2021)",
        f"{NO_CONCEPT_SHIFT}; the drop in accuracy equals the drop in mean (uncalibrated) confidence, i.e. the "
        f"model is as over- or under-confident on the target as on the source",
        "shifts that change the model's calibration; label shift",
        ("accuracy",)),
    "iw": MethodInfo(
        "iw", "importance-weighted source metrics",
        f"{NO_CONCEPT_SHIFT}; covariate shift with the target's support inside the source's, and density ratios "
        f"p_T(x)/p_S(x) estimated well (their estimation error is not part of the interval)",
        "strong covariate shift (domain AUC near 1): few source images carry all the weight; a density ratio "
        "fitted on features that miss the shift",
        CONFUSION_METRICS + ("auroc",), _ALL_BINARY),
    "cm_atc": MethodInfo(
        "cm_atc", "confusion-matrix ATC, prevalence-corrected (Flühmann et al. 2025)",
        f"{NO_CONCEPT_SHIFT}; ATC's assumption within each predicted class; with a target prior, P(x|y) unchanged "
        f"for the prevalence correction; PPV/NPV from the estimated sensitivity/specificity at the target "
        f"prevalence (Bayes)",
        "as ATC under strong covariate shift; a wrong target prior biases PPV/NPV",
        CONFUSION_METRICS, ("ppv", "npv"), target_prior="confusion"),
}

ESTIMATORS: dict[str, Callable[[Batch], dict[str, np.ndarray]]] = {
    "source": estimate_source, "ac": estimate_ac, "ac_dc": estimate_ac_dc, "atc": estimate_atc, "doc": estimate_doc,
    "iw": estimate_iw, "cm_atc": estimate_cm_atc,
}


def metrics_of(method: str, out: dict[str, np.ndarray], batch: Batch) -> dict[tuple[str, int | None], np.ndarray]:
    """Named metrics (B each) of one estimator's output: ``(metric, class index or None)`` -> values.

    Sensitivity and specificity are per class (binary: the positive class only). PPV and NPV (binary) follow from
    them by Bayes' rule at a prevalence: the target prior where the method uses one, else the prevalence the
    method's own confusion matrix implies (ac and ac_dc use a target prior only when it is known). For a method
    whose whole confusion matrix is prior-corrected (cm_atc), accuracy is ``sum_k q_k sens_k`` (the same Bayes
    step).
    """
    ctx = batch.ctx
    info = METHODS[method]
    if "confusion" not in out:
        return {("accuracy", None): out["accuracy"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN replicate (a class never predicted) stays NaN
        rates = confusion_rates(out["confusion"])
    prior = batch.priors if info.corrects_to(ctx.prior_mode) else None
    prevalence = rates["prevalence"] if prior is None else prior
    result: dict[tuple[str, int | None], np.ndarray] = {}
    if prior is not None and info.target_prior == "confusion":
        accuracy = np.nansum(prior * rates["sensitivity"], axis=1)
    else:
        accuracy = rates["accuracy"]
    if "accuracy_cap" in out:
        accuracy = np.minimum(accuracy, out["accuracy_cap"])
    result[("accuracy", None)] = accuracy
    result[("balanced_accuracy", None)] = rates["balanced_accuracy"]
    classes = [ctx.positive] if ctx.binary else range(ctx.data.n_classes)
    for c in classes:
        result[("sensitivity", c)] = rates["sensitivity"][:, c]
        result[("specificity", c)] = rates["specificity"][:, c]
    if ctx.binary:
        p = ctx.positive
        ppv, npv = predictive_values(rates["sensitivity"][:, p], rates["specificity"][:, p], prevalence[:, p])
        result[("ppv", p)] = ppv
        result[("npv", p)] = npv
        result[("prevalence", p)] = prevalence[:, p]
        if "auroc" in out:
            result[("auroc", p)] = out["auroc"]
    return result

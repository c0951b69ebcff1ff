"""``estimate_performance``: every requested estimator on one source/target pair, with bootstrap intervals, flags and
the withholding rule for PPV/NPV under label shift."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from shiftkit.errors import ConfigError
from shiftkit.estimate import flags as flagging
from shiftkit.estimate.bootstrap import batch_size, percentile_interval, replicate_batches
from shiftkit.estimate.calibration import BCTS
from shiftkit.estimate.distance import DistanceCheck
from shiftkit.estimate.estimators import (ESTIMATORS, KNOWN, METHODS, Batch, Context, metrics_of,
                                          prediction_rate_bound)
from shiftkit.estimate.inputs import prepare
from shiftkit.estimate.priors import PRIOR_METHODS, fixed_prior, point_prior
from shiftkit.estimate.result import EstimateResult, PerformanceEstimate
from shiftkit.estimate.thresholds import SCORES
from shiftkit.estimate.weights import DensityRatio, density_ratio_from_weights

__all__ = ["DEFAULT_METHODS", "embedding_inputs", "estimate_performance", "total_variation_from_auc"]

DEFAULT_METHODS = ("source", "ac", "ac_dc", "atc", "doc", "cm_atc", "iw")
NEEDS = {"iw": "density_ratio", "ac_dc": "distance"}
"""Methods that run only when their input is given (a default set leaves them out without it)."""
CONSENSUS = ("ac", "ac_dc", "atc", "doc")
"""Estimators from different assumptions (calibrated confidence, a source-fitted threshold, the confidence change)
whose intervals are pooled: each one's reported interval is the hull of their bootstrap intervals for the metric."""
LABEL_SHIFT_READING = "cm_atc"
"""The prevalence-corrected estimator, pooled too when the label-shift flag is raised: label-free data cannot tell a
prevalence change from a covariate shift that moves the predictions (README), so both readings stay admissible."""


def _consensus_intervals(results: list[EstimateResult], label_shift: bool = False) -> list[EstimateResult]:
    """Widen the :data:`CONSENSUS` methods' intervals to the hull of theirs for the same metric and class, with
    :data:`LABEL_SHIFT_READING`'s when ``label_shift`` (the flag raised and that method prevalence-corrected).

    A bootstrap interval holds only sampling error; under shift the larger error is the estimator's own bias, which
    resampling cannot see. Where estimators built on different assumptions disagree, the truth is uncertain by at
    least that much: on the first 23 real validation cases (README) the bootstrap interval of ``ac`` covered the true
    accuracy 12 times, the hull of ac, atc and doc 22 times. Only finite intervals of estimates that are not
    withheld are pooled; the bootstrap interval stays in ``details["sampling_interval"]``."""
    members_of = CONSENSUS + ((LABEL_SHIFT_READING,) if label_shift else ())

    def pooled(r: EstimateResult) -> bool:
        return (r.method in members_of and r.withheld is None and r.interval is not None
                and all(v is not None and np.isfinite(v) for v in r.interval))

    hulls: dict[tuple, tuple[float, float]] = {}
    members: dict[tuple, list[str]] = {}
    for r in filter(pooled, results):
        key = (r.metric, r.class_name)
        lo, hi = hulls.get(key, r.interval)
        hulls[key] = (min(lo, r.interval[0]), max(hi, r.interval[1]))
        members.setdefault(key, []).append(r.method)
    widened = []
    for r in results:
        key = (r.metric, r.class_name)
        if pooled(r) and len(members[key]) > 1:
            r = replace(r, interval=hulls[key], details={**r.details, "sampling_interval": list(r.interval),
                                                         "interval_from": "hull of the bootstrap intervals of "
                                                                          + ", ".join(sorted(members[key]))})
        widened.append(r)
    return widened


def total_variation_from_auc(auc: float) -> float:
    """An upper estimate of the total variation between two distributions from their domain classifier's AUC:
    2 AUC - 1. A concave ROC curve (the likelihood-ratio classifier's) through the point where TPR - FPR = TV has an
    area of at least (1 + TV) / 2, so TV <= 2 AUC - 1, with equality for a mixture of the source and images of a
    disjoint new kind (the binormal model gives less: 0.64 instead of 0.80 at AUC 0.9). A weaker domain classifier
    understates the AUC, so this is still an estimate, not a guarantee."""
    return float(np.clip(2.0 * float(auc) - 1.0, 0.0, 1.0))


def _shift_bound_intervals(results: list[EstimateResult], flag, source_accuracy: float) -> list[EstimateResult]:
    """Under a raised ``confident_shift`` flag, widen the accuracy intervals of the methods it affects to include
    the shift bound |acc_T - acc_S| <= TV(P_S(x), P_T(x)) (no concept shift: the accuracy is the mean of a [0, 1]
    function of the image), TV from the domain classifier's AUC (:func:`total_variation_from_auc`).

    Why: there the estimators' own assumption is broken in a direction resampling cannot see (confidently wrong
    predictions), so an interval built from them alone covered the truth in 3 of the 12 flagged real cases (README);
    the bound is what the data can still say. It is wide on purpose: the flag means the number cannot be trusted."""
    if not flag.raised:
        return results
    tv = total_variation_from_auc(flag.values["domain_auc"])
    bound = (max(0.0, source_accuracy - tv), min(1.0, source_accuracy + tv))
    widened = []
    for r in results:
        if r.method in flag.affects and r.metric == "accuracy" and r.interval is not None and r.withheld is None:
            interval = (min(r.interval[0], bound[0]), max(r.interval[1], bound[1]))
            r = replace(r, interval=interval, details={
                **r.details, "shift_bound": {"interval": list(bound), "total_variation": tv,
                                             "source_accuracy": source_accuracy,
                                             "domain_auc": flag.values["domain_auc"]},
                "interval_from": r.details.get("interval_from", "bootstrap") + "; widened to the shift bound "
                                 f"(confident_shift: source accuracy ± TV {tv:.2f})"})
        widened.append(r)
    return widened


def _distance_intervals(results: list[EstimateResult], ctx: Context) -> list[EstimateResult]:
    """Widen ``ac_dc``'s accuracy interval by what its distance check cannot know: how the model does on the target
    images beyond the source's reach. They count at chance level in the estimate; the interval lets them be all
    wrong at its lower end and all right at its upper end (a partial-identification bound, exact whatever the model
    does there), so it is as wide as the share of such images demands and no wider where they are few."""
    if ctx.distance is None:
        return results
    outside = ~ctx.distance.target_inside
    chance = ctx.chance_shares[ctx.tgt_pred[outside]]
    down, up = float(chance.sum()) / ctx.data.n_target, float((1.0 - chance).sum()) / ctx.data.n_target
    widened = []
    for r in results:
        if r.method == "ac_dc" and r.metric == "accuracy" and r.interval is not None and r.withheld is None:
            r = replace(r, interval=(max(0.0, r.interval[0] - down), min(1.0, r.interval[1] + up)), details={
                **r.details, "distance_bound": {"outside": int(outside.sum()), "all_wrong": -down, "all_right": up},
                "interval_from": r.details.get("interval_from", "bootstrap") + "; widened by the images beyond the "
                                 f"distance check ({int(outside.sum())}: all wrong to all right)"})
        widened.append(r)
    return widened


ROUNDING = 1e-9
"""Slack for floating point where an interval ends at an exact bound: a model that attains the prediction-rate bound
(on a real BreastMNIST case its accuracy, 40/52, equalled it) must stay inside the interval."""


def _known_cap_intervals(results: list[EstimateResult], cap: float) -> list[EstimateResult]:
    """With a known target prevalence, end ``ac_dc``'s accuracy interval at the prediction-rate bound ``cap`` of the
    target's own predictions. For the target's images it holds without assumptions when the stated shares are
    theirs (a stated prevalence off by total variation d moves it by at most d), so the widenings above (the other
    methods' hull, the images beyond the distance check, the shift bound) must not carry the interval past it. Not
    the bootstrap's upper end: the bound is largest where the prediction rates equal the prevalence, so resampled
    rates can only lower it (a perfect model's measured 1.0 fell outside that way)."""
    clipped = []
    for r in results:
        if r.method == "ac_dc" and r.metric == "accuracy" and r.interval is not None and r.interval[1] > cap + ROUNDING:
            lo = min(r.interval[0], cap)
            r = replace(r, interval=(lo, cap + ROUNDING), details={
                **r.details, "interval_from": r.details.get("interval_from", "bootstrap")
                + f"; ended at the prediction-rate bound at the known prevalence ({cap:.3f})"})
        clipped.append(r)
    return clipped


def embedding_inputs(source_embeddings: Any, source_labels: Any, target_embeddings: Any, target_pred: Any,
                     seed: int = 0) -> dict[str, Any]:
    """What :func:`estimate_performance` takes from the model's embeddings, as its keyword arguments: the density
    ratio (``iw``, the covariate flags) and the distance check (``ac_dc``, ``far_from_source``)."""
    from shiftkit.estimate.distance import distance_check_from_embeddings
    from shiftkit.estimate.weights import density_ratio_from_embeddings

    return {"density_ratio": density_ratio_from_embeddings(source_embeddings, target_embeddings, seed=seed),
            "distance": distance_check_from_embeddings(source_embeddings, source_labels, target_embeddings,
                                                       target_pred)}


def _far_from_source(distance: DistanceCheck | None, n_target: int, seed: int) -> flagging.Flag:
    if distance is None:
        return flagging.far_from_source_flag(None, n_target, None, None)
    return flagging.far_from_source_flag(int(np.sum(~distance.target_inside)), n_target, distance.expected_outside,
                                         distance.null_p_value(seed=seed), distance.quantile)


def _prior_setup(target_prior: Any, data) -> tuple[str | None, np.ndarray | None, float | None, str | None]:
    """(mode, point prior, p-value, description) from ``target_prior``: a method name, a LabelShiftResult (an
    estimate made elsewhere: "fixed"), an array or dict (the prevalence the user knows: "known"), or None."""
    if target_prior is None:
        return None, None, None, None
    if isinstance(target_prior, str):
        if target_prior not in PRIOR_METHODS:
            raise ConfigError(f"target_prior: unknown method '{target_prior}' (choose {', '.join(PRIOR_METHODS)}, "
                              f"give the priors, or None)")
        q = point_prior(target_prior, data.source_log_probs, data.source_labels, data.target_log_probs)
        return target_prior, q, None, f"{target_prior} on the model's outputs (re-estimated in each replicate)"
    if hasattr(target_prior, "target_prior") and hasattr(target_prior, "p_value"):  # a shift.label result
        q = fixed_prior(dict(target_prior.target_prior), data.classes)
        return "fixed", q, float(target_prior.p_value), (f"given label-shift result ({target_prior.method}); fixed "
                                                         f"across replicates")
    return (KNOWN, fixed_prior(target_prior, data.classes), None,
            "the target prevalence the user stated (known, not estimated)")


def _density(density_ratio: Any, n_source: int) -> DensityRatio | None:
    if density_ratio is None:
        return None
    density = density_ratio if isinstance(density_ratio, DensityRatio) else density_ratio_from_weights(density_ratio)
    if len(density.weights) != n_source:
        raise ConfigError(f"density_ratio: {len(density.weights)} weights for {n_source} source images")
    return density


def estimate_performance(source_logits: Any, source_labels: Any, target_logits: Any, *,
                         classes: Sequence | None = None, methods: Sequence[str] | None = None,
                         target_prior: Any = "em_bcts", density_ratio: Any = None,
                         distance: DistanceCheck | None = None, domain_auc: float | None = None,
                         score: str = "neg_entropy", positive: Any = None, bootstrap: int = 1000,
                         level: float = 0.95, seed: int = 0, min_target: int = flagging.MIN_TARGET,
                         withhold_uncorrected: bool = True) -> PerformanceEstimate:
    """Estimate the model's performance on an unlabelled target from its outputs.

    ``source_logits`` (n_s x K) and ``source_labels``: the model on labelled source validation images it was not
    trained on; ``target_logits`` (n_t x K): the same model on the target. ``methods``: any of ``METHODS``
    (default: all, ``iw`` only when ``density_ratio`` is given, ``ac_dc`` only with ``distance``).
    ``target_prior``: ``"em_bcts"`` (default) or ``"bbse"`` (estimated here, re-estimated per replicate), a
    :class:`shiftkit.shift.label.LabelShiftResult` (fixed), an array/dict of the target prevalence the user knows
    (from the site's case mix or a registry), or None (no prevalence correction). A known prevalence moves ``ac``'s
    and ``ac_dc``'s posteriors to it as well (an estimated one does not: it is biased under covariate shift).
    ``density_ratio``: a :class:`~shiftkit.estimate.weights.DensityRatio` or per-source-image weights.
    ``distance``: a :class:`~shiftkit.estimate.distance.DistanceCheck` of the same images (``ac_dc``).
    ``domain_auc``: a domain classifier's AUC for the covariate-shift flag (taken from ``density_ratio`` when it has
    one). ``score``: ATC's score. ``positive``: the positive class of a binary task (default: the second class).
    ``bootstrap`` replicates give ``level`` percentile intervals, seeded by ``seed``. ``withhold_uncorrected``: under
    a raised label-shift flag, PPV/NPV not computed at the estimated target prevalence are withheld.
    """
    data = prepare(source_logits, source_labels, target_logits, classes)
    if score not in SCORES:
        raise ConfigError(f"score: unknown ATC score '{score}' (choose {', '.join(SCORES)})")
    bootstrap = int(bootstrap)
    if bootstrap < 2:
        raise ConfigError(f"bootstrap: need at least 2 replicates for an interval, got {bootstrap}")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level: must be in (0, 1), got {level}")
    density = _density(density_ratio, data.n_source)
    given = {"density_ratio": density is not None, "distance": distance is not None}
    if distance is not None and (len(distance.source_distances) != data.n_source
                                 or len(distance.target_distances) != data.n_target):
        raise ConfigError(f"distance: a check of {len(distance.source_distances)} source and "
                          f"{len(distance.target_distances)} target images for {data.n_source} and {data.n_target}")
    if distance is not None and not np.array_equal(distance.target_pred, data.target_pred):
        raise ConfigError("distance: its target predictions are not the model's (build it from these outputs' argmax)")
    if methods is None:
        methods = [m for m in DEFAULT_METHODS if given.get(NEEDS.get(m, ""), True)]
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"methods: unknown {unknown!r} (choose {', '.join(METHODS)})")
    if "iw" in methods and density is None:
        raise ConfigError("methods: 'iw' needs density ratios (density_ratio=weights, or DensityRatio from "
                          "shiftkit.estimate.weights)")
    if "ac_dc" in methods and distance is None:
        raise ConfigError("methods: 'ac_dc' needs a distance check (distance=distance_check_from_embeddings(...) "
                          "from shiftkit.estimate.distance)")
    if positive is None:
        pos = 1
    elif positive in data.classes:
        pos = data.classes.index(positive)
    else:
        raise ConfigError(f"positive: {positive!r} is not one of the classes {list(data.classes)!r}")

    mode, prior, p_value, prior_from = _prior_setup(target_prior, data)
    ctx = Context(data, score, pos, BCTS(data.source_log_probs, data.source_labels), mode, prior, density, distance)
    if domain_auc is None and density is not None:
        domain_auc = density.domain_auc
    # raised, it widens the affected intervals to the shift bound and caps ac_dc at the prediction-rate bound
    confident = flagging.confident_shift_flag(ctx.src_conf, ctx.tgt_conf, domain_auc)
    ctx.confident_shift = confident.raised

    point_batch = Batch.point(ctx)
    point = {m: metrics_of(m, ESTIMATORS[m](point_batch), point_batch) for m in methods}
    # ac_dc's cap on the full samples (None where ac_dc does not apply it): reported, and with a known prevalence
    # the end of its interval
    capped = "ac_dc" in methods and (ctx.confident_shift or mode == KNOWN)
    point_cap = float(prediction_rate_bound(point_batch, point_batch.chance_prior())[0]) if capped else None
    reps: dict[str, dict] = {m: {key: [] for key in point[m]} for m in methods}
    prior_reps = []
    size = batch_size(data.n_source, data.n_target, data.n_classes)
    # The replicate arithmetic is many small matrix products; multi-threaded BLAS gains nothing on them and, on a
    # busy machine, its spinning threads made one (47 x 2000) @ (2000 x 49) product take 55 ms instead of 0.3 ms.
    with threadpool_limits(limits=1, user_api="blas"):
        for ws, wt in replicate_batches(seed, bootstrap, data.n_source, data.n_target, data.source_labels, size):
            batch = Batch(ctx, ws, wt)
            for m in methods:
                for key, values in metrics_of(m, ESTIMATORS[m](batch), batch).items():
                    reps[m][key].append(values)
            if mode in PRIOR_METHODS:
                prior_reps.append(batch.priors)

    prior_reps_arr = np.concatenate(prior_reps) if prior_reps else None

    label_flag = flagging.label_shift_flag(data.source_prior, prior, classes=data.classes, p_value=p_value,
                                           replicates=prior_reps_arr, level=level,
                                           posterior_prevalence=point_batch.posteriors[0].mean(axis=0),
                                           known=mode == KNOWN)
    flag_list = [
        flagging.sample_size_flag(data.n_target, min_target),
        flagging.extrapolation_flag(ctx.src_conf, ctx.tgt_conf),
        label_flag,
        flagging.covariate_shift_flag(domain_auc),
        _far_from_source(distance, data.n_target, seed),
        confident,
        flagging.importance_weight_flag(None if density is None else density.weights),
        flagging.concept_shift_flag(),
    ]

    results = []
    for m in methods:
        info = METHODS[m]
        corrected = info.corrects_to(mode) and prior is not None
        for (metric, c), value in point[m].items():
            if metric == "prevalence":
                continue
            values = np.concatenate(reps[m][(metric, c)])
            lo, hi = percentile_interval(values, level)
            estimate = float(value[0])
            details: dict[str, Any] = {"nan_replicates": int(np.sum(~np.isfinite(values)))}
            withheld = None
            if metric in ("ppv", "npv"):
                prevalence = float(point[m][("prevalence", c)][0])
                details["prevalence"] = prevalence
                details["prevalence_from"] = "target prior" if corrected else {
                    "iw": "importance-weighted source labels", "source": "source validation labels",
                    "ac": "mean calibrated posterior on the target"}.get(m, "the method's own confusion matrix")
                if withhold_uncorrected and label_flag.raised and not corrected and m != "iw":
                    corrected_methods = ", ".join(n for n in METHODS if METHODS[n].corrects_to(mode))
                    withheld = (f"label shift flagged (total variation {label_flag.values['total_variation']:.2f}); "
                                f"this {metric.upper()} is not computed at the target prevalence: use a "
                                f"prevalence-corrected method ({corrected_methods or 'cm_atc with a target prior'})")
            if corrected and metric in ("accuracy", "ppv", "npv"):
                details["target_prior_from"] = prior_from
            if m == "ac_dc" and metric == "accuracy" and point_cap is not None:
                details["prediction_rate_bound"] = {"bound": point_cap, "binds": bool(estimate >= point_cap - 1e-12)}
            results.append(EstimateResult(
                method=m, metric=metric, class_name=None if c is None else data.classes[c],
                estimate=None if withheld or not np.isfinite(estimate) else estimate,
                interval=None if withheld else (float(lo), float(hi)), level=level, assumes=info.assumes,
                withheld=withheld or (None if np.isfinite(estimate) else "not estimable on these data"),
                details=details))

    results = _consensus_intervals(results, label_shift=label_flag.raised and prior is not None
                                   and METHODS[LABEL_SHIFT_READING].corrects_to(mode))
    results = _distance_intervals(results, ctx)
    results = _shift_bound_intervals(results, confident, float(ctx.correct.mean()))
    if mode == KNOWN and point_cap is not None:
        results = _known_cap_intervals(results, point_cap)
    target_prior_info = None
    if prior is not None:
        target_prior_info = {"from": prior_from, "mode": mode,
                             "source": dict(zip(data.classes, data.source_prior.tolist())),
                             "target": dict(zip(data.classes, prior.tolist()))}
        if prior_reps_arr is not None:
            lo, hi = percentile_interval(prior_reps_arr, level)
            target_prior_info["interval"] = {c: [float(a), float(b)] for c, a, b in zip(data.classes, lo, hi)}
    details = {"score": score, "calibration": ctx.bcts.details(),
               "density_ratio": None if density is None else density.details(),
               "distance_check": None if distance is None else distance.details(),
               "source_accuracy": float(ctx.correct.mean()),
               "interval": "percentile bootstrap over source validation (within class) and target images jointly; "
                           "thresholds, calibration and target prior refitted in each replicate; for "
                           f"{', '.join(CONSENSUS)} the hull of their intervals (sampling error and the estimators' "
                           f"disagreement), with {LABEL_SHIFT_READING}'s under a raised label_shift flag; ac_dc's "
                           "accuracy also spans the images beyond the distance check (all wrong to all right); under "
                           "a raised confident_shift flag, the accuracy intervals of the methods it affects also span "
                           "the shift bound (source accuracy ± TV)"}
    return PerformanceEstimate(
        classes=data.classes, positive_class=data.classes[pos] if data.n_classes == 2 else None,
        n_source=data.n_source, n_target=data.n_target, level=level, bootstrap=bootstrap, seed=int(seed),
        results=tuple(results), flags=tuple(flag_list), methods={m: METHODS[m].to_dict() for m in methods},
        target_prior=target_prior_info, details=details)

"""Warnings that say when a label-free estimate cannot be trusted: pure functions of summary inputs, each returning
a :class:`Flag` whose ``status`` is ``"raised"``, ``"clear"`` or ``"not_assessed"`` (the input needed was absent).

- ``extrapolation``: the target's confidence lies outside what the source validation set shows, so every
  source-fitted calibration or threshold is extrapolated (Flühmann et al. 2025: all methods overestimate then).
- ``few_target``: too few target images for the interval to mean much.
- ``label_shift``: the estimated target prevalence differs significantly from the source's; PPV/NPV that were not
  recomputed at the target prevalence are withheld.
- ``covariate_shift``: a domain classifier separates source and target almost perfectly (AUC >= 0.9): the target lies
  largely where the source validation set has no images, beyond what it can calibrate; importance weights degenerate.
- ``far_from_source``: many target images lie farther from the source validation images, in the model's embedding,
  than almost any source image does (the distance check): the confidence there was never calibrated; ``ac_dc``
  scores those images at chance level, the other confidence-based methods trust them.
- ``confident_shift``: strong covariate shift, yet the model is at least as confident on the target as on the source:
  confidence-based estimates cannot see confidently wrong predictions (on the real validation cases every large
  overestimate of PneumoniaMNIST under blur, noise and contrast loss was of this kind).
- ``importance_weights``: the density-ratio weights rest on few effective source images.
- ``concept_shift``: never assessable without target labels; always ``not_assessed``, stated so that no reader
  mistakes silence for a check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shiftkit.estimate.distance import QUANTILE

__all__ = [
    "Flag",
    "concept_shift_flag",
    "confident_shift_flag",
    "covariate_shift_flag",
    "extrapolation_flag",
    "far_from_source_flag",
    "importance_weight_flag",
    "label_shift_flag",
    "sample_size_flag",
]

MIN_TARGET = 30
STRONG_DOMAIN_AUC = 0.9
EXTRAPOLATION_FRACTION = 0.05
FAR_FRACTION = 0.05  # five times what the distance check's 99th-percentile threshold lets through without shift
FAR_ALPHA = 0.001
LABEL_SHIFT_TV = 0.10  # shiftkit.shift.profile.STRONG_PRIOR_TV, used when no uncertainty is known


@dataclass(frozen=True)
class Flag:
    """One warning: ``code``, ``status`` (raised / clear / not_assessed), a one-line ``message``, the numbers it
    rests on (``values``) and the methods it concerns (``affects``; empty: all)."""

    code: str
    status: str
    message: str
    values: dict[str, Any] = field(default_factory=dict)
    affects: tuple = ()

    @property
    def raised(self) -> bool:
        return self.status == "raised"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "status": self.status, "message": self.message, "values": dict(self.values),
                "affects": list(self.affects)}


def _f(x: Any) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def extrapolation_flag(source_confidence: Any, target_confidence: Any,
                       max_fraction_below: float = EXTRAPOLATION_FRACTION) -> Flag:
    """Raised when more than ``max_fraction_below`` of the target's confidences (max softmax) fall below the lowest
    source confidence, or the target's mean confidence is below the source's 5th percentile."""
    s = np.asarray(source_confidence, dtype=np.float64)
    t = np.asarray(target_confidence, dtype=np.float64)
    below_min = float(np.mean(t < s.min()))
    p5 = float(np.quantile(s, 0.05))
    mean_t = float(t.mean())
    raised = below_min > max_fraction_below or mean_t < p5
    values = {"fraction_below_source_min": below_min, "source_min": float(s.min()), "source_p5": p5,
              "target_mean": mean_t, "source_mean": float(s.mean()), "max_fraction_below": max_fraction_below}
    if raised:
        message = (f"target confidence outside the source range: {below_min:.0%} of target images below the lowest "
                   f"source confidence {s.min():.3f}, target mean {mean_t:.3f} vs source 5th percentile {p5:.3f}; "
                   f"estimates extrapolate and usually overestimate")
    else:
        message = (f"target confidence within the source range ({below_min:.0%} below the source minimum, mean "
                   f"{mean_t:.3f} vs source {s.mean():.3f})")
    return Flag("extrapolation", "raised" if raised else "clear", message, values)


def sample_size_flag(n_target: int, minimum: int = MIN_TARGET) -> Flag:
    """Raised below ``minimum`` target images."""
    raised = n_target < minimum
    message = (f"only {n_target} target images (< {minimum}); intervals are wide and the flags unreliable"
               if raised else f"{n_target} target images")
    return Flag("few_target", "raised" if raised else "clear", message, {"n_target": int(n_target),
                                                                          "minimum": int(minimum)})


def label_shift_flag(source_prior: Any, target_prior: Any | None, *, classes: Any = None,
                     p_value: float | None = None, replicates: Any = None, level: float = 0.95,
                     min_total_variation: float = LABEL_SHIFT_TV, posterior_prevalence: Any = None,
                     known: bool = False) -> Flag:
    """Significant label shift between the source prior and the estimated target prior.

    Decided by, in order: a given ``p_value`` (< 1 - level); else the bootstrap ``replicates`` of the target prior
    (B x K): raised when for some class the Bonferroni percentile interval at ``1 - (1 - level)/K`` excludes the
    source prior; else, with a point estimate only, a total variation >= ``min_total_variation``. ``not_assessed``
    without a target prior. ``posterior_prevalence`` (the mean calibrated posterior on the target: the prevalence if
    the shift is a covariate shift, where EM's label-shift estimate is biased) is reported next to it, since no
    label-free method can tell which of the two is right. ``known``: the target prior is the prevalence the user
    stated, not an estimate (the message says so, and has no covariate-shift reading).
    """
    affects = ("source",) if known else ("source", "ac", "cm_atc")
    if target_prior is None:
        return Flag("label_shift", "not_assessed",
                    "no target prior estimated: label shift not checked; PPV/NPV assume the source prevalence",
                    {}, affects)
    p = np.asarray(source_prior, dtype=np.float64)
    q = np.asarray(target_prior, dtype=np.float64)
    names = list(classes) if classes is not None else list(range(len(p)))
    tv = float(0.5 * np.abs(q - p).sum())
    values: dict[str, Any] = {"source_prior": dict(zip(names, p.tolist())),
                              "target_prior": dict(zip(names, q.tolist())), "total_variation": tv}
    if posterior_prevalence is not None:
        values["prevalence_if_covariate_shift"] = dict(zip(names, np.asarray(posterior_prevalence).tolist()))
    alpha = 1.0 - level
    if p_value is not None:
        raised = p_value < alpha
        values.update(p_value=float(p_value), decided_by="p-value of the label-shift test")
    elif replicates is not None:
        reps = np.asarray(replicates, dtype=np.float64)
        a = alpha / len(p)
        lo, hi = np.nanquantile(reps, [a / 2, 1 - a / 2], axis=0)
        excluded = [names[i] for i in range(len(p)) if not lo[i] <= p[i] <= hi[i]]
        raised = bool(excluded)
        values.update(decided_by=f"bootstrap interval of the target prior (Bonferroni, level {1 - a:.4f})",
                      classes_outside=excluded, interval={n: [float(x), float(y)] for n, x, y in zip(names, lo, hi)})
    else:
        raised = tv >= min_total_variation
        values.update(decided_by=f"total variation >= {min_total_variation} (no uncertainty available)")
    if raised and known:
        from shiftkit.estimate.estimators import KNOWN, METHODS

        using = ", ".join(name for name, info in METHODS.items() if info.corrects_to(KNOWN))
        message = (f"label shift: the given target prevalence differs from the source (total variation {tv:.2f}); "
                   f"the methods that use it ({using}) are computed at it; PPV/NPV not computed at it are withheld")
    elif raised:
        message = (f"label shift: estimated target prevalence differs from the source (total variation {tv:.2f}); "
                   f"PPV/NPV are computed at the estimated target prevalence or withheld")
        if posterior_prevalence is not None:
            gap = float(0.5 * np.abs(np.asarray(posterior_prevalence, dtype=np.float64) - q).sum())
            if gap >= 0.05:
                message += (f"; if the shift is a covariate shift instead, the prevalence differs from this estimate "
                            f"by total variation {gap:.2f} and the correction is biased (check the domain AUC)")
    else:
        message = f"no significant label shift (total variation {tv:.2f})"
    return Flag("label_shift", "raised" if raised else "clear", message, values, affects)


def covariate_shift_flag(domain_auc: float | None, threshold: float = STRONG_DOMAIN_AUC) -> Flag:
    """Raised when the domain classifier's AUC is at least ``threshold``."""
    if domain_auc is None or not np.isfinite(domain_auc):
        return Flag("covariate_shift", "not_assessed", "no domain classifier AUC given: covariate shift not checked")
    raised = domain_auc >= threshold
    message = (f"strong covariate shift: a domain classifier separates source and target (AUC {domain_auc:.2f} >= "
               f"{threshold}); the source validation set cannot calibrate the target and importance weights "
               f"degenerate" if raised else f"domain classifier AUC {domain_auc:.2f} (< {threshold})")
    return Flag("covariate_shift", "raised" if raised else "clear", message,
                {"domain_auc": float(domain_auc), "threshold": threshold})


CONFIDENCE_BASED = ("ac", "ac_dc", "atc", "doc", "cm_atc")
TRUSTS_EVERY_CONFIDENCE = tuple(m for m in CONFIDENCE_BASED if m != "ac_dc")


def far_from_source_flag(outside: int | None, n_target: int, expected: float | None, p_value: float | None,
                         quantile: float = QUANTILE, threshold: float = FAR_FRACTION, alpha: float = FAR_ALPHA) -> Flag:
    """Raised when ``outside`` of ``n_target`` images fail the distance check (whose threshold is the ``quantile``
    of the source's distances): at least ``threshold`` of them, and significantly more (``p_value`` < ``alpha``,
    :meth:`shiftkit.estimate.distance.DistanceCheck.null_p_value`) than the ``expected`` share a target distributed
    as the source would show (a small source lets more through by chance, and that alone must not raise it)."""
    if outside is None or expected is None or p_value is None:
        return Flag("far_from_source", "not_assessed", "no embeddings given: the distance check did not run", {},
                    TRUSTS_EVERY_CONFIDENCE)
    fraction = outside / n_target
    raised = fraction >= threshold and p_value < alpha
    values = {"outside_fraction": fraction, "expected": expected, "p_value": p_value, "threshold": threshold}
    share = (f"{fraction:.0%} of the target images fail the distance check: their mean distance to the nearest "
             f"source images, in the model's embedding, exceeds what {quantile:.0%} of source images show "
             f"({expected:.1%} expected without shift, p = {p_value:.2g})")
    message = (f"{share}: their confidence was never calibrated; ac_dc scores them at chance level, "
               f"{', '.join(TRUSTS_EVERY_CONFIDENCE)} trust it" if raised else share)
    return Flag("far_from_source", "raised" if raised else "clear", message, values, TRUSTS_EVERY_CONFIDENCE)


def confident_shift_flag(source_confidence: Any, target_confidence: Any, domain_auc: float | None,
                         threshold: float = STRONG_DOMAIN_AUC) -> Flag:
    """Raised when the domains separate (AUC >= ``threshold``) and the target's mean confidence is at least the
    source's: a model that is as sure of itself on images unlike its source is as likely confidently wrong there,
    which no confidence-based estimate can tell (they overestimate)."""
    if domain_auc is None or not np.isfinite(domain_auc):
        return Flag("confident_shift", "not_assessed", "no domain classifier AUC given: not checked", {},
                    CONFIDENCE_BASED)
    source_mean = float(np.mean(source_confidence))
    target_mean = float(np.mean(target_confidence))
    raised = domain_auc >= threshold and target_mean >= source_mean
    values = {"domain_auc": float(domain_auc), "source_mean_confidence": source_mean,
              "target_mean_confidence": target_mean}
    if raised:
        message = (f"the target is far from the source (domain AUC {domain_auc:.2f}) yet the model is as confident "
                   f"there (mean {target_mean:.3f} vs {source_mean:.3f}): confidence-based estimates cannot see "
                   f"confidently wrong predictions; read them as upper bounds and label a sample")
    else:
        message = (f"mean confidence {target_mean:.3f} at the target vs {source_mean:.3f} at the source, domain AUC "
                   f"{domain_auc:.2f}")
    return Flag("confident_shift", "raised" if raised else "clear", message, values, CONFIDENCE_BASED)


def importance_weight_flag(weights: Any | None, min_effective: float = 30.0, min_fraction: float = 0.1) -> Flag:
    """Raised when the density-ratio weights' effective sample size is below ``min_effective`` images or below
    ``min_fraction`` of the source validation set."""
    if weights is None:
        return Flag("importance_weights", "not_assessed", "no density ratio: importance weighting not run", {},
                    ("iw",))
    w = np.asarray(weights, dtype=np.float64)
    ess = float(w.sum() ** 2 / np.sum(w ** 2))
    raised = ess < min_effective or ess < min_fraction * len(w)
    message = (f"importance weights rest on {ess:.0f} effective source images of {len(w)}" +
               ("; the weighted estimate is unstable" if raised else ""))
    return Flag("importance_weights", "raised" if raised else "clear", message,
                {"effective_sample_size": ess, "n_source": len(w), "largest_weight": _f(float(w.max()))}, ("iw",))


def concept_shift_flag() -> Flag:
    """Concept shift (P(y|x) differs between sites) cannot be detected without target labels."""
    return Flag("concept_shift", "not_assessed",
                "concept shift cannot be detected without target labels; every estimate assumes there is none "
                "(label some target images and run the concept-shift test to check)")

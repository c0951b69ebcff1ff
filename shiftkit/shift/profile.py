"""The ShiftProfile: every shift measurement for one source/target pair, with a plain-language verdict.

Verdict thresholds (README, "Reading the verdict"):
- covariate: shift is detected when any covariate test rejects at ``alpha`` after a Bonferroni correction over
  the tests run; it is *strong* when the domain classifier tells the domains apart with AUC >= 0.75
  (proxy A-distance >= 1.0 for a balanced classifier's error of 0.25), otherwise *mild*;
- label: detected when the "no label shift" test rejects at ``alpha``; *strong* when the total-variation distance
  between the estimated target prior and the source prior is >= 0.10, otherwise *mild*. When the test does not
  reject, the verdict is *undecided* rather than *none* if the test could not have rejected: too few null draws
  (its smallest p-value is not below ``alpha``), a target so small that even the largest possible prior change is
  within chance, or an estimated change that would be strong (>= 0.10) but lies below what the test detects at this
  target size; a *none* says above which total variation the test would have detected a change;
- concept (only with target labels): detected when the P(Y|X)-equality test rejects at ``alpha``; *strong* when the
  target error exceeds what covariate + label shift predict by >= 0.05, otherwise *mild*.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shiftkit.shift.stats import TestResult

ALPHA = 0.05
STRONG_DOMAIN_AUC = 0.75
STRONG_PRIOR_TV = 0.10
STRONG_ERROR_GAP = 0.05


@dataclass(frozen=True)
class DatasetProfile:
    n_source: int
    n_target: int
    classes: list[str]
    source_counts: dict[str, int]
    target_counts: dict[str, int] | None
    imbalance_ratio: float | None  # largest / smallest source class
    multilabel: bool
    target_labelled: int


@dataclass(frozen=True)
class Verdict:
    level: str  # none | mild | strong | undecided (label: the test cannot tell at this sample size) | not measured
    reason: str


LABEL_CAVEAT = ("; caution: the covariate shift is strong and prior estimators assume P(X|Y) is the same in both "
                "domains, so the estimated priors may be biased (check them on a few labelled target images)")


WEAK_CLASSIFIER = 0.7  # held-out balanced accuracy below which the prior estimates carry a caution


def weak_classifier_caveat(label: Any) -> str:
    """A caution for the label verdict when the source classifier tells the classes apart too poorly for prior
    estimation ("" otherwise). The figure quoted is benchmarks/prior_estimate_ham.py's: on one HAM10000 site
    split in two with planted priors, a classifier of held-out balanced accuracy 0.49 (five classes) left EM-BCTS
    an L1 error of 0.35 in the estimated priors."""
    details = ((getattr(label, "details", None) or {}).get("classifier") or {})
    balanced = details.get("held_out_balanced_accuracy")
    if balanced is None or balanced >= WEAK_CLASSIFIER:
        return ""
    chance = 1 / len(label.target_prior)
    return (f"; caution: the source classifier is weak for prior estimation (held-out balanced accuracy "
            f"{balanced:.2f}, chance {chance:.2f}); on HAM10000 one this weak left an L1 error of about 0.35 in the "
            "estimated priors: pass --checkpoint with a fine-tuned model, or label more source images")


def covariate_verdict(tests: dict[str, TestResult], alpha: float = ALPHA) -> Verdict:
    if not tests:
        return Verdict("not measured", "no covariate test was run")
    corrected = alpha / len(tests)
    rejecting = sorted(name for name, t in tests.items() if t.p_value < corrected)
    if not rejecting:
        return Verdict("none", f"no test rejects at α = {alpha} (Bonferroni over {len(tests)} tests)")
    auc = tests["domain_classifier"].statistic if "domain_classifier" in tests else None
    level = "strong" if auc is not None and auc >= STRONG_DOMAIN_AUC else "mild"
    detail = f"; a classifier tells the domains apart with AUC {auc:.2f}" if auc is not None else ""
    return Verdict(level, f"{', '.join(rejecting)} reject at α = {alpha} (Bonferroni){detail}")


def label_verdict(label: Any, alpha: float = ALPHA, why_not: str | None = None) -> Verdict:
    if label is None:
        return Verdict("not measured", why_not or "the source has no labels")
    tv = 0.5 * label.statistic
    if label.p_value >= alpha:
        return _no_rejection(label, tv, alpha)
    level = "strong" if tv >= STRONG_PRIOR_TV else "mild"
    return Verdict(level, f"class priors differ (total variation {tv:.2f}, p = {label.p_value:.3g})")


def _no_rejection(label: Any, tv: float, alpha: float) -> Verdict:
    """"none" only when the test could have said otherwise; "undecided" (with why) when it could not."""
    p = f"p = {label.p_value:.3g}"
    power = (getattr(label, "details", None) or {}).get("power")
    if not power:  # a result without the power figures (an older report, a stand-in): the plain reading
        return Verdict("none", f"estimated priors are consistent with the source's ({p})")
    detectable, largest, n = power["detectable_total_variation"], power["max_total_variation"], power["n_target"]
    estimate = ", ".join(f"{c} {q:.2f}" for c, q in sorted(label.target_prior.items(), key=lambda kv: -kv[1])[:3])
    if detectable is None:
        return Verdict("undecided", f"the test cannot reject at α = {alpha} with its number of null draws (the "
                                    f"smallest p-value is {power['smallest_p_value']:.3g}); use more --bootstrap "
                                    f"draws (estimated target priors: {estimate}; {p})")
    if detectable >= largest:
        return Verdict("undecided", f"the test cannot decide with {n} target images: even the largest possible "
                                    f"prior change (total variation {largest:.2f}, every image in one class) is "
                                    f"within chance ({p}); estimated target priors: {estimate}; add target images")
    if tv >= STRONG_PRIOR_TV:
        return Verdict("undecided", f"the estimated change would be strong (total variation {tv:.2f}; {estimate}) "
                                    f"but with {n} target images the test only detects one above {detectable:.2f} "
                                    f"({p}); add target images")
    return Verdict("none", f"estimated priors are consistent with the source's ({p}; with {n} target images the "
                           f"test detects a total variation above {detectable:.2f})")


def concept_verdict(concept: Any, alpha: float = ALPHA, why_not: str | None = None) -> Verdict:
    if concept is None:
        return Verdict("not measured", why_not or "no target labels were given")
    if concept.p_value >= alpha:
        return Verdict("none", f"the domain adds no predictive power beyond the image (p = {concept.p_value:.3g})")
    gap = concept.error_gap
    level = "strong" if gap >= STRONG_ERROR_GAP else "mild"
    direction = "above" if gap >= 0 else "below"
    reason = (f"the domain adds predictive power beyond the image (p = {concept.p_value:.3g}); the target error is "
              f"{abs(gap):.3f} {direction} what covariate + label shift predict")
    if gap < STRONG_ERROR_GAP:
        reason += " (a strong prior change alone can make the test reject: see concept.details)"
    return Verdict(level, reason)


@dataclass(frozen=True)
class ShiftProfile:
    covariate: dict[str, TestResult]
    label: Any | None  # LabelShiftResult of the primary method
    label_methods: dict[str, Any]  # every estimator that ran
    true_target_prior: dict[str, float] | None
    concept: Any | None
    dataset: DatasetProfile
    metadata: list[dict]
    settings: dict
    verdict: dict[str, Verdict] = field(default_factory=dict)

    @classmethod
    def build(cls, alpha: float = ALPHA, **parts) -> "ShiftProfile":
        why_not = parts["settings"].get("not_measured", {})
        verdict = {
            "covariate": covariate_verdict(parts["covariate"], alpha),
            "label": label_verdict(parts["label"], alpha, why_not.get("label")),
            "concept": concept_verdict(parts["concept"], alpha, why_not.get("concept")),
        }
        if verdict["covariate"].level == "strong" and verdict["label"].level not in ("not measured", "none"):
            # Prior estimators assume P(X|Y) is shared by both domains; a strong covariate shift breaks that.
            verdict["label"] = Verdict(verdict["label"].level, verdict["label"].reason + LABEL_CAVEAT)
        if parts["label"] is not None and weak_classifier_caveat(parts["label"]):
            verdict["label"] = Verdict(verdict["label"].level,
                                       verdict["label"].reason + weak_classifier_caveat(parts["label"]))
        return cls(verdict=verdict, **parts)

    def to_dict(self) -> dict:
        label = None
        if self.label is not None:
            label = {
                **self.label.to_dict(),
                "true_target_prior": self.true_target_prior,
                "methods": {name: result.to_dict() for name, result in self.label_methods.items()},
            }
        return {
            "covariate": {name: t.to_dict() for name, t in self.covariate.items()} | {"metadata": self.metadata},
            "label": label,
            "concept": self.concept.to_dict() if self.concept is not None else None,
            "dataset": asdict(self.dataset),
            "verdict": {name: asdict(v) for name, v in self.verdict.items()},
            "settings": self.settings,
        }

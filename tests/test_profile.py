"""The verdicts a ShiftProfile draws from its measurements."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from shiftkit.shift.profile import LABEL_CAVEAT, DatasetProfile, ShiftProfile
from shiftkit.shift.stats import TestResult


def _profile(domain_auc: float, domain_p: float, label_p: float, label_tv: float) -> ShiftProfile:
    covariate = {"domain_classifier": TestResult("domain_classifier", domain_auc, domain_p, 50, 50),
                 "mmd": TestResult("mmd", 0.1, domain_p, 50, 50)}
    label = SimpleNamespace(statistic=2 * label_tv, p_value=label_p)
    dataset = DatasetProfile(50, 50, ["a", "b"], {"a": 25, "b": 25}, None, 1.0, False, 0)
    return ShiftProfile.build(covariate=covariate, label=label, label_methods={}, true_target_prior=None,
                              concept=None, dataset=dataset, metadata=[], settings={})


@pytest.mark.parametrize("auc, p, expected", [(0.95, 0.001, "strong"), (0.62, 0.001, "mild"), (0.52, 0.4, "none")])
def test_covariate_level_follows_the_domain_classifier(auc, p, expected):
    assert _profile(auc, p, 0.5, 0.0).verdict["covariate"].level == expected


def test_label_shift_under_strong_covariate_shift_carries_a_caution():
    strong = _profile(0.95, 0.001, 0.001, 0.3).verdict["label"]
    assert strong.level == "strong" and strong.reason.endswith(LABEL_CAVEAT)
    mild_covariate = _profile(0.62, 0.001, 0.001, 0.3).verdict["label"]
    assert LABEL_CAVEAT not in mild_covariate.reason
    no_label_shift = _profile(0.95, 0.001, 0.6, 0.01).verdict["label"]
    assert no_label_shift.level == "none" and LABEL_CAVEAT not in no_label_shift.reason


def _label(p_value: float, tv: float, detectable, largest: float = 0.5, n: int = 5):
    power = {"detectable_total_variation": detectable, "max_total_variation": largest,
             "smallest_p_value": 1 / 201, "n_target": n, "detects_strong_change": False}
    return SimpleNamespace(statistic=2 * tv, p_value=p_value, target_prior={"a": 0.5 + tv, "b": 0.5 - tv},
                           details={"power": power})


@pytest.mark.parametrize("label, level, fragment", [
    (_label(0.59, 0.5, 0.54), "undecided", "cannot decide with 5 target images"),  # issue 13, item 17
    (_label(0.09, 0.3, None), "undecided", "use more --bootstrap"),
    (_label(0.20, 0.2, 0.3, n=20), "undecided", "would be strong"),
    (_label(0.60, 0.02, 0.08, n=300), "none", "detects a total variation above 0.08"),
    (_label(0.001, 0.3, 0.08, n=300), "strong", "class priors differ"),
])
def test_label_verdict_is_undecided_when_the_test_could_not_have_rejected(label, level, fragment):
    from shiftkit.shift.profile import label_verdict

    verdict = label_verdict(label)
    assert verdict.level == level and fragment in verdict.reason, verdict

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

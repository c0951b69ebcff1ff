"""What the target's labels say: measured metrics with exact (Clopper-Pearson) intervals, and how many labels a
measurement of ±0.05 needs. Known answers from the binomial tables, coverage under repeated random labelling, and
the reports' wording."""

from __future__ import annotations

import numpy as np
import pytest

from shiftkit.estimate.measured import (auroc_interval, balanced_accuracy_interval, labelling_plan, labels_to_measure,
                                       measured_metrics, proportion_interval)
from shiftkit.report.estimate import headline, html, labelling_advice


@pytest.mark.parametrize("successes, trials, expected", [
    (8, 10, (0.4439, 0.9748)),  # the exact 95 % interval of 8 of 10, as tabulated
    (0, 10, (0.0, 0.3085)),
    (10, 10, (0.6915, 1.0)),
    (45, 50, (0.7819, 0.9667)),
])
def test_the_interval_of_a_proportion_is_the_exact_binomial_one(successes, trials, expected):
    assert proportion_interval(successes, trials, 0.95) == pytest.approx(expected, abs=1e-4)
    assert proportion_interval(0, 0, 0.95) is None


def test_measured_metrics_carry_the_interval_of_each_proportion():
    """A binary target of 40 images: 18 of 20 positives called positive, 15 of 20 negatives called negative."""
    labels = np.r_[np.ones(20, int), np.zeros(20, int)]
    called = np.r_[np.ones(18, int), np.zeros(2, int), np.zeros(15, int), np.ones(5, int)]
    probabilities = np.eye(2)[called] * 0.8 + 0.1
    m = measured_metrics(probabilities, labels, ["benign", "malignant"], "malignant")
    assert m["accuracy"] == pytest.approx(33 / 40) and m["n"] == 40
    assert m["intervals"]["accuracy"] == pytest.approx(proportion_interval(33, 40, 0.95))
    assert m["intervals"]["sensitivity"] == pytest.approx(proportion_interval(18, 20, 0.95))
    assert m["intervals"]["specificity"] == pytest.approx(proportion_interval(15, 20, 0.95))
    assert m["intervals"]["ppv"] == pytest.approx(proportion_interval(18, 23, 0.95))
    assert m["intervals"]["npv"] == pytest.approx(proportion_interval(15, 17, 0.95))
    assert m["per_class"]["benign"]["intervals"]["sensitivity"] == pytest.approx(proportion_interval(15, 20, 0.95))
    assert m["intervals"]["auroc"][0] < m["auroc"] < m["intervals"]["auroc"][1]
    lo, hi = m["intervals"]["balanced_accuracy"]
    perfect = measured_metrics(np.eye(2)[labels], labels, ["benign", "malignant"], "malignant")
    assert perfect["balanced_accuracy"] == 1.0 and perfect["intervals"]["balanced_accuracy"][1] == 1.0
    assert m["balanced_accuracy"] == pytest.approx((18 / 20 + 15 / 20) / 2) and lo < m["balanced_accuracy"] < hi
    narrower = measured_metrics(probabilities, labels, ["benign", "malignant"], "malignant", level=0.8)
    assert np.diff(narrower["intervals"]["accuracy"]) < np.diff(m["intervals"]["accuracy"])


def test_a_random_labelled_sample_s_interval_covers_the_site_s_accuracy_at_least_at_the_nominal_rate():
    """2,000 target images, the model right on 1,640 (0.82): 400 times, 30 of them labelled at random. The exact
    interval of the sample's accuracy covers 0.82 in at least 95 % of draws (it is conservative); a normal (Wald)
    interval at this size covers it in fewer, which is why the exact one is used."""
    rng = np.random.default_rng(0)
    correct = np.r_[np.ones(1640, bool), np.zeros(360, bool)]
    exact = wald = 0
    for _ in range(400):
        k = int(correct[rng.choice(2000, 30, replace=False)].sum())
        lo, hi = proportion_interval(k, 30, 0.95)
        exact += lo <= 0.82 <= hi
        p = k / 30
        half = 1.959964 * np.sqrt(p * (1 - p) / 30)
        wald += p - half <= 0.82 <= p + half
    assert exact / 400 >= 0.95
    assert wald < exact


def test_the_balanced_accuracy_interval_is_the_beta_posterior_s_and_covers_at_the_nominal_rate():
    """One class present: the interval is that class's Beta(k + 1, n - k + 1) posterior interval. Two classes of 20
    labelled images with sensitivities 0.9 and 0.6 (balanced accuracy 0.75), 300 times: it covers 0.75 in at least
    93 % of draws (nominal 95 %)."""
    from scipy.stats import beta

    one = balanced_accuracy_interval(np.array([0, 14]), np.array([0, 20]), 0.95)
    assert one == pytest.approx(beta.ppf([0.025, 0.975], 15, 7), abs=0.005)
    rng = np.random.default_rng(2)
    covered = 0
    for seed in range(300):
        hits = np.array([rng.binomial(20, 0.9), rng.binomial(20, 0.6)])
        lo, hi = balanced_accuracy_interval(hits, np.array([20, 20]), 0.95, draws=4000, seed=seed)
        covered += lo <= 0.75 <= hi
    assert covered / 300 >= 0.93


def test_the_auroc_interval_covers_a_known_auroc_at_about_the_nominal_rate():
    """Binormal scores, 40 diseased and 60 healthy, separation 1.2: the population AUROC is Phi(1.2 / sqrt(2)) =
    0.802. Over 300 samples the stratified bootstrap interval covers it in at least 90 % (nominal 95 %; a percentile
    bootstrap runs a little short at this size); one class alone has no AUROC and no interval."""
    from scipy.stats import norm

    truth_auroc = norm.cdf(1.2 / np.sqrt(2))
    rng = np.random.default_rng(3)
    diseased = np.r_[np.ones(40, bool), np.zeros(60, bool)]
    covered = 0
    for seed in range(300):
        lo, hi = auroc_interval(rng.normal(size=100) + 1.2 * diseased, diseased, 0.95, replicates=1000, seed=seed)
        covered += lo <= truth_auroc <= hi
    assert covered / 300 >= 0.90
    assert auroc_interval(np.arange(5.0), np.ones(5, bool), 0.95) is None


def test_the_labels_planned_measure_the_accuracy_within_the_half_width():
    """Planned with the exact interval: 402 labels for ±0.05 at 95 % when 0.5 is possible (the normal
    approximation's 385, plus what the exact interval adds), fewer when the estimate says the accuracy is far from
    0.5, and not 1 when it says 1.0 (the normal formula's answer there). That many random labels then give exact
    intervals about ±0.05 wide."""
    assert labels_to_measure((0.2, 0.9), 0.95) == 402
    assert labels_to_measure((0.8, 0.9), 0.95) == 265  # p = 0.8, the value nearest 0.5
    assert labels_to_measure((0.1, 0.3), 0.95) == 341  # p = 0.3
    n = labels_to_measure((1.0, 1.0), 0.95)
    assert n == 36 and proportion_interval(n, n, 0.95)[0] >= 0.9 > proportion_interval(n - 1, n - 1, 0.95)[0]
    assert labels_to_measure((0.2, 0.9), 0.8) < 402
    n = labels_to_measure((0.75, 0.85), 0.95)
    rng = np.random.default_rng(1)
    halves = [np.diff(proportion_interval(int(rng.binomial(n, 0.75)), n, 0.95))[0] / 2 for _ in range(200)]
    assert 0.045 <= np.mean(halves) <= 0.052


def _result(interval, n_target, labelled, measured=None):
    result = {"default_method": "ac_dc", "level": 0.95, "measured": measured, "flags": [],
              "estimates": [{"method": "ac_dc", "metric": "accuracy", "class": None, "estimate": 0.7,
                             "interval": interval, "withheld": None, "details": {}}]}
    return {**result, "labelling_plan": labelling_plan(result, n_target, labelled)}


def test_the_reports_say_how_many_to_label_and_show_the_measured_interval():
    advice = labelling_advice(_result([0.45, 0.85], 1000, 0))
    assert advice.startswith("To measure the accuracy within ±0.05 (95%), label about 402 randomly chosen")
    assert "more than the 120 target images analysed, so label all of them" in labelling_advice(
        _result([0.55, 0.85], 120, 30))
    assert "30 are labelled so far" in labelling_advice(_result([0.55, 0.85], 120, 30))
    assert labelling_advice(_result([0.55, 0.85], 120, 120)) is None  # all labelled: the interval speaks
    assert _result([None, None], 1000, 0)["labelling_plan"]["images"] == 402  # no interval: anything is possible
    labels = np.r_[np.ones(15, int), np.zeros(15, int)]
    probabilities = np.eye(2)[np.r_[np.ones(12, int), np.zeros(18, int)]]
    measured = measured_metrics(probabilities, labels, ["a", "b"], "b")
    result = {**_result([0.55, 0.85], 30, 30, measured), "positive_class": "b", "target": "t.csv",
              "methods": {"ac_dc": {"assumes": "x", "fails_when": "y"}}, "assumptions": [], "target_prior": None,
              "measured_note": None, "settings": {}, "checkpoint": "c", "source_val": "s"}
    lo, hi = proportion_interval(27, 30, 0.95)
    assert f"measured with the target's labels: 0.900 [{lo:.3f}, {hi:.3f}] (30 images, exact 95% interval)" in (
        headline(result))
    page = html(result)
    assert "Clopper-Pearson" in page and f"0.900 [{lo:.3f}, {hi:.3f}]" in page

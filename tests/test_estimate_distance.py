"""The distance check and ``ac_dc``: a null target passes at the nominal rate, a planted far cluster does not, and
``ac_dc`` recovers the accuracy of a model that stops reading far images while ``ac`` cannot see it."""

from __future__ import annotations

import numpy as np
import pytest

from shiftkit.errors import ConfigError, DataError
from shiftkit.estimate import DistanceCheck, distance_check_from_embeddings, estimate_performance

DIM = 16


def embeddings(rng, n, far=False):
    """Positive features (as pooled activations are), log-normal around one direction; ``far`` triples half the
    dimensions, which turns the direction away from every source image."""
    x = np.exp(0.3 * rng.standard_normal((n, DIM)))
    if far:
        x[:, : DIM // 2] *= 3.0
    return x


def test_a_null_target_fails_the_check_at_about_the_nominal_rate():
    rates, expected = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        check = distance_check_from_embeddings(embeddings(rng, 500), rng.integers(0, 2, 500),
                                               embeddings(rng, 2000), rng.integers(0, 2, 2000))
        rates.append(check.outside_fraction)
        expected.append(check.expected_outside)
    # the 99th percentile of 250 source distances per class: about 1 % (not more than 2.5 % on average), and the
    # order-statistics law of that rate (mean 1.4 %) agrees with what the null targets show
    assert 0.003 <= np.mean(rates) <= 0.025, np.mean(rates)
    assert np.mean(expected) == pytest.approx(np.mean(rates), abs=0.006)


def test_a_planted_far_cluster_fails_the_check_and_raises_the_flag():
    rng = np.random.default_rng(1)
    source, target = embeddings(rng, 500), np.r_[embeddings(rng, 700), embeddings(rng, 300, far=True)]
    check = distance_check_from_embeddings(source, rng.integers(0, 2, 500), target, rng.integers(0, 2, 1000))
    assert np.mean(~check.target_inside[700:]) >= 0.95  # the planted cluster
    assert np.mean(~check.target_inside[:700]) <= 0.03
    assert check.outside_fraction == pytest.approx(0.3, abs=0.03)


def collapse_case(seed, n_source=600, n_in=600, n_far=400):
    """A binary model with separated classes (prior 0.3/0.7). At the target, ``n_far`` images lie far from the source
    and the model calls them all class 1 with confidence 0.99, whatever they are (their labels follow the prior):
    its accuracy there is the chance level 0.7."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.3, 0.7])

    def images(n):
        y = rng.choice(2, n, p=prior)
        score = (2 * y - 1) * 1.5 + rng.standard_normal(n)  # the model's logit for class 1
        return np.column_stack([np.zeros(n), score]), y

    source_logits, source_y = images(n_source)
    inside_logits, inside_y = images(n_in)
    far_y = rng.choice(2, n_far, p=prior)
    far_logits = np.column_stack([np.zeros(n_far), np.full(n_far, np.log(99.0))])
    target_logits = np.r_[inside_logits, far_logits]
    target_y = np.r_[inside_y, far_y]
    target_emb = np.r_[embeddings(rng, n_in), embeddings(rng, n_far, far=True)]
    check = distance_check_from_embeddings(embeddings(rng, n_source), source_y, target_emb,
                                           target_logits.argmax(axis=1))
    truth = float(np.mean(target_logits.argmax(axis=1) == target_y))
    return source_logits, source_y, target_logits, check, truth


def test_ac_dc_recovers_a_collapse_that_ac_cannot_see():
    source_logits, source_y, target_logits, check, truth = collapse_case(0)
    result = estimate_performance(source_logits, source_y, target_logits, distance=check, methods=["ac", "ac_dc"],
                                  target_prior=None, bootstrap=200, seed=0)
    ac, ac_dc = result.get("ac"), result.get("ac_dc")
    assert ac.estimate - truth > 0.08  # the far images' confidence 0.99 is taken at its word
    assert abs(ac_dc.estimate - truth) < 0.03
    assert ac_dc.interval[0] <= truth <= ac_dc.interval[1]
    assert ac_dc.details["distance_bound"]["outside"] >= 380
    assert result.flag("far_from_source").raised and "ac_dc" not in result.flag("far_from_source").affects


def test_ac_dc_intervals_cover_the_truth_across_repetitions():
    hits = []
    for seed in range(20):
        source_logits, source_y, target_logits, check, truth = collapse_case(100 + seed)
        ac_dc = estimate_performance(source_logits, source_y, target_logits, distance=check, methods=["ac_dc"],
                                     target_prior=None, bootstrap=100, seed=seed).get("ac_dc")
        hits.append(ac_dc.interval[0] <= truth <= ac_dc.interval[1])
    assert np.mean(hits) >= 0.9


def test_ac_dc_is_ac_when_every_target_image_is_within_reach():
    source_logits, source_y, target_logits, check, _ = collapse_case(3)
    everyone = DistanceCheck(check.source_distances, check.target_distances, np.full(2, np.inf), check.target_pred,
                             check.threshold_sizes, check.neighbours, check.quantile)
    result = estimate_performance(source_logits, source_y, target_logits, distance=everyone,
                                  methods=["ac", "ac_dc"], target_prior=None, bootstrap=50, seed=0)
    for r in result.results:
        if r.method == "ac" and r.metric != "accuracy":
            assert result.get("ac_dc", r.metric, r.class_name).estimate == pytest.approx(r.estimate)
    assert result.get("ac_dc").estimate == pytest.approx(result.get("ac").estimate)
    assert not result.flag("far_from_source").raised


def test_bad_distance_inputs_raise_one_clear_line():
    source_logits, source_y, target_logits, check, _ = collapse_case(4)
    with pytest.raises(ConfigError, match="'ac_dc' needs a distance check"):
        estimate_performance(source_logits, source_y, target_logits, methods=["ac_dc"], bootstrap=10)
    with pytest.raises(ConfigError, match="distance: a check of"):
        estimate_performance(source_logits, source_y, target_logits[:-1], distance=check, bootstrap=10)
    with pytest.raises(DataError, match="of one width"):
        distance_check_from_embeddings(np.ones((5, 3)), [0, 1, 0, 1, 0], np.ones((4, 2)), [0, 1, 0, 1])
    default = estimate_performance(source_logits, source_y, target_logits, bootstrap=10)
    assert "ac_dc" not in default.methods and default.flag("far_from_source").status == "not_assessed"


def test_with_a_small_source_a_null_target_seldom_raises_the_flag_and_a_far_cluster_still_does():
    """78 source images (BreastMNIST's validation split is that small): the 99th percentile of a few dozen
    distances lets several per cent of a null target through, which the flag must expect, not report."""
    from shiftkit.estimate.flags import far_from_source_flag

    null_raised, far_raised = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        labels = rng.choice(2, 78, p=[0.3, 0.7])
        target = np.r_[embeddings(rng, 300), embeddings(rng, 60, far=True)]
        pred = rng.integers(0, 2, 360)
        source = embeddings(rng, 78)
        for rows, raised in ((slice(0, 300), null_raised), (slice(0, 360), far_raised)):
            check = distance_check_from_embeddings(source, labels, target[rows], pred[rows])
            flag = far_from_source_flag(int(np.sum(~check.target_inside)), len(pred[rows]), check.expected_outside,
                                        check.null_p_value())
            raised.append(flag.raised)
    assert np.mean(null_raised) <= 0.05, np.mean(null_raised)
    assert np.mean(far_raised) >= 0.9, np.mean(far_raised)


def collapsed_onto_class_1():
    """Source logits of a well-separated binary model on 400 labelled images (prevalence about 0.5), and 300 target
    images all called class 1 with confidence 0.9997, every one within the source's reach (a check that passes
    them all)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    source = np.stack([-(2 * labels - 1) * 2.0, (2 * labels - 1) * 2.0], axis=1) + rng.normal(0, 0.3, (400, 2))
    target = np.tile([[-4.0, 4.0]], (300, 1))
    within = DistanceCheck(np.zeros(400), np.zeros(300), np.full(2, np.inf), np.ones(300, dtype=int),
                           np.full(2, 200), 25, 0.99)
    return source, labels, target, within


def test_under_confident_shift_ac_dc_is_capped_by_the_prediction_rate_bound():
    """Every target image called class 1 with confidence 0.9997, inside the source's reach: the distance check cannot
    see it, yet with a source prevalence of 0.5 no classifier that calls everything class 1 is right more than half
    the time (the truth here). With the flag raised (domain AUC 0.99) ac_dc says 0.5; without it, about 1."""
    source, labels, target, within = collapsed_onto_class_1()
    for auc, capped in ((0.99, True), (0.6, False)):
        result = estimate_performance(source, labels, target, methods=["ac_dc"], distance=within, domain_auc=auc,
                                      target_prior=None, bootstrap=50)
        ac_dc = result.get("ac_dc")
        if capped:
            assert ac_dc.estimate == pytest.approx(1.0 - abs(1.0 - labels.mean()), abs=1e-9)
            assert ac_dc.details["prediction_rate_bound"]["binds"]
        else:
            assert ac_dc.estimate > 0.99 and "prediction_rate_bound" not in ac_dc.details


def test_with_a_known_prevalence_the_prediction_rate_bound_caps_ac_dc_without_any_flag():
    """A model that calls every target image class 1, confidently and within the source's reach, at a target with
    40 % class 1: nothing is flagged (domain AUC 0.6), ac says about 1, and ac_dc told the prevalence says 0.4, the
    most any classifier that calls everything class 1 can score there (the truth here, up to sampling), and its
    interval ends there."""
    source, labels, target, within = collapsed_onto_class_1()
    result = estimate_performance(source, labels, target, methods=["ac", "ac_dc"], distance=within, domain_auc=0.6,
                                  target_prior={0: 0.6, 1: 0.4}, classes=[0, 1], bootstrap=50)
    assert not result.flag("confident_shift").raised
    assert result.get("ac").estimate > 0.99
    ac_dc = result.get("ac_dc")
    assert ac_dc.estimate == pytest.approx(0.4, abs=1e-9)
    assert ac_dc.details["prediction_rate_bound"] == {"bound": pytest.approx(0.4), "binds": True}
    # ac's estimate of about 1 would stretch the pooled interval to 1; the bound holds, so the interval ends there
    assert ac_dc.interval[1] == pytest.approx(0.4) and "prediction-rate bound" in ac_dc.details["interval_from"]
    from shiftkit.report.estimate import headline

    shown = headline({**result.to_dict(), "default_method": "ac_dc", "measured": None})
    assert shown.endswith("(capped at the prediction-rate bound 0.400 at the given target prevalence)"), shown

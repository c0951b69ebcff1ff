"""The source classifier behind the prior estimates: regularisation chosen by cross-validation, its strength
reported, and a caution in the label verdict when it is too weak to estimate priors."""

from __future__ import annotations

import numpy as np

from shiftkit.shift.label import SourceClassifier, estimate_label_shift
from shiftkit.shift.profile import WEAK_CLASSIFIER, weak_classifier_caveat


def _blobs(rng, n, d, separation, classes=("a", "b", "c")):
    y = rng.integers(0, len(classes), n)
    x = rng.normal(size=(n, d))
    x[np.arange(n), y] += separation  # one informative dimension per class, the rest noise
    return x, np.array(classes)[y]


def test_cross_validation_regularises_many_noise_dimensions_and_helps_held_out():
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 240, 300, 1.5)
    auto = SourceClassifier.fit(x, y, ["a", "b", "c"], seed=0)
    fixed = SourceClassifier.fit(x, y, ["a", "b", "c"], seed=0, C=1.0, class_weight=None)
    assert auto.details["C_chosen_by"] == "cross-validated log-loss" and auto.details["C"] < 1.0
    def held_out_nll(classifier):  # what the calibration and EM read: C = 1 is over-confident on noise dimensions
        return -np.mean(classifier.held_out_logits[np.arange(len(classifier.held_out_labels)),
                                                   classifier.held_out_labels])

    assert held_out_nll(auto) < 0.8 * held_out_nll(fixed)


def test_a_weak_classifier_cautions_the_label_verdict_and_a_strong_one_does_not():
    rng = np.random.default_rng(1)
    results = {}
    for name, separation in (("weak", 0.2), ("strong", 4.0)):
        x, y = _blobs(rng, 300, 10, separation)
        classifier = SourceClassifier.fit(x, y, ["a", "b", "c"], seed=0)
        target, _ = _blobs(rng, 200, 10, separation)
        results[name] = estimate_label_shift(classifier, classifier.log_probabilities(target), bootstrap=20)
    weak = results["weak"].details["classifier"]["held_out_balanced_accuracy"]
    assert weak < WEAK_CLASSIFIER
    assert f"balanced accuracy {weak:.2f}" in weak_classifier_caveat(results["weak"])
    assert "--checkpoint" in weak_classifier_caveat(results["weak"])
    assert weak_classifier_caveat(results["strong"]) == ""


def test_a_models_own_logits_report_their_strength_too():
    logits = np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]))
    classifier = SourceClassifier.from_logits(logits, [0, 1, 1, 1], ["x", "y"])
    assert classifier.details["held_out_accuracy"] == 0.75
    assert classifier.details["held_out_balanced_accuracy"] == (1.0 + 2 / 3) / 2


def test_the_representation_that_separates_the_classes_is_chosen():
    """Two candidate representations of the same images: pure noise, and one where the classes separate. The
    cross-validated log-loss must pick the second whichever order they come in, with a finite C; a class too small
    to cross-validate falls back to the first candidate and C = "auto"."""
    from shiftkit.shift.label import choose_representation

    rng = np.random.default_rng(2)
    informative, y = _blobs(rng, 300, 20, 2.0)
    noise = rng.normal(size=(300, 20))
    for candidates in ({"noise": noise, "blocks": informative}, {"blocks": informative, "noise": noise}):
        name, c = choose_representation(candidates, y, ["a", "b", "c"], seed=0)
        assert name == "blocks" and isinstance(c, float)
    y_small = y.copy()
    y_small[:] = "a"
    y_small[:2] = ["b", "c"]  # one image each: no cross-validation
    assert choose_representation({"noise": noise, "blocks": informative}, y_small, ["a", "b", "c"]) == ("noise", "auto")
    fitted = SourceClassifier.fit_best({"noise": noise, "blocks": informative}, y, ["a", "b", "c"])
    assert fitted.details["representation"] == "blocks" and fitted.details["C_chosen_by"] == "cross-validated log-loss"
    assert fitted.details["held_out_balanced_accuracy"] > 0.6  # the informative one was fitted, not the noise

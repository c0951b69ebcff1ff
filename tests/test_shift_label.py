"""Label shift: EM+BCTS, BBSE and RLLS recover planted target priors; intervals, weights and the "no label shift"
test behave; inputs are checked. Synthetic Gaussian classes plus real PneumoniaMNIST pixels (skipped when absent)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from shiftkit.errors import ConfigError, ShiftkitError
from shiftkit.shift.label import (
    SourceClassifier,
    bbse,
    em_bcts,
    estimate_label_shift,
    fit_bcts,
    rlls,
)

SHARED = Path(os.environ.get("SHIFTKIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PNEUMONIA = SHARED / "data" / "medmnist" / "pneumoniamnist.npz"

PLANTED = np.array([0.7, 0.2, 0.1])
CLASSES = ["a", "b", "c"]


def gaussian_classes(rng: np.random.Generator, counts, d: int = 5, sep: float = 2.5):
    """Class k ~ N(sep * e_k, I_d): well separated but overlapping (Bayes accuracy about 0.93 for 3 classes)."""
    k = len(counts)
    y = np.repeat(np.arange(k), counts)
    rng.shuffle(y)
    means = np.zeros((k, d))
    means[np.arange(k), np.arange(k)] = sep
    return means[y] + rng.standard_normal((len(y), d)), y


@pytest.fixture(scope="module")
def planted():
    """Balanced source (500 per class; 30% held out), target with exactly the planted prior 0.7/0.2/0.1 (n=1000)."""
    rng = np.random.default_rng(0)
    xs, ys = gaussian_classes(rng, [500, 500, 500])
    xt, yt = gaussian_classes(rng, (PLANTED * 1000).astype(int))
    clf = SourceClassifier.fit(xs, ys, CLASSES, seed=0)
    return clf, clf.log_probabilities(xt)


# ---------------------------------------------------------------------------------------------------------------
# synthetic recovery


@pytest.mark.parametrize("method,bound", [("em_bcts", 0.07), ("bbse", 0.1), ("rlls", 0.1)])
def test_planted_prior_is_recovered(planted, method, bound):
    """L1 error < 0.07 for EM+BCTS and < 0.1 for BBSE/RLLS (over 20 seeds of this design the largest errors were
    0.06 and 0.105: EM on calibrated posteriors is the more accurate, as Alexandari et al. report)."""
    clf, target_logits = planted
    result = estimate_label_shift(clf, target_logits, method=method, bootstrap=100, seed=0)
    q = np.array([result.target_prior[c] for c in CLASSES])
    assert abs(q.sum() - 1) < 1e-9 and np.all(q >= 0)
    assert np.abs(q - PLANTED).sum() < bound, (method, q)
    # the percentile interval holds the planted prior for most classes
    inside = [result.ci[c][0] <= p <= result.ci[c][1] for c, p in zip(CLASSES, PLANTED)]
    assert sum(inside) >= 2, (method, result.ci)
    # a strong planted shift: "no label shift" rejected at the smallest p-value 100 null draws can give
    assert result.p_value < 0.01
    assert result.statistic == pytest.approx(np.abs(q - clf.source_prior).sum())
    # importance weights are q / p
    for c, p in zip(CLASSES, clf.source_prior):
        assert result.weights[c] == pytest.approx(result.target_prior[c] / p)
    assert result.weights["a"] > 1.5 and result.weights["c"] < 0.6


def test_pure_functions_agree_with_the_result(planted):
    clf, target_logits = planted
    for method, fn in (("em_bcts", em_bcts), ("bbse", bbse), ("rlls", rlls)):
        q = fn(clf.held_out_logits, clf.held_out_labels, target_logits)
        result = estimate_label_shift(clf, target_logits, method=method, bootstrap=2, seed=0)
        assert np.allclose(q, [result.target_prior[c] for c in CLASSES])


def test_result_is_deterministic_and_json_ready(planted):
    clf, target_logits = planted
    a = estimate_label_shift(clf, target_logits, bootstrap=20, seed=3)
    b = estimate_label_shift(clf, target_logits, bootstrap=20, seed=3)
    c = estimate_label_shift(clf, target_logits, bootstrap=20, seed=4)
    assert a.to_dict() == b.to_dict()
    assert a.ci != c.ci  # the seed drives the bootstrap
    payload = json.loads(json.dumps(a.to_dict()))
    for key in ("method", "classes", "source_prior", "target_prior", "ci", "weights", "statistic", "p_value",
                "n_source", "n_target", "bootstrap", "seed", "details"):
        assert key in payload
    assert payload["n_source"] == 1500 and payload["n_target"] == 1000  # cross-fitting holds out every source image


def test_no_label_shift_rejects_at_about_the_nominal_rate():
    """Target drawn with the source prior: at alpha = 0.05 at most 15% of 30 seeded repetitions reject."""
    rejections = {"em_bcts": 0, "bbse": 0}
    for rep in range(30):
        rng = np.random.default_rng(1000 + rep)
        ys = rng.integers(0, 3, 600)
        xs = _draw_given(rng, ys)
        yt = rng.integers(0, 3, 400)
        xt = _draw_given(rng, yt)
        clf = SourceClassifier.fit(xs, ys, CLASSES, seed=rep)
        logits = clf.log_probabilities(xt)
        for method in rejections:
            result = estimate_label_shift(clf, logits, method=method, bootstrap=1, null_draws=100, seed=rep)
            rejections[method] += result.p_value < 0.05
    for method, count in rejections.items():
        assert count / 30 <= 0.15, (method, count)


def _draw_given(rng, y, d: int = 5, sep: float = 2.5):
    means = np.zeros((3, d))
    means[np.arange(3), np.arange(3)] = sep
    return means[y] + rng.standard_normal((len(y), d))


# ---------------------------------------------------------------------------------------------------------------
# pieces


def test_bcts_recovers_a_planted_temperature_and_bias():
    """Labels drawn from softmax(s); the model reports 2.5 s - bias: BCTS finds T = 2.5 and undoes the bias."""
    rng = np.random.default_rng(1)
    s = rng.standard_normal((4000, 3)) * 2
    y = (np.cumsum(np.exp(s) / np.exp(s).sum(1, keepdims=True), axis=1) > rng.random((4000, 1))).argmax(axis=1)
    bias = np.array([0.5, -0.3, -0.2])
    temperature, fitted_bias = fit_bcts(2.5 * s - bias, y)
    assert temperature == pytest.approx(2.5, rel=0.08)
    assert np.allclose(fitted_bias - fitted_bias.mean(), (bias - bias.mean()) / 2.5, atol=0.08)


def test_em_with_exact_posteriors_recovers_the_prior():
    """Posteriors from the true class-conditionals (source prior 1/3 each) on a 0.7/0.2/0.1 target."""
    rng = np.random.default_rng(2)
    x, y = gaussian_classes(rng, [3500, 1000, 500])
    means = np.zeros((3, 5))
    means[np.arange(3), np.arange(3)] = 2.5
    log_lik = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)
    xv, yv = gaussian_classes(rng, [1000, 1000, 1000])
    log_lik_v = -0.5 * ((xv[:, None, :] - means[None]) ** 2).sum(-1)
    q = em_bcts(log_lik_v, yv, log_lik)
    assert np.abs(q - PLANTED).sum() < 0.03


def test_rlls_regularisation_shrinks_towards_the_source_prior(planted):
    clf, target_logits = planted
    loose = rlls(clf.held_out_logits, clf.held_out_labels, target_logits)
    tight = rlls(clf.held_out_logits, clf.held_out_labels, target_logits, reg=1e4)
    p = clf.source_prior
    assert np.abs(tight - p).sum() < 0.5 * np.abs(loose - p).sum()
    assert abs(tight.sum() - 1) < 1e-9 and np.all(tight >= 0)


def test_bbse_and_rlls_solve_an_exact_asymmetric_confusion_system():
    """Held-out: class 0 predicted right 90%, class 1 70% (C = [[.45, .15], [.05, .35]] as P(yhat, y)); a target
    with prior 0.2/0.8 has prediction rates C w = (0.42, 0.58) exactly, so BBSE must return 0.2/0.8 (a transposed
    confusion matrix would give 0.37/0.63)."""
    hard = lambda pred: np.log(np.where(np.eye(2)[pred] > 0, 0.9, 0.1))  # noqa: E731
    val_pred = np.array([0] * 90 + [1] * 10 + [0] * 30 + [1] * 70)
    val_labels = np.array([0] * 100 + [1] * 100)
    target_pred = np.array([0] * 42 + [1] * 58)
    q = bbse(hard(val_pred), val_labels, hard(target_pred))
    assert np.allclose(q, [0.2, 0.8], atol=1e-9)
    assert np.allclose(rlls(hard(val_pred), val_labels, hard(target_pred)), [0.2, 0.8], atol=0.01)


def test_bbse_clips_negative_weights_to_a_distribution():
    """A target whose prediction rates are impossible under the confusion matrix still yields a distribution."""
    val_logits = np.log(np.array([[0.9, 0.1]] * 50 + [[0.2, 0.8]] * 50))
    val_labels = np.array([0] * 45 + [1] * 5 + [1] * 45 + [0] * 5)
    target_logits = np.log(np.array([[0.9, 0.1]] * 100))  # every target predicted class 0: beyond C's range
    q = bbse(val_logits, val_labels, target_logits)
    assert abs(q.sum() - 1) < 1e-12 and np.all(q >= 0) and q[0] == pytest.approx(1.0)


def test_from_logits_wraps_a_user_model(planted):
    clf, target_logits = planted
    wrapped = SourceClassifier.from_logits(clf.held_out_logits, clf.held_out_labels, CLASSES)
    a = estimate_label_shift(wrapped, target_logits, method="bbse", bootstrap=10, seed=0)
    b = estimate_label_shift(clf, target_logits, method="bbse", bootstrap=10, seed=0)
    assert a.target_prior == b.target_prior
    with pytest.raises(ConfigError, match="from_logits"):
        wrapped.log_probabilities(np.zeros((3, 5)))


def test_explicit_held_out_split_and_class_names():
    rng = np.random.default_rng(5)
    xs, ys = gaussian_classes(rng, [100, 100, 100])
    xv, yv = gaussian_classes(rng, [40, 40, 40])
    names = np.array(CLASSES)
    clf = SourceClassifier.fit(xs, names[ys], CLASSES, held_out=(xv, names[yv]))
    assert clf.details["n_fit"] == 300 and len(clf.held_out_labels) == 120
    assert np.array_equal(clf.held_out_labels, yv)
    assert clf.log_probabilities(xv).shape == (120, 3)


# ---------------------------------------------------------------------------------------------------------------
# errors


def test_class_without_held_out_examples_is_a_clear_error():
    logits = np.log(np.full((10, 3), 1 / 3))
    with pytest.raises(ValueError, match="no held-out examples"):
        SourceClassifier.from_logits(logits, [0, 1] * 5, CLASSES)
    with pytest.raises(ValueError, match="no held-out examples"):
        em_bcts(logits, [0, 1] * 5, logits)


def test_mismatched_class_count_is_a_clear_error(planted):
    clf, target_logits = planted
    with pytest.raises(ValueError, match="columns but there are 3 classes"):
        estimate_label_shift(clf, target_logits[:, :2])
    with pytest.raises(ValueError, match="3 columns but there are 2 classes"):
        SourceClassifier.from_logits(clf.held_out_logits, clf.held_out_labels, ["x", "y"])
    with pytest.raises(ValueError, match="columns"):
        bbse(clf.held_out_logits, clf.held_out_labels, target_logits[:, :2])


def test_nan_is_a_clear_error(planted):
    clf, target_logits = planted
    bad = target_logits.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimate_label_shift(clf, bad)
    with pytest.raises(ValueError, match="NaN"):
        SourceClassifier.fit(np.full((10, 2), np.nan), [0, 1] * 5, ["x", "y"])
    # user errors are also ShiftkitErrors, so the CLI prints one line
    with pytest.raises(ShiftkitError):
        rlls(clf.held_out_logits, clf.held_out_labels, bad)


def test_unknown_labels_and_options_are_clear_errors(planted):
    clf, target_logits = planted
    with pytest.raises(ValueError, match="'z' is not one of the classes"):
        SourceClassifier.fit(np.zeros((6, 2)), ["a", "b", "z"] * 2, CLASSES)
    with pytest.raises(ConfigError, match="unknown label-shift method"):
        estimate_label_shift(clf, target_logits, method="oracle")
    with pytest.raises(ValueError, match="fewer than 2 examples"):
        SourceClassifier.fit(np.zeros((5, 2)), [0, 0, 1, 1, 2], CLASSES)


# ---------------------------------------------------------------------------------------------------------------
# real data: PneumoniaMNIST pixels


@pytest.fixture(scope="module")
def pneumonia():
    if not PNEUMONIA.is_file():
        pytest.skip(f"PneumoniaMNIST not found at {PNEUMONIA} (set SHIFTKIT_SHARED to the shared folder)")
    from sklearn.decomposition import PCA
    from sklearn.model_selection import train_test_split

    data = np.load(PNEUMONIA)

    def pixels(split):
        images = data[f"{split}_images"]
        return images.reshape(len(images), -1).astype(np.float64) / 255.0

    def labels(split):
        return data[f"{split}_labels"].ravel().astype(np.int64)

    pca = PCA(30, random_state=0).fit(pixels("train"))
    x_train, x_val, x_test = (pca.transform(pixels(s)) for s in ("train", "val", "test"))
    y_train = labels("train")
    # 40% of train (stratified) is held back as the target pool; the rest fits the classifier; val is held out
    x_fit, x_pool, y_fit, y_pool = train_test_split(x_train, y_train, test_size=0.4, stratify=y_train,
                                                    random_state=0)
    clf = SourceClassifier.fit(x_fit, y_fit, ["normal", "pneumonia"], held_out=(x_val, labels("val")))
    return clf, x_pool, y_pool, x_test, labels("test")


def _resample(rng, y, prior):
    """Indices (without replacement) with exactly the planted prior, as many as the scarcer class allows."""
    members = [np.flatnonzero(y == c) for c in range(len(prior))]
    n = int(min(len(m) / p for m, p in zip(members, prior)))
    return np.concatenate([rng.choice(m, int(round(n * p)), replace=False) for m, p in zip(members, prior)])


@pytest.mark.parametrize("prior", [(0.2, 0.8), (0.6, 0.4)])
@pytest.mark.parametrize("method,bound", [("em_bcts", 0.12), ("bbse", 0.16), ("rlls", 0.16)])
def test_pneumoniamnist_planted_prior_is_recovered(pneumonia, prior, method, bound):
    """Real chest X-rays, features = 30 PCA components of the pixels (no network). Source: the train split fits the
    classifier, val (135 normal / 389 pneumonia) calibrates it. Target: a held-back part of train resampled to the
    planted prior (775 images for 0.2/0.8, 258 for 0.6/0.4). L1 error < 0.12 for EM+BCTS, < 0.16 for BBSE/RLLS
    (over 5 seeds of the split the largest errors were 0.11 and 0.15, the small 0.6/0.4 target being the noisy
    one). The official test split is not used as the target here: it comes from a different acquisition, so
    P(X|Y) differs and the label-shift assumption fails (see the next test)."""
    clf, x_pool, y_pool, _, _ = pneumonia
    idx = _resample(np.random.default_rng(0), y_pool, prior)
    result = estimate_label_shift(clf, clf.log_probabilities(x_pool[idx]), method=method, bootstrap=50, seed=0)
    q = np.array([result.target_prior["normal"], result.target_prior["pneumonia"]])
    assert np.abs(q - np.array(prior)).sum() < bound, (method, prior, q)
    assert result.source_prior["normal"] == pytest.approx(135 / 524)
    if prior == (0.6, 0.4):  # far from the source's 0.26/0.74: the shift is detected
        assert result.p_value < 0.05


def test_pneumoniamnist_official_test_split_violates_the_assumption(pneumonia):
    """On the official test split (accuracy drops from about 0.94 on val to about 0.79) the estimators are biased
    towards 'pneumonia' (measured: 0.09 vs planted 0.2 normal, 0.37 vs 0.6), but they still order two planted
    priors correctly: the estimate moves with the prior even when P(X|Y) has shifted."""
    clf, _, _, x_test, y_test = pneumonia
    estimates = []
    for prior in ((0.2, 0.8), (0.6, 0.4)):
        idx = _resample(np.random.default_rng(0), y_test, prior)
        q = em_bcts(clf.held_out_logits, clf.held_out_labels, clf.log_probabilities(x_test[idx]))
        estimates.append(q[0])
    assert estimates[1] - estimates[0] > 0.2, estimates


def test_a_class_absent_from_the_target_gets_an_interval_from_zero(pneumonia):
    """Targets of 300 pneumonia images (normal absent, truth exactly 0). EM approaches the boundary and never
    reaches it: the estimate used to end at 1e-11 and the interval's lower end at 1e-300, excluding the truth in
    every run. Now priors below one in a million are 0, and the interval starts at 0 in at least 4 of these 5 seeds
    (seed 2 is the one that does not: it estimates 0.02, its interval from 0.0016)."""
    clf, x_pool, y_pool, _, _ = pneumonia
    starts_at_zero = 0
    for seed in range(5):
        idx = np.random.default_rng(seed).choice(np.flatnonzero(y_pool == 1), 300, replace=False)
        result = estimate_label_shift(clf, clf.log_probabilities(x_pool[idx]), bootstrap=100, seed=seed)
        assert result.target_prior["normal"] < 0.05, result.target_prior
        starts_at_zero += result.ci["normal"][0] == 0.0
        assert result.p_value < 0.05  # 0 against the source's 26 % normal: the shift is found
    assert starts_at_zero >= 4


def test_source_classifier_logits_stay_finite_on_well_separated_high_dimensional_embeddings():
    # regression: predict_log_proba gave -inf where probabilities underflowed (1280-d embeddings, 800 images)
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 1, (400, 1280)), rng.normal(3.0, 1, (400, 1280))])
    y = np.repeat([0, 1], 400)
    classifier = SourceClassifier.fit(x, y, ["a", "b"], seed=0)
    target = classifier.log_probabilities(x[::7] + 0.1)
    for logits in (classifier.held_out_logits, target):
        assert np.isfinite(logits).all()
        assert np.allclose(np.exp(logits).sum(axis=1), 1.0)
    # the finite logits still give the right answer: the target holds every 7th row, 58 of class a out of 115
    estimate = estimate_label_shift(classifier, target, bootstrap=20, seed=0)
    assert abs(estimate.target_prior["a"] - np.mean(y[::7] == 0)) < 0.02, estimate.target_prior
    assert estimate.ci["a"][0] <= np.mean(y[::7] == 0) <= estimate.ci["a"][1]


# ---------------------------------------------------------------------------------------------------------------
# the test's power: "none" only when it could have said otherwise (issue 13, item 17)

def _one_class_target(n_target: int):
    """A 50/50 source (40 + 40, 30% held out) and a target of ``n_target`` images, all of class a."""
    xs, ys = gaussian_classes(np.random.default_rng(0), [40, 40])
    clf = SourceClassifier.fit(xs, ys, ["a", "b"], seed=0)
    xt, _ = gaussian_classes(np.random.default_rng(1), [n_target, 0])
    return clf, clf.log_probabilities(xt)


def test_a_one_class_target_too_small_to_test_is_undecided_not_none():
    from shiftkit.shift.profile import label_verdict

    clf, logits = _one_class_target(5)
    result = estimate_label_shift(clf, logits, bootstrap=200, seed=0)
    assert result.target_prior["a"] > 0.95 and result.p_value >= 0.05  # the reported situation: prior 1.00, p large
    power = result.details["power"]
    assert power["max_total_variation"] == pytest.approx(0.5) and power["n_target"] == 5
    assert power["detectable_total_variation"] >= power["max_total_variation"]  # no target of 5 could reject
    assert not power["detects_strong_change"]
    verdict = label_verdict(result)
    assert verdict.level == "undecided", verdict
    assert "cannot decide with 5 target images" in verdict.reason and "a 1.00" in verdict.reason
    clf, logits = _one_class_target(30)  # the same shift with enough images is found
    assert label_verdict(estimate_label_shift(clf, logits, bootstrap=200, seed=0)).level == "strong"


def test_too_few_null_draws_cannot_reject_and_the_verdict_says_so(planted):
    """bootstrap=10: the smallest p-value is 1/11 > 0.05, so even the planted 0.7/0.2/0.1 shift used to read "none"."""
    from shiftkit.shift.profile import label_verdict

    clf, target_logits = planted
    result = estimate_label_shift(clf, target_logits, bootstrap=10, seed=0)
    assert result.details["power"]["detectable_total_variation"] is None
    verdict = label_verdict(result)
    assert verdict.level == "undecided" and "--bootstrap" in verdict.reason, verdict


def test_no_shift_on_a_large_target_is_none_and_says_what_it_could_detect():
    from shiftkit.shift.profile import label_verdict

    xs, ys = gaussian_classes(np.random.default_rng(0), [150, 150])
    clf = SourceClassifier.fit(xs, ys, ["a", "b"], seed=0)
    xt, _ = gaussian_classes(np.random.default_rng(1), [150, 150])
    result = estimate_label_shift(clf, clf.log_probabilities(xt), bootstrap=200, seed=0)
    verdict = label_verdict(result)
    detectable = result.details["power"]["detectable_total_variation"]
    assert verdict.level == "none" and f"detects a total variation above {detectable:.2f}" in verdict.reason
    assert result.details["power"]["detects_strong_change"] and detectable < 0.10


def test_the_detectable_total_variation_is_where_the_p_value_crosses_alpha():
    from shiftkit.shift.label import detection_power
    from shiftkit.shift.stats import permutation_p_value

    null = np.random.default_rng(0).gamma(2.0, 0.1, 199)
    for draws in (20, 40, 199):
        sub = null[:draws]
        threshold = 2 * detection_power(sub, np.array([0.5, 0.5]), 0.05, 10)["detectable_total_variation"]
        assert permutation_p_value(threshold, sub) >= 0.05
        assert permutation_p_value(np.nextafter(threshold, np.inf), sub) < 0.05
    # 19 draws: the smallest p-value is 1/20 = 0.05, which does not reject at 0.05
    assert detection_power(null[:19], np.array([0.5, 0.5]), 0.05, 10)["detectable_total_variation"] is None

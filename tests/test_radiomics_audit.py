"""The radiomics audit (issue 19, item 3): planted site effects gone after ComBat fitted inside the folds while a
planted biological effect survives; a harmonizer fitted on all rows caught by the leakage check; a covariance-only
site effect that ComBat leaves and CovBat removes; ICC/CCC known answers; unseen sites and one-case sites in one
line each; the report end to end."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shiftkit.audit import cv_metrics
from shiftkit.audit.biology import preservation, site_adjusted_effects
from shiftkit.audit.downstream import binary_task, downstream_loso
from shiftkit.audit.fold_harmonize import UnseenSiteRefused, fit_apply
from shiftkit.audit.repeatability import band, ccc, icc_3_1, repeatability
from shiftkit.audit.site_classifier import site_classifier_check
from shiftkit.cli import app
from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.combat import ComBat, LeakageWarning
from shiftkit.harmonize.combat.covbat import CovBat
from shiftkit.harmonize.combat.unseen import harmonize_unseen_site

runner = CliRunner()
SITES = ("ge", "philips", "siemens")


def planted(seed: int, per_site: int = 60, p: int = 16, site_features: int = 8, bio: int = 3, d: float = 1.2,
            prevalence: tuple[float, ...] = (0.5, 0.5, 0.5)):
    """Features 0..site_features-1: a site location and scale effect; features p-bio..p-1: a label effect of d
    (in noise SDs); the label's prevalence per site as given."""
    rng = np.random.default_rng(seed)
    index = np.repeat(np.arange(len(SITES)), per_site)
    sites = np.array(SITES)[index]
    label = (rng.random(len(index)) < np.array(prevalence)[index]).astype(int)
    x = rng.normal(size=(len(index), p))
    x[:, p - bio:] += d * label[:, None]
    x[:, :site_features] += np.array([0.0, 2.0, -1.5])[index][:, None]
    x[:, :site_features] *= np.array([1.0, 2.0, 0.6])[index][:, None]
    return 10.0 + x, sites, label


def equicorrelated(seed: int, per_site: int = 100, p: int = 20, rho=(0.0, 0.6, 0.3)):
    """Same means and per-feature variances at every site; only the correlation between features differs."""
    rng = np.random.default_rng(seed)
    blocks = []
    for r in rho:
        shared = rng.normal(size=(per_site, 1))
        blocks.append(np.sqrt(1 - r) * rng.normal(size=(per_site, p)) + np.sqrt(r) * shared)
    return 5.0 + 2.0 * np.vstack(blocks), np.repeat(SITES, per_site)


# ----------------------------------------------------------------------------- site classifier and biology


def test_combat_inside_the_folds_brings_the_site_classifier_to_chance_and_the_planted_biology_survives():
    x, sites, label = planted(seed=0)
    check = site_classifier_check(x, sites, methods=("none", "combat"), bootstrap=100)
    chance = check["chance"]["balanced_accuracy"]
    assert chance == pytest.approx(1 / 3) and check["chance"]["auc"] == 0.5
    before = check["methods"]["none"]["in_fold"]["linear"]
    after = check["methods"]["combat"]["in_fold"]["linear"]
    assert before["balanced_accuracy"] > 0.9 and before["above_chance"], before
    assert after["balanced_accuracy"] < chance + 0.1 and not after["above_chance"], after
    assert after["auc"] < 0.62 < 0.95 < before["auc"]

    combat = ComBat().fit_transform(x, sites)  # no covariate: the label is independent of the site here
    bio = preservation({"none": x, "combat": combat}, [f"f{j}" for j in range(x.shape[1])], label, kind="binary",
                       variable="label", sites=sites)
    significant = {row["feature"] for row in bio["features"] if row["combat"]["significant"]}
    assert {"f13", "f14", "f15"} <= significant and len(significant - {"f13", "f14", "f15"}) <= 1
    for row in bio["features"][-3:]:  # Cohen's d of the planted 1.2 (SE about 0.16), unchanged by ComBat
        assert row["none"]["effect"] == pytest.approx(1.2, abs=0.5)
        assert row["combat"]["effect"] == pytest.approx(row["none"]["effect"], abs=0.05)
    assert bio["summary"]["combat"]["versus_site_adjusted"]["share_kept"] == 1.0


def test_site_adjusted_effect_separates_biology_from_a_prevalence_confounded_site():
    """Prevalence 10 % / 50 % / 90 % by site and a site location effect on every feature: the raw label effect is
    mostly the site's, the within-site effect is the planted d (0 on the null features)."""
    rng = np.random.default_rng(1)
    index = np.repeat(np.arange(3), 150)
    label = (rng.random(len(index)) < np.array([0.1, 0.5, 0.9])[index]).astype(int)
    x = rng.normal(size=(len(index), 6)) + 3.0 * index[:, None]
    x[:, 0] += 0.8 * label
    sites = np.array(SITES)[index]
    raw = preservation({"none": x}, list("abcdef"), label, kind="binary", variable="label", sites=sites)
    effect, p = site_adjusted_effects(x, label, "binary", sites)
    assert effect[0] == pytest.approx(0.8, abs=0.25) and p[0] < 1e-6
    assert np.all(np.abs(effect[1:]) < 0.3)
    assert all(abs(row["none"]["effect"]) > 1.0 for row in raw["features"][1:])  # confounded: large but not biology
    assert raw["association_with_site"] > 0.6


# ------------------------------------------------------------------------------------------------ leakage


def prevalence_shifted(seed: int):
    rng = np.random.default_rng(seed)
    index = np.repeat(np.arange(4), 100)
    sites = np.array([f"s{i}" for i in index])
    y = (rng.random(len(index)) < np.array([0.15, 0.35, 0.65, 0.85])[index]).astype(int)
    x = rng.normal(size=(len(index), 30))
    x[:, :5] += 0.8 * y[:, None]
    x += rng.normal(0, 1, (4, 30))[index]
    x *= np.array([1.0, 1.5, 0.7, 1.2])[index][:, None]
    return x, sites, y


def test_a_harmonizer_fitted_on_all_rows_with_the_outcome_is_flagged_and_an_honest_one_is_not():
    """The planted leak: ComBat fitted on every row (held-out sites included) preserving the label as a covariate,
    then leave-one-site-out. The check compares it with the in-fold fit and flags the optimistic AUC; the same
    shortcut without the label (no label information) is not flagged."""
    x, sites, y = prevalence_shifted(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeakageWarning)
        leaky = ComBat().fit_transform(x, sites, y[:, None].astype(float))
    result = downstream_loso(x, sites, y, all_rows={"combat": leaky}, methods=("none", "combat"), bootstrap=200)
    flag = result["leakage"]["combat"]
    assert flag["optimistic"] and flag["flagged"] and flag["difference"] > 0.05, flag
    in_fold = result["methods"]["combat"]["in_fold"]["pooled_auc"]
    assert result["methods"]["combat"]["all_rows"]["pooled_auc"] > in_fold + 0.05

    label_free = ComBat().fit_transform(x, sites)
    honest = downstream_loso(x, sites, y, all_rows={"combat": label_free}, methods=("combat",), bootstrap=200)
    assert not honest["leakage"]["combat"]["flagged"], honest["leakage"]
    assert abs(honest["leakage"]["combat"]["difference"]) < 0.02


def test_the_all_rows_site_classifier_shortcut_is_flagged_when_it_understates_the_site_signal():
    x, sites, _ = planted(seed=2, per_site=50, p=30, site_features=30)
    everything = ComBat().fit_transform(x, sites)
    check = site_classifier_check(x, sites, methods=("combat",), all_rows={"combat": everything}, bootstrap=100)
    entry = check["methods"]["combat"]
    assert entry["all_rows"]["linear"]["balanced_accuracy"] < entry["in_fold"]["linear"]["balanced_accuracy"]
    assert entry["leakage"]["linear"]["flagged"], entry["leakage"]


# ------------------------------------------------------------------------------------------------- CovBat


def test_covbat_removes_a_covariance_site_effect_that_combat_leaves():
    x, sites = equicorrelated(seed=3)
    check = site_classifier_check(x, sites, methods=("none", "combat", "covbat"), bootstrap=100)
    chance = check["chance"]["balanced_accuracy"]
    combat_q = check["methods"]["combat"]["in_fold"]["quadratic"]
    covbat_q = check["methods"]["covbat"]["in_fold"]["quadratic"]
    assert combat_q["above_chance"] and combat_q["balanced_accuracy"] > chance + 0.15, combat_q
    assert covbat_q["balanced_accuracy"] < min(chance + 0.1, combat_q["balanced_accuracy"] - 0.15), covbat_q
    assert check["methods"]["combat"]["in_fold"]["linear"]["balanced_accuracy"] < chance + 0.1  # no mean signal

    def mean_correlation(rows):  # noqa: ANN001, ANN202
        c = np.corrcoef(rows.T)
        return c[np.triu_indices_from(c, 1)].mean()

    combat, covbat = ComBat().fit_transform(x, sites), CovBat().fit_transform(x, sites)
    assert np.ptp([mean_correlation(combat[sites == s]) for s in SITES]) > 0.5
    assert np.ptp([mean_correlation(covbat[sites == s]) for s in SITES]) < 0.08
    for s in SITES:  # CovBat keeps ComBat's per-feature location and scale
        np.testing.assert_allclose(covbat[sites == s].mean(0), combat[sites == s].mean(0), atol=0.25)


def test_covbat_components_follow_the_variance_share_and_transform_matches_the_fit():
    x, sites = equicorrelated(seed=4, per_site=60)
    model = CovBat(variance=0.5).fit(x, sites)
    cumulative = np.cumsum(model.explained_variance_ratio_)
    assert cumulative[model.k_ - 1] > 0.5 >= (cumulative[model.k_ - 2] if model.k_ > 1 else 0)
    np.testing.assert_allclose(model.transform(x, sites), CovBat(variance=0.5).fit_transform(x, sites))
    assert CovBat(n_components=3).fit(x, sites).k_ == 3
    with pytest.raises(ConfigError, match="variance must be in"):
        CovBat(variance=1.5)


# --------------------------------------------------------------------------------------------- ICC and CCC


def textbook_icc31(y: list[list[float]]) -> float:
    """Shrout & Fleiss ICC(3,1) from the two-way ANOVA sums of squares, written out with loops."""
    n, k = len(y), len(y[0])
    grand = sum(sum(row) for row in y) / (n * k)
    ss_rows = k * sum((sum(row) / k - grand) ** 2 for row in y)
    ss_cols = n * sum((sum(y[i][j] for i in range(n)) / n - grand) ** 2 for j in range(k))
    ss_total = sum((y[i][j] - grand) ** 2 for i in range(n) for j in range(k))
    ms_rows, ms_error = ss_rows / (n - 1), (ss_total - ss_rows - ss_cols) / ((n - 1) * (k - 1))
    return (ms_rows - ms_error) / (ms_rows + (k - 1) * ms_error)


def test_icc_and_ccc_known_answers():
    rng = np.random.default_rng(5)
    subject = rng.normal(0, 2, size=(300, 1))
    identical = np.repeat(subject, 2, axis=1)
    reliable = subject + rng.normal(0, 1, size=(300, 3))  # ICC = 4 / (4 + 1) = 0.8
    noise = rng.normal(size=(300, 2))
    offset = identical + np.array([0.0, 1.0])  # scan 2 reads 1 higher
    values = np.stack([identical, np.hstack([reliable[:, :2]]), noise, offset], axis=2)  # 300 x 2 x 4
    icc, low, high = icc_3_1(values)
    assert icc[0] == pytest.approx(1.0) and icc[3] == pytest.approx(1.0)  # consistency ignores the offset
    assert icc[1] == pytest.approx(0.8, abs=0.06) and low[1] < icc[1] < high[1]
    assert abs(icc[2]) < 0.15 and low[2] < 0 < high[2]
    for j in range(4):
        assert icc[j] == pytest.approx(textbook_icc31(values[:, :, j].tolist()), abs=1e-12)
    three = icc_3_1(reliable[:, :, None])[0][0]
    assert three == pytest.approx(textbook_icc31(reliable.tolist()), abs=1e-12) and three == pytest.approx(0.8,
                                                                                                          abs=0.06)
    concordance = ccc(values[:, 0, :], values[:, 1, :])
    assert concordance[0] == pytest.approx(1.0)
    variance = subject.var()
    assert concordance[3] == pytest.approx(2 * variance / (2 * variance + 1.0))  # Lin: the offset is penalised
    assert [band(v) for v in (0.3, 0.6, 0.8, 0.95)] == ["poor", "moderate", "good", "excellent"]


def test_repeatability_pairs_the_scans_of_each_patient():
    rng = np.random.default_rng(6)
    patients = np.repeat([f"p{i}" for i in range(80)], 2)
    truth = np.repeat(rng.normal(0, 3, size=(80, 1)), 2, axis=0)
    x = np.hstack([truth + rng.normal(0, 0.5, size=(160, 1)), rng.normal(size=(160, 1))])
    order = rng.permutation(160)  # scans in any order in the table
    result = repeatability({"none": x[order]}, ["stable", "noise"], patients[order], "patient")
    assert result["n_patients"] == 80 and result["repeats"] == 2
    stable, noise = result["features"]
    assert stable["none"]["icc_band"] == "excellent" and noise["none"]["icc_band"] == "poor"
    assert result["summary"]["none"]["icc"]["bands"] == {"poor": 1, "moderate": 0, "good": 0, "excellent": 1}
    assert "not_measured" in repeatability({"none": x}, ["a", "b"], np.arange(160).astype(str), "patient")


# --------------------------------------------------------------------------- unseen sites, one-case sites


def test_an_unseen_site_is_mapped_by_its_own_location_and_scale_or_refused_in_one_line():
    x, sites, _ = planted(seed=7, per_site=40)
    seen = sites != "siemens"
    model = ComBat(eb=False).fit(x[seen], sites[seen])
    new = harmonize_unseen_site(model, x[~seen], site="siemens")
    pooled_mean = model.grand_mean_ * model.scale_ + model.center_
    np.testing.assert_allclose(new.mean(0), pooled_mean, atol=1e-9)  # without EB: exactly the pooled location
    np.testing.assert_allclose(new.std(0, ddof=1), np.sqrt(model.var_pooled_) * model.scale_, rtol=1e-9)
    with pytest.raises(DataError, match="was not in the data ComBat was fitted on"):
        model.transform(x[~seen], sites[~seen])
    with pytest.raises(DataError) as one_case:
        harmonize_unseen_site(model, x[~seen][:1], site="siemens")
    assert str(one_case.value) == ("site 'siemens' has 1 row(s); ComBat needs at least 2 rows of a site it was not "
                                   "fitted on to estimate that site's location and scale")
    covbat = CovBat().fit(x[seen], sites[seen])
    assert covbat.transform_unseen(x[~seen], "siemens").shape == (40, x.shape[1])
    with pytest.raises(DataError, match="was not in the data ComBat was fitted on"):
        covbat.transform(x[~seen], sites[~seen])
    train, test = np.flatnonzero(seen), np.flatnonzero(~seen)
    with pytest.raises(UnseenSiteRefused, match="site 'siemens' is not in the training rows"):
        fit_apply("combat", x, sites, None, train, test, policy="refuse")


def test_leave_one_site_out_reports_a_one_case_site_and_keeps_the_others():
    x, sites, y = prevalence_shifted(seed=8)
    keep = np.ones(len(sites), dtype=bool)
    keep[np.flatnonzero(sites == "s3")[1:]] = False  # site s3 keeps a single case
    result = downstream_loso(x[keep], sites[keep], y[keep], methods=("none", "combat"), bootstrap=0)
    combat = result["methods"]["combat"]["in_fold"]
    assert combat["sites"]["s3"]["note"].startswith("not harmonized: site 's3' has 1 row(s)")
    assert all("auc" in combat["sites"][s] for s in ("s0", "s1", "s2"))
    assert combat["n_predicted"] == 300 and result["methods"]["none"]["in_fold"]["n_predicted"] == 301
    assert result["notes"] == ["site 's3' has 1 row(s) in the task: left out of every training fold (ComBat needs 2 "
                               "rows per site); it is still held out and predicted where it can be"]
    refused = downstream_loso(x, sites, y, methods=("none", "combat"), policy="refuse", bootstrap=0)
    assert refused["methods"]["combat"]["refused"].startswith("site 's0' is not in the training rows")
    assert refused["methods"]["none"]["in_fold"]["pooled_auc"] is not None


def test_binary_task_from_a_multiclass_label():
    labels = np.array(["mel", "nv", "bkl", "nv", "mel", "bcc"])
    rows, y, task = binary_task(labels, "mel", ("nv",))
    assert rows.tolist() == [0, 1, 3, 4] and y.tolist() == [1, 0, 0, 1] and task["n_positive"] == 2
    assert binary_task(labels, "mel")[2]["negative"] == ["bcc", "bkl", "nv"]
    with pytest.raises(ConfigError, match="the label has 4 classes"):
        binary_task(labels, None)
    with pytest.raises(ConfigError, match="label 'melanoma' does not occur"):
        binary_task(labels, "melanoma")


def test_the_bootstrap_auc_is_scikit_learns():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(9)
    y = rng.integers(0, 3, 400)
    proba = rng.dirichlet([1, 1, 1], 400)
    proba[np.arange(400), y] += 0.3
    proba = np.round(proba / proba.sum(1, keepdims=True), 2)  # ties on purpose
    proba /= proba.sum(1, keepdims=True)
    assert cv_metrics.auc(y, proba) == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"), abs=1e-12)
    assert cv_metrics.auc(y == 1, proba[:, 1]) == pytest.approx(roc_auc_score(y == 1, proba[:, 1]), abs=1e-12)


# --------------------------------------------------------------------------------------------- end to end


def write_table(path: Path, x: np.ndarray, sites, label, patients=None, extra: dict | None = None) -> Path:
    names = [f"original_firstorder_f{j}" for j in range(x.shape[1])]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "site", "label", *(["patient"] if patients is not None else []), *(extra or {}),
                         *names])
        for i in range(len(x)):
            writer.writerow([f"c{i}", sites[i], label[i], *([patients[i]] if patients is not None else []),
                             *(v[i] for v in (extra or {}).values()), *(repr(float(v)) for v in x[i])])
    return path


def test_cli_report_end_to_end_with_test_retest_and_a_small_site(tmp_path):
    """Two scans per patient at one site: ICC appears; the label has three classes and the task is mel vs nv;
    a site with two rows is left out with one line (--drop-small-sites)."""
    rng = np.random.default_rng(10)
    x, sites, label01 = planted(seed=10, per_site=24, p=10, site_features=5, bio=2, d=1.5)
    label = np.where(label01 == 1, "mel", np.where(rng.random(len(label01)) < 0.8, "nv", "bkl"))
    x = np.repeat(x, 2, axis=0) + rng.normal(0, 0.1, size=(2 * len(x), x.shape[1]))  # test-retest pairs
    sites, label = np.repeat(sites, 2), np.repeat(label, 2)
    patients = np.repeat([f"p{i}" for i in range(len(x) // 2)], 2)
    x = np.vstack([x, rng.normal(10, 1, size=(2, x.shape[1]))])
    sites = np.append(sites, ["tiny", "tiny"])
    label = np.append(label, ["nv", "mel"])
    patients = np.append(patients, ["q1", "q2"])
    table = write_table(tmp_path / "features.csv", x, sites, label, patients)
    out = tmp_path / "audit"
    args = ["audit", str(table), "--features-table", "--site-column", "site", "--label-column", "label",
            "--positive-label", "mel", "--negative-label", "nv", "--resamples", "50", "--out", str(out)]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, refused.output
    assert "site 'tiny' has 2 row(s)" in refused.output

    result = runner.invoke(app, [*args, "--drop-small-sites"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "audit.json").read_text())
    for key in ("kind", "table", "sites", "n_rows", "n_features", "ignored_columns", "covariates", "before",
                "after_combat", "combat", "settings"):  # the keys the audit always had
        assert key in report
    assert report["dropped_sites"] == {"tiny": 2} and set(report["sites"]) == set(SITES)
    assert report["n_features"] == 10 and report["settings"]["patient_column"] == "patient"  # found by its name
    share = report["share_site_affected"]
    assert share["none"] >= 0.5 > share["combat"] and share["covbat"] is not None
    classifier = report["site_classifier"]
    assert "grouped by patient" in classifier["split"]
    assert set(classifier["methods"]) == {"none", "combat", "covbat"}
    retest = report["test_retest"]
    assert retest["n_patients"] == 72 and retest["summary"]["none"]["icc"]["bands"]["excellent"] == 10
    downstream = report["downstream"]
    assert downstream["task"]["positive"] == "mel" and downstream["task"]["negative"] == ["nv"]
    assert downstream["policy"] == "standardize" and set(downstream["methods"]) == {"none", "combat", "covbat"}
    assert downstream["methods"]["combat"]["in_fold"]["pooled_auc"] > 0.7
    assert report["biology"]["kind"] == "binary" and report["biology"]["preserved_by_harmonizer"]
    assert any("preserved as a ComBat covariate" in w for w in report["warnings"])
    html = (out / "audit.html").read_text()
    assert html.count("<img") >= 6 and "Downstream model: leave-one-site-out" in html
    for text in ("site classifier", "LOSO AUC pooled", "unseen-site policy 'standardize'",
                 "site 'tiny' left out: 2 row(s)", "preserved as a ComBat covariate"):
        assert text in result.output, text


def test_checks_can_be_switched_off_and_bad_options_fail_in_one_line(tmp_path):
    x, sites, label = planted(seed=11, per_site=10, p=6)
    table = write_table(tmp_path / "t.csv", x, sites, label)
    out = tmp_path / "a"
    base = ["audit", str(table), "--features-table", "--site-column", "site", "--out", str(out)]
    result = runner.invoke(app, [*base, "--label-column", "label", "--no-checks"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "audit.json").read_text())
    assert report["site_classifier"] is None and report["downstream"] is None and report["after_covbat"] is not None
    for extra, message in ((["--unseen-site", "guess"], "--unseen-site must be one of standardize, refuse"),
                           (["--label-column", "label", "--positive-label", "mel"], "label 'mel' does not occur"),
                           (["--covbat-variance", "0"], "--covbat-variance 0: must be above 0"),
                           (["--effect-of", "nope"], "no column 'nope' (--effect-of)")):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output

"""ComBat: planted site effects removed, planted biology kept, reference site untouched, exact persistence,
clear errors and leakage warnings; agreement with neuroCombat when it is installed; the ``combat`` CLI."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.combat import ComBat, LeakageWarning, cramers_v, correlation_ratio

SITES = {"a": (0.0, 1.0), "b": (3.0, 2.5), "c": (-2.0, 0.4)}  # site: (location shift, scale factor)
AGE_EFFECT = np.array([0.05, -0.08, 0.0, 0.12, 0.03, -0.02])


def planted(seed: int = 0, per_site: int = 150, confounded: bool = False):
    """Features = age effect + site location + site scale * noise; age independent of site unless confounded."""
    rng = np.random.default_rng(seed)
    sites = np.repeat(list(SITES), per_site)
    if confounded:
        age = np.array([{"a": 30.0, "b": 50.0, "c": 70.0}[s] for s in sites]) + rng.normal(0, 3, len(sites))
    else:
        age = rng.uniform(20, 80, len(sites))
    noise = rng.normal(size=(len(sites), len(AGE_EFFECT)))
    loc = np.array([SITES[s][0] for s in sites])[:, None] * np.linspace(0.5, 1.5, len(AGE_EFFECT))
    scale = np.array([SITES[s][1] for s in sites])[:, None]
    features = 10.0 + age[:, None] * AGE_EFFECT + loc + scale * noise
    return features, sites, age


def age_slope(features: np.ndarray, age: np.ndarray, sites: np.ndarray) -> np.ndarray:
    """Per-feature coefficient of age in a regression with site intercepts."""
    design = np.column_stack([(sites == s).astype(float) for s in SITES] + [age])
    return np.linalg.lstsq(design, features, rcond=None)[0][-1]


@pytest.mark.parametrize("eb,tolerance", [(True, 0.2), (False, 1e-9)])
def test_planted_site_location_and_scale_are_removed_and_the_age_effect_survives(eb, tolerance):
    """EB shrinks the site estimates towards their mean over only six features, so a little location
    difference remains (< 0.2 of a planted 2.5-7.5); without EB the removal is exact."""
    features, sites, age = planted()
    before = age_slope(features, age, sites)
    model = ComBat(eb=eb).fit(features, sites, age[:, None])
    out = model.transform(features, sites, age[:, None])
    residual = out - age[:, None] * model.beta_covariates_[0] * model.scale_  # ComBat's biology (standardized units)
    means = np.array([residual[sites == s].mean(0) for s in SITES])
    sds = np.array([residual[sites == s].std(0) for s in SITES])
    raw_residual = features - age[:, None] * before
    raw_means = np.array([raw_residual[sites == s].mean(0) for s in SITES])
    assert np.ptp(raw_means, axis=0).min() > 2.0  # the planted location effect is there before
    assert np.ptp(means, axis=0).max() < tolerance  # ... and gone after (units: the noise SD is 0.4-2.5)
    raw_sds = np.array([raw_residual[sites == s].std(0) for s in SITES])
    assert (raw_sds.max(0) / raw_sds.min(0)).min() > 4  # planted scale ratio 2.5 / 0.4
    assert (sds.max(0) / sds.min(0)).max() < (1.15 if eb else 1 + 1e-9)
    np.testing.assert_allclose(before, AGE_EFFECT, atol=0.01)
    np.testing.assert_allclose(age_slope(out, age, sites), AGE_EFFECT, atol=0.01)  # the biology survives


def test_without_covariates_the_age_effect_is_lost_in_a_confounded_design_but_not_with_them():
    """Planted age effect with age depending on site: only the covariate keeps it."""
    features, sites, age = planted(confounded=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LeakageWarning)
        kept = ComBat().fit_transform(features, sites, age[:, None])
    lost = ComBat().fit_transform(features, sites)
    slope = lambda x: np.polyfit(age, x[:, 3], 1)[0]  # noqa: E731  (feature 3: age effect 0.12 per year)
    assert abs(slope(kept) - 0.12) < 0.03
    assert abs(slope(lost)) < 0.06


def test_non_eb_closed_form_without_covariates():
    """eb=False, no covariates: each site is mapped to the grand mean and the pooled within-site SD exactly."""
    features, sites, _ = planted(per_site=40)
    out = ComBat(eb=False).fit_transform(features, sites)
    grand = features.mean(0)
    pooled = np.mean([(features[sites == s] - features[sites == s].mean(0)) ** 2 for s in SITES], axis=(0, 1))
    for s in SITES:
        np.testing.assert_allclose(out[sites == s].mean(0), grand, atol=1e-10)
        np.testing.assert_allclose(out[sites == s].var(0, ddof=1), pooled, rtol=1e-10)


def test_eb_shrinks_towards_the_common_prior():
    features, sites, age = planted(per_site=12)
    model = ComBat().fit(features, sites, age[:, None])
    gap_hat = np.abs(model.gamma_hat_ - model.gamma_hat_.mean(1, keepdims=True))
    gap_star = np.abs(model.gamma_star_ - model.gamma_hat_.mean(1, keepdims=True))
    assert (gap_star <= gap_hat + 1e-12).all() and (gap_star < gap_hat).any()


def test_reference_site_rows_are_unchanged_and_others_move_to_it():
    features, sites, age = planted()
    out = ComBat(reference_site="b").fit_transform(features, sites, age[:, None])
    assert np.array_equal(out[sites == "b"], features[sites == "b"])
    resid = out - age[:, None] * age_slope(out, age, sites)
    ref_mean, ref_sd = resid[sites == "b"].mean(0), resid[sites == "b"].std(0)
    for s in ("a", "c"):
        np.testing.assert_allclose(resid[sites == s].mean(0), ref_mean, atol=0.1)
        np.testing.assert_allclose(resid[sites == s].std(0) / ref_sd, 1.0, atol=0.15)


@pytest.mark.parametrize("suffix", [".json", ".npz"])
@pytest.mark.parametrize("options", [{}, {"reference_site": "a"}, {"parametric": False}, {"eb": False}])
def test_save_load_round_trip_is_identical_and_applies_to_new_rows(tmp_path, suffix, options):
    features, sites, age = planted(per_site=30)
    model = ComBat(**options).fit(features, sites, age[:, None], feature_names=[f"f{i}" for i in range(6)])
    path = tmp_path / f"model{suffix}"
    model.save(path)
    loaded = ComBat.load(path)
    new, new_sites, new_age = planted(seed=5, per_site=4)
    assert np.array_equal(model.transform(new, new_sites, new_age[:, None]),
                          loaded.transform(new, new_sites, new_age[:, None]))
    assert loaded.sites_ == ["a", "b", "c"] and loaded.reference_site == options.get("reference_site")
    # a row harmonized alone equals the same row harmonized with the training set
    fitted = model.transform(features, sites, age[:, None])
    np.testing.assert_allclose(loaded.transform(features[:1], sites[:1], age[:1, None]), fitted[:1], rtol=1e-12)
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle


def test_every_constructor_argument_is_saved_and_restored(tmp_path):
    """Issue 14, item 2: the saved settings are the constructor's arguments (base.constructor_params), so a new
    argument (here a subclass's) cannot be lost on save; a file without it loads with the default."""
    features, sites, _ = planted(per_site=10)
    options = {"parametric": False, "eb": True, "reference_site": "c", "mean_only": True}
    assert set(options) == set(inspect.signature(ComBat).parameters)  # this test sets every argument
    ComBat(**options).fit(features, sites).save(tmp_path / "m.json")
    loaded = ComBat.load(tmp_path / "m.json")
    assert {name: getattr(loaded, name) for name in options} == options

    @dataclasses.dataclass(eq=False)
    class Tuned(ComBat):
        shrink: float = 1.0

    Tuned(eb=False, shrink=0.25).fit(features, sites).save(tmp_path / "tuned.npz")
    assert Tuned.load(tmp_path / "tuned.npz").shrink == 0.25
    assert Tuned.load(tmp_path / "m.json").shrink == 1.0  # saved before the argument existed: its default


# Written by shiftkit before ComBat was split into a package (format version 2): ComBat(eb=False, reference_site="b")
# fitted on FIXTURE_ROWS with age as covariate, and what it returned for those rows.
HEAD_MODEL = {
    "format": "shiftkit-combat", "version": 2, "parametric": True, "eb": False, "reference_site": "b",
    "mean_only": False, "sites": ["a", "b"], "site_counts": [3, 3], "feature_names": ["f0", "f1"],
    "covariate_names": ["age"], "shape": {"features": 2, "covariates": 1}, "extra": {}, "arrays": {
        "grand_mean": [0.8669214468630108, 1.4987304135559303],
        "var_pooled": [0.14906832298136627, 0.13206057931141077],
        "beta_covariates": [[-8.050936883443853e-17, -0.011846252370621889]],
        "gamma_star": [[-4.490731195102498, -5.4231646006473415], [0.0, 0.0]],
        "delta_star": [[3.500000000000008, 0.6167300936768231], [1.0, 1.0]],
        "gamma_hat": [[-4.490731195102498, -5.4231646006473415], [9.964716270533296e-15, 2.3911254993911458e-14]],
        "delta_hat": [[3.500000000000008, 0.6167300936768231], [1.5000000000000004, 1.4999999999999998]],
        "center": [4.166666666666667, 16.666666666666668], "scale": [2.1147629234082532, 5.9907335852038095]}}
FIXTURE_ROWS = ([[1.0, 10.0], [2.0, 12.0], [4.0, 11.0], [5.0, 20.0], [7.0, 26.0], [6.0, 21.0]],
                ["a", "a", "a", "b", "b", "b"], [[30.0], [50.0], [40.0], [45.0], [35.0], [60.0]])
HEAD_OUTPUT = [[5.2873033549002, 21.33908804561831], [5.821825838725047, 24.273815180188183],
               [6.890870806374744, 22.80645161290325], [5.0, 20.0], [7.0, 26.0], [6.0, 21.0]]


def test_a_model_saved_before_the_split_loads_and_gives_the_same_numbers(tmp_path):
    path = tmp_path / "old.combat.json"
    path.write_text(json.dumps(HEAD_MODEL))
    model = ComBat.load(path)
    assert (model.eb, model.reference_site, model.parametric, model.mean_only) == (False, "b", True, False)
    features, sites, age = np.asarray(FIXTURE_ROWS[0]), FIXTURE_ROWS[1], np.asarray(FIXTURE_ROWS[2])
    np.testing.assert_allclose(model.transform(features, sites, age), HEAD_OUTPUT, rtol=1e-12)
    refit = ComBat(eb=False, reference_site="b").fit(features, sites, age, feature_names=["f0", "f1"],
                                                     covariate_names=["age"])
    refit.save(tmp_path / "new.combat.json")
    assert json.loads((tmp_path / "new.combat.json").read_text()).keys() == HEAD_MODEL.keys()  # the same layout


def test_unknown_site_on_apply_is_named():
    features, sites, _ = planted(per_site=20)
    model = ComBat().fit(features, sites)
    with pytest.raises(DataError, match="site 'hospital_z' was not in the data"):
        model.transform(features[:3], ["a", "hospital_z", "b"])


def test_non_finite_feature_is_named_with_column_and_row():
    features, sites, _ = planted(per_site=20)
    features[7, 2] = np.nan
    with pytest.raises(DataError, match=r"'f2' has NaN at row 7"):
        ComBat().fit(features, sites, feature_names=[f"f{i}" for i in range(6)])
    features[7, 2] = np.inf
    with pytest.raises(DataError, match=r"column 2' has an infinite value at row 7"):
        ComBat().fit(features, sites)


def test_leakage_warning_fires_for_a_site_confounded_covariate_and_not_otherwise():
    features, sites, age = planted(confounded=True)
    with pytest.warns(LeakageWarning, match="'age' is strongly associated with the site"):
        ComBat().fit(features, sites, age[:, None], covariate_names=["age"])
    features, sites, age = planted()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakageWarning)
        ComBat().fit(features, sites, age[:, None], covariate_names=["age"])
    labels = (age > 50).astype(int)
    with pytest.warns(LeakageWarning, match="associated with the label"):
        ComBat().fit(features, sites, age[:, None], covariate_names=["age"], labels=labels)


def test_association_measures():
    assert correlation_ratio(np.array([1.0, 1, 2, 2]), ["x", "x", "y", "y"]) == pytest.approx(1.0)
    assert correlation_ratio(np.array([1.0, 2, 1, 2]), ["x", "x", "y", "y"]) == pytest.approx(0.0)
    assert cramers_v(list("aabb"), list("xxyy")) == pytest.approx(1.0)
    assert cramers_v(list("abab"), list("xxyy")) == pytest.approx(0.0)


def test_bad_inputs_are_user_errors():
    features, sites, _ = planted(per_site=20)
    with pytest.raises(DataError, match="at least two sites"):
        ComBat().fit(features, ["a"] * len(features))
    with pytest.raises(DataError, match="site 'solo' has only one row"):
        ComBat().fit(features, list(sites[:-1]) + ["solo"])
    with pytest.raises(DataError, match="singular"), pytest.warns(LeakageWarning):
        ComBat().fit(features, sites, (sites == "a").astype(float)[:, None])
    with pytest.raises(ConfigError, match=r"^reference site 'zz' is not among the sites \(a, b, c\)$"):
        ComBat(reference_site="zz").fit(features, sites)


# -- agreement with the published implementation ----------------------------------------------------------------
@pytest.mark.parametrize("ours,theirs", [
    ({}, {}),
    ({"eb": False}, {"eb": False}),
    ({"parametric": False}, {"parametric": False}),
    ({"reference_site": "b"}, {"ref_batch": "b"}),
    ({"mean_only": True}, {"mean_only": True}),
])
def test_matches_neurocombat(monkeypatch, ours, theirs):
    pd = pytest.importorskip("pandas", reason="neuroCombat needs pandas (dev dependency)")
    nc = pytest.importorskip("neuroCombat", reason="neuroCombat is not installed (pip install neuroCombat)")
    monkeypatch.setattr(np, "int", int, raising=False)  # neuroCombat 0.2.12 still calls np.int (ref_batch path)
    rng = np.random.default_rng(3)
    n, p = 70, 9
    sites = np.array(["a"] * 25 + ["b"] * 30 + ["c"] * 15)
    age, sex = rng.uniform(20, 80, n), rng.choice(["f", "m"], n)
    y = rng.normal(size=(n, p)) + 0.05 * age[:, None] + 0.7 * (sex == "m")[:, None]
    for s, (mu, sc) in SITES.items():
        y[sites == s] = y[sites == s] * sc + mu
    covars = pd.DataFrame({"site": sites, "age": age, "sex": sex})
    reference = nc.neuroCombat(y.T.copy(), covars, "site", categorical_cols=["sex"], continuous_cols=["age"],
                               **theirs)["data"].T
    ours_out = ComBat(**ours).fit_transform(y, sites, np.column_stack([(sex == "m").astype(float), age]))
    # neuroCombat casts continuous covariates to float32 and stops its EB iteration on a looser criterion
    print(f"\nComBat vs neuroCombat ({theirs}): max |difference| {np.abs(ours_out - reference).max():.2g}")  # pytest -s
    np.testing.assert_allclose(ours_out, reference, atol=1e-4 * np.abs(reference).max())


# -- CLI ------------------------------------------------------------------------------------------------------------
runner = CliRunner()


def write_csv(path, features, sites, age, extra_site=None):
    sex = np.where(np.arange(len(sites)) % 2 == 0, "f", "m")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "site", "age", "sex", "diagnostics_Image-original_Mean", "label"]
                        + [f"original_f{i}" for i in range(features.shape[1])])
        for i, row in enumerate(features):
            writer.writerow([f"img{i}.nii.gz", extra_site if extra_site and i == 0 else sites[i], f"{age[i]:.2f}",
                             sex[i], "123.5", (i // 2) % 2] + [repr(float(v)) for v in row])
    return path


def read_csv(path):
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_fits_writes_the_csv_and_model_and_reapplies_it(tmp_path):
    features, sites, age = planted(per_site=40)
    source = write_csv(tmp_path / "radiomics.csv", features, sites, age)
    out = tmp_path / "harmonized.csv"
    result = runner.invoke(app, ["combat", str(source), "--site-column", "site", "--covariates", "age,sex",
                                 "--label-column", "label", "--out", str(out)])
    assert result.exit_code == 0, result.output
    header, rows = read_csv(out)
    in_header, in_rows = read_csv(source)
    assert header == in_header and len(rows) == len(in_rows)
    for name in ("image", "site", "age", "sex", "diagnostics_Image-original_Mean", "label"):
        j = header.index(name)
        assert [r[j] for r in rows] == [r[j] for r in in_rows]  # non-feature columns untouched
    cols = [header.index(f"original_f{i}") for i in range(6)]
    harmonized = np.array([[float(r[j]) for j in cols] for r in rows])
    assert not np.allclose(harmonized, features)
    biology = age[:, None] * AGE_EFFECT  # sites differ in mean age by chance; that difference must stay
    means = np.array([(harmonized - biology)[sites == s].mean(0) for s in SITES])
    raw_means = np.array([(features - biology)[sites == s].mean(0) for s in SITES])
    assert (np.ptp(means, axis=0) < 0.1 * np.ptp(raw_means, axis=0)).all()
    model_file = tmp_path / "harmonized.combat.json"
    model = json.loads(model_file.read_text())
    assert model["extra"]["features"] == [f"original_f{i}" for i in range(6)]
    assert model["covariate_names"] == ["age", "sex=m"]
    summary = json.loads((tmp_path / "harmonized.summary.json").read_text())
    assert summary["site_effect_after"]["location"] < summary["site_effect_before"]["location"] / 5

    again = tmp_path / "again.csv"
    result = runner.invoke(app, ["combat", str(source), "--apply", str(model_file), "--out", str(again)])
    assert result.exit_code == 0, result.output
    assert read_csv(again) == read_csv(out)  # re-applying the saved model gives the same numbers
    assert not (tmp_path / "again.combat.json").exists()


def test_cli_warns_about_a_site_confounded_covariate(tmp_path):
    features, sites, age = planted(per_site=30, confounded=True)
    source = write_csv(tmp_path / "f.csv", features, sites, age)
    result = runner.invoke(app, ["combat", str(source), "--covariates", "age", "--label-column", "label",
                                 "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "'age' is strongly associated with the site" in result.output


def test_cli_errors_exit_2_with_one_line(tmp_path):
    features, sites, age = planted(per_site=20)
    source = write_csv(tmp_path / "f.csv", features, sites, age)
    out = tmp_path / "o.csv"
    assert runner.invoke(app, ["combat", str(source), "--covariates", "age", "--label-column", "label",
                               "--out", str(out)]).exit_code == 0
    unknown = write_csv(tmp_path / "new.csv", features[:5], sites[:5], age[:5], extra_site="hospital_q")
    line = error_line(runner.invoke(app, ["combat", str(unknown), "--apply", str(tmp_path / "o.combat.json"),
                                          "--out", str(tmp_path / "n.csv")]))
    assert "hospital_q" in line
    line = error_line(runner.invoke(app, ["combat", str(source), "--apply", str(tmp_path / "o.combat.json"),
                                          "--covariates", "age", "--out", str(tmp_path / "n.csv")]))
    assert "--apply" in line
    bad = features.copy()
    bad[3, 1] = np.nan
    nan_csv = write_csv(tmp_path / "nan.csv", bad, sites, age)
    line = error_line(runner.invoke(app, ["combat", str(nan_csv), "--label-column", "label",
                                          "--out", str(tmp_path / "x.csv")]))
    assert "original_f1" in line and "row 5" in line  # data row 3 is CSV row 5 (header is row 1)
    line = error_line(runner.invoke(app, ["combat", str(source), "--site-column", "hospital",
                                          "--out", str(tmp_path / "x.csv")]))
    assert "'hospital'" in line
    line = error_line(runner.invoke(app, ["combat", str(source), "--reference-site", "nowhere",
                                          "--label-column", "label", "--out", str(tmp_path / "x.csv")]))
    assert "nowhere" in line
    line = error_line(runner.invoke(app, ["combat", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x.csv")]))
    assert "missing.csv" in line


def test_cli_a_feature_table_is_read_by_the_one_csv_reader(tmp_path):
    """issue 13, item 12: combat reads its table with shiftkit.data.csvfile, like audit: a ';'/decimal-comma table,
    UTF-16 without a byte-order mark and a device are each said as such; rows keep their line in the file."""
    features, sites, age = planted(per_site=20)
    source = write_csv(tmp_path / "f.csv", features, sites, age)
    lines = source.read_text().splitlines()
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text("\n".join(line.replace(",", ";").replace(".", ",") for line in lines) + "\n")
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes(source.read_text().encode("utf-16-le"))
    expected = {
        semicolons: f"{semicolons}: the feature table's columns are separated by semicolons (';'), not commas; save "
                    "it as a comma-separated CSV (with '.' as the decimal point)",
        utf16: f"{utf16}: feature table looks like UTF-16 text without a byte-order mark; save it as UTF-8 CSV",
        Path("/dev/null"): "/dev/null: the feature table is a character device, not a file",
    }
    for table, message in expected.items():
        line = error_line(runner.invoke(app, ["combat", str(table), "--out", str(tmp_path / "x.csv")]))
        assert line == f"error: {message}", line
    bad = features.copy()
    bad[3, 1] = np.nan
    gaps = tmp_path / "gaps.csv"  # a blank line after the header: data row 3 is line 6 of the file
    header, *rows = write_csv(tmp_path / "nan.csv", bad, sites, age).read_text().splitlines()
    gaps.write_text("\n".join([header, ""] + rows) + "\n")
    line = error_line(runner.invoke(app, ["combat", str(gaps), "--label-column", "label",
                                          "--out", str(tmp_path / "x.csv")]))
    assert "gaps.csv row 6: feature 'original_f1' is nan" in line, line  # the message audit gives, too
    assert not (tmp_path / "x.csv").exists()


def test_cli_never_harmonizes_a_numeric_identifier_column(tmp_path):
    features, sites, age = planted(per_site=40)
    source = tmp_path / "radiomics.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "site", *[f"original_f{i}" for i in range(features.shape[1])]])
        for i, row in enumerate(features):
            writer.writerow([100000 + i, sites[i], *[repr(float(v)) for v in row]])
    out = tmp_path / "harmonized.csv"
    result = runner.invoke(app, ["combat", str(source), "--site-column", "site", "--out", str(out)])
    assert result.exit_code == 0, result.output
    header, rows = read_csv(out)
    assert [r[0] for r in rows] == [str(100000 + i) for i in range(len(features))]
    model = json.loads((tmp_path / "harmonized.combat.json").read_text())
    assert "patient_id" not in model["extra"]["features"]


def test_cli_refuses_an_out_that_is_an_input_however_it_is_spelled(tmp_path):
    """issue 13, item 5: --out never replaces the input table, however it is spelled (``..``, a symlink)."""
    features, sites, age = planted(per_site=20)
    source = write_csv(tmp_path / "f.csv", features, sites, age)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.csv").symlink_to(source)
    assert runner.invoke(app, ["combat", str(source), "--out", str(tmp_path / "o.csv")]).exit_code == 0
    model = tmp_path / "o.combat.json"
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for out in (tmp_path / "sub" / ".." / "f.csv", tmp_path / "link.csv"):
        line = error_line(runner.invoke(app, ["combat", str(source), "--out", str(out)]))
        assert "would overwrite the input table" in line and "choose another --out" in line, line
    line = error_line(runner.invoke(app, ["combat", str(source), "--apply", str(model),
                                          "--out", str(tmp_path / "link.csv")]))
    assert "would overwrite the input table" in line
    after = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != ".shiftkit.lock"}
    assert after == before


# -- features at the ends of float64 (issue 13, item 13) ---------------------------------------------------------
@pytest.mark.parametrize("factor", [1e300, 1e-200])
@pytest.mark.parametrize("options", [{}, {"eb": False}, {"parametric": False}, {"reference_site": "b"},
                                     {"mean_only": True}])
def test_results_scale_with_the_features_even_at_the_ends_of_float64(factor, options):
    """ComBat is equivariant: features times k give the harmonized features times k. At 1e300 the squares used to
    overflow (inf written) and at 1e-200 underflow to 0 (the pooled variance replaced, values left wrong)."""
    features, sites, age = planted(per_site=30)
    small = ComBat(**options).fit_transform(features, sites, age[:, None])
    big = ComBat(**options).fit_transform(features * factor, sites, age[:, None])
    assert np.isfinite(big).all()
    np.testing.assert_allclose(big / factor, small, rtol=1e-9)
    model = ComBat(**options).fit(features * factor, sites, age[:, None])
    new, new_sites, new_age = planted(seed=5, per_site=4)
    np.testing.assert_allclose(model.transform(new * factor, new_sites, new_age[:, None]) / factor,
                               ComBat(**options).fit(features, sites, age[:, None]).transform(
                                   new, new_sites, new_age[:, None]), rtol=1e-9)


@pytest.mark.parametrize("factor", [1e300, 1e-200])
def test_cli_on_extreme_feature_scales_writes_the_scaled_result(tmp_path, factor):
    features, sites, age = planted(per_site=20)
    plain = write_csv(tmp_path / "plain.csv", features, sites, age)
    scaled = write_csv(tmp_path / "scaled.csv", features * factor, sites, age)
    for source in (plain, scaled):
        result = runner.invoke(app, ["combat", str(source), "--covariates", "age", "--out",
                                     str(tmp_path / f"{source.stem}_out.csv")])
        assert result.exit_code == 0, result.output
    header, rows = read_csv(tmp_path / "plain_out.csv")
    cols = [header.index(f"original_f{i}") for i in range(6)]
    expected = np.array([[float(r[j]) for j in cols] for r in rows])
    got = np.array([[float(r[j]) for j in cols] for r in read_csv(tmp_path / "scaled_out.csv")[1]])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got / factor, expected, rtol=1e-9)
    for name in ("plain_out", "scaled_out"):  # the site-effect summary is scale-free: the same numbers
        summary = json.loads((tmp_path / f"{name}.summary.json").read_text())
        assert all(np.isfinite(v) for part in ("site_effect_before", "site_effect_after")
                   for v in summary[part].values())
    plain_summary = json.loads((tmp_path / "plain_out.summary.json").read_text())
    scaled_summary = json.loads((tmp_path / "scaled_out.summary.json").read_text())
    for part in ("site_effect_before", "site_effect_after"):
        for key, value in plain_summary[part].items():
            assert scaled_summary[part][key] == pytest.approx(value, rel=1e-9)


def test_harmonized_values_beyond_float64_are_refused_not_written_as_inf(tmp_path):
    rng = np.random.default_rng(0)
    tight = 1.6e308 + rng.normal(size=(20, 6)) * 1e306  # site a near the top of float64, with a small spread
    wide = rng.uniform(-1, 1, (20, 6)) * 1.7e308  # site b around 0 with a huge spread: a's grows past 1.8e308
    features, sites = np.vstack([tight, wide]), np.array(["a"] * 20 + ["b"] * 20)
    with pytest.raises(DataError, match="feature 'column 3' row 3: the harmonized value is beyond float64's range"):
        ComBat(eb=False).fit_transform(features, sites)
    source = write_csv(tmp_path / "top.csv", features, sites, np.linspace(20, 80, 40))
    line = error_line(runner.invoke(app, ["combat", str(source), "--no-eb", "--out", str(tmp_path / "o.csv")]))
    assert "top.csv: feature column 'original_f3' row 5: the harmonized value is beyond float64" in line, line
    assert not (tmp_path / "o.csv").exists()

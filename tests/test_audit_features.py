"""``shiftkit audit --features-table``: planted scanner effects are flagged and null features are not (FDR holds
over seeds), ComBat brings the site classifier down toward chance, and bad tables fail with one line (exit 2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shiftkit.audit.features_table import (
    FeaturesAuditRequest,
    kruskal_per_feature,
    run_features_audit,
    site_effects,
)
from shiftkit.cli import app
from shiftkit.harmonize.outputs import write_manifest

runner = CliRunner()
SITES = ("ge", "siemens", "philips")
PLANTED = 5


def simulate(seed: int, n_per_site: int = 40, null: int = 25, effect: float = 1.5, planted: int = PLANTED):
    """Features 0..planted-1 carry a scanner effect (location at 'philips', scale at 'siemens'); the rest are
    null. A binary label shifts feature 'bio' everywhere (biology ComBat must keep)."""
    rng = np.random.default_rng(seed)
    sites = np.repeat(SITES, n_per_site)
    n = len(sites)
    features = rng.lognormal(0.0, 0.4, size=(n, planted + null))  # skewed, like radiomics
    label = rng.integers(0, 2, n)
    for j in range(planted):
        features[sites == "philips", j] += effect
        features[sites == "siemens", j] *= 1.0 + 0.5 * effect
    names = [f"original_feature_{j}" for j in range(planted + null)]
    return features, names, sites, label


def write_table(path: Path, features, names, sites, label, extra: dict | None = None) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["PatientID", "Image", "diagnostics_Versions_PyRadiomics", "diagnostics_Mask-original_VoxelNum",
                  "scanner", "grade", *names, *(extra or {})]
        writer.writerow(header)
        for i in range(len(sites)):
            writer.writerow([f"P{i:04d}", f"img/{i}.nii.gz", "v3.1.0", 1000 + i, sites[i], int(label[i]),
                             *(f"{v:.6g}" for v in features[i]), *(v[i] for v in (extra or {}).values())])
    return path


def test_planted_scanner_effects_are_flagged_and_null_features_are_not():
    features, names, sites, _ = simulate(seed=0)
    result = site_effects(features, names, sites)
    assert set(result.affected) == set(names[:PLANTED])
    assert set(result.dominated) <= set(names[:PLANTED]) and result.dominated
    eps = [f["epsilon2"] for f in result.features]
    assert min(eps[:PLANTED]) > max(eps[PLANTED:])
    # epsilon² = H / (n - 1), and H matches scipy's Kruskal-Wallis
    h, p, e2 = kruskal_per_feature(features[:, :1], sites)
    assert e2[0] == pytest.approx(h[0] / (len(sites) - 1))
    assert result.classifier["balanced_accuracy"] > 0.6 and result.classifier["chance"] == pytest.approx(1 / 3)


def test_false_discoveries_stay_at_the_nominal_level_over_seeds():
    """Benjamini-Hochberg: the mean false discovery proportion over seeds is at most alpha (here with m0/m of the
    features null, the bound is alpha * m0 / m). Without the correction the same data give far more."""
    fdp, fdp_uncorrected, any_null_rejection = [], [], []
    for seed in range(40):
        features, names, sites, _ = simulate(seed=100 + seed, n_per_site=25, null=45, effect=1.0)
        result = site_effects(features, names, sites, classifier=False)
        flagged = set(result.affected)
        false = len(flagged - set(names[:PLANTED]))
        fdp.append(false / max(len(flagged), 1))
        raw = {f["feature"] for f in result.features if f["p_value"] < 0.05}
        fdp_uncorrected.append(len(raw - set(names[:PLANTED])) / max(len(raw), 1))
        null_only = site_effects(features[:, PLANTED:], names[PLANTED:], sites, classifier=False)
        any_null_rejection.append(bool(null_only.affected))
    assert np.mean(fdp) <= 0.05, np.mean(fdp)
    assert np.mean(fdp_uncorrected) > 0.15  # the test can fail: no correction breaks the bound
    assert np.mean(any_null_rejection) <= 0.10  # all-null tables: BH controls the family-wise rate at alpha (+noise)


def test_combat_brings_the_site_classifier_toward_chance(tmp_path):
    pytest.importorskip("shiftkit.harmonize.combat")
    features, names, sites, label = simulate(seed=1, n_per_site=50, null=15)
    features[:, -1] += 1.0 * label  # biology in the last feature, which ComBat is told to preserve
    names[-1] = "original_bio"
    table = write_table(tmp_path / "radiomics.csv", features, names, sites, label)
    audit = run_features_audit(FeaturesAuditRequest(table=table, site_column="scanner", label_column="grade"))
    before, after = audit.before.classifier, audit.after.classifier
    assert before["balanced_accuracy"] > 0.7
    assert after["balanced_accuracy"] < before["chance"] + 0.15, after
    assert len(audit.after.affected) <= 1 < PLANTED <= len(audit.before.affected)
    assert audit.combat["preserved_covariates"] == ["grade"]
    assert set(audit.table.ignored) == {"PatientID", "Image", "diagnostics_Versions_PyRadiomics",
                                        "diagnostics_Mask-original_VoxelNum"}


def test_cli_features_table_end_to_end(tmp_path):
    features, names, sites, label = simulate(seed=2, n_per_site=20, null=10)
    age = [str(50 + i % 30) for i in range(len(sites))]
    table = write_table(tmp_path / "radiomics.csv", features, names, sites, label, extra={"age": age})
    out = tmp_path / "out"
    result = runner.invoke(app, ["audit", str(table), "--site-column", "scanner", "--features-table",
                                 "--label-column", "grade", "--covariates", "age", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "audit.json").read_text())
    assert report["n_features"] == len(names) and report["sites"] == {s: 20 for s in SITES}
    assert set(report["before"]["affected"]) == set(names[:PLANTED])
    assert {f["feature"] for f in report["before"]["features"]} == set(names)  # age, grade: covariates, not features
    if report["after_combat"] is not None:
        assert report["combat"]["preserved_covariates"] == ["grade", "age"]
    assert "<img" in (out / "audit.html").read_text()
    assert "site classifier" in result.output


@pytest.mark.parametrize("case, message", [
    ("nan", "row 5: feature 'original_feature_1' is nan"),
    ("inf", "row 5: feature 'original_feature_1' is inf"),
    ("empty", "row 5: feature 'original_feature_1' is an empty cell"),
    ("text_only", "no numeric feature columns"),
    ("no_site", "no column 'scanner' (--site-column)"),
    ("small_site", "site 'philips' has 2 row(s)"),
])
def test_bad_tables_fail_with_one_line_and_exit_2(tmp_path, case, message):
    features, names, sites, label = simulate(seed=3, n_per_site=6, null=3)
    rows = [{"PatientID": f"P{i}", "scanner": sites[i], **{n: f"{features[i, j]:.4g}" for j, n in enumerate(names)}}
            for i in range(len(sites))]
    if case in ("nan", "inf", "empty"):
        rows[3]["original_feature_1"] = {"nan": "nan", "inf": "inf", "empty": ""}[case]
    elif case == "text_only":
        rows = [{"PatientID": r["PatientID"], "scanner": r["scanner"], "note": "ok"} for r in rows]
    elif case == "no_site":
        for r in rows:
            r["hospital"] = r.pop("scanner")
    elif case == "small_site":
        rows = [r for r in rows if r["scanner"] != "philips"] + [r for r in rows if r["scanner"] == "philips"][:2]
    path = tmp_path / "table.csv"
    write_manifest(path, rows, list(rows[0]))
    result = runner.invoke(app, ["audit", str(path), "--site-column", "scanner", "--features-table",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_combat_and_the_audit_read_a_features_table_by_one_rule(tmp_path):
    """Issue 14, item 5: one reader (shiftkit.data.feature_table). Both commands take the same feature columns (an
    all-empty or text column is left alone), and a covariate holding 'nan' is refused by both with the same line,
    where the audit used to one-hot encode it as a category."""
    features, names, sites, label = simulate(seed=4, n_per_site=8, null=3)
    n = len(sites)
    age = [str(40 + i % 20) for i in range(n)]
    extra = {"age": age, "empty": [""] * n, "note": ["x"] * n}
    table = write_table(tmp_path / "t.csv", features, names, sites, label, extra=extra)
    audit = run_features_audit(FeaturesAuditRequest(table=table, site_column="scanner", label_column="grade",
                                                    covariates=("age",), combat=False))
    assert audit.table.names == tuple(names) and {"empty", "note"} <= set(audit.table.ignored)
    out = tmp_path / "h.csv"
    result = runner.invoke(app, ["combat", str(table), "--site-column", "scanner", "--label-column", "grade",
                                 "--covariates", "age", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "h.summary.json").read_text())["features"] == names

    age[4] = "nan"  # data row 5 is spreadsheet row 6
    table = write_table(tmp_path / "nan.csv", features, names, sites, label, extra=extra)
    expected = f"error: {table} row 6: covariate 'age' is 'nan', not finite; a numeric covariate needs finite numbers"
    for command in (["audit", str(table), "--features-table", "--out", str(tmp_path / "a")],
                    ["combat", str(table), "--out", str(tmp_path / "c.csv")]):
        result = runner.invoke(app, [*command, "--site-column", "scanner", "--covariates", "age"])
        assert result.exit_code == 2 and result.output.strip() == expected, result.output

"""``shiftkit audit`` on images: planted site effects land in the right cells of the matrix (after the correction
over pairs) and nowhere else, a duplicated site shows no shift, label shift and metadata are measured, and the CLI
runs end to end on tiny generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shiftkit.shift.corrections import adjust_p_values
from shiftkit.audit.matrix import shift_matrix
from shiftkit.audit.priors import label_shift, total_variation
from shiftkit.audit.site_metadata import column_metadata
from shiftkit.cli import app
from shiftkit.data.synthetic import make_image
from shiftkit.harmonize.outputs import write_manifest

runner = CliRunner()
FAST = dict(permutations=200, ot_permutations=100, ot_projections=50)


def test_corrections_match_hand_computed_values():
    p = [0.01, 0.04, 0.03, np.nan]
    np.testing.assert_allclose(adjust_p_values(p, "bonferroni")[:3], [0.03, 0.12, 0.09])
    np.testing.assert_allclose(adjust_p_values(p, "holm")[:3], [0.03, 0.06, 0.06])
    np.testing.assert_allclose(adjust_p_values(p, "bh")[:3], [0.03, 0.04, 0.04])
    assert np.isnan(adjust_p_values(p, "bh")[3])
    np.testing.assert_allclose(adjust_p_values([0.01, 0.02, 0.03, 0.04, 0.05], "bh"), [0.05] * 5)


@pytest.fixture(scope="module")
def planted():
    """Four sites of 8-d embeddings: A and B from one distribution, C shifted in three dimensions, D a copy of A."""
    rng = np.random.default_rng(0)
    n, d = 40, 8
    a, b, c = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(n, d))
    c[:, :3] += 1.2
    embeddings = np.vstack([a, b, c, a])
    sites = ["A"] * n + ["B"] * n + ["C"] * n + ["D"] * n
    return shift_matrix(embeddings, sites, pca=0, seed=0, **FAST)


def test_planted_site_effect_is_in_the_right_cells_and_nowhere_else(planted):
    m = planted
    assert m.sites == ("A", "B", "C", "D")
    assert {frozenset(p) for p in m.shifted_pairs()} == {frozenset(p) for p in (("A", "C"), ("B", "C"), ("C", "D"))}
    for other in ("A", "B", "D"):
        pair = m.pair("C", other)
        for measure in ("mmd", "domain_classifier", "ot"):  # every measure finds it, after the correction
            assert pair.p_adjusted[measure] < 0.05, (other, measure)
        assert pair.pad > 1.0
    for a, b in (("A", "B"), ("A", "D"), ("B", "D")):
        assert not m.pair(a, b).shifted
    # the correction is the one announced: BH over the six pairs, per measure
    for measure in ("mmd", "domain_classifier", "ot"):
        raw = [c.tests[measure].p_value for c in m.pairs]
        np.testing.assert_allclose([c.p_adjusted[measure] for c in m.pairs], adjust_p_values(raw, "bh"))
    # C is the outlier: first in the ranking, and shifted against the rest pooled
    assert m.ranking[0]["site"] == "C"
    assert next(c for c in m.leave_one_out if c.a == "C").shifted


def test_a_site_duplicated_under_two_names_shows_no_shift(planted):
    copy = planted.pair("A", "D")
    assert copy.tests["ot"].statistic == pytest.approx(0.0, abs=1e-12)
    for measure in ("mmd", "domain_classifier", "ot"):
        assert copy.tests[measure].p_value > 0.5, measure
    assert copy.pad <= 0.0  # a classifier cannot tell identical samples apart


def test_matrix_json_is_keyed_by_site_names(planted):
    out = planted.to_dict()
    assert out["pairwise"]["A"]["C"] is out["pairwise"]["C"]["A"]
    assert out["pairwise"]["A"]["C"]["shifted"] is True
    assert {"statistic", "p_value", "p_adjusted"} <= set(out["pairwise"]["B"]["C"]["mmd"])
    assert {"pad", "auc", "p_adjusted"} <= set(out["pairwise"]["B"]["C"]["domain_classifier"])
    grid = np.array(out["matrices"]["pad"]["statistic"], dtype=float)
    assert grid.shape == (4, 4) and np.isnan(np.diag(grid)).all() and np.allclose(grid, grid.T, equal_nan=True)
    assert out["correction"]["method"] == "bh"


def test_label_shift_per_pair_and_estimated_priors():
    rng = np.random.default_rng(1)
    priors = {"A": 0.5, "B": 0.5, "C": 0.9}  # share of class 'x'
    labels, sites, rows = [], [], []
    for site, share in priors.items():
        n = 150
        y = np.where(rng.random(n) < share, "x", "y")
        means = np.where(y == "x", 1.5, -1.5)[:, None]
        rows.append(rng.normal(size=(n, 4)) + means)
        labels += y.tolist()
        sites += [site] * n
    labels, sites = np.asarray(labels), np.asarray(sites)
    result = label_shift(labels, sites, ["A", "B", "C"], ["x", "y"], np.vstack(rows), bootstrap=30, seed=0)
    pairs = {(p["a"], p["b"]): p for p in result["pairs"]}
    actual = {s: result["sites"][s]["prior"]["x"] for s in "ABC"}
    assert pairs[("A", "C")]["tv_actual"] == pytest.approx(abs(actual["A"] - actual["C"]))
    assert {k for k, p in pairs.items() if p["shifted"]} == {("A", "C"), ("B", "C")}
    estimated_c = result["sites"]["C"]["estimated"]["prior"]["x"]
    assert abs(estimated_c - actual["C"]) < 0.1  # recovered without C's labels, from A and B's classifier
    assert result["sites"]["C"]["estimated"]["p_value"] < 0.05
    assert total_variation([0.2, 0.8], [0.5, 0.5]) == pytest.approx(0.3)


def test_extra_columns_are_compared_across_sites_and_identifiers_skipped():
    rng = np.random.default_rng(2)
    sites = np.repeat(["A", "B", "C"], 60)
    age = np.where(sites == "C", 70, 45) + rng.normal(0, 5, len(sites))
    columns = {"age": [f"{v:.1f}" for v in age], "sex": rng.choice(["male", "female"], len(sites)).tolist(),
               "lesion_id": [f"HAM_{i:05d}" for i in range(len(sites))]}
    result = {c["column"]: c for c in column_metadata(columns, sites, ["A", "B", "C"])}
    assert result["age"]["kind"] == "numeric" and result["age"]["p_value"] < 1e-6
    assert result["age"]["sites"]["C"]["median"] > result["age"]["sites"]["A"]["median"] + 15
    assert result["sex"]["kind"] == "categorical" and result["sex"]["p_value"] > 0.01
    assert result["lesion_id"]["kind"] == "identifier" and "sites" not in result["lesion_id"]


# ------------------------------------------------------------------------------------------------------- CLI


def write_sites(root: Path, per_site: int = 10, sites=("north", "south", "west"), odd: str = "west") -> Path:
    """Tiny 32-px phantoms at three sites; ``odd`` has low contrast and extra noise (another scanner)."""
    rng = np.random.default_rng(0)
    rows = []
    for site in sites:
        (root / site).mkdir(parents=True, exist_ok=True)
        for i in range(per_site):
            kind = ("round", "oval")[i % 2]
            image = make_image(kind, 32, rng).astype(np.float32)
            if site == odd:
                image = 128 + 0.4 * (image - 128) + rng.normal(0, 25, image.shape)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / site / f"{i:02d}.png")
            rows.append({"path": f"{site}/{i:02d}.png", "diagnosis": kind, "hospital": site,
                         "age": str(40 + i + (20 if site == odd else 0))})
    manifest = root / "manifest.csv"
    write_manifest(manifest, rows, list(rows[0]))
    return manifest


CLI_FAST = ["--image-size", "32", "--permutations", "200", "--ot-permutations", "100", "--bootstrap", "10",
            "--classifier-pca", "16", "--device", "cpu", "--min-images-per-site", "5"]


def test_cli_end_to_end_on_tiny_images(tmp_path):
    """One real run: embed once (cached), matrix, labels, metadata, HTML, and the matrix again after z-score
    harmonization toward all sites pooled."""
    manifest = write_sites(tmp_path / "data")
    out = tmp_path / "audit"
    result = runner.invoke(app, ["audit", str(manifest), "--site-column", "hospital", "--label-column", "diagnosis",
                                 "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *CLI_FAST, "--harmonize", "zscore"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "audit.json").read_text())
    assert report["sites"] == ["north", "south", "west"]
    assert report["counts"] == {"north": 10, "south": 10, "west": 10}
    assert set(report["pairwise"]["west"]) == {"north", "south"}
    assert report["ranking"][0]["site"] == "west"
    assert {frozenset(p) for p in report["shifted_pairs"]} <= {frozenset(("north", "west")), frozenset(("south", "west"))}
    assert report["pairwise"]["north"]["west"]["shifted"]
    assert report["label_shift"]["pairs"][0]["tv_actual"] == pytest.approx(0.0)  # same 50/50 priors everywhere
    age = next(c for c in report["metadata"]["columns"] if c["column"] == "age")
    assert age["kind"] == "numeric" and age["p_value"] < 0.01
    assert report["metadata"]["headers"]["sites"]["west"]["width"]["median"] == 32
    html = (out / "audit.html").read_text()
    assert html.count("<img") >= 5 and "Farthest from the rest: west" in html
    assert "west" in result.output and "Farthest" in result.output
    assert list((tmp_path / "cache").glob("*.npz"))  # one embedding pass, cached
    after = report["harmonized"]
    assert after["method"] == "zscore" and after["reference"] == "all sites pooled"
    assert after["sites"] == report["sites"] and set(after["pairwise"]["west"]) == {"north", "south"}
    assert len(list((out / "harmonized").rglob("*.png"))) == 30
    assert "After harmonization" in html


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    manifest = write_sites(tmp_path / "data", per_site=6)
    cases = [
        (["--site-column", "scanner"], "no site column 'scanner'"),
        (["--site-column", "hospital", "--min-images-per-site", "7"], "has 6 image(s)"),
        (["--site-column", "hospital", "--label-column", "dx"], "no label column 'dx'"),
        (["--site-column", "hospital", "--harmonize", "magic"], "--harmonize 'magic'"),
    ]
    for options, message in cases:
        result = runner.invoke(app, ["audit", str(manifest), "--out", str(tmp_path / "o"), "--device", "cpu", *options])
        assert result.exit_code == 2, (options, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_max_images_per_site_is_a_seeded_stratified_subset(tmp_path):
    from shiftkit.audit.images import subsample_sites
    from shiftkit.audit.manifest import read_audit_manifest

    manifest = tmp_path / "m.csv"
    rows = ["path,dx,centre"]
    for site, n, share in (("big", 400, 0.8), ("small", 30, 0.5)):
        rows += [f"{site}/{i}.png,{'nv' if i < share * n else 'mel'},{site}" for i in range(n)]
    manifest.write_text("\n".join(rows) + "\n")
    data = read_audit_manifest(manifest, "centre", "dx")
    one, two = subsample_sites(data, 100, seed=3), subsample_sites(data, 100, seed=3)
    assert [r.path for r in one.table.records] == [r.path for r in two.table.records]
    assert {s: int((one.sites == s).sum()) for s in ("big", "small")} == {"big": 100, "small": 30}
    big = [r.labels[0] for r, s in zip(one.table.records, one.sites) if s == "big"]
    assert big.count("nv") == 80  # the site's 80/20 class mix is kept exactly
    other = subsample_sites(data, 100, seed=4)
    assert [r.path for r in other.table.records] != [r.path for r in one.table.records]

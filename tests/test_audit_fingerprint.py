"""``audit --fingerprint``: per site pair, where the shift lands and what changed in the images, from the same
forward pass. A site whose scanner lowers the contrast (same phantoms, same priors) peaks at the first block and
names contrast; two draws from the same scanner flag no block and no property."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.data.synthetic import CLASSES
from test_diagnose import write_domain

runner = CliRunner()
FAST = ["--arch", "efficientnet_lite0", "--image-size", "64", "--batch-size", "32", "--device", "cpu",
        "--permutations", "100", "--ot-permutations", "50", "--bootstrap", "10", "--classifier-pca", "16",
        "--no-leave-one-out"]


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    base = tmp_path_factory.mktemp("audit_fingerprint")
    counts = {c: 14 for c in CLASSES}
    folders = {"north": write_domain(base / "north", counts, seed=0),
               "south": write_domain(base / "south", counts, seed=1),
               "west": write_domain(base / "west", counts, seed=2, contrast=0.4)}
    manifest = base / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "hospital", "diagnosis"])
        for site, folder in folders.items():
            for image in sorted(folder.rglob("*.png")):
                writer.writerow([image, site, image.parent.name])
    out = base / "out"
    result = runner.invoke(app, ["audit", str(manifest), "--site-column", "hospital", "--label-column", "diagnosis",
                                 "--out", str(out), "--fingerprint", *FAST])
    assert result.exit_code == 0, result.output
    return json.loads((out / "audit.json").read_text()), (out / "audit.html").read_text(), result.output


def _pair(report, a, b):
    return next(p for p in report["fingerprint"]["pairs"] if {p["a"], p["b"]} == {a, b})


def test_the_low_contrast_site_peaks_at_the_first_block_and_names_contrast(audited):
    report, html, output = audited
    for other in ("north", "south"):
        pair = _pair(report, other, "west")
        assert pair["peak"]["shifted"] and pair["peak"]["index"] == 0, pair
        first, last = pair["profile"][0], pair["profile"][-1]
        assert first["shifted"] and first["mmd"] > last["mmd"]
        assert "contrast" in [p["property"] for p in pair["properties"]]
    assert "Where the shift lands, per pair" in html and html.count("<img") >= 3
    assert "north vs west: shift peaks at block 1 of" in output


def test_two_draws_from_one_scanner_flag_no_block_and_no_property(audited):
    report, _, _ = audited
    pair = _pair(report, "north", "south")
    assert not pair["peak"]["shifted"] and not any(row["shifted"] for row in pair["profile"])
    assert pair["properties"] == [] and pair["summary"].startswith("no block shifted")
    assert report["settings"]["fingerprint"] is True


def test_a_features_table_has_no_blocks_to_fingerprint(tmp_path):
    table = tmp_path / "features.csv"
    table.write_text("site,f1\na,1\na,2\nb,3\nb,4\n")
    result = runner.invoke(app, ["audit", str(table), "--features-table", "--fingerprint", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--fingerprint needs images" in result.output
    assert len(result.output.strip().splitlines()) == 1

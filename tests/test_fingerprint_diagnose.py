"""``diagnose --fingerprint`` end to end: a planted contrast change (same phantoms, same priors) is found where it
was planted, both in the image properties and at the first block; a second draw from the same scanner is not."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.data.synthetic import CLASSES
from test_diagnose import write_domain

runner = CliRunner()
# pre-trained EfficientNet-Lite0 (its weights install from PyPI, no network): a network with random weights has no
# ImageNet statistics to be far from, and spreads an input change over every block
FAST = ["--arch", "efficientnet_lite0", "--image-size", "64", "--batch-size", "32", "--device", "cpu",
        "--permutations", "100", "--bootstrap", "10", "--tests", "mmd,domain_classifier"]


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):
    base = tmp_path_factory.mktemp("fingerprint")
    counts = {c: 16 for c in CLASSES}
    return {"source": write_domain(base / "source", counts, seed=0),
            "same": write_domain(base / "same", counts, seed=1),
            "low_contrast": write_domain(base / "low_contrast", counts, seed=1, contrast=0.4),
            "priors": write_domain(base / "priors", {"oval": 40, "round": 12, "spiky": 4}, seed=1)}


def _fingerprint(hospitals, target, out, *extra):
    result = runner.invoke(app, ["diagnose", str(hospitals["source"]), str(hospitals[target]), "--out", str(out),
                                 "--fingerprint", *FAST, *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())["fingerprint"], result.output


def test_a_planted_contrast_change_is_found_in_the_images_and_at_the_first_block(hospitals, tmp_path):
    found, output = _fingerprint(hospitals, "low_contrast", tmp_path / "d")
    assert found["peak"]["index"] == 0 and found["peak"]["shifted"]
    first, last = found["blocks"][0], found["blocks"][-1]
    assert first["shifted"] and first["auc"] > last["auc"]
    # contrast was scaled around 128 on dark phantoms, which also brightens them: both are the planted change
    top = {p["property"]: p for p in found["image_properties"][:2]}
    assert set(top) == {"contrast", "brightness"}
    assert top["contrast"]["direction"] == "lower in target" and top["contrast"]["significant"]
    assert "contrast" in found["summary"] and "block 1 of" in found["summary"]
    assert "fingerprint:" in output and "contrast" in output
    html = (tmp_path / "d" / "report.html").read_text()
    assert html.index("Where the shift lands") < html.index("Covariate shift")  # verdict, then where, then tests
    assert "most typical" in html and not list((tmp_path / "d" / "plots").glob("thumb*"))  # thumbnails: HTML only
    gradient = found["gradient_signal"]
    assert [g["block"] for g in gradient][-1] == "classifier" and gradient[-1]["relative_to_max"] == 1.0


def test_the_same_scanner_flags_no_image_property_and_thumbnails_can_be_left_out(hospitals, tmp_path):
    found, _ = _fingerprint(hospitals, "same", tmp_path / "d", "--no-thumbnails")
    assert not any(p.get("significant") for p in found["image_properties"])
    assert found["thumbnails"] is None
    assert "most typical" not in (tmp_path / "d" / "report.html").read_text()


def test_a_prior_only_shift_changes_no_image_property_and_lands_late(hospitals, tmp_path):
    """Resampling the classes (same scanner) changes P(X) only through what the classes look like: no acquisition
    property moves, and the block shift grows with depth toward the semantic blocks instead of peaking at the
    input. The label shift is what diagnose reports. (P(X) does change under a prior shift, so a block test that
    never fired here would be blind, not right: the known answer is where it lands, not that it is absent.)"""
    found, _ = _fingerprint(hospitals, "priors", tmp_path / "d", "--no-thumbnails")
    assert not any(p.get("significant") for p in found["image_properties"])
    assert found["peak"]["index"] >= found["peak"]["of"] // 2, found["peak"]
    assert found["blocks"][-1]["mmd"] > found["blocks"][0]["mmd"]
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["verdict"]["label"]["level"] != "none"


def test_without_the_flag_the_report_has_no_fingerprint(hospitals, tmp_path):
    result = runner.invoke(app, ["diagnose", str(hospitals["source"]), str(hospitals["same"]), "--out",
                                 str(tmp_path / "d"), *FAST])
    assert result.exit_code == 0, result.output
    assert "fingerprint" not in json.loads((tmp_path / "d" / "report.json").read_text())

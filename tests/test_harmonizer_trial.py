"""``diagnose --try-harmonizers``: under a planted contrast change that an intensity harmonizer can undo, the report
says which harmonizer lowers the held-out shift; without covariate shift nothing is tried."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.data.synthetic import CLASSES
from test_diagnose import write_domain

runner = CliRunner()
FAST = ["--arch", "efficientnet_lite0", "--image-size", "48", "--batch-size", "64", "--device", "cpu",
        "--permutations", "100", "--bootstrap", "10", "--tests", "mmd,domain_classifier", "--try-harmonizers"]


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    base = tmp_path_factory.mktemp("trial")
    counts = {c: 14 for c in CLASSES}
    return {"source": write_domain(base / "source", counts, seed=0),
            "same": write_domain(base / "same", counts, seed=1),
            "low_contrast": write_domain(base / "low_contrast", counts, seed=2, contrast=0.4)}


def _diagnose(domains, target, out):
    result = runner.invoke(app, ["diagnose", str(domains["source"]), str(domains[target]), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())["harmonizer_trial"], result.output


def test_a_contrast_change_gets_an_intensity_harmonizer_that_lowers_the_held_out_shift(domains, tmp_path):
    trial, output = _diagnose(domains, "low_contrast", tmp_path / "d")
    assert trial["tried"] and trial["direction"] == "target harmonized toward the source"
    assert trial["chosen"] in {"histmatch", "nyul", "zscore"}, trial["verdict"]
    chosen = next(c for c in trial["candidates"] if c["name"] == trial["chosen"])
    assert chosen["reduces"] and chosen["auc_after_ci"][1] < trial["before"]["auc"]
    assert f"best: {trial['chosen']}" in trial["summary"] and "lowers the domain AUC" in trial["summary"]
    assert "harmonizers:" in output
    html = (tmp_path / "d" / "report.html").read_text()
    assert html.index("What would fix it at the input") < html.index("Recommended fine-tuning strategy")


def test_without_covariate_shift_nothing_is_tried(domains, tmp_path):
    trial, output = _diagnose(domains, "same", tmp_path / "d")
    assert trial["tried"] is False and "nothing to reduce" in trial["reason"]
    assert "harmonizers:" not in output

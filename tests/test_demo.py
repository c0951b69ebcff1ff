"""``shiftkit demo``: the planted hospitals are what the docs say, and the demo finds what was planted."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.demo.hospitals import PlantedShift, write_hospitals


def _digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def _target_rows(paths) -> list[tuple[str, str]]:
    with open(paths["target_labels"], newline="") as handle:
        return [(row["path"], row["label"]) for row in csv.DictReader(handle)]


def test_hospitals_are_deterministic_and_follow_the_planted_priors(tmp_path):
    first, second = write_hospitals(tmp_path / "a"), write_hospitals(tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    shift = PlantedShift()
    rows = _target_rows(first)
    labels = [label for _, label in rows]
    for kind, prior in shift.target_prior.items():
        assert labels.count(kind) == round(prior * len(rows))
    source_counts = {d.name: len(list(d.glob("*.png"))) for d in first["source"].iterdir()}
    assert source_counts == {"oval": 60, "round": 60, "spiky": 60}
    assert {Image.open(p).size for p in first["target"].glob("*.png")} == {(shift.target_size,) * 2}
    # a seed changes the images
    assert _digest(write_hospitals(tmp_path / "c", seed=1)["target"]) != _digest(first["target"])


def test_hospital_b_has_lower_contrast_and_is_brighter(tmp_path):
    paths = write_hospitals(tmp_path)
    a = np.stack([np.asarray(Image.open(p), dtype=float) for p in paths["source"].rglob("*.png")])
    b = np.stack([np.asarray(Image.open(p), dtype=float) for p in paths["target"].glob("*.png")])
    # lesion-vs-background spread shrinks with contrast x0.55 (noise and blur partly offset each other)
    assert np.percentile(b, 99, axis=(1, 2)).mean() - np.percentile(b, 1, axis=(1, 2)).mean() < \
        0.8 * (np.percentile(a, 99, axis=(1, 2)).mean() - np.percentile(a, 1, axis=(1, 2)).mean())
    assert b.mean() > a.mean() + 0.05 * 255


@pytest.mark.slow
def test_demo_finds_the_planted_shift(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--epochs", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "demo.json").read_text())
    report = json.loads((out / "diagnose" / "report.json").read_text())
    assert report["verdict"]["covariate"]["level"] == "strong"
    assert report["verdict"]["label"]["level"] != "none"
    prior = report["label"]["target_prior"]
    assert prior["oval"] > 1 / 3 > prior["spiky"]  # the planted direction: oval 0.60, spiky 0.10
    assert report["verdict"]["concept"]["level"] == "not measured"
    ranking = [advice["strategy"] for advice in summary["recommendation"]["ranking"]]
    assert sorted(ranking) == sorted(["ft", "lp", "g_lf", "g_fl", "lp_ft", "l1_sp", "l2_sp", "auto_rgn"])
    assert summary["finetune"]["strategy"] == ranking[0]
    assert summary["finetune"]["test_hospital_b"]["auroc"] is not None
    # AdaBN starts from the fine-tuned model (same metrics before) and changes its BN statistics
    before, finetuned = summary["adabn"]["test_hospital_b_before"], summary["finetune"]["test_hospital_b"]
    assert {m: before[m] for m in ("accuracy", "auroc", "f1")} == \
        pytest.approx({m: finetuned[m] for m in ("accuracy", "auroc", "f1")}, abs=1e-6)
    assert summary["adabn"]["test_hospital_b_after"] != summary["adabn"]["test_hospital_b_before"]
    assert "planted" in result.output and (out / "diagnose" / "report.html").is_file()
    # the fingerprint rows: the input-level shift lands in the first blocks, and every property with a known
    # direction (contrast, brightness, size) moved that way
    rows = {row["shift"]: row for row in summary["found_vs_planted"]}
    assert rows["where it lands"]["matches"], rows["where it lands"]
    assert rows["image properties"]["matches"], rows["image properties"]
    assert report["fingerprint"]["peak"]["index"] == 0
    # hospital B's accuracy estimated without its labels, beside what its labels measure; the planted shift is
    # strong, so the estimate must come with the flags that say not to trust it
    estimate = summary["estimate"]
    assert estimate["accuracy"]["interval"][0] <= estimate["accuracy"]["estimate"] <= estimate["accuracy"]["interval"][1]
    assert 0 < estimate["accuracy"]["measured"] <= 1
    lo, hi = estimate["accuracy"]["measured_interval"]  # B's labelled images, a sample of hospital B
    assert lo <= estimate["accuracy"]["measured"] <= hi
    assert "covariate_shift" in estimate["flags"]
    assert "estimated before its labels were used" in result.output

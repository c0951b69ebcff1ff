"""``shiftkit estimate`` end to end: a fine-tuned checkpoint, labelled source-validation images, a target. On a
target from the same scanner the default method's interval covers the accuracy measured with the target's labels;
on a blurred, low-contrast target the flags speak; bad input is one line and exit code 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.data.synthetic import CLASSES
from test_diagnose import write_domain

runner = CliRunner()
FAST = ["--bootstrap", "200", "--device", "cpu", "--batch-size", "32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("estimate")
    counts = {c: 24 for c in CLASSES}
    data = {"train": write_domain(base / "train", counts, seed=0),
            "val": write_domain(base / "val", counts, seed=1),
            "same": write_domain(base / "same", {c: 30 for c in CLASSES}, seed=2),
            "shifted": write_domain(base / "shifted", {c: 30 for c in CLASSES}, seed=3, contrast=0.4, blur=1.5)}
    run = base / "model"
    result = runner.invoke(app, ["finetune", str(data["train"]), "--val", str(data["val"]), "--out", str(run),
                                 "--arch", "efficientnet_lite0", "--strategy", "lp", "--image-size", "64",
                                 "--epochs", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    calibration = write_domain(base / "cal", {c: 30 for c in CLASSES}, seed=4)
    return {**data, "cal": calibration, "model": run}


def _estimate(trained, target, out, *extra):
    result = runner.invoke(app, ["estimate", str(trained["model"]), "--source-val", str(trained["cal"]),
                                 "--target", str(trained[target]), "--out", str(out), *FAST, *extra])
    return result


def test_same_scanner_interval_covers_the_measured_accuracy(trained, tmp_path):
    result = _estimate(trained, "same", tmp_path / "e")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e" / "estimate.json").read_text())
    measured = report["measured"]["accuracy"]
    default = next(r for r in report["estimates"] if r["method"] == report["default_method"]
                   and r["metric"] == "accuracy")
    lo, hi = default["interval"]
    assert lo - 1e-9 <= measured <= hi + 1e-9, (default, measured)  # a perfect model: 1.0 vs 1 - 3e-14
    assert {r["method"] for r in report["estimates"]} >= {"source", "ac", "ac_dc", "atc", "doc", "cm_atc", "iw"}
    assert report["default_method"] == "ac_dc" and report["details"]["distance_check"]["neighbours"] >= 1
    flags = {f["code"]: f["status"] for f in report["flags"]}
    assert flags["covariate_shift"] == "clear" and flags["concept_shift"] == "not_assessed"
    assert flags["far_from_source"] in ("clear", "raised")  # the check ran on the checkpoint's embeddings
    assert "estimated accuracy at the target" in result.output and "measured with the target's labels" in result.output
    lo, hi = report["measured"]["intervals"]["accuracy"]  # the 90 labelled images: a sample of the site
    assert lo <= measured <= hi and hi - lo > 0.02
    assert "(90images,exact95%interval)" in "".join(result.output.split())  # the terminal folds long lines
    assert report["labelling_plan"]["labelled"] == report["labelling_plan"]["target_images"] == 90
    assert "randomlychosen" not in "".join(result.output.split())  # every image is labelled: no advice to label
    html = (tmp_path / "e" / "estimate.html").read_text()
    assert "<img" in html and "What each method assumes" in html
    for c, prior in report["target_prior"]["target"].items():  # a number cell (right-aligned), 3 decimals
        assert f'<td>{c}</td><td class="num">{round(report["target_prior"]["source"][c], 3):.4g}</td>' in html
        assert f'<td class="num">{round(prior, 3):.4g}</td>' in html


def test_a_shifted_target_raises_the_covariate_flag_and_never_prints_a_bare_number(trained, tmp_path):
    result = _estimate(trained, "shifted", tmp_path / "e")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e" / "estimate.json").read_text())
    assert {f["code"] for f in report["flags"] if f["status"] == "raised"} & {"covariate_shift", "extrapolation"}
    assert "flag " in result.output
    for row in report["estimates"]:
        assert row["estimate"] is None or row["interval"] is not None


def test_a_known_target_prevalence_is_used_and_said(trained, tmp_path):
    """``--prior CLASS=VALUE,...`` (counts here) is the prevalence the user knows: ac_dc is computed at it, the
    report says where the prior came from, and the interval still covers the measured accuracy."""
    result = _estimate(trained, "same", tmp_path / "e", "--prior", "oval=30,round=30,spiky=30")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e" / "estimate.json").read_text())
    assert report["target_prior"]["mode"] == "known" and "known, not estimated" in report["target_prior"]["from"]
    assert report["target_prior"]["target"] == pytest.approx({c: 1 / 3 for c in CLASSES})
    assert report["methods"]["ac_dc"]["target_prior"] == "known"
    default = next(r for r in report["estimates"] if r["method"] == "ac_dc" and r["metric"] == "accuracy")
    assert "prediction_rate_bound" in default["details"]  # a bound, applied whatever the flags say
    lo, hi = default["interval"]
    assert lo - 1e-9 <= report["measured"]["accuracy"] <= hi + 1e-9
    assert "<th>target (given)</th>" in (tmp_path / "e" / "estimate.html").read_text()


def test_bad_input_is_one_line_and_exit_code_2(trained, tmp_path):
    unlabelled = tmp_path / "unlabelled.csv"
    first = sorted((trained["cal"] / "oval").glob("*.png"))[:5]
    unlabelled.write_text("path\n" + "".join(f"{p}\n" for p in first))
    other_classes = tmp_path / "other.csv"
    other_classes.write_text("path,label\n" + "".join(f"{p},tumour\n" for p in first))
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label\n")
    cases = [(["--source-val", str(unlabelled)], "needs a label for every image"),
             (["--source-val", str(other_classes)], "is not one of the model's classes"),
             (["--target", str(empty)], "manifest has no rows"),
             (["--methods", "magic"], "unknown method 'magic'"),
             (["--prior", "oval=0.5"], "no value for class(es) round, spiky"),
             (["--prior", "tumour=1"], "'tumour' is not one of the model's classes"),
             (["--prior", "magic"], "choose from em_bcts, bbse, none, or state the target prevalence")]
    for options, message in cases:
        args = {"--source-val": str(trained["cal"]), "--target": str(trained["same"])}
        extra = []
        for i in range(0, len(options), 2):
            if options[i] in args:
                args[options[i]] = options[i + 1]
            else:
                extra += options[i:i + 2]
        result = runner.invoke(app, ["estimate", str(trained["model"]), *[x for kv in args.items() for x in kv],
                                     "--out", str(tmp_path / "o"), *FAST, *extra])
        assert result.exit_code == 2, (options, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_diagnose_with_a_checkpoint_reports_the_estimate(trained, tmp_path):
    result = runner.invoke(app, ["diagnose", str(trained["cal"]), str(trained["same"]), "--out", str(tmp_path / "d"),
                                 "--checkpoint", str(trained["model"]), "--device", "cpu", "--permutations", "100",
                                 "--bootstrap", "20", "--tests", "mmd,domain_classifier"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    section = report["performance_estimate"]
    default = next(r for r in section["estimates"] if r["method"] == section["default_method"]
                   and r["metric"] == "accuracy")
    assert default["interval"][0] <= default["estimate"] <= default["interval"][1]
    # the target's class folders are labels: measured beside the estimate (a check, never an input)
    assert default["interval"][0] - 1e-9 <= section["measured"]["accuracy"] <= default["interval"][1] + 1e-9
    assert section["measured"]["intervals"]["accuracy"][0] <= section["measured"]["accuracy"]
    assert section["labelling_plan"]["labelled"] == section["measured"]["n"] == 90
    assert "performance:" in result.output
    html = (tmp_path / "d" / "report.html").read_text()
    assert html.index("How the model will do at the target") < html.index("Recommended fine-tuning strategy")


def test_diagnose_takes_a_known_target_prevalence_for_its_estimate(trained, tmp_path):
    """``diagnose --checkpoint ... --target-prevalence CLASS=P,...``: the estimate section is computed at it and says
    so; a bad value, or the option without a checkpoint, is one line and exit code 2 before any forward pass."""
    base = ["diagnose", str(trained["cal"]), str(trained["same"]), "--device", "cpu", "--permutations", "100",
            "--bootstrap", "20", "--tests", "mmd"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "d"), "--checkpoint", str(trained["model"]),
                                 "--target-prevalence", "oval=1,round=1,spiky=2"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    prior = report["performance_estimate"]["target_prior"]
    assert prior["mode"] == "known" and prior["target"] == pytest.approx({"oval": 0.25, "round": 0.25, "spiky": 0.5})
    assert "computed at the target prevalence given with --target-prevalence: oval 0.250, round 0.250, spiky 0.500" \
        in (tmp_path / "d" / "report.html").read_text()
    for extra, message in ((["--checkpoint", str(trained["model"]), "--target-prevalence", "oval=1"],
                            "--target-prevalence: no value for class(es) round, spiky"),
                           (["--checkpoint", str(trained["model"]), "--target-prevalence", "none"],
                            "'none' is not CLASS=VALUE"),
                           (["--target-prevalence", "oval=1,round=1,spiky=1"], "needs --checkpoint")):
        result = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), *extra])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output

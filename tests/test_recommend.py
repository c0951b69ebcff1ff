"""Recommendation: the bundled evidence, the recommender's documented directions, LODO, and the CLI."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.errors import ConfigError, DataError
from shiftkit.recommend import PUBLISHED_STRATEGIES, ShiftFacts, load_evidence, recommend
from shiftkit.recommend.evaluate import METHODS, leave_one_dataset_out
from shiftkit.recommend.recommender import COVARIATE_PRIOR, IMBALANCE_PRIOR

runner = CliRunner()
DATA = Path(__file__).resolve().parents[1] / "shiftkit" / "recommend" / "data"
SHARED = Path(os.environ.get("SHIFTKIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))

# A report with exactly the layout `shiftkit diagnose` writes (ShiftProfile.to_dict() + skipped_images), trimmed.
REPORT = {
    "covariate": {
        "mmd": {"test": "mmd", "statistic": 0.11, "p_value": 0.001, "n_source": 360, "n_target": 300,
                "method": "mmd", "permutations": 1000, "seed": 0, "details": {"bandwidth": 22.4}},
        "domain_classifier": {"test": "domain_classifier", "statistic": 0.91, "p_value": 0.0, "n_source": 360,
                              "n_target": 300, "method": "dc", "permutations": None, "seed": 0,
                              "details": {"auc": 0.91, "pad": 1.2, "pad_ci": [1.1, 1.3]}},
        "metadata": [],
    },
    "label": {"method": "em_bcts", "classes": ["a", "b", "c", "d"], "statistic": 0.5, "p_value": 0.01,
              "source_prior": {"a": .25, "b": .25, "c": .25, "d": .25},
              "target_prior": {"a": .5, "b": .2, "c": .2, "d": .1}, "details": {"total_variation": 0.25}},
    "concept": None,
    "dataset": {"n_source": 360, "n_target": 300, "classes": ["a", "b", "c", "d"],
                "source_counts": {"a": 90, "b": 90, "c": 90, "d": 90}, "target_counts": None,
                "imbalance_ratio": 1.0, "multilabel": False, "target_labelled": 0},
    "verdict": {"covariate": {"level": "strong", "reason": "..."}, "label": {"level": "strong", "reason": "..."},
                "concept": {"level": "not measured", "reason": "no target labels were given"}},
    "settings": {"source": "a.csv", "target": "b.csv", "arch": "efficientnet_lite0", "seed": 0},
    "skipped_images": [],
}


def gains(recommendation) -> dict[str, float]:
    return {a.strategy: a.expected_gain for a in recommendation.ranking}


def ranks(recommendation) -> dict[str, int]:
    return {a.strategy: i for i, a in enumerate(recommendation.ranking)}


# ---------------------------------------------------------------- evidence


def test_evidence_loads_every_row_of_the_bundled_csvs():
    evidence = load_evidence()
    counts = {name: sum(1 for _ in csv.DictReader((DATA / name).open())) for name in
              ("davila2024_results.csv", "davila2024_best.csv", "davila2024_effectiveness.csv")}
    assert len(evidence.results) == counts["davila2024_results.csv"] == 288
    assert len(evidence.best_cells) == counts["davila2024_best.csv"] == 8
    assert len(evidence.effectiveness) == counts["davila2024_effectiveness.csv"] == 7
    assert evidence.effectiveness["lp_ft"] == 58.3
    assert len(evidence.cases()) == 18  # 6 datasets with full tables x 3 architectures
    assert len(evidence.datasets) == 8


@pytest.mark.skipif(not (SHARED / "evidence").is_dir(), reason=f"no shared evidence at {SHARED / 'evidence'}")
def test_bundled_csvs_are_exact_copies_of_the_shared_evidence():
    for name in ("davila2024_results.csv", "davila2024_best.csv", "davila2024_effectiveness.csv"):
        assert (DATA / name).read_bytes() == (SHARED / "evidence" / name).read_bytes(), name


def test_relative_gains_match_values_computed_by_hand_from_the_csv():
    evidence = load_evidence()
    # BACH / densenet121, accuracy: ft 67.50, auto_rgn 75.00 -> 100 * 7.5 / 67.5
    assert evidence.gain("BACH", "densenet121", "auto_rgn") == pytest.approx(11.111, abs=1e-3)
    # MURA-Wrist / vgg19, accuracy: ft 80.83, l1_sp 82.61
    assert evidence.gain("MURA-Wrist", "vgg19", "l1_sp") == pytest.approx(100 * (82.61 - 80.83) / 80.83)
    # ISIC-2020's main metric is AUROC (Fig. 10, Table 11): densenet121 lp vs ft
    isic = {r.strategy: r.mean for r in evidence.query("ISIC-2020", "densenet121", metric="AUROC")}
    assert evidence.gain("ISIC-2020", "densenet121", "lp") == pytest.approx(100 * (isic["lp"] - isic["ft"]) / isic["ft"])
    # a non-main metric on request: T1w-MRI / resnet50 F1, ft 95.17, lp 89.20
    assert evidence.gain("T1w-MRI", "resnet50", "lp", metric="f1") == pytest.approx(100 * (89.20 - 95.17) / 95.17)
    # Table 11's published best-cell gains are reproduced from Tables 3-10 (rounded to 0.1 %)
    for best in evidence.best_cells:
        if evidence.query(best.dataset):
            assert evidence.gain(best.dataset, best.architecture, best.strategy) == pytest.approx(best.gain, abs=0.051), best


def test_queries_by_dataset_architecture_strategy_and_metric():
    evidence = load_evidence()
    bach_vgg = evidence.query(dataset="bach", architecture="VGG19")
    assert len(bach_vgg) == 16 and {r.strategy for r in bach_vgg} == set(PUBLISHED_STRATEGIES)
    assert {r.metric for r in bach_vgg} == {"accuracy", "kappa"}
    lp_ft_map = evidence.query(strategy="lp_ft", metric="mAP")
    assert sorted({r.dataset for r in lp_ft_map}) == ["CheXpert", "CholecT50-Instrument"] and len(lp_ft_map) == 6
    case = next(c for c in evidence.cases() if (c.dataset, c.architecture) == ("T1w-MRI", "vgg19"))
    assert case.best == ("ft",) and case.gains["ft"] == 0.0 and case.metric == "accuracy"
    assert evidence.without("BACH").query("BACH") == [] and len(evidence.without("BACH").cases()) == 15
    with pytest.raises(DataError, match="no published results"):
        evidence.gain("Nowhere", "resnet50", "lp")


def test_a_malformed_evidence_file_names_its_line(tmp_path):
    for name in ("davila2024_results.csv", "davila2024_best.csv", "davila2024_effectiveness.csv"):
        (tmp_path / name).write_text((DATA / name).read_text())
    lines = (tmp_path / "davila2024_results.csv").read_text().splitlines()
    lines[1] = lines[1].replace("71.98", "seventy")
    (tmp_path / "davila2024_results.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 2: column 'mean' is 'seventy'"):
        load_evidence(tmp_path)


# ---------------------------------------------------------------- the recommender


@pytest.mark.parametrize("arch", ["resnet50", "densenet121", "vgg19", "efficientnet_lite0", "resnet18"])
def test_smaller_training_sets_move_g_lf_up(arch):
    """Documented direction: as the set shrinks, the weight moves to BACH (360), where g_lf (early layers frozen
    longest) gained on all three architectures; on the largest sets (CheXpert, ISIC) it lost."""
    small = recommend(ShiftFacts(train_size=360, num_classes=4), arch)
    large = recommend(ShiftFacts(train_size=60_000, num_classes=4), arch)
    assert gains(small)["g_lf"] > gains(large)["g_lf"] + 1.0
    assert ranks(small)["g_lf"] < ranks(large)["g_lf"]
    reasons = " ".join(next(a for a in small.ranking if a.strategy == "g_lf").reasons)
    assert "small training set (360 images)" in reasons and "BACH" in reasons


def test_covariate_shift_enters_as_the_documented_prior():
    base = ShiftFacts(train_size=3000, num_classes=2, domain="X-ray")
    none = recommend(replace(base, covariate_strength="none"), "resnet50")
    mild = recommend(replace(base, covariate_strength="mild"), "resnet50")
    strong = recommend(replace(base, covariate_strength="strong", covariate_auc=0.95), "resnet50")
    for s in PUBLISHED_STRATEGIES:
        assert gains(strong)[s] - gains(none)[s] == pytest.approx(COVARIATE_PRIOR[s])
        assert gains(mild)[s] - gains(none)[s] == pytest.approx(COVARIATE_PRIOR[s] / 2)
    # strategies that adapt early layers move up (or stay), those that keep them fixed move down (or stay)
    assert ranks(strong)["g_fl"] <= ranks(none)["g_fl"] and ranks(strong)["auto_rgn"] <= ranks(none)["auto_rgn"]
    assert ranks(strong)["lp"] >= ranks(none)["lp"] and ranks(strong)["g_lf"] >= ranks(none)["g_lf"]
    lp = next(a for a in strong.ranking if a.strategy == "lp")
    assert lp.uncertainty > next(a for a in none.ranking if a.strategy == "lp").uncertainty
    assert any("strong covariate shift, domain-classifier AUC 0.95: prior -2.0 %" in r for r in lp.reasons)
    unmeasured = recommend(base, "resnet50")
    assert gains(unmeasured) == pytest.approx(gains(none))
    assert any("not measured" in n for n in unmeasured.notes)


def test_strong_imbalance_favours_linear_probing_by_the_documented_prior():
    balanced = recommend(ShiftFacts(train_size=20_000, num_classes=2, imbalance=1.5), "densenet121")
    skewed = recommend(ShiftFacts(train_size=20_000, num_classes=2, imbalance=50.0), "densenet121")
    for s in PUBLISHED_STRATEGIES:
        assert gains(skewed)[s] - gains(balanced)[s] == pytest.approx(IMBALANCE_PRIOR.get(s, 0.0))


def test_domain_weighs_the_matching_published_cases():
    derm = recommend(ShiftFacts(train_size=5000, num_classes=2, domain="dermoscopy"), "densenet121")
    assert derm.best.evidence[0]["dataset"] == "ISIC-2020"
    ct = recommend(ShiftFacts(train_size=5000, num_classes=2, domain="CT"), "densenet121")
    agnostic = recommend(ShiftFacts(train_size=5000, num_classes=2), "densenet121")
    assert gains(ct) == pytest.approx(gains(agnostic))
    assert any("domain 'CT' has no published case" in n for n in ct.notes)


@pytest.mark.parametrize("arch, borrowed", [("efficientnet_lite0", "resnet50's and densenet121's"),
                                            ("resnet18", "resnet50's evidence"), ("convnext_tiny", "pooled")])
def test_architectures_outside_the_paper_get_a_ranking_and_say_whose_evidence(arch, borrowed):
    rec = recommend(ShiftFacts(train_size=1000, num_classes=3), arch, top=3)
    assert len(rec.ranking) == 3 and rec.arch == arch
    assert borrowed in rec.notes[0]
    assert set(rec.evidence_architectures) == {"resnet50", "densenet121", "vgg19"}
    full = recommend(ShiftFacts(train_size=1000, num_classes=3), arch)
    assert sorted(a.strategy for a in full.ranking) == sorted(PUBLISHED_STRATEGIES)
    assert [a.expected_gain for a in full.ranking] == sorted((a.expected_gain for a in full.ranking), reverse=True)
    d = full.to_dict()
    assert json.loads(json.dumps(d)) == d and d["best"] == full.ranking[0].strategy
    ft = next(a for a in full.ranking if a.strategy == "ft")
    assert ft.expected_gain == 0.0 and ft.uncertainty == 0.0


def test_facts_are_read_from_a_diagnose_report_and_bad_values_refused():
    facts = ShiftFacts.from_report(REPORT)
    assert facts == ShiftFacts(train_size=360, num_classes=4, imbalance=1.0, multilabel=False,
                               covariate_strength="strong", covariate_auc=0.91, label_tv=0.25, concept=None,
                               domain=None)
    for broken, message in [({"dataset": None}, "no 'dataset' section"),
                            ({"dataset": {**REPORT["dataset"], "n_source": "many"}}, "n_source"),
                            ({"verdict": {"covariate": {"level": "huge"}}}, "verdict.covariate.level")]:
        with pytest.raises(DataError, match=message):
            ShiftFacts.from_report({**REPORT, **broken})
    with pytest.raises(ConfigError, match="covariate strength"):
        ShiftFacts(covariate_strength="very")


# ---------------------------------------------------------------- leave-one-dataset-out


def test_leave_one_dataset_out_runs_and_prints_its_hit_rates():
    result = leave_one_dataset_out()
    # 18 full (dataset x architecture) cases + the 2 Table-11-only cells (MURA-Shoulder, MURA-Humerus)
    assert result.n_cases == 20 and result.n_datasets == 8
    assert sum(c.source == "tables" for c in result.cases) == 18
    for case in result.cases:
        for method in METHODS:
            assert sorted(case.rankings[method]) == sorted(PUBLISHED_STRATEGIES), (case, method)
    rates = result.rates()
    print("\nLODO over the published evidence "
          f"({result.n_cases} cases, {result.n_datasets} datasets): best strategy ranked 1st / in top 3")
    for method, rate in rates.items():
        print(f"  {method:14s} top1 {rate['top1']:.2f}  top3 {rate['top3']:.2f}")
        for k in ("top1", "top3"):
            assert 0.0 <= rate[k] <= 1.0
            assert (rate[k] * result.n_cases) == pytest.approx(round(rate[k] * result.n_cases))  # a count of cases
        assert rate["top1"] <= rate["top3"]
    # the constant baselines are scored against the true winners: ft won only T1w-MRI / vgg19
    assert rates["always ft"]["top1"] == pytest.approx(1 / 20)
    lp_ft_wins = sum("lp_ft" in c.best for c in result.cases)
    assert rates["always lp_ft"]["top1"] == pytest.approx(lp_ft_wins / 20)


def test_the_held_out_dataset_never_informs_its_own_ranking(monkeypatch):
    import shiftkit.recommend.evaluate as evaluate

    seen = []
    real = evaluate.recommend

    def spy(facts, arch, top=None, evidence=None):
        seen.append((facts.train_size, {c.dataset for c in evidence.cases()}))
        return real(facts, arch, top=top, evidence=evidence)

    monkeypatch.setattr(evaluate, "recommend", spy)
    result = evaluate.leave_one_dataset_out()
    for case, (size, datasets) in zip(result.cases, seen):
        assert case.dataset not in datasets


# ---------------------------------------------------------------- CLI


@pytest.fixture
def planted_evidence(tmp_path):
    """A synthetic scenario evidence file whose winners follow a planted rule (tests/test_nearest_recommender.py)."""
    from test_nearest_recommender import planted_table

    path = tmp_path / "evidence.jsonl"
    path.write_text("".join(json.dumps(s.to_dict()) + "\n" for s in planted_table()))
    return path


def test_recommend_cli_prints_the_measured_ranking_as_a_table_and_json(tmp_path, planted_evidence):
    from shiftkit.recommend.measured import recommend_for_report

    path = tmp_path / "report.json"
    path.write_text(json.dumps(REPORT))
    table = runner.invoke(app, ["recommend", str(path), "--top", "3", "--evidence", str(planted_evidence)])
    assert table.exit_code == 0, table.output
    assert "Recommended fine-tuning strategies for efficientnet_lite0" in table.output
    assert "most similar" in table.output and "Davila et al. 2024" in table.output  # ImageNet: the paper informs
    as_json = runner.invoke(app, ["recommend", str(tmp_path), "--arch", "vgg19", "--domain", "histopathology",
                                  "--train-size", "200", "--start", "source", "--json",
                                  "--evidence", str(planted_evidence)])
    assert as_json.exit_code == 0, as_json.output
    out = json.loads(as_json.stdout)
    assert out["arch"] == "vgg19" and len(out["ranking"]) == 8 and out["facts"]["domain"] == "histopathology"
    assert out["start"] == "source" and out["features"]["from_source"] == 1.0 and out["facts"]["train_size"] == 200
    assert not any("Davila" in r for a in out["ranking"] for r in a["reasons"])  # from the source model: measured only
    expected = recommend_for_report(REPORT, "vgg19", budget=200, start="source", domain="histopathology",
                                    evidence=planted_evidence)
    assert [a["strategy"] for a in out["ranking"]] == [a["strategy"] for a in expected["ranking"]]
    assert "measured with efficientnet_lite0" in " ".join(out["notes"])
    # the report has no fingerprint: the chosen features it lacks are named, and the distance leaves them out
    assert "not measured in this report: early_shift, probe_auroc" in " ".join(out["notes"])


def test_recommend_cli_evaluate_prints_both_evaluations(planted_evidence):
    result = runner.invoke(app, ["recommend", "--evaluate", "--json", "--evidence", str(planted_evidence)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["published"]["n_cases"] == 20 and set(out["published"]["rates"]) == set(METHODS)
    measured = out["measured"]
    assert measured["scenarios"] == 48 and measured["scores"]["recommender"]["top1"] >= 0.8
    table = runner.invoke(app, ["recommend", "--evaluate", "--evidence", str(planted_evidence)])
    assert table.exit_code == 0 and "Leave-one-dataset-out" in table.output
    assert "Leave-one-family-out" in table.output and "always lp_ft" in table.output


def _verify_with_scores(monkeypatch, tmp_path, phantom_dir, evidence, score, *extra):
    """``recommend REPORT --verify`` with every search arm's validation score given by ``score(strategy)``."""
    import importlib

    from shiftkit.compare.search import ArmProgress

    monkeypatch.setattr(importlib.import_module("shiftkit.cli.compare"), "finetune_arms",
                        lambda settings, arch, seed, out, callback=None:
                        lambda arm, budget: ArmProgress(score(arm.strategy), budget))
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORT))
    return runner.invoke(app, ["recommend", str(report), "--arch", "resnet18", "--evidence", str(evidence),
                               "--verify", str(phantom_dir), "--epochs", "3", "--lrs", "1e-3", *extra])


@pytest.mark.parametrize("planted_rank", [1, 2])
def test_verify_searches_the_recommended_top_k_and_says_whether_the_data_agrees(
        phantom_dir, tmp_path, planted_evidence, monkeypatch, planted_rank):
    from shiftkit.recommend.measured import recommend_for_report

    ranked = [a["strategy"] for a in recommend_for_report(REPORT, "resnet18", evidence=planted_evidence)["ranking"]]
    planted_best = ranked[planted_rank - 1]  # the strategy the data will prefer
    score = lambda strategy: 0.9 if strategy == planted_best else 0.6  # noqa: E731
    result = _verify_with_scores(monkeypatch, tmp_path, phantom_dir, planted_evidence, score,
                                 "--out", str(tmp_path / "verify"), "--json")
    assert result.exit_code == 0, result.output
    verification = json.loads(result.stdout)["verification"]
    assert verification["arms"] == ranked[:3] + ([] if "ft" in ranked[:3] else ["ft"])  # top 3, and the reference
    assert verification["search_winner"] == planted_best
    assert verification["agrees"] is (planted_rank == 1)
    assert verification["winner_rank_in_recommendation"] == planted_rank
    assert verification["full_grid_epochs_one_seed"] == 8 * 1 * 3
    assert 0 < verification["cost_fraction"] < 1
    table = _verify_with_scores(monkeypatch, tmp_path, phantom_dir, planted_evidence, score,
                                "--out", str(tmp_path / "verify2"), "--top", "1")  # --verify still searches three
    assert ("the data agrees" if planted_rank == 1 else "the data prefers #2") in table.output


def test_verify_breaks_the_searchs_ties_in_the_recommendations_order(phantom_dir, tmp_path, planted_evidence,
                                                                       monkeypatch):
    """Every arm scores the same: the search must then pick the recommended first strategy (its order, passed as
    compare's --order), not the order compare would derive from the data's facts alone."""
    from shiftkit.recommend.measured import recommend_for_report

    ranked = [a["strategy"] for a in recommend_for_report(REPORT, "resnet18", evidence=planted_evidence)["ranking"]]
    result = _verify_with_scores(monkeypatch, tmp_path, phantom_dir, planted_evidence, lambda strategy: 0.7,
                                 "--out", str(tmp_path / "verify"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verification"]["search_winner"] == ranked[0]
    search = json.loads((tmp_path / "verify" / "search.json").read_text())["archs"]["resnet18"]
    assert search["ranking"] == ranked and search["ranking_source"] == "--order option"
    alone = runner.invoke(app, ["compare", str(phantom_dir), "--order", "ft", "--out", str(tmp_path / "x")])
    assert alone.exit_code == 2 and "--order orders the arms of --search" in alone.stderr


def test_verify_needs_a_report_and_an_out(phantom_dir, tmp_path):
    result = runner.invoke(app, ["recommend", "--evaluate", "--verify", str(phantom_dir)])
    assert result.exit_code == 2 and "--verify DATA needs a REPORT" in result.stderr


@pytest.mark.parametrize("extra, message", [
    (["--train-size", "0"], "must be at least 1, got 0"),
    (["--train-size", "-5"], "must be at least 1, got -5"),
    (["--start", "nowhere"], "--start 'nowhere': choose imagenet or source"),
    (["--init", "RUN", "--start", "imagenet"], "leave out --start imagenet"),
])
def test_bad_recommend_options_are_one_line_and_exit_2(tmp_path, extra, message):
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORT))
    extra = [str(tmp_path) if x == "RUN" else x for x in extra]
    result = runner.invoke(app, ["recommend", str(report), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON (line 1"),
    (json.dumps({"covariate": {}, "verdict": {}}), "no 'dataset' section"),
    (json.dumps([1, 2]), "not a JSON object"),
    (None, "no such report"),
])
def test_a_malformed_report_is_one_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["recommend", str(path)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_recommend_without_report_or_evaluate_is_a_usage_error():
    result = runner.invoke(app, ["recommend"])
    assert result.exit_code == 2 and "--evaluate" in result.stderr


def test_a_real_diagnose_run_carries_the_recommendation(phantom_dir, tmp_path):
    """A real (small) diagnose: report.json, the HTML page and the terminal get the recommendation, and
    `shiftkit recommend` on that report gives the same ranking."""
    target = tmp_path / "target"  # a lower-contrast, blurrier scanner; unlabelled (flat folder)
    target.mkdir()
    for png in sorted(phantom_dir.rglob("*.png"))[::2]:
        image = Image.open(png).point(lambda v: 128 + 0.5 * (v - 128)).filter(ImageFilter.GaussianBlur(1))
        image.save(target / f"{png.parent.name}_{png.name}")
    out = tmp_path / "out"
    result = runner.invoke(app, ["diagnose", str(phantom_dir), str(target), "--out", str(out), "--image-size", "32",
                                 "--tests", "mmd,domain_classifier", "--permutations", "50", "--bootstrap", "20",
                                 "--device", "cpu", "--domain", "MRI"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    rec = report["recommendation"]
    assert len(rec["ranking"]) == 8 and rec["arch"] == "efficientnet_lite0"
    assert rec["facts"]["train_size"] == 36 and rec["facts"]["num_classes"] == 3 and rec["facts"]["domain"] == "MRI"
    assert rec["facts"]["covariate_strength"] == report["verdict"]["covariate"]["level"]
    assert "Recommended fine-tuning strategy" in (out / "report.html").read_text()
    assert "Recommended fine-tuning strategies" in result.output
    again = runner.invoke(app, ["recommend", str(out / "report.json"), "--json"])
    assert again.exit_code == 0, again.output
    assert [a["strategy"] for a in json.loads(again.stdout)["ranking"]] == [a["strategy"] for a in rec["ranking"]]


def test_without_measured_evidence_the_published_recommender_answers_and_says_so(tmp_path):
    from shiftkit.recommend.measured import recommend_for_report

    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    rec = recommend_for_report(REPORT, "vgg19", budget=360, domain="histopathology", evidence=empty)
    expected = recommend(replace(ShiftFacts.from_report(REPORT), train_size=360, domain="histopathology"), "vgg19")
    assert [a["strategy"] for a in rec["ranking"]] == [a.strategy for a in expected.ranking]
    assert any("holds no measured scenario" in note for note in rec["notes"])

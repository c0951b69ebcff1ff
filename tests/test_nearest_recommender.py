"""The measured-evidence recommender (issue 18): a planted rule is recovered, a shuffled table gives chance, a leak
is caught, and the evidence file round-trips."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from shiftkit.errors import DataError
from shiftkit.recommend.family_eval import leave_one_family_out
from shiftkit.recommend.nearest import check_no_leak, fit
from shiftkit.recommend.scenario_evidence import FEATURES, STRATEGIES, Outcome, Scenario, load_scenarios

QUADRANT_WINNER = {(True, True): "g_fl", (True, False): "ft", (False, True): "lp", (False, False): "l2_sp"}


def planted_table(seed: int = 0, families: int = 6, per_family: int = 8) -> list[Scenario]:
    """Synthetic evidence: the winner is decided by where the shift peaks (early_shift) and how good the frozen
    features are (probe_auroc); every other feature is noise. The winner leads by 5 points, SEs are 0.3."""
    rng = np.random.default_rng(seed)
    scenarios = []
    for f in range(families):
        for i in range(per_family):
            features = {name: float(rng.uniform()) for name in FEATURES}
            winner = QUADRANT_WINNER[(features["early_shift"] > 0.5, features["probe_auroc"] > 0.5)]
            means = {s: 75.0 + float(rng.normal(0, 1.0)) for s in STRATEGIES}
            means[winner] = max(means.values()) + 5.0
            scenarios.append(Scenario(
                name=f"f{f}-s{i}", family=f"family{f}", variant=f"f{f}-v{i}", dataset="synthetic", start="imagenet",
                budget=50, metric="auroc", features=features,
                outcomes={s: Outcome(m, 0.3, 2) for s, m in means.items()}))
    return scenarios


def shuffled(scenarios: list[Scenario], seed: int) -> list[Scenario]:
    """The same outcomes, dealt to other scenarios' features: nothing links a fingerprint to its winner."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(scenarios))
    return [dataclasses.replace(s, outcomes=scenarios[j].outcomes) for s, j in zip(scenarios, order)]


def test_planted_rule_is_recovered_with_low_regret():
    result = leave_one_family_out(planted_table()).to_dict()
    ours, lp_ft = result["scores"]["recommender"], result["scores"]["always lp_ft"]
    assert ours["top1"] >= 0.8
    assert ours["regret"] <= 0.5 * lp_ft["regret"]
    assert result["scores"]["oracle"]["regret"] == 0.0
    model = fit(planted_table())
    assert set(model.features[:2]) == {"early_shift", "probe_auroc"}  # the rule's two features, found first
    early_good = {**{f: 0.5 for f in FEATURES}, "early_shift": 0.9, "probe_auroc": 0.9}
    assert model.rank(early_good)[0] == "g_fl"
    late_poor = {**early_good, "early_shift": 0.1, "probe_auroc": 0.1}
    assert model.rank(late_poor)[0] == "l2_sp"


def test_shuffled_table_gives_chance_level():
    table = planted_table()
    rates = [leave_one_family_out(shuffled(table, seed)).to_dict()["scores"]["recommender"]["top1"]
             for seed in range(3)]
    # four winners, each a quarter of the scenarios: chance is 1/4
    assert np.mean(rates) <= 0.45


def test_planted_leak_is_caught():
    table = planted_table(families=3, per_family=3)
    copy = dataclasses.replace(table[0], name="copy-of-" + table[0].name, family="family1")  # same target data
    with pytest.raises(DataError, match="leak: held-out scenario .* shares its target data"):
        leave_one_family_out(table + [copy])
    with pytest.raises(DataError, match="also in the training set"):
        check_no_leak([table[0]], [table[0]])


def test_fit_never_sees_the_held_out_family():
    table = planted_table(families=4, per_family=3)
    seen = []

    def spy(train):
        seen.append({s.family for s in train})
        return fit(train)

    result = leave_one_family_out(table, fitter=spy)
    held = [h.scenario.family for h in result.held_out]
    assert len(seen) == 4 and all(len(families) == 3 for families in seen)
    assert sorted(set(held)) == [f"family{i}" for i in range(4)]
    assert all(family not in families for family, families in zip(sorted(set(held)), seen))


def test_ties_within_one_standard_error_count_as_hits():
    s = Scenario(name="x", family="a", variant="v", dataset="d", start="imagenet", budget=50, metric="auroc",
                 features={}, outcomes={k: Outcome(70.0, 0.1, 2) for k in STRATEGIES} |
                 {"lp": Outcome(80.0, 1.0, 2), "g_fl": Outcome(79.2, 0.5, 2), "ft": Outcome(78.0, 0.5, 2)})
    assert s.winners() == ("lp", "g_fl")  # 0.8 <= hypot(1.0, 0.5); 2.0 > hypot(1.0, 0.5)
    assert math.isclose(s.regret("ft"), 2.0) and math.isclose(s.gain("lp"), 100 * 2 / 78)


def test_advice_has_reasons_a_person_can_check():
    model = fit(planted_table())
    query = {**{f: 0.5 for f in FEATURES}, "early_shift": 0.95, "probe_auroc": 0.95}
    advice = model.advise(query)
    assert [a["strategy"] for a in advice] == model.rank(query)
    first = advice[0]
    assert first["strategy"] == "g_fl" and first["won_in"] >= 5
    assert "first-block share of the shift 0.95" in " ".join(first["reasons"])


def test_evidence_file_round_trips_and_bad_rows_are_named(tmp_path):
    table = planted_table(families=1, per_family=2)
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps(s.to_dict()) + "\n" for s in table))
    assert load_scenarios(path) == table
    path.write_text(json.dumps({"name": "broken"}) + "\n")
    with pytest.raises(DataError, match="broken"):
        load_scenarios(path)
    with pytest.raises(DataError, match="regenerate it"):
        load_scenarios(tmp_path / "missing.jsonl")


def test_a_query_without_the_chosen_features_claims_no_similar_scenarios():
    model = fit(planted_table())
    assert model.features  # the rule's features were chosen
    unknown = {f: math.nan for f in FEATURES}
    assert model.neighbours(unknown) == []
    first = model.advise(unknown)[0]
    assert "of the 48 measured scenarios" in first["reasons"][0] and "most similar" not in first["reasons"][0]
    # unknown features weigh every scenario alike: the ranking is the pooled one
    assert model.rank(unknown) == fit(planted_table(), select=False, candidates=()).rank(unknown)


def test_too_little_evidence_selects_no_feature():
    assert fit(planted_table(families=3, per_family=8)).features == ()  # 3 families: below MIN_FAMILIES
    assert fit(planted_table(families=5, per_family=2)).features == ()  # 10 scenarios: below MIN_SCENARIOS


def test_a_grid_with_missing_runs_is_not_evidence(tmp_path):
    """A ``compare --report-only`` merge of unfinished shards writes its tables with the missing runs listed: such a
    grid must not enter the evidence (its winners would come from part of the strategies)."""
    from shiftkit.recommend.scenario_evidence import grid_finished

    assert not grid_finished(tmp_path)  # nothing written yet
    (tmp_path / "compare.json").write_text(json.dumps({"missing": ["efficientnet_lite0/ft/lr0.001_seed1"]}))
    assert not grid_finished(tmp_path)
    (tmp_path / "compare.json").write_text(json.dumps({"missing": []}))
    assert grid_finished(tmp_path)
    (tmp_path / "compare.json").write_text("{not json")
    assert not grid_finished(tmp_path)


def test_a_fingerprint_from_an_older_diagnose_is_measured_again(tmp_path):
    """Evidence rows must share one revision of the fingerprint: an unmarked (older) report is not current."""
    from shiftkit.recommend.scenario_evidence import fingerprint_current, mark_fingerprint_current

    (tmp_path / "report.json").write_text("{}")
    assert not fingerprint_current(tmp_path)
    mark_fingerprint_current(tmp_path)
    assert fingerprint_current(tmp_path)
    (tmp_path / "revision").write_text("1")
    assert not fingerprint_current(tmp_path)


def _fake_run(out, spec, *, grid_mean=None, fingerprint=True, auc=0.8):
    """OUT as the evidence runner leaves it for SPEC: a current fingerprint (domain AUC ``auc``) and, with
    ``grid_mean``, a finished grid where every strategy scored it."""
    from shiftkit.recommend.scenario_evidence import STRATEGIES, mark_fingerprint_current

    folder = out / "fingerprints" / f"{spec.variant_key}-{spec.start}"
    if fingerprint:
        folder.mkdir(parents=True)
        report = {"dataset": {"n_source": 100, "classes": ["0", "1"], "source_counts": {"0": 50, "1": 50}},
                  "verdict": {}, "covariate": {"domain_classifier": {"statistic": auc}}}
        (folder / "report.json").write_text(json.dumps(report))
        mark_fingerprint_current(folder)
    if grid_mean is not None:
        cell = {"AUROC": {"mean": grid_mean, "se": 0.01, "n": 2, "lr": 1e-3}}
        table = {"main_metric": "AUROC", "archs": ["efficientnet_lite0"],
                 "rows": {s: {"efficientnet_lite0": cell} for s in STRATEGIES}}
        (out / "compare" / spec.name).mkdir(parents=True)
        (out / "compare" / spec.name / "compare.json").write_text(json.dumps({"missing": [], "table": table}))


def _earlier_row(spec, revision, mean=70.0):
    from shiftkit.recommend.scenario_evidence import STRATEGIES

    row = {"name": spec.name, "metric": "AUROC", "features": {"shift_auc": 0.6},
           "outcomes": {s: {"mean": mean, "se": 1.0, "n": 2, "lr": 1e-4} for s in STRATEGIES}}
    return {**row, "fingerprint_revision": revision} if revision else row


def test_an_earlier_rows_outcomes_are_kept_and_its_stale_fingerprint_replaced(tmp_path):
    """The evidence file is the run's checkpoint across sessions: a row measured by an older diagnose keeps its
    grid's outcomes (no grid is run again) and takes the fingerprint the current revision measured."""
    from shiftkit.recommend.scenario_evidence import collect_row
    from shiftkit.scenarios import EVIDENCE_PROTOCOL, evidence_slice

    spec, current = evidence_slice()[0], EVIDENCE_PROTOCOL["fingerprint_revision"]
    stale = _earlier_row(spec, revision=None)  # unmarked: revision 1
    assert collect_row(spec, tmp_path, stale) is None  # nothing measured again yet: the stale row is left out
    assert collect_row(spec, tmp_path, _earlier_row(spec, current)) == _earlier_row(spec, current)
    _fake_run(tmp_path, spec, auc=0.8)
    row = collect_row(spec, tmp_path, stale)
    assert row["outcomes"] == stale["outcomes"] and row["fingerprint_revision"] == current
    assert row["features"]["shift_auc"] == 0.8  # the new fingerprint, not the stale 0.6
    assert collect_row(spec, tmp_path) is None  # a fingerprint alone, no outcomes: not evidence


def test_a_finished_grid_replaces_an_earlier_rows_outcomes(tmp_path):
    from shiftkit.recommend.scenario_evidence import collect_row
    from shiftkit.scenarios import evidence_slice

    spec = evidence_slice()[0]
    _fake_run(tmp_path, spec, grid_mean=0.9)
    row = collect_row(spec, tmp_path, _earlier_row(spec, revision=None, mean=70.0))
    assert {o["mean"] for o in row["outcomes"].values()} == {90.0}  # percent, from this run's grid


def test_earlier_rows_are_reused_only_under_the_same_grid_protocol(tmp_path):
    from shiftkit.recommend.scenario_evidence import earlier_rows, write_evidence
    from shiftkit.scenarios import EVIDENCE_PROTOCOL, evidence_slice

    spec, path = evidence_slice()[0], tmp_path / "evidence.jsonl"
    assert earlier_rows(path) == {}  # no file yet
    old_revision = {k: v for k, v in EVIDENCE_PROTOCOL.items() if k != "fingerprint_revision"}
    write_evidence(path, [_earlier_row(spec, None)], protocol=old_revision, machine={})
    assert list(earlier_rows(path)) == [spec.name]  # another fingerprint revision: outcomes still reusable
    write_evidence(path, [_earlier_row(spec, None)], protocol={**EVIDENCE_PROTOCOL, "seeds": 3}, machine={})
    assert earlier_rows(path) == {}  # grids under another protocol are not this evidence

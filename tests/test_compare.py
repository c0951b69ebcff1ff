"""``shiftkit compare``: grid resume and torn lines, the paper's table on a worked example, sharding, the
successive-halving search, and one-line errors. Most tests inject a fake run function with planted metrics;
two run real (tiny, linear-probing) fine-tuning through the CLI."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.compare.grid import (
    CompareSettings,
    RunSpec,
    plan_grid,
    read_records,
    recorded,
    run_grid,
    runs_file,
    shard_plan,
)
from shiftkit.compare.search import Arm, ArmProgress, rung_budgets, score_within, successive_halving
from shiftkit.compare.tables import build_table, effectiveness, format_cell, mean_se, relative_improvement
from shiftkit.errors import ConfigError, DataError
from shiftkit.finetune.config import TrainConfig
from shiftkit.finetune.metrics import METRICS
from shiftkit.finetune.strategies import StrategyConfig

runner = CliRunner()

# planted quality per strategy; the fake run's metric = quality + small seed/lr effects
QUALITY = {"ft": 0.80, "lp": 0.70, "lp_ft": 0.86, "l2_sp": 0.81}


def fake_metrics(spec: RunSpec, with_test: bool = True) -> dict:
    value = QUALITY[spec.strategy] + 0.01 * spec.seed - 0.03 * abs(math.log10(spec.lr) + 4)
    return {
        "val": {**{m: value for m in METRICS}, "loss": 1 - value},
        "test": {**{m: value - 0.02 for m in METRICS}, "loss": 1.02 - value} if with_test else None,
        "monitor": "auroc", "epochs_run": 1, "best_epoch": 1,
    }


class FakeRun:
    def __init__(self):
        self.calls: list[RunSpec] = []

    def __call__(self, spec, settings, folder):
        self.calls.append(spec)
        return fake_metrics(spec, settings.test is not None)


@pytest.fixture
def settings(phantom_dir, phantom_test_dir) -> CompareSettings:
    return CompareSettings(data=phantom_dir, test=phantom_test_dir, weights="none", image_size=32,
                           train=TrainConfig(epochs=1, batch_size=8, device="cpu"))


PLAN = plan_grid(["resnet18"], ["ft", "lp"], [1e-3, 1e-4], [0, 1])


# -- grid: resume, torn lines, changed settings ----------------------------------------------------------
def test_interrupted_grid_runs_only_the_remaining_runs_and_gives_the_same_table(settings, tmp_path):
    class Stop(Exception):
        pass

    first = FakeRun()

    def stop_after_three(spec, record):
        if len(first.calls) == 3:
            raise Stop

    with pytest.raises(Stop):
        run_grid(PLAN, settings, tmp_path / "a", run=first, on_done=stop_after_three)
    assert len(read_records(tmp_path / "a")) == 3
    second = FakeRun()
    outcome = run_grid(PLAN, settings, tmp_path / "a", run=second)
    assert second.calls == PLAN[3:]  # only the remaining five, in plan order
    assert len(outcome.ran) == 5 and len(outcome.skipped) == 3 and not outcome.missing
    assert len(read_records(tmp_path / "a")) == 8

    whole = run_grid(PLAN, settings, tmp_path / "b", run=FakeRun())
    resumed_table = build_table(outcome.records, ["auroc", "f1"]).to_dict()
    assert resumed_table == build_table(whole.records, ["auroc", "f1"]).to_dict()
    assert resumed_table["chosen_lr"]["resnet18"]["ft"]["lr"] == 1e-4  # planted: 1e-4 beats 1e-3


def test_a_torn_last_line_is_ignored_and_repaired(settings, tmp_path):
    run_grid(PLAN, settings, tmp_path, run=FakeRun())
    path = runs_file(tmp_path, None)
    lines = path.read_bytes().splitlines(keepends=True)
    # a killed writer: the last record only half written, no newline
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    assert len(read_records(tmp_path)) == 7
    again = FakeRun()
    run_grid(PLAN, settings, tmp_path, run=again)
    assert again.calls == [PLAN[-1]]
    text = path.read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())  # no fragment kept
    assert len(text.splitlines()) == 8

    path.write_text(text.replace(text.splitlines()[2], "{garbage"))  # damage in the middle is refused
    with pytest.raises(DataError, match="line 3"):
        read_records(tmp_path)


def test_changed_settings_are_refused_not_reused(settings, tmp_path):
    run_grid(PLAN, settings, tmp_path, run=FakeRun())
    from dataclasses import replace

    with pytest.raises(ConfigError, match="epochs: 1 -> 2"):
        run_grid(PLAN, replace(settings, train=replace(settings.train, epochs=2)), tmp_path, run=FakeRun())
    with pytest.raises(ConfigError, match="lp_epochs: 5 -> 2"):  # a strategy hyperparameter, by the config's fields
        run_grid(PLAN, replace(settings, strategy=StrategyConfig(lp_epochs=2)), tmp_path, run=FakeRun())
    # device, loader workers, precision and cache folder do not change the numbers: the same grid
    again = FakeRun()
    fast = replace(settings.train, device="auto", num_workers=2, precision="fp32", eval_batch_size=64)
    run_grid(PLAN, replace(settings, train=fast, cache_dir=tmp_path / "c"), tmp_path, run=again)
    assert again.calls == []


# What HEAD (before the configs were embedded) fingerprinted, with the data files' identity fixed: runs.jsonl files
# recorded then must resume, so these values may never change.
FIXED_DATA = "#0123456789abcdef"
RECORDED_DEFAULT = ("6d7654a1d8dbdf52", {
    "data": "train#0123456789abcdef", "val": None, "test": None, "weights": "imagenet", "epochs": 50, "patience": 5,
    "batch_size": 64, "image_size": None, "monitor": "auto", "epochs_per_block": None, "lp_epochs": 5, "alpha": None,
    "beta": None, "rgn_batches": 5, "rgn_weight_decay": 0.0001, "protocol": "shiftkit", "lp_solver": "lbfgs",
    "class_weight": "balanced", "sp_update": "decoupled", "read_options": "w=None|s=None"})
RECORDED_CUSTOM = ("c900a1f775ac4698", {
    "data": "train#0123456789abcdef", "val": "val#0123456789abcdef", "test": "test#0123456789abcdef",
    "weights": "none", "epochs": 7, "patience": 3, "batch_size": 16, "image_size": 64, "monitor": "f1",
    "epochs_per_block": 2, "lp_epochs": 3, "alpha": 0.5, "beta": 0.25, "rgn_batches": 4, "rgn_weight_decay": 0.001,
    "protocol": "paper", "lp_solver": "adam", "class_weight": "none", "sp_update": "penalty",
    "read_options": "w=(-1000.0, 400.0)|s=3"})


def test_grid_identities_recorded_before_are_unchanged(monkeypatch):
    from shiftkit.compare import grid
    from shiftkit.data.readers import ReadOptions

    monkeypatch.setattr(grid, "_data_identity", lambda path: f"{Path(path).name}{FIXED_DATA}")
    default = CompareSettings(data=Path("train"))
    custom = CompareSettings(
        data=Path("train"), val=Path("val"), test=Path("test"), weights="none", image_size=64,
        read_options=ReadOptions(window=(-1000.0, 400.0), slice_index=3), cache_dir=Path("c"),
        train=TrainConfig(epochs=7, patience=3, batch_size=16, monitor="f1", protocol="paper", lp_solver="adam",
                          class_weight="none", device="cpu"),
        strategy=StrategyConfig(epochs_per_block=2, lp_epochs=3, alpha=0.5, beta=0.25, rgn_batches=4,
                                rgn_weight_decay=0.001, sp_update="penalty"))
    for settings, (fingerprint, identity) in ((default, RECORDED_DEFAULT), (custom, RECORDED_CUSTOM)):
        assert settings.identity() == identity
        assert settings.fingerprint() == fingerprint


def test_the_identity_is_every_config_field_but_the_run_s_own_and_speed_only_ones():
    from dataclasses import fields

    from shiftkit.compare.grid import NOT_IN_FINGERPRINT

    identity = CompareSettings(data=Path(__file__).parent).identity()
    expected = ({"data", "val", "test", "weights", "image_size", "read_options"}
                | {f.name for f in fields(TrainConfig)} - set(NOT_IN_FINGERPRINT)
                | {f.name for f in fields(StrategyConfig)})
    assert set(identity) == expected
    assert {"strategy", "lr", "seed", "device", "num_workers", "precision"}.isdisjoint(identity)


# -- the paper's table on a worked example ---------------------------------------------------------------
def _record(arch, strategy, lr, seed, val, test):
    return {"run_id": f"{arch}/{strategy}/{lr}/{seed}", "arch": arch, "strategy": strategy, "lr": lr, "seed": seed,
            "monitor": "auroc", "epochs_run": 1,
            "val": {"auroc": val, "accuracy": val}, "test": {"auroc": test[0], "accuracy": test[1]}}


def test_table_matches_a_worked_example():
    records = [
        # ft: lr 1e-4 has the better mean validation AUROC (0.70 vs 0.65) although 1e-3 tests better
        *[_record("resnet18", "ft", 1e-3, s, 0.65, (0.95, 0.95)) for s in range(3)],
        _record("resnet18", "ft", 1e-4, 0, 0.69, (0.80, 0.60)),
        _record("resnet18", "ft", 1e-4, 1, 0.70, (0.84, 0.70)),
        _record("resnet18", "ft", 1e-4, 2, 0.71, (0.82, 0.65)),
        _record("resnet18", "lp", 1e-4, 0, 0.60, (0.85, 0.50)),
        _record("resnet18", "lp", 1e-4, 1, 0.60, (0.87, 0.55)),
        _record("resnet18", "lp", 1e-4, 2, 0.60, (0.86, 0.60)),
    ]
    table = build_table(records, ["auroc", "accuracy"], archs=["resnet18"], strategies=["ft", "lp"])
    assert table.split == "test" and table.main_metric == "auroc"
    assert table.chosen[("resnet18", "ft")]["lr"] == 1e-4
    # by hand: ft AUROC 0.80, 0.84, 0.82 -> mean 0.82, sd 0.02, SE 0.02 / sqrt(3) = 0.011547
    ft = table.cells[("ft", "resnet18", "auroc")]
    assert ft.mean == pytest.approx(0.82) and ft.se == pytest.approx(0.02 / math.sqrt(3)) and ft.n == 3
    assert format_cell(ft) == "82.00 (1.15)"
    # lp accuracy 0.50, 0.55, 0.60 -> 55.00 (2.89); lp AUROC 0.85, 0.87, 0.86 -> 86.00 (0.58)
    assert format_cell(table.cells[("lp", "resnet18", "accuracy")]) == "55.00 (2.89)"
    assert format_cell(table.cells[("lp", "resnet18", "auroc")]) == "86.00 (0.58)"
    assert table.best[("resnet18", "auroc")] == ("lp",) and table.best[("resnet18", "accuracy")] == ("ft",)
    assert table.winner("resnet18") == "lp"
    rel = relative_improvement(table)["resnet18"]
    assert rel["lp"] == pytest.approx(100 * (0.86 - 0.82) / 0.82)
    assert mean_se([0.5]) == (0.5, None, 1) and mean_se([None, None]) == (None, None, 0)


def test_best_per_column_and_overall_best_are_marked():
    records = [_record(a, s, 1e-4, 0, 0.5, t) for a, s, t in [
        ("resnet18", "ft", (0.70, 0.90)), ("resnet18", "lp", (0.75, 0.80)),
        ("vgg19", "ft", (0.80, 0.60)), ("vgg19", "lp", (0.80, 0.70)),
    ]]
    table = build_table(records, ["auroc", "accuracy"])
    assert table.best[("resnet18", "auroc")] == ("lp",)
    assert table.best[("vgg19", "auroc")] == ("ft", "lp")  # a tie marks both
    assert table.overall_best["auroc"] == (("vgg19", "ft"), ("vgg19", "lp"))
    assert table.overall_best["accuracy"] == (("resnet18", "ft"),)
    from shiftkit.compare.tables import table_markdown

    text = table_markdown(table)
    assert "| lp | **75.00 (—)** | 80.00 (—) | <u>**80.00 (—)**</u> | **70.00 (—)** |" in text


def test_effectiveness_counts_a_hand_example():
    # relative change vs ft per (arch, metric), by hand:
    # lp:    r18 auroc +10 %, r18 acc -10 %, vgg auroc +0.05 % (not > 0.1), vgg acc +0.2 %  -> 2 of 4
    # l2_sp: r18 auroc -1 %, r18 acc +1 %, vgg auroc +5 %, vgg acc -5 %                  -> 2 of 4
    # lp_ft: everything +1 %                                                            -> 4 of 4
    values = {
        ("resnet18", "ft"): (0.50, 0.80), ("resnet18", "lp"): (0.55, 0.72), ("resnet18", "l2_sp"): (0.495, 0.808),
        ("resnet18", "lp_ft"): (0.505, 0.808),
        ("vgg19", "ft"): (0.80, 0.50), ("vgg19", "lp"): (0.8004, 0.501), ("vgg19", "l2_sp"): (0.84, 0.475),
        ("vgg19", "lp_ft"): (0.808, 0.505),
    }
    records = [_record(a, s, 1e-4, 0, 0.5, t) for (a, s), t in values.items()]
    eff = effectiveness(build_table(records, ["auroc", "accuracy"]))
    rows = eff["rows"]
    assert "ft" not in rows
    assert rows["lp"]["per_arch"] == {"resnet18": 1, "vgg19": 1} and rows["lp"]["total"] == 2
    assert rows["l2_sp"]["per_arch"] == {"resnet18": 1, "vgg19": 1}
    assert rows["lp_ft"]["per_arch"] == {"resnet18": 2, "vgg19": 2} and rows["lp_ft"]["effectiveness"] == 100.0
    assert rows["lp"]["experiments"] == 4 and rows["lp"]["effectiveness"] == 50.0
    assert eff["arch_totals"] == {"resnet18": 4, "vgg19": 4} and eff["total"] == 8


# -- sharding --------------------------------------------------------------------------------------------
def test_shards_partition_the_grid_and_merge_into_the_same_table(settings, tmp_path):
    plan = plan_grid(["resnet18"], ["ft", "lp", "l2_sp"], [1e-3, 1e-4], [0, 1])  # 12 runs
    parts = [shard_plan(plan, (i, 5)) for i in range(5)]
    assert sorted(len(p) for p in parts) == [2, 2, 2, 3, 3]
    assert sorted(plan, key=plan.index) == sorted((s for p in parts for s in p), key=plan.index)
    assert len({s for p in parts for s in p}) == len(plan)  # no overlap

    for i in range(3):
        outcome = run_grid(plan, settings, tmp_path / "sharded", shard=(i, 3), run=FakeRun())
        assert bool(outcome.missing) == (i < 2)
    assert sorted(p.name for p in (tmp_path / "sharded").glob("runs*.jsonl")) == [
        f"runs-shard-{i}-of-3.jsonl" for i in range(3)]
    merged = recorded(plan, settings, tmp_path / "sharded")
    single = run_grid(plan, settings, tmp_path / "single", run=FakeRun())
    assert build_table(merged.records, ["auroc"]).to_dict() == build_table(single.records, ["auroc"]).to_dict()


def _fake_finetune_run(spec, settings, folder, callback=None, on_stage=None):
    return fake_metrics(spec, settings.test is not None)


def test_cli_shards_then_report_only_equals_one_machine(phantom_dir, monkeypatch, tmp_path):
    # the module (``shiftkit.cli.compare`` as an attribute is the command function of the same name)
    monkeypatch.setattr(importlib.import_module("shiftkit.cli.compare"), "finetune_run", _fake_finetune_run)
    common = ["compare", str(phantom_dir), "--strategies", "ft,lp,lp_ft", "--archs", "resnet18",
              "--lrs", "1e-3,1e-4", "--seeds", "2", "--weights", "none", "--epochs", "1"]
    first = runner.invoke(app, [*common, "--out", str(tmp_path / "s"), "--shard", "0/2"])
    assert first.exit_code == 0, first.output
    assert "other shards" in first.output and not (tmp_path / "s" / "compare.json").exists()
    second = runner.invoke(app, [*common, "--out", str(tmp_path / "s"), "--shard", "1/2"])
    assert second.exit_code == 0, second.output
    assert (tmp_path / "s" / "compare.json").is_file()  # the last shard finds every run and reports
    report = runner.invoke(app, [*common, "--out", str(tmp_path / "s"), "--report-only"])
    assert report.exit_code == 0, report.output
    single = runner.invoke(app, [*common, "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    sharded = json.loads((tmp_path / "s" / "compare.json").read_text())
    one = json.loads((tmp_path / "one" / "compare.json").read_text())
    assert sharded["table"] == one["table"] and sharded["effectiveness"] == one["effectiveness"]
    assert one["winners"] == {"resnet18": "lp_ft"}
    assert (tmp_path / "one" / "plots" / "relative_resnet18.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "one" / "compare.md").read_text()
    # no --test: validation values, 0.86 and 0.87 (seeds 0, 1) at lr 1e-4 -> 86.50 (SE 0.01/sqrt(2)*sqrt(2) = 0.50)
    assert "| lp_ft | **86.50 (0.50)**" in md and "**val** split" in md and one["table"]["split"] == "val"


# -- search ----------------------------------------------------------------------------------------------
def test_rung_budgets():
    assert rung_budgets(3, 3, 8) == [1, 3]
    assert rung_budgets(9, 3, 24) == [1, 3, 9]
    assert rung_budgets(50, 3, 24) == [2, 6, 17, 50]
    assert rung_budgets(50, 3, 1) == [50]


def test_successive_halving_finds_the_best_arm_and_counts_its_cost():
    strategies = ["ft", "lp", "g_lf", "g_fl", "lp_ft", "l1_sp", "l2_sp", "auto_rgn"]
    arms = [Arm(s, lr) for s in strategies for lr in (1e-3, 1e-4, 1e-5)]
    quality = {arm: 0.5 + 0.01 * i for i, arm in enumerate(arms)}
    best = Arm("l2_sp", 1e-4)
    quality[best] = 0.99
    trained: dict[Arm, int] = {}
    calls = []

    def train(arm, budget):  # the score grows with the budget, keeping each arm's order
        calls.append((arm, budget))
        assert budget > trained.get(arm, 0)  # never asked to train what it has already trained
        trained[arm] = budget
        return ArmProgress(quality[arm] * budget / (budget + 1), budget)

    result = successive_halving(arms, train, [1, 3, 9], eta=3, ranking=strategies)
    assert result.winner == best
    # by hand: 24 arms x 1 epoch, the top 8 from 1 to 3 (+2 each), the top 3 from 3 to 9 (+6 each)
    assert result.epochs_run == 24 * 1 + 8 * 2 + 3 * 6 == 58
    assert [len(r["arms"]) for r in result.rungs] == [24, 8, 3]
    assert len(calls) == 35


def test_search_ties_follow_the_ranking_and_early_stopped_arms_cost_nothing_more():
    arms = [Arm("ft", 1e-4), Arm("lp", 1e-4), Arm("lp_ft", 1e-4), Arm("auto_rgn", 1e-4)]

    def train(arm, budget):
        if arm.strategy == "lp_ft":  # stops early after 2 epochs whatever the budget
            return ArmProgress(0.9, min(budget, 2), finished=budget >= 2)
        return ArmProgress(0.9, budget)

    result = successive_halving(arms, train, [1, 4], eta=2, ranking=["auto_rgn", "lp_ft", "ft", "lp"])
    assert result.rungs[0]["promoted"] == ["auto_rgn@0.0001", "lp_ft@0.0001"]  # all tie: ranking decides
    assert result.epochs_run == 4 * 1 + 3 + 1  # auto_rgn 1 -> 4, lp_ft 1 -> 2 (stopped)
    assert result.winner == Arm("auto_rgn", 1e-4)


def test_score_within_uses_only_the_budget_epochs():
    history = [{"monitor": "auroc", "val": {"auroc": v}, "val_loss": 1.0} for v in (0.6, 0.8, 0.9)]
    history.append({"monitor": "val_loss", "val": {"auroc": None}, "val_loss": 0.5})
    assert score_within(history, 2) == 0.8 and score_within(history, 3) == 0.9
    assert score_within(history[3:], 1) == -0.5


def test_cli_search_is_checked_against_the_grid_in_the_same_folder(phantom_dir, monkeypatch, tmp_path):
    cli_module = importlib.import_module("shiftkit.cli.compare")
    monkeypatch.setattr(cli_module, "finetune_run", _fake_finetune_run)

    def fake_arms(settings, arch, seed, out, callback=None):
        def train(arm, budget):
            score = fake_metrics(RunSpec(arch, arm.strategy, arm.lr, seed))["val"]["auroc"]
            return ArmProgress(score * budget / (budget + 1), budget)
        return train

    monkeypatch.setattr(cli_module, "finetune_arms", fake_arms)
    common = ["compare", str(phantom_dir), "--strategies", "ft,lp,lp_ft", "--archs", "resnet18",
              "--lrs", "1e-3,1e-4", "--seeds", "2", "--weights", "none", "--epochs", "3", "--out", str(tmp_path)]
    assert runner.invoke(app, common).exit_code == 0
    result = runner.invoke(app, [*common, "--search"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "search.json").read_text())["archs"]["resnet18"]
    assert report["budgets"] == [1, 3] and report["winner"]["strategy"] == "lp_ft" and report["winner"]["lr"] == 1e-4
    assert report["epochs_run"] == 6 * 1 + 2 * 2  # 6 arms to 1 epoch, the best ceil(6/3) = 2 from 1 to 3
    comparison = report["comparison"]
    assert comparison["grid_recorded"] and comparison["grid_complete"]
    assert comparison["grid_winner"] == comparison["grid_winner_by_validation"] == "lp_ft"
    assert comparison["found_grid_winner"] and comparison["search_winner_rank_in_grid"] == 1
    assert comparison["gap"] == 0 and comparison["grid_epochs"] == 12  # 12 fake runs of 1 epoch
    assert comparison["cost_fraction"] == pytest.approx(10 / 12)
    assert "found the grid's winner lp_ft" in result.output


# -- real, tiny runs through the CLI ---------------------------------------------------------------------
REAL = ["--archs", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "8", "--device", "cpu"]


def test_cli_real_grid_then_rerun_skips_everything(phantom_dir, phantom_test_dir, tmp_path):
    args = ["compare", str(phantom_dir), "--test", str(phantom_test_dir), "--strategies", "lp", "--lrs", "1e-2",
            "--seeds", "2", "--epochs", "1", "--out", str(tmp_path), *REAL]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = read_records(tmp_path)
    assert len(records) == 2 and {r["seed"] for r in records} == {0, 1}
    for record in records:
        metrics = json.loads((tmp_path / record["folder"] / "metrics.json").read_text())
        assert metrics["test"]["auroc"] == record["test"]["auroc"] and metrics["strategy"] == "lp"
    summary = json.loads((tmp_path / "compare.json").read_text())
    cell = summary["table"]["rows"]["lp"]["resnet18"]["auroc"]
    mean, se, n = mean_se([r["test"]["auroc"] for r in records])
    assert cell["mean"] == pytest.approx(mean) and cell["se"] == pytest.approx(se) and cell["n"] == 2
    for name in ("compare.md", "compare.html"):
        assert (tmp_path / name).is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "ran 0 runs, 2 already recorded" in again.output
    assert json.loads((tmp_path / "compare.json").read_text())["table"] == summary["table"]


def test_cli_real_search_resumes_promoted_arms(phantom_dir, tmp_path):
    # Adam steps on the head (a solved probe would converge in the first rung and leave nothing to resume)
    result = runner.invoke(app, ["compare", str(phantom_dir), "--search", "--strategies", "lp", "--lrs", "1e-1,1e-3",
                                 "--epochs", "2", "--budgets", "1,2", "--eta", "2", "--lp-solver", "adam",
                                 "--out", str(tmp_path), *REAL])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "search.json").read_text())["archs"]["resnet18"]
    assert report["budgets"] == [1, 2]
    assert report["epochs_run"] == 3  # 2 arms x 1 epoch, then the winner's second epoch only
    assert len(report["rungs"][0]["arms"]) == 2 and len(report["rungs"][1]["arms"]) == 1
    winner = report["winner"]
    folder = tmp_path / "search" / "resnet18" / "lp" / f"lr{winner['lr']:g}_seed0"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["resumed"] is True and metrics["epochs_run"] == 2  # continued from rung 1's checkpoint
    assert winner["val_score"] == pytest.approx(max(h["val"]["auroc"] for h in metrics["history"]))
    assert report["comparison"]["grid_recorded"] is False


# -- one-line errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, message", [
    ("--strategies", "ft,nope", "unknown strategy 'nope'"),
    ("--strategies", "ft,,lp", "without empty items"),
    ("--archs", "resnet18,alexnet", "unknown architecture 'alexnet'"),
    ("--shard", "2/2", "0 <= I < N"),
    ("--shard", "a/b", "must be I/N"),
    ("--shard", "1", "must be I/N"),
    ("--lrs", "1e-3,abc", "'abc' is not a number"),
    ("--lrs", "0", "positive"),
    ("--lrs", "1e-3,1e-3", "twice"),
    ("--seeds", "0", "at least 1"),
])
def test_bad_options_give_one_line_and_exit_2(phantom_dir, tmp_path, option, value, message):
    result = runner.invoke(app, ["compare", str(phantom_dir), "--out", str(tmp_path), option, value])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "runs.jsonl").exists()

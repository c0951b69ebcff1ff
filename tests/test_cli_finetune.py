"""``shiftkit finetune`` end to end, and its one-line errors with exit code 2."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.finetune.metrics import METRICS
from shiftkit.finetune.strategies import STRATEGY_CLASSES

runner = CliRunner()
FAST = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "8", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, ["finetune", *map(str, args)])


@pytest.mark.parametrize("strategy", list(STRATEGY_CLASSES)[:8])
def test_each_strategy_runs_end_to_end_through_the_cli(phantom_dir, phantom_test_dir, tmp_path, strategy):
    result = invoke(phantom_dir, "--test", phantom_test_dir, "--strategy", strategy, "--epochs", "2",
                    "--lp-epochs", "1", "--epochs-per-block", "1", "--rgn-batches", "1", "--out", tmp_path, *FAST)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("strategy", "arch", "lr", "seed", "epochs_run", "best_epoch", "val", "test", "history"):
        assert key in metrics
    assert metrics["strategy"] == strategy and metrics["arch"] == "resnet18"
    epochs = 1 if strategy == "lp" else 2  # the solved probe cannot improve by a second epoch: lp stops
    assert metrics["epochs_run"] == len(metrics["history"]) == epochs
    assert 1 <= metrics["best_epoch"] <= epochs
    assert set(METRICS) <= set(metrics["test"])
    assert metrics["sizes"] == {"train": 28, "val": 8, "test": 18}
    for entry in metrics["history"]:
        assert {"train_loss", "val_loss", "val"} <= set(entry)
    assert (tmp_path / "checkpoints" / "best.pt").is_file() and (tmp_path / "checkpoints" / "last.pt").is_file()
    assert "accuracy" in result.output  # the final rich table


def test_each_image_is_decoded_once_per_run(phantom_dir, tmp_path):
    result = invoke(phantom_dir, "--epochs", "3", "--out", tmp_path, *FAST)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "metrics.json").read_text())["decoded_images"] == 36


def test_demo_runs_without_user_data(tmp_path):
    result = invoke("--demo", "--epochs", "1", "--out", tmp_path, "--weights", "none", "--arch", "resnet18",
                    "--image-size", "32")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "round").is_dir() and (tmp_path / "metrics.json").is_file()


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_missing_data_folder(tmp_path):
    line = _error_line(invoke(tmp_path / "nope", "--out", tmp_path / "o", *FAST))
    assert "nope" in line and "no such file" in line


def test_unknown_strategy(phantom_dir, tmp_path):
    line = _error_line(invoke(phantom_dir, "--strategy", "magic", "--out", tmp_path, *FAST))
    assert "unknown strategy 'magic'" in line


def test_unknown_architecture(phantom_dir, tmp_path):
    line = _error_line(invoke(phantom_dir, "--arch", "alexnet", "--weights", "none", "--out", tmp_path))
    assert "unknown architecture 'alexnet'" in line


def test_empty_class_folder(phantom_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    (data / "empty").mkdir()
    line = _error_line(invoke(data, "--out", tmp_path / "o", *FAST))
    assert "empty" in line and "no images" in line


def test_empty_folder(tmp_path):
    (tmp_path / "data").mkdir()
    line = _error_line(invoke(tmp_path / "data", "--out", tmp_path / "o", *FAST))
    assert "has no images" in line


def test_corrupt_image_names_the_file(phantom_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    bad = data / "round" / "round_0003.png"
    bad.write_bytes(bad.read_bytes()[:60])
    line = _error_line(invoke(data, "--out", tmp_path / "o", *FAST))
    assert "round_0003.png" in line and "cannot decode" in line
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_unknown_label_in_test_manifest(phantom_dir, tmp_path):
    image = next((phantom_dir / "round").iterdir())
    manifest = tmp_path / "test.csv"
    manifest.write_text(f"path,label\n{image},round\n{image.with_name('round_0001.png')},cyst\n")
    line = _error_line(invoke(phantom_dir, "--test", manifest, "--out", tmp_path / "o", *FAST))
    assert "cyst" in line and "row 3" in line


def test_missing_imagenet_weights_say_how_to_supply_them(phantom_dir, tmp_path, monkeypatch):
    import torchvision

    def offline(self, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    result = invoke(phantom_dir, "--arch", "resnet18", "--out", tmp_path, "--image-size", "32")
    line = _error_line(result)
    assert "resnet18" in line and "--weights PATH" in line and "download.pytorch.org" in line


def test_needs_data_or_demo(tmp_path):
    line = _error_line(invoke("--out", tmp_path))
    assert "--demo" in line


@pytest.mark.parametrize(
    "option, message",
    [
        (["--epochs", "0"], "--epochs"),
        (["--image-size", "16"], "--image-size must be at least 32"),
        (["--epochs-per-block", "0"], "--epochs-per-block"),
        (["--rgn-batches", "0"], "--rgn-batches"),
        (["--alpha", "-1"], "--alpha"),
        (["--monitor", "loss"], "unknown --monitor"),
    ],
)
def test_bad_option_values_are_one_line_errors(phantom_dir, tmp_path, option, message):
    args = [a for a in FAST if a not in ("--image-size", "32")] if "--image-size" in option else FAST
    line = _error_line(invoke(phantom_dir, "--out", tmp_path, *args, *option))
    assert message in line


def test_multilabel_test_rows_for_a_single_label_model_are_refused(phantom_dir, tmp_path):
    image = next((phantom_dir / "round").iterdir())
    manifest = tmp_path / "test.csv"
    manifest.write_text(f"path,label\n{image},round|oval\n")
    line = _error_line(invoke(phantom_dir, "--test", manifest, "--out", tmp_path / "o", *FAST))
    assert "single-label" in line


def test_multilabel_manifest_trains_with_sigmoid_outputs_and_map(phantom_dir, tmp_path):
    images = sorted(phantom_dir.rglob("*.png"))
    rows = ["path,label"]
    for index, image in enumerate(images):  # two overlapping labels per image: its shape, and 'odd' half the time
        labels = [image.parent.name] + (["odd"] if index % 2 else [])
        rows.append(f"{image},{'|'.join(labels)}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    result = invoke(tmp_path / "train.csv", "--strategy", "lp_ft", "--lp-epochs", "1", "--epochs", "2",
                    "--out", tmp_path / "o", *FAST)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["task"] == "multilabel" and metrics["monitor"] == "map"
    assert metrics["classes"] == ["odd", "oval", "round", "spiky"]
    assert 0.0 <= metrics["val"]["map"] <= 1.0
    # the head phase was solved (one sigmoid per label), then all layers trained
    assert metrics["linear_probe"]["solver"] == "lbfgs" and [h["phase"] for h in metrics["history"]] == ["lp", "ft"]


def test_protocol_paper_sets_its_options_and_a_given_option_wins(phantom_dir, tmp_path):
    result = invoke(phantom_dir, "--strategy", "l1_sp", "--protocol", "paper", "--class-weight", "balanced",
                    "--epochs", "1", "--out", tmp_path / "o", *FAST)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "o" / "metrics.json").read_text())["config"]
    assert config["protocol"] == "paper"
    assert (config["train"]["lp_solver"], config["train"]["class_weight"]) == ("adam", "balanced")
    assert (config["strategy"]["sp_update"], config["strategy"]["alpha"], config["strategy"]["beta"]) == \
        ("penalty", 0.01, 0.01)


@pytest.mark.parametrize("option", [["--protocol", "nature"], ["--lp-solver", "sgd"], ["--class-weight", "inverse"],
                                    ["--sp-update", "prox"], ["--alpha", "nan"], ["--lr", "inf"]])
def test_bad_training_options_are_one_line_before_any_image_is_read(phantom_dir, tmp_path, option):
    line = _error_line(invoke(phantom_dir, "--out", tmp_path / "o", *option, *FAST))
    assert option[0] in line, line


def test_out_naming_a_file_is_a_one_line_error(phantom_dir, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    line = _error_line(invoke(phantom_dir, "--out", target, *FAST))
    assert "is a file, not a folder" in line and target.read_text() == "keep me"


# -- hyperparameters: declared once, in both commands, recorded as before ----------------------------------------
def test_every_strategy_setting_is_an_option_of_both_commands_with_the_config_default():
    from dataclasses import fields

    import typer

    from shiftkit.cli.options import HYPERPARAMETERS
    from shiftkit.finetune.protocol import PROTOCOL_SETTINGS
    from shiftkit.finetune.strategies import StrategyConfig

    names = {f.name for f in fields(StrategyConfig)}
    assert names <= set(HYPERPARAMETERS), f"no option in cli.options.HYPERPARAMETERS for {names - set(HYPERPARAMETERS)}"
    commands = typer.main.get_command(app).commands
    for command in ("finetune", "compare"):
        params = {p.name: p for p in commands[command].params}
        for f in fields(StrategyConfig):
            option = params[f.name]
            assert option.opts == [f"--{f.name.replace('_', '-')}"] and option.help
            assert option.default == (None if f.name in PROTOCOL_SETTINGS else f.default), (command, f.name)


def test_a_protocol_sets_its_options_and_one_given_alone_wins():
    from shiftkit.cli.options import training_settings
    from shiftkit.finetune.strategies import StrategyConfig

    given = {"protocol": "paper", "lp_solver": None, "class_weight": "balanced", "sp_update": None, "alpha": 0.5,
             "beta": None, "epochs_per_block": 2, "lp_epochs": 3, "rgn_batches": 4, "rgn_weight_decay": 0.0}
    train, strategy = training_settings(given)
    assert train == {"protocol": "paper", "lp_solver": "adam", "class_weight": "balanced"}
    assert strategy == StrategyConfig(epochs_per_block=2, lp_epochs=3, alpha=0.5, beta=0.01, sp_update="penalty",
                                      rgn_batches=4, rgn_weight_decay=0.0)


def test_the_recorded_strategy_settings_are_those_checkpoints_were_written_with():
    # the resume identity and metrics.json's config.strategy: lr and epochs are the run's, as before
    from shiftkit.finetune.config import TrainConfig
    from shiftkit.finetune.strategies import StrategyConfig, make_strategy
    from shiftkit.models import build_model

    adapted = build_model("resnet18", 2, "none", image_size=32)
    strategy = make_strategy("l2_sp", adapted, StrategyConfig(), TrainConfig(lr=0.01, epochs=3))
    assert strategy.config_dict() == {"lr": 0.01, "epochs": 3, "epochs_per_block": None, "lp_epochs": 5,
                                      "alpha": 10.0, "beta": 10.0, "sp_update": "decoupled", "rgn_batches": 5,
                                      "rgn_weight_decay": 1e-4}
    assert list(strategy.config_dict())[:2] == ["lr", "epochs"]


def test_the_registry_starts_with_the_published_strategies():
    from shiftkit.recommend import PUBLISHED_STRATEGIES

    assert tuple(STRATEGY_CLASSES)[:len(PUBLISHED_STRATEGIES)] == PUBLISHED_STRATEGIES

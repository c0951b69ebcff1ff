"""The hook protocol (shiftkit.hooks): a stage hook returns its tick, a training callback can stop a run
resumably; and the pieces split out of the trainer (early stopping, checkpoints, the device resolver)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import make_trainer, snapshot
from shiftkit.compare.search import _Budget
from shiftkit.device import DeviceError, resolve_device
from shiftkit.errors import ConfigError
from shiftkit.finetune.checkpoint import CHECKPOINT_VERSION
from shiftkit.finetune.early_stopping import EarlyStopping, choose_score, entry_score, monitored_score
from shiftkit.finetune.run import FinetuneRequest, run_finetune
from shiftkit.finetune.trainer import TrainConfig
from shiftkit.hooks import STOP, SilentCallback

# the keys of last.pt as every earlier version wrote them: checkpoints of those runs must keep resuming
LAST_KEYS = {"version", "identity", "epoch", "model_state", "optimizer_state", "strategy_state", "history",
             "best_score", "best_epoch", "bad_epochs"}


class StopAt(SilentCallback):
    def __init__(self, epoch: int) -> None:
        self.epoch, self.ends = epoch, 0

    def on_epoch_end(self, entry):
        self.ends += 1
        return STOP if entry["epoch"] == self.epoch else None


def test_a_callback_stops_training_and_the_run_resumes_to_the_uninterrupted_result(phantom_dir, tmp_path):
    reference = make_trainer(phantom_dir, "ft", epochs=3, checkpoint_dir=tmp_path / "a")
    reference.fit()

    stopper = StopAt(1)
    stopped = make_trainer(phantom_dir, "ft", epochs=3, checkpoint_dir=tmp_path / "b", callback=stopper)
    summary = stopped.fit()
    assert summary["halted"] and summary["epochs_run"] == 1 and stopper.ends == 1
    assert not stopped.history[-1]["stop"]  # not an early stop: the run is unfinished
    last = torch.load(tmp_path / "b" / "last.pt", map_location="cpu", weights_only=True)
    assert set(last) == LAST_KEYS and last["version"] == CHECKPOINT_VERSION and last["epoch"] == 0

    resumed = make_trainer(phantom_dir, "ft", epochs=3, checkpoint_dir=tmp_path / "b")
    assert resumed.resume() and resumed.start_epoch == 1
    assert not resumed.fit()["halted"]
    assert [h["val"] for h in resumed.history] == [h["val"] for h in reference.history]
    ref_state, res_state = snapshot(reference.model), snapshot(resumed.model)
    assert all(torch.equal(ref_state[k], res_state[k]) for k in ref_state)


def test_a_stop_at_the_last_epoch_is_a_finished_run(phantom_dir):
    trainer = make_trainer(phantom_dir, "ft", epochs=2, callback=StopAt(2))
    assert not trainer.fit()["halted"] and len(trainer.history) == 2


def test_run_finetune_takes_a_plain_stage_hook_and_a_stopped_run_writes_no_metrics(phantom_dir, tmp_path):
    ticks: dict[str, list[int]] = {}

    def on_stage(description: str, total: int):
        ticks[description] = [total, 0]

        def tick() -> None:
            ticks[description][1] += 1
        return tick

    request = FinetuneRequest(data=phantom_dir, out=tmp_path, arch="resnet18", weights="none", image_size=32,
                              resume=True, train=TrainConfig(strategy="ft", lr=1e-3, epochs=2, batch_size=8,
                                                             device="cpu"))
    halted = run_finetune(request, callback=StopAt(1), on_stage=on_stage)
    assert halted["halted"] and halted["epochs_run"] == 1
    assert not (tmp_path / "metrics.json").exists() and (tmp_path / "checkpoints" / "last.pt").is_file()
    assert set(ticks) == {"decoding train images", "decoding val images"}
    assert all(total == done > 0 for total, done in ticks.values())  # every image ticked once

    finished = run_finetune(request)
    assert finished["resumed"] and finished["epochs_run"] == 2 and "halted" not in finished
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_run"] == 2


def test_the_search_budget_stops_below_the_full_epochs_and_passes_events_on():
    seen = []

    class Display(SilentCallback):
        def on_epoch_end(self, entry):
            seen.append(entry["epoch"])

    budget = _Budget(2, 5, Display())
    assert budget.on_epoch_end({"epoch": 1, "stop": False}) is None
    assert budget.on_epoch_end({"epoch": 2, "stop": False}) is STOP
    assert budget.on_epoch_end({"epoch": 2, "stop": True}) is None  # early stopped: finished anyway
    assert _Budget(5, 5).on_epoch_end({"epoch": 5, "stop": False}) is None  # the last rung runs to the end
    assert seen == [1, 2, 2]


def test_the_monitored_score_negates_only_the_validation_loss():
    assert monitored_score("auroc", {"auroc": 0.7}, 0.3) == 0.7
    assert monitored_score("val_loss", {"auroc": 0.7}, 0.3) == -0.3
    assert monitored_score("auroc", {}, 0.3) is None
    assert entry_score({"monitor": "val_loss", "val": {"auroc": None}, "val_loss": 0.25}) == -0.25
    assert choose_score("auroc", {"auroc": None}, 0.5) == (-0.5, "val_loss")  # undefined metric: the loss
    assert choose_score("auroc", {"auroc": 0.9}, 0.5) == (0.9, "auroc")


def test_early_stopping_counts_patience_asks_the_strategy_and_round_trips():
    stopping = EarlyStopping(patience=2)
    moves = []

    def on_plateau(epoch: int) -> bool:  # a staged strategy: moves on once, then has no next stage
        moves.append(epoch)
        return len(moves) == 1

    steps = [stopping.step(e, s, on_plateau) for e, s in enumerate([0.5, 0.6, 0.6, 0.55, 0.6, 0.6])]
    assert steps == [(True, False), (True, False), (False, False), (False, False), (False, False), (False, True)]
    assert moves == [3, 5] and stopping.best_epoch == 1 and stopping.best_score == 0.6
    copy = EarlyStopping(patience=2)
    copy.load_state_dict(stopping.state_dict())
    assert copy.state_dict() == stopping.state_dict() == {"best_score": 0.6, "best_epoch": 1, "bad_epochs": 2}
    solved = EarlyStopping(patience=5)
    assert solved.step(0, 0.8, lambda epoch: False, solved=True) == (True, True)  # a solved head stops at once
    assert EarlyStopping(1).best_score == -math.inf


def test_one_device_resolver():
    assert resolve_device(None) == torch.device("cpu")  # library default: never a GPU unasked
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ValueError):  # what mmd_test(device=...) raised before: still a ValueError
        resolve_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU is available"):
            resolve_device("cuda")

"""An interrupted run resumes from its last finished epoch to the same final numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import make_trainer, snapshot
from shiftkit.errors import ConfigError


class Interrupt(Exception):
    pass


class StopAfter:
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_start(self, epoch, batches, description):
        pass

    def on_batch(self):
        pass

    def on_epoch_end(self, entry):
        if entry["epoch"] == self.epochs:
            raise Interrupt  # after the epoch's checkpoint was written, like a kill between epochs


@pytest.mark.parametrize("strategy", ["g_lf", "auto_rgn", "l2_sp"])
def test_resume_reaches_the_same_weights_and_metrics(phantom_dir, tmp_path, strategy):
    options = {"epochs_per_block": 1} if strategy == "g_lf" else {}
    reference = make_trainer(phantom_dir, strategy, epochs=4, checkpoint_dir=tmp_path / "a", rgn_batches=2, **options)
    reference.fit()

    interrupted = make_trainer(phantom_dir, strategy, epochs=4, checkpoint_dir=tmp_path / "b",
                               callback=StopAfter(2), rgn_batches=2, **options)
    with pytest.raises(Interrupt):
        interrupted.fit()
    resumed = make_trainer(phantom_dir, strategy, epochs=4, checkpoint_dir=tmp_path / "b", rgn_batches=2, **options)
    assert resumed.resume()
    assert resumed.start_epoch == 2
    resumed.fit()

    assert [h["val"] for h in resumed.history] == [h["val"] for h in reference.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in reference.history]
    ref_state, res_state = snapshot(reference.model), snapshot(resumed.model)
    for key in ref_state:
        assert torch.equal(ref_state[key], res_state[key]), key


def test_resume_refuses_a_checkpoint_of_other_settings(phantom_dir, tmp_path):
    make_trainer(phantom_dir, "ft", epochs=1, checkpoint_dir=tmp_path).fit()
    other = make_trainer(phantom_dir, "ft", epochs=1, lr=1e-2, checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="same settings"):
        other.resume()


def _finetune(data, out, *extra):
    return [sys.executable, "-m", "shiftkit", "finetune", str(data), "--out", str(out), "--arch", "resnet18",
            "--weights", "none", "--image-size", "32", "--batch-size", "4", "--epochs", "6", "--patience", "50",
            "--lr", "1e-3", "--device", "cpu", *extra]


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_metrics(phantom_dir, tmp_path):
    full = subprocess.run(_finetune(phantom_dir, tmp_path / "full"), capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    expected = json.loads((tmp_path / "full" / "metrics.json").read_text())

    out = tmp_path / "killed"
    process = subprocess.Popen(_finetune(phantom_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.pt"
    deadline, seen = time.time() + 120, None
    while time.time() < deadline and process.poll() is None:
        stamp = last.stat().st_mtime_ns if last.is_file() else None
        # read the checkpoint (weights and optimiser state) only when it was written again: loading it every poll
        # competed with the run for the CPU
        if stamp is not None and stamp != seen:
            seen = stamp
            if torch.load(last, weights_only=True)["epoch"] >= 1:
                break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(_finetune(phantom_dir, out, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads((out / "metrics.json").read_text())
    assert got["resumed"] is True
    assert got["val"] == expected["val"]
    assert [h["val"] for h in got["history"]] == [h["val"] for h in expected["history"]]
    assert got["best_epoch"] == expected["best_epoch"]


def test_resume_refuses_other_strategy_options(phantom_dir, tmp_path):
    make_trainer(phantom_dir, "l2_sp", epochs=1, checkpoint_dir=tmp_path, alpha=0.01).fit()
    other = make_trainer(phantom_dir, "l2_sp", epochs=1, checkpoint_dir=tmp_path, alpha=0.5)
    with pytest.raises(ConfigError, match="same settings"):
        other.resume()


@pytest.mark.parametrize("edit", ["labels", "pixels"])
def test_resume_refuses_data_whose_content_changed_at_the_same_path(phantom_dir, tmp_path, edit):
    """Issue 13, item 4: --resume compared the data's path only; edited labels (or images) were accepted."""
    import csv

    from PIL import Image

    from shiftkit.data.table import load_table
    from shiftkit.finetune.run import FinetuneRequest, run_finetune
    from shiftkit.finetune.trainer import TrainConfig

    records = load_table(phantom_dir).records
    manifest = tmp_path / "m.csv"
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i, record in enumerate(records):
        copy = images / f"{i}.png"
        copy.write_bytes(record.path.read_bytes())
        rows.append([str(copy), record.labels[0]])

    def write(rows):
        with manifest.open("w", newline="") as handle:
            csv.writer(handle).writerows([["path", "label"], *rows])

    write(rows)

    def request(resume: bool) -> FinetuneRequest:
        return FinetuneRequest(data=manifest, out=tmp_path / "run", arch="resnet18", weights="none", image_size=32,
                               resume=resume, train=TrainConfig(strategy="ft", lr=1e-3, epochs=3, batch_size=8,
                                                                patience=50, seed=0, device="cpu"))

    with pytest.raises(Interrupt):
        run_finetune(request(False), callback=StopAfter(1))
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    if edit == "labels":  # swap the labels of two images of different classes: same paths, same class sizes
        first = next(i for i, row in enumerate(rows) if row[1] != rows[0][1])
        rows[0][1], rows[first][1] = rows[first][1], rows[0][1]
        write(rows)
    else:  # another image under the same name
        Image.fromarray(np.full((32, 32), 7, dtype=np.uint8)).save(rows[0][0])
    with pytest.raises(ConfigError, match="--resume needs the same settings"):
        run_finetune(request(True))

"""Data-parallel fine-tuning: two gloo processes on CPU compute what one process computes.

The torchrun tests launch real process groups (2 ranks, gloo) on the 32 px phantoms with random weights and
compare with a one-process run of the same settings.

Why these tolerances: float32 itself leaves one-step gradients ~4e-5 (relative) away from float64, and the
one-process and two-process runs round differently (global BatchNorm statistics, gradient all-reduce). Adam's
first steps move every weight by about ±lr whatever the gradient's size, so weights whose gradients sit at that
noise level can step in opposite directions; at 32 px, ResNet-18's last BatchNorm layers see only the batch's
few 1 x 1 activations, which amplifies that. We train at lr 1e-5, where the dynamics stay close to linear, and
measured (2 epochs, 6 steps each): the weight updates (final - initial) of the two runs differ by 13% of their
norm (one process with 1 vs 2 threads: 2.5%; two ranks whose gradients are *not* averaged: 108%), running
statistics by 0.1% (threads 0.01%; no averaging 2.2%), losses by < 5e-3 (no averaging: 0.04-0.1). Without the
global BatchNorm, the second rank's single image of the short last batch makes BatchNorm fail outright.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from shiftkit.finetune.distributed import SINGLE, DistContext, GlobalBatchSampler, context, gather_rows, rank_slice

UPDATE_TOL = 0.35  # relative difference of the weight updates
RUNNING_TOL = 5e-3  # relative difference of the BatchNorm running statistics
LOSS_TOL = 1e-2  # absolute, per-epoch training loss and final validation/test loss
LOSS_REL = 1e-3  # relative, for large losses: 2 ranks sum float32 gradients in another order, and lp_ft's fine-tuning
# epoch after a linear probe on random features runs at losses of 60-900 (huge logits), which amplify it: 5e-5 (train)
# and 3e-4 (val) relative on a 2-core EPYC with torch 2.14. A rank that skipped a sync would be off by far more.
AUROC_TOL = 0.05


# -- without a process group ------------------------------------------------------------------------------
def test_rank_slices_of_each_global_batch_add_up_to_the_one_process_batches():
    single = GlobalBatchSampler(23, 5, SINGLE, shuffle=True)
    ranks = [GlobalBatchSampler(23, 5, DistContext(r, 3), shuffle=True) for r in range(3)]
    for sampler in (single, *ranks):
        sampler.set_epoch(7)
    one = list(single)
    per_rank = [list(s) for s in ranks]
    assert [len(b) for b in one] == [5, 5, 5, 5, 3]
    for k, batch in enumerate(one):
        joined = [i for r in range(3) for i in per_rank[r][k]]
        assert joined == batch  # same images, same order: no padding, no reshuffle
    assert [len(per_rank[r][-1]) for r in range(3)] == [1, 1, 1]
    single.set_epoch(8)
    assert list(single) != one  # re-seeded per epoch


def test_a_global_batch_smaller_than_the_world_leaves_a_rank_empty_not_padded():
    parts = [rank_slice(torch.arange(2), DistContext(r, 3)).tolist() for r in range(3)]
    assert parts == [[0], [1], []]


def test_gather_rows_in_one_process_puts_rows_at_their_indices():
    rows = torch.tensor([[1.0], [2.0], [3.0]])
    out = gather_rows(rows, torch.tensor([2, 0, 1]), 3, SINGLE)
    assert out.flatten().tolist() == [2.0, 3.0, 1.0]


def test_without_torchrun_variables_the_context_is_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert context() == SINGLE and not context().enabled


# -- real process groups (torchrun, gloo, 2 ranks) --------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    return env


def _torchrun(args: list[str], timeout: int = 600) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


COMMON = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "2", "--batch-size", "5",
          "--lr", "1e-5", "--device", "cpu", "--patience", "10"]


def _initial_state() -> dict[str, torch.Tensor]:
    """The weights both runs start from (run_finetune seeds with --seed 0 before building the model)."""
    from shiftkit.models import build_model

    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in build_model("resnet18", 3, "none", 32).model.state_dict().items()}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


def _compare_runs(single: Path, multi: Path, initial: dict[str, torch.Tensor]) -> None:
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (single, multi))
    assert b["environment"]["world_size"] == 2 and a["environment"]["world_size"] == 1
    assert not (multi / "checkpoints" / "last.pt.tmp").exists()
    for key in ("train_loss", "val_loss"):
        assert [h[key] for h in b["history"]] == pytest.approx([h[key] for h in a["history"]], abs=LOSS_TOL,
                                                               rel=LOSS_REL), key
    assert [h["trainable_params"] for h in b["history"]] == [h["trainable_params"] for h in a["history"]]
    for split in ("val", "test"):
        assert b[split]["loss"] == pytest.approx(a[split]["loss"], abs=LOSS_TOL, rel=LOSS_REL), split
        assert b[split]["auroc"] == pytest.approx(a[split]["auroc"], abs=AUROC_TOL), split
    wa = torch.load(single / "checkpoints" / "last.pt", weights_only=True)["model_state"]
    wb = torch.load(multi / "checkpoints" / "last.pt", weights_only=True)["model_state"]
    params = [k for k in wa if "running" not in k and "num_batches" not in k]
    running = [k for k in wa if "running" in k]
    update_a = torch.cat([(wa[k] - initial[k]).flatten() for k in params])
    update_b = torch.cat([(wb[k] - initial[k]).flatten() for k in params])
    assert update_a.norm() > 0
    assert _relative(update_a, update_b) < UPDATE_TOL
    assert _relative(torch.cat([wa[k].flatten() for k in running]), torch.cat([wb[k].flatten() for k in running])) \
        < RUNNING_TOL
    assert all(torch.equal(wa[k], wb[k]) for k in wa if k.endswith("num_batches_tracked"))


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_ft(phantom_dir, phantom_test_dir, tmp_path):
    """``torchrun --nproc_per_node 2 -m shiftkit finetune`` (gloo): global BatchNorm, uneven rank slices
    (batch 5 -> 3 + 2), gradient all-reduce, gathered validation and rank-0-only files."""
    args = [str(phantom_dir), "--test", str(phantom_test_dir), "--strategy", "ft", *COMMON]
    single = subprocess.run([sys.executable, "-m", "shiftkit", "finetune", *args, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=_env(), timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    _torchrun(["-m", "shiftkit", "finetune", *args, "--out", str(tmp_path / "two")])
    _compare_runs(tmp_path / "one", tmp_path / "two", _initial_state())


DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from shiftkit.finetune.run import FinetuneRequest, run_finetune
    from shiftkit.finetune.strategies import StrategyConfig
    from shiftkit.finetune.trainer import TrainConfig
    data, test, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    for strategy in sys.argv[4].split(","):
        run_finetune(FinetuneRequest(
            data=data, test=test, out=out / strategy, arch="resnet18", weights="none", image_size=32,
            train=TrainConfig(strategy=strategy, lr=1e-5, epochs=2, batch_size=5, patience=10, device="cpu"),
            strategy=StrategyConfig(epochs_per_block=1, lp_epochs=1, rgn_batches=2, alpha=0.1, beta=0.1),
        ))
""")

HOOK_STRATEGIES = ["auto_rgn", "lp", "l2_sp", "g_lf", "lp_ft"]


@pytest.mark.slow
def test_strategy_hooks_behave_the_same_under_ddp(phantom_dir, phantom_test_dir, tmp_path):
    """Auto-RGN's probe (all-reduced gradients), lp's cached features (gathered), L2-SP's penalty, staged
    unfreezing (DDP rebuilt per stage) and lp_ft's switch: 2 ranks equal 1 process, strategy by strategy."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    names = ",".join(HOOK_STRATEGIES)
    single = subprocess.run([sys.executable, str(driver), str(phantom_dir), str(phantom_test_dir),
                             str(tmp_path / "one"), names], capture_output=True, text=True, env=_env(), timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    _torchrun([str(driver), str(phantom_dir), str(phantom_test_dir), str(tmp_path / "two"), names])
    initial = _initial_state()
    for strategy in HOOK_STRATEGIES:
        _compare_runs(tmp_path / "one" / strategy, tmp_path / "two" / strategy, initial)
    rgn = [json.loads((tmp_path / d / "auto_rgn" / "metrics.json").read_text()) for d in ("one", "two")]
    for h1, h2 in zip(rgn[0]["history"], rgn[1]["history"]):
        assert h1["rgn_block_mean"] == pytest.approx(h2["rgn_block_mean"], rel=1e-2, abs=1e-6)


# -- loader workers and the decoded-image cache ------------------------------------------------------------
def test_persistent_workers_serve_the_warm_cache_without_decoding(phantom_dir, tmp_path):
    """Workers start after the warm-up and inherit the cache: with the image files deleted, two epochs with two
    persistent workers still train, to exactly the weights of a run without workers."""
    import shutil

    from helpers import make_trainer, snapshot

    data = shutil.copytree(phantom_dir, tmp_path / "images")
    runs = []
    for workers in (0, 2):
        trainer = make_trainer(data, "ft", epochs=2)
        trainer.num_workers = workers
        trainer.train_set.warm()
        trainer.val_set.warm()
        if workers:
            shutil.rmtree(data)  # any decode in a worker (or in the main process) would now fail
        trainer.fit()
        runs.append(snapshot(trainer.model))
        trainer.close()
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


def test_unknown_precision_is_a_config_error():
    from shiftkit.errors import ConfigError
    from shiftkit.finetune.trainer import resolve_precision

    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) is None  # fp32 on CPU


@pytest.mark.parametrize("n, batch, shuffle, sizes", [
    (9, 8, True, [9]),  # a training batch of one image would break BatchNorm: it joins the batch before
    (17, 8, True, [8, 9]),
    (9, 8, False, [8, 1]),  # evaluation (BN in eval mode) keeps it
    (10, 8, True, [8, 2]),
    (1, 8, True, [1]),
])
def test_a_last_training_batch_of_one_image_joins_the_previous_batch(n, batch, shuffle, sizes):
    sampler = GlobalBatchSampler(n, batch, SINGLE, shuffle)
    batches = list(sampler)
    assert [len(b) for b in batches] == sizes and len(sampler) == len(sizes)
    assert sorted(i for b in batches for i in b) == list(range(n))

"""BN adaptation: AdaBN restores accuracy under a planted input shift, TENT lowers entropy by moving only the BN
affine parameters, and both turn a real ``shiftkit finetune`` checkpoint into a loadable one; the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.errors import ConfigError, ModelError
from shiftkit.features import load_finetuned
from shiftkit.finetune.run import FinetuneRequest, run_finetune
from shiftkit.finetune.strategies import StrategyConfig
from shiftkit.finetune.trainer import TrainConfig
from shiftkit.harmonize.bn import AdaptBNRequest, adapt_bn, bn_layers, entropy, run_adapt_bn

CENTRES = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])


def blobs(n_per_class: int, seed: int, scale: float = 1.0, shift: float = 0.0):
    """Three Gaussian blobs in 4-D; the target domain is the same data scaled and shifted."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([c + 0.6 * torch.randn(n_per_class, 4, generator=g) for c in CENTRES])
    y = torch.arange(3).repeat_interleave(n_per_class)
    return x * scale + shift, y


def trained_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.BatchNorm1d(32),
                          nn.ReLU(), nn.Linear(32, 3))
    x, y = blobs(100, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for epoch in range(8):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for batch in order.split(60):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.eval()(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    return trained_mlp()


SHIFT = torch.tensor([2.0, -1.0, 0.0, 0.0])


def target_batches(scale=0.3, shift=SHIFT, seed=2, size=30):
    x, y = blobs(60, seed=seed, scale=scale, shift=shift)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x, y, [(x[b], y[b]) for b in order.split(size)]


def test_adabn_restores_accuracy_under_a_scaled_and_shifted_input(mlp):
    source_x, source_y = blobs(60, seed=3)
    assert accuracy(mlp, source_x, source_y) > 0.95
    x, y, batches = target_batches()
    model = adapt_bn(_copy(mlp), batches, "adabn")
    before, after = accuracy(mlp, x, y), accuracy(model, x, y)
    assert before < 0.5, before  # the shifted target breaks the unadapted network
    assert after > 0.9, after
    # running statistics are the target's: first BN's mean equals the mean of its inputs over the target
    with torch.no_grad():
        pre = model[0](x)
    torch.testing.assert_close(model[1].running_mean, pre.mean(0), rtol=1e-4, atol=1e-4)
    assert not model.training and all(m.momentum == 0.1 for _, m in bn_layers(model))  # restored


def test_adabn_changes_only_the_running_statistics(mlp):
    _, _, batches = target_batches()
    model = adapt_bn(_copy(mlp), batches, "adabn")
    for (name, old), new in zip(mlp.state_dict().items(), model.state_dict().values()):
        if "running" in name:
            assert not torch.equal(old, new), name
        elif "num_batches" not in name:
            assert torch.equal(old, new), name


def test_tent_lowers_entropy_and_changes_only_bn_affine_parameters(mlp):
    x, y, batches = target_batches()
    adabn = adapt_bn(_copy(mlp), batches, "adabn")  # TENT's starting point: batch statistics, source affine
    tent = adapt_bn(_copy(mlp), batches, "tent", lr=5e-3, epochs=5)
    with torch.no_grad():
        h_adabn, h_tent = (entropy(m.eval()(x)).mean().item() for m in (adabn, tent))
    assert h_tent < 0.9 * h_adabn, (h_adabn, h_tent)
    bn_affine = {f"{name}.{p}" for name, _ in bn_layers(mlp) for p in ("weight", "bias")}
    for (name, old), new in zip(mlp.named_parameters(), tent.parameters()):
        if name in bn_affine:
            assert not torch.equal(old, new), name
        else:
            assert torch.equal(old, new), name
    assert all(p.requires_grad for p in tent.parameters()) and all(p.grad is None for p in tent.parameters())
    assert accuracy(tent, x, y) > 0.8


def test_a_model_without_batchnorm_is_refused():
    with pytest.raises(ModelError, match="no BatchNorm"):
        adapt_bn(nn.Sequential(nn.Linear(4, 3)), [torch.zeros(4, 4)])
    with pytest.raises(ConfigError, match="unknown BN adaptation method"):
        adapt_bn(nn.Sequential(nn.BatchNorm1d(4)), [torch.zeros(4, 4)], "bnstats")


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


# -- a real shiftkit checkpoint ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finetuned(phantom_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft_run")
    run_finetune(FinetuneRequest(
        data=phantom_dir, out=out, arch="resnet18", weights="none", image_size=32,
        train=TrainConfig(strategy="ft", lr=1e-3, epochs=1, batch_size=8, seed=0, device="cpu"),
        strategy=StrategyConfig(),
    ))
    return out


def _states(path):
    adapted, classes = load_finetuned(path)
    return adapted.model.state_dict(), classes


def test_adabn_on_a_finetune_checkpoint_writes_a_loadable_checkpoint(finetuned, phantom_test_dir, tmp_path):
    out = tmp_path / "adapted"
    result = run_adapt_bn(AdaptBNRequest(checkpoint=finetuned, target=phantom_test_dir, out=out, method="adabn",
                                         batch_size=6, device="cpu"))
    old, classes = _states(finetuned)
    new, new_classes = _states(out)  # loads through load_finetuned, as `diagnose --checkpoint` does
    assert new_classes == classes and set(new) == set(old)
    bn_names = {name for name, _ in bn_layers(load_finetuned(finetuned)[0].model)}
    changed_stats = 0
    for key in old:
        if key.rpartition(".")[0] in bn_names and "running" in key:
            changed_stats += not torch.equal(old[key], new[key])
        elif "num_batches_tracked" not in key:
            assert torch.equal(old[key], new[key]), key  # every other weight is untouched
    assert changed_stats == 2 * len(bn_names) == 40  # resnet18: 20 BatchNorm layers, mean and variance each
    report = json.loads((out / "adaptation.json").read_text())
    assert report["method"] == "adabn" and report["images"] == 18 and report["labeled"]
    assert set(report["before"]) >= {"top1_accuracy", "metrics", "mean_entropy"}
    assert 0 <= report["after"]["top1_accuracy"] <= 1 and report["after"]["mean_entropy"] > 0
    assert json.loads((out / "metrics.json").read_text())["adaptation"]["method"] == "adabn"
    assert report["after"] == result.after


# -- CLI ------------------------------------------------------------------------------------------------------------
runner = CliRunner()


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_adapt_bn_end_to_end(finetuned, phantom_test_dir, tmp_path):
    out = tmp_path / "adabn.pt"  # a single checkpoint file, with its report beside it
    result = runner.invoke(app, ["adapt-bn", str(finetuned), str(phantom_test_dir), "--method", "adabn",
                                 "--out", str(out), "--batch-size", "6", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "before" in result.output
    assert (tmp_path / "adabn.json").is_file()
    adapted, classes = load_finetuned(out)
    assert adapted.arch == "resnet18" and adapted.preprocessing.crop == 32 and len(classes) == 3
    unlabeled = tmp_path / "flat"
    unlabeled.mkdir()
    for i, path in enumerate(sorted(phantom_test_dir.rglob("*.png"))[:8]):
        (unlabeled / f"{i}.png").write_bytes(path.read_bytes())
    result = runner.invoke(app, ["adapt-bn", str(out), str(unlabeled), "--method", "tent", "--out",
                                 str(tmp_path / "tent_run"), "--batch-size", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "tent_run" / "adaptation.json").read_text())
    assert not report["labeled"] and set(report["after"]) == {"mean_entropy"}
    tent, _ = load_finetuned(tmp_path / "tent_run")  # a run folder again, read from a .pt input
    before, after = adapted.model.state_dict(), tent.model.state_dict()
    bn_names = {name for name, _ in bn_layers(tent.model)}
    for key in before:  # TENT moved the BN affine parameters (and statistics) and nothing else
        in_bn = key.rpartition(".")[0] in bn_names
        if in_bn and "num_batches" not in key:
            assert not torch.equal(before[key], after[key]), key
        elif not in_bn:
            assert torch.equal(before[key], after[key]), key


def test_cli_adapt_bn_errors_exit_2_with_one_line(finetuned, phantom_dir, phantom_test_dir, tmp_path):
    def run(*args):
        return runner.invoke(app, ["adapt-bn", *map(str, args), "--device", "cpu"])

    assert "bnstats" in error_line(run(finetuned, phantom_test_dir, "--method", "bnstats", "--out", tmp_path / "o"))
    assert "not a finetune output folder" in error_line(run(tmp_path, phantom_test_dir, "--out", tmp_path / "o"))
    assert "nowhere" in error_line(run(finetuned, tmp_path / "nowhere", "--out", tmp_path / "o"))
    assert "--batch-size" in error_line(run(finetuned, phantom_test_dir, "--batch-size", "1", "--out", tmp_path / "o"))
    other = tmp_path / "other_classes"
    (other / "zebra").mkdir(parents=True)
    (other / "zebra" / "a.png").write_bytes(next(phantom_test_dir.rglob("*.png")).read_bytes())
    assert "zebra" in error_line(run(finetuned, other, "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists()  # nothing written on errors


def test_a_failed_adabn_leaves_the_running_statistics_as_they_were():
    from shiftkit.errors import DataError
    from shiftkit.harmonize.bn import adapt_bn

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model[1].running_mean.fill_(5.0)
    model[1].running_var.fill_(2.0)
    with pytest.raises(DataError, match="at least 2"):
        adapt_bn(model, [torch.randn(1, 3)], "adabn")  # no batch of two: nothing to estimate from
    assert torch.equal(model[1].running_mean, torch.full((4,), 5.0))
    assert torch.equal(model[1].running_var, torch.full((4,), 2.0))


# -- --out never replaces an input (issue 13, item 5) ---------------------------------------------------------------
@pytest.mark.parametrize("case", ["out_is_the_run", "out_is_the_checkpoint_file", "checkpoint_file_inside_out",
                                  "out_is_the_target", "out_inside_the_target"])
def test_cli_adapt_bn_refuses_an_out_that_is_an_input(finetuned, phantom_test_dir, tmp_path, case):
    import shutil

    run_dir = shutil.copytree(finetuned, tmp_path / "run")  # the shared fixture stays intact if this fails
    target = shutil.copytree(phantom_test_dir, tmp_path / "target")
    best = run_dir / "checkpoints" / "best.pt"
    checkpoint, out = {
        "out_is_the_run": (run_dir, run_dir),
        "out_is_the_checkpoint_file": (best, best),
        "checkpoint_file_inside_out": (best, run_dir),
        "out_is_the_target": (run_dir, target),
        "out_inside_the_target": (run_dir, target / "adapted"),  # checkpoints/ would be a class of the target
    }[case]
    before = {p: p.read_bytes() for root in (run_dir, target) for p in root.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["adapt-bn", str(checkpoint), str(target), "--out", str(out), "--batch-size", "6",
                                 "--device", "cpu"])
    line = error_line(result)
    assert "choose another --out" in line and str(out) in line, line
    after = {p: p.read_bytes() for root in (run_dir, target) for p in root.rglob("*") if p.is_file()
             if p.name != ".shiftkit.lock"}
    assert after == before  # best.pt, metrics.json and the target untouched, nothing added
    assert not (target / "adapted").exists()

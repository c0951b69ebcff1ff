"""``finetune --init RUN``: start from an earlier run's weights (its head when the classes match), anchor L1/L2-SP
to them, refuse what cannot work in one line, and never resume a run started from another checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.errors import ConfigError
from shiftkit.finetune import run as run_module
from shiftkit.finetune.config import TrainConfig
from shiftkit.finetune.run import FinetuneRequest, run_finetune
from shiftkit.finetune.start import load_start, read_init
from shiftkit.finetune.strategies import StrategyConfig, make_strategy
from shiftkit.models import build_model

runner = CliRunner()
HEAD = ("fc.weight", "fc.bias")  # resnet18's head


def _train(data: Path, out: Path, strategy: str = "ft", seed: int = 0, epochs: int = 1, **options) -> dict:
    return run_finetune(FinetuneRequest(
        data=data, out=out, arch="resnet18", image_size=32, **options,
        train=TrainConfig(strategy=strategy, lr=1e-3, epochs=epochs, batch_size=8, device="cpu", seed=seed),
        strategy=StrategyConfig(sp_update="penalty") if strategy.endswith("_sp") else StrategyConfig()))


@pytest.fixture(scope="module")
def source_run(phantom_dir, tmp_path_factory) -> Path:
    """A trained source model (resnet18 from random weights, one epoch on the phantom set)."""
    out = tmp_path_factory.mktemp("source")
    _train(phantom_dir, out, weights="none", seed=7)
    return out


def _checkpoint(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model_state"]


def _relabelled(phantom_dir: Path, folder: Path, names: dict[str, str]) -> Path:
    """A manifest of the phantom images with the class names mapped by ``names``."""
    rows = ["path,label"] + [f"{p},{names[p.parent.name]}" for p in sorted(phantom_dir.rglob("*.png"))]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    return folder / "data.csv"


class _Started(Exception):
    """Raised once the run has built its model and strategy: the tests need nothing that training does."""


class _Capture:
    """Wraps make_strategy in run.py: records the weights and the strategy the run would start training from (after
    the strategy is built, as run.py does, it marks a kept head), then stops the run before any training."""

    def __init__(self, monkeypatch):
        self.state, self.strategy, self.adapted = None, None, None
        real = run_module.make_strategy

        def capture(name, adapted, config, train):
            self.state = {k: v.detach().clone() for k, v in adapted.model.state_dict().items()}
            self.adapted = adapted
            self.strategy = real(name, adapted, config, train)
            strategy = self.strategy

            class Stop:  # run.py calls anchor_head() on a kept head, then builds the data sets
                def anchor_head(self):
                    strategy.anchor_head()

                def __getattr__(self, item):
                    raise _Started

            return Stop()

        monkeypatch.setattr(run_module, "make_strategy", capture)

    def run(self, data: Path, out: Path, **options) -> None:
        with pytest.raises(_Started):
            _train(data, out, **options)


# -- the starting weights ----------------------------------------------------------------------------------------
def test_with_matching_classes_the_run_starts_from_every_checkpoint_tensor_head_included(
        phantom_dir, source_run, tmp_path, monkeypatch):
    seen = _Capture(monkeypatch)
    seen.run(phantom_dir, tmp_path / "target", init=source_run, seed=3)
    saved = _checkpoint(source_run)
    assert set(seen.state) == set(saved)
    for name, tensor in saved.items():  # parameters and BatchNorm statistics alike
        assert torch.equal(seen.state[name], tensor), name
    assert seen.adapted.preprocessing.crop == 32  # the checkpoint's image size
    monkeypatch.undo()
    result = _train(phantom_dir, tmp_path / "target", strategy="lp", init=source_run, seed=3)
    init = result["config"]["init"]
    assert init["head"] == "kept" and init["note"] is None and result["config"]["weights"] == "init"
    assert init["sha1"] == read_init(source_run).digest and init["classes"] == ["oval", "round", "spiky"]


def test_with_other_classes_the_backbone_is_the_checkpoint_s_and_the_head_is_new(
        phantom_dir, source_run, tmp_path, monkeypatch):
    data = _relabelled(phantom_dir, tmp_path / "relabelled", {"oval": "a", "round": "b", "spiky": "c"})
    seen = _Capture(monkeypatch)
    seen.run(data, tmp_path / "target", init=source_run, seed=3)
    saved = _checkpoint(source_run)
    for name, tensor in saved.items():
        if name in HEAD:  # same shape (3 classes), other names: not kept
            assert not torch.equal(seen.state[name], tensor), name
        else:
            assert torch.equal(seen.state[name], tensor), name
    # the new head is the one the seed draws without --init (same architecture, same RNG use)
    torch.manual_seed(3)
    fresh = build_model("resnet18", 3, "none", 32)
    assert torch.equal(seen.state["fc.weight"], fresh.model.fc.weight.detach())
    monkeypatch.undo()
    result = _train(data, tmp_path / "target", strategy="lp", init=source_run, seed=3)
    init = result["config"]["init"]
    assert init["head"] == "new" and "classes" in init["note"] and "['a', 'b', 'c']" in init["note"]


def test_the_image_size_defaults_to_the_checkpoint_s(phantom_dir, source_run, tmp_path, monkeypatch):
    source = tmp_path / "src40"
    shutil.copytree(source_run, source)
    metrics = json.loads((source / "metrics.json").read_text())
    metrics["config"]["image_size"] = 40  # as a run at --image-size 40 records it (resnet18 takes any size)
    (source / "metrics.json").write_text(json.dumps(metrics))
    seen = _Capture(monkeypatch)
    run = FinetuneRequest(data=phantom_dir, out=tmp_path / "t", arch="resnet18", init=source,
                          train=TrainConfig(strategy="lp", epochs=1, batch_size=8, device="cpu"))
    with pytest.raises(_Started):
        run_finetune(run)
    assert seen.adapted.preprocessing.crop == 40
    with pytest.raises(_Started):  # a given size wins
        run_finetune(FinetuneRequest(**{**run.__dict__, "image_size": 48}))
    assert seen.adapted.preprocessing.crop == 48


# -- L1-SP / L2-SP anchor to the starting point ------------------------------------------------------------------
def test_l2_sp_anchors_to_the_checkpoint_penalty_zero_at_start(phantom_dir, source_run, tmp_path, monkeypatch):
    seen = _Capture(monkeypatch)
    seen.run(phantom_dir, tmp_path / "target", strategy="l2_sp", init=source_run, seed=3)
    assert seen.strategy.penalty().item() == 0.0  # sp_update="penalty": at the start, nothing to pull back
    strategy, saved = seen.strategy, _checkpoint(source_run)
    anchors = dict(zip(strategy.backbone_names, strategy.start))
    assert set(anchors) == {n for n, _ in strategy.adapted.model.named_parameters()}  # the kept head too
    for name, anchor in anchors.items():
        assert torch.equal(anchor.cpu(), saved[name]), name


def test_l2_sp_penalty_is_zero_at_the_start_and_its_pull_is_toward_the_checkpoint(source_run):
    init = read_init(source_run)
    torch.manual_seed(0)
    adapted = build_model("resnet18", 3, "none", 32)
    random_start = {n: p.detach().clone() for n, p in adapted.model.named_parameters()}  # what "none" gives
    load_start(adapted, init, ["oval", "round", "spiky"], "multiclass")
    lr, alpha = 0.1, 2.0
    for update in ("penalty", "decoupled"):
        strategy = make_strategy("l2_sp", adapted, StrategyConfig(sp_update=update, alpha=alpha),
                                 TrainConfig(lr=lr))
        strategy.anchor_head()
        if update == "penalty":
            assert strategy.penalty().item() == 0.0
            continue
        torch.manual_seed(1)
        with torch.no_grad():
            for p in adapted.model.parameters():
                p.add_(torch.randn_like(p))
            moved = {n: p.detach().clone() for n, p in adapted.model.named_parameters()}
        strategy.after_step()
        for name, p in adapted.model.named_parameters():  # w - w0 shrinks by (1 - lr * alpha), w0 the checkpoint's
            expected = init.state[name] + (moved[name] - init.state[name]) * (1 - lr * alpha)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
    # the checkpoint is not the weights the model was built with: the pull could have gone elsewhere
    assert not torch.equal(init.state["conv1.weight"], random_start["conv1.weight"])


def test_a_new_head_is_still_pulled_toward_zero(phantom_dir, source_run):
    init = read_init(source_run)
    adapted = build_model("resnet18", 2, "none", 32)
    record = load_start(adapted, init, ["oval", "round"], "binary")
    assert record["head"] == "new"
    strategy = make_strategy("l2_sp", adapted, StrategyConfig(sp_update="penalty", alpha=1.0, beta=1.0))
    expected = sum(p.detach().pow(2).sum() for p in adapted.head.parameters())
    torch.testing.assert_close(strategy.penalty().detach(), expected)  # backbone at its start: head term only


# -- one-line refusals -------------------------------------------------------------------------------------------
from test_cli_finetune import _error_line  # noqa: E402  (one definition of a one-line refusal)


FAST = ["--image-size", "32", "--batch-size", "8", "--device", "cpu", "--epochs", "1"]


def test_init_with_another_arch_is_one_line(phantom_dir, source_run, tmp_path):
    line = _error_line(runner.invoke(app, ["finetune", str(phantom_dir), "--init", str(source_run), "--arch",
                                           "resnet50", "--out", str(tmp_path / "o"), *FAST]))
    assert "--init" in line and "resnet18" in line and "resnet50" in line


@pytest.mark.parametrize("weights", ["none", "imagenet"])
def test_init_with_weights_is_one_line(phantom_dir, source_run, tmp_path, weights):
    line = _error_line(runner.invoke(app, ["finetune", str(phantom_dir), "--init", str(source_run), "--weights",
                                           weights, "--out", str(tmp_path / "o"), *FAST]))
    assert "--init and --weights are mutually exclusive" in line


def test_init_that_is_no_finetune_output_is_one_line(phantom_dir, tmp_path):
    line = _error_line(runner.invoke(app, ["finetune", str(phantom_dir), "--init", str(phantom_dir),
                                           "--out", str(tmp_path / "o"), *FAST]))
    assert "--init" in line and "not a finetune output folder" in line


def test_the_library_refuses_weights_and_another_arch_too(phantom_dir, source_run, tmp_path):
    with pytest.raises(ConfigError, match="mutually exclusive"):
        _train(phantom_dir, tmp_path / "a", init=source_run, weights="none")
    with pytest.raises(ConfigError, match="resnet18 model but --arch asks for resnet50"):
        run_finetune(FinetuneRequest(data=phantom_dir, out=tmp_path / "b", arch="resnet50", init=source_run))


def test_out_that_is_the_init_run_is_refused(phantom_dir, source_run):
    with pytest.raises(ConfigError, match="init checkpoint"):
        _train(phantom_dir, source_run, init=source_run, overwrite=True)
    assert (source_run / "checkpoints" / "best.pt").is_file()


def test_cli_takes_the_arch_from_the_checkpoint(phantom_dir, source_run, tmp_path):
    result = runner.invoke(app, ["finetune", str(phantom_dir), "--init", str(source_run / "checkpoints" / "best.pt"),
                                 "--out", str(tmp_path / "o"), "--batch-size", "8", "--device", "cpu", "--epochs", "1",
                                 "--strategy", "lp"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["arch"] == "resnet18" and metrics["config"]["image_size"] == 32
    assert metrics["config"]["init"]["head"] == "kept"


# -- identity: resume and compare --------------------------------------------------------------------------------
def _perturbed_copy(source: Path, folder: Path) -> Path:
    """The source run with one weight changed (another checkpoint of the same model and classes)."""
    shutil.copytree(source, folder)
    path = folder / "checkpoints" / "best.pt"
    stored = torch.load(path, map_location="cpu", weights_only=True)
    stored["model_state"]["conv1.weight"] = stored["model_state"]["conv1.weight"] + 0.01
    torch.save(stored, path)
    return folder


def test_resume_identity_changes_with_the_init_checkpoint_s_content(phantom_dir, source_run, tmp_path):
    out = tmp_path / "target"
    _train(phantom_dir, out, strategy="lp", init=source_run)
    again = _train(phantom_dir, out, strategy="lp", init=source_run, resume=True)
    assert again["resumed"]  # the same starting point resumes
    other = _perturbed_copy(source_run, tmp_path / "other")
    with pytest.raises(ConfigError, match="--resume needs the same settings"):
        _train(phantom_dir, out, strategy="lp", init=other, resume=True)
    saved = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["identity"]
    assert saved["init"]["sha1"] == read_init(source_run).digest != read_init(other).digest
    assert saved["weights"] == "init"


def test_compare_identity_names_the_init_checkpoint_by_content(source_run, tmp_path):
    from shiftkit.compare.grid import CompareSettings

    plain = CompareSettings(data=Path(__file__).parent)
    assert "init" not in plain.identity()  # grids recorded before keep their fingerprint
    with_init = CompareSettings(data=Path(__file__).parent, init=source_run)
    other = CompareSettings(data=Path(__file__).parent, init=_perturbed_copy(source_run, tmp_path / "other"))
    assert len({plain.fingerprint(), with_init.fingerprint(), other.fingerprint()}) == 3


def test_compare_runs_each_cell_from_the_init_checkpoint(phantom_dir, source_run, tmp_path):
    result = runner.invoke(app, ["compare", str(phantom_dir), "--init", str(source_run), "--strategies", "lp",
                                 "--lrs", "1e-3", "--seeds", "1", "--epochs", "1", "--batch-size", "8",
                                 "--device", "cpu", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    metrics = json.loads(next((tmp_path / "c" / "runs").rglob("metrics.json")).read_text())
    assert metrics["arch"] == "resnet18" and metrics["config"]["init"]["sha1"] == read_init(source_run).digest
    line = _error_line(runner.invoke(app, ["compare", str(phantom_dir), "--init", str(source_run), "--weights",
                                           "none", "--out", str(tmp_path / "d")]))
    assert "mutually exclusive" in line

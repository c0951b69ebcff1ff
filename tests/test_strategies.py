"""Each strategy trains the parameters it should, and only those, at the learning rates it should."""

from __future__ import annotations

import pytest
import torch

from helpers import make_trainer, snapshot
from shiftkit.errors import ConfigError
from shiftkit.finetune.early_stopping import entry_score
from shiftkit.finetune.strategies import STRATEGY_CLASSES, ParamGroup, Strategy, make_strategy, register
from shiftkit.models import build_model

PAPER_NAMES = ["ft", "lp", "g_lf", "g_fl", "lp_ft", "l1_sp", "l2_sp", "auto_rgn"]


def changed_blocks(trainer, before) -> set[str]:
    """Names of partition blocks with at least one parameter that moved."""
    after = dict(trainer.model.named_parameters())
    names = trainer.adapted.block_param_names()
    return {
        trainer.adapted.blocks[b][0]
        for b, block in enumerate(names)
        if any(not torch.equal(before[n], after[n].detach()) for n in block)
    }


def test_registry_has_the_papers_eight_strategies():
    assert list(STRATEGY_CLASSES)[:8] == PAPER_NAMES


def test_unknown_strategy_is_a_user_error():
    adapted = build_model("resnet18", 2, "none")
    with pytest.raises(ConfigError, match="unknown strategy 'sgd'"):
        make_strategy("sgd", adapted, None)


def test_lp_leaves_every_backbone_tensor_bit_identical(phantom_dir):
    trainer = make_trainer(phantom_dir, "lp", epochs=3)
    before = snapshot(trainer.model)
    trainer.fit()
    after = snapshot(trainer.model)
    head = set(trainer.adapted.head_param_names())
    for name in before:  # parameters and BatchNorm running statistics alike
        if name in head:
            assert not torch.equal(before[name], after[name]), name
        else:
            assert torch.equal(before[name], after[name]), name


def test_lp_on_cached_features_matches_lp_through_the_backbone(phantom_dir):
    adam = {"lp_solver": "adam"}  # Adam steps, on cached features or through the frozen backbone
    cached = make_trainer(phantom_dir, "lp", epochs=2, cache_features=True, train_options=adam)
    direct = make_trainer(phantom_dir, "lp", epochs=2, cache_features=False, train_options=adam)
    cached.fit()
    direct.fit()
    for a, b in zip(cached.adapted.head.parameters(), direct.adapted.head.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert cached.history[-1]["val"] == pytest.approx(direct.history[-1]["val"], abs=1e-4)


@pytest.mark.parametrize(
    "strategy, expected",
    [
        # ResNet blocks: stem, layer1, layer2, layer3, layer4, fc. One epoch per block.
        ("g_lf", [["fc"], ["layer4", "fc"], ["layer3", "layer4", "fc"]]),
        ("g_fl", [["stem", "fc"], ["stem", "layer1", "fc"], ["stem", "layer1", "layer2", "fc"]]),
    ],
)
def test_gradual_unfreezing_follows_its_schedule(phantom_dir, strategy, expected):
    observed = []

    class Watch:
        def on_epoch_start(self, epoch, batches, description):
            self.before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

        def on_batch(self):
            pass

        def on_epoch_end(self, entry):
            observed.append((entry["trainable_blocks"], changed_blocks(trainer, self.before)))

    trainer = make_trainer(phantom_dir, strategy, epochs=3, epochs_per_block=1, callback=Watch())
    trainer.fit()
    assert [blocks for blocks, _ in observed] == expected
    for blocks, moved in observed:
        assert moved == set(blocks)  # exactly the scheduled blocks trained


def test_gradual_unfreezing_default_stage_length_is_epochs_over_blocks(phantom_dir):
    trainer = make_trainer(phantom_dir, "g_lf", epochs=12)  # 6 blocks -> 2 epochs per block
    trainer.fit()
    assert [h["stage"] for h in trainer.history] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_plateau_advances_a_staged_strategy_instead_of_stopping(phantom_dir):
    trainer = make_trainer(phantom_dir, "lp_ft", epochs=8, lp_epochs=50, patience=1, lr=1e-6,
                           train_options={"lp_solver": "adam"})
    trainer.fit()
    history = trainer.history
    stages = [h["stage"] for h in history]
    assert stages[0] == 0 and 1 in stages  # left the LP phase long before lp_epochs=50
    best = float("-inf")
    for index, entry in enumerate(history):  # patience 1: every epoch that does not beat the best is a plateau
        score = entry_score(entry)
        plateau, best = score <= best, max(best, score)
        if entry["stage"] == 0:  # the probe phase: a plateau moves on to fine-tuning, never stops the run
            assert not entry["stop"]
            if index + 1 < len(history):
                assert (history[index + 1]["stage"] == 1) == plateau
        else:  # the last stage: a plateau stops the run
            assert entry["stop"] == plateau


def test_lp_ft_probes_then_fine_tunes(phantom_dir):
    trainer = make_trainer(phantom_dir, "lp_ft", epochs=3, lp_epochs=2, train_options={"lp_solver": "adam"})
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    seen = []

    class Watch:
        def on_epoch_start(self, epoch, batches, description):
            seen.append(description)

        def on_batch(self):
            pass

        def on_epoch_end(self, entry):
            if entry["epoch"] == 2:
                assert changed_blocks(trainer, before) == {"fc"}

    trainer.callback = Watch()
    trainer.fit()
    assert [h["phase"] for h in trainer.history] == ["lp", "lp", "ft"]
    assert seen[:2] == ["head on cached features"] * 2 and seen[2] == ""
    assert changed_blocks(trainer, before) == {"stem", "layer1", "layer2", "layer3", "layer4", "fc"}


def _distance_from_start(trainer, start) -> float:
    head = set(trainer.adapted.head_param_names())
    return sum(
        (p.detach() - start[n]).pow(2).sum().item() for n, p in trainer.model.named_parameters() if n not in head
    ) ** 0.5


def test_l2_sp_with_huge_alpha_stays_near_the_starting_point_while_ft_moves(phantom_dir):
    distances = {}
    for name, options in (("ft", {}), ("l2_sp", {"alpha": 1e4})):
        trainer = make_trainer(phantom_dir, name, epochs=3, lr=1e-2, **options)
        start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.fit()
        distances[name] = _distance_from_start(trainer, start)
    assert distances["l2_sp"] < 0.3 * distances["ft"], distances


def test_sp_penalties_are_the_papers_equations():
    adapted = build_model("resnet18", 3, "none")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in adapted.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    for name, power in (("l1_sp", 1), ("l2_sp", 2)):
        from shiftkit.finetune.strategies import StrategyConfig

        config = StrategyConfig(alpha=0.3, beta=0.7, sp_update="penalty")
        fresh = build_model("resnet18", 3, "none")
        strategy = make_strategy(name, fresh, config)
        head = set(fresh.head_param_names())
        with torch.no_grad():
            for (n, p), (_, q) in zip(fresh.model.named_parameters(), adapted.model.named_parameters()):
                p.copy_(q)
        expected = 0.0
        for (n, p), start in zip(strategy.backbone_named(), strategy.start):
            expected += 0.3 * (p - start).abs().pow(power).sum().item()
        for n, p in fresh.model.named_parameters():
            if n in head:
                expected += 0.7 * p.abs().pow(power).sum().item()
        assert strategy.penalty().item() == pytest.approx(expected, rel=1e-5)
        assert strategy.penalty().requires_grad


def test_auto_rgn_learning_rates_follow_the_ratios_it_recorded(phantom_dir):
    trainer = make_trainer(phantom_dir, "auto_rgn", epochs=2, lr=1e-3, rgn_batches=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    ratios = trainer.history[-1]["rgn_ratios"]
    assert max(ratios.values()) == pytest.approx(1.0)
    assert all(0.0 <= r <= 1.0 for r in ratios.values())
    names_by_param = {id(p): n for n, p in trainer.model.named_parameters()}
    seen = set()
    for group in trainer.optimizer.param_groups:
        (param,) = group["params"]
        name = names_by_param[id(param)]
        assert group["lr"] == pytest.approx(1e-3 * ratios[name], rel=1e-5)
        seen.add(name)
    norm_params = {n for n in before if "bn" in n or "downsample.1" in n}
    assert seen.isdisjoint(norm_params) and seen | norm_params == set(before)
    for name in norm_params:  # skipped, as in the authors' code: not trained
        assert torch.equal(before[name], trainer.model.get_parameter(name).detach())
    assert set(trainer.history[0]["rgn_block_mean"]) == {"stem", "layer1", "layer2", "layer3", "layer4", "fc"}


def test_auto_rgn_ratio_is_gradient_norm_over_weight_norm(phantom_dir):
    trainer = make_trainer(phantom_dir, "auto_rgn", epochs=1, rgn_batches=1)
    (grads,) = list(trainer.gradient_probe(1, epoch=0))
    strategy = trainer.strategy
    strategy.begin_epoch(0, lambda n: iter([grads]))
    raw = {n: grads[n].norm().item() / trainer.params[n].norm().item() for n in strategy.tuned}
    top = max(raw.values())
    for name in strategy.tuned:
        assert strategy.ratios[name] == pytest.approx(raw[name] / top, rel=1e-5)


def test_a_ninth_strategy_registers_without_touching_the_trainer(phantom_dir):
    @register("head_and_stem")
    class HeadAndStem(Strategy):
        def param_groups(self):
            names = [n for n in self.params if n.startswith(("conv1", "bn1"))] + self.head_names
            return [ParamGroup(names, self.lr)]

    try:
        trainer = make_trainer(phantom_dir, "head_and_stem", epochs=1)
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.fit()
        assert changed_blocks(trainer, before) == {"stem", "fc"}
    finally:
        STRATEGY_CLASSES.pop("head_and_stem")


def test_same_seed_gives_the_same_numbers_on_cpu(phantom_dir):
    runs = []
    for _ in range(2):
        trainer = make_trainer(phantom_dir, "ft", epochs=2, seed=3)
        trainer.fit()
        runs.append(([h["train_loss"] for h in trainer.history], snapshot(trainer.model)))
    assert runs[0][0] == runs[1][0]
    for key in runs[0][1]:
        assert torch.equal(runs[0][1][key], runs[1][1][key]), key

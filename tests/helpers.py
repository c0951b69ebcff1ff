"""Build a small trainer directly (no CLI) for strategy-level tests."""

from __future__ import annotations

from pathlib import Path

import torch

from shiftkit.data import ImageCache, ImageDataset, load_table, stratified_split
from shiftkit.finetune.strategies import StrategyConfig, make_strategy
from shiftkit.finetune.trainer import Trainer, TrainConfig
from shiftkit.models import build_model


def make_trainer(
    data: Path,
    strategy: str,
    epochs: int = 2,
    lr: float = 1e-3,
    arch: str = "resnet18",
    seed: int = 0,
    checkpoint_dir: Path | None = None,
    patience: int = 100,
    callback=None,
    cache_features: bool = True,
    train_options: dict | None = None,
    **strategy_options,
) -> Trainer:
    """``train_options``: further ``TrainConfig`` fields (e.g. ``lp_solver``); ``strategy_options``: ``StrategyConfig``'s."""
    table = load_table(data)
    train, val = stratified_split(table, 0.25, seed)
    torch.manual_seed(seed)
    adapted = build_model(arch, len(table.classes), "none", image_size=32)
    config = TrainConfig(strategy=strategy, lr=lr, epochs=epochs, batch_size=8, patience=patience, seed=seed,
                         device="cpu", cache_features=cache_features, **(train_options or {}))
    cache = ImageCache(adapted.preprocessing)
    return Trainer(
        adapted,
        make_strategy(strategy, adapted, StrategyConfig(**strategy_options), config),
        table.task,
        ImageDataset(train, cache),
        ImageDataset(val, cache),
        config,
        checkpoint_dir=checkpoint_dir,
        callback=callback,
    )


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}

"""Fine-tuning engine: one trainer loop, eight strategies, the paper's metrics."""

from shiftkit.finetune.metrics import METRICS, compute_metrics
from shiftkit.finetune.strategies import STRATEGY_CLASSES, Strategy, StrategyConfig, make_strategy, register
from shiftkit.finetune.trainer import Trainer, TrainConfig

__all__ = [
    "METRICS", "STRATEGY_CLASSES", "Strategy", "StrategyConfig", "Trainer", "TrainConfig",
    "compute_metrics", "make_strategy", "register",
]

"""The settings of one training run (:class:`TrainConfig`), apart from the strategy's own (``StrategyConfig``).

Its own module so that both the trainer and the strategies can read it: a strategy takes its base learning rate and
epoch count from here, the one place they are set.
"""

from __future__ import annotations

from dataclasses import dataclass

from shiftkit.finetune.protocol import CLASS_WEIGHTS, LP_SOLVERS, check_choice

SPEED_ONLY = ("device", "eval_batch_size", "num_workers", "precision")
"""TrainConfig fields that change how fast a run goes, not its numbers (up to floating point)."""


@dataclass
class TrainConfig:
    strategy: str = "ft"
    lr: float = 1e-4
    epochs: int = 50
    batch_size: int = 64
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    monitor: str = "auto"  # a metric name, or auto: mAP for multi-label, AUROC otherwise
    eval_batch_size: int = 256
    cache_features: bool = True  # train a frozen backbone's head on features computed once
    num_workers: int | None = None  # loader worker processes; None: 0 on CPU, up to 8 per GPU on CUDA
    precision: str = "auto"  # auto (bf16 on CUDA where supported, else fp16; fp32 on CPU), bf16, fp16, fp32
    lp_solver: str = "lbfgs"  # a frozen backbone's head: lbfgs (solved, C chosen on validation) or adam (the paper)
    class_weight: str = "balanced"  # training loss weights: balanced (inverse training priors) or none (the paper)
    protocol: str = "shiftkit"  # which protocol's defaults were used (recorded; see protocol.py)

    def validate(self) -> None:
        check_choice("--lp-solver", self.lp_solver, LP_SOLVERS)
        check_choice("--class-weight", self.class_weight, CLASS_WEIGHTS)
